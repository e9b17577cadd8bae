//! Steps: the [`Action`] contract every step kind implements, and the [`Registry`] of kinds.
//!
//! A step kind is a typed config struct ([`StepKind`]) that the flow loader deserializes from the
//! step's YAML and then `build`s into an [`Action`]: the runtime object the executor calls. The
//! engine knows kinds only through the registry, so connectors add kinds without touching the
//! flow parser. Built-in kinds: [`filter`], [`map`], [`http`], [`switch`], [`delay`], [`foreach`],
//! [`subflow`] (`flow:`), [`code`], [`storage`].
//!
//! An action works in two phases. `render` (pure, synchronous) turns the run context into the step's
//! input — the exact thing recorded in run history as "what the step received"; `execute` then acts
//! on that input (I/O happens only here).

pub mod callback;
pub mod code;
pub mod delay;
pub mod filter;
pub mod foreach;
pub mod http;
pub mod map;
pub mod paging;
pub mod storage;
pub mod subflow;
pub mod switch;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::expr::{Compiler, Condition, ConditionSpec, ExprError, Templates, TextExpr, ValueExpr};
use crate::flow::position::{Position, PositionIndex};
use crate::flow::spec::{read_shape, ShapeProblem};
use crate::flow::EnvLookup;
use crate::ids::{RunId, StepId};
use crate::outbound::HttpClient;
use crate::pacing::Pacer;
use crate::verify::Verifier;

/// Whether a step's config calls the `uuid` helper in a template: its input then differs each
/// time it is rendered.
pub fn calls_uuid(config: &serde_yaml::Value) -> bool {
    static CALL: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let call = CALL.get_or_init(|| {
        regex::Regex::new(r"(?:\{\{|\()\s*uuid\s*(?:\}\}|\))").expect("valid regex")
    });
    serde_yaml::to_string(config).is_ok_and(|text| call.is_match(&text))
}

/// A step's runtime behaviour.
#[async_trait]
pub trait Action: Send + Sync + fmt::Debug {
    /// Renders the step's input from the run context (`trigger`, `steps`, `run`).
    fn render(&self, templates: &Templates, ctx: &Value) -> Result<Value, StepError>;

    /// Acts on the rendered input.
    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError>;

    /// Whether the step only computes from its input (no call outside hookflow, no waiting): a
    /// worker then runs it straight after the step before it, in the same task, instead of
    /// queueing it. A step with effects always starts from the queue.
    fn is_pure(&self) -> bool {
        false
    }

    /// Whether an attempt whose outcome is unknown (it timed out) may be repeated: `false` for a
    /// call that creates something without an idempotency key (a retry could duplicate it).
    fn may_repeat(&self) -> bool {
        true
    }

    /// The paths of a branching step (`switch`): each names the steps that run only when it is
    /// taken. The step's output says which was taken (`{"path": NAME}`).
    fn paths(&self) -> &[Path] {
        &[]
    }

    /// For a step that holds the run (`delay`): when the steps after it may start, read from its
    /// output. `None`: at once.
    fn resume_at(&self, _output: &Value) -> Option<crate::model::Timestamp> {
        None
    }

    /// Whether the step waits for a callback to its resume URL (`wait_for_callback`): the run's
    /// context then holds `steps.<id>.resume_url` from the start, so the steps before it can send
    /// the URL to whoever will call it.
    fn awaits_callback(&self) -> bool {
        false
    }
}

/// One path of a branching step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Its name (`enterprise`, `default`).
    pub name: String,
    /// The steps on it, in order.
    pub steps: Vec<StepId>,
    /// Where the flow file lists them, within the step's kind (`cases[0].steps`, `default`):
    /// errors about them point there.
    pub field: String,
}

