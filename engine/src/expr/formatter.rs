//! Formatter helpers beyond text (Zapier's Formatter): numbers (`format_number`, `currency`),
//! dates (`date_parse`, `date_format`, `date_add`, `date_subtract`, `date_tz`, `date_diff`,
//! `date_before`, `date_after`), lookups (`lookup_or`) and JSON (`parse_json`, `pick`, `merge`).
//!
//! Dates are read from RFC 3339 (`2026-11-22T10:00:00Z`), RFC 2822, `2026-11-22`,
//! `2026-11-22 10:00[:00]`, `11/22/2026` (US order) or Unix seconds/milliseconds, and written as
//! RFC 3339 in UTC unless a timezone is asked for. Timezones are IANA names (`Europe/Paris`), with
//! daylight saving applied; the tz database is built in. As everywhere, missing input gives
//! `null` and input of the wrong kind is an error.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde_json::{Map, Value};

use super::helpers::{number, number_and_places, HelperFn};
use super::template::to_text;

/// The helpers of this module, by name.
pub(super) const HELPERS: &[(&str, HelperFn)] = &[
    ("format_number", format_number),
    ("currency", currency),
    ("date_parse", |args| {
        let Some(at) = first_date(args, "a date")? else {
            return Ok(Value::Null);
        };
        Ok(Value::String(utc(at)))
    }),
    ("date_format", date_format),
    ("date_add", |args| shift(args, false)),
    ("date_subtract", |args| shift(args, true)),
    ("date_tz", date_tz),
    ("date_diff", date_diff),
    ("date_before", |args| compare(args, |a, b| a < b)),
    ("date_after", |args| compare(args, |a, b| a > b)),
    ("lookup_or", lookup_or),
    ("parse_json", |args| {
        let [value] = args else {
            return Err("takes one text of JSON".into());
        };
        match value {
            Value::Null => Ok(Value::Null),
            Value::String(s) => {
                serde_json::from_str(s).map_err(|e| format!("takes JSON text: {e}"))
            }
            other => Ok((*other).clone()),
        }
    }),
    ("pick", pick),
    ("merge", merge),
];

/// `{{format_number 1234567.891 2}}` → `1,234,567.89`; optional thousands and decimal separators
/// (`{{format_number x 2 "." ","}}` → `1.234.567,89`).
fn format_number(args: &[&Value]) -> Result<Value, String> {
    let usage =
        "a number, optionally decimal places and separators: {{format_number x 2 \",\" \".\"}}";
    let Some((n, places)) = number_and_places(args, usage)? else {
        return Ok(Value::Null);
    };
    let thousands = args.get(2).map_or(",".to_owned(), |v| to_text(v));
    let decimal = args.get(3).map_or(".".to_owned(), |v| to_text(v));
    Ok(Value::String(grouped(n, places, &thousands, &decimal)))
}

fn grouped(n: f64, places: usize, thousands: &str, decimal: &str) -> String {
    let fixed = format!("{:.*}", places, n.abs());
    let (whole, fraction) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push_str(thousands);
        }
        out.push(c);
    }
    if !fraction.is_empty() {
        out.push_str(decimal);
        out.push_str(fraction);
    }
    let negative = n < 0.0 && fixed.chars().any(|c| c.is_ascii_digit() && c != '0');
    if negative {
        format!("-{out}")
    } else {
        out
    }
}

/// `{{currency 1234.5 "usd"}}` → `$1,234.50`; the amount is in major units (divide Stripe's cents
/// by 100 first). Known symbols for USD, EUR, GBP, JPY, CAD, AUD, CHF, INR; otherwise the code.
fn currency(args: &[&Value]) -> Result<Value, String> {
    let [value, code] = args else {
        return Err("takes an amount and a currency code: {{currency 12.5 \"usd\"}}".into());
    };
    if value.is_null() {
        return Ok(Value::Null);
    }
    let n = number(value).ok_or_else(|| format!("takes an amount, not `{}`", to_text(value)))?;
    let code = to_text(code).to_uppercase();
    let (symbol, places) = match code.as_str() {
        "USD" => ("$", 2),
        "EUR" => ("€", 2),
        "GBP" => ("£", 2),
        "JPY" => ("¥", 0),
        "CAD" => ("CA$", 2),
        "AUD" => ("A$", 2),
        "CHF" => ("CHF ", 2),
        "INR" => ("₹", 2),
        "" => return Err("needs a currency code such as \"usd\"".into()),
        _ => ("", 2),
    };
    let amount = grouped(n.abs(), places, ",", ".");
    let sign = if n < 0.0 { "-" } else { "" };
    Ok(Value::String(if symbol.is_empty() {
        format!("{sign}{amount} {code}")
    } else {
        format!("{sign}{symbol}{amount}")
    }))
}

