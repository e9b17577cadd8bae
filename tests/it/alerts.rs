//! Failure alerts (`alerts:` in the server configuration) with the real binary: failed runs reach
//! an HTTP sink, a Slack-style incoming webhook and an SMTP server, a storm arrives as digests,
//! `/metrics` counts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, unused_port, Server, Sink};

/// The digest window the test configures.
const DIGEST: Duration = Duration::from_secs(3);

fn counts(sink: &Sink) -> Vec<u64> {
    sink.received()
        .iter()
        .map(|r| r.body["count"].as_u64().unwrap())
        .collect()
}

/// Writes the server configuration `yaml` into `dir`; returns its path.
fn write_config(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

/// A flow whose only step posts to a port nothing listens on, once: every run fails.
fn breaking_flow() -> String {
    format!(
        "id: breaks\ntrigger: {{ webhook: }}\nsteps:\n  - id: post\n    http: {{ url: \"http://127.0.0.1:{}/down\", json: {{ a: 1 }} }}\n    retry: {{ attempts: 1 }}\n",
        unused_port()
    )
}

#[tokio::test]
async fn failed_runs_are_alerted_in_digests_not_one_message_per_run() {
    let hook = Sink::start().await;
    let slack = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &format!(
            "alerts:\n  digest: {}s\n  to:\n    - {{ url: \"{}/alerts\" }}\n    - {{ slack: \"${{env:ALERT_SLACK_URL}}\" }}\n",
            DIGEST.as_secs(),
            hook.url
        ));
    let flow = breaking_flow();
    let slack_url = format!("{}/services/T0/B0/x", slack.url);
    let server = Server::start_with(
        &[("breaks.yaml", &flow)],
        &[
            "--allow-outbound",
            "127.0.0.1",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("ALERT_SLACK_URL", &slack_url)],
    );

    // The first failure after a quiet spell is alerted at once.
    let (_, ack) = server.send("breaks", &json!({ "n": 0 })).await;
    let first_run = ack["run_id"].as_str().unwrap().to_owned();
    let run = server.finished_run(&first_run).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    eventually("the first alert", || async {
        (hook.received().len() == 1).then_some(())
    })
    .await;
    let first = hook.received()[0].body.clone();
    assert_eq!(first["alerts"], json!(["runs_failed"]));
    assert_eq!(first["count"], 1);
    assert_eq!(first["flows"], json!({ "breaks": 1 }));
    assert_eq!(first["runs"][0]["run_id"], first_run.as_str());
    assert!(
        first["runs"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("post")),
        "{first:#}"
    );

    // A storm within the window is one more message, sent when the window ends.
    for n in 1..=4 {
        server.send("breaks", &json!({ "n": n })).await;
    }
    eventually("the storm's digest", || async {
        (counts(&hook).iter().sum::<u64>() == 5).then_some(())
    })
    .await;
    // However slowly the storm arrives, messages are at least a window apart (on a quick machine
    // the four failures share one digest).
    let received = hook.received();
    assert!(
        received.len() < 5,
        "not one message per run: {:?}",
        counts(&hook)
    );
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= DIGEST - Duration::from_millis(100),
            "each digest waited for its window: {gap:?}"
        );
    }
    let digest = &received[1].body;
    let listed = digest["runs"].as_array().unwrap().len() as u64;
    assert_eq!(digest["count"], listed);
    assert!(digest["text"].as_str().unwrap().starts_with(&format!(
        "hookflow: {listed} run(s) failed (breaks: {listed})"
    )));

    // Slack gets the same messages as text only.
    eventually("every message on Slack", || async {
        (slack.received().len() == received.len()).then_some(())
    })
    .await;
    let texts: Vec<Value> = slack.received().iter().map(|r| r.body.clone()).collect();
    let expected: Vec<Value> = received
        .iter()
        .map(|r| json!({ "text": r.body["text"] }))
        .collect();
    assert_eq!(texts, expected);

    let metrics = server.metrics().await;
    let sent = format!("hookflow_alerts_sent_total {}", 2 * received.len());
    for line in [
        sent.as_str(),
        "hookflow_alerts_runs_failed_total 5",
        "hookflow_alerts_open 0",
        "hookflow_alerts_send_failures_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_backlog_and_a_hook_refusing_requests_are_alerted_once_while_they_last() {
    let hook = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &format!(
            "alerts:\n  digest: 1s\n  backlog_over: 2\n  rejections: {{ over: 2, within: 1m }}\n  to: [{{ url: \"{}/alerts\" }}]\n",
            hook.url
        ));
    let queued = "id: queued\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { a: 1 } }\n";
    let signed = "id: signed\ntrigger: { webhook: { verify: { provider: github, secret: s3cret } } }\nsteps:\n  - { id: shape, map: { a: 1 } }\n";
    // No workers: every event's run stays queued.
    let server = Server::start_with(
        &[("queued.yaml", queued), ("signed.yaml", signed)],
        &["--workers", "0", "--config", config.to_str().unwrap()],
        &[],
    );
    for n in 0..3 {
        let (status, _) = server.send("queued", &json!({ "n": n })).await;
        assert_eq!(status, 200);
        let (status, answer) = server.send("signed", &json!({ "n": n })).await;
        assert_eq!(status, 401, "{answer}");
    }
    let conditions = eventually("both conditions alerted", || async {
        let conditions: Vec<Value> = hook
            .received()
            .iter()
            .flat_map(|r| r.body["conditions"].as_array().cloned().unwrap_or_default())
            .collect();
        let kinds: Vec<&str> = conditions
            .iter()
            .filter_map(|c| c["alert"].as_str())
            .collect();
        (kinds.contains(&"backlog") && kinds.contains(&"hook_rejections")).then_some(conditions)
    })
    .await;
    let backlog = conditions.iter().find(|c| c["alert"] == "backlog").unwrap();
    assert!(backlog["queued"].as_u64().unwrap() >= 3, "{backlog}");
    assert_eq!(backlog["over"], 2);
    let rejections = conditions
        .iter()
        .find(|c| c["alert"] == "hook_rejections")
        .unwrap();
    assert_eq!(rejections["flow"], "signed");
    assert_eq!(rejections["rejected"], 3);
    assert_eq!(
        conditions.len(),
        2,
        "each condition is alerted once while it holds"
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains("hookflow_alerts_open 2"), "{metrics}");
}