/// What a step's execution has access to besides its input.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step_id: StepId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Stable across attempts of this step in this run: `{run_id}:{step_id}`.
    pub idempotency_key: String,
    /// When set, actions with side effects describe what they would do instead of doing it.
    pub dry_run: bool,
    /// How long the step may take.
    pub timeout: Duration,
    /// The shared outbound HTTP client (with the outbound address policy applied).
    pub http: HttpClient,
    /// Rate-limit pacing of connector accounts.
    pub pacer: Pacer,
    /// The flow's templates, and the run context the step's input was rendered against (for
    /// steps that render more as they go: `foreach`).
    pub templates: Templates,
    /// See `templates`.
    pub context: Arc<Value>,
    /// Starts other flows' runs (`flow` steps); `None` offline.
    pub sub_flows: Option<Arc<dyn SubFlows>>,
    /// The runtime's clock (`delay` counts from it).
    pub clock: crate::store::SharedClock,
    /// Small state shared by every node (a connector's cached OAuth access token); `None`
    /// offline.
    pub state: Option<SharedState>,
    /// Where the step writes lines for its attempt's record (a `code` step's `console.log`).
    pub log: StepLog,
    /// Where `storage` steps keep values: the store, or scratch storage offline.
    pub storage: storage::StepStorage,
}

/// Lines a step attempt writes for its record (`attempts[].logs`), shared by the clones of one
/// [`ExecContext`] (so a `foreach` body's lines go to the `foreach` step's attempt).
#[derive(Debug, Clone, Default)]
pub struct StepLog(Arc<std::sync::Mutex<Vec<String>>>);

impl StepLog {
    /// Adds lines.
    pub fn write(&self, lines: impl IntoIterator<Item = String>) {
        self.lines().extend(lines);
    }

    /// The lines written so far, taken out.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines())
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The store's small keyed state, as steps may use it (durable, shared by the nodes of a store).
#[derive(Clone)]
pub struct SharedState(Arc<dyn crate::store::Store>);

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedState").finish_non_exhaustive()
    }
}

impl SharedState {
    /// State kept in `store`.
    pub fn new(store: Arc<dyn crate::store::Store>) -> Self {
        Self(store)
    }

    /// The value under `key`, if any (a store that cannot answer answers none).
    pub async fn get(&self, key: &str) -> Option<Value> {
        self.0.state(key).await.ok().flatten()
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: &str, value: &Value) -> Result<(), crate::store::StoreError> {
        self.0.put_state(key, value).await
    }
}

/// Starting a run of another flow from a step, and reading how it ended.
#[async_trait]
pub trait SubFlows: Send + Sync + fmt::Debug {
    /// Starts a run of `flow` with `trigger`, once per `key` (a repeat answers the same run).
    async fn start(&self, flow: &str, trigger: Value, key: &str) -> Result<RunId, StepError>;

    /// How the run ended, or `None` while it has not.
    async fn outcome(&self, run: RunId) -> Result<Option<RunOutcome>, StepError>;
}

/// How a finished run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `succeeded`, `failed` or `filtered`.
    pub status: crate::model::RunStatus,
    /// Why it failed or was filtered.
    pub reason: Option<String>,
    /// The output of its last step (in flow order) that produced one.
    pub output: Value,
}

/// How a successful step ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The step produced an output; the run goes on.
    Output(Value),
    /// The step stopped the run on purpose (a filter that did not pass): the run is `filtered`.
    Stop {
        /// What the step records as its output.
        output: Value,
        /// Why, in words.
        reason: String,
    },
    /// The step waits for a callback to its resume URL (`wait_for_callback`) until `until`; the
    /// runtime finishes it with the callback's body, or with its `timeout` path then.
    Await {
        /// When it times out.
        until: crate::model::Timestamp,
    },
    /// The step cannot act yet (its account's rate limit is used up): it goes back to the queue and
    /// runs again after `delay`, without counting as an attempt.
    Wait {
        /// How long to wait.
        delay: Duration,
        /// Why, in words.
        reason: String,
    },
}

