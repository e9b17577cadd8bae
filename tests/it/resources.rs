//! Bounded resources: retention deletes old history (by count and by age, per flow) and the data
//! directory stops growing under steady load; a backlog lives on disk, so memory stays flat while it
//! builds and the queue drains after a restart with workers. (The 1,000,000-event figure is measured
//! in `bench/`; CI uses a smaller count.)

use serde_json::json;
use tokio::task::JoinSet;

use crate::support::{eventually, Server};

/// A flow that finishes at once (one map step).
fn quick_flow(id: &str, extra: &str) -> String {
    format!(
        r#"
id: {id}
trigger: {{ webhook: }}{extra}
steps:
  - id: shape
    map: {{ n: "{{{{trigger.body.n}}}}", padding: "{{{{trigger.body.padding}}}}" }}
"#
    )
}

/// Sends `count` events numbered from `from` over `concurrency` connections; all must be accepted.
async fn send_many(server: &Server, flow: &str, from: u64, count: u64, concurrency: u64) {
    let url = server.catch_url(flow);
    let padding = "x".repeat(1500);
    let mut senders = JoinSet::new();
    for s in 0..concurrency {
        let (url, padding) = (url.clone(), padding.clone());
        senders.spawn(async move {
            let client = reqwest::Client::new();
            let mut n = from + s;
            while n < from + count {
                let r = client
                    .post(&url)
                    .json(&json!({ "n": n, "padding": padding }))
                    .send()
                    .await
                    .expect("the server answers");
                assert_eq!(r.status(), 200);
                n += concurrency;
            }
        });
    }
    for sender in senders.join_all().await {
        sender
    }
}

