//! The flow file as written: serde types deserialized straight from the YAML text.
//!
//! These types only describe shape; `flow::build` validates them into the runtime [`super::Flow`].
//! A step's kind-specific config stays a `serde_yaml::Value` here, because only the step kind
//! (found through the registry) knows its type.
//!
//! A flow and its steps are read key by key: a key whose value does not have its shape (a typo in
//! `trigger`, a step's `retry: soon`) becomes a [`ShapeProblem`] and the rest is still read, so
//! one mistake never hides another. Only YAML that does not parse at all stops reading.

use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer};
use serde_yaml::{Mapping, Value};

use crate::steps::join_path;

/// A flow: a trigger and the steps each event runs through.
// Read leniently (see the module doc): a required key that is missing or misshapen is `None`,
// with its problem in `problems`.
#[derive(Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// The flow's stable id (letters, digits, `_`, `-`); it appears in the catch URL.
    #[schemars(with = "String")]
    pub id: Option<String>,
    /// A human name shown in the UI.
    #[serde(default)]
    pub name: Option<String>,
    /// What the flow is for.
    #[serde(default)]
    pub description: Option<String>,
    /// A run's title in the UI, rendered from its event when the run is created, e.g.
    /// `"{{trigger.body.user_email}} → {{trigger.body.plan}}"`.
    #[serde(default)]
    pub title: Option<String>,
    /// What starts a run.
    #[schemars(with = "TriggerSpec")]
    pub trigger: Option<TriggerSpec>,
    /// The most steps of this flow that may execute at once (default: no limit but the server's
    /// `workers`). `1` runs the flow's events one step at a time, in order of arrival.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// `false` pauses the flow: its catch hook answers 503 `flow_disabled` (so senders retry
    /// later) and its schedule does not fire; runs already queued go on. Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How long this flow's run history is kept (default: the server's `retention`).
    #[serde(default)]
    pub retention: Option<RetentionSpec>,
    /// The steps, run in order unless `needs` says otherwise.
    #[schemars(with = "Vec<StepSpec>")]
    pub steps: Option<StepList>,
    /// Steps that run when a run fails for good (after its retries), e.g. an alert with the run's
    /// id and error (`{{run.id}}`, `{{run.error}}`). The run ends `failed` once they are done.
    #[serde(default)]
    #[schemars(with = "Vec<StepSpec>")]
    pub on_failure: StepList,
    /// What did not read as its shape.
    #[schemars(skip)]
    pub problems: Vec<ShapeProblem>,
}

/// A list of steps as read: `None` where an item is not a step at all (its problem is recorded),
/// so the other items keep their index.
pub type StepList = Vec<Option<StepSpec>>;

/// The keys a flow file may have at the top.
pub const FLOW_KEYS: [&str; 10] = [
    "id",
    "name",
    "description",
    "title",
    "trigger",
    "concurrency",
    "enabled",
    "retention",
    "steps",
    "on_failure",
];

/// A part of a flow file that does not have its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeProblem {
    /// The field's path, e.g. `trigger.webhok` (an unknown field) or `steps[2].retry.attempts`.
    pub path: String,
    /// serde's words, e.g. "unknown field `dedup`, expected one of …".
    pub message: String,
}

/// Reads `value` as a `T`, or says what is wrong where inside it (the problem's path is relative
/// to `value`: `""` for the value itself).
pub fn read_shape<T: DeserializeOwned>(value: Value) -> Result<T, ShapeProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        ShapeProblem {
            path: if inner == "." { String::new() } else { inner },
            message: e.into_inner().to_string(),
        }
    })
}

/// Reads `value` as a `T`, or records why not at `path` (refined to the field inside `value`
/// that is wrong).
fn read<T: DeserializeOwned>(
    value: Value,
    path: &str,
    problems: &mut Vec<ShapeProblem>,
) -> Option<T> {
    read_shape(value)
        .map_err(|problem| {
            problems.push(ShapeProblem {
                path: join_path(path, &problem.path),
                message: problem.message,
            });
        })
        .ok()
}