/// Why a step attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// A sentence a RevOps engineer can act on.
    pub message: String,
    /// Structured detail (an HTTP status and body excerpt, …).
    pub detail: Value,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The earliest time to retry, when the target said so (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The HTTP status the target answered, when the error is one (a step's `retry.on_status`
    /// can make more statuses retryable).
    pub http_status: Option<u16>,
}

impl StepError {
    /// An error that another attempt will not fix (bad input, a 4xx).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            detail: Value::Null,
            retryable: false,
            retry_after: None,
            http_status: None,
        }
    }

    /// An error that another attempt may fix (a timeout, a 5xx).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(message)
        }
    }

    /// The same error with structured detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

impl From<ExprError> for StepError {
    fn from(e: ExprError) -> Self {
        let at = if e.field.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", e.field)
        };
        Self::permanent(format!(
            "could not render the step's input{at}: {}",
            e.message
        ))
    }
}

/// A step kind's YAML config: deserialized from the step's `<kind>:` value, then built.
pub trait StepKind: DeserializeOwned + JsonSchema + 'static {
    /// The YAML key that selects this kind (`filter`, `http`, `hubspot`, …).
    const KIND: &'static str;

    /// Builds the action, compiling expressions through `cx` (which collects every error).
    /// Returns `None` when an error was recorded.
    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>>;
}

/// Collects compiled expressions and errors while one step's config is built.
pub struct BuildContext<'a> {
    compiler: &'a mut Compiler,
    env: EnvLookup<'a>,
    secrets: &'a mut Vec<String>,
    registry: &'a Registry,
    errors: Vec<BuildError>,
    /// The flow file's positions and the path of the step's kind key in it, when known.
    located: Option<(&'a PositionIndex, String)>,
}

/// A problem found while building a step's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The field's path, relative to the step's kind key.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Where in the file, when the kind knows better than the field's position (a line inside
    /// a script).
    pub at: Option<Position>,
}

/// A step nested in another's config (a `foreach` body), built.
#[derive(Debug, Clone)]
pub struct NestedStep {
    /// Its id (unique among its siblings).
    pub id: StepId,
    /// Its kind.
    pub kind: &'static str,
    /// What it does.
    pub action: Arc<dyn Action>,
}

impl<'a> BuildContext<'a> {
    /// A context compiling into a flow's compiler, reading settings from `env`, remembering the
    /// credentials it hands out in `secrets` (the flow's values to redact), and building nested
    /// steps with `registry`.
    pub fn new(
        compiler: &'a mut Compiler,
        env: EnvLookup<'a>,
        secrets: &'a mut Vec<String>,
        registry: &'a Registry,
    ) -> Self {
        Self {
            compiler,
            env,
            secrets,
            registry,
            errors: Vec::new(),
            located: None,
        }
    }

    /// The same context, able to tell where a field's text is in the flow file: `index` is the
    /// file's, `kind_path` the path of the step's kind key (`steps[2].code`).
    pub fn located(mut self, index: &'a PositionIndex, kind_path: String) -> Self {
        self.located = Some((index, kind_path));
        self
    }

    /// Where the text of the string at config field `field` starts in the flow file, if known
    /// (see [`PositionIndex::text_start`]).
    pub fn text_start(&self, field: &str) -> Option<Position> {
        let (index, base) = self.located.as_ref()?;
        index.text_start(&join_path(base, field))
    }

