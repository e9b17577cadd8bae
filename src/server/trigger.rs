//! Manual runs: `POST /api/v1/flows/{flow_id}/runs` with `{"body": …}` (and optionally `headers`,
//! `query`) or `{"sample": NAME}` starts a run of the flow with that payload — a `manual:` flow's
//! only way to run, and a way to try any flow. The event is stored durably before the answer
//! (`201 {"event_id", "run_id"}`); a manual run is never answered as a duplicate.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{Actor, AuditAction};
use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/flows/{flow_id}/runs", post(start))
}

/// A manual run's payload: `body` (and optionally `headers`, `query`), or a `sample` by name.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRequest {
    /// The run's `trigger.body`.
    #[serde(default)]
    body: Option<Value>,
    /// The run's `trigger.headers`.
    #[serde(default)]
    headers: Option<Value>,
    /// The run's `trigger.query`.
    #[serde(default)]
    query: Option<Value>,
    /// One of the flow's samples, by name, instead.
    #[serde(default)]
    sample: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(flow_id): UrlPath<String>,
    Json(request): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let flow = super::api::deployed(&state, &flow_id)?;
    let request: StartRequest = serde_json::from_value(request).map_err(|e| {
        ApiError::bad_request(
            "invalid_run",
            format!("{e}: give `body` (and `headers`, `query`) or `sample`"),
        )
    })?;
    let sample = request.sample.clone();
    let trigger = match (request.sample, request.body) {
        (Some(name), None) => super::preview::sample_trigger(&flow, &name)?,
        (None, Some(body)) => crate::samples::trigger(&json!({
            "method": "MANUAL",
            "body": body,
            "headers": request.headers,
            "query": request.query,
        })),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_run",
                "give the payload as `body` (and `headers`, `query`), or a `sample` name",
            ))
        }
    };
    let accepted = state
        .engine
        .start_manual(&flow, trigger)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let what = json!({ "flow": flow.id, "run_id": accepted.run_id, "sample": sample });
    state.audit.record(&actor, AuditAction::Trigger, what);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "status": "queued", "event_id": accepted.event_id, "run_id": accepted.run_id }),
        ),
    ))
}
