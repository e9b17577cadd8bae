//! The request inspector: `GET|POST|PUT|PATCH|DELETE /inspect/{bin}` records what it receives and answers 200, so the
//! shipped flows have a local target to post to (no internet, no credentials) and users can see
//! exactly what an HTTP action sent (`GET /api/v1/inspector/{bin}`, behind the admin auth like
//! the rest of the API).
//!
//! # Invariants
//!
//! - A body is read up to `max_body_bytes` (413 past it), like a catch hook's.
//! - Memory is bounded: at most [`MAX_BINS`] bins, [`KEEP_PER_BIN`] requests and
//!   [`MAX_BIN_BYTES`] per bin, [`MAX_TOTAL_BYTES`] in all; the oldest requests go first.
//! - Nothing credential-like is kept: credential headers (authorization, cookies, API keys),
//!   signature headers and every deployed flow's secrets (and the values derived from them) are
//!   `[redacted]` before a request is recorded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::model::Timestamp;
use hookflow_engine::secrets::REDACTED;
use serde_json::{json, Value};

use super::capture::SIGNATURE_HEADERS;
use super::{ApiError, AppState};

/// The names a bin may have (1 to 64 letters, digits, `.`, `_` and `-`).
pub(super) const BIN_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

/// The most requests kept per bin.
const KEEP_PER_BIN: usize = 100;
/// The most bins; requests to further bins are answered but not kept.
const MAX_BINS: usize = 100;
/// The most bytes of requests kept per bin.
const MAX_BIN_BYTES: usize = 4 << 20;
/// The most bytes of requests kept in all.
const MAX_TOTAL_BYTES: usize = 32 << 20;

/// One recorded request, with its size and its place in arrival order.
struct Kept {
    seq: u64,
    bytes: usize,
    request: Value,
}

#[derive(Default)]
struct Bins {
    bins: BTreeMap<String, VecDeque<Kept>>,
    total_bytes: usize,
    next_seq: u64,
}

impl Bins {
    /// Drops the oldest request of `bin` (of all bins when `None`).
    fn drop_oldest(&mut self, bin: Option<&str>) {
        let oldest = match bin {
            Some(bin) => Some(bin.to_owned()),
            None => self
                .bins
                .iter()
                .filter_map(|(name, list)| Some((list.back()?.seq, name)))
                .min()
                .map(|(_, name)| name.clone()),
        };
        if let Some(kept) = oldest.and_then(|name| self.bins.get_mut(&name)?.pop_back()) {
            self.total_bytes -= kept.bytes;
        }
    }
}

/// Recent requests per bin.
#[derive(Clone, Default)]
pub struct Inspector {
    bins: Arc<Mutex<Bins>>,
}

impl Inspector {
    fn lock(&self) -> MutexGuard<'_, Bins> {
        self.bins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, bin: &str, request: Value) {
        let bytes = request.to_string().len();
        let mut bins = self.lock();
        if bytes > MAX_BIN_BYTES || (!bins.bins.contains_key(bin) && bins.bins.len() >= MAX_BINS) {
            return;
        }
        let seq = bins.next_seq;
        bins.next_seq += 1;
        bins.total_bytes += bytes;
        let list = bins.bins.entry(bin.to_owned()).or_default();
        list.push_front(Kept {
            seq,
            bytes,
            request,
        });
        loop {
            let list = &bins.bins[bin];
            let bin_bytes: usize = list.iter().map(|k| k.bytes).sum();
            if list.len() > KEEP_PER_BIN || bin_bytes > MAX_BIN_BYTES {
                bins.drop_oldest(Some(bin));
            } else if bins.total_bytes > MAX_TOTAL_BYTES {
                bins.drop_oldest(None);
            } else {
                break;
            }
        }
    }

    fn requests(&self, bin: &str) -> Option<Vec<Value>> {
        let bins = self.lock();
        bins.bins
            .get(bin)
            .map(|l| l.iter().map(|k| k.request.clone()).collect())
    }

    fn summary(&self) -> Vec<Value> {
        let bins = self.lock();
        bins.bins
            .iter()
            .map(|(name, l)| json!({ "bin": name, "requests": l.len() }))
            .collect()
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/inspect/{bin}",
            get(receive)
                .post(receive)
                .put(receive)
                .patch(receive)
                .delete(receive),
        )
        .route("/api/v1/inspector", get(list_bins))
        .route("/api/v1/inspector/{bin}", get(show_bin))
}

/// Refuses (400) a bin name outside [`BIN_PATTERN`].
fn check_bin(bin: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&bin.len())
        && bin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_bin",
            "a bin's name is 1 to 64 letters, digits, `.`, `_` and `-`",
        ))
    }
}

async fn receive(
    State(state): State<AppState>,
    Path(bin): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    check_bin(&bin)?;
    let body = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the inspector keeps bodies of at most {} bytes",
                    state.max_body_bytes
                ),
            )
        })?;
    let text = String::from_utf8_lossy(&body);
    let parsed = serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!(text));
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            let value = if SIGNATURE_HEADERS.contains(&k.as_str()) {
                json!(REDACTED)
            } else {
                json!(String::from_utf8_lossy(v.as_bytes()))
            };
            (k.as_str().to_owned(), value)
        })
        .collect();
    let received_at = Timestamp::now();
    let mut request = json!({ "received_at": received_at, "method": method.as_str(), "path": uri.path(), "query": uri.query(), "headers": headers, "body": parsed });
    for flow in state.engine.catalog().all() {
        flow.secrets.redact(&mut request);
    }
    state.inspector.record(&bin, request);
    Ok(Json(
        json!({ "ok": true, "bin": bin, "received_at": received_at }),
    ))
}

async fn list_bins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "bins": state.inspector.summary() }))
}

async fn show_bin(
    State(state): State<AppState>,
    Path(bin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_bin(&bin)?;
    let requests = state.inspector.requests(&bin).ok_or_else(|| {
        ApiError::not_found(format!(
            "the inspector has received nothing at /inspect/{bin} yet"
        ))
    })?;
    Ok(Json(json!({ "bin": bin, "requests": requests })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stays_under_the_caps_oldest_first() {
        let inspector = Inspector::default();
        let big = "x".repeat(MAX_BIN_BYTES / 3);
        for i in 0..5 {
            inspector.record("a", json!({ "n": i, "body": big }));
        }
        let kept: Vec<Value> = inspector.requests("a").unwrap();
        assert_eq!(kept.len(), 2, "a bin keeps at most its byte cap");
        assert_eq!(
            (kept[0]["n"].as_i64(), kept[1]["n"].as_i64()),
            (Some(4), Some(3))
        );

        let inspector = Inspector::default();
        let recorded = MAX_TOTAL_BYTES / big.len() + 3;
        for i in 0..recorded {
            inspector.record(&format!("bin{}", i % 20), json!({ "n": i, "body": big }));
        }
        let bins = inspector.lock();
        assert!(bins.total_bytes <= MAX_TOTAL_BYTES);
        let mut kept: Vec<u64> = bins.bins.values().flatten().map(|k| k.seq).collect();
        kept.sort_unstable();
        let newest: Vec<u64> = (recorded - kept.len()..recorded)
            .map(|s| s as u64)
            .collect();
        assert_eq!(kept, newest, "the oldest requests went first");
    }
}
