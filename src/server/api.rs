//! The REST API under `/api/v1`: flows with their catch URLs (one flow with its source), runs
//! (filtered, cursor-paged), a run's detail with its event and every step's record, and the
//! quarantine of accepted events the store could not read back (listed, and ingested again).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookflow_engine::flow::{Flow, Trigger};
use hookflow_engine::ids::{FlowId, RunId};
use hookflow_engine::model::{Run, RunStatus, Timestamp};
use hookflow_engine::store::{Ingested, RunQuery, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flows", get(list_flows))
        .route("/api/v1/flows/{flow_id}", get(show_flow))
        .route("/api/v1/flows/{flow_id}/revisions", get(revisions))
        .route("/api/v1/flows/{flow_id}/samples/{name}", get(show_sample))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/events", get(run_events))
        .route("/api/v1/runs/{run_id}", get(show_run))
        .route("/api/v1/quarantine", get(list_quarantine))
        .route(
            "/api/v1/quarantine/{id}/reingest",
            post(reingest_quarantined),
        )
}

async fn list_flows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut flows = Vec::new();
    let now = Timestamp::now();
    for flow in state.engine.catalog().all() {
        let mut answer = flow_json(&flow, catch_url(&state, &flow).await?);
        answer["activity"] = activity(&state, &flow.id, now).await?;
        flows.push(answer);
    }
    Ok(Json(
        json!({ "flows": flows, "problems": state.problems.get() }),
    ))
}

/// How many of the flow's runs started in the last 24 hours (at most the newest 1000 looked at):
/// by status, per hour (oldest first), and the last run.
async fn activity(state: &AppState, flow: &FlowId, now: Timestamp) -> Result<Value, ApiError> {
    const HOUR_MS: i64 = 3_600_000;
    let query = RunQuery {
        flow_id: Some(flow.clone()),
        since: Some(Timestamp(now.millis() - 24 * HOUR_MS)),
        limit: 1000,
        ..RunQuery::default()
    };
    let page = state.engine.store().list_runs(&query).await?;
    let mut hourly = [0u32; 24];
    let mut by_status: std::collections::BTreeMap<String, u32> = Default::default();
    for run in &page.runs {
        let hours_ago = ((now.millis() - run.created_at.millis()) / HOUR_MS).clamp(0, 23) as usize;
        hourly[23 - hours_ago] += 1;
        *by_status.entry(run.status.to_string()).or_default() += 1;
    }
    Ok(json!({
        "last_24h": by_status,
        "hourly": hourly,
        "last_run": page.runs.first().map(run_summary),
        "capped": page.next.is_some(),
    }))
}

/// A deployed flow with its source (the revision running now).
#[derive(Deserialize)]
struct FlowParams {
    /// A kept revision instead of the one deployed now (a run's).
    revision: Option<String>,
}

async fn show_flow(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Query(params): Query<FlowParams>,
) -> Result<Json<Value>, ApiError> {
    let flow = match params.revision {
        None => deployed(&state, &flow_id)?,
        Some(revision) => {
            let id = flow_id
                .parse::<FlowId>()
                .map_err(|e| ApiError::bad_request("invalid_flow_id", e.to_string()))?;
            let revision = hookflow_engine::model::Revision(revision);
            state
                .engine
                .catalog()
                .revision(state.engine.store(), &id, &revision)
                .await?
        }
    };
    let mut answer = flow_json(&flow, catch_url(&state, &flow).await?);
    answer["source"] = json!(flow.source.as_ref());
    Ok(Json(answer))
}

/// A flow's revisions as deployed over time, newest first, the current one marked.
async fn revisions(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = flow_id
        .parse::<FlowId>()
        .map_err(|e| ApiError::bad_request("invalid_flow_id", e.to_string()))?;
    let current = state
        .engine
        .catalog()
        .current(&id)
        .map(|f| f.revision.clone());
    let mut history = state.engine.revision_history(&id).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!(
            "no flow `{flow_id}` was ever deployed"
        )));
    }
    history.reverse();
    for entry in &mut history {
        let is_current = current
            .as_ref()
            .is_some_and(|c| entry["revision"] == c.0.as_str());
        entry["current"] = json!(is_current);
    }
    Ok(Json(json!({ "flow": id, "revisions": history })))
}

