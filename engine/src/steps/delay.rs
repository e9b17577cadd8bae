//! `delay` (Zapier's Delay, n8n's Wait): the steps after it start later — after a duration
//! (`for: 2h`) or at a time computed from the data (`until: "{{trigger.body.trial_ends_at}}"`,
//! RFC 3339 or Unix seconds or milliseconds). Durable and free while waiting: the next steps are
//! queue items due then, in the store, so a delay of days survives restarts and holds no memory.
//! A time in the past does not wait.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Templates, TextExpr};
use crate::flow::spec::HumanDuration;
use crate::model::Timestamp;

/// The longest a delay may wait.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Wait before the next steps: `for` a duration or `until` a time.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// How long, e.g. `30m`, `2d`.
    #[serde(default, rename = "for")]
    #[schemars(with = "Option<String>")]
    pub duration: Option<HumanDuration>,
    /// Until when (a template): RFC 3339, or Unix seconds or milliseconds.
    #[serde(default)]
    pub until: Option<String>,
}

impl StepKind for DelaySpec {
    const KIND: &'static str = "delay";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let wait = match (self.duration, self.until) {
            (Some(d), None) if d.0 <= MAX_DELAY => Wait::For(d.0),
            (Some(_), None) => {
                cx.error("for", "a delay waits at most 365d");
                return None;
            }
            (None, Some(until)) => Wait::Until(cx.text("until", &until)?),
            _ => {
                cx.error(
                    "",
                    "give `for` (a duration) or `until` (a time), one of them",
                );
                return None;
            }
        };
        Some(Arc::new(Delay { wait }))
    }
}

#[derive(Debug)]
enum Wait {
    For(std::time::Duration),
    Until(TextExpr),
}

#[derive(Debug)]
struct Delay {
    wait: Wait,
}

#[async_trait]
impl Action for Delay {
    /// `{for}` (a duration, counted from when the step executes) or `{until}`: when the next
    /// steps start.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let until = match &self.wait {
            Wait::For(d) => {
                return Ok(json!({ "for": humantime::format_duration(*d).to_string() }))
            }
            Wait::Until(expr) => {
                let text = expr.render(t, ctx)?;
                parse_time(&text).ok_or_else(|| {
                    StepError::permanent(format!(
                        "`until` rendered `{text}`, which is not a time (RFC 3339, or Unix seconds or milliseconds)"
                    ))
                })?
            }
        };
        Ok(json!({ "until": until.to_rfc3339() }))
    }

    /// `{until}`, read from the input or counted from now on the runtime's clock.
    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        let until = match &self.wait {
            Wait::For(d) => cx.clock.now().plus(*d).to_rfc3339(),
            Wait::Until(_) => input["until"].as_str().unwrap_or_default().to_owned(),
        };
        Ok(Outcome::Output(json!({ "until": until })))
    }

    fn resume_at(&self, output: &Value) -> Option<Timestamp> {
        output["until"].as_str().and_then(Timestamp::parse_rfc3339)
    }
}

/// A time as RFC 3339 or a Unix timestamp in seconds or milliseconds.
fn parse_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        // Seconds until the year 5138; milliseconds after.
        return Some(Timestamp(if n.abs() < 100_000_000_000 {
            n * 1000
        } else {
            n
        }));
    }
    Timestamp::parse_rfc3339(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_as_rfc3339_or_unix_seconds_or_milliseconds() {
        let t = Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(parse_time("2026-11-22T10:00:00Z"), Some(t));
        assert_eq!(parse_time(&(t.millis() / 1000).to_string()), Some(t));
        assert_eq!(parse_time(&t.millis().to_string()), Some(t));
        assert_eq!(parse_time("next tuesday"), None);
    }
}
