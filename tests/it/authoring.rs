//! The authoring loop as a user runs it: samples captured from the real server, a mapping preview
//! that flags a typo with its line and a suggestion, flow tests with every expectation kind and a
//! failure's diff, and `hookflow diff` against a running server.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::support::{eventually, hmac_sha256, hookflow, run_cli, Server};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

const PAYMENTS: &str = r#"id: payments
trigger: { webhook: }
steps:
  - id: paid
    filter: { value: "{{trigger.body.data.object.paid_at}}", exists: true }
  - id: shape
    map:
      email: "{{lower trigger.body.customer_email}}"
      amount: "{{trigger.body.data.object.amount}}"
  - id: notify
    http:
      url: https://crm.example.com/payments
      json: { email: "{{steps.shape.email}}", amount: "{{steps.shape.amount}}" }
"#;

const PAID: &str = r#"{ "method": "POST", "headers": {}, "query": {},
  "body": { "id": "evt_1", "data": { "object": { "customer_email": "A@X.COM", "amount": 4900, "paid_at": 1 } } } }"#;

#[test]
fn a_typo_in_a_mapping_is_flagged_with_its_line_and_the_path_meant() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "flows/payments.yaml", PAYMENTS);
    write(dir.path(), "flows/samples/payments/paid.json", PAID);
    let expected = "flows/payments.yaml:8:14: steps[1].map.email: `trigger.body.customer_email` \
                    resolved to nothing — did you mean `trigger.body.data.object.customer_email`?";

    let out = run_cli(
        &[
            "run",
            "flows/payments.yaml",
            "--sample",
            "paid",
            "--dry-run",
        ],
        dir.path(),
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("1 expression(s) resolved to nothing"),
        "{shown}"
    );
    assert!(shown.contains(expected), "{shown}");
    assert!(
        shown.contains("\"amount\": 4900"),
        "the rendered input is shown: {shown}"
    );

    let out = run_cli(&["validate", "--samples", "flows"], dir.path());
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("{expected} (sample paid)")),
        "{shown}"
    );

    let fixed = PAYMENTS.replace(
        "trigger.body.customer_email",
        "trigger.body.data.object.customer_email",
    );
    write(dir.path(), "flows/payments.yaml", &fixed);
    let out = run_cli(&["validate", "--samples", "flows"], dir.path());
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("1 flow(s) valid, 1 sample(s) resolve every expression"),
        "{shown}"
    );
}

const PAYMENTS_TESTS: &str = r#"cases:
  - name: a paid invoice is posted with its amount
    sample: paid
    stubs:
      notify: { status: 201, body: { id: pay_1 } }
    expect:
      status: succeeded
      steps:
        shape:
          status: succeeded
          output: { email: a@x.com, amount: 4900 }
        notify:
          request:
            method: POST
            url: https://crm.example.com/payments
            headers: {}
            query: {}
            json: { email: a@x.com, amount: 4900 }
          request_contains: { json: { email: a@x.com } }
          output_contains: { status: 201, body: { id: pay_1 } }
  - name: an unpaid invoice is filtered
    event: { body: { data: { object: { customer_email: b@x.com } } } }
    expect:
      status: filtered
      reason_contains: "paid"
      steps:
        notify: { status: skipped }
  - name: a refused post fails the run
    sample: paid
    stubs:
      notify: { status: 409, body: { error: duplicate } }
    expect:
      status: failed
      steps:
        notify: { status: failed, error_contains: "409" }
  - name: a wrong expectation shows a diff
    sample: paid
    expect:
      steps:
        shape:
          output_contains: { email: a@x.com, amount: 5000 }
"#;

const ROUTING: &str = r#"id: routing
trigger: { webhook: }
steps:
  - id: route
    switch:
      cases:
        - path: enterprise
          when: { value: "{{trigger.body.employees}}", gte: 1000 }
          steps: [assign_ae]
      default: [nurture]
  - id: assign_ae
    map: { owner: ae }
  - id: nurture
    map: { sequence: smb }
"#;

const ROUTING_TESTS: &str = r#"cases:
  - name: a big company goes to an account executive
    event: { body: { employees: 5000 } }
    expect:
      steps:
        route: { path: enterprise }
        nurture: { status: skipped }
  - name: a small one is nurtured
    event: { body: { employees: 12 } }
    expect:
      steps:
        route: { path: default }
        assign_ae: { status: skipped }
        nurture: { output: { sequence: smb } }
"#;