/// One of the flow's samples, as the run's `trigger` it stands for.
async fn show_sample(
    State(state): State<AppState>,
    Path((flow_id, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let flow = deployed(&state, &flow_id)?;
    let trigger = super::preview::sample_trigger(&flow, &name)?;
    Ok(Json(
        json!({ "flow": flow.id, "name": name, "trigger": trigger }),
    ))
}

/// The deployed flow with this id, or a 404.
pub(super) fn deployed(state: &AppState, flow_id: &str) -> Result<Arc<Flow>, ApiError> {
    flow_id
        .parse::<FlowId>()
        .ok()
        .and_then(|id| state.engine.catalog().current(&id))
        .ok_or_else(|| ApiError::not_found(format!("no flow `{flow_id}` is deployed")))
}

async fn catch_url(state: &AppState, flow: &Flow) -> Result<Option<String>, ApiError> {
    match flow.trigger {
        Trigger::Webhook { .. } => {
            let token = state
                .engine
                .hook_token(&flow.id)
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            Ok(Some(format!(
                "{}/hooks/catch/{}/{token}",
                state.base_url, flow.id
            )))
        }
        Trigger::Manual | Trigger::Schedule(_) => Ok(None),
    }
}

fn flow_json(flow: &Flow, catch_url: Option<String>) -> Value {
    let trigger = match flow.trigger {
        Trigger::Webhook { respond, .. } => {
            json!({ "type": "webhook", "respond": format!("{respond:?}").to_lowercase() })
        }
        Trigger::Manual => json!({ "type": "manual" }),
        Trigger::Schedule(ref s) => json!({
            "type": "schedule", "cron": s.cron, "timezone": s.timezone,
            "next": s.upcoming(hookflow_engine::model::Timestamp::now(), 3),
        }),
    };
    let steps: Vec<Value> = flow
        .steps
        .iter()
        .map(|s| {
            let route = s
                .route
                .as_ref()
                .map(|r| json!({ "switch": r.switch, "path": r.path }));
            json!({
                "id": s.id, "name": s.name, "kind": s.kind, "needs": s.needs, "line": s.line,
                "route": route, "on_failure": s.handler,
            })
        })
        .collect();
    json!({
        "id": flow.id, "name": flow.name, "description": flow.description, "file": flow.file,
        "revision": flow.revision, "trigger": trigger, "catch_url": catch_url, "steps": steps,
        "enabled": flow.enabled,
    })
}

#[derive(Debug, Deserialize)]
struct RunsParams {
    flow: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    /// Text the run's payload contains (case-insensitive).
    q: Option<String>,
}

/// How many runs one payload search looks at before answering with a cursor to go on.
const SEARCH_BUDGET: usize = 5_000;

/// A time given as RFC 3339 (`2026-11-22T10:00:00Z`) or as a duration before `now` (`2h`, `7d`).
pub(super) fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Some(t) = Timestamp::parse_rfc3339(text) {
        return Ok(t);
    }
    // A bare number (`0`) is not a duration: it names no unit.
    let unit = text.contains(|c: char| c.is_ascii_alphabetic());
    unit.then(|| humantime::parse_duration(text).ok())
        .flatten()
        .ok_or(())
        .map(|ago| Timestamp(now.millis().saturating_sub(ago.as_millis() as i64)))
        .map_err(|()| {
            format!("`{text}` is neither an RFC 3339 time nor a duration ago such as `2h` or `7d`")
        })
}

/// A page's size as asked for (`?limit=`): 1 to 1000, 50 if not given.
pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, String> {
    match limit {
        None => Ok(50),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(format!("{n} is not 1 to 1000")),
    }
}

/// A run id from a path segment, or a 400.
pub(super) fn parse_run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse().map_err(|e: hookflow_engine::ids::InvalidId| {
        ApiError::bad_request("invalid_run_id", e.to_string())
    })
}

