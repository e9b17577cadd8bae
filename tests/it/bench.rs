//! A smoke run of each benchmark scenario (`bench/`), small: proves the harness works and that
//! every acknowledged event completes (and reaches the sink where the flow posts to it). Speed is
//! never asserted here; the figures live in `bench/RESULTS.md`.

use hookflow_bench::scenario::{run, Options, Postgres, Scenario};

async fn smoke(scenario: Scenario) {
    smoke_on(scenario, None).await;
}

async fn smoke_on(scenario: Scenario, postgres: Option<Postgres>) {
    smoke_with(scenario, postgres, 1).await;
}

async fn smoke_with(scenario: Scenario, postgres: Option<Postgres>, nodes: usize) {
    smoke_options(scenario, postgres, nodes, None).await;
}

async fn smoke_options(
    scenario: Scenario,
    postgres: Option<Postgres>,
    nodes: usize,
    rate: Option<f64>,
) -> hookflow_bench::scenario::Report {
    let options = Options {
        hookflow: env!("CARGO_BIN_EXE_hookflow").into(),
        count: 300,
        concurrency: 8,
        workers: 4,
        compression: false,
        postgres,
        nodes,
        rate,
    };
    let report = run(scenario, &options)
        .await
        .unwrap_or_else(|e| panic!("{scenario:?}: {e:#}"));
    assert_eq!(report.load.acked.len(), 300, "{scenario:?}");
    assert_eq!(report.completed, 300, "{scenario:?}");
    assert!(
        report.rss_peak_kib > 0 && report.store_bytes > 0,
        "{report:?}"
    );
    report
}

/// `--rate`: 300 events at 1,000/s take at least the 299 ms their pace spreads them over.
#[tokio::test]
async fn a_paced_load_keeps_to_its_rate() {
    let report = smoke_options(Scenario::Ingest, None, 1, Some(1_000.0)).await;
    assert!(
        report.load.elapsed >= std::time::Duration::from_millis(299),
        "{:?}",
        report.load.elapsed
    );
}

#[tokio::test]
async fn ingest_scenario_completes_every_acknowledged_event() {
    smoke(Scenario::Ingest).await;
}

#[tokio::test]
async fn ingest_with_dedupe_scenario_starts_one_run_per_event() {
    smoke(Scenario::IngestDedupe).await;
}

#[tokio::test]
async fn end_to_end_scenario_delivers_every_acknowledged_event() {
    smoke(Scenario::EndToEnd).await;
}

#[tokio::test]
async fn backlog_scenario_drains_after_a_restart() {
    smoke(Scenario::Backlog).await;
}

#[tokio::test]
async fn ten_step_scenario_delivers_every_acknowledged_event() {
    smoke(Scenario::TenSteps).await;
}

#[tokio::test]
async fn backlog_scenario_on_postgres_drains_every_acknowledged_event() {
    let database = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    smoke_on(Scenario::Backlog, Some(Postgres::Given(database))).await;
}

#[tokio::test]
async fn end_to_end_scenario_on_two_nodes_delivers_every_acknowledged_event() {
    let database = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    smoke_with(Scenario::EndToEnd, Some(Postgres::Given(database)), 2).await;
}
