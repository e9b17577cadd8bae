//! `GET /metrics`: counters in Prometheus' text format. For now the catch hooks' events received
//! (by flow and outcome) and rejected (by flow and reason).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let counts = state.hook_log.counts();
    let mut out = String::new();
    for (kind, label, help) in [
        (
            "received",
            "outcome",
            "Catch-hook requests taken, by flow and outcome (queued, duplicate, ignored, accepted).",
        ),
        (
            "rejected",
            "reason",
            "Catch-hook requests refused, by flow and reason (invalid_signature, payload_too_large, …).",
        ),
    ] {
        let name = format!("hookflow_events_{kind}_total");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (flow, _, what, n) in counts.iter().filter(|c| c.1 == kind) {
            let _ = writeln!(out, "{name}{{flow=\"{flow}\",{label}=\"{what}\"}} {n}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