async fn list_runs(
    State(state): State<AppState>,
    Query(params): Query<RunsParams>,
) -> Result<Json<Value>, ApiError> {
    let bad = |field: &'static str, e: String| {
        ApiError::bad_request("invalid_parameter", format!("`{field}`: {e}"))
    };
    let now = Timestamp::now();
    let query = RunQuery {
        since: params
            .since
            .map(|t| parse_time(&t, now))
            .transpose()
            .map_err(|e| bad("since", e))?,
        until: params
            .until
            .map(|t| parse_time(&t, now))
            .transpose()
            .map_err(|e| bad("until", e))?,
        flow_id: params
            .flow
            .map(|f| f.parse::<FlowId>())
            .transpose()
            .map_err(|e| bad("flow", e.to_string()))?,
        status: params
            .status
            .map(|s| s.parse::<RunStatus>())
            .transpose()
            .map_err(|e| bad("status", e))?,
        before: params
            .cursor
            .map(|c| c.parse::<RunId>())
            .transpose()
            .map_err(|e| bad("cursor", e.to_string()))?,
        limit: page_limit(params.limit).map_err(|e| bad("limit", e))?,
    };
    let store = state.engine.store();
    let Some(text) = params.q.filter(|q| !q.trim().is_empty()) else {
        let page = store.list_runs(&query).await?;
        let runs: Vec<Value> = page.runs.iter().map(run_summary).collect();
        return Ok(Json(json!({ "runs": runs, "next_cursor": page.next })));
    };
    // A payload search walks the runs newest first, at most SEARCH_BUDGET of them per request;
    // `next_cursor` goes on from where it stopped.
    let wanted = query.limit;
    let needle = text.to_lowercase();
    let mut query = RunQuery {
        limit: 200,
        ..query
    };
    let (mut found, mut looked) = (Vec::new(), 0);
    let next = 'pages: loop {
        let page = store.list_runs(&query).await?;
        for run in &page.runs {
            looked += 1;
            let event = store.event(run.event_id).await?;
            let matches = event.is_some_and(|e| {
                e.trigger["body"]
                    .to_string()
                    .to_lowercase()
                    .contains(&needle)
            });
            if matches {
                found.push(run_summary(run));
            }
            if found.len() == wanted || looked >= SEARCH_BUDGET {
                // Go on after this run next time.
                break 'pages Some(run.id);
            }
        }
        match page.next {
            Some(cursor) => query.before = Some(cursor),
            None => break None,
        }
    };
    Ok(Json(
        json!({ "runs": found, "next_cursor": next, "searched": looked }),
    ))
}

/// A run as lists show it.
pub(super) fn run_summary(run: &Run) -> Value {
    let duration_ms = run.finished_at.map(|f| f.millis_since(run.created_at));
    json!({
        "id": run.id, "flow_id": run.flow_id, "revision": run.revision, "event_id": run.event_id,
        "status": run.status, "created_at": run.created_at, "finished_at": run.finished_at,
        "duration_ms": duration_ms, "reason": run.reason, "replay_of": run.replay_of,
        "title": run.title, "started_by": run.started_by, "retried": run.retried(),
    })
}

#[derive(Deserialize)]
struct EventsParams {
    flow: Option<String>,
}

/// `GET /api/v1/runs/events`: server-sent events, one `run` event (a run summary) each time a run
/// is created or finishes; `?flow=` keeps one flow's.
async fn run_events(
    State(state): State<AppState>,
    Query(params): Query<EventsParams>,
) -> Result<
    Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>,
    ApiError,
