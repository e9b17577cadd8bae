//! Fixing runs over the API: retry a failed run from its failed step, replay a run as a new run,
//! and the same for every run of a flow in a time window (`dry_run` answers the count first).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use hookflow_engine::ids::{FlowId, RunId};
use hookflow_engine::model::{RunStatus, Timestamp};
use hookflow_engine::runtime::{Bulk, ReplayRevision, RunSelection};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{parse_run_id, parse_time, run_summary};
use super::audit::{Actor, AuditAction};
use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runs/{run_id}/retry", post(retry_one))
        .route("/api/v1/runs/{run_id}/replay", post(replay_one))
        .route("/api/v1/runs/retry", post(retry_many))
        .route("/api/v1/runs/replay", post(replay_many))
}

/// A JSON request body; an empty body is the defaults.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("the JSON body is invalid: {e}"))
    })
}

fn revision(raw: Option<&str>) -> Result<ReplayRevision, ApiError> {
    raw.map_or(Ok(ReplayRevision::default()), |r| {
        r.parse().map_err(|e: String| {
            ApiError::bad_request("invalid_parameter", format!("`revision`: {e}"))
        })
    })
}

async fn retry_one(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = state
        .engine
        .retry_run(parse_run_id(&run_id)?, Some(actor.who()))
        .await?;
    let what = json!({ "run_id": run.id, "flow": run.flow_id });
    state.audit.record(&actor, AuditAction::Retry, what);
    Ok(Json(run_summary(&run)))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    /// `current` (default) or `original`.
    #[schemars(extend("enum" = [null, "current", "original"]))]
    revision: Option<String>,
}

async fn replay_one(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(run_id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let run_id = parse_run_id(&run_id)?;
    let request: ReplayBody = body(&bytes)?;
    let revision = revision(request.revision.as_deref())?;
    let accepted = state.engine.replay_run(run_id, revision).await?;
    let what = json!({
        "run_id": run_id, "new_run_id": accepted.run_id, "revision": revision.to_string(),
    });
    state.audit.record(&actor, AuditAction::Replay, what);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "status": "queued", "run_id": accepted.run_id, "event_id": accepted.event_id,
            "replay_of": run_id,
        })),
    ))
}

/// Which runs a bulk action applies to, and whether to only count them.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkBody {
    /// The flow whose runs to act on.
    #[schemars(extend("pattern" = hookflow_engine::ids::FlowId::PATTERN))]
    flow: String,
    /// Only runs with this status.
    #[schemars(extend("enum" = super::openapi::OPTIONAL_RUN_STATUSES))]
    status: Option<String>,
    /// Only runs created since: RFC 3339, or a duration ago (`2h`).
    #[schemars(extend("pattern" = super::openapi::TIME_PATTERN))]
    since: Option<String>,
    /// Only runs created before: RFC 3339, or a duration ago.
    #[schemars(extend("pattern" = super::openapi::TIME_PATTERN))]
    until: Option<String>,
    /// Replays only: `current` (default) or `original`.
    #[schemars(extend("enum" = [null, "current", "original"]))]
    revision: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl BulkBody {
    fn selection(&self) -> Result<RunSelection, ApiError> {
        let bad = |field: &str, e: String| {
            ApiError::bad_request("invalid_parameter", format!("`{field}`: {e}"))
        };
        let now = Timestamp::now();
        Ok(RunSelection {
            flow_id: self
                .flow
                .parse::<FlowId>()
                .map_err(|e| bad("flow", e.to_string()))?,
            status: self
                .status
                .as_deref()
                .map(str::parse::<RunStatus>)
                .transpose()
                .map_err(|e| bad("status", e))?,
            since: self
                .since
                .as_deref()
                .map(|t| parse_time(t, now))
                .transpose()
                .map_err(|e| bad("since", e))?,
            until: self
                .until
                .as_deref()
                .map(|t| parse_time(t, now))
                .transpose()
                .map_err(|e| bad("until", e))?,
        })
    }
}

fn bulk_json(bulk: &Bulk) -> Value {
    let failed: Vec<Value> = bulk
        .failed
        .iter()
        .map(|(id, why)| json!({ "run_id": id, "reason": why }))
        .collect();
    json!({ "matched": bulk.matched, "started": bulk.started, "failed": failed })
}

async fn count(state: &AppState, selection: &RunSelection) -> Result<Json<Value>, ApiError> {
    let ids: Vec<RunId> = state.engine.select_runs(selection).await?;
    Ok(Json(json!({ "matched": ids.len(), "dry_run": true })))
}

/// What a bulk action did, for the audit record.
fn bulk_audit(selection: &RunSelection, bulk: &Bulk) -> Value {
    json!({
        "flow": selection.flow_id, "status": selection.status, "since": selection.since,
        "until": selection.until, "matched": bulk.matched, "started": bulk.started.len(),
        "failed": bulk.failed.len(),
    })
}

async fn retry_many(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: BulkBody = body(&bytes)?;
    if request.revision.is_some() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "`revision`: a retry resumes the run on its own revision; replay to choose one",
        ));
    }
    let selection = RunSelection {
        status: Some(RunStatus::Failed),
        ..request.selection()?
    };
    if request.dry_run {
        return count(&state, &selection).await;
    }
    let bulk = state
        .engine
        .retry_runs(&selection, Some(actor.who()))
        .await?;
    let what = bulk_audit(&selection, &bulk);
    state.audit.record(&actor, AuditAction::RetryBulk, what);
    Ok(Json(bulk_json(&bulk)))
}

async fn replay_many(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: BulkBody = body(&bytes)?;
    let selection = request.selection()?;
    let revision = revision(request.revision.as_deref())?;
    if request.dry_run {
        return count(&state, &selection).await;
    }
    let bulk = state.engine.replay_runs(&selection, revision).await?;
    let mut what = bulk_audit(&selection, &bulk);
    what["revision"] = json!(revision.to_string());
    state.audit.record(&actor, AuditAction::ReplayBulk, what);
    Ok(Json(bulk_json(&bulk)))
}