/// A date from JSON: text in one of the accepted forms, or a Unix timestamp in seconds or
/// milliseconds. `None` for `null`.
fn date(value: &Value) -> Result<Option<Timestamp>, String> {
    let not_a_date = || format!("takes a date, not `{}`", to_text(value));
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().map(unix).transpose().map_err(|_| not_a_date()),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<i64>() {
                return unix(n).map(Some).map_err(|_| not_a_date());
            }
            parse_text(s).map(Some).ok_or_else(not_a_date)
        }
        _ => Err(not_a_date()),
    }
}

/// Seconds before the year 5138, milliseconds after.
fn unix(n: i64) -> Result<Timestamp, jiff::Error> {
    if n.abs() < 100_000_000_000 {
        Timestamp::from_second(n)
    } else {
        Timestamp::from_millisecond(n)
    }
}

fn parse_text(s: &str) -> Option<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(z) = s.parse::<Zoned>() {
        return Some(z.timestamp());
    }
    if let Ok(z) = jiff::fmt::rfc2822::parse(s) {
        return Some(z.timestamp());
    }
    let civil = |dt: DateTime| dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
    if let Ok(dt) = s.parse::<DateTime>() {
        return civil(dt);
    }
    if let Ok(d) = s.parse::<Date>() {
        return civil(d.to_datetime(jiff::civil::Time::midnight()));
    }
    for format in ["%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"] {
        if let Ok(dt) = DateTime::strptime(format, s) {
            return civil(dt);
        }
    }
    Date::strptime("%m/%d/%Y", s)
        .ok()
        .and_then(|d| civil(d.to_datetime(jiff::civil::Time::midnight())))
}

/// The first argument as a date (with `what` in the usage message).
fn first_date(args: &[&Value], what: &str) -> Result<Option<Timestamp>, String> {
    match args.first() {
        Some(v) => date(v),
        None => Err(format!("needs {what}")),
    }
}

fn utc(t: Timestamp) -> String {
    t.to_string()
}

fn zone(name: &Value) -> Result<TimeZone, String> {
    let name = to_text(name);
    TimeZone::get(&name).map_err(|_| {
        format!("`{name}` is not a timezone (use an IANA name such as \"Europe/Paris\")")
    })
}

/// `{{date_format x "%Y-%m-%d %H:%M"}}`, optionally in a timezone: `{{date_format x "%H:%M" "Asia/Tokyo"}}`.
fn date_format(args: &[&Value]) -> Result<Value, String> {
    let (value, format, tz) =
        match args {
            [v, f] => (v, f, None),
            [v, f, tz] => (v, f, Some(tz)),
            _ => return Err(
                "takes a date, a format and optionally a timezone: {{date_format x \"%Y-%m-%d\"}}"
                    .into(),
            ),
        };
    let Some(at) = date(value)? else {
        return Ok(Value::Null);
    };
    let tz = tz.map_or(Ok(TimeZone::UTC), |tz| zone(tz))?;
    let zoned = at.to_zoned(tz);
    let format = to_text(format);
    jiff::fmt::strtime::format(format.as_str(), &zoned)
        .map(Value::String)
        .map_err(|e| format!("cannot write the date with `{format}`: {e}"))
}

/// `{{date_add x "2d"}}` / `{{date_subtract x "1h 30m"}}`: durations as in `retry` (`s`, `m`, `h`,
/// `d`, `w`), applied to the instant.
fn shift(args: &[&Value], back: bool) -> Result<Value, String> {
    let [value, by] = args else {
        return Err("takes a date and a duration: {{date_add x \"2d\"}}".into());
    };
    let Some(at) = date(value)? else {
        return Ok(Value::Null);
    };
    let text = to_text(by);
    let duration = humantime::parse_duration(text.trim())
        .map_err(|_| format!("takes a duration such as \"2d\" or \"1h 30m\", not `{text}`"))?;
    let span = jiff::SignedDuration::try_from(duration).map_err(|e| e.to_string())?;
    let moved = if back {
        at.checked_sub(span)
    } else {
        at.checked_add(span)
    };
    moved
        .map(|t| Value::String(utc(t)))
        .map_err(|e| e.to_string())
}