    /// Builds a step written inside this one's config at `field`: `{id, <kind>: config}`. Kinds
    /// that shape the run itself (`switch`, `delay`, `wait_for_callback`) are refused.
    pub fn nested_step(&mut self, field: &str, spec: &serde_yaml::Value) -> Option<NestedStep> {
        let Some(map) = spec.as_mapping() else {
            self.error(
                field,
                "a step: a mapping with `id` and one step kind such as `map:`",
            );
            return None;
        };
        let id = match map
            .get("id")
            .and_then(|v| v.as_str())
            .map(str::parse::<StepId>)
        {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                self.error(&join_path(field, "id"), e.to_string());
                None
            }
            None => {
                self.error(field, "missing field `id`");
                None
            }
        };
        let kinds: Vec<(&str, &serde_yaml::Value)> = map
            .iter()
            .filter_map(|(k, v)| k.as_str().filter(|k| *k != "id").map(|k| (k, v)))
            .collect();
        let [(kind, config)] = kinds.as_slice() else {
            self.error(
                field,
                "a step has `id` and exactly one kind (`map:`, `http:`, …)",
            );
            return None;
        };
        let here = join_path(field, kind);
        let Some((kind, entry)) = self.registry.get_key_value(kind) else {
            self.error(&here, format!("unknown step kind `{kind}`"));
            return None;
        };
        if matches!(kind, "switch" | "delay" | "wait_for_callback") {
            self.error(
                &here,
                format!("`{kind}` shapes the whole run: it cannot be a nested step"),
            );
            return None;
        }
        let mut nested = BuildContext::new(self.compiler, self.env, self.secrets, self.registry);
        if let Some((index, base)) = &self.located {
            nested = nested.located(index, join_path(base, &here));
        }
        let built = entry.build((*config).clone(), &mut nested);
        for mut e in nested.into_errors() {
            e.field = join_path(&here, &e.field);
            self.errors.push(e);
        }
        let action = match built {
            Ok(action) => action,
            Err(e) => {
                self.error(&join_path(&here, &e.path), e.message);
                None
            }
        };
        if action.as_ref().is_some_and(|a| !a.is_pure()) && calls_uuid(config) {
            // A retry of the loop renders its steps again: the call would go out under its key
            // with another id (Stripe refuses that), so the flow cannot say it.
            self.error(
                &here,
                "a nested step with effects cannot call `{{uuid}}`: a retry of the loop renders it \
                 again and would send another id under the same idempotency key; use \
                 `{{run.idempotency_key}}` or a value from the item",
            );
            return None;
        }
        Some(NestedStep {
            id: id?,
            kind,
            action: action?,
        })
    }

    /// A setting from the environment (a connector's base URL, …); empty counts as unset.
    pub fn setting(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    /// A credential from the environment (an API token): remembered as a secret, so it is
    /// redacted wherever the run would record it.
    pub fn credential(&mut self, name: &str) -> Option<String> {
        let value = self.setting(name)?;
        if !self.secrets.contains(&value) {
            self.secrets.push(value.clone());
        }
        Some(value)
    }

    /// Compiles a value (its strings may be templates or JSONPaths) at config field `field`.
    pub fn value(&mut self, field: &str, value: &Value) -> Option<ValueExpr> {
        self.compiler
            .value(value)
            .map_err(|errs| self.expr_errors(field, errs))
            .ok()
    }

    /// Compiles a text template at config field `field`.
    pub fn text(&mut self, field: &str, text: &str) -> Option<TextExpr> {
        self.compiler
            .text(text)
            .map_err(|e| self.expr_errors(field, vec![e]))
            .ok()
    }

    /// Compiles a condition at config field `field`.
    pub fn condition(&mut self, field: &str, spec: &ConditionSpec) -> Option<Condition> {
        self.compiler
            .condition(spec)
            .map_err(|errs| self.expr_errors(field, errs))
            .ok()
    }

    /// Records a problem at config field `field` (relative to the step's kind key).
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.error_at(field, None, message);
    }

    /// Records a problem at config field `field`, placed at `at` in the file when given.
    pub fn error_at(&mut self, field: &str, at: Option<Position>, message: impl Into<String>) {
        self.errors.push(BuildError {
            field: field.to_owned(),
            message: message.into(),
            at,
        });
    }

    /// The problems recorded.
    pub fn into_errors(self) -> Vec<BuildError> {
        self.errors
    }

    fn expr_errors(&mut self, field: &str, errs: Vec<ExprError>) {
        for e in errs {
            self.error(&join_path(field, &e.field), e.message);
        }
    }
}

