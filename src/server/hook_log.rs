//! The catch-hook log: each flow's recent catch-hook requests with what became of them (queued,
//! duplicate, ignored, or refused and why: a bad signature, a body too large or unparsable), and
//! counters of all of them for `/metrics`. Served at `GET /api/v1/flows/{flow_id}/hooks`, the
//! newest [`KEEP_PER_FLOW`] first.
//!
//! This node keeps its newest requests in memory. Those that started no run (duplicate, ignored,
//! refused) are also written to the store's hook log (through the [`LogWriter`], off the request
//! path), so they survive a restart and every node sharing the store sees them; those that started
//! runs (`queued`, a batch's `accepted`) are recorded as runs already. The list merges memory and
//! store, each stored request once (by its entry id).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::ids::FlowId;
use hookflow_engine::model::Timestamp;
use hookflow_engine::store::{LogEntry, LogName, LogQuery, Store, StoreError};
use serde_json::{json, Value};

use super::log_writer::LogWriter;
use super::{ApiError, AppState};

/// How many requests a flow's log lists (and this node keeps in memory).
const KEEP_PER_FLOW: usize = 100;

/// What became of one catch-hook request.
#[derive(Debug, Clone)]
pub enum HookOutcome {
    /// Taken: `queued`, `duplicate`, `ignored` or `accepted` (a batch), with the events' ids.
    Taken {
        /// The outcome's name.
        outcome: &'static str,
        /// The answer's summary (run ids, the reason an event was ignored).
        summary: Value,
    },
    /// Refused with a 4xx or 5xx: the error's code and detail.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error code (`invalid_signature`, `payload_too_large`, …).
        code: &'static str,
        /// Why, in words.
        detail: String,
    },
}

#[derive(Default)]
struct Inner {
    recent: BTreeMap<FlowId, VecDeque<Value>>,
    /// (flow, `received` or `rejected`, outcome or reason) → count.
    counts: BTreeMap<(String, &'static str, &'static str), u64>,
}

/// Recent catch-hook requests per flow, and counters.
#[derive(Clone, Default)]
pub struct HookLog {
    inner: Arc<Mutex<Inner>>,
    /// Writes requests that started no run to the store (memory only without one).
    writer: Option<LogWriter>,
}

impl HookLog {
    /// A hook log that keeps requests that started no run in the store.
    pub fn kept_by(writer: LogWriter) -> Self {
        Self {
            inner: Arc::default(),
            writer: Some(writer),
        }
    }

    /// Records a request to a flow's catch hook.
    pub fn record(&self, flow: &FlowId, method: &str, bytes: usize, outcome: HookOutcome) {
        let at = Timestamp::now();
        let mut entry = match &outcome {
            HookOutcome::Taken { outcome, summary } => json!({
                "at": at, "method": method, "bytes": bytes, "status": 200,
                "outcome": outcome, "summary": summary,
            }),
            HookOutcome::Refused {
                status,
                code,
                detail,
            } => json!({
                "at": at, "method": method, "bytes": bytes, "status": status,
                "outcome": "rejected", "reason": code, "detail": detail,
            }),
        };
        let (key, started_runs) = match outcome {
            HookOutcome::Taken { outcome, .. } => (
                (flow.to_string(), "received", outcome),
                matches!(outcome, "queued" | "accepted"),
            ),
            HookOutcome::Refused { code, .. } => ((flow.to_string(), "rejected", code), false),
        };
        if let Some(writer) = self.writer.as_ref().filter(|_| !started_runs) {
            let action = entry["outcome"].as_str().unwrap_or_default().to_owned();
            let stored = LogEntry::new(at, action, entry.clone());
            // The id lets a list tell this node's copy from the stored one.
            entry["id"] = json!(stored.id);
            writer.write(LogName::Hooks(flow.clone()), stored);
        }
        let mut inner = self.lock();
        *inner.counts.entry(key).or_default() += 1;
        let list = inner.recent.entry(flow.clone()).or_default();
        list.push_front(entry);
        list.truncate(KEEP_PER_FLOW);
    }

    /// Counts a request to a catch URL that names no flow or has a wrong token.
    pub fn record_unknown(&self) {
        let key = (String::new(), "rejected", "unknown_hook");
        *self.lock().counts.entry(key).or_default() += 1;
    }

    /// A flow's recent requests, newest first: those kept in memory and, with a store, those in
    /// the store's hook log.
    pub async fn recent(&self, store: &dyn Store, flow: &FlowId) -> Result<Vec<Value>, StoreError> {
        let mut recent: Vec<Value> = self
            .lock()
            .recent
            .get(flow)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        if self.writer.is_some() {
            let query = LogQuery {
                limit: KEEP_PER_FLOW,
                ..LogQuery::default()
            };
            let log = LogName::Hooks(flow.clone());
            let kept = store.read_log(&log, &query).await?;
            let here: HashSet<String> = recent
                .iter()
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect();
            for entry in kept.entries {
                let id = entry.id.to_string();
                if !here.contains(&id) {
                    let mut shown = entry.detail;
                    shown["id"] = json!(id);
                    recent.push(shown);
                }
            }
            let at = |v: &Value| v["at"].as_str().and_then(Timestamp::parse_rfc3339);
            recent.sort_by_key(|v| std::cmp::Reverse(at(v)));
            recent.truncate(KEEP_PER_FLOW);
        }
        Ok(recent)
    }

    /// Every counter: (flow, `received` or `rejected`, outcome or reason, count).
    pub fn counts(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        self.lock()
            .counts
            .iter()
            .map(|((flow, kind, what), n)| (flow.clone(), *kind, *what, *n))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/flows/{flow_id}/hooks", get(show))
}

async fn show(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = super::api::deployed(&state, &flow_id)?;
    let requests = state
        .hook_log
        .recent(state.engine.store(), &flow.id)
        .await?;
    Ok(Json(json!({ "flow": flow.id, "requests": requests })))
}