#[test]
fn a_target_without_its_url_stops_the_server_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "alerts:\n  to:\n    - { slack: \"${env:ALERT_SLACK_URL}\" }\n",
    );
    let out = crate::support::hookflow()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--flows")
        .arg(dir.path().join("flows"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .env_remove("ALERT_SLACK_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "refused before listening"
    );
    assert!(
        stderr.contains("alerts.to[0]: `ALERT_SLACK_URL` is not set"),
        "{stderr}"
    );
}

#[tokio::test]
async fn failed_runs_are_mailed_through_the_email_steps_smtp_server() {
    let smtp = crate::fakes::FakeSmtp::start("hookflow", "smtp-s3cret").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "alerts:\n  to:\n    - { email: \"ops@acme.example, billing@acme.example\" }\n",
    );
    let flow = breaking_flow();
    let port = smtp.port.to_string();
    let server = Server::start_with(
        &[("breaks.yaml", &flow)],
        &[
            "--allow-outbound",
            "127.0.0.1",
            "--config",
            config.to_str().unwrap(),
        ],
        &[
            ("SMTP_HOST", "127.0.0.1"),
            ("SMTP_PORT", &port),
            ("SMTP_TLS", "none"),
            ("SMTP_USERNAME", "hookflow"),
            ("SMTP_PASSWORD", "smtp-s3cret"),
            ("SMTP_FROM", "hookflow@acme.example"),
        ],
    );
    let (_, ack) = server.send("breaks", &json!({ "n": 0 })).await;
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    assert_eq!(server.finished_run(&run_id).await["status"], "failed");
    let mail = eventually("the alert mail", || async { smtp.mail().first().cloned() }).await;
    assert_eq!(mail.from, "hookflow@acme.example");
    assert_eq!(mail.to, ["ops@acme.example", "billing@acme.example"]);
    assert!(mail.data.contains("Subject: hookflow: "), "{}", mail.data);
    assert!(mail.data.contains(&run_id), "{}", mail.data);
    assert_eq!(
        smtp.logins(),
        [("hookflow".to_owned(), "smtp-s3cret".to_owned())]
    );
}