/// The mapping at the top of a flow file or step, with its keys as text; a key that is not text
/// is a problem.
fn entries(map: Mapping, problems: &mut Vec<ShapeProblem>) -> Vec<(String, Value)> {
    map.into_iter()
        .filter_map(|(key, value)| match key {
            Value::String(key) => Some((key, value)),
            other => {
                problems.push(ShapeProblem {
                    path: String::new(),
                    message: format!("a key must be a name, not `{}`", yaml_text(&other)),
                });
                None
            }
        })
        .collect()
}

/// A YAML value as written, on one line.
fn yaml_text(value: &Value) -> String {
    serde_yaml::to_string(value)
        .unwrap_or_default()
        .trim()
        .replace('\n', " ")
}

/// Reads a list of steps at `path`, item by item.
fn read_steps(value: Value, path: &str, problems: &mut Vec<ShapeProblem>) -> Option<StepList> {
    let items: Vec<Value> = read(value, path, problems)?;
    Some(
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| read(item, &format!("{path}[{i}]"), problems))
            .collect(),
    )
}

impl<'de> Deserialize<'de> for FlowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Value::Mapping(map) = Value::deserialize(d)? else {
            return Err(de::Error::custom(
                "a flow file is a mapping with `id`, `trigger` and `steps` at the top",
            ));
        };
        let mut problems = Vec::new();
        let mut spec = FlowSpec::default();
        for (key, value) in entries(map, &mut problems) {
            let p = &mut problems;
            match key.as_str() {
                "id" => spec.id = read(value, "id", p),
                "name" => spec.name = read(value, "name", p).flatten(),
                "description" => spec.description = read(value, "description", p).flatten(),
                "title" => spec.title = read(value, "title", p).flatten(),
                "trigger" => spec.trigger = read(value, "trigger", p),
                "concurrency" => spec.concurrency = read(value, "concurrency", p).flatten(),
                "enabled" => spec.enabled = read(value, "enabled", p).flatten(),
                "retention" => spec.retention = read(value, "retention", p).flatten(),
                "steps" => spec.steps = read_steps(value, "steps", p),
                "on_failure" => {
                    spec.on_failure = read_steps(value, "on_failure", p).unwrap_or_default()
                }
                _ => p.push(ShapeProblem {
                    path: String::new(),
                    message: format!(
                        "unknown field `{key}`, expected one of {}",
                        quoted(&FLOW_KEYS)
                    ),
                }),
            }
        }
        for (key, missing) in [
            ("id", spec.id.is_none()),
            ("trigger", spec.trigger.is_none()),
            ("steps", spec.steps.is_none()),
        ] {
            if missing && !problems.iter().any(|p| p.path.starts_with(key)) {
                problems.push(ShapeProblem {
                    path: String::new(),
                    message: format!("missing field `{key}`"),
                });
            }
        }
        spec.problems = problems;
        Ok(spec)
    }
}

/// Names as serde lists them: `` `a`, `b`, `c` ``.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a flow's finished runs are kept; unset fields take the server's defaults.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Delete finished runs older than this, e.g. `30d`.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Keep at most this many finished runs (the newest).
    #[serde(default)]
    pub max_runs: Option<usize>,
}

/// What starts a run of the flow: exactly one of `webhook`, `manual` or `schedule`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// An HTTP request to the flow's catch URL (`webhook:` alone means the defaults).
    #[serde(default, deserialize_with = "present")]
    pub webhook: Option<WebhookSpec>,
    /// Started by hand (CLI, API, UI) with a given payload.
    #[serde(default, deserialize_with = "present")]
    pub manual: Option<ManualSpec>,
    /// Started on a cron schedule.
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
}

