//! Events through the whole pipeline: catch hook → durable run → filter/map/HTTP → run history.

use serde_json::json;

use crate::support::{eventually, fired_ticks, Server, Sink, EVERY_SECOND};

fn lead_flow(sink: &Sink, retry: &str) -> String {
    format!(
        r#"
id: leads
trigger:
  webhook:
steps:
  - id: big_enough
    filter:
      all:
        - {{ value: "{{{{trigger.body.employees}}}}", gte: 50 }}
  - id: shape
    map:
      email: "{{{{lower trigger.body.email}}}}"
      employees: "{{{{trigger.body.employees}}}}"
      tags: "$.trigger.body.tags"
  - id: deliver
    http:
      url: "{url}/crm"
      json:
        contact: "{{{{steps.shape}}}}"
        note: "lead {{{{steps.shape.email}}}}"
    {retry}
"#,
        url = sink.url
    )
}

#[tokio::test]
async fn passing_event_delivers_the_mapped_json_and_records_every_step() {
    let sink = Sink::start().await;
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, ""))]);
    let event = json!({ "email": "Ann@Example.COM", "employees": 120, "tags": ["a", "b"] });

    let (status, ack) = server.send("leads", &event).await;
    assert_eq!(status, 200, "{ack}");
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    assert!(run_id.starts_with("run_") && ack["event_id"].as_str().unwrap().starts_with("evt_"));

    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    let expected = json!({
        "contact": { "email": "ann@example.com", "employees": 120, "tags": ["a", "b"] },
        "note": "lead ann@example.com",
    });
    assert_eq!(
        received[0].body, expected,
        "numbers and arrays keep their JSON type"
    );
    assert_eq!(
        received[0].headers["idempotency-key"],
        format!("{run_id}:deliver").as_str()
    );

    assert_eq!(run["event"]["trigger"]["body"], event);
    let steps = run["steps"].as_array().unwrap();
    let ids: Vec<_> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["big_enough", "shape", "deliver"]);
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{step:#}");
        assert_eq!(step["attempts"].as_array().unwrap().len(), 1);
        assert!(step["duration_ms"].is_u64());
    }
    assert_eq!(steps[1]["output"], expected["contact"]);
    assert_eq!(steps[2]["input"]["json"], expected);
    assert_eq!(steps[2]["output"]["status"], 200);
}

#[tokio::test]
async fn event_failing_the_filter_ends_filtered_and_sends_nothing() {
    let sink = Sink::start().await;
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, ""))]);

    let (_, ack) = server
        .send("leads", &json!({ "email": "x@y.z", "employees": 5 }))
        .await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;

    assert_eq!(run["status"], "filtered");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("big_enough") && reason.contains("all[0]") && reason.contains('5'),
        "{reason}"
    );
    assert_eq!(run["steps"][0]["status"], "filtered");
    assert_eq!(run["steps"][1]["status"], "skipped");
    assert_eq!(run["steps"][2]["status"], "skipped");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_failing_target_is_retried_and_attempts_are_recorded() {
    let sink = Sink::scripted(&[500]).await;
    let retry = "retry: { attempts: 3, backoff: fixed, initial: 50ms, jitter: false }";
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, retry))]);

    let (_, ack) = server
        .send("leads", &json!({ "email": "a@b.c", "employees": 99 }))
        .await;
    let run_id = ack["run_id"].as_str().unwrap();
    let run = server.finished_run(run_id).await;

    assert_eq!(run["status"], "succeeded", "{run:#}");
    let deliver = &run["steps"][2];
    let attempts = deliver["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{deliver:#}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"));
    assert!(attempts[0]["retry_at"].is_string());
    assert!(attempts[1]["error"].is_null());
    let received = sink.received();
    assert_eq!(received.len(), 2);
    let key = format!("{run_id}:deliver");
    assert!(
        received
            .iter()
            .all(|r| r.headers["idempotency-key"] == key.as_str()),
        "same key on every attempt"
    );
}

