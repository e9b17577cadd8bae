//! Catch hooks: `GET|POST|PUT /hooks/catch/{flow_id}/{token}`.
//!
//! A request becomes the run's `trigger` (`method`, `headers`, `query`, `body`, `received_at`) and is
//! stored with its run before the answer: a 2xx means the event is durable. JSON and form bodies are
//! parsed (a body that does not parse as its content type says is a 400; a "form" body that is a
//! JSON object or array is read as JSON, since `curl -d` labels everything a form); other bodies
//! are kept as text. The flow may ask to answer with the run's result instead (`respond: result`).
//! A flow with `verify:` has the sender's signature checked over the raw body first: a request that
//! fails gets 401 `invalid_signature` and stores nothing. The signature check, the event-type
//! filter and the dedupe key are [`intake`]'s decisions, which flow tests share.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::flow::{Flow, Respond, Trigger, Verify};
use hookflow_engine::ids::FlowId;
use hookflow_engine::intake::{self, Refusal, Verdict};
use hookflow_engine::model::Timestamp;
use hookflow_engine::verify::SignedRequest;
use serde_json::{json, Map, Value};

use super::hook_log::HookOutcome;
use super::{ApiError, AppState};

/// Request headers not kept in the stored event (credentials the sender may attach).
const DROPPED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

pub(super) fn router() -> Router<AppState> {
    Router::new().route(
        "/hooks/catch/{flow_id}/{token}",
        get(catch).post(catch).put(catch),
    )
}

async fn catch(
    State(state): State<AppState>,
    Path((flow_id, token)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let flow = flow_id
        .parse::<FlowId>()
        .ok()
        .and_then(|id| state.engine.catalog().current(&id));
    let hook = flow.as_ref().and_then(Hook::of);
    let hook = match hook {
        Some(hook) if token_matches(&state, &hook.flow.id, &token).await? => hook,
        _ => {
            state.hook_log.record_unknown();
            return Err(ApiError::not_found(
                "no catch hook at this URL: check the flow id and token (`hookflow hooks` lists them)",
            ));
        }
    };
    let mut bytes = 0;
    let taken = take(&state, &hook, &method, &uri, &headers, body, &mut bytes).await;
    let outcome = match &taken {
        Ok(t) => HookOutcome::Taken {
            outcome: t.outcome,
            summary: t.summary.clone(),
        },
        Err(e) => HookOutcome::Refused {
            status: e.status.as_u16(),
            code: e.code,
            detail: e.detail.clone(),
        },
    };
    state
        .hook_log
        .record(&hook.flow.id, method.as_str(), bytes, outcome);
    taken.map(|t| t.response)
}

/// Whether `token` is the flow's catch-hook token (compared in constant time).
async fn token_matches(state: &AppState, flow_id: &FlowId, token: &str) -> Result<bool, ApiError> {
    let expected = state
        .engine
        .hook_token(flow_id)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(constant_time_eq(expected.as_bytes(), token.as_bytes()))
}

/// A webhook flow's catch-hook settings.
struct Hook<'a> {
    flow: &'a Arc<Flow>,
    respond: Respond,
    respond_timeout: Duration,
    verify: Option<&'a Verify>,
    rate_limit: Option<f64>,
}

impl<'a> Hook<'a> {
    /// The settings of a flow triggered by a webhook.
    fn of(flow: &'a Arc<Flow>) -> Option<Self> {
        match &flow.trigger {
            Trigger::Webhook {
                respond,
                respond_timeout,
                verify,
                rate_limit,
                ..
            } => Some(Self {
                flow,
                respond: *respond,
                respond_timeout: *respond_timeout,
                verify: verify.as_ref(),
                rate_limit: *rate_limit,
            }),
            _ => None,
        }
    }
}

/// A taken request: the answer, and what the hook log records of it.
struct Taken {
    response: Response,
    outcome: &'static str,
    summary: Value,
}

