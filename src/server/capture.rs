//! Capturing samples: `POST /api/v1/flows/{flow_id}/capture {"count": N}` keeps the next N events
//! that reach the flow's catch URL as sample files beside the flow (`samples/FLOW/NAME.json`),
//! while the flow goes on running them as usual. Credentials are redacted first: the headers
//! hookflow never stores, signature headers, and the flow's secrets. `GET` on the same path says
//! how many are left, which were written, and whether the capture is `done`. Arming a capture
//! again replaces the previous one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use hookflow_engine::flow::Flow;
use hookflow_engine::ids::FlowId;
use hookflow_engine::secrets::REDACTED;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{Actor, AuditAction};
use super::{ApiError, AppState};

/// The most events one capture keeps.
const MAX_COUNT: usize = 100;

/// Request headers that carry a signature: kept in samples as `[redacted]`.
pub(super) const SIGNATURE_HEADERS: [&str; 8] = [
    "stripe-signature",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-twilio-signature",
    "webhook-signature",
    "x-hubspot-signature-v3",
];

#[derive(Default)]
struct Capture {
    /// Events still to keep.
    remaining: usize,
    /// Events taken whose file is being written.
    writing: usize,
    /// The samples written, by name.
    written: Vec<String>,
}

/// Armed captures per flow.
#[derive(Clone, Default)]
pub struct Captures {
    inner: Arc<Mutex<HashMap<FlowId, Capture>>>,
}

impl Captures {
    /// Keeps the event as a sample if a capture of its flow is armed. The sample is written
    /// beside the flow file; a failure to write is logged and does not affect the event.
    pub async fn offer(&self, flow: &Flow, trigger: &Value) {
        let name = {
            let mut captures = self.lock();
            let Some(capture) = captures.get_mut(&flow.id).filter(|c| c.remaining > 0) else {
                return;
            };
            capture.remaining -= 1;
            capture.writing += 1;
            sample_name(trigger, capture.written.len() + capture.writing)
        };
        let mut sample = json!({
            "method": trigger["method"],
            "headers": trigger["headers"],
            "query": trigger["query"],
            "body": trigger["body"],
        });
        if let Some(headers) = sample["headers"].as_object_mut() {
            for (name, value) in headers.iter_mut() {
                if SIGNATURE_HEADERS.contains(&name.as_str()) {
                    *value = json!(REDACTED);
                }
            }
        }
        flow.secrets.redact(&mut sample);
        let dir = crate::samples::dir(Path::new(&flow.file), flow.id.as_str());
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&sample).unwrap_or_default() + "\n";
        let written = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(&path, text).await
        };
        let written = written.await;
        match &written {
            Ok(()) => {
                tracing::info!(flow = %flow.id, sample = %path.display(), "captured a sample")
            }
            Err(e) => {
                tracing::warn!(flow = %flow.id, error = %e, "could not write a captured sample")
            }
        }
        if let Some(capture) = self.lock().get_mut(&flow.id) {
            capture.writing = capture.writing.saturating_sub(1);
            if written.is_ok() {
                capture.written.push(name);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FlowId, Capture>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `YYYYMMDD-HHMMSS-N`, from the time the event arrived and its place in this capture.
fn sample_name(trigger: &Value, n: usize) -> String {
    let at: String = trigger["received_at"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let (date, time) = at.split_at(at.len().min(8));
    format!("{date}-{time}-{n}")
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/flows/{flow_id}/capture", post(arm).get(status))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ArmRequest {
    /// How many events to keep.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    count: usize,
}

fn one() -> usize {
    1
}

async fn arm(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(flow_id): UrlPath<String>,
    Json(request): Json<ArmRequest>,
) -> Result<Json<Value>, ApiError> {
    let flow = webhook_flow(&state, &flow_id)?;
    if !(1..=MAX_COUNT).contains(&request.count) {
        return Err(ApiError::bad_request(
            "invalid_count",
            format!("`count` must be 1 to {MAX_COUNT}"),
        ));
    }
    state.captures.lock().insert(
        flow.id.clone(),
        Capture {
            remaining: request.count,
            ..Capture::default()
        },
    );
    let what = json!({ "flow": flow.id, "count": request.count });
    state.audit.record(&actor, AuditAction::Capture, what);
    Ok(Json(capture_json(&state, &flow)))
}

async fn status(
    State(state): State<AppState>,
    UrlPath(flow_id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = webhook_flow(&state, &flow_id)?;
    Ok(Json(capture_json(&state, &flow)))
}

fn capture_json(state: &AppState, flow: &Flow) -> Value {
    let captures = state.captures.lock();
    let capture = captures.get(&flow.id);
    let dir = crate::samples::dir(Path::new(&flow.file), flow.id.as_str());
    json!({
        "flow": flow.id,
        "remaining": capture.map_or(0, |c| c.remaining),
        "done": capture.is_none_or(|c| c.remaining == 0 && c.writing == 0),
        "samples": capture.map(|c| c.written.clone()).unwrap_or_default(),
        "dir": dir.display().to_string(),
    })
}

fn webhook_flow(state: &AppState, flow_id: &str) -> Result<Arc<Flow>, ApiError> {
    let flow = super::api::deployed(state, flow_id)?;
    if !matches!(flow.trigger, hookflow_engine::flow::Trigger::Webhook { .. }) {
        return Err(ApiError::bad_request(
            "not_a_webhook_flow",
            format!("`{flow_id}` has no catch URL to capture from"),
        ));
    }
    Ok(flow)
}