#[tokio::test]
async fn exhausted_retries_fail_the_run_with_the_last_error() {
    let sink = Sink::scripted(&[503, 503]).await;
    let retry = "retry: { attempts: 2, backoff: fixed, initial: 10ms, jitter: false }";
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, retry))]);

    let (_, ack) = server
        .send("leads", &json!({ "email": "a@b.c", "employees": 99 }))
        .await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;

    assert_eq!(run["status"], "failed");
    assert!(run["reason"].as_str().unwrap().contains("503"), "{run:#}");
    assert_eq!(run["steps"][2]["status"], "failed");
    assert_eq!(run["steps"][2]["error"]["detail"]["status"], 503);
    assert_eq!(run["steps"][2]["attempts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let sink = Sink::scripted(&[422]).await;
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, ""))]);

    let (_, ack) = server
        .send("leads", &json!({ "email": "a@b.c", "employees": 99 }))
        .await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;

    assert_eq!(run["status"], "failed");
    assert_eq!(run["steps"][2]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(run["steps"][2]["error"]["retryable"], false);
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let sink = Sink::start().await;
    let server = Server::start_with(&[("leads.yaml", &lead_flow(&sink, ""))], &[], &[]);

    let (_, ack) = server
        .send("leads", &json!({ "email": "a@b.c", "employees": 99 }))
        .await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;

    assert_eq!(run["status"], "failed");
    let error = run["steps"][2]["error"]["message"].as_str().unwrap();
    assert!(error.contains("refused to connect to 127.0.0.1"), "{error}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn independent_steps_both_run_after_the_step_they_need() {
    let sink = Sink::start().await;
    let flow = format!(
        r#"
id: fanout
trigger: {{ webhook: {{}} }}
steps:
  - id: shape
    map: {{ email: "{{{{trigger.body.email}}}}" }}
  - id: crm
    needs: [shape]
    http: {{ url: "{url}/crm", json: {{ to: crm, email: "{{{{steps.shape.email}}}}" }} }}
  - id: chat
    needs: [shape]
    http: {{ url: "{url}/chat", json: {{ to: chat, email: "{{{{steps.shape.email}}}}" }} }}
  - id: done
    needs: [crm, chat]
    map: {{ crm_status: "{{{{steps.crm.status}}}}", chat_status: "{{{{steps.chat.status}}}}" }}
"#,
        url = sink.url
    );
    let server = Server::start(&[("fanout.yaml", &flow)]);
    let (_, ack) = server.send("fanout", &json!({ "email": "z@z.z" })).await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;

    assert_eq!(run["status"], "succeeded", "{run:#}");
    let mut targets: Vec<_> = sink
        .received()
        .iter()
        .map(|r| r.body["to"].as_str().unwrap().to_owned())
        .collect();
    targets.sort();
    assert_eq!(targets, ["chat", "crm"]);
    assert_eq!(
        run["steps"][3]["output"],
        json!({ "crm_status": 200, "chat_status": 200 })
    );
}

#[tokio::test]
async fn run_history_survives_a_graceful_restart() {
    let sink = Sink::start().await;
    let mut server = Server::start(&[("leads.yaml", &lead_flow(&sink, ""))]);
    let (_, ack) = server
        .send("leads", &json!({ "email": "a@b.c", "employees": 99 }))
        .await;
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    let before = server.finished_run(&run_id).await;
    let url_before = server.catch_url("leads");

    assert!(server.stop_gracefully(), "clean exit on SIGTERM");
    server.restart();

    let (status, after) = server.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(after, before, "the run reads back exactly");
    assert_eq!(
        server.catch_url("leads"),
        url_before,
        "the catch URL's token is kept"
    );
    let (_, list) = server.get("/api/v1/runs?flow=leads").await;
    assert_eq!(list["runs"][0]["id"], run_id.as_str());
    assert_eq!(sink.received().len(), 1, "nothing ran twice");
}

#[tokio::test]
async fn respond_result_answers_with_the_runs_output() {
    let flow = r#"
id: quote
trigger:
  webhook: { respond: result, respond_timeout: 10s }
steps:
  - id: price
    map: { sku: "{{trigger.body.sku}}", total: "{{trigger.body.qty}}" }
"#;
    let server = Server::start(&[("quote.yaml", flow)]);
    let (status, answer) = server
        .send("quote", &json!({ "sku": "A-1", "qty": 3 }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "succeeded");
    assert_eq!(answer["output"], json!({ "sku": "A-1", "total": 3 }));
}

#[tokio::test]
async fn respond_result_answers_202_when_the_run_outlasts_the_timeout() {
    // A target that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flow = format!(
        r#"
id: slow
trigger:
  webhook: {{ respond: result, respond_timeout: 200ms }}
steps:
  - id: call
    http: {{ url: "http://{}/never" }}
    timeout: 1s
    retry: {{ attempts: 1 }}
"#,
        silent.local_addr().unwrap()
    );
    let server = Server::start(&[("slow.yaml", &flow)]);
    let (status, answer) = server.send("slow", &json!({})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "running");
    let run = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["reason"].as_str().unwrap().contains("timed out"),
        "{run:#}"
    );
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_filters_and_cursor_paging() {
    let sink = Sink::start().await;
    let server = Server::start(&[("leads.yaml", &lead_flow(&sink, ""))]);
    let mut ids = Vec::new();
    for employees in [10, 100, 20, 200, 30] {
        let (_, ack) = server
            .send(
                "leads",
                &json!({ "email": "a@b.c", "employees": employees }),
            )
            .await;
        ids.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        server.finished_run(id).await;
    }

    let (_, page1) = server.get("/api/v1/runs?limit=2").await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = server
        .get(&format!("/api/v1/runs?limit=2&cursor={cursor}"))
        .await;
    let listed: Vec<_> = page1["runs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["runs"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let newest_first: Vec<_> = ids.iter().rev().take(4).cloned().collect();
    assert_eq!(listed, newest_first);

    let (_, filtered) = server.get("/api/v1/runs?status=filtered").await;
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 3);
    let (_, none) = server.get("/api/v1/runs?flow=other").await;
    assert!(none["runs"].as_array().unwrap().is_empty());
}

/// A flow whose first step fails once and retries after 3 s, then tags its output with `version`.
fn versioned_flow(sink: &Sink, version: &str) -> String {
    format!(
        r#"
id: versioned
trigger: {{ webhook: }}
steps:
  - id: call
    http: {{ url: "{url}/v", headers: {{ X-Token: "${{env:SECRET_TOKEN}}" }} }}
    retry: {{ attempts: 3, backoff: fixed, initial: 3s, jitter: false }}
  - id: tag
    map: {{ version: {version} }}
"#,
        url = sink.url
    )
}

/// A server running flow revision "A" whose run waits for a retry, stopped gracefully: returns
/// the sink, the stopped server and the run id.
async fn stopped_with_a_retry_pending() -> (Sink, Server, String) {
    let sink = Sink::scripted(&[500]).await;
    let envs = [("SECRET_TOKEN", "t0ps3cret")];
    let flow = versioned_flow(&sink, "A");
    let mut server = Server::start_with(
        &[("versioned.yaml", &flow)],
        &["--allow-outbound", "127.0.0.1"],
        &envs,
    );
    let (_, ack) = server.send("versioned", &json!({})).await;
    let run_id = ack["run_id"].as_str().unwrap().to_owned();
    eventually("the first attempt to fail", || async {
        let (_, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
        run["steps"][0]["attempts"][0]["retry_at"]
            .is_string()
            .then_some(())
    })
    .await;
    assert!(server.stop_gracefully());
    (sink, server, run_id)
}

#[tokio::test]
async fn a_queued_run_finishes_on_the_flow_revision_that_accepted_it() {
    let (sink, mut server, run_id) = stopped_with_a_retry_pending().await;
    server.write_flow("versioned.yaml", &versioned_flow(&sink, "B"));
    server.restart();

    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["steps"][1]["output"],
        json!({ "version": "A" }),
        "the queued run kept its revision"
    );
    let (_, new) = server.send("versioned", &json!({})).await;
    let new = server.finished_run(new["run_id"].as_str().unwrap()).await;
    assert_eq!(
        new["steps"][1]["output"],
        json!({ "version": "B" }),
        "new events use the edited flow"
    );
    assert_ne!(new["revision"], run["revision"]);

    assert!(sink
        .received()
        .iter()
        .all(|r| r.headers["x-token"] == "t0ps3cret"));
    let recorded = serde_json::to_string(&run).unwrap();
    assert!(
        !recorded.contains("t0ps3cret"),
        "the secret is never recorded: {recorded}"
    );
    assert_eq!(run["steps"][0]["input"]["headers"]["X-Token"], "[redacted]");
}

#[tokio::test]
async fn a_queued_run_whose_revision_can_no_longer_load_fails_with_the_reason() {
    let (_sink, mut server, run_id) = stopped_with_a_retry_pending().await;
    server.remove_env("SECRET_TOKEN");
    server.restart();

    let run = server.finished_run(&run_id).await;
    assert_eq!(run["status"], "failed");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("SECRET_TOKEN") && reason.contains("is not set"),
        "{reason}"
    );
    assert_eq!(run["steps"][1]["status"], "skipped");
    let (status, _) = server.get("/api/v1/flows").await;
    assert_eq!(status, 200);
    assert!(
        !server
            .banner
            .iter()
            .any(|l| l.contains("/hooks/catch/versioned/")),
        "the invalid flow is not served"
    );
}

