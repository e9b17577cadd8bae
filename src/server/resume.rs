//! Resume URLs: `POST /hooks/resume/{run_id}/{step_id}/{resume_token}` finishes a waiting
//! `wait_for_callback` step with the request's body and query, and the run goes on.
//!
//! Open like a catch hook (the token is the credential); a callback taken is in the audit record.
//! 200 `{status: "resumed", run_id}` once
//! the step's outcome is stored; 404 for a URL no step waits at (an unknown run or step, or a
//! token that does not match: not told apart); 409 `not_waiting` when the step has not been
//! reached yet, is done (called back before, or timed out) or the run is over. Only POST: a link
//! preview (Slack and mail clients fetch links with GET) must not answer for a person.

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::{Json, Router};
use hookflow_engine::ids::{RunId, StepId};
use hookflow_engine::runtime::callbacks::{Callback, ResumeError};
use serde_json::{json, Value};

use super::audit::{Actor, AuditAction};
use super::hooks::{parse_body, query_map};
use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new().route(
        "/hooks/resume/{run_id}/{step_id}/{resume_token}",
        post(resume),
    )
}

async fn resume(
    State(state): State<AppState>,
    Path((run_id, step_id, token)): Path<(String, String, String)>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let nowhere = || ApiError::not_found("no step waits for a callback at this URL");
    let (Ok(run_id), Ok(step_id)) = (run_id.parse::<RunId>(), step_id.parse::<StepId>()) else {
        return Err(nowhere());
    };
    let bytes = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than this server accepts ({} bytes)",
                state.max_body_bytes
            ),
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let callback = Callback {
        body: parse_body(content_type, &bytes)?,
        query: query_map(uri.query().unwrap_or_default()),
    };
    match state
        .engine
        .resume(run_id, &step_id, &token, callback)
        .await
    {
        Ok(run) => {
            let actor = Actor::resume_url(client.map(|c| c.0 .0.ip()));
            let what = json!({ "run_id": run.id, "step_id": step_id });
            state.audit.record(&actor, AuditAction::Callback, what);
            Ok(Json(json!({ "status": "resumed", "run_id": run.id })))
        }
        Err(ResumeError::NotFound) => Err(nowhere()),
        Err(ResumeError::NotWaiting(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_waiting", why))
        }
        Err(ResumeError::Store(e)) => Err(e.into()),
    }
}
