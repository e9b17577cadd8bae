//! `code` (Zapier's Code, n8n's Code node): JavaScript that receives the step's rendered `input`
//! and returns the step's output.
//!
//! ```yaml
//! - id: score
//!   code:
//!     input: { items: "$.trigger.body.items" }
//!     script: |
//!       const total = input.items.reduce((sum, i) => sum + i.price * i.qty, 0);
//!       return { total, big: total > 1000 };
//! ```
//!
//! The script runs in the [`sandbox`]: the language and nothing else, a fresh engine per run, a
//! CPU-time and a memory limit (per step, within the server's [`Maxima`]). It is compiled when the
//! flow is loaded, so a syntax error is a flow error with its file line. The step is pure (no
//! effects): it runs straight after the step before it and may be repeated. It runs on a blocking
//! thread, so a slow script never holds up the async workers. Its `console` lines go to the
//! attempt's record (`attempts[].logs`), whether it succeeded or not. [`STATS`] counts scripts
//! for `/metrics`.

pub mod sandbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use self::sandbox::{Limits, ScriptError};
use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Templates, ValueExpr};
use crate::flow::position::Position;
use crate::flow::spec::HumanDuration;

/// The CPU time a script may use unless its step says otherwise.
pub const DEFAULT_CPU_TIME: Duration = Duration::from_secs(1);
/// The memory a script may use unless its step says otherwise, in MB.
pub const DEFAULT_MEMORY_MB: u32 = 64;
/// The longest script, in bytes.
const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Scripts running now and scripts stopped at a limit, since the process started (`/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Scripts running now.
    pub running: AtomicU64,
    /// Scripts stopped at their CPU-time (or wall-time) limit.
    pub stopped_time: AtomicU64,
    /// Scripts stopped at their memory limit.
    pub stopped_memory: AtomicU64,
}

/// This process's [`Stats`].
pub static STATS: Stats = Stats {
    running: AtomicU64::new(0),
    stopped_time: AtomicU64::new(0),
    stopped_memory: AtomicU64::new(0),
};

/// Counts a script as running while it lives.
struct Running;

impl Running {
    fn start() -> Self {
        STATS.running.fetch_add(1, Ordering::Relaxed);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        STATS.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most a step may ask for: the server's `code:` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxima {
    /// The longest `cpu_time` a step may set.
    pub cpu_time: Duration,
    /// The largest `memory_mb` a step may set.
    pub memory_mb: u32,
}

impl Default for Maxima {
    /// 10 s and 256 MB.
    fn default() -> Self {
        Self {
            cpu_time: Duration::from_secs(10),
            memory_mb: 256,
        }
    }
}

/// Run JavaScript on the step's input, e.g. `{ input: { amount: "$.trigger.body.amount" },
/// script: "return { cents: Math.round(input.amount * 100) }" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSpec {
    /// What the script receives as `input`: any value, its strings rendered as templates or
    /// JSONPaths as in `map` (default `null`).
    #[serde(default)]
    pub input: Option<Value>,
    /// JavaScript (ES2023): the body of a function of `input`. What it returns (JSON-like) is the
    /// step's output; what it throws fails the step with the script's line and column;
    /// `console.log` lines are recorded. No network, files, environment, `require` or `import`.
    pub script: String,
    /// The CPU time the script may use (default `1s`; at most the server's
    /// `code.max_cpu_time`, 10s unless configured).
    #[serde(default)]
    pub cpu_time: Option<HumanDuration>,
    /// The memory the script may use, in MB (default 64; at most the server's
    /// `code.max_memory_mb`, 256 unless configured).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub memory_mb: Option<u32>,
}

impl StepKind for CodeSpec {
    const KIND: &'static str = "code";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let maxima = cx.registry.code_maxima();
        let mut valid = true;
        let cpu_time = self.cpu_time.map_or(DEFAULT_CPU_TIME, |d| d.0);
        if cpu_time.is_zero() || cpu_time > maxima.cpu_time {
            valid = false;
            cx.error(
                "cpu_time",
                format!(
                    "`cpu_time` must be more than 0 and at most {} (the server's `code.max_cpu_time`)",
                    humantime::format_duration(maxima.cpu_time)
                ),
            );
        }
        let memory_mb = self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        if memory_mb == 0 || memory_mb > maxima.memory_mb {
            valid = false;
            cx.error(
                "memory_mb",
                format!(
                    "`memory_mb` must be at least 1 and at most {} (the server's `code.max_memory_mb`)",
                    maxima.memory_mb
                ),
            );
        }
        let script_at = cx.text_start("script");
        if self.script.len() > MAX_SCRIPT_BYTES {
            valid = false;
            cx.error("script", "a script is at most 64 KiB");
        } else if let Err(e) = sandbox::check(&self.script, memory_bytes(memory_mb.max(1))) {
            valid = false;
            let message = match e.location() {
                Some(at) => format!(
                    "the script does not compile (script line {}, column {}): {e}",
                    at.line, at.column
                ),
                None => format!("the script does not compile: {e}"),
            };
            let at = e.location().and_then(|at| in_file(script_at, at));
            cx.error_at("script", at, message);
        }
        let input = cx.value("input", self.input.as_ref().unwrap_or(&Value::Null));
        if !valid {
            return None;
        }
        Some(Arc::new(Code {
            input: input?,
            script: self.script,
            cpu_time,
            memory_mb,
            script_at,
        }))
    }
}

/// The memory limit in bytes for `mb` megabytes.
fn memory_bytes(mb: u32) -> usize {
    (mb as usize) << 20
}

