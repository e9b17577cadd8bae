//! Several nodes on one PostgreSQL database (a throwaway cluster, `hookflow-testpg`): events
//! sent to any node run once, on any node; a node killed with SIGKILL loses nothing it
//! acknowledged; PostgreSQL going away turns acknowledgments into 503s, never into lost events;
//! a schedule fires once per tick however many nodes run it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{eventually, fired_ticks, numbered_flow, step, Server, Sink, EVERY_SECOND};

/// A configuration file with a short lease, so a dead node's steps are taken over in seconds.
fn short_lease_config() -> tempfile::NamedTempFile {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "lease: 3s\n").unwrap();
    config
}

/// Starts a node named `name` on the database at `url`.
fn node(name: &str, url: &str, config: &tempfile::NamedTempFile, flows: &[(&str, &str)]) -> Server {
    node_with(name, url, config, flows, &[])
}

/// Starts a node with `workers: 0`: it accepts events and executes no queued step.
fn ingest_only_node(
    name: &str,
    url: &str,
    config: &tempfile::NamedTempFile,
    flows: &[(&str, &str)],
) -> Server {
    node_with(name, url, config, flows, &["--workers", "0"])
}

fn node_with(
    name: &str,
    url: &str,
    config: &tempfile::NamedTempFile,
    flows: &[(&str, &str)],
    extra: &[&str],
) -> Server {
    let config = config.path().to_str().unwrap();
    let mut args = vec![
        "--allow-outbound",
        "127.0.0.1",
        "--store",
        url,
        "--node-id",
        name,
        "--config",
        config,
    ];
    args.extend_from_slice(extra);
    Server::start_with(flows, &args, &[])
}

