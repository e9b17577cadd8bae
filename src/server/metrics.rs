//! `GET /metrics`: counters in Prometheus' text format: catch-hook events received (by flow and
//! outcome) and rejected (by flow and reason), runs finished by flow and status, step durations
//! (a histogram by flow and kind), retries scheduled, commits refused for a lost lease, steps that
//! panicked, outbound requests refused, client connections (open, refused, timed out), logins
//! failed and throttled, this node's id, queue depth, store size and quarantined events (counted
//! at most once a second), failure alerts (open, sent, not delivered), audit record and hook
//! log entries (written, dropped, failed), and `storage` steps' operations (by action and outcome).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hookflow_engine::runtime::metrics::BUCKETS;
use hookflow_engine::store::StoreStats;

use super::{ApiError, AppState};

pub(super) fn router() -> Router<AppState> {
    let counted = Arc::new(Counted::default());
    Router::new().route(
        "/metrics",
        get(move |state| metrics(state, Arc::clone(&counted))),
    )
}

/// How long a count of the store serves scrapes before it is counted again.
const COUNT_MAX_AGE: Duration = Duration::from_secs(1);

/// The store's figures as last counted. Counting walks the queue (tens of thousands of items in a
/// backlog), so however often and by however many scrapers `/metrics` is read, the store is
/// counted at most once per [`COUNT_MAX_AGE`]; the gauges are that much behind at most.
#[derive(Debug, Default)]
struct Counted(tokio::sync::Mutex<Option<(Instant, StoreStats)>>);

impl Counted {
    /// The store's figures, counted again if the last count is older than [`COUNT_MAX_AGE`].
    async fn stats(&self, state: &AppState) -> Result<StoreStats, ApiError> {
        let mut last = self.0.lock().await;
        if let Some((at, stats)) = *last {
            if at.elapsed() < COUNT_MAX_AGE {
                return Ok(stats);
            }
        }
        let stats = state.engine.store().stats().await?;
        *last = Some((Instant::now(), stats));
        Ok(stats)
    }
}

/// Writes one metric's `# HELP` and `# TYPE` lines.
fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

