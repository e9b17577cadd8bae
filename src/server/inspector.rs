//! The request inspector: `ANY /inspect/{bin}` records what it receives and answers 200, so the
//! shipped flows have a local target to post to (no internet, no credentials) and users can see
//! exactly what an HTTP action sent. Requests are kept in memory, the newest 100 per bin.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{any, get};
use axum::{Json, Router};
use hookflow_engine::model::Timestamp;
use serde_json::{json, Value};

use super::{ApiError, AppState};

const KEEP_PER_BIN: usize = 100;
const MAX_BINS: usize = 100;

/// Recent requests per bin.
#[derive(Clone, Default)]
pub struct Inspector {
    bins: Arc<Mutex<BTreeMap<String, VecDeque<Value>>>>,
}

impl Inspector {
    fn record(&self, bin: &str, request: Value) {
        let mut bins = self.bins.lock().expect("inspector lock");
        if !bins.contains_key(bin) && bins.len() >= MAX_BINS {
            return;
        }
        let list = bins.entry(bin.to_owned()).or_default();
        list.push_front(request);
        list.truncate(KEEP_PER_BIN);
    }

    fn requests(&self, bin: &str) -> Option<Vec<Value>> {
        let bins = self.bins.lock().expect("inspector lock");
        bins.get(bin).map(|l| l.iter().cloned().collect())
    }

    fn summary(&self) -> Vec<Value> {
        let bins = self.bins.lock().expect("inspector lock");
        bins.iter()
            .map(|(name, l)| json!({ "bin": name, "requests": l.len() }))
            .collect()
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/inspect/{bin}", any(receive))
        .route("/api/v1/inspector", get(list_bins))
        .route("/api/v1/inspector/{bin}", get(show_bin))
}

async fn receive(
    State(state): State<AppState>,
    Path(bin): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let text = String::from_utf8_lossy(&body);
    let parsed = serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!(text));
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let received_at = Timestamp::now();
    state.inspector.record(
        &bin,
        json!({ "received_at": received_at, "method": method.as_str(), "path": uri.path(), "query": uri.query(), "headers": headers, "body": parsed }),
    );
    Json(json!({ "ok": true, "bin": bin, "received_at": received_at }))
}

async fn list_bins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "bins": state.inspector.summary() }))
}

async fn show_bin(
    State(state): State<AppState>,
    Path(bin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let requests = state.inspector.requests(&bin).ok_or_else(|| {
        ApiError::not_found(format!(
            "the inspector has received nothing at /inspect/{bin} yet"
        ))
    })?;
    Ok(Json(json!({ "bin": bin, "requests": requests })))
}
