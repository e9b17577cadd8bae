//! The scenarios: each starts a real `hookflow serve` on 127.0.0.1 with its own flow and data
//! directory, sends numbered events with the load generator, waits until every acknowledged event
//! has a finished run, checks that nothing was lost, and measures.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::load::{self, LoadReport};
use crate::server::{disk_bytes, finished, wait_finished, Server};
use crate::sink::Sink;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// (a) Ingest only: the flow's first step is a filter that drops every event.
    Ingest,
    /// (a) with a dedupe key (the event's `id`), as a flow of signed provider webhooks has:
    /// each acknowledgment also checks that the event was not delivered before.
    IngestDedupe,
    /// (b) End to end: filter, map and an HTTP POST to the sink.
    EndToEnd,
    /// (c) Backlog: a map and an HTTP POST to the sink; events queued while the server executes
    /// nothing, then drained after a restart with workers.
    Backlog,
    /// (d) A flow of 10 steps: a filter, eight maps and an HTTP POST to the sink.
    TenSteps,
}

/// How to run a scenario.
#[derive(Debug)]
pub struct Options {
    /// The `hookflow` binary.
    pub hookflow: PathBuf,
    /// Events to send.
    pub count: u64,
    /// Concurrent connections of the load generator.
    pub concurrency: u64,
    /// The server's workers.
    pub workers: usize,
    /// Whether the server's store is compressed.
    pub compression: bool,
    /// The store: sled when `None`.
    pub postgres: Option<Postgres>,
    /// Nodes sharing the PostgreSQL store (the load is spread over their catch URLs).
    pub nodes: usize,
    /// Events per second the load generator keeps to (as fast as answered when `None`).
    pub rate: Option<f64>,
}

/// Where the PostgreSQL store of each scenario is.
#[derive(Debug)]
pub enum Postgres {
    /// A throwaway cluster the benchmark started: a fresh database for each scenario.
    Throwaway(hookflow_testpg::Cluster),
    /// A database given by URL, used as it is (give an empty one for each run of one scenario).
    Given(String),
}

impl Postgres {
    /// The database for the next scenario.
    fn database(&self) -> anyhow::Result<String> {
        Ok(match self {
            Self::Throwaway(cluster) => cluster.fresh_database()?,
            Self::Given(url) => url.clone(),
        })
    }
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// The load generator's view.
    pub load: LoadReport,
    /// Runs finished.
    pub completed: u64,
    /// From the first event sent (or, for the backlog, the restart) to the last run finished.
    pub completion: Duration,
    /// Peak resident memory of the server, in KiB (the larger of both processes for the backlog).
    pub rss_peak_kib: u64,
    /// The data directory's size at the end, in bytes.
    pub store_bytes: u64,
    /// CPU time the server used, in milliseconds.
    pub cpu_ms: u64,
    /// Scenario-specific figures (memory along the backlog's life).
    pub notes: String,
}

const FLOW_ID: &str = "bench";