/// A cron schedule. Each run's `trigger.body` is `{scheduled_at, fired_at}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `min hour day month weekday` (5 fields), seconds first (6), or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`. Weekdays `0`-`7` (Sunday is 0 and 7) or `MON-FRI`.
    pub cron: String,
    /// The IANA timezone the expression is read in (default `UTC`), e.g. `Europe/Paris`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Fire up to this long after each tick, at random (spreads load), e.g. `30s`.
    #[serde(default)]
    pub jitter: Option<HumanDuration>,
    /// Ticks that came due while the server was down: `skip` (default) or `catch_up`.
    #[serde(default)]
    pub missed: Missed,
    /// With `catch_up`, fire at most this many missed ticks, the most recent (default 10).
    #[serde(default)]
    pub catch_up_max: Option<usize>,
}

/// What happens to ticks missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// They are not fired.
    #[default]
    Skip,
    /// They are fired at start-up.
    CatchUp,
}

/// Options of a webhook trigger.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `accepted` (default): answer 200 `{"status": "queued", "event_id", "run_id"}` once the
    /// event is stored. `result`: wait for the run and answer 200 with its result, for callers
    /// that need a reply.
    #[serde(default)]
    pub respond: Respond,
    /// How long `respond: result` waits before answering 202 with the run id (default `10s`).
    #[serde(default)]
    pub respond_timeout: Option<HumanDuration>,
    /// A template giving each event's identity, e.g. `"{{trigger.body.id}}"` (the provider's event
    /// id). A repeated delivery with the same key is answered with the original run and starts
    /// nothing. An event whose key renders empty is never a duplicate.
    #[serde(default)]
    pub dedupe: Option<String>,
    /// How long a key counts (default `7d`).
    #[serde(default)]
    pub dedupe_window: Option<HumanDuration>,
    /// Check the sender's signature; requests that fail get 401 and start nothing.
    #[serde(default)]
    pub verify: Option<VerifySpec>,
    /// Only these event types start runs (Stripe's `type`, GitHub's `X-GitHub-Event`, Shopify's
    /// `X-Shopify-Topic`, HubSpot's `subscriptionType`, else `body.type`); others are answered
    /// `ignored`. Default: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// At most this many requests to the catch hook, e.g. `100/s` or `600/m` (bursts up to the
    /// same number); more are answered 429 `rate_limited` (nothing stored). Default: no limit.
    #[serde(default)]
    pub rate_limit: Option<String>,
}

/// A webhook signature check: the provider's scheme and the signing secret(s).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// `stripe`, `github`, `shopify`, `slack`, `hubspot`, `hubspot-v1`, `hubspot-v2`, `twilio`
    /// or `standard-webhooks`.
    pub provider: String,
    /// The signing secret, usually `${env:…}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Several secrets, any of which may sign (while a secret is rotated).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// How far a signed timestamp may be from now (default `5m`), for providers that sign one.
    #[serde(default)]
    pub tolerance: Option<HumanDuration>,
}

/// When a catch hook answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Respond {
    /// As soon as the event is durably stored.
    #[default]
    Accepted,
    /// When the run finishes (or the timeout passes).
    Result,
}

/// Options of a manual trigger (none yet).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualSpec {}

/// A key that is present is `Some`, even with nothing after it (`webhook:` means the defaults).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// A step as written: common keys plus exactly one kind key (`filter:`, `map:`, `http:`, …).
///
/// Missing or extra kinds and a missing id are not parse errors: the builder reports them with
/// positions, together with every other problem.
#[derive(Debug, Default)]
pub struct StepSpec {
    /// The step's id, unique in the flow.
    pub id: Option<String>,
    /// A human name.
    pub name: Option<String>,
    /// What the step does, for readers.
    pub description: Option<String>,
    /// The steps this one waits for; default: the step before it. `[]` makes it a root.
    pub needs: Option<Vec<String>>,
    /// How failed attempts are retried.
    pub retry: Option<RetrySpec>,
    /// How long one attempt may take (default `30s`).
    pub timeout: Option<HumanDuration>,
    /// What a failure of this step (after its retries) does to the run.
    pub on_error: Option<OnError>,
    /// A named queue: runs whose key is the same run this step one (or `concurrency`) at a time.
    pub queue: Option<QueueSpec>,
    /// Every other key: the kind(s), with their config.
    pub kinds: Vec<(String, serde_yaml::Value)>,
    /// What did not read as its shape, with paths inside the step.
    pub problems: Vec<ShapeProblem>,
}

