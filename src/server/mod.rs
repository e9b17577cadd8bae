//! The HTTP server: catch hooks, resume URLs, the REST API, liveness and readiness, the request inspector, health, and the web UI.
//!
//! Routers are functions of [`AppState`]; errors answer `{code, detail}` JSON with a 4xx or 5xx
//! status (the framework's own rejections too: `rejections`), and internals are logged, not
//! leaked.

mod api;
mod audit;
mod auth;
mod capture;
mod connections;
mod hook_log;
mod hooks;
mod inspector;
mod log_writer;
mod metrics;
mod openapi;
mod preview;
mod rate_limit;
mod rejections;
mod repair;
mod resume;
mod storage;
mod throttle;
mod trigger;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hookflow_engine::runtime::Engine;
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use audit::AuditRecord;
pub use auth::{Auth, MIN_PASSWORD_CHARS};
pub use capture::Captures;
pub use connections::{serve, ConnectionStats, Limits};
pub use hook_log::HookLog;
pub use inspector::Inspector;
pub use log_writer::LogWriter;
pub use rate_limit::HookLimits;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The runtime.
    pub engine: Arc<Engine>,
    /// The base URL catch URLs are shown with.
    pub base_url: Arc<str>,
    /// The largest body a catch hook accepts.
    pub max_body_bytes: usize,
    /// Recent requests to `/inspect/…`.
    pub inspector: Inspector,
    /// Recent catch-hook requests per flow, and their counters.
    pub hook_log: HookLog,
    /// Who did what.
    pub audit: AuditRecord,
    /// Writes the hook logs and the audit record to the store.
    pub log_writer: LogWriter,
    /// Armed sample captures.
    pub captures: Captures,
    /// The flow files' problems as last loaded.
    pub problems: crate::reload::Problems,
    /// Who may use the UI and the API.
    pub auth: Auth,
    /// Catch hooks' rate limits.
    pub hook_limits: HookLimits,
    /// What happened to connections, for `/metrics`.
    pub connections: Arc<ConnectionStats>,
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(hooks::router())
        .merge(resume::router())
        .merge(api::router())
        .merge(repair::router())
        .merge(inspector::router())
        .merge(hook_log::router())
        .merge(audit::router())
        .merge(capture::router())
        .merge(preview::router())
        .merge(trigger::router())
        .merge(storage::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .merge(auth::router())
        .merge(hookflow_web_ui::router())
        .fallback(|| async {
            ApiError::not_found("nothing here: see /api/v1/flows for this server's flows")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn(rejections::as_json))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /readyz`: 200 while the store answers (a load balancer sends events elsewhere otherwise:
/// a node whose database is away answers catch hooks 503).
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.engine.store().next_due().await {
        Ok(_) => Ok(Json(json!({ "status": "ready" }))),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store does not answer: this node takes no events now",
            ))
        }
    }
}

/// An error answer: a status and `{code, detail}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// Seconds for a `Retry-After` header (a 503 without one asks for 5).
    retry_after: Option<u64>,
}

impl ApiError {
    /// Any status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Asks the client to wait `wait` (rounded up to whole seconds, at least 1) before trying
    /// again, with a `Retry-After` header.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(whole_seconds(wait));
        self
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 400.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 503 for a store failure: logged in full, answered in general terms.
    pub fn unavailable(error: &hookflow_engine::Error) -> Self {
        tracing::error!(error = %error, "store error while answering a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server could not read or store data right now; try again",
        )
    }
}

impl From<hookflow_engine::Error> for ApiError {
    fn from(e: hookflow_engine::Error) -> Self {
        use hookflow_engine::Error as E;
        let (status, code) = match &e {
            E::Store(_) => return Self::unavailable(&e),
            E::RunNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::EventGone(_) => (StatusCode::GONE, "event_gone"),
            E::NotRetryable(_) => (StatusCode::CONFLICT, "not_retryable"),
            E::FlowNotDeployed(_) => (StatusCode::CONFLICT, "flow_not_deployed"),
            E::TooManyRuns(_) => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_runs"),
            E::InvalidFlow { .. } | E::RevisionMissing { .. } => {
                (StatusCode::CONFLICT, "revision_unavailable")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<hookflow_engine::store::StoreError> for ApiError {
    fn from(e: hookflow_engine::store::StoreError) -> Self {
        Self::unavailable(&e.into())
    }
}

/// How long a sender is asked to wait after a 503 (the store unreachable, a flow paused).
const RETRY_UNAVAILABLE_AFTER_SECS: u64 = 5;

/// A wait in whole seconds, rounded up, at least 1 (what `Retry-After` can say).
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "code": self.code, "detail": self.detail }));
        let retry_after = self
            .retry_after
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(RETRY_UNAVAILABLE_AFTER_SECS));
        match retry_after {
            Some(seconds) => {
                let retry = [(axum::http::header::RETRY_AFTER, seconds.to_string())];
                (self.status, retry, body).into_response()
            }
            None => (self.status, body).into_response(),
        }
    }
}