/// Joins two field paths: `a` + `b` → `a.b`, `a` + `[0]` → `a[0]`, with empty parts dropped.
pub fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

type BuildFn =
    fn(serde_yaml::Value, &mut BuildContext<'_>) -> Result<Option<Arc<dyn Action>>, ShapeProblem>;

/// One registered step kind.
#[derive(Clone, Copy)]
pub struct KindEntry {
    build: BuildFn,
    schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl KindEntry {
    /// Deserializes the kind's config and builds its action; a config that does not have the
    /// kind's shape is a problem at a path inside it.
    pub fn build(
        &self,
        config: serde_yaml::Value,
        cx: &mut BuildContext<'_>,
    ) -> Result<Option<Arc<dyn Action>>, ShapeProblem> {
        (self.build)(config, cx)
    }

    /// The JSON Schema of the kind's config (shared definitions go to `generator`).
    pub fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        (self.schema)(generator)
    }
}

/// The step kinds a flow may use, by YAML key, and the webhook verifiers, by provider name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
    verifiers: BTreeMap<&'static str, Arc<dyn Verifier>>,
    code_maxima: code::Maxima,
}

impl Registry {
    /// The built-in kinds: `filter`, `map`, `http`, `switch`, `delay`, `foreach`, `flow`, `code`,
    /// `storage`, `wait_for_callback`.
    pub fn builtin() -> Self {
        let mut r = Self::default();
        r.register::<filter::FilterSpec>();
        r.register::<map::MapSpec>();
        r.register::<http::HttpSpec>();
        r.register::<switch::SwitchSpec>();
        r.register::<delay::DelaySpec>();
        r.register::<callback::WaitForCallbackSpec>();
        r.register::<foreach::ForeachSpec>();
        r.register::<subflow::SubflowSpec>();
        r.register::<code::CodeSpec>();
        r.register::<storage::StorageSpec>();
        r
    }

    /// The most a `code` step may ask for (the server's configuration; default [`code::Maxima`]).
    pub fn set_code_maxima(&mut self, maxima: code::Maxima) {
        self.code_maxima = maxima;
    }

    /// See [`Registry::set_code_maxima`].
    pub fn code_maxima(&self) -> code::Maxima {
        self.code_maxima
    }

    /// Adds a kind.
    pub fn register<K: StepKind>(&mut self) {
        fn build<K: StepKind>(
            config: serde_yaml::Value,
            cx: &mut BuildContext<'_>,
        ) -> Result<Option<Arc<dyn Action>>, ShapeProblem> {
            Ok(read_shape::<K>(config)?.build(cx))
        }
        let entry = KindEntry {
            build: build::<K>,
            schema: |g| g.subschema_for::<K>(),
        };
        self.kinds.insert(K::KIND, entry);
    }

    /// The kind registered under `name`.
    pub fn get(&self, name: &str) -> Option<&KindEntry> {
        self.kinds.get(name)
    }

    /// The kind registered under `name`, with its name as registered.
    pub fn get_key_value(&self, name: &str) -> Option<(&'static str, &KindEntry)> {
        self.kinds.get_key_value(name).map(|(k, v)| (*k, v))
    }

    /// Every kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = (&'static str, &KindEntry)> {
        self.kinds.iter().map(|(k, v)| (*k, v))
    }

    /// Adds a webhook verifier for a provider (`stripe`, `github`, …).
    pub fn register_verifier(&mut self, provider: &'static str, verifier: Arc<dyn Verifier>) {
        self.verifiers.insert(provider, verifier);
    }

    /// The verifier of a provider, with its name as registered.
    pub fn verifier(&self, provider: &str) -> Option<(&'static str, Arc<dyn Verifier>)> {
        self.verifiers
            .get_key_value(provider)
            .map(|(k, v)| (*k, v.clone()))
    }

    /// Every verifier's provider name.
    pub fn providers(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.verifiers.keys().copied()
    }
}
