//! Delivery guarantees through the real server: a step in flight at a crash runs again with the same
//! idempotency key (and only that step), a target outage loses nothing, `Retry-After` and step
//! timeouts are honoured, failed runs are retried and replayed (one or many, on a chosen revision),
//! repeated deliveries are deduplicated across restarts, and SIGTERM drains what is in flight.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::support::{eventually, unused_port, Server, Sink, SinkOptions};

/// A flow posting `{n}` to `url`, with a fast fixed retry schedule.
fn deliver_flow(id: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
id: {id}
trigger:
  webhook:{extra}
steps:
  - id: deliver
    http: {{ url: "{url}", json: {{ n: "{{{{trigger.body.n}}}}" }} }}
    retry: {{ attempts: 200, backoff: fixed, initial: 100ms, jitter: false }}
"#
    )
}

fn attempts(run: &Value, step: &str) -> Vec<Value> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {run:#}"))["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

fn idempotency_keys(sink: &Sink) -> Vec<String> {
    sink.received()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_step_in_flight_at_a_sigkill_runs_again_with_its_key_and_request_and_earlier_steps_do_not(
) {
    let first = Sink::start().await;
    let second = Sink::held().await;
    let flow = format!(
        r#"
id: two-calls
trigger: {{ webhook: }}
steps:
  - id: first
    http: {{ url: "{}/first", json: {{ n: 1 }} }}
  - id: second
    http: {{ url: "{}/second", json: {{ n: 2, request_id: "{{{{uuid}}}}" }} }}
"#,
        first.url, second.url
    );
    let mut server = Server::start(&[("two-calls.yaml", &flow)]);
    let (status, ack) = server.send("two-calls", &json!({})).await;
    assert_eq!(status, 200);
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    eventually("the second call to be in flight", || async {
        (second.received().len() == 1).then_some(())
    })
    .await;

    server.kill_hard();
    second.release();
    server.restart();
    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        first.received().len(),
        1,
        "the finished step did not run again"
    );
    assert_eq!(
        idempotency_keys(&second),
        [format!("{run_id}:second"), format!("{run_id}:second")],
        "the step in flight ran again, with the same key"
    );
    let sent: Vec<Value> = second
        .received()
        .iter()
        .map(|r| r.body["request_id"].clone())
        .collect();
    assert!(
        sent[0].is_string() && sent[0] == sent[1],
        "the same request was sent again, not one rendered anew: {sent:?}"
    );
}

#[tokio::test]
async fn steps_before_a_slow_call_are_shown_while_it_is_in_flight_and_kept_after_a_stop() {
    let slow = Sink::held().await;
    let flow = format!(
        r#"
id: slow-call
trigger: {{ webhook: }}
steps:
  - id: keep
    filter: {{ all: [ {{ value: "{{{{trigger.body.plan}}}}", equals: "pro" }} ] }}
  - id: shape
    map: {{ plan: "{{{{upper trigger.body.plan}}}}" }}
  - id: call
    http: {{ url: "{}/slow", json: "{{{{steps.shape}}}}" }}
"#,
        slow.url
    );
    let mut server = Server::start(&[("slow-call.yaml", &flow)]);
    let (status, ack) = server.send("slow-call", &json!({ "plan": "pro" })).await;
    assert_eq!(status, 200);
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    eventually("the call to be in flight", || async {
        (slow.received().len() == 1).then_some(())
    })
    .await;
    let run = eventually("the steps before the call to be recorded", || async {
        let (_, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
        (attempts(&run, "shape").len() == 1).then_some(run)
    })
    .await;
    assert_eq!(run["status"], "running", "{run:#}");
    assert_eq!(attempts(&run, "keep").len(), 1, "{run:#}");
    assert!(attempts(&run, "call").is_empty(), "{run:#}");

    // Stopped while the call hangs (past the drain, so what was committed is flushed), the server
    // runs the call again at the next start, with its key; the steps before it stay as recorded.
    assert!(server.stop_gracefully());
    slow.release();
    server.restart();
    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    for step in ["keep", "shape", "call"] {
        assert_eq!(attempts(&run, step).len(), 1, "{step}: {run:#}");
    }
    assert_eq!(idempotency_keys(&slow), vec![format!("{run_id}:call"); 2]);
    assert_eq!(slow.received()[1].body, json!({ "plan": "PRO" }));
}

#[tokio::test]
async fn a_target_outage_loses_nothing_and_records_every_attempt() {
    let port = unused_port();
    let url = format!("http://127.0.0.1:{port}/crm");
    let server = Server::start(&[("outage.yaml", &deliver_flow("outage", &url, ""))]);
    let mut run_ids = Vec::new();
    for n in 0..20 {
        let (status, ack) = server.send("outage", &json!({ "n": n })).await;
        assert_eq!(status, 200);
        run_ids.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    // Wait until every run has failed at least twice against the closed port.
    for id in &run_ids {
        eventually("failed attempts while the target is down", || async {
            let (_, run) = server.get(&format!("/api/v1/runs/{id}")).await;
            (attempts(&run, "deliver").len() >= 2).then_some(())
        })
        .await;
    }

    let sink = Sink::with(SinkOptions {
        port: Some(port),
        ..SinkOptions::default()
    })
    .await;
    for id in &run_ids {
        let run = server.finished_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let attempts = attempts(&run, "deliver");
        let (last, failed) = attempts.split_last().unwrap();
        assert!(last["error"].is_null());
        assert!(failed.len() >= 2);
        for a in failed {
            let error = a["error"].as_str().unwrap();
            assert!(error.contains("could not connect to the target"), "{error}");
            assert!(!a["retry_at"].is_null());
        }
    }
    let delivered: HashSet<u64> = sink
        .received()
        .iter()
        .map(|r| r.body["n"].as_u64().unwrap())
        .collect();
    assert_eq!(delivered, (0..20).collect());
}

#[tokio::test]
async fn retry_after_sets_the_earliest_next_attempt() {
    let sink = Sink::with(SinkOptions {
        statuses: &[429],
        retry_after: Some("2"),
        ..SinkOptions::default()
    })
    .await;
    let url = format!("{}/limited", sink.url);
    let server = Server::start(&[("limited.yaml", &deliver_flow("limited", &url, ""))]);
    let (_, ack) = server.send("limited", &json!({ "n": 1 })).await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded");
    let attempts = attempts(&run, "deliver");
    let millis = |v: &Value| {
        let t = time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    };
    let waited = millis(&attempts[1]["started_at"]) - millis(&attempts[0]["started_at"]);
    assert!(
        waited >= 2000,
        "the retry came {waited} ms after a 429 with Retry-After: 2 (the flow's own delay is 100 ms)"
    );
    assert!(
        millis(&attempts[0]["retry_at"]) - millis(&attempts[0]["started_at"]) >= 2000,
        "{attempts:#?}"
    );
}

#[tokio::test]
async fn a_step_that_times_out_is_retried() {
    let sink = Sink::held().await;
    let flow = format!(
        r#"
id: slow
trigger: {{ webhook: }}
steps:
  - id: deliver
    http: {{ url: "{}/slow", json: {{ n: 1 }} }}
    timeout: 300ms
    retry: {{ attempts: 50, backoff: fixed, initial: 100ms }}
"#,
        sink.url
    );
    let server = Server::start(&[("slow.yaml", &flow)]);
    let (_, ack) = server.send("slow", &json!({})).await;
    let run_id = ack["run_id"].as_str().unwrap();
    let failed = eventually("an attempt to time out", || async {
        let (_, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
        attempts(&run, "deliver").first().cloned()
    })
    .await;
    assert!(
        failed["error"].as_str().unwrap().contains("timed out"),
        "{failed:#}"
    );
    sink.release();
    let run = server.finished_run(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let keys: HashSet<_> = idempotency_keys(&sink).into_iter().collect();
    assert_eq!(keys, HashSet::from([format!("{run_id}:deliver")]));
}

/// `v1` or `v2` of a flow that tags what it sends with its version, failing on 500s after two tries.
fn versioned(sink: &Sink, version: &str) -> String {
    format!(
        r#"
id: tagged
trigger: {{ webhook: }}
steps:
  - id: shape
    map: {{ n: "{{{{trigger.body.n}}}}", version: {version} }}
  - id: deliver
    http: {{ url: "{}/tagged", json: "$.steps.shape" }}
    retry: {{ attempts: 2, backoff: fixed, initial: 10ms }}
"#,
        sink.url
    )
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[tokio::test]
async fn a_failed_run_is_retried_from_its_failed_step_by_the_cli_and_the_api() {
    let sink = Sink::scripted(&[500, 500, 500, 500]).await;
    let server = Server::start(&[("tagged.yaml", &versioned(&sink, "v1"))]);
    let (_, a) = server.send("tagged", &json!({ "n": 1 })).await;
    let (_, b) = server.send("tagged", &json!({ "n": 2 })).await;
    let (a, b) = (a["run_id"].as_str().unwrap(), b["run_id"].as_str().unwrap());
    for id in [a, b] {
        let run = server.finished_run(id).await;
        assert_eq!(run["status"], "failed");
        assert!(run["reason"].as_str().unwrap().contains("500"), "{run:#}");
    }

    let out = stdout(&server.cli(&["runs", "retry", a]));
    assert!(out.contains("resumed from its failed step"), "{out}");
    let run = server.finished_run(a).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        attempts(&run, "shape").len(),
        1,
        "the succeeded step kept its output"
    );
    let numbers: Vec<_> = attempts(&run, "deliver")
        .iter()
        .map(|a| a["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "every attempt is kept");

    let (status, answer) = server
        .post(&format!("/api/v1/runs/{b}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.finished_run(b).await["status"], "succeeded");
    // Automatic retries repeat the step's key; a manual retry is a new request with a new key.
    let keys = idempotency_keys(&sink);
    let count = |key: String| keys.iter().filter(|k| **k == key).count();
    assert_eq!(count(format!("{a}:deliver")), 2);
    assert_eq!(count(format!("{a}:deliver:retry1")), 1);
    assert_eq!(count(format!("{b}:deliver:retry1")), 1);

    let (status, answer) = server
        .post(&format!("/api/v1/runs/{b}/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("not_retryable"))
    );
    let (status, _) = server
        .post(
            "/api/v1/runs/run_01ARZ3NDEKTSV4RRFFQ69G5FAV/retry",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn replays_run_the_event_again_on_the_revision_chosen_and_in_bulk_after_a_count() {
    let sink = Sink::start().await;
    let mut server = Server::start(&[("tagged.yaml", &versioned(&sink, "v1"))]);
    let mut originals = Vec::new();
    for n in 0..3 {
        let (_, ack) = server.send("tagged", &json!({ "n": n })).await;
        originals.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    for id in &originals {
        assert_eq!(server.finished_run(id).await["status"], "succeeded");
    }
    server.write_flow("tagged.yaml", &versioned(&sink, "v2"));
    server.stop_gracefully();
    server.restart();

    let version_of = |run: &Value| {
        let records = run["steps"].as_array().unwrap();
        records[0]["output"]["version"].as_str().unwrap().to_owned()
    };
    let first = &originals[0];
    let out = stdout(&server.cli(&["replay", first]));
    let new_id = out
        .split(|c: char| c.is_whitespace() || c == ';')
        .find(|w| w.starts_with("run_") && w != first)
        .unwrap();
    let replay = server.finished_run(new_id).await;
    assert_eq!(replay["replay_of"], first.as_str());
    assert_eq!(version_of(&replay), "v2", "the flow as it is now");
    assert_eq!(replay["event"]["trigger"]["body"]["n"], 0);

    let (status, answer) = server
        .post(
            &format!("/api/v1/runs/{first}/replay"),
            &json!({ "revision": "original" }),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let replay = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    assert_eq!(
        version_of(&replay),
        "v1",
        "exactly the revision the run ran"
    );

    // In bulk: the count comes first; without --yes (and no terminal to ask on) nothing starts.
    let before = server.all_runs("tagged").await.len();
    let out = stdout(&server.cli(&[
        "replay",
        "--flow",
        "tagged",
        "--status",
        "succeeded",
        "--since",
        "1h",
    ]));
    assert!(out.contains("5 runs of flow tagged match"), "{out}");
    assert!(out.contains("nothing started"), "{out}");
    assert_eq!(server.all_runs("tagged").await.len(), before);
    let (_, count) = server
        .post(
            "/api/v1/runs/replay",
            &json!({ "flow": "tagged", "until": "0s", "dry_run": true }),
        )
        .await;
    assert_eq!(count["matched"], 5);

    let out = stdout(&server.cli(&[
        "replay",
        "--flow",
        "tagged",
        "--since",
        "1h",
        "--revision",
        "original",
        "--yes",
    ]));
    assert!(out.contains("replayed 5 of 5 run(s)"), "{out}");
    let runs = eventually("the bulk replays to finish", || async {
        let runs = server.all_runs("tagged").await;
        let done = runs.len() == 10 && runs.iter().all(|r| r["status"] == "succeeded");
        done.then_some(runs)
    })
    .await;
    assert_eq!(runs.iter().filter(|r| !r["replay_of"].is_null()).count(), 7);

    let (status, answer) = server
        .post(
            "/api/v1/runs/replay",
            &json!({ "flow": "tagged", "since": "yesterday-ish" }),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{answer}"
    );
    let (status, _) = server
        .post("/api/v1/runs/replay", &json!({ "since": "1h" }))
        .await;
    assert_eq!(status, 400, "a bulk action needs a flow");
}

#[tokio::test]
async fn bulk_retry_resumes_every_failed_run_of_a_flow() {
    let sink = Sink::scripted(&[500; 6]).await;
    let server = Server::start(&[("tagged.yaml", &versioned(&sink, "v1"))]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, ack) = server.send("tagged", &json!({ "n": n })).await;
        ids.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(server.finished_run(id).await["status"], "failed");
    }
    let listed = stdout(&server.cli(&[
        "runs", "list", "--flow", "tagged", "--status", "failed", "--since", "1h",
    ]));
    assert!(
        ids.iter().all(|id| listed.contains(id.as_str())),
        "{listed}"
    );
    let later = stdout(&server.cli(&["runs", "list", "--flow", "tagged", "--since", "0s"]));
    assert!(later.contains("no runs"), "{later}");
    let out = stdout(&server.cli(&["runs", "retry", "--flow", "tagged", "--since", "1h", "-y"]));
    assert!(out.contains("3 failed runs of flow tagged match"), "{out}");
    assert!(out.contains("retried 3 of 3 run(s)"), "{out}");
    for id in &ids {
        assert_eq!(server.finished_run(id).await["status"], "succeeded");
    }
    let out = stdout(&server.cli(&["runs", "retry", "--flow", "tagged"]));
    assert!(out.contains("0 failed runs of flow tagged match"), "{out}");
}

#[tokio::test]
async fn a_repeated_delivery_is_answered_with_the_original_run_across_restarts() {
    let sink = Sink::start().await;
    let dedupe = r#"
    dedupe: "{{trigger.body.id}}""#;
    let flow = deliver_flow("payments", &format!("{}/pay", sink.url), dedupe);
    let short = deliver_flow(
        "pings",
        &format!("{}/ping", sink.url),
        "\n    dedupe: \"{{trigger.body.id}}\"\n    dedupe_window: 1s",
    );
    let mut server = Server::start(&[("payments.yaml", &flow), ("pings.yaml", &short)]);
    let event = json!({ "id": "evt_1", "n": 1 });
    let (status, first) = server.send("payments", &event).await;
    assert_eq!((status, first["status"].as_str()), (200, Some("queued")));
    let (status, again) = server.send("payments", &event).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(again["run_id"], first["run_id"]);
    assert_eq!(again["event_id"], first["event_id"]);

    server.kill_hard();
    server.restart();
    let (status, again) = server.send("payments", &event).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(again["run_id"], first["run_id"]);
    let (_, other) = server
        .send("payments", &json!({ "id": "evt_2", "n": 2 }))
        .await;
    assert_eq!(other["status"], "queued");
    let (_, no_key) = server.send("payments", &json!({ "n": 3 })).await;
    let (_, no_key_again) = server.send("payments", &json!({ "n": 3 })).await;
    assert_ne!(
        no_key["run_id"], no_key_again["run_id"],
        "no key, no dedupe"
    );
    assert_eq!(server.all_runs("payments").await.len(), 4);
    server.finished_run(first["run_id"].as_str().unwrap()).await;
    // The kill may have caught the run's step in flight: a repeat carries the same key.
    let keys: HashSet<_> = sink
        .received()
        .iter()
        .filter(|r| r.body["n"] == 1)
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 1, "one run delivered evt_1: {keys:?}");

    // A key counts for its window only.
    let ping = json!({ "id": "p1", "n": 9 });
    let (_, original) = server.send("pings", &ping).await;
    let later = eventually("the one-second window to pass", || async {
        let (_, answer) = server.send("pings", &ping).await;
        (answer["status"] == "queued").then_some(answer)
    })
    .await;
    assert_ne!(later["run_id"], original["run_id"]);
}

// Multi-threaded: the test blocks a thread waiting for the server to exit while its sink answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_the_step_in_flight_and_leaves_the_rest_queued() {
    let sink = Sink::held().await;
    let url = format!("{}/one-at-a-time", sink.url);
    let flow = deliver_flow("serial", &url, "").replace("steps:", "concurrency: 1\nsteps:");
    let mut server = Server::start(&[("serial.yaml", &flow)]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, ack) = server.send("serial", &json!({ "n": n })).await;
        ids.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    eventually("one step in flight", || async {
        (!sink.received().is_empty()).then_some(())
    })
    .await;
    let catch_url = server.catch_url("serial");

    server.send_sigterm();
    let client = reqwest::Client::new();
    eventually("the server to stop accepting requests", || async {
        client
            .post(&catch_url)
            .json(&json!({ "n": 99 }))
            .send()
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert_eq!(
        sink.received().len(),
        1,
        "concurrency: 1 — one step at a time"
    );
    sink.release();
    assert!(server.wait_for_exit(), "a clean exit after the drain");

    server.restart();
    let first: u64 = sink.received()[0].body["n"].as_u64().unwrap();
    for id in &ids {
        assert_eq!(server.finished_run(id).await["status"], "succeeded");
    }
    let received: Vec<u64> = sink
        .received()
        .iter()
        .map(|r| r.body["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        received.len(),
        3,
        "the step in flight finished during the drain: {received:?}"
    );
    assert_eq!(received.iter().filter(|n| **n == first).count(), 1);
    assert_eq!(
        server.all_runs("serial").await.len(),
        3,
        "nothing was accepted after SIGTERM"
    );
}

#[tokio::test]
async fn a_delay_holds_the_next_steps_durably_across_a_restart() {
    let sink = Sink::start().await;
    let flow = format!(
        r#"
id: later
trigger: {{ webhook: }}
steps:
  - id: wait
    delay: {{ for: 2s }}
  - id: follow_up
    http: {{ url: "{}/follow-up", json: {{ email: "{{{{trigger.body.email}}}}" }} }}
"#,
        sink.url
    );
    let mut server = Server::start(&[("later.yaml", &flow)]);
    let (_, answer) = server.send("later", &json!({ "email": "a@x.com" })).await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    let until = eventually("the delay step to finish", || async {
        let (_, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
        let wait = &run["steps"][0];
        (wait["status"] == "succeeded")
            .then(|| wait["output"]["until"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(server.stop_gracefully());
    assert!(sink.received().is_empty(), "nothing before the delay ends");
    server.restart();

    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let started = run["steps"][1]["attempts"][0]["started_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert!(
        parse(&started) >= parse(&until),
        "the step started at {started}, before {until}"
    );
    assert_eq!(sink.received().len(), 1);
}