/// A server started with a configuration file (written before the start).
fn start_configured(flows: &[(&str, &str)], config: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookflow.yaml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start_with(flows, &["--config", path.to_str().unwrap()], &[]);
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_runs_per_flow_and_the_store_stops_growing() {
    let flows = [
        ("churn.yaml", quick_flow("churn", "")),
        (
            "few.yaml",
            quick_flow("few", "\nretention: { max_runs: 3 }"),
        ),
        (
            "brief.yaml",
            quick_flow("brief", "\nretention: { max_age: 1s }"),
        ),
    ];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let (server, _config) = start_configured(&flows, "retention: { max_runs: 50, every: 100ms }\n");

    let mut first_ids = Vec::new();
    for n in 0..6 {
        let (_, ack) = server.send("few", &json!({ "n": n })).await;
        first_ids.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    let (_, brief) = server.send("brief", &json!({ "n": 0 })).await;
    let brief = brief["run_id"].as_str().unwrap().to_owned();
    eventually("the flow's own max_runs to apply", || async {
        let runs = server.all_runs("few").await;
        (runs.len() == 3).then_some(())
    })
    .await;
    for (i, id) in first_ids.iter().enumerate() {
        let (status, run) = server.get(&format!("/api/v1/runs/{id}")).await;
        let kept = i >= 3;
        assert_eq!(status == 200, kept, "run {i}: {run}");
    }
    eventually("a run older than the flow's max_age to go", || async {
        let (status, _) = server.get(&format!("/api/v1/runs/{brief}")).await;
        (status == 404).then_some(())
    })
    .await;

    // Steady load: rounds of events, each pruned back to 50 runs. sled reuses the space of deleted
    // records once whole log segments (8 MiB) are free, so the directory grows for a few rounds,
    // then holds: the later rounds must not go past what the first five reached (plus one segment).
    let mut sizes = Vec::new();
    for round in 0..10 {
        send_many(&server, "churn", round * 400, 400, 8).await;
        eventually("retention to catch up", || async {
            let runs = server.all_runs("churn").await;
            (runs.len() <= 50 && runs.iter().all(|r| r["status"] == "succeeded")).then_some(())
        })
        .await;
        sizes.push(server.data_bytes());
    }
    // One more segment is allowed (sled may open one before it reclaims others); growth by rounds
    // would add one or more per round.
    let segment = 8 << 20;
    let early = sizes[..5].iter().max().unwrap();
    let late = sizes[5..].iter().max().unwrap();
    assert!(
        *late <= early + segment,
        "the data directory kept growing under steady load: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_created_compressed_runs_flows_and_keeps_its_setting() {
    let flows = [("packed.yaml", quick_flow("packed", ""))];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let (mut server, config) = start_configured(&flows, "compression: true\n");
    send_many(&server, "packed", 0, 200, 8).await;
    all_succeed(&server, "packed", 200).await;
    let settings = std::fs::read_to_string(server.data_dir().join("conf")).unwrap();
    assert!(settings.contains("use_compression: true"), "{settings}");

    // Restarted without the setting, the store stays compressed and keeps every run.
    assert!(server.stop_gracefully());
    std::fs::write(config.path().join("hookflow.yaml"), "compression: false\n").unwrap();
    server.restart();
    all_succeed(&server, "packed", 200).await;
    send_many(&server, "packed", 200, 1, 1).await;
    all_succeed(&server, "packed", 201).await;
}

/// Waits until the flow has exactly `count` runs, all succeeded.
async fn all_succeed(server: &Server, flow: &str, count: usize) {
    eventually("every run to succeed", || async {
        let runs = server.all_runs(flow).await;
        (runs.len() == count && runs.iter().all(|r| r["status"] == "succeeded")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_lives_on_disk_memory_stays_flat_and_it_drains() {
    const BACKLOG: u64 = 10_000;
    let flows = [("backlog.yaml", quick_flow("backlog", ""))];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let (mut server, config) = start_configured(&flows, "workers: 0\ncache_mb: 8\n");
    send_many(&server, "backlog", 0, 200, 8).await;
    let idle = server.rss_kib();
    send_many(&server, "backlog", 200, BACKLOG - 200, 16).await;
    let (_, queued) = server
        .get("/api/v1/runs?flow=backlog&status=succeeded&limit=1")
        .await;
    assert!(
        queued["runs"].as_array().unwrap().is_empty(),
        "workers: 0 executes nothing"
    );
    let full = server.rss_kib();
    eprintln!("resident memory: {idle} KiB idle, {full} KiB with {BACKLOG} events queued");
    assert!(
        full < idle + 40 * 1024,
        "memory grew with the backlog: {idle} KiB → {full} KiB"
    );

    assert!(server.stop_gracefully());
    std::fs::write(config.path().join("hookflow.yaml"), "cache_mb: 8\n").unwrap();
    server.restart();
    let runs = eventually("the backlog to drain", || async {
        let runs = server.all_runs("backlog").await;
        runs.iter()
            .all(|r| r["status"] == "succeeded")
            .then_some(runs)
    })
    .await;
    assert_eq!(runs.len() as u64, BACKLOG);
    let drained = server.rss_kib();
    eprintln!("resident memory after draining: {drained} KiB");
    assert!(
        drained < idle + 100 * 1024,
        "memory after draining: {idle} KiB → {drained} KiB"
    );
}

/// The value of a metric without labels, once the store's figures (counted at most once a
/// second) include `at_least`.
async fn metric_reaching(server: &Server, name: &str, at_least: u64) -> u64 {
    eventually(&format!("{name} to reach {at_least}"), || async {
        let metrics = server.metrics().await;
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
            .parse()
            .ok()?;
        (value >= at_least).then_some(value)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_share_their_syncs_to_disk() {
    const EVENTS: u64 = 640;
    let flows = [("quick.yaml", quick_flow("quick", ""))];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let server = Server::start(&flows);
    send_many(&server, "quick", 0, 1, 1).await;
    let before = metric_reaching(&server, "hookflow_ingest_syncs_total", 1).await;
    send_many(&server, "quick", 1, EVENTS, 32).await;
    let syncs = metric_reaching(&server, "hookflow_ingest_syncs_total", before + 1).await - before;
    // Events that arrive while a sync runs (or, after a sync shared by several, within 1 ms of
    // it) share the next one. How many share depends on the rate: at least some do.
    assert!(
        syncs < EVENTS,
        "{syncs} syncs for {EVENTS} events sent by 32 senders at once"
    );
}

/// The `nice` value of each of the process's threads named `name` (from `/proc`).
#[cfg(target_os = "linux")]
fn nice_of_threads(pid: u32, name: &str) -> Vec<i64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut nice = Vec::new();
    for task in tasks {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread has ended
        };
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // `nice` is field 19; the fields after the name (in parentheses) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        nice.push(fields[16].parse().unwrap());
    }
    nice
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_at_a_lower_cpu_priority_than_the_catch_hooks() {
    let flows = [("quick.yaml", quick_flow("quick", ""))];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let server = Server::start(&flows);
    send_many(&server, "quick", 0, 1, 1).await;
    all_succeed(&server, "quick", 1).await;
    let workers = nice_of_threads(server.pid(), "hookflow-worker");
    assert!(!workers.is_empty(), "no worker threads");
    assert!(
        workers.iter().all(|&n| n == 10),
        "workers' nice values: {workers:?}"
    );
    let http = nice_of_threads(server.pid(), "hookflow-server");
    assert!(!http.is_empty(), "no HTTP server threads");
    assert!(
        http.iter().all(|&n| n == 0),
        "HTTP threads' nice values: {http:?}"
    );
}