> {
    if let Some(flow) = &params.flow {
        flow.parse::<FlowId>()
            .map_err(|e| ApiError::bad_request("invalid_parameter", format!("`flow`: {e}")))?;
    }
    let notices = state.engine.subscribe();
    let stream = futures_util::stream::unfold(notices, move |mut notices| {
        let state = state.clone();
        let flow = params.flow.clone();
        async move {
            loop {
                let notice = match notices.recv().await {
                    Ok(notice) => notice,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let Ok(Some(run)) = state.engine.store().run(notice.run_id).await else {
                    continue;
                };
                if flow.as_deref().is_some_and(|f| f != run.flow_id.as_str()) {
                    continue;
                }
                let event = SseEvent::default()
                    .event("run")
                    .data(run_summary(&run).to_string());
                return Some((Ok(event), notices));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn show_run(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run_id = parse_run_id(&run_id)?;
    let store = state.engine.store();
    let run = store
        .run(run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {run_id}")))?;
    let event = store.event(run.event_id).await?;
    let records = store.step_records(run_id).await?;
    // Steps in flow order; a step that has not run yet shows its status without a record.
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|p| match records.iter().find(|r| r.step_id == p.id) {
            Some(r) => {
                let duration_ms: u64 = r.attempts.iter().map(|a| a.duration_ms).sum();
                let mut step = json!({
                    "id": p.id, "kind": r.kind, "status": p.status, "input": r.input, "output": r.output,
                    "error": r.error, "attempts": r.attempts, "duration_ms": duration_ms,
                });
                if let Some(path) = &p.path {
                    step["path"] = json!(path);
                }
                step
            }
            None => json!({ "id": p.id, "status": p.status, "attempts": [] }),
        })
        .collect();
    let steps = with_waits(&state, &run, steps).await?;
    let mut answer = run_summary(&run);
    answer["event"] = json!(event);
    answer["steps"] = json!(steps);
    Ok(Json(answer))
}

/// Marks the steps that wait for a callback with until when, and the URL that resumes them.
async fn with_waits(
    state: &AppState,
    run: &Run,
    mut steps: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    if run.steps.iter().all(|p| p.waiting_until.is_none()) {
        return Ok(steps);
    }
    let engine = &state.engine;
    let flow = engine
        .catalog()
        .revision(engine.store(), &run.flow_id, &run.revision)
        .await?;
    let urls = engine.resume_urls(&flow, run.id).await?;
    for (step, progress) in steps.iter_mut().zip(&run.steps) {
        if let Some(until) = progress.waiting_until {
            step["waiting_until"] = json!(until);
            step["resume_url"] = json!(urls
                .iter()
                .find_map(|(id, url)| (id == &progress.id).then_some(url)));
        }
    }
    Ok(steps)
}

/// `GET /api/v1/quarantine`: the accepted events the store set aside as damaged or undecodable.
async fn list_quarantine(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let entries = state.engine.store().quarantined().await?;
    Ok(Json(json!({ "quarantined": entries })))
}

/// `POST /api/v1/quarantine/{id}/reingest`: ingests a quarantined record again once its bytes
/// decode; 404 for an unknown id, 422 (the entry stays) while the bytes still do not decode.
async fn reingest_quarantined(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::audit::Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let done = match state.engine.store().reingest_quarantined(&id).await {
        Ok(done) => done,
        Err(e @ StoreError::NotQuarantined(_)) => return Err(ApiError::not_found(e.to_string())),
        Err(e @ StoreError::StillUnreadable { .. }) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "undecodable",
                e.to_string(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let (outcome, original) = match done.outcome {
        Ingested::Created => ("created", None),
        Ingested::Duplicate { run_id, .. } => ("duplicate", Some(run_id)),
    };
    let what = json!({ "id": id, "outcome": outcome, "run_id": done.run_id });
    let action = super::audit::AuditAction::Reingest;
    state.audit.record(&actor, action, what);
    Ok(Json(json!({
        "id": id, "outcome": outcome, "run_id": done.run_id, "event_id": done.event_id,
        "original_run_id": original,
    })))
}
