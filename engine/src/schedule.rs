//! Schedules: when a `schedule:` flow fires. A cron expression (5 fields `min hour dom mon dow`,
//! 6 with seconds first, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`) read in an IANA
//! timezone, so "9:00 in Paris" stays 9:00 across daylight-saving changes. Days of the week are
//! Unix cron's: `0`-`7` (`0` and `7` are Sunday) or names (`MON-FRI`).
//!
//! Parsing and the arithmetic of ticks live here; the task that fires them durably is in
//! `runtime::scheduler`.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use regex::Regex;

use crate::model::Timestamp;

/// What happens to the ticks that came due while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// They are not fired (the default).
    Skip,
    /// They are fired at start-up, at most this many (the most recent).
    CatchUp(usize),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub cron: String,
    /// The timezone's name.
    pub timezone: String,
    /// Fire up to this long after each tick (spreads load); the tick is still the run's identity.
    pub jitter: Duration,
    /// The rule for ticks missed while down.
    pub missed: Missed,
    expr: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses an expression in a timezone (`None`: UTC).
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Self, String> {
        let tz_name = timezone.unwrap_or("UTC");
        let tz = chrono_tz::Tz::from_str(tz_name).map_err(|_| {
            format!("`{tz_name}` is not a timezone (use an IANA name such as \"Europe/Paris\")")
        })?;
        let expr = cron::Schedule::from_str(&normalize(cron)?)
            .map_err(|e| format!("`{cron}` is not a cron expression: {e}"))?;
        Ok(Self {
            cron: cron.to_owned(),
            timezone: tz_name.to_owned(),
            jitter: Duration::ZERO,
            missed: Missed::Skip,
            expr,
            tz,
        })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let after = self.tz.timestamp_millis_opt(t.millis()).single()?;
        self.expr
            .after(&after)
            .next()
            .map(|next| Timestamp(next.with_timezone(&Utc).timestamp_millis()))
    }

    /// A time as a person in the schedule's timezone reads it: `2026-03-09 09:00:00 Mon EDT
    /// (-04:00)`.
    pub fn local_time(&self, t: Timestamp) -> String {
        match self.tz.timestamp_millis_opt(t.millis()).single() {
            Some(local) => local.format("%Y-%m-%d %H:%M:%S %a %Z (%:z)").to_string(),
            None => t.to_rfc3339(),
        }
    }

    /// A time written `YYYY-MM-DDTHH:MM[:SS]` in the schedule's timezone (or RFC 3339 with an
    /// offset), as a timestamp; `None` if it is neither, or does not exist there (a
    /// daylight-saving gap).
    pub fn parse_local(&self, text: &str) -> Option<Timestamp> {
        if let Some(t) = Timestamp::parse_rfc3339(text) {
            return Some(t);
        }
        let naive = [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())?;
        let local = self.tz.from_local_datetime(&naive).earliest()?;
        Some(Timestamp(local.with_timezone(&Utc).timestamp_millis()))
    }

    /// Whether `t` is one of the schedule's ticks.
    pub fn is_tick(&self, t: Timestamp) -> bool {
        self.next_after(Timestamp(t.millis() - 1)) == Some(t)
    }

    /// The trigger of a fire of tick `tick` at `fired_at`: what a schedule run's `trigger` holds.
    pub fn trigger(tick: Timestamp, fired_at: Timestamp) -> serde_json::Value {
        serde_json::json!({
            "method": "SCHEDULE",
            "headers": {},
            "query": {},
            "body": { "scheduled_at": tick, "fired_at": fired_at },
            "received_at": fired_at,
        })
    }

    /// The next `n` ticks after `t`.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(next);
            at = next;
        }
        out
    }
}

/// The expression as the `cron` crate reads it: seconds first, and Unix day-of-week numbers as
/// names (the crate counts Sunday as 1).
fn normalize(cron: &str) -> Result<String, String> {
    let cron = cron.trim();
    if cron.starts_with('@') {
        return Ok(cron.to_owned());
    }
    let mut fields: Vec<String> = cron.split_whitespace().map(str::to_owned).collect();
    match fields.len() {
        5 => fields.insert(0, "0".to_owned()),
        6 | 7 => {}
        n => {
            return Err(format!(
            "`{cron}` has {n} fields: write 5 (`min hour day month weekday`) or 6 (seconds first)"
        ))
        }
    }
    fields[5] = weekday_names(&fields[5]);
    Ok(fields.join(" "))
}

fn weekday_names(field: &str) -> String {
    static NUMBER: OnceLock<Regex> = OnceLock::new();
    let number = NUMBER.get_or_init(|| Regex::new(r"(^|[,\-])([0-7])\b").expect("valid regex"));
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    number
        .replace_all(field, |c: &regex::Captures<'_>| {
            let n: usize = c[2].parse().unwrap_or(0);
            format!("{}{}", &c[1], NAMES[n])
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn shown(ticks: &[Timestamp]) -> Vec<String> {
        ticks.iter().map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn five_field_expressions_and_unix_weekdays() {
        // 9:00 on weekdays (1-5 = Monday to Friday); 2026-11-20 is a Friday.
        let s = Schedule::parse("0 9 * * 1-5", None).unwrap();
        assert_eq!(
            shown(&s.upcoming(at("2026-11-20T10:00:00Z"), 2)),
            ["2026-11-23T09:00:00Z", "2026-11-24T09:00:00Z"]
        );
        let s = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-20T10:07:00Z")),
            Some(at("2026-11-20T10:15:00Z"))
        );
        assert!(Schedule::parse("@hourly", None).is_ok());
        assert!(Schedule::parse("* * *", None)
            .unwrap_err()
            .contains("has 3 fields"));
        assert!(Schedule::parse("0 9 * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .contains("not a timezone"));
    }

    #[test]
    fn local_times_follow_daylight_saving() {
        // Paris moves from UTC+1 to UTC+2 on 2026-03-29: 9:00 local is 08:00Z, then 07:00Z.
        let s = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            shown(&s.upcoming(at("2026-03-27T12:00:00Z"), 3)),
            [
                "2026-03-28T08:00:00Z",
                "2026-03-29T07:00:00Z",
                "2026-03-30T07:00:00Z"
            ]
        );
        // New York skips 2:00-3:00 on 2026-03-08: a 2:30 schedule does not fire that day.
        let s = Schedule::parse("30 2 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            shown(&s.upcoming(at("2026-03-07T12:00:00Z"), 2)),
            ["2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"]
        );
    }
}