#[tokio::test]
async fn a_switch_runs_only_the_taken_path_and_records_it() {
    let sink = Sink::start().await;
    let flow = format!(
        r#"
id: routing
trigger: {{ webhook: }}
steps:
  - id: route
    switch:
      cases:
        - path: enterprise
          when: {{ value: "{{{{trigger.body.employees}}}}", gte: 1000 }}
          steps: [alert_ae]
        - path: smb
          when: {{ value: "{{{{trigger.body.employees}}}}", lt: 1000 }}
          steps: [nurture]
  - id: alert_ae
    http: {{ url: "{url}/ae", json: {{ company: "{{{{trigger.body.company}}}}" }} }}
  - id: nurture
    http: {{ url: "{url}/nurture", json: {{ company: "{{{{trigger.body.company}}}}" }} }}
  - id: record
    map: {{ ae: "{{{{default steps.alert_ae.status 'none'}}}}" }}
"#,
        url = sink.url
    );
    let server = Server::start(&[("routing.yaml", &flow)]);
    let (_, big) = server
        .send(
            "routing",
            &json!({ "company": "Globex", "employees": 5000 }),
        )
        .await;
    let run = server.finished_run(big["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["path"], "enterprise");
    let statuses: Vec<&str> = steps
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "skipped", "succeeded"]);
    assert_eq!(
        steps[3]["output"]["ae"], 200,
        "the step after sees the taken path (a helper call alone keeps the status a number)"
    );

    let (_, small) = server
        .send("routing", &json!({ "company": "Initech", "employees": 40 }))
        .await;
    let run = server.finished_run(small["run_id"].as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["path"], "smb");
    assert_eq!(run["steps"][1]["status"], "skipped");
    let paths: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.body["company"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["Globex", "Initech"], "each event took one path");
}