impl Taken {
    fn new(outcome: &'static str, status: StatusCode, answer: Value) -> Self {
        Self {
            response: (status, Json(answer.clone())).into_response(),
            outcome,
            summary: answer,
        }
    }
}

/// Reads, checks and stores a request to a flow's catch hook; sets `size` to the body's length.
async fn take(
    state: &AppState,
    hook: &Hook<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    size: &mut usize,
) -> Result<Taken, ApiError> {
    let Hook {
        flow,
        respond,
        respond_timeout,
        verify,
        rate_limit,
    } = *hook;
    let flow_id = &flow.id;
    if let Some(per_second) = rate_limit {
        if let Err(wait) = state.hook_limits.admit(flow_id, per_second) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this hook takes at most {per_second} requests per second: retry in {} s",
                    super::whole_seconds(wait)
                ),
            )
            .retry_after(wait));
        }
    }
    if !flow.enabled {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "flow_disabled",
            "this flow is paused (`enabled: false`): try again later",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than this hook accepts ({} bytes)",
                state.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    *size = declared.unwrap_or_default();
    if declared.is_some_and(|n| n > state.max_body_bytes) {
        return Err(too_large());
    }
    let bytes = to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| too_large())?;
    *size = bytes.len();
    if let Some(verify) = verify {
        check_signature(state, verify, method, uri, headers, &bytes).map_err(|refusal| {
            tracing::warn!(flow = %flow_id, provider = verify.provider, "refused a catch-hook request: its signature does not verify");
            ApiError::new(StatusCode::UNAUTHORIZED, refusal.code, refusal.detail)
        })?;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Built field by field: `json!` would copy the parsed body once more.
    let trigger = Value::Object(serde_json::Map::from_iter([
        ("method".to_owned(), Value::from(method.as_str())),
        ("headers".to_owned(), header_map(headers)),
        (
            "query".to_owned(),
            query_map(uri.query().unwrap_or_default()),
        ),
        ("body".to_owned(), parse_body(content_type, &bytes)?),
        ("received_at".to_owned(), json!(Timestamp::now())),
    ]));

    let batch = flow.batches() && trigger["body"].is_array();
    let events = intake::screen(flow, trigger, state.engine.now());
    let mut answers = Vec::with_capacity(events.len());
    for (event, verdict) in events {
        state.captures.offer(flow, &event).await;
        let dedupe = match verdict {
            Verdict::Ignored(why) => {
                tracing::info!(flow = %flow_id, reason = %why, "ignored an event");
                answers.push((None, why));
                continue;
            }
            Verdict::Run(dedupe) => dedupe,
        };
        let accepted = state
            .engine
            .ingest_keyed(flow, event, dedupe)
            .await
            .map_err(|e| ApiError::unavailable(&e))?;
        answers.push((Some(accepted), String::new()));
    }
    if batch {
        // Each event of a batch is its own run (or is ignored); the answer lists them in order.
        let runs: Vec<Value> = answers
            .iter()
            .map(|(accepted, why)| match accepted {
                Some(a) => json!({
                    "status": if a.duplicate { "duplicate" } else { "queued" },
                    "event_id": a.event_id, "run_id": a.run_id,
                }),
                None => json!({ "status": "ignored", "reason": why }),
            })
            .collect();
        let answer = json!({ "status": "accepted", "events": runs });
        return Ok(Taken::new("accepted", StatusCode::OK, answer));
    }
    let (accepted, why) = answers.pop().expect("a request carries at least one event");
    let Some(accepted) = accepted else {
        let answer = json!({ "status": "ignored", "reason": why });
        return Ok(Taken::new("ignored", StatusCode::OK, answer));
    };
    if respond == Respond::Accepted || accepted.duplicate {
        // A repeated delivery is answered at once with the original's ids: the sender only needs
        // to know it arrived.
        let status = if accepted.duplicate {
            "duplicate"
        } else {
            "queued"
        };
        let answer =
            json!({ "status": status, "event_id": accepted.event_id, "run_id": accepted.run_id });
        return Ok(Taken::new(status, StatusCode::OK, answer));
    }
    let ids = json!({ "event_id": accepted.event_id, "run_id": accepted.run_id });
    let run = state
        .engine
        .wait_for(accepted.run_id, respond_timeout)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let outcome = match run.filter(|r| r.status.is_final()) {
        Some(run) => state.engine.run_outcome(run.id).await?,
        None => None,
    };
    match outcome {
        Some(done) => {
            let answer = json!({
                "status": done.status, "event_id": ids["event_id"], "run_id": ids["run_id"],
                "reason": done.reason, "output": done.output,
            });
            Ok(Taken::new("queued", StatusCode::OK, answer))
        }
        _ => {
            let answer = json!({ "status": "running", "event_id": ids["event_id"], "run_id": ids["run_id"] });
            Ok(Taken::new("queued", StatusCode::ACCEPTED, answer))
        }
    }
}

