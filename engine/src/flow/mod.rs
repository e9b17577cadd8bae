//! Flows: the YAML model (`spec`), its validation into runtime [`Flow`]s (`build`), errors that
//! point at file, line, column and field, and the JSON Schema of the format (`schema`).
//!
//! All YAML parsing lives in this module. A flow file is deserialized straight from its text with
//! serde_yaml (structural errors carry serde_yaml's location), and a [`position::PositionIndex`] of
//! the same text locates every later, semantic error (unknown step kind, duplicate id, cycle, bad
//! template, …). Every problem of every flow is collected; nothing stops at the first. What a valid
//! flow surely does not mean is a warning (`lint`, and the schedule checks in `build`).

mod build;
mod env;
mod lint;
pub mod position;
pub mod schema;
pub mod spec;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::expr::{Templates, TextExpr};
use crate::ids::{FlowId, StepId};
use crate::model::Revision;
use crate::runtime::retry::RetryPolicy;
use crate::schedule::Schedule;
use crate::secrets::Secrets;
use crate::steps::{Action, Registry};
use crate::verify::Verifier;
use serde_json::Value;

pub use build::parse_flow;
pub use env::{DEFAULT_SERVER_URL, SERVER_URL};
pub use spec::{OnError, Respond};

/// A validated flow, ready to run.
#[derive(Debug)]
pub struct Flow {
    /// The flow's id.
    pub id: FlowId,
    /// Its human name (the id if none was given).
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The file it came from, as given.
    pub file: String,
    /// The file's text.
    pub source: Arc<str>,
    /// The content hash of `source`.
    pub revision: Revision,
    /// What starts a run.
    pub trigger: Trigger,
    /// The most steps of this flow that may execute at once (`None`: no limit of its own).
    pub concurrency: Option<usize>,
    /// Whether new events start runs (`enabled: false` pauses the flow).
    pub enabled: bool,
    /// Retention overrides for this flow's history.
    pub retention: Retention,
    /// The steps, in file order, then the `on_failure` steps (`handler`).
    pub steps: Vec<Step>,
    /// The run title's template (`title:`), rendered with the run's trigger.
    pub title: Option<crate::expr::TextExpr>,
    /// The compiled templates the steps render with.
    pub templates: Templates,
    /// Values substituted from the environment and connector credentials, and the values derived
    /// from them: redacted wherever they would be recorded or shown.
    pub secrets: Secrets,
    /// What the file allows but surely does not mean (shown by `validate`; the flow still runs).
    pub warnings: Vec<FlowError>,
}

impl Flow {
    /// The step with an id.
    pub fn step(&self, id: &StepId) -> Option<&Step> {
        self.steps.iter().find(|s| &s.id == id)
    }

    /// The events one request carries: each element of a batch (HubSpot posts arrays), else the
    /// request itself. Each is a `trigger` whose `body` is that event.
    pub fn split_batch(&self, trigger: Value) -> Vec<Value> {
        match (&trigger["body"], self.batches()) {
            (Value::Array(events), true) => events
                .iter()
                .map(|event| {
                    let mut one = trigger.clone();
                    one["body"] = event.clone();
                    one
                })
                .collect(),
            _ => vec![trigger],
        }
    }

    /// Whether a JSON array body is a batch of events, each its own run (HubSpot's deliveries).
    pub fn batches(&self) -> bool {
        matches!(&self.trigger, Trigger::Webhook { verify: Some(v), .. } if v.verifier.batches())
    }

    /// Why an event is not for this flow (its type is not in `events`), or `None` to run it.
    pub fn ignores(&self, trigger: &Value) -> Option<String> {
        let Trigger::Webhook { events, verify, .. } = &self.trigger else {
            return None;
        };
        if events.is_empty() {
            return None;
        }
        let kind = match verify {
            Some(v) => v.verifier.event_type(trigger),
            None => trigger["body"]["type"].as_str().map(str::to_owned),
        };
        match kind {
            Some(kind) if events.contains(&kind) => None,
            Some(kind) => Some(format!("event type `{kind}` is not in this flow's events")),
            None => Some("the event has no type, and this flow takes only some types".into()),
        }
    }

    /// The steps that need no other step: where a run starts.
    pub fn roots(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.needs.is_empty())
    }
}

/// How long a flow's finished runs are kept; `None` fields take the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Runs older than this are deleted.
    pub max_age: Option<Duration>,
    /// At most this many (the newest) are kept.
    pub max_runs: Option<usize>,
}

/// What starts a flow's runs.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Requests to the flow's catch URL.
    Webhook {
        /// When the hook answers.
        respond: Respond,
        /// How long `respond: result` waits.
        respond_timeout: Duration,
        /// How repeated deliveries are recognised.
        dedupe: Option<Dedupe>,
        /// The sender's signature check.
        verify: Option<Verify>,
        /// The event types that start runs (empty: all).
        events: Vec<String>,
        /// Requests allowed per second (bursts up to a second's worth, at least 1); `None`: no
        /// limit.
        rate_limit: Option<f64>,
    },
    /// Started by hand.
    Manual,
    /// Started on a schedule.
    Schedule(Schedule),
}