#[test]
fn flow_tests_check_every_expectation_and_show_a_diff_when_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = PAYMENTS.replace(
        "trigger.body.customer_email",
        "trigger.body.data.object.customer_email",
    );
    write(dir.path(), "flows/payments.yaml", &fixed);
    write(dir.path(), "flows/samples/payments/paid.json", PAID);
    write(dir.path(), "flows/payments.test.yaml", PAYMENTS_TESTS);
    write(dir.path(), "flows/routing.yaml", ROUTING);
    write(dir.path(), "flows/routing.test.yaml", ROUTING_TESTS);

    let out = run_cli(&["test", "flows"], dir.path());
    let shown = text(&out);
    assert!(
        !out.status.success(),
        "a failing case fails the command: {shown}"
    );
    for passing in [
        "✔ flows/payments.test.yaml › a paid invoice is posted with its amount",
        "✔ flows/payments.test.yaml › an unpaid invoice is filtered",
        "✔ flows/payments.test.yaml › a refused post fails the run",
        "✔ flows/routing.test.yaml › a big company goes to an account executive",
        "✔ flows/routing.test.yaml › a small one is nurtured",
    ] {
        assert!(shown.contains(passing), "{passing} in\n{shown}");
    }
    let failure = "✘ flows/payments.test.yaml › a wrong expectation shows a diff
    step `shape`: the output does not contain what is expected:
    --- expected
    +++ actual
    @@ -1,4 +1,4 @@
     {
       \"email\": \"a@x.com\",
    -  \"amount\": 5000
    +  \"amount\": 4900
     }";
    assert!(shown.contains(failure), "{shown}");
    assert!(shown.contains("5 case(s) passed, 1 failed"), "{shown}");

    // A stub for a step the flow does not have is a mistake in the test, said plainly.
    write(
        dir.path(),
        "flows/payments.test.yaml",
        "cases:\n  - name: typo\n    sample: paid\n    stubs: { notfy: { status: 200 } }\n",
    );
    let out = run_cli(&["test"], dir.path());
    assert!(
        text(&out).contains("the flow has no step `notfy`"),
        "{}",
        text(&out)
    );
}

const PUSHES: &str = r#"id: pushes
trigger:
  webhook:
    verify: { provider: github, secret: "${env:PUSHES_TEST_SECRET}" }
    events: [push]
steps:
  - id: shape
    map: { repo: "{{trigger.body.repository}}" }
"#;

const PUSHES_TESTS: &str = r#"secrets: { PUSHES_TEST_SECRET: a-test-secret }
cases:
  - name: a push runs once, its redelivery is a duplicate
    deliveries:
      - event: { headers: { X-GitHub-Event: push, X-GitHub-Delivery: d-1 }, body: { repository: hookflow } }
        sign: true
        expect: { hook: queued, steps: { shape: { output: { repo: hookflow } } } }
      - event: { headers: { X-GitHub-Event: push, X-GitHub-Delivery: d-1 }, body: { repository: hookflow } }
        sign: true
        expect: { hook: duplicate, reason_contains: "`d-1`" }
  - name: a star is ignored
    event: { headers: { X-GitHub-Event: star, X-GitHub-Delivery: d-2 }, body: {} }
    sign: true
    expect: { hook: ignored, reason_contains: "event type `star`" }
  - name: an unsigned push is rejected
    event: { headers: { X-GitHub-Event: push }, body: {} }
    expect: { hook: rejected, reason_contains: "invalid_signature: the github signature check failed: the x-hub-signature-256 header is missing" }
  - name: a wrong expectation about the hook
    event: { headers: { X-GitHub-Event: star }, body: {} }
    sign: true
    expect: { hook: queued, status: succeeded }
"#;

#[test]
fn flow_tests_check_the_catch_hook_as_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "flows/pushes.yaml", PUSHES);
    write(dir.path(), "flows/pushes.test.yaml", PUSHES_TESTS);
    let out = run_cli(&["test", "flows"], dir.path());
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("3 case(s) passed, 1 failed"), "{shown}");
    assert!(
        shown.contains("✘ flows/pushes.test.yaml › a wrong expectation about the hook\n    the hook answered `ignored` (event type `star` is not in this flow's events), expected `queued`\n    the hook started no run (`ignored`), but the case expects a run's status or steps"),
        "{shown}"
    );

    // A case gives its events inline or under `deliveries`, not both.
    let both = "secrets: { PUSHES_TEST_SECRET: s }\ncases:\n  - name: both\n    sign: true\n    deliveries: []\n";
    write(dir.path(), "flows/pushes.test.yaml", both);
    let shown = text(&run_cli(&["test", "flows"], dir.path()));
    assert!(
        shown.contains("a case with `deliveries` gives each its own"),
        "{shown}"
    );
}

