//! The records the engine keeps: events, runs, step records and queue items.
//!
//! These are plain data, shared by the store (which persists them) and the runtime (which decides
//! how they change). A queue item carries ids only; payloads live in the event and step records.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::ids::{EventId, FlowId, ItemId, RunId, StepId};

/// A point in time, in milliseconds since the Unix epoch; shown as RFC 3339 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time plus a duration.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// Milliseconds from `earlier` to `self`, zero if negative.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0).max(0) as u64
    }

    /// The time as an RFC 3339 string, e.g. `2026-11-22T10:00:00.123Z`.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }

    /// Parses an RFC 3339 string.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Self((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time")))
    }
}

/// A flow revision: a short hash of the flow file's content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub String);

impl Revision {
    /// The revision of a flow file's text.
    pub fn of(text: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes());
        Self(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that happened and starts a run: a webhook delivery or a manual trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's id.
    pub id: EventId,
    /// The flow it was sent to.
    pub flow_id: FlowId,
    /// When hookflow received it.
    pub received_at: Timestamp,
    /// What templates see as `trigger`: `method`, `headers`, `query`, `body`, `received_at`.
    pub trigger: Value,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted and waiting for a worker.
    Queued,
    /// At least one step has started.
    Running,
    /// Every step finished successfully.
    Succeeded,
    /// A step failed for good (its attempts ran out or the error was not retryable).
    Failed,
    /// A filter stopped the run: not an error.
    Filtered,
}

impl RunStatus {
    /// Every status, in display order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Filtered,
    ];

    /// Whether the run will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Filtered)
    }

    /// The status as written in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Filtered => "filtered",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            format!("unknown run status `{s}` (expected queued, running, succeeded, failed or filtered)")
        })
    }
}

/// Where one step of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for the steps it needs.
    Pending,
    /// In the queue, due now or later (a retry waits here).
    Queued,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error, for good.
    Failed,
    /// A filter step whose conditions did not pass: it stopped the run.
    Filtered,
    /// Not run, because the run ended before it.
    Skipped,
}

impl StepStatus {
    /// Whether the step will not run again in this run.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Filtered | Self::Skipped
        )
    }
}

/// A run of a flow for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The run's id.
    pub id: RunId,
    /// The flow it runs.
    pub flow_id: FlowId,
    /// The flow revision it runs (the flow file's content hash when the run was created).
    pub revision: Revision,
    /// The event that started it.
    pub event_id: EventId,
    /// Where the run stands.
    pub status: RunStatus,
    /// When the run was created.
    pub created_at: Timestamp,
    /// When the run last changed.
    pub updated_at: Timestamp,
    /// When the run reached a final status.
    pub finished_at: Option<Timestamp>,
    /// Each step's status, in the flow's order.
    pub steps: Vec<StepProgress>,
    /// Why the run failed or which condition filtered it.
    pub reason: Option<String>,
    /// The flow's `title:` rendered with the run's trigger (absent when the flow has none or it
    /// did not render).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The run this one replays (same event, started again from the first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<RunId>,
    /// What started the run (absent in runs stored before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
    /// While the flow's `on_failure` steps run: why the run failed (it ends `failed` with this
    /// reason once they are done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedBy {
    /// A delivery to the flow's catch hook.
    Webhook,
    /// A tick of the flow's schedule.
    Schedule,
    /// A person or client asked for it (the API, the UI, `hookflow trigger`).
    Manual,
    /// A replay of an earlier run's event (see [`Run::replay_of`]).
    Replay,
    /// A `flow` step of another run (a sub-flow).
    Flow,
}

impl StartedBy {
    /// The name as written in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Replay => "replay",
            Self::Flow => "flow",
        }
    }
}

impl Run {
    /// Whether a person retried the run after it failed (`hookflow runs retry`): some step was
    /// started again.
    pub fn retried(&self) -> bool {
        self.steps.iter().any(|s| s.retried > 0)
    }

    /// The status of one step.
    pub fn step_status(&self, step: &StepId) -> Option<StepStatus> {
        self.steps.iter().find(|s| &s.id == step).map(|s| s.status)
    }

    /// Sets the status of one step; unknown ids are ignored. A step that is not `queued` has no
    /// item.
    pub fn set_step_status(&mut self, step: &StepId, status: StepStatus) {
        if let Some(s) = self.steps.iter_mut().find(|s| &s.id == step) {
            s.status = status;
            if status != StepStatus::Queued {
                s.item = None;
                s.waiting_until = None;
            }
        }
    }