#[tokio::test]
async fn manual_runs_start_from_the_cli_and_the_api_and_are_never_duplicates() {
    let manual = "id: monthly-report\ntrigger: { manual: }\nsteps:\n  - { id: shape, map: { month: \"{{trigger.body.month}}\" } }\n";
    let deduped = "id: leads\ntrigger: { webhook: { dedupe: \"{{trigger.body.email}}\" } }\nsteps:\n  - { id: shape, map: { email: \"{{trigger.body.email}}\" } }\n";
    let server = Server::start(&[("report.yaml", manual), ("leads.yaml", deduped)]);
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"month": "2026-10"}"#).unwrap();
    let out = server.cli(&[
        "trigger",
        "monthly-report",
        "--event",
        event.to_str().unwrap(),
        "--wait",
    ]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains(": succeeded"), "{shown}");
    let runs = server.all_runs("monthly-report").await;
    assert_eq!(runs.len(), 1);
    let run = server.finished_run(runs[0]["id"].as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["output"]["month"], "2026-10");
    assert_eq!(run["event"]["trigger"]["method"], "MANUAL");

    // A person asking twice gets two runs, even where senders' repeats are deduplicated.
    for _ in 0..2 {
        let (status, answer) = server
            .post(
                "/api/v1/flows/leads/runs",
                &json!({ "body": { "email": "a@x.com" } }),
            )
            .await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (201, Some("queued")),
            "{answer}"
        );
    }
    eventually("two manual runs", || async {
        (server.all_runs("leads").await.len() == 2).then_some(())
    })
    .await;
    let (status, answer) = server
        .post("/api/v1/flows/leads/runs", &json!({ "payload": {} }))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_run"))
    );
    let (status, _) = server
        .post("/api/v1/flows/nope/runs", &json!({ "body": {} }))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn on_error_continue_goes_on_and_on_failure_steps_alert_when_a_run_fails() {
    // The enrichment answers 500, the CRM 404, the alert channel 200.
    let sink = Sink::scripted(&[500, 404]).await;
    let flow = format!(
        r#"
id: guarded
trigger: {{ webhook: }}
steps:
  - id: enrich
    on_error: continue
    retry: {{ attempts: 1 }}
    http: {{ url: "{url}/enrich", json: {{ email: "{{{{trigger.body.email}}}}" }} }}
  - id: shape
    map: {{ email: "{{{{trigger.body.email}}}}", enrich_error: "{{{{steps.enrich.error.message}}}}" }}
  - id: crm
    http: {{ url: "{url}/crm", json: "$.steps.shape" }}
  - id: after_crm
    map: {{ never: true }}
on_failure:
  - id: alert
    http:
      url: "{url}/alerts"
      json: {{ text: "Run {{{{run.id}}}} of {{{{run.flow}}}} failed: {{{{run.error}}}}" }}
"#,
        url = sink.url
    );
    let server = Server::start(&[("guarded.yaml", &flow)]);
    let (_, answer) = server.send("guarded", &json!({ "email": "a@x.com" })).await;
    let run_id = answer["run_id"].as_str().unwrap();
    let run = server.finished_run(run_id).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(run["reason"]
        .as_str()
        .unwrap()
        .starts_with("step `crm` failed: the server answered 404"));
    let step = |id: &str| crate::support::step(&run, id).clone();
    assert_eq!(step("enrich")["status"], "failed");
    assert!(step("shape")["output"]["enrich_error"]
        .as_str()
        .unwrap()
        .contains("500"));
    assert_eq!(step("after_crm")["status"], "skipped");
    assert_eq!(step("alert")["status"], "succeeded");
    let received = sink.received();
    assert_eq!(received.len(), 3, "enrich, crm, alert");
    let alert = received[2].body["text"].as_str().unwrap().to_owned();
    assert!(
        alert.starts_with(&format!(
            "Run {run_id} of guarded failed: step `crm` failed"
        )),
        "{alert}"
    );
}