async fn metrics(
    State(state): State<AppState>,
    counted: Arc<Counted>,
) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let counts = state.hook_log.counts();
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
        describe(&mut out, &name, "counter", help);
        for (flow, _, what, n) in counts.iter().filter(|c| c.1 == kind) {
            let _ = writeln!(out, "{name}{{flow=\"{flow}\",{label}=\"{what}\"}} {n}");
        }
    }

    let writes = state.log_writer.writes();
    describe(
        &mut out,
        "hookflow_log_entries_total",
        "counter",
        "Audit record and hook log entries, by what became of them: written to the store, dropped (too many waiting) or failed (the store refused them; logged).",
    );
    for (outcome, n) in [
        ("written", &writes.written),
        ("dropped", &writes.dropped),
        ("failed", &writes.failed),
    ] {
        let n = n.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "hookflow_log_entries_total{{outcome=\"{outcome}\"}} {n}"
        );
    }

    let engine = state.engine.metrics().snapshot();
    describe(
        &mut out,
        "hookflow_runs_total",
        "counter",
        "Runs finished since start, by flow and status.",
    );
    for (flow, status, n) in &engine.runs {
        let _ = writeln!(
            out,
            "hookflow_runs_total{{flow=\"{flow}\",status=\"{status}\"}} {n}"
        );
    }
    describe(
        &mut out,
        "hookflow_step_retries_total",
        "counter",
        "Step retries scheduled, by flow.",
    );
    for (flow, n) in &engine.retries {
        let _ = writeln!(out, "hookflow_step_retries_total{{flow=\"{flow}\"}} {n}");
    }
    describe(
        &mut out,
        "hookflow_step_requests_resent_total",
        "counter",
        "Automatic retries that resent the request recorded for their idempotency key, by flow.",
    );
    for (flow, n) in &engine.resent {
        let _ = writeln!(
            out,
            "hookflow_step_requests_resent_total{{flow=\"{flow}\"}} {n}"
        );
    }
    describe(
        &mut out,
        "hookflow_callbacks_total",
        "counter",
        "Calls to wait_for_callback resume URLs, by outcome (resumed, not_waiting, not_found).",
    );
    for (outcome, n) in &engine.callbacks {
        let _ = writeln!(out, "hookflow_callbacks_total{{outcome=\"{outcome}\"}} {n}");
    }
    let name = "hookflow_step_duration_seconds";
    describe(
        &mut out,
        name,
        "histogram",
        "Step attempt durations, by flow and kind.",
    );
    for (flow, kind, h) in &engine.steps {
        let labels = format!("flow=\"{flow}\",kind=\"{kind}\"");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }

    let stats = counted.stats(&state).await?;
    describe(
        &mut out,
        "hookflow_queue_depth",
        "gauge",
        "Steps waiting to run or running.",
    );
    let _ = writeln!(out, "hookflow_queue_depth {}", stats.queued);
    describe(
        &mut out,
        "hookflow_store_bytes",
        "gauge",
        "The store's size on disk.",
    );
    let _ = writeln!(out, "hookflow_store_bytes {}", stats.bytes);
    describe(
        &mut out,
        "hookflow_ingest_syncs_total",
        "counter",
        "Syncs to disk that acknowledged events; concurrent events share one.",
    );
    let _ = writeln!(out, "hookflow_ingest_syncs_total {}", stats.ingest_syncs);
    describe(
        &mut out,
        "hookflow_store_queue_vacuums_total",
        "counter",
        "Times this node vacuumed the PostgreSQL queue table (claimed and finished items leave dead rows that claims would step over).",
    );
    let _ = writeln!(
        out,
        "hookflow_store_queue_vacuums_total {}",
        stats.queue_vacuums
    );
    describe(
        &mut out,
        "hookflow_quarantined_total",
        "gauge",
        "Accepted events held in the quarantine (damaged or undecodable on disk), not yet ingested again.",
    );
    let _ = writeln!(out, "hookflow_quarantined_total {}", stats.quarantined);
    describe(
        &mut out,
        "hookflow_node_info",
        "gauge",
        "This node's id (the owner of the leases it holds).",
    );
    let _ = writeln!(
        out,
        "hookflow_node_info{{node=\"{}\"}} 1",
        state.engine.node()
    );
    describe(
        &mut out,
        "hookflow_commits_refused_total",
        "counter",
        "Step outcomes not written because the step's lease was lost (another node took it over).",
    );
    let _ = writeln!(
        out,
        "hookflow_commits_refused_total {}",
        engine.refused_commits
    );
    describe(
        &mut out,
        "hookflow_lease_renewals_total",
        "counter",
        "Leases renewed by steps still running (each every third of the lease time).",
    );
    let _ = writeln!(
        out,
        "hookflow_lease_renewals_total {}",
        engine.lease_renewals
    );
    describe(
        &mut out,
        "hookflow_step_panics_total",
        "counter",
        "Step attempts that panicked (each failed as an attempt and follows the retry policy).",
    );
    let _ = writeln!(out, "hookflow_step_panics_total {}", engine.step_panics);
    for (name, help, n) in [
        (
            "hookflow_logins_failed_total",
            "Logins refused for a wrong password.",
            state.auth.throttle.failed_total(),
        ),
        (
            "hookflow_logins_throttled_total",
            "Logins refused (429) because their address failed too often.",
            state.auth.throttle.throttled_total(),
        ),
    ] {
        describe(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
    let connections = &state.connections;
    describe(
        &mut out,
        "hookflow_http_connections_open",
        "gauge",
        "Client connections open now.",
    );
    let _ = writeln!(out, "hookflow_http_connections_open {}", connections.open());
    describe(
        &mut out,
        "hookflow_http_connections_refused_total",
        "counter",
        "Client connections closed at once because http.max_connections were open.",
    );
    let _ = writeln!(
        out,
        "hookflow_http_connections_refused_total {}",
        connections.refused()
    );
    describe(
        &mut out,
        "hookflow_http_timeouts_total",
        "counter",
        "Client connections closed for a header, body or idle timeout.",
    );
    let _ = writeln!(
        out,
        "hookflow_http_timeouts_total {}",
        connections.timed_out()
    );
    describe(
        &mut out,
        "hookflow_outbound_refused_total",
        "counter",
        "Outbound requests, redirects and resolved addresses refused as not public.",
    );
    let _ = writeln!(
        out,
        "hookflow_outbound_refused_total {}",
        state.engine.http().refused()
    );
    describe(
        &mut out,
        "hookflow_storage_operations_total",
        "counter",
        "Operations of `storage` steps on the store, by action and outcome (applied, refused, unavailable).",
    );
    for (action, outcome, n) in hookflow_engine::steps::storage::operation_counts() {
        let _ = writeln!(
            out,
            "hookflow_storage_operations_total{{action=\"{action}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    let alerts = &crate::alerts::STATS;
    for (name, kind, help, value) in [
        (
            "hookflow_alerts_open",
            "gauge",
            "Failed runs waiting for the next alert digest (the configuration's `alerts:`).",
            &alerts.open,
        ),
        (
            "hookflow_alerts_runs_failed_total",
            "counter",
            "Failed runs alerted about.",
            &alerts.runs_failed,
        ),
        (
            "hookflow_alerts_sent_total",
            "counter",
            "Alert messages delivered to a target.",
            &alerts.sent,
        ),
        (
            "hookflow_alerts_send_failures_total",
            "counter",
            "Alert messages a target did not take (not sent again).",
            &alerts.send_failures,
        ),
    ] {
        describe(&mut out, name, kind, help);
        let _ = writeln!(
            out,
            "{name} {}",
            value.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let code = &hookflow_engine::steps::code::STATS;
    describe(
        &mut out,
        "hookflow_code_scripts_running",
        "gauge",
        "`code` step scripts running now.",
    );
    let _ = writeln!(
        out,
        "hookflow_code_scripts_running {}",
        code.running.load(std::sync::atomic::Ordering::Relaxed)
    );
    describe(
        &mut out,
        "hookflow_code_scripts_stopped_total",
        "counter",
        "`code` step scripts stopped at a limit, by limit (cpu_time, memory).",
    );
    for (limit, n) in [
        ("cpu_time", &code.stopped_time),
        ("memory", &code.stopped_memory),
    ] {
        let n = n.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "hookflow_code_scripts_stopped_total{{limit=\"{limit}\"}} {n}"
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
