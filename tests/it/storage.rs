//! Storage between runs end to end: a webhook flow counting events per customer with `storage`
//! increments, under concurrent deliveries, read back and changed through the API and the CLI;
//! the same count on two nodes sharing PostgreSQL; and the step offline (`hookflow run
//! --dry-run`, `hookflow test`, the preview).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{eventually, run_cli, step, Server};

/// Counts each customer's events in the flow's own namespace and logs their numbers in a shared
/// one.
const COUNTER: &str = r#"
id: counter
trigger: { webhook: }
steps:
  - id: count
    storage:
      action: increment
      key: "events:{{trigger.body.customer}}"
  - id: log
    storage:
      action: append
      namespace: shared-log
      key: "{{trigger.body.customer}}"
      value: "{{trigger.body.n}}"
"#;

/// Sends `n` events at once, numbered from 0, to `servers` in turn: odd numbers are for `beta`,
/// even ones for `acme`. Returns the run ids.
async fn deliver_at_once(servers: &[&Server], n: u64) -> Vec<String> {
    let client = reqwest::Client::new();
    let sends = (0..n).map(|i| {
        let url = servers[i as usize % servers.len()].catch_url("counter");
        let customer = if i % 2 == 0 { "acme" } else { "beta" };
        let request = client
            .post(url)
            .json(&json!({ "customer": customer, "n": i }));
        async move {
            let answer = request.send().await.expect("the server answers");
            assert_eq!(answer.status(), 200);
            let body: Value = answer.json().await.unwrap();
            body["run_id"].as_str().unwrap().to_owned()
        }
    });
    all_at_once(sends).await
}

