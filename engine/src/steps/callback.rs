//! `wait_for_callback` (n8n's Wait "on webhook call"): the run stops at this step until someone
//! POSTs to the step's resume URL, or until its `timeout`.
//!
//! The resume URL (`{{steps.<id>.resume_url}}`) is in the run's context from the start, so the steps
//! before this one can send it (a Slack message with an approval link, an email, an HTTP call to a
//! system that answers later). While the step waits, its queue item is due at the timeout and the
//! run holds no memory: a restart keeps it waiting. A callback finishes the step with
//! `{path: "callback", body, query, received_at}`; the timeout with `{path: "timeout",
//! timed_out: true}`. The steps listed under `on_callback` and `on_timeout` are the two paths (as
//! a `switch`'s); steps on neither run after both. The runtime does the waiting and the finishing
//! (`runtime::callbacks`); this step only says how long.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::switch::step_ids;
use super::{Action, BuildContext, ExecContext, Outcome, Path, StepError, StepKind};
use crate::expr::Templates;
use crate::flow::spec::HumanDuration;

/// The path taken when the callback came.
pub const CALLBACK_PATH: &str = "callback";
/// The path taken when it did not come in time.
pub const TIMEOUT_PATH: &str = "timeout";

/// How long a wait lasts when the step does not say.
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// The longest a step may wait.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Wait until the step's resume URL is called (POST), or until `timeout`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForCallbackSpec {
    /// How long to wait for the callback, e.g. `2d` (default `7d`, at most `365d`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<HumanDuration>,
    /// The ids of the steps that run only when the callback came (path `callback`), in order.
    #[serde(default)]
    pub on_callback: Option<Vec<String>>,
    /// The ids of the steps that run only when it did not come in time (path `timeout`), in order.
    #[serde(default)]
    pub on_timeout: Option<Vec<String>>,
}

impl StepKind for WaitForCallbackSpec {
    const KIND: &'static str = "wait_for_callback";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout > MAX_TIMEOUT || timeout.is_zero() {
            cx.error("timeout", "a wait lasts more than 0s and at most 365d");
            return None;
        }
        let mut paths = Vec::new();
        for (name, field, listed) in [
            (CALLBACK_PATH, "on_callback", self.on_callback),
            (TIMEOUT_PATH, "on_timeout", self.on_timeout),
        ] {
            if let Some(listed) = listed {
                paths.push(Path {
                    name: name.to_owned(),
                    steps: step_ids(cx, field, &listed)?,
                    field: field.to_owned(),
                });
            }
        }
        Some(Arc::new(WaitForCallback { timeout, paths }))
    }
}

#[derive(Debug)]
struct WaitForCallback {
    timeout: std::time::Duration,
    paths: Vec<Path>,
}

#[async_trait]
impl Action for WaitForCallback {
    /// `{timeout}`.
    fn render(&self, _: &Templates, _: &Value) -> Result<Value, StepError> {
        Ok(json!({ "timeout": humantime::format_duration(self.timeout).to_string() }))
    }

    /// Waits from now on the runtime's clock.
    async fn execute(&self, _input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        Ok(Outcome::Await {
            until: cx.clock.now().plus(self.timeout),
        })
    }

    fn paths(&self) -> &[Path] {
        &self.paths
    }

    fn awaits_callback(&self) -> bool {
        true
    }
}