/// A flow's dedupe rule: events with the same key within the window start one run.
#[derive(Debug, Clone)]
pub struct Dedupe {
    /// Renders an event's key from `{trigger: …}`.
    pub key: TextExpr,
    /// How long a key counts.
    pub window: Duration,
}

/// A flow's webhook signature check.
#[derive(Clone)]
pub struct Verify {
    /// The provider's name (`stripe`, `github`, …).
    pub provider: &'static str,
    /// Its check.
    pub verifier: Arc<dyn Verifier>,
    /// The secrets any of which may sign. Empty when the flow's secret is an environment
    /// variable with an empty default (`${env:NAME:-}`) that is not set: the flow loads, and its
    /// hook refuses every request until the secret is configured.
    pub secrets: Vec<String>,
    /// How far a signed timestamp may be from now.
    pub tolerance: Duration,
}

impl fmt::Debug for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("Verify")
            .field("provider", &self.provider)
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// A validated step.
#[derive(Debug)]
pub struct Step {
    /// The step's id.
    pub id: StepId,
    /// Its human name.
    pub name: Option<String>,
    /// Its kind (`filter`, `map`, `http`, …).
    pub kind: &'static str,
    /// The steps it waits for.
    pub needs: Vec<StepId>,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// What it does.
    pub action: Arc<dyn Action>,
    /// The line of the step in its file.
    pub line: usize,
    /// For a step on a path of a `switch`: it runs only when that path is taken.
    pub route: Option<Route>,
    /// What its final failure does to the run.
    pub on_error: OnError,
    /// An `on_failure` step: it runs only when the run has failed for good.
    pub handler: bool,
    /// The named queue it runs in.
    pub queue: Option<StepQueue>,
    /// Whether its input differs each time it is rendered (a template calls `uuid`): a step with
    /// effects then has its input stored before the call (see `StepRecord::rendered_for`).
    pub varies: bool,
}

/// A step's named queue, compiled.
#[derive(Debug, Clone)]
pub struct StepQueue {
    /// The queue's name.
    pub name: String,
    /// Renders the key runs are serialised by.
    pub key: TextExpr,
    /// How many at a time per key.
    pub concurrency: usize,
    /// The pause between one and the next.
    pub gap: Duration,
}

/// The switch path a step is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The switch.
    pub switch: StepId,
    /// The path's name.
    pub path: String,
}

/// One problem in a flow file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The field's path, e.g. `steps[2].http.url` (empty for the file as a whole).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FlowError {}

/// Where to read environment variables (`${env:NAME}`) from.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// An environment lookup that can be kept and shared (the server's: process environment, then
/// the secrets file).
pub type SharedEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether a path names a flow file (`.yaml`/`.yml`, not a `.test.yaml` flow test).
pub fn is_flow_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.contains(".test.")
}

/// The flow files among `paths`: files as given, directories' flow files (not recursive), sorted.
pub fn flow_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FlowError> {
    let mut files = Vec::new();
    for path in paths {
        let io_error = |e: std::io::Error| FlowError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            path: String::new(),
            message: format!("cannot read: {e}"),
        };
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_error)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_flow_file(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            std::fs::metadata(path).map_err(io_error)?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads and validates the flows at `paths` (files or directories). Returns the valid flows and
/// every problem found; two files with the same flow id are a problem too.
pub fn load(
    paths: &[PathBuf],
    registry: &Registry,
    env: EnvLookup<'_>,
) -> (Vec<Flow>, Vec<FlowError>) {
    let files = match flow_files(paths) {
        Ok(files) => files,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let sources = files.iter().map(|f| {
        let text = std::fs::read_to_string(f);
        (f.display().to_string(), text.map_err(|e| e.to_string()))
    });
    load_sources(sources, registry, env)
}

/// Validates flows from (file name, text or read error) pairs; see [`load`].
pub fn load_sources(
    sources: impl IntoIterator<Item = (String, Result<String, String>)>,
    registry: &Registry,
    env: EnvLookup<'_>,
) -> (Vec<Flow>, Vec<FlowError>) {
    let mut flows: Vec<Flow> = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in sources {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let message = format!("cannot read: {e}");
                errors.push(FlowError {
                    file,
                    line: 1,
                    col: 1,
                    path: String::new(),
                    message,
                });
                continue;
            }
        };
        match parse_flow(&file, &text, registry, env) {
            Ok(flow) => match flows.iter().find(|f| f.id == flow.id) {
                Some(first) => {
                    let index = position::PositionIndex::new(&text);
                    let at = index.locate("id");
                    errors.push(FlowError {
                        file,
                        line: at.line,
                        col: at.col,
                        path: "id".into(),
                        message: format!("flow id `{}` is already used by {}", flow.id, first.file),
                    });
                }
                None => flows.push(flow),
            },
            Err(errs) => errors.extend(errs),
        }
    }
    (flows, errors)
}