/// Posts numbered events (numbers never reused) to the catch URLs in turn until `stop`; records
/// the run id of each acknowledged number, and each answer's status.
struct Senders {
    acked: Arc<Mutex<HashMap<u64, String>>>,
    statuses: Arc<Mutex<HashMap<u16, usize>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Senders {
    fn start(urls: Vec<String>, count: usize, limit: u64) -> Self {
        let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
        let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..count)
            .map(|i| {
                let (acked, statuses, stop, next) =
                    (acked.clone(), statuses.clone(), stop.clone(), next.clone());
                let url = urls[i % urls.len()].clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= limit {
                            return;
                        }
                        let Ok(r) = client.post(&url).json(&json!({ "n": n })).send().await else {
                            // The node is gone (killed): this sender stops.
                            return;
                        };
                        let status = r.status().as_u16();
                        if status == 503 {
                            assert!(
                                r.headers().contains_key("retry-after"),
                                "503 without Retry-After"
                            );
                            // Be polite, as a provider would.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        *statuses.lock().unwrap().entry(status).or_default() += 1;
                        if status == 200 {
                            let ack: Value = r.json().await.expect("an acknowledgment is JSON");
                            let run = ack["run_id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().insert(n, run);
                        }
                    }
                })
            })
            .collect();
        Self {
            acked,
            statuses,
            stop,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (HashMap<u64, String>, HashMap<u16, usize>) {
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let statuses = self.statuses.lock().unwrap().clone();
        (acked, statuses)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every acknowledged event has one succeeded run (read through `reader`) and reached the sink,
/// any repeat with the same idempotency key; returns the nodes that made the attempts.
async fn every_acknowledged_event_ran_once(
    reader: &Server,
    sink: &Sink,
    acked: &HashMap<u64, String>,
) -> HashSet<String> {
    let mut nodes = HashSet::new();
    for (n, run_id) in acked {
        let run = reader.finished_run(run_id).await;
        assert_eq!(run["status"], "succeeded", "event {n}: {run:#}");
        assert_eq!(run["event"]["trigger"]["body"]["n"], *n);
        let attempts = step(&run, "deliver")["attempts"]
            .as_array()
            .unwrap()
            .clone();
        let succeeded = attempts.iter().filter(|a| a["error"].is_null()).count();
        assert_eq!(
            succeeded, 1,
            "event {n}: one attempt completed the step: {attempts:#?}"
        );
        for attempt in &attempts {
            nodes.insert(
                attempt["node"]
                    .as_str()
                    .expect("attempts name their node")
                    .to_owned(),
            );
        }
    }
    let listed: HashSet<String> = reader
        .all_runs("numbered")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    for run_id in acked.values() {
        assert!(
            listed.contains(run_id),
            "acknowledged run {run_id} is not listed"
        );
    }
    let mut keys: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in sink.received() {
        let n = r.body["n"].as_u64().expect("n is a number");
        let key = r.headers["idempotency-key"].to_str().unwrap().to_owned();
        keys.entry(n).or_default().insert(key);
    }
    for (n, run_id) in acked {
        let seen = keys
            .get(n)
            .unwrap_or_else(|| panic!("acknowledged event {n} never reached the sink"));
        assert_eq!(
            seen,
            &HashSet::from([format!("{run_id}:deliver")]),
            "event {n}"
        );
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_work_and_a_killed_node_loses_nothing_it_acknowledged() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start().await;
    let flow = numbered_flow(&sink, 20, "100ms");
    let config = short_lease_config();
    let flows = [("numbered.yaml", flow.as_str())];
    let a = node("node-a", &url, &config, &flows);
    let mut b = node("node-b", &url, &config, &flows);
    let c = node("node-c", &url, &config, &flows);
    let urls: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| n.catch_url("numbered"))
        .collect();
    assert!(
        urls.iter()
            .all(|u| u.ends_with(urls[0].rsplit('/').next().unwrap())),
        "every node serves the same catch token: {urls:?}"
    );

    // A browser on node c watches live updates while events go to node a only (first).
    let live = reqwest::Client::new()
        .get(format!("{}/api/v1/runs/events?flow=numbered", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let (_, first) = a.send("numbered", &json!({ "n": 1_000_000 })).await;
    let first = first["run_id"].as_str().unwrap().to_owned();
    let mut live = live.bytes_stream();
    let streamed = tokio::time::timeout(crate::support::DEADLINE, async {
        use tokio_stream::StreamExt;
        let mut seen = String::new();
        while let Some(chunk) = live.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&first) && seen.contains("succeeded") {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("node c streams the run node a accepted");
    assert!(streamed.contains("event: run"), "{streamed}");

    let senders = Senders::start(urls, 24, 3_000);
    eventually("a third of the events acknowledged", || async {
        (senders.acked() >= 1_000).then_some(())
    })
    .await;
    // Node b dies mid-load with steps in flight; its senders stop with it.
    b.kill_hard();
    eventually("two thirds acknowledged by the others", || async {
        (senders.acked() >= 1_800).then_some(())
    })
    .await;
    b.restart();
    let (acked, _) = senders.finish().await;
    assert!(acked.len() >= 1_800, "{} acknowledged", acked.len());

    let nodes = every_acknowledged_event_ran_once(&a, &sink, &acked).await;
    assert!(
        nodes.len() >= 2,
        "the work was shared: attempts by {nodes:?}"
    );

    // Every node shows every run, and names itself in /metrics.
    let total = a.all_runs("numbered").await.len();
    assert!(total >= acked.len());
    for (server, name) in [(&b, "node-b"), (&c, "node-c")] {
        assert_eq!(server.all_runs("numbered").await.len(), total);
        let metrics = server.metrics().await;
        assert!(metrics.contains(&format!("node=\"{name}\"")), "{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_postgres_is_down_hooks_answer_503_and_nothing_acknowledged_is_lost() {
    // A cluster of its own: this test stops it.
    let cluster = hookflow_testpg::Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.fresh_database().unwrap();
    let sink = Sink::start().await;
    let flow = numbered_flow(&sink, 20, "100ms");
    let config = short_lease_config();
    let server = node("solo", &url, &config, &[("numbered.yaml", flow.as_str())]);

    let senders = Senders::start(vec![server.catch_url("numbered")], 8, u64::MAX);
    eventually("events acknowledged", || async {
        (senders.acked() >= 200).then_some(())
    })
    .await;
    cluster.stop().unwrap();
    eventually("503s while PostgreSQL is down", || async {
        (senders
            .statuses
            .lock()
            .unwrap()
            .get(&503)
            .copied()
            .unwrap_or(0)
            >= 20)
            .then_some(())
    })
    .await;
    let acked_while_down = senders.acked();
    let (status, answer) = server.get("/readyz").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("unavailable"))
    );
    cluster.start_again().unwrap();
    eventually("acknowledgments again after PostgreSQL is back", || async {
        (senders.acked() >= acked_while_down + 200).then_some(())
    })
    .await;
    assert_eq!(
        server.get("/readyz").await,
        (200, json!({ "status": "ready" }))
    );
    senders.stop();
    let (acked, statuses) = senders.finish().await;
    assert!(
        statuses.keys().all(|s| matches!(s, 200 | 503)),
        "only acknowledgments and 503s: {statuses:?}"
    );
    every_acknowledged_event_ran_once(&server, &sink, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_running_one_schedule_fire_once_per_tick() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = short_lease_config();
    let flows = [("every-second.yaml", EVERY_SECOND)];
    let a = node("sched-a", &url, &config, &flows);
    let _b = node("sched-b", &url, &config, &flows);
    eventually("five fires", || async {
        (a.all_runs("every-second").await.len() >= 5).then_some(())
    })
    .await;
    fired_ticks(&a, "every-second").await;
}

#[tokio::test]
async fn migrate_shows_and_applies_the_schema_and_a_node_refuses_a_newer_one() {
    let cluster = hookflow_testpg::shared();
    let url = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
    // The store named in a configuration file, as `serve` reads it too.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(&config, format!("store: {url}\n")).unwrap();
    let config = config.to_str().unwrap();
    let migrate = |args: &[&str]| {
        let out = crate::support::run_cli(
            &[&["migrate", "--config", config], args].concat(),
            dir.path(),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (ok, text) = migrate(&["--dry-run"]);
    assert!(ok, "{text}");
    assert!(text.contains("schema version 0"), "{text}");
    assert!(text.contains("would apply 1: initial tables"), "{text}");
    assert!(
        text.contains("would apply 2: storage between runs"),
        "{text}"
    );
    assert!(
        text.contains("would apply 3: audit record and hook logs"),
        "{text}"
    );
    assert!(
        text.contains("would apply 4: claims by flow only"),
        "{text}"
    );
    assert!(
        text.contains("would apply 5: lz4 compression where the server has it"),
        "{text}"
    );
    let (ok, text) = migrate(&["--dry-run"]);
    assert!(
        ok && text.contains("schema version 0"),
        "a dry run changes nothing: {text}"
    );
    let (ok, text) = migrate(&[]);
    assert!(ok && text.contains("applied 5 migration(s)"), "{text}");
    let (ok, text) = migrate(&[]);
    assert!(ok && text.contains("nothing to apply"), "{text}");

    // A newer hookflow migrated the database: this one refuses to start on it.
    let newer = cluster
        .psql(&url)
        .args(["-c", "INSERT INTO hookflow.schema_migrations (version, name) VALUES (999, 'from the future')"])
        .output()
        .unwrap();
    assert!(newer.status.success(), "{newer:?}");
    let (ok, text) = migrate(&["--dry-run"]);
    assert!(
        !ok && text.contains("newer than this hookflow knows"),
        "{text}"
    );
    let serve = crate::support::hookflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config])
        .arg("--flows")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "serve started on a newer schema");
    assert!(stderr.contains("schema is at version 999"), "{stderr}");
}

/// The stored logs are shared: a delivery node `a` refused shows in node `b`'s hook log, and what
/// a person did on `a` in `b`'s audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_sees_every_nodes_hook_log_and_audit_record() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = short_lease_config();
    let signed = "id: signed\ntrigger:\n  webhook:\n    verify: { provider: github, secret: s3cret }\nsteps:\n  - { id: shape, map: { x: 1 } }\n";
    let flows = [("signed.yaml", signed)];
    let a = node("node-a", &url, &config, &flows);
    let b = node("node-b", &url, &config, &flows);
    let (status, _) = a.send("signed", &json!({ "id": 1 })).await;
    assert_eq!(status, 401);
    let (status, _) = a
        .post("/api/v1/flows/signed/runs", &json!({ "body": {} }))
        .await;
    assert_eq!(status, 201);
    eventually("node b to list node a's refused delivery", || async {
        let (_, log) = b.get("/api/v1/flows/signed/hooks").await;
        (log["requests"][0]["reason"] == "invalid_signature").then_some(())
    })
    .await;
    eventually("node b to list node a's manual run", || async {
        let (_, audit) = b.get("/api/v1/audit?action=trigger").await;
        (audit["entries"][0]["flow"] == "signed").then_some(())
    })
    .await;
}

/// A store that refuses log entries (here: their table is gone) fails no action: the manual run
/// and the replay are answered as usual, and the lost entries are logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_audit_write_never_fails_the_action() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = short_lease_config();
    let flow = "id: leads\ntrigger: { manual: }\nsteps:\n  - { id: shape, map: { x: 1 } }\n";
    let a = node("node-a", &url, &config, &[("leads.yaml", flow)]);
    let dropped = hookflow_testpg::shared()
        .psql(&url)
        .args(["-c", "DROP TABLE hookflow.logs"])
        .output()
        .unwrap();
    assert!(dropped.status.success(), "{dropped:?}");

    let (status, started) = a
        .post("/api/v1/flows/leads/runs", &json!({ "body": {} }))
        .await;
    assert_eq!(status, 201, "{started}");
    let run_id = started["run_id"].as_str().unwrap();
    assert_eq!(a.finished_run(run_id).await["status"], "succeeded");
    let (status, replayed) = a
        .post(&format!("/api/v1/runs/{run_id}/replay"), &json!({}))
        .await;
    assert_eq!(status, 201, "{replayed}");
    eventually("the lost audit entries to be counted", || async {
        let metrics = a.metrics().await;
        metrics
            .contains("hookflow_log_entries_total{outcome=\"failed\"} 2")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_executes_the_revision_its_event_arrived_under_on_a_node_that_lacks_it() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = short_lease_config();
    // The first step (pure) runs at ingest, on the node that took the event; `shape` after it.
    let revision = |v: &str| {
        format!("id: versioned\ntrigger: {{ webhook: }}\nsteps:\n  - {{ id: first, map: {{}} }}\n  - {{ id: shape, map: {{ version: {v} }} }}\n")
    };
    let (old, new) = (revision("old"), revision("new"));
    // The ingest-only node still has the old file; the only node that executes has the new one.
    let ingest = ingest_only_node("ingest", &url, &config, &[("versioned.yaml", old.as_str())]);
    let worker = node("worker", &url, &config, &[("versioned.yaml", new.as_str())]);

    let (_, via_old) = ingest.send("versioned", &json!({})).await;
    let (_, via_new) = worker.send("versioned", &json!({})).await;
    for (ack, expected) in [(via_old, "old"), (via_new, "new")] {
        let run = worker.finished_run(ack["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(
            step(&run, "shape")["output"]["version"],
            expected,
            "{run:#}"
        );
        let attempt = &step(&run, "shape")["attempts"][0];
        assert_eq!(attempt["node"], "worker", "only the worker executes");
    }
}

/// A run's pure first step runs at ingest, on the node that took the event, even an ingest-only
/// one: a run its filter drops is final when the event is acknowledged, and one it lets through
/// waits with its next step queued for a node with workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pure_first_step_runs_at_ingest_even_on_an_ingest_only_node() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = short_lease_config();
    let flow = "id: screened\ntrigger: { webhook: }\nsteps:\n  - id: big_enough\n    filter:\n      all:\n        - { value: \"{{trigger.body.employees}}\", gte: 50 }\n  - { id: shape, map: { employees: \"{{trigger.body.employees}}\" } }\n";
    let flows = [("screened.yaml", flow)];
    let door = ingest_only_node("door", &url, &config, &flows);
    let run = |ack: &Value| format!("/api/v1/runs/{}", ack["run_id"].as_str().unwrap());

    let (status, small) = door.send("screened", &json!({ "employees": 10 })).await;
    assert_eq!(status, 200, "{small}");
    let (_, dropped) = door.get(&run(&small)).await;
    assert_eq!(
        dropped["status"], "filtered",
        "final when acknowledged: {dropped:#}"
    );
    let filter = step(&dropped, "big_enough");
    assert_eq!(filter["status"], "filtered", "{dropped:#}");
    assert_eq!(filter["attempts"][0]["node"], "door", "{dropped:#}");
    assert_eq!(step(&dropped, "shape")["status"], "skipped", "{dropped:#}");

    let (_, big) = door.send("screened", &json!({ "employees": 100 })).await;
    let (_, waiting) = door.get(&run(&big)).await;
    assert_eq!(waiting["status"], "running", "{waiting:#}");
    assert_eq!(
        step(&waiting, "big_enough")["status"],
        "succeeded",
        "{waiting:#}"
    );
    assert_eq!(step(&waiting, "shape")["status"], "queued", "{waiting:#}");

    let worker = node("worker", &url, &config, &flows);
    let done = worker.finished_run(big["run_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        step(&done, "big_enough")["attempts"][0]["node"],
        "door",
        "{done:#}"
    );
    assert_eq!(
        step(&done, "shape")["attempts"][0]["node"],
        "worker",
        "{done:#}"
    );
    assert_eq!(step(&done, "shape")["output"]["employees"], 100, "{done:#}");
    let metrics = door.metrics().await;
    assert!(
        metrics.contains("hookflow_runs_total{flow=\"screened\",status=\"filtered\"} 1"),
        "{metrics}"
    );
}