    /// Queues one step: its status becomes `queued` and `item` the one item that may run it.
    pub fn queue_step(&mut self, item: &QueueItem) {
        if let Some(s) = self.steps.iter_mut().find(|s| s.id == item.step_id) {
            s.status = StepStatus::Queued;
            s.item = Some(item.id);
            s.waiting_until = None;
        }
    }

    /// When a step that waits for a callback times out, while it waits (see
    /// [`StepProgress::waiting_until`]).
    pub fn waiting_until(&self, step: &StepId) -> Option<Timestamp> {
        self.steps
            .iter()
            .find(|s| &s.id == step && s.status == StepStatus::Queued)
            .and_then(|s| s.waiting_until)
    }

    /// Whether `item` is the item the run expects for its step: the step is queued and no other
    /// item was scheduled for it since.
    pub fn expects(&self, item: &QueueItem) -> bool {
        self.steps.iter().any(|s| {
            s.id == item.step_id && s.status == StepStatus::Queued && s.item == Some(item.id)
        })
    }
}

/// One step's status within a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepProgress {
    /// The step's id.
    pub id: StepId,
    /// Where it stands.
    pub status: StepStatus,
    /// The queue item that runs it next (while `queued`). Any other item for this step is stale
    /// (a leftover of a crash or of an earlier try of the run) and is dropped unexecuted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<ItemId>,
    /// How many times a user retried the step after it failed for good (`hookflow runs retry`).
    /// Part of its idempotency key: automatic retries repeat the key, a manual retry is a new
    /// request (a target such as Stripe replays its saved answer to a repeated key, failures
    /// included).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retried: u32,
    /// For a branching step (`switch`) that ran: the path it took (`None` also when it took none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Who retried the run by hand the last time this step was retried (see `retried`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<String>,
    /// While a `wait_for_callback` step waits (queued, its item due then): when it times out. A
    /// callback to its resume URL finishes it before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<Timestamp>,
}

impl StepProgress {
    /// A step at `status`, with nothing else to say yet.
    pub fn new(id: StepId, status: StepStatus) -> Self {
        Self {
            id,
            status,
            item: None,
            retried: 0,
            path: None,
            retried_by: None,
            waiting_until: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What one step of one run received, returned and went through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step_id: StepId,
    /// The step's kind (`filter`, `map`, `http`, …).
    pub kind: String,
    /// The status after the latest attempt.
    pub status: StepStatus,
    /// The rendered input of the latest attempt (secrets redacted).
    pub input: Value,
    /// The output of the successful attempt.
    pub output: Option<Value>,
    /// The error of the latest failed attempt.
    pub error: Option<StepFailure>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// For a step whose input differs each time it is rendered (it calls `uuid`): the idempotency
    /// key `input` was rendered for and stored under before the call was made, so a step run
    /// again after a crash mid-call resends that request instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_for: Option<String>,
}

/// Why a step attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    /// A sentence a RevOps engineer can act on.
    pub message: String,
    /// Structured detail (e.g. an HTTP status and body excerpt).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// One attempt at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The error, if it failed.
    pub error: Option<String>,
    /// When the next attempt is due, if one was scheduled.
    pub retry_at: Option<Timestamp>,
    /// The node that made it (absent offline, and in records older than node ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::store::NodeId>,
    /// For a step with effects: the idempotency key its request (the record's `input`) was sent
    /// under. An automatic retry under the same key resends that request as recorded instead of
    /// rendering it again (a `{{uuid}}` or a time would change it, and a target such as Stripe
    /// refuses a key reused with other parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_under: Option<String>,
    /// The first attempt after a person retried the run from its failed step: who did (as the
    /// audit record names them: `token`, `session:HASH`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<String>,
    /// The lines the attempt wrote: a `code` step's `console.log` (at most 100, redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// One unit of queued work: run a step of a run, due at a time. Carries ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The item's id (unique; its time part orders items due at the same moment).
    pub id: ItemId,
    /// The run.
    pub run_id: RunId,
    /// The run's flow (queues are kept per flow, for fairness and concurrency limits).
    pub flow_id: FlowId,
    /// The step to run.
    pub step_id: StepId,
    /// The attempt this item is (1 for the first).
    pub attempt: u32,
    /// When it may run.
    pub due_at: Timestamp,
}
