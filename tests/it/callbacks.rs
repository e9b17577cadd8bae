//! `wait_for_callback` through the real server: a step before the wait sends the resume URL, the
//! run waits (across a restart), a POST to the URL resumes it with the posted body on the
//! `callback` path; a wrong token is a 404 and a second call a 409; without a call the step takes
//! its `timeout` path.

use serde_json::{json, Value};

use crate::support::{eventually, run_cli, step, Server, Sink};

/// Asks `sink` for an approval with the resume URL, waits for it, then grants or expires.
fn approval_flow(sink: &Sink, timeout: &str) -> String {
    format!(
        r#"
id: approval
trigger: {{ webhook: }}
steps:
  - id: ask
    http: {{ url: "{}/ask", json: {{ who: "{{{{trigger.body.who}}}}", approve_at: "{{{{steps.approve.resume_url}}}}" }} }}
  - id: approve
    wait_for_callback: {{ timeout: {timeout}, on_callback: [grant], on_timeout: [expire] }}
  - id: grant
    map: {{ granted_to: "{{{{trigger.body.who}}}}", by: "{{{{steps.approve.body.manager}}}}" }}
  - id: expire
    map: {{ expired: true }}
"#,
        sink.url
    )
}

/// The resume URL the flow sent to the sink.
async fn resume_url(sink: &Sink) -> String {
    eventually("the approval request to reach the sink", || async {
        let got = sink.received();
        got.first()
            .and_then(|r| r.body["approve_at"].as_str().map(str::to_owned))
    })
    .await
}

async fn status_of(server: &Server, run_id: &str) -> Value {
    let (status, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "{run}");
    run
}

#[tokio::test]
async fn a_callback_resumes_the_run_with_its_body_even_after_a_restart() {
    let sink = Sink::start().await;
    let mut server = Server::start(&[("approval.yaml", &approval_flow(&sink, "1h"))]);
    let (status, answer) = server.send("approval", &json!({ "who": "dana" })).await;
    assert_eq!(status, 200, "{answer}");
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    let url = resume_url(&sink).await;
    assert!(
        url.starts_with(&format!("{}/hooks/resume/{run_id}/approve/", server.base)),
        "{url}"
    );

    // The run waits: a restart keeps it waiting.
    eventually("the step to wait for its callback", || async {
        let run = status_of(&server, &run_id).await;
        let waiting = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "approve" && s["waiting_until"].is_string());
        waiting.then_some(())
    })
    .await;
    server.stop_gracefully();
    server.restart();
    let run = status_of(&server, &run_id).await;
    assert_eq!(run["status"], "running", "{run:#}");

    // A token that is not the step's is refused like an unknown URL.
    let forged = format!("{}{}", &url[..url.len() - 32], "0".repeat(32));
    let (status, answer) = server.post_to(&forged, &json!({ "manager": "eve" })).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));

    let (status, answer) = server
        .post_to(&format!("{url}?via=slack"), &json!({ "manager": "sam" }))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "resumed");
    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let approve = step(&run, "approve");
    assert_eq!(approve["output"]["path"], "callback");
    assert_eq!(approve["output"]["body"], json!({ "manager": "sam" }));
    assert_eq!(approve["output"]["query"], json!({ "via": "slack" }));
    assert_eq!(
        step(&run, "grant")["output"],
        json!({ "granted_to": "dana", "by": "sam" })
    );
    assert_eq!(step(&run, "expire")["status"], "skipped");

    // The audit record says the step was called back, from where.
    let entry = eventually("the callback in the audit record", || async {
        let (_, audit) = server.get("/api/v1/audit?action=callback").await;
        audit["entries"].as_array().and_then(|e| e.first().cloned())
    })
    .await;
    assert_eq!(entry["actor"], "resume_url", "{entry}");
    assert_eq!(entry["address"], "127.0.0.1", "{entry}");
    assert_eq!(entry["run_id"], run_id.as_str(), "{entry}");

    // The step is done: a second call changes nothing.
    let (status, answer) = server.post_to(&url, &json!({ "manager": "late" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("not_waiting"))
    );
    let metrics = server.metrics().await;
    for line in [
        "hookflow_callbacks_total{outcome=\"resumed\"} 1",
        "hookflow_callbacks_total{outcome=\"not_waiting\"} 1",
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn without_a_callback_the_step_takes_its_timeout_path() {
    let sink = Sink::start().await;
    let server = Server::start(&[("approval.yaml", &approval_flow(&sink, "1s"))]);
    let (_, answer) = server.send("approval", &json!({ "who": "dana" })).await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    let url = resume_url(&sink).await;
    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        step(&run, "approve")["output"],
        json!({ "path": "timeout", "timed_out": true })
    );
    assert_eq!(step(&run, "expire")["output"], json!({ "expired": true }));
    assert_eq!(step(&run, "grant")["status"], "skipped");
    let (status, answer) = server.post_to(&url, &json!({})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("not_waiting"))
    );
}

#[test]
fn a_local_run_says_that_only_a_server_receives_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("wait.yaml");
    std::fs::write(
        &flow,
        "id: wait\ntrigger: { manual: }\nsteps:\n  - { id: approve, wait_for_callback: { timeout: 1h } }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("event.json"), "{}").unwrap();
    let out = run_cli(
        &["run", flow.to_str().unwrap(), "--event", "event.json"],
        dir.path(),
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waits for a callback, which only a running server"),
        "{text}"
    );
}
