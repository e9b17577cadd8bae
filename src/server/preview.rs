//! Previews for authoring: `GET /api/v1/flows/{flow_id}/samples` lists a flow's samples, and
//! `POST /api/v1/flows/{flow_id}/preview {"sample": NAME}` (or `{"event": {"body": …}}`) runs the
//! deployed flow offline on it — nothing sent, nothing stored — and answers each step's rendered
//! input and output (and a `code` step's console lines), every expression that resolved to nothing
//! with its line and a suggestion, and the flow's warnings with those of this run (request fields
//! it would send empty).

use std::collections::BTreeMap;
use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookflow_engine::authoring::empty::empty_fields;
use hookflow_engine::authoring::offline;
use hookflow_engine::authoring::unresolved::unresolved;
use hookflow_engine::flow::Flow;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flows/{flow_id}/samples", get(samples))
        .route("/api/v1/flows/{flow_id}/preview", post(preview))
}

/// The trigger one of the flow's samples stands for: 404 if there is no such sample, 400 if it
/// does not read.
pub(super) fn sample_trigger(flow: &Flow, name: &str) -> Result<Value, ApiError> {
    let known = crate::samples::list(Path::new(&flow.file), flow.id.as_str());
    let (_, path) = known
        .into_iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| ApiError::not_found(format!("`{}` has no sample `{name}`", flow.id)))?;
    crate::samples::load(&path)
        .map_err(|e| ApiError::bad_request("invalid_sample", format!("{e:#}")))
}

async fn samples(
    State(state): State<AppState>,
    UrlPath(flow_id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = super::api::deployed(&state, &flow_id)?;
    let names: Vec<String> = crate::samples::list(Path::new(&flow.file), flow.id.as_str())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    Ok(Json(json!({ "flow": flow.id, "samples": names })))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewRequest {
    #[serde(default)]
    sample: Option<String>,
    #[serde(default)]
    event: Option<Value>,
}

async fn preview(
    State(state): State<AppState>,
    UrlPath(flow_id): UrlPath<String>,
    Json(request): Json<PreviewRequest>,
) -> Result<Json<Value>, ApiError> {
    let flow = super::api::deployed(&state, &flow_id)?;
    let trigger = match (&request.sample, request.event) {
        (Some(name), None) => super::preview::sample_trigger(&flow, name)?,
        (None, Some(event)) => crate::samples::trigger(&event),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_preview",
                "give `sample` (a sample's name) or `event` (`{\"body\": …}`)",
            ))
        }
    };
    let trace = offline::run(&flow, trigger, &BTreeMap::new()).await;
    let sample = request.sample.as_deref().unwrap_or("the event");
    let steps: Vec<Value> = trace
        .run
        .steps
        .iter()
        .map(|p| {
            let record = trace.record(&p.id);
            json!({
                "id": p.id, "status": p.status,
                "input": record.map(|r| &r.input), "output": record.and_then(|r| r.output.as_ref()),
                "error": record.and_then(|r| r.error.as_ref()).map(|e| &e.message),
                "logs": record.and_then(|r| r.attempts.last()).map(|a| &a.logs),
            })
        })
        .collect();
    let missing: Vec<Value> = unresolved(&flow, &trace)
        .iter()
        .map(|u| {
            json!({
                "step": u.step, "line": u.line, "col": u.col, "field": u.field, "path": u.path,
                "suggestion": u.suggestion, "message": u.to_string(),
            })
        })
        .collect();
    let warnings: Vec<Value> = flow
        .warnings
        .iter()
        .chain(&empty_fields(&flow, &trace, sample))
        .map(|w| json!({ "line": w.line, "col": w.col, "field": w.path, "message": w.message }))
        .collect();
    Ok(Json(json!({
        "flow": flow.id, "revision": flow.revision,
        "status": trace.run.status, "reason": trace.run.reason,
        "steps": steps, "unresolved": missing, "warnings": warnings,
    })))
}