/// Awaits every future at once.
async fn all_at_once<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Waits for every run to succeed; returns each run's `count` output value, by customer.
async fn counted(server: &Server, runs: &[String]) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let (mut acme, mut beta) = (BTreeSet::new(), BTreeSet::new());
    for run in runs {
        let run = server.finished_run(run).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let output = &step(&run, "count")["output"];
        let value = output["value"].as_i64().unwrap();
        match output["key"].as_str() {
            Some("events:acme") => acme.insert(value),
            Some("events:beta") => beta.insert(value),
            other => panic!("unexpected key {other:?}"),
        };
    }
    (acme, beta)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_count_exactly_and_the_api_and_cli_read_and_change_storage() {
    let server = Server::start(&[("counter.yaml", COUNTER)]);
    let runs = deliver_at_once(&[&server], 50).await;
    let (acme, beta) = counted(&server, &runs).await;
    // Every increment saw a different count: none was lost or applied twice.
    assert_eq!(acme, (1..=25).collect());
    assert_eq!(beta, (1..=25).collect());

    // The API: namespaces, one namespace's entries, one key.
    let (status, list) = server.get("/api/v1/storage").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["namespaces"],
        json!([{ "namespace": "counter", "keys": 2 }, { "namespace": "shared-log", "keys": 2 }])
    );
    let (status, page) = server.get("/api/v1/storage/counter?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["entries"][0]["key"], "events:acme");
    assert_eq!(page["next_cursor"], "events:acme");
    let (_, rest) = server
        .get("/api/v1/storage/counter?limit=1&after=events:acme")
        .await;
    assert_eq!(rest["entries"][0]["key"], "events:beta");
    let (status, acme_count) = server.get("/api/v1/storage/counter/events:acme").await;
    assert_eq!(status, 200, "{acme_count}");
    assert_eq!(acme_count["value"], 25);
    let (_, log) = server.get("/api/v1/storage/shared-log/beta").await;
    let mut numbers: Vec<i64> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..50).filter(|n| n % 2 == 1).collect::<Vec<_>>());

    // The CLI reads the same count, and changes storage through the API.
    let out = server.cli(&["storage", "get", "counter", "events:acme"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25");
    let out = server.cli(&["storage", "list"]);
    let text = stdout(&out);
    assert!(
        text.contains("counter") && text.contains("2 key(s)"),
        "{text}"
    );
    let out = server.cli(&["storage", "list", "counter"]);
    assert!(stdout(&out).contains("events:beta  25"), "{}", stdout(&out));
    let out = server.cli(&[
        "storage",
        "set",
        "shared-log",
        "note: a/b",
        r#"{"ok":true}"#,
        "--expires-in",
        "1h",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let (status, note) = server.get("/api/v1/storage/shared-log/note:%20a%2Fb").await;
    assert_eq!(status, 200, "{note}");
    assert_eq!(note["value"], json!({ "ok": true }));
    assert!(note["expires_at"].is_string(), "{note}");
    let out = server.cli(&["storage", "delete", "counter", "events:acme"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = server.cli(&["storage", "get", "counter", "events:acme"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("holds no key"), "{}", stdout(&out));

    // The next event counts from what the API left: the key was deleted, so it starts at 1.
    let client = reqwest::Client::new();
    let put = client
        .put(format!(
            "{}/api/v1/storage/counter/events:beta",
            server.base
        ))
        .json(&json!({ "value": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (_, sent) = server
        .send("counter", &json!({ "customer": "beta", "n": 99 }))
        .await;
    let run = server.finished_run(sent["run_id"].as_str().unwrap()).await;
    assert_eq!(step(&run, "count")["output"]["value"], 101);
    assert_eq!(step(&run, "count")["output"]["existed"], true);

    // Bad requests are refused with `{code, detail}`.
    let put = |path: &str, body: Value| {
        client
            .put(format!("{}{path}", server.base))
            .json(&body)
            .send()
    };
    let bad = put("/api/v1/storage/no%20space/k", json!({ "value": 1 }))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["code"],
        "invalid_namespace"
    );
    let big = put(
        "/api/v1/storage/counter/big",
        json!({ "value": "x".repeat(70_000) }),
    )
    .await
    .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(
        big.json::<Value>().await.unwrap()["code"],
        "value_too_large"
    );
    let (status, missing) = server.get("/api/v1/storage/counter/nothing-here").await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));

    let metrics = server.metrics().await;
    for counted in [
        r#"hookflow_storage_operations_total{action="increment",outcome="applied"} 51"#,
        r#"hookflow_storage_operations_total{action="append",outcome="applied"} 51"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in\n{metrics}");
    }
}

/// A flow that fails one of its `storage` steps: incrementing text.
const MISUSED: &str = r#"
id: misused
trigger: { manual: }
steps:
  - id: name
    storage: { action: set, key: name, value: "{{trigger.body.name}}" }
  - id: bump
    storage: { action: increment, key: name }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_storage_action_fails_the_step_without_retries() {
    let server = Server::start(&[("misused.yaml", MISUSED)]);
    let (status, started) = server
        .post(
            "/api/v1/flows/misused/runs",
            &json!({ "body": { "name": "Ada" } }),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let run = server
        .finished_run(started["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "failed");
    let bump = step(&run, "bump");
    let error = bump["error"]["message"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot increment `name`: it holds text"),
        "{bump}"
    );
    assert_eq!(bump["attempts"].as_array().map(Vec::len), Some(1), "{bump}");
    assert!(server
        .metrics()
        .await
        .contains(r#"hookflow_storage_operations_total{action="increment",outcome="refused"} 1"#));
    let (_, kept) = server.get("/api/v1/storage/misused/name").await;
    assert_eq!(
        kept["value"], "Ada",
        "the refused increment changed nothing"
    );
}

/// Sets, reads and increments within one run.
const OFFLINE: &str = r#"id: tally
trigger: { manual: }
steps:
  - id: seed
    storage: { action: set, key: total, value: "{{trigger.body.start}}" }
  - id: bump
    storage: { action: increment, key: total, by: "{{trigger.body.by}}" }
  - id: read
    storage: { action: get, key: total }
  - id: other
    storage: { action: get, key: missing, default: none }
"#;

const OFFLINE_TESTS: &str = r#"cases:
  - name: the total is kept between steps
    event: { body: { start: 40, by: 2 } }
    expect:
      steps:
        read: { output_contains: { value: 42, existed: true } }
        other: { output: { namespace: tally, key: missing, value: none, existed: false, expires_at: null } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_works_offline_in_run_test_and_preview() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("flows")).unwrap();
    std::fs::write(dir.path().join("flows/tally.yaml"), OFFLINE).unwrap();
    std::fs::write(dir.path().join("flows/tally.test.yaml"), OFFLINE_TESTS).unwrap();
    std::fs::write(dir.path().join("event.json"), r#"{"start": 40, "by": 2}"#).unwrap();

    for dry_run in [true, false] {
        let mut args = vec!["run", "flows/tally.yaml", "--event", "event.json"];
        if dry_run {
            args.push("--dry-run");
        }
        let out = run_cli(&args, dir.path());
        let text = stdout(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("\"value\": 42"), "dry run {dry_run}: {text}");
    }
    let out = run_cli(&["test", "flows"], dir.path());
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("1 case(s) passed"),
        "{}",
        stdout(&out)
    );

    // The preview runs on scratch storage: the server's values are neither read nor changed.
    let server = Server::start(&[("tally.yaml", OFFLINE)]);
    let (status, preview) = server
        .post(
            "/api/v1/flows/tally/preview",
            &json!({ "event": { "body": { "start": 1, "by": 1 } } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let read = preview["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "read")
        .cloned()
        .unwrap_or_default();
    assert_eq!(read["output"]["value"], 2, "{preview}");
    let (_, namespaces) = server.get("/api/v1/storage").await;
    assert_eq!(namespaces["namespaces"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_postgres_count_concurrent_deliveries_exactly() {
    let url = hookflow_testpg::shared()
        .fresh_database()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = |name: &str| {
        Server::start_with(
            &[("counter.yaml", COUNTER)],
            &["--store", &url, "--node-id", name],
            &[],
        )
    };
    let (a, b) = (start("node-a"), start("node-b"));
    let runs = deliver_at_once(&[&a, &b], 50).await;
    let (acme, beta) = counted(&a, &runs).await;
    assert_eq!(acme, (1..=25).collect());
    assert_eq!(beta, (1..=25).collect());
    let total = eventually("both nodes to see the counts", || async {
        let (_, count) = b.get("/api/v1/storage/counter/events:beta").await;
        count["value"].as_i64()
    })
    .await;
    assert_eq!(total, 25);
    let out = a.cli(&["storage", "get", "counter", "events:acme"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "25");
}