#[test]
fn the_shipped_flows_have_samples_and_passing_tests() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_cli(&["test", "flows", "docs/recipes"], repo);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(", 0 failed"), "{}", text(&out));
    let out = run_cli(&["validate", "--samples"], repo);
    assert!(out.status.success(), "{}", text(&out));
}

fn github_signature(body: &str) -> String {
    let signature = hmac_sha256(b"gh-secret-42", body.as_bytes());
    format!("sha256={}", hex::encode(signature))
}

#[tokio::test]
async fn capture_keeps_the_next_events_as_redacted_samples_and_the_runs_go_on() {
    let flow = r#"
id: pushes
trigger:
  webhook:
    verify: { provider: github, secret: "${env:GH_SECRET}" }
steps:
  - id: shape
    map: { repo: "{{trigger.body.repository.full_name}}", token: "{{trigger.query.token}}" }
"#;
    let server = Server::start_with(
        &[("pushes.yaml", flow)],
        &[],
        &[("GH_SECRET", "gh-secret-42")],
    );
    let capture = hookflow()
        .args([
            "capture",
            "pushes",
            "--count",
            "2",
            "--server",
            &server.base,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the capture to be armed", || async {
        let (_, status) = server.get("/api/v1/flows/pushes/capture").await;
        (status["remaining"] == 2).then_some(())
    })
    .await;

    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for n in 1..=3 {
        let body = json!({ "repository": { "full_name": format!("acme/app{n}") } }).to_string();
        let answer: Value = client
            .post(format!("{}?token=gh-secret-42", server.catch_url("pushes")))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", github_signature(&body))
            .header("authorization", "Bearer do-not-keep")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        runs.push(answer["run_id"].as_str().unwrap().to_owned());
    }
    let out = tokio::task::spawn_blocking(move || capture.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("2 sample(s) written"), "{shown}");
    for id in &runs {
        assert_eq!(
            server.finished_run(id).await["status"],
            "succeeded",
            "runs are unaffected"
        );
    }

    let dir = server.flows_dir().join("samples/pushes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "only the next two events: {files:?}");
    let raw = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        !raw.contains("gh-secret-42") && !raw.contains("do-not-keep"),
        "{raw}"
    );
    let sample: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(sample["body"]["repository"]["full_name"], "acme/app1");
    assert_eq!(sample["headers"]["x-hub-signature-256"], "[redacted]");
    assert_eq!(sample["query"]["token"], "[redacted]");

    // The captured sample previews through the API (what the UI's flow page shows).
    let name = files[1].file_stem().unwrap().to_str().unwrap();
    let (status, preview) = server
        .post("/api/v1/flows/pushes/preview", &json!({ "sample": name }))
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["steps"][0]["output"]["repo"], "acme/app2");
    assert_eq!(preview["unresolved"], json!([]));
}

#[tokio::test]
async fn diff_shows_what_deploying_the_flows_on_disk_would_change() {
    let leads = "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { email: \"{{trigger.body.email}}\" } }\n  - { id: post, http: { url: \"https://crm.example.com\" } }\n";
    let old = "id: old\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: { x: 1 } }\n";
    let server = Server::start(&[("leads.yaml", leads), ("old.yaml", old)]);
    let check = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hookflow"))
            .args(args)
            .args(["--server", &server.base])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let flows = server.flows_dir();
    let flows = flows.to_str().unwrap();
    assert!(check(&["diff", flows]).contains("No changes"));

    server.write_flow(
        "leads.yaml",
        "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { email: \"{{lower trigger.body.email}}\" } }\n  - { id: score, map: { hot: true } }\n",
    );
    std::fs::remove_file(server.flows_dir().join("old.yaml")).unwrap();
    server.write_flow(
        "new.yaml",
        "id: new\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: {} }\n",
    );
    let plan = check(&["diff", flows]);
    for line in [
        "+ new (",
        "~ leads (",
        "    ~ step shape (map): map.email",
        "    + step score (map)",
        "    - step post (http)",
        "- old: deployed, no longer on disk",
        "Plan: 1 to add, 1 to change, 1 to remove.",
    ] {
        assert!(plan.contains(line), "{line} in\n{plan}");
    }
}