/// Where a place in the script is in the flow file, given where the script's text starts there
/// (exact for a block scalar `script: |`, the usual way to write one).
fn in_file(script_at: Option<Position>, at: sandbox::Location) -> Option<Position> {
    let start = script_at?;
    Some(Position {
        line: start.line + at.line as usize - 1,
        col: start.col + at.column as usize - 1,
    })
}

#[derive(Debug)]
struct Code {
    input: ValueExpr,
    script: String,
    cpu_time: Duration,
    memory_mb: u32,
    /// Where the script's text starts in the flow file, to name a failing line there.
    script_at: Option<Position>,
}

#[async_trait]
impl Action for Code {
    fn is_pure(&self) -> bool {
        true
    }

    fn render(&self, templates: &Templates, ctx: &Value) -> Result<Value, StepError> {
        Ok(self.input.render(templates, ctx)?)
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        let limits = Limits {
            cpu_time: self.cpu_time,
            wall_time: cx.timeout,
            memory_bytes: memory_bytes(self.memory_mb),
        };
        let script = self.script.clone();
        let run = tokio::task::spawn_blocking(move || {
            let _running = Running::start();
            sandbox::run(&script, &input, limits)
        })
        .await
        .map_err(|e| StepError::transient(format!("the script's thread failed: {e}")))?;
        let stopped = match &run.result {
            Err(ScriptError::TimeLimit(_)) => Some(&STATS.stopped_time),
            Err(ScriptError::MemoryLimit(_)) => Some(&STATS.stopped_memory),
            _ => None,
        };
        if let Some(counter) = stopped {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            run_id = %cx.run_id,
            step_id = %cx.step_id,
            attempt = cx.attempt,
            logs = run.logs.len(),
            ok = run.result.is_ok(),
            "code step ran"
        );
        cx.log.write(run.logs);
        match run.result {
            Ok(output) => Ok(Outcome::Output(output)),
            Err(e) => Err(self.failure(e)),
        }
    }
}

impl Code {
    /// The step error for a script error: the message with the script's line and column (and the
    /// flow file's line), retryable only for an engine failure.
    fn failure(&self, error: ScriptError) -> StepError {
        let mut detail = json!({});
        let mut message = error.to_string();
        if let Some(at) = error.location() {
            message = format!("{message} (script line {}, column {}", at.line, at.column);
            detail["line"] = json!(at.line);
            detail["column"] = json!(at.column);
            if let Some(file) = in_file(self.script_at, at) {
                message = format!("{message}; flow file line {}", file.line);
                detail["flow_line"] = json!(file.line);
            }
            message.push(')');
        }
        let failure = match error {
            ScriptError::Engine(_) => StepError::transient(message),
            _ => StepError::permanent(message),
        };
        failure.with_detail(detail)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::authoring::offline;
    use crate::flow::{load_sources, Flow, FlowError};
    use crate::steps::Registry;

    fn load(text: &str, registry: &Registry) -> (Vec<Flow>, Vec<FlowError>) {
        let sources = [("f.yaml".to_owned(), Ok(text.to_owned()))];
        load_sources(sources, registry, &|_| None)
    }

    const LOOP: &str = "id: f\ntrigger: { webhook: }\nsteps:\n  - id: each\n    foreach:\n      items: \"$.trigger.body.list\"\n      steps:\n        - id: js\n          code:\n            input: \"{{item}}\"\n            script: |\n              console.log('item', input);\n              return input * 10;\n";

    #[test]
    fn a_syntax_error_in_a_nested_script_is_placed_at_its_line() {
        let text = LOOP.replace("return input * 10;", "return input * ;");
        let (_, errors) = load(&text, &Registry::builtin());
        let error = errors
            .iter()
            .find(|e| e.path == "steps[0].foreach.steps[0].code.script")
            .unwrap_or_else(|| panic!("{errors:?}"));
        assert_eq!(error.line, 13, "{error}");
        assert!(error.message.contains("(script line 2, column"), "{error}");
    }

    #[test]
    fn limits_past_the_servers_maxima_are_refused() {
        let mut registry = Registry::builtin();
        registry.set_code_maxima(Maxima {
            cpu_time: Duration::from_secs(2),
            memory_mb: 16,
        });
        let step = |limits: &str| {
            format!("id: f\ntrigger: {{ webhook: }}\nsteps:\n  - id: js\n    code: {{ script: return 1, {limits} }}\n")
        };
        let (flows, errors) = load(&step("cpu_time: 2s, memory_mb: 16"), &registry);
        assert_eq!((flows.len(), errors.len()), (1, 0), "{errors:?}");
        let (_, errors) = load(&step("cpu_time: 3s, memory_mb: 17"), &registry);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["steps[0].code.cpu_time", "steps[0].code.memory_mb"],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("at most 2s"), "{errors:?}");
    }

    #[tokio::test]
    async fn a_nested_script_runs_per_item_and_logs_to_the_loop_step() {
        let (flows, errors) = load(LOOP, &Registry::builtin());
        assert!(errors.is_empty(), "{errors:?}");
        let trigger = json!({ "body": { "list": [1, 2] } });
        let trace = offline::run(&flows[0], trigger, &BTreeMap::new()).await;
        let each = trace.record(&"each".parse().unwrap()).unwrap();
        let outputs: Vec<&Value> = each.output.as_ref().unwrap()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["output"])
            .collect();
        assert_eq!(outputs, [&json!(10), &json!(20)]);
        assert_eq!(each.attempts[0].logs, ["item 1", "item 2"]);
    }
}
