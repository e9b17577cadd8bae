//! The CLI as a user runs it: `run` (local, with and without `--dry-run`), `hooks`, `runs list`,
//! `runs show`, `inspect`, `schema`, and the shipped flows end to end.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::{eventually, run_cli, Server, Sink};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn run_dry_run_renders_http_actions_without_sending() {
    let out = run_cli(
        &[
            "run",
            "flows/plan-change-sync.yaml",
            "--event",
            "examples/events/plan-change.json",
            "--dry-run",
        ],
        repo(),
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("✔ shape (map)"), "{text}");
    assert!(text.contains("\"plan_code\": \"PREMIUM\""), "{text}");
    assert!(text.contains("\"dry_run\": true"), "{text}");
    assert!(
        text.contains("\"email\": \"john.doe@example.com\""),
        "{text}"
    );
    assert!(text.contains(": succeeded"), "{text}");
}

// Multi-threaded: `run_cli` blocks its thread while the sink must keep answering.
#[tokio::test(flavor = "multi_thread")]
async fn run_sends_for_real_and_reports_filtered_events() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("f.yaml");
    let event = dir.path().join("e.json");
    std::fs::write(&flow, format!("id: f\ntrigger: {{ manual: }}\nsteps:\n  - id: gate\n    filter: {{ all: [{{ value: \"{{{{trigger.body.go}}}}\", equals: true }}] }}\n  - id: send\n    http: {{ url: \"{}/x\", json: {{ n: \"{{{{trigger.body.n}}}}\" }} }}\n", sink.url)).unwrap();

    let run_with = |body: &str| {
        std::fs::write(&event, body).unwrap();
        let args = [
            "run",
            flow.to_str().unwrap(),
            "--event",
            event.to_str().unwrap(),
            "--allow-outbound",
            "127.0.0.1",
        ];
        run_cli(&args, dir.path())
    };

    let out = run_with(r#"{"go": true, "n": 7}"#);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].body, json!({ "n": 7 }));

    let out = run_with(r#"{"go": false}"#);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(": filtered"), "{text}");
    assert_eq!(sink.received().len(), 1, "nothing sent when filtered");
}

#[test]
fn schema_describes_every_step_kind() {
    let out = run_cli(&["schema"], repo());
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = schema["properties"]["steps"]["items"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "code",
            "delay",
            "email",
            "filter",
            "flow",
            "foreach",
            "http",
            "hubspot",
            "map",
            "slack",
            "storage",
            "stripe",
            "switch",
            "wait_for_callback"
        ]
    );
    assert!(schema["properties"]["trigger"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_flows_succeed_offline_and_the_cli_shows_them() {
    // On a free port, as shipped: their targets default to `${server.url}/inspect/…`, this
    // server's own request inspector, whatever its port.
    let flows: Vec<(String, String)> = ["plan-change-sync.yaml", "new-lead-routing.yaml"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read_to_string(repo().join("flows").join(f)).unwrap(),
            )
        })
        .collect();
    let flows: Vec<(&str, &str)> = flows
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let server = Server::start_with(&flows, &[], &[]);
    let client = ["--server", server.base.as_str()];

    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/events/plan-change.json")).unwrap(),
    )
    .unwrap();
    let (status, ack) = server.send("plan-change-sync", &event).await;
    assert_eq!(status, 200);
    let run_id = ack["run_id"].as_str().unwrap();
    let run = server.finished_run(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let lead: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/events/new-lead.json")).unwrap(),
    )
    .unwrap();
    let (_, lead_ack) = server.send("new-lead-routing", &lead).await;
    assert_eq!(
        server
            .finished_run(lead_ack["run_id"].as_str().unwrap())
            .await["status"],
        "succeeded"
    );

    let hooks = stdout(&run_cli(&[&["hooks"][..], &client].concat(), repo()));
    assert!(
        hooks.contains(&server.catch_url("plan-change-sync")),
        "{hooks}"
    );

    let list = stdout(&run_cli(&[&["runs", "list"][..], &client].concat(), repo()));
    assert!(
        list.contains(run_id) && list.contains("succeeded"),
        "{list}"
    );

    let show = stdout(&run_cli(
        &[&["runs", "show", run_id][..], &client].concat(),
        repo(),
    ));
    for needle in [
        "status   succeeded",
        "john.doe@example.com",
        "step update_crm (http) — succeeded, 1 attempt(s)",
        "\"plan_code\": \"PREMIUM\"",
    ] {
        assert!(show.contains(needle), "`{needle}` missing from:\n{show}");
    }

    let inspected = eventually("the inspector to list the CRM call", || async {
        let out = run_cli(&[&["inspect", "crm"][..], &client].concat(), repo());
        let text = stdout(&out);
        text.contains("\"plan_code\": \"PREMIUM\"").then_some(text)
    })
    .await;
    assert!(inspected.contains("POST /inspect/crm"), "{inspected}");

    let bad = run_cli(
        &["runs", "show", "run_nope", "--server", &server.base],
        repo(),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid run id"));
}

#[test]
fn schedules_and_ticks_are_checked_offline_from_the_flow_file() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("weekday.yaml");
    std::fs::write(
        &flow,
        "id: weekday-summary\ntrigger:\n  schedule: { cron: \"0 9 * * MON-FRI\", timezone: America/New_York }\nsteps:\n  - { id: today, map: { at: \"{{trigger.body.scheduled_at}}\" } }\n",
    )
    .unwrap();
    let flow = flow.to_str().unwrap();

    // Across a weekend and the change to daylight saving: 9:00 local stays 9:00, UTC moves.
    let out = run_cli(
        &[
            "schedules",
            flow,
            "--count",
            "3",
            "--from",
            "2026-03-06T00:00",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_owned()).collect();
    assert_eq!(
        lines,
        [
            "weekday-summary  `0 9 * * MON-FRI` (America/New_York)",
            "2026-03-06 09:00:00 Fri EST (-05:00)    2026-03-06T14:00:00Z",
            "2026-03-09 09:00:00 Mon EDT (-04:00)    2026-03-09T13:00:00Z",
            "2026-03-10 09:00:00 Tue EDT (-04:00)    2026-03-10T13:00:00Z",
        ]
    );

    // A run as the Monday tick's fire would be: its trigger holds the tick.
    let out = run_cli(
        &["run", flow, "--tick", "2026-03-09T09:00", "--dry-run"],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("\"at\": \"2026-03-09T13:00:00Z\""),
        "{}",
        stdout(&out)
    );
    let out = run_cli(
        &["run", flow, "--tick", "2026-03-08T09:00", "--dry-run"],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "is not a tick of `0 9 * * MON-FRI`; the next is 2026-03-09 09:00:00 Mon EDT"
        ),
        "{stderr}"
    );
    let out = run_cli(
        &["run", flow, "--tick", "next monday", "--dry-run"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("write YYYY-MM-DDTHH:MM (in America/New_York)"));
}

#[tokio::test]
async fn schedules_say_when_a_flow_is_paused() {
    let paused = "id: paused\nenabled: false\ntrigger:\n  schedule: { cron: \"0 9 * * *\" }\nsteps:\n  - { id: a, map: {} }\n";
    let running = "id: running\ntrigger:\n  schedule: { cron: \"0 9 * * *\" }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("paused.yaml", paused), ("running.yaml", running)]);
    let listed = stdout(&server.cli(&["schedules"]));
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{id}  ")))
            .unwrap_or_else(|| panic!("no {id} in {listed}"))
            .to_owned()
    };
    assert!(
        line("paused").ends_with(
            "PAUSED (`enabled: false`): these ticks do not fire until the flow is enabled"
        ),
        "{listed}"
    );
    assert!(!line("running").contains("PAUSED"), "{listed}");

    let offline = server.flows_dir().join("paused.yaml");
    let out = run_cli(&["schedules", offline.to_str().unwrap()], repo());
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).lines().next().unwrap().contains("PAUSED"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn run_ignores_an_event_type_the_flow_does_not_take_as_the_hook_would() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("paid.yaml");
    std::fs::write(
        &flow,
        "id: paid\ntrigger:\n  webhook: { events: [invoice.paid] }\nsteps:\n  - { id: a, map: { x: 1 } }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("other.json"),
        r#"{"type": "invoice.voided"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("paid.json"), r#"{"type": "invoice.paid"}"#).unwrap();
    let run = |event: &str| {
        run_cli(
            &["run", "paid.yaml", "--event", event, "--dry-run"],
            dir.path(),
        )
    };
    let out = run("other.json");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        "ignored: event type `invoice.voided` is not in this flow's events: the catch hook answers `ignored` and starts no run"
    );
    let out = run("paid.json");
    assert!(stdout(&out).contains("\"x\": 1"), "{}", stdout(&out));
}