#[tokio::test]
async fn a_schedule_fires_once_per_tick_and_skips_ticks_missed_while_down() {
    use time::OffsetDateTime;

    let mut server = Server::start(&[("every-second.yaml", EVERY_SECOND)]);
    eventually("three fires", || async {
        (server.all_runs("every-second").await.len() >= 3).then_some(())
    })
    .await;
    assert!(server.stop_gracefully());
    let stopped = OffsetDateTime::now_utc();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let restarted = OffsetDateTime::now_utc();
    server.restart();
    let before = server.all_runs("every-second").await.len();
    eventually("three more fires", || async {
        (server.all_runs("every-second").await.len() >= before + 3).then_some(())
    })
    .await;

    let fired = fired_ticks(&server, "every-second").await;
    let (early, late): (Vec<&OffsetDateTime>, Vec<&OffsetDateTime>) =
        fired.iter().partition(|t| **t <= stopped);
    assert!(
        late.iter().all(|t| **t > restarted),
        "ticks that came due while the server was down are skipped: {fired:?} (down {stopped} to {restarted})"
    );
    for side in [&early, &late] {
        for pair in side.windows(2) {
            assert_eq!(
                *pair[1] - *pair[0],
                time::Duration::seconds(1),
                "one fire per tick while running: {fired:?}"
            );
        }
    }
    assert!(early.len() >= 3 && late.len() >= 3, "{fired:?}");

    let out = server.cli(&["schedules"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("every-second  `* * * * * *` (UTC)"),
        "{listed}"
    );
    assert_eq!(listed.matches("    next: ").count(), 3, "{listed}");
}

#[tokio::test]
async fn a_catch_up_schedule_fires_the_most_recent_missed_ticks_at_start() {
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    let flow = "id: catch-up\ntrigger:\n  schedule: { cron: \"* * * * * *\", missed: catch_up, catch_up_max: 2 }\nsteps:\n  - { id: tick, map: {} }\n";
    let mut server = Server::start(&[("catch-up.yaml", flow)]);
    eventually("a fire", || async {
        (!server.all_runs("catch-up").await.is_empty()).then_some(())
    })
    .await;
    assert!(server.stop_gracefully());
    let stopped = OffsetDateTime::now_utc();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let restarted = OffsetDateTime::now_utc();
    server.restart();
    // Once a tick after the restart has fired, catching up is done.
    let fired = eventually("a fire after the restart", || async {
        let mut fired = Vec::new();
        for run in server.all_runs("catch-up").await {
            let (_, run) = server
                .get(&format!("/api/v1/runs/{}", run["id"].as_str().unwrap()))
                .await;
            let body = &run["event"]["trigger"]["body"];
            let at = |field: &str| OffsetDateTime::parse(body[field].as_str()?, &Rfc3339).ok();
            fired.push((at("scheduled_at")?, at("fired_at")?));
        }
        let after = restarted + time::Duration::milliseconds(1500);
        fired.iter().any(|(t, _)| *t > after).then_some(fired)
    })
    .await;
    let mut since_stop: Vec<_> = fired.into_iter().filter(|(t, _)| *t > stopped).collect();
    since_stop.sort();
    // Catching up fires the two most recent ticks before the scheduler started, together at its
    // start (however long the start-up took); ticks on time fire a second apart.
    assert!(
        since_stop.windows(2).any(|w| {
            w[1].0 - w[0].0 == time::Duration::SECOND
                && (w[1].1 - w[0].1).abs() < time::Duration::milliseconds(500)
        }),
        "two missed ticks fired together: {since_stop:?}"
    );
    // The older missed ones (the server was down for 3.5 s) are not fired: every tick fired is
    // at most 2 s older than the scheduler's start, which is after `restarted`.
    assert!(
        since_stop
            .iter()
            .all(|(t, _)| *t > restarted - time::Duration::seconds(2)),
        "only the most recent: {since_stop:?}"
    );
}

#[tokio::test]
async fn flow_files_reload_while_the_server_runs_and_bad_edits_are_refused() {
    let version = |v: &str| {
        format!("id: reloaded\ntrigger: {{ webhook: }}\nsteps:\n  - {{ id: shape, map: {{ version: {v} }} }}\n")
    };
    let other = "id: other\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("reloaded.yaml", &version("1")), ("other.yaml", other)]);
    let output = |answer: serde_json::Value| {
        let server = &server;
        async move {
            let run = server
                .finished_run(answer["run_id"].as_str().unwrap())
                .await;
            run["steps"][0]["output"]["version"].clone()
        }
    };
    let (_, answer) = server.send("reloaded", &json!({})).await;
    assert_eq!(output(answer).await, 1);
    let revision = |flows: &serde_json::Value| {
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "reloaded")
            .map(|f| f["revision"].as_str().unwrap().to_owned())
    };
    let (_, flows) = server.get("/api/v1/flows").await;
    let first = revision(&flows).unwrap();

    // A valid edit takes effect for new runs, same catch URL.
    server.write_flow("reloaded.yaml", &version("2"));
    let second = eventually("the new revision", || async {
        let (_, flows) = server.get("/api/v1/flows").await;
        revision(&flows).filter(|r| *r != first)
    })
    .await;
    let (_, answer) = server.send("reloaded", &json!({})).await;
    assert_eq!(output(answer).await, 2);

    // An invalid edit is refused with its place; the previous revision keeps serving.
    server.write_flow(
        "reloaded.yaml",
        "id: reloaded\ntrigger: { webhook: }\nsteps:\n  - { id: shape, mapp: {} }\n",
    );
    let problems = eventually("the refused edit's problems", || async {
        let (_, flows) = server.get("/api/v1/flows").await;
        let problems = flows["problems"].as_array().cloned().unwrap_or_default();
        (!problems.is_empty()).then_some(problems)
    })
    .await;
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.contains("reloaded.yaml:4:") && problem.contains("mapp"),
        "{problem}"
    );
    let page = crate::ui::home_page(&server.base).await;
    let banner = page
        .split("class=\"card problems\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no problems banner in\n{page}"));
    assert!(banner.contains("reloaded.yaml:4:"), "{banner}");
    let (_, flows) = server.get("/api/v1/flows").await;
    assert_eq!(revision(&flows).as_deref(), Some(second.as_str()));
    let (_, answer) = server.send("reloaded", &json!({})).await;
    assert_eq!(output(answer).await, 2);

    let out = server.cli(&["flows", "history", "reloaded"]);
    let history = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].starts_with(&second) && lines[0].ends_with("(current)"),
        "{history}"
    );
    assert!(lines[1].starts_with(&first), "{history}");

    // A removed file's flow is no longer served.
    std::fs::remove_file(server.flows_dir().join("other.yaml")).unwrap();
    eventually("the removed flow to go", || async {
        let (status, _) = server.send("other", &json!({})).await;
        (status == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn foreach_runs_its_steps_per_item_concurrently_and_reports_failed_items() {
    let sink = crate::support::Sink::held().await;
    let dead = crate::support::unused_port();
    let flow = format!(
        r#"
id: orders
trigger: {{ webhook: }}
steps:
  - id: lines
    foreach:
      items: "$.trigger.body.lines"
      concurrency: 2
      on_item_error: continue
      steps:
        - id: post
          http:
            url: "{{{{#if item.broken}}}}http://127.0.0.1:{dead}{{{{else}}}}{url}{{{{/if}}}}/lines"
            json: {{ sku: "{{{{item.sku}}}}" }}
"#,
        url = sink.url
    );
    let server = Server::start(&[("orders.yaml", &flow)]);
    let lines = json!({ "lines": [
        { "sku": "a" }, { "sku": "b" }, { "sku": "c", "broken": true }, { "sku": "d" },
    ] });
    let (_, answer) = server.send("orders", &lines).await;
    let run_id = answer["run_id"].as_str().unwrap();
    // Two items are in flight at once while the target holds its answers.
    eventually("two concurrent requests", || async {
        (sink.received().len() == 2).then_some(())
    })
    .await;
    sink.release();
    let run = server.finished_run(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &run["steps"][0]["output"];
    let statuses: Vec<&str> = out["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "failed", "succeeded"]);
    assert!(out["items"][2]["error"]
        .as_str()
        .unwrap()
        .contains("could not connect"));
    let mut keys: Vec<String> = sink
        .received()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    keys.sort();
    let expected: Vec<String> = [0, 1, 3]
        .iter()
        .map(|i| format!("{run_id}:lines:{i}:post"))
        .collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn a_flow_step_starts_a_sub_flow_once_and_waits_for_its_result() {
    let child = "id: enrich-contact\ntrigger: { manual: }\nsteps:\n  - { id: pause, delay: { for: 1s } }\n  - { id: shape, map: { domain: \"{{lower trigger.body.domain}}\", caller: \"{{trigger.parent.flow}}\" } }\n";
    let failing = "id: always-fails\ntrigger: { manual: }\nsteps:\n  - { id: stop, http: { url: \"http://127.0.0.1:9/nope\" }, retry: { attempts: 1 } }\n";
    let parent = "id: leads\ntrigger: { webhook: }\nsteps:\n  - id: enrich\n    flow: { id: enrich-contact, payload: { domain: \"{{trigger.body.domain}}\" }, wait: true }\n  - { id: use, map: { domain: \"{{steps.enrich.output.domain}}\", by: \"{{steps.enrich.output.caller}}\" } }\n  - id: fire_and_forget\n    flow: { id: always-fails, payload: {} }\n  - id: doomed\n    flow: { id: always-fails, wait: true }\n";
    let server = Server::start(&[
        ("child.yaml", child),
        ("failing.yaml", failing),
        ("parent.yaml", parent),
    ]);
    let (_, answer) = server.send("leads", &json!({ "domain": "ACME.com" })).await;
    let run = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    let step = |id: &str| crate::support::step(&run, id).clone();
    assert_eq!(
        step("use")["output"],
        json!({ "domain": "acme.com", "by": "leads" })
    );
    assert_eq!(step("enrich")["output"]["status"], "succeeded");
    assert_eq!(step("fire_and_forget")["output"]["status"], "queued");
    assert_eq!(
        run["status"], "failed",
        "the awaited failing sub-flow fails the step"
    );
    assert!(step("doomed")["error"]["message"]
        .as_str()
        .unwrap()
        .contains("of flow `always-fails` failed"));
    // The parent looked at its child more than once while it ran: still one child run.
    assert_eq!(server.all_runs("enrich-contact").await.len(), 1);
    assert_eq!(server.all_runs("always-fails").await.len(), 2);
}

#[tokio::test]
async fn a_named_queue_serialises_runs_that_share_a_key() {
    let sink = Sink::start().await;
    let flow = format!(
        r#"
id: contacts
trigger: {{ webhook: }}
steps:
  - id: update
    queue: {{ name: crm, key: "{{{{lower trigger.body.email}}}}", concurrency: 1, gap: 1s }}
    http: {{ url: "{}/contacts", json: {{ email: "{{{{trigger.body.email}}}}", n: "{{{{trigger.body.n}}}}" }} }}
"#,
        sink.url
    );
    let server = Server::start(&[("contacts.yaml", &flow)]);
    let mut runs = Vec::new();
    for (n, email) in [(1, "ann@x.com"), (2, "ANN@x.com"), (3, "bob@x.com")] {
        let (_, answer) = server
            .send("contacts", &json!({ "email": email, "n": n }))
            .await;
        runs.push(answer["run_id"].as_str().unwrap().to_owned());
    }
    for id in &runs {
        let run = server.finished_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(
            run["steps"][0]["attempts"].as_array().unwrap().len(),
            1,
            "waiting is not an attempt"
        );
    }
    let received = sink.received();
    let at = |email: &str| -> Vec<std::time::Instant> {
        received
            .iter()
            .filter(|r| {
                r.body["email"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case(email)
            })
            .map(|r| r.at)
            .collect()
    };
    let ann = at("ann@x.com");
    assert_eq!(ann.len(), 2);
    let apart = if ann[1] > ann[0] {
        ann[1] - ann[0]
    } else {
        ann[0] - ann[1]
    };
    assert!(
        apart >= std::time::Duration::from_millis(950),
        "same key: one at a time, 1s apart ({apart:?})"
    );
    assert_eq!(at("bob@x.com").len(), 1);
}

#[tokio::test]
async fn foreach_fails_the_run_on_a_failed_item_by_default() {
    let sink = Sink::start().await;
    let dead = crate::support::unused_port();
    let flow = format!(
        r#"
id: strict
trigger: {{ webhook: }}
steps:
  - id: lines
    retry: {{ attempts: 1 }}
    foreach:
      items: "$.trigger.body.lines"
      steps:
        - id: post
          http: {{ url: "{{{{#if item.broken}}}}http://127.0.0.1:{dead}{{{{else}}}}{url}{{{{/if}}}}/lines", json: {{ sku: "{{{{item.sku}}}}" }} }}
  - id: after
    map: {{ never: true }}
"#,
        url = sink.url
    );
    let server = Server::start(&[("strict.yaml", &flow)]);
    let lines =
        json!({ "lines": [{ "sku": "a" }, { "sku": "b", "broken": true }, { "sku": "c" }] });
    let (_, answer) = server.send("strict", &lines).await;
    let run = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(run["reason"]
        .as_str()
        .unwrap()
        .contains("item 1 failed: step `post`"));
    assert_eq!(run["steps"][1]["status"], "skipped");
    let statuses: Vec<&str> = run["steps"][0]["error"]["detail"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "succeeded"],
        "every item's result is recorded"
    );
}

#[tokio::test]
async fn metrics_count_runs_steps_retries_and_the_queue() {
    let sink = Sink::scripted(&[503]).await;
    let flow = format!(
        "id: counted\ntrigger: {{ webhook: }}\nsteps:\n  - id: post\n    retry: {{ attempts: 2, backoff: fixed, initial: 10ms }}\n    http: {{ url: \"{}/x\" }}\n",
        sink.url
    );
    let parked = "id: parked\ntrigger: { webhook: }\nsteps:\n  - { id: wait, delay: { for: 1h } }\n  - { id: later, map: {} }\n";
    let server = Server::start_with(
        &[("counted.yaml", &flow), ("parked.yaml", parked)],
        &["--allow-outbound", "127.0.0.1", "--node-id", "hooks-1"],
        &[],
    );
    let (_, answer) = server.send("counted", &json!({})).await;
    let run = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "succeeded");
    let expected = [
        r#"hookflow_runs_total{flow="counted",status="succeeded"} 1"#,
        r#"hookflow_step_retries_total{flow="counted"} 1"#,
        r#"hookflow_step_duration_seconds_count{flow="counted",kind="http"} 2"#,
        r#"hookflow_step_duration_seconds_bucket{flow="counted",kind="http",le="+Inf"} 2"#,
        "hookflow_queue_depth 0",
        // One event at a time: a sync to disk each.
        "hookflow_ingest_syncs_total 1",
        // sled has no queue table to vacuum.
        "hookflow_store_queue_vacuums_total 0",
        r#"hookflow_node_info{node="hooks-1"} 1"#,
        "hookflow_commits_refused_total 0",
        "hookflow_step_panics_total 0",
    ];
    // The store's figures are counted at most once a second: wait for a count after the run.
    let metrics = eventually("the metrics to count the run", || async {
        let metrics = server.metrics().await;
        let all = expected
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line));
        all.then_some(metrics)
    })
    .await;
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookflow_store_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 0);

    // The store is counted at most once a second: the queue gauge catches up with runs parked in
    // a delay.
    for _ in 0..2 {
        server.send("parked", &json!({})).await;
    }
    eventually("the queue gauge to count the two parked runs", || async {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .any(|l| l == "hookflow_queue_depth 2")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn runs_can_be_searched_by_payload_text() {
    let flow = "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("leads.yaml", flow)]);
    let mut ids = Vec::new();
    for email in [
        "ann@acme.com",
        "bob@globex.com",
        "ANN@acme.com",
        "cy@initech.com",
    ] {
        let (_, answer) = server.send("leads", &json!({ "email": email })).await;
        ids.push(answer["run_id"].as_str().unwrap().to_owned());
    }
    let (status, page) = server.get("/api/v1/runs?q=ann@acme&limit=10").await;
    assert_eq!(status, 200);
    let found: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        [ids[2].as_str(), ids[0].as_str()],
        "newest first, case-insensitive"
    );
    // One result per page: the cursor goes on after it.
    let (_, first) = server.get("/api/v1/runs?q=acme&limit=1").await;
    assert_eq!(first["runs"][0]["id"], ids[2].as_str());
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = server
        .get(&format!("/api/v1/runs?q=acme&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second["runs"][0]["id"], ids[0].as_str());
}

#[tokio::test]
async fn a_paused_flow_refuses_events_until_it_is_enabled_again() {
    let paused =
        "id: paused\nenabled: false\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("paused.yaml", paused)]);
    let (status, answer) = server.send("paused", &json!({})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("flow_disabled"))
    );
    assert!(server.all_runs("paused").await.is_empty(), "nothing stored");
    let (_, flows) = server.get("/api/v1/flows").await;
    assert_eq!(flows["flows"][0]["enabled"], false);

    server.write_flow(
        "paused.yaml",
        &paused.replace("enabled: false", "enabled: true"),
    );
    eventually("the flow to be enabled", || async {
        let (status, _) = server.send("paused", &json!({})).await;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_hook_refuses_the_excess_and_logs_it() {
    let flow =
        "id: limited\ntrigger: { webhook: { rate_limit: 2/s } }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("limited.yaml", flow)]);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, answer) = server.send("limited", &json!({})).await;
        statuses.push((status, answer["code"].as_str().map(str::to_owned)));
    }
    assert_eq!(statuses[..2], [(200, None), (200, None)]);
    assert_eq!(statuses[2], (429, Some("rate_limited".to_owned())));
    let (_, log) = server.get("/api/v1/flows/limited/hooks").await;
    assert_eq!(log["requests"][0]["reason"], "rate_limited");
    assert_eq!(server.all_runs("limited").await.len(), 2);
}

#[tokio::test]
async fn a_schedule_deployed_while_running_starts_from_its_next_tick() {
    use time::OffsetDateTime;

    let mut server = Server::start(&[]);
    // Let ticks go by before the flow exists: none of them may fire once it is deployed.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let written = OffsetDateTime::now_utc();
    server.write_flow("every-second.yaml", EVERY_SECOND);
    eventually("two fires", || async {
        (server.all_runs("every-second").await.len() >= 2).then_some(())
    })
    .await;
    for at in fired_ticks(&server, "every-second").await {
        assert!(
            at > written,
            "tick {at} came before the flow was written ({written})"
        );
    }

    // `hookflow hooks` names the schedule, and the schema knows the trigger and the answer.
    let out = server.cli(&["hooks"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("every-second (schedule `* * * * * *` UTC)"),
        "{listed}"
    );
    assert!(server.stop_gracefully());
    let schema = crate::support::run_cli(&["schema"], &std::env::temp_dir());
    let schema = String::from_utf8_lossy(&schema.stdout);
    assert!(schema.contains("exactly one of `webhook`, `manual` or `schedule`"));
    assert!(schema.contains("answer 200") && !schema.contains("answer 202"));
}