/// The flow file of a scenario, posting to `sink`.
fn flow(scenario: Scenario, sink: &str) -> String {
    let head = format!("id: {FLOW_ID}\ntrigger: {{ webhook: }}\nsteps:\n");
    let keep = "  - id: subscriptions_only\n    filter:\n      all:\n        - { value: \"{{trigger.body.type}}\", starts_with: \"customer.subscription.\" }\n";
    let shape = "  - id: shape\n    map:\n      id: \"{{trigger.body.id}}\"\n      email: \"{{lower trigger.body.data.object.customer_email}}\"\n      plan: \"{{trigger.body.data.object.items.data.0.price.nickname}}\"\n      seats: \"{{trigger.body.data.object.items.data.0.quantity}}\"\n";
    let drop_all = "  - id: deletions_only\n    filter:\n      all:\n        - { value: \"{{trigger.body.type}}\", equals: \"customer.deleted\" }\n";
    let deliver = |from: &str| {
        format!("  - id: deliver\n    http:\n      url: \"{sink}\"\n      json: \"{{{{steps.{from}}}}}\"\n")
    };
    match scenario {
        Scenario::Ingest => format!("{head}{drop_all}"),
        Scenario::IngestDedupe => format!(
            "id: {FLOW_ID}\ntrigger:\n  webhook:\n    dedupe: \"{{{{trigger.body.id}}}}\"\nsteps:\n{drop_all}"
        ),
        Scenario::EndToEnd => format!("{head}{keep}{shape}{}", deliver("shape")),
        // A step with effects after the map: a node runs a pure first step at ingest (on
        // PostgreSQL), so a map alone would leave nothing queued.
        Scenario::Backlog => format!("{head}{shape}{}", deliver("shape")),
        Scenario::TenSteps => {
            let mut steps = format!("{head}{keep}{shape}");
            let mut previous = "shape".to_owned();
            for i in 1..=7 {
                let id = format!("enrich_{i}");
                let _ = write!(
                    steps,
                    "  - id: {id}\n    map:\n      id: \"{{{{steps.{previous}.id}}}}\"\n      email: \"{{{{steps.{previous}.email}}}}\"\n      plan: \"{{{{upper steps.{previous}.plan}}}}\"\n      seats: \"{{{{steps.{previous}.seats}}}}\"\n      stage: {i}\n"
                );
                previous = id;
            }
            steps + &deliver(&previous)
        }
    }
}