/// Parses a body by its content type: JSON, form, or text (JSON is also recognised without a type).
pub(super) fn parse_body(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        return serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        });
    }
    if mime == "application/x-www-form-urlencoded" {
        // curl's `-d` labels everything as a form, JSON included: a body that is a JSON object
        // or array is what its sender meant.
        if matches!(bytes.first(), Some(b'{' | b'[')) {
            if let Ok(v) = serde_json::from_slice(bytes) {
                return Ok(v);
            }
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|e| {
            ApiError::bad_request(
                "invalid_form",
                format!("the body is not valid form data: {e}"),
            )
        })?;
        return Ok(pairs_to_object(pairs));
    }
    if mime.is_empty() {
        if let Ok(v) = serde_json::from_slice(bytes) {
            return Ok(v);
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Value::String(text.to_owned())),
        Err(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_body",
            "the body is binary; catch hooks accept JSON, form data and text",
        )),
    }
}

/// Pairs as an object; a repeated key becomes an array of its values.
fn pairs_to_object(pairs: Vec<(String, String)>) -> Value {
    let mut map = Map::new();
    for (k, v) in pairs {
        match map.get_mut(&k) {
            None => {
                map.insert(k, Value::String(v));
            }
            Some(Value::Array(items)) => items.push(Value::String(v)),
            Some(existing) => *existing = json!([existing.take(), v]),
        }
    }
    Value::Object(map)
}

pub(super) fn query_map(query: &str) -> Value {
    pairs_to_object(serde_urlencoded::from_str(query).unwrap_or_default())
}

/// Checks the sender's signature over the raw request, as the sender made it (the URL is this
/// server's public URL with the request's path and query).
fn check_signature(
    state: &AppState,
    verify: &Verify,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refusal> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", state.base_url);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect();
    let request = SignedRequest {
        method: method.as_str(),
        url: &url,
        headers: &headers,
        body,
    };
    intake::check_signature(verify, &request, Timestamp::now())
}

fn header_map(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        if DROPPED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        map.insert(
            name.as_str().to_owned(),
            json!(String::from_utf8_lossy(value.as_bytes())),
        );
    }
    Value::Object(map)
}

/// Compares secrets in constant time, leaking through timing neither where they differ nor their
/// lengths: both are hashed (SHA-256) to 32 bytes, and the digests compared with `subtle`.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_by_content_type() {
        assert_eq!(
            parse_body("application/json", br#"{"a":1}"#).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse_body("", br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_body("application/x-www-form-urlencoded", b"a=1&b=x&a=2").unwrap(),
            json!({"a": ["1", "2"], "b": "x"})
        );
        assert_eq!(
            parse_body("application/x-www-form-urlencoded", br#"{"a":1}"#).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse_body("text/plain", b"hello").unwrap(), json!("hello"));
        assert_eq!(parse_body("application/json", b"").unwrap(), Value::Null);
        assert!(parse_body("application/json; charset=utf-8", b"{nope").is_err());
        assert!(parse_body("application/octet-stream", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
