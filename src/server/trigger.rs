//! Manual runs: `POST /api/v1/flows/{flow_id}/runs` with `{"body": …}` (and optionally `headers`,
//! `query`) or `{"sample": NAME}` starts a run of the flow with that payload — a `manual:` flow's
//! only way to run, and a way to try any flow. The event is stored durably before the answer
//! (`201 {"event_id", "run_id"}`); a manual run is never answered as a duplicate.

use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/flows/{flow_id}/runs", post(start))
}

async fn start(
    State(state): State<AppState>,
    UrlPath(flow_id): UrlPath<String>,
    Json(request): Json<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let flow = super::api::deployed(&state, &flow_id)?;
    let unknown: Vec<&String> = request
        .keys()
        .filter(|k| !["body", "headers", "query", "sample"].contains(&k.as_str()))
        .collect();
    if let Some(key) = unknown.first() {
        return Err(ApiError::bad_request(
            "invalid_run",
            format!("unknown field `{key}`: give `body` (and `headers`, `query`) or `sample`"),
        ));
    }
    let trigger = match (request.get("sample"), request.get("body")) {
        (Some(Value::String(name)), None) => {
            let known = crate::samples::list(Path::new(&flow.file), flow.id.as_str());
            let (_, path) = known.into_iter().find(|(n, _)| n == name).ok_or_else(|| {
                ApiError::not_found(format!("`{flow_id}` has no sample `{name}`"))
            })?;
            crate::samples::load(&path)
                .map_err(|e| ApiError::bad_request("invalid_sample", format!("{e:#}")))?
        }
        (None, Some(_)) => {
            let mut manual = Value::Object(request);
            manual["method"] = json!("MANUAL");
            crate::samples::trigger(&manual)
        }
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
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "status": "queued", "event_id": accepted.event_id, "run_id": accepted.run_id }),
        ),
    ))
}