/// The keys every step may have besides its kind.
pub const COMMON_STEP_KEYS: [&str; 8] = [
    "id",
    "name",
    "description",
    "needs",
    "retry",
    "timeout",
    "on_error",
    "queue",
];

/// A named queue (Zapier's Delay After Queue): the step runs for at most `concurrency` runs with
/// the same key at a time, `gap` apart, e.g. so two events about one contact never race.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The queue's name; steps of any flow that name it share it.
    pub name: String,
    /// What serialises (a template), e.g. `"{{steps.shape.email}}"`; empty: one lane for all.
    #[serde(default)]
    pub key: Option<String>,
    /// How many at a time per key (default 1).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The pause after one finishes before the next starts, e.g. `1s`.
    #[serde(default)]
    pub gap: Option<HumanDuration>,
}

/// What a step's final failure does to its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The run fails (the default).
    #[default]
    Fail,
    /// The run goes on: the step's output is `{"error": {"message", "detail"}}` and the steps after
    /// it run.
    Continue,
}

impl<'de> Deserialize<'de> for StepSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Value::Mapping(map) = Value::deserialize(d)? else {
            return Err(de::Error::custom(
                "a step is a mapping with `id` and one step kind such as `map:`",
            ));
        };
        let mut step = StepSpec::default();
        let mut problems = Vec::new();
        for (key, value) in entries(map, &mut problems) {
            let p = &mut problems;
            match key.as_str() {
                "id" => step.id = read(value, "id", p),
                "name" => step.name = read(value, "name", p).flatten(),
                "description" => step.description = read(value, "description", p).flatten(),
                "needs" => step.needs = read(value, "needs", p),
                "retry" => step.retry = read(value, "retry", p).flatten(),
                "timeout" => step.timeout = read(value, "timeout", p).flatten(),
                "on_error" => step.on_error = read(value, "on_error", p).flatten(),
                "queue" => step.queue = read(value, "queue", p).flatten(),
                _ => step.kinds.push((key, value)),
            }
        }
        step.problems = problems;
        Ok(step)
    }
}

impl JsonSchema for StepSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Step".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Replaced by one alternative per registered kind in `flow::schema`.
        schemars::json_schema!({ "type": "object" })
    }
}

/// How a step's failed attempts are retried. Unset fields keep the default schedule
/// (5s, 30s, 2m, 10m, 1h, 3h).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, including the first (`1` = never retry). Default 7.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// `exponential` (doubling from `initial` up to `max`) or `fixed` (`initial` each time).
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// The first delay (default `5s`).
    #[serde(default)]
    pub initial: Option<HumanDuration>,
    /// The longest delay (default `3h`).
    #[serde(default)]
    pub max: Option<HumanDuration>,
    /// Spread delays by ±20 % (default `true`).
    #[serde(default)]
    pub jitter: Option<bool>,
    /// HTTP statuses to retry besides 5xx, 408, 409, 425 and 429, e.g. `[404]` while a record the
    /// step looks up may not exist yet.
    #[serde(default)]
    pub on_status: Vec<u16>,
}

/// A backoff kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Doubling delays.
    Exponential,
    /// The same delay each time.
    Fixed,
}

/// A duration written for humans: `500ms`, `30s`, `5m`, `2h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                de::Error::custom(format!(
                    "`{text}` is not a duration like `30s`, `5m` or `2h` ({e})"
                ))
            })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as `500ms`, `30s`, `5m`, `2h` or `1d`.",
            "pattern": "^\\s*\\d+\\s*[a-z]+(\\s*\\d+\\s*[a-z]+)*\\s*$"
        })
    }
}