/// Runs a scenario and checks its outcome: every event acknowledged, every acknowledged event
/// with a finished run, and (where the flow posts to the sink) delivered, with one idempotency key.
pub async fn run(scenario: Scenario, options: &Options) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let sink = Sink::start().await?;
    std::fs::create_dir(dir.path().join("flows"))?;
    std::fs::write(
        dir.path().join("flows/bench.yaml"),
        flow(scenario, &sink.url),
    )?;
    let stall = Duration::from_secs(60);
    let workers = if scenario == Scenario::Backlog {
        0
    } else {
        options.workers
    };
    // Every run is kept, so the store's size per run can be measured; but the backlog keeps the
    // default retention, as a server would that drains a million runs.
    let mut config = String::new();
    if scenario != Scenario::Backlog {
        config.push_str("retention: { max_runs: 100000000, max_age: 3650d }\n");
    }
    if options.compression {
        config.push_str("compression: true\n");
    }
    let database = options
        .postgres
        .as_ref()
        .map(Postgres::database)
        .transpose()?;
    let store = database.as_deref();
    ensure!(
        options.nodes <= 1 || (store.is_some() && scenario != Scenario::Backlog),
        "several nodes need the PostgreSQL store, and the backlog scenario runs one"
    );
    let server = Server::start(
        &options.hookflow,
        dir.path(),
        FLOW_ID,
        workers,
        &config,
        store,
    )?;
    // The other nodes: each with a directory of its own holding the same flow.
    let mut others = Vec::new();
    for n in 1..options.nodes {
        let own = dir.path().join(format!("node-{n}"));
        std::fs::create_dir_all(own.join("flows"))?;
        std::fs::copy(
            dir.path().join("flows/bench.yaml"),
            own.join("flows/bench.yaml"),
        )?;
        others.push(Server::start(
            &options.hookflow,
            &own,
            FLOW_ID,
            workers,
            &config,
            store,
        )?);
    }
    let idle_kib = server.rss_kib()?;
    let mut cpu_before = server.cpu_ms()?;
    for node in &others {
        cpu_before += node.cpu_ms()?;
    }
    let started = Instant::now();
    let urls: Vec<&str> = std::iter::once(&server)
        .chain(&others)
        .map(|s| s.catch_url.as_str())
        .collect();
    let load =
        load::send_to_all(&urls, 0, options.count, options.concurrency, options.rate).await?;
    ensure!(
        load.failed == 0,
        "{} of {} events were not acknowledged",
        load.failed,
        options.count
    );
    let acked = load.acked.len() as u64;
    if scenario == Scenario::IngestDedupe {
        // Repeated deliveries of the first events: acknowledged, and no run starts for them (the
        // count of finished runs is checked against `acked` below).
        let repeats = options.count.min(1_000);
        let again = load::send(&server.catch_url, 0, repeats, options.concurrency).await?;
        ensure!(
            again.failed == 0,
            "{} of {repeats} repeated deliveries were not acknowledged",
            again.failed
        );
    }
    let mut notes = String::new();
    let (server, started, mut rss_peak_kib, mut cpu_ms) = if scenario == Scenario::Backlog {
        let queued_kib = server.rss_kib()?;
        let peak = server.rss_peak_kib()?;
        let cpu = server.cpu_ms()? - cpu_before;
        server.stop()?;
        let drainer = Server::start(
            &options.hookflow,
            dir.path(),
            FLOW_ID,
            options.workers,
            &config,
            store,
        )?;
        let _ = write!(
            notes,
            "RSS idle {} MB, with {acked} queued {} MB; ",
            idle_kib / 1024,
            queued_kib / 1024
        );
        (drainer, Instant::now(), peak, cpu)
    } else {
        (server, started, 0, 0)
    };
    let cpu_start = if scenario == Scenario::Backlog {
        server.cpu_ms()?
    } else {
        cpu_before
    };
    let nodes: Vec<&Server> = std::iter::once(&server).chain(&others).collect();
    let finished_at = wait_finished(&nodes, FLOW_ID, acked, stall).await?;
    let (succeeded, filtered, failed) = finished(&nodes, FLOW_ID).await?;
    ensure!(failed == 0, "{failed} runs failed");
    let expected = if matches!(scenario, Scenario::Ingest | Scenario::IngestDedupe) {
        filtered
    } else {
        succeeded
    };
    ensure!(
        expected == acked,
        "{acked} events acknowledged but {succeeded} runs succeeded and {filtered} were filtered"
    );
    if matches!(
        scenario,
        Scenario::EndToEnd | Scenario::TenSteps | Scenario::Backlog
    ) {
        let (missing, mixed) = sink.check(&load.acked);
        ensure!(
            missing.is_empty(),
            "{} acknowledged events never reached the sink (e.g. {:?})",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        ensure!(
            mixed.is_empty(),
            "events delivered with different idempotency keys: {mixed:?}"
        );
    }
    for node in &nodes {
        rss_peak_kib = rss_peak_kib.max(node.rss_peak_kib()?);
        cpu_ms += node.cpu_ms()?;
    }
    cpu_ms -= cpu_start;
    if scenario == Scenario::Backlog {
        let _ = write!(notes, "after draining {} MB", server.rss_kib()? / 1024);
    }
    // sled's directory as `du` counts it; PostgreSQL's database as it reports its size.
    let store_bytes = match store {
        None => disk_bytes(&dir.path().join("data")),
        Some(_) => server.metric("hookflow_store_bytes").await?,
    };
    drop(nodes);
    server.stop()?;
    for node in others {
        node.stop()?;
    }
    Ok(Report {
        scenario,
        completed: acked,
        completion: finished_at - started,
        load,
        rss_peak_kib,
        store_bytes,
        cpu_ms,
        notes,
    })
}

impl Report {
    /// Completed runs per second.
    pub fn completed_per_sec(&self) -> f64 {
        self.completed as f64 / self.completion.as_secs_f64()
    }

    /// A row of `bench/RESULTS.md`'s table (the date, commit and machine are added by the caller).
    pub fn row(&self) -> String {
        let per_thousand = |x: u64| x as f64 * 1000.0 / self.completed.max(1) as f64;
        format!(
            "{:?} | {} | {:.0} | {:.0} | {:.2} / {:.2} / {:.2} | {} | {:.0} | {:.0} | {}",
            self.scenario,
            self.completed,
            self.load.acked_per_sec(),
            self.completed_per_sec(),
            self.load.latency_ms(0.5),
            self.load.latency_ms(0.99),
            self.load.latency_ms(0.999),
            self.rss_peak_kib / 1024,
            per_thousand(self.store_bytes) / 1024.0,
            per_thousand(self.cpu_ms),
            self.notes,
        )
    }
}
