//! The catch-hook log: each flow's recent catch-hook requests with what became of them (queued,
//! duplicate, ignored, or refused and why: a bad signature, a body too large or unparsable), and
//! counters of all of them for `/metrics`. Kept in memory, the newest 100 per flow; served at
//! `GET /api/v1/flows/{flow_id}/hooks`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::ids::FlowId;
use hookflow_engine::model::Timestamp;
use serde_json::{json, Value};

use super::{ApiError, AppState};

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
}

impl HookLog {
    /// Records a request to a flow's catch hook.
    pub fn record(&self, flow: &FlowId, method: &str, bytes: usize, outcome: HookOutcome) {
        let entry = match &outcome {
            HookOutcome::Taken { outcome, summary } => json!({
                "at": Timestamp::now(), "method": method, "bytes": bytes, "status": 200,
                "outcome": outcome, "summary": summary,
            }),
            HookOutcome::Refused {
                status,
                code,
                detail,
            } => json!({
                "at": Timestamp::now(), "method": method, "bytes": bytes, "status": status,
                "outcome": "rejected", "reason": code, "detail": detail,
            }),
        };
        let key = match outcome {
            HookOutcome::Taken { outcome, .. } => (flow.to_string(), "received", outcome),
            HookOutcome::Refused { code, .. } => (flow.to_string(), "rejected", code),
        };
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

    /// A flow's recent requests, newest first.
    pub fn recent(&self, flow: &FlowId) -> Vec<Value> {
        self.lock()
            .recent
            .get(flow)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
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
    Ok(Json(
        json!({ "flow": flow.id, "requests": state.hook_log.recent(&flow.id) }),
    ))
}