/// `{{date_tz x "America/New_York"}}` → the same instant written in that zone
/// (`2026-11-22T05:00:00-05:00`).
fn date_tz(args: &[&Value]) -> Result<Value, String> {
    let [value, tz] = args else {
        return Err("takes a date and a timezone: {{date_tz x \"Europe/Paris\"}}".into());
    };
    let Some(at) = date(value)? else {
        return Ok(Value::Null);
    };
    let zoned = at.to_zoned(zone(tz)?);
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%:z", &zoned)
        .map(Value::String)
        .map_err(|e| e.to_string())
}

/// `{{date_diff a b "days"}}`: how long from `a` to `b` in whole `seconds`, `minutes`, `hours`
/// or `days` (default), negative when `b` is earlier.
fn date_diff(args: &[&Value]) -> Result<Value, String> {
    let (a, b, unit) = match args {
        [a, b] => (a, b, "days".to_owned()),
        [a, b, u] => (a, b, to_text(u)),
        _ => {
            return Err("takes two dates and optionally a unit: {{date_diff a b \"hours\"}}".into())
        }
    };
    let (Some(a), Some(b)) = (date(a)?, date(b)?) else {
        return Ok(Value::Null);
    };
    let per: i64 = match unit.as_str() {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        "days" => 86_400,
        other => {
            return Err(format!(
                "counts seconds, minutes, hours or days, not `{other}`"
            ))
        }
    };
    let seconds = b.as_second() - a.as_second();
    Ok(Value::from(seconds / per))
}

/// `{{date_before a b}}` / `{{date_after a b}}`: whether `a` is before / after `b`.
fn compare(args: &[&Value], op: fn(Timestamp, Timestamp) -> bool) -> Result<Value, String> {
    let [a, b] = args else {
        return Err("takes two dates".into());
    };
    let (Some(a), Some(b)) = (date(a)?, date(b)?) else {
        return Ok(Value::Null);
    };
    Ok(Value::Bool(op(a, b)))
}

/// `{{lookup_or steps.plans.table trigger.body.price "Other"}}`: the table's value for the key, or
/// the fallback. The table is an object, e.g. a `map` step's output.
fn lookup_or(args: &[&Value]) -> Result<Value, String> {
    let [table, key, fallback] = args else {
        return Err("takes a table, a key and a fallback: {{lookup_or steps.plans trigger.body.price \"Other\"}}".into());
    };
    let entry = match table {
        Value::Object(map) => map.get(&to_text(key)).filter(|v| !v.is_null()),
        Value::Null => None,
        other => {
            return Err(format!(
                "takes a table (an object), not `{}`",
                to_text(other)
            ))
        }
    };
    Ok(entry.cloned().unwrap_or_else(|| (*fallback).clone()))
}

/// `{{pick obj "email" "name"}}`: only those keys of an object (missing ones left out).
fn pick(args: &[&Value]) -> Result<Value, String> {
    let Some((object, keys)) = args.split_first() else {
        return Err("takes an object and keys: {{pick trigger.body \"email\" \"name\"}}".into());
    };
    match object {
        Value::Null => Ok(Value::Null),
        Value::Object(map) => {
            let picked: Map<String, Value> = keys
                .iter()
                .filter_map(|k| {
                    let k = to_text(k);
                    map.get(&k).map(|v| (k, v.clone()))
                })
                .collect();
            Ok(Value::Object(picked))
        }
        other => Err(format!("takes an object, not `{}`", to_text(other))),
    }
}

/// `{{merge a b}}`: the keys of both objects, `b`'s winning; `null` counts as `{}`.
fn merge(args: &[&Value]) -> Result<Value, String> {
    let mut merged = Map::new();
    for value in args {
        match value {
            Value::Null => {}
            Value::Object(map) => merged.extend(map.iter().map(|(k, v)| (k.clone(), v.clone()))),
            other => return Err(format!("takes objects, not `{}`", to_text(other))),
        }
    }
    Ok(Value::Object(merged))
}
