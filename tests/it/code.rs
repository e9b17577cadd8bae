//! The `code` step (JavaScript) end to end: a webhook run whose script computes from the event for
//! a later step, a thrown error with its line and column, an endless loop stopped at its limit
//! while another run completes, a syntax error at `hookflow validate`, and `hookflow run`, `test`
//! and the preview with a code step.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::support::{eventually, run_cli, step, Server};

/// Line 9 of this file is the script's line 2, which throws.
const ORDER: &str = r#"id: order
trigger: { webhook: }
steps:
  - id: total
    code:
      input: { items: "$.trigger.body.items", coupon: "{{trigger.body.coupon}}" }
      script: |
        console.log("items:", input.items.length);
        if (input.coupon === "BOOM") throw new RangeError("unknown coupon " + input.coupon);
        const sum = input.items.reduce((s, i) => s + i.price * i.qty, 0);
        return { sum, big: sum > 100 };
  - id: summary
    map:
      text: "Order of {{steps.total.sum}}"
      big: "{{steps.total.big}}"
"#;

/// Sends `body` to `flow`'s catch URL; the run once it is final.
async fn run_of(server: &Server, flow: &str, body: &Value) -> Value {
    let (status, answer) = server.send(flow, body).await;
    assert_eq!(status, 200, "{answer}");
    server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await
}

fn order_event(coupon: &str) -> Value {
    json!({ "coupon": coupon, "items": [{ "price": 40, "qty": 2 }, { "price": 25.5, "qty": 2 }] })
}

#[tokio::test]
async fn a_code_step_computes_from_the_event_for_the_next_step_and_fails_with_its_line() {
    let server = Server::start(&[("order.yaml", ORDER)]);

    let run = run_of(&server, "order", &order_event("")).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        step(&run, "total")["output"],
        json!({ "sum": 131, "big": true })
    );
    assert_eq!(
        step(&run, "total")["attempts"][0]["logs"],
        json!(["items: 2"])
    );
    assert_eq!(
        step(&run, "summary")["output"],
        json!({ "text": "Order of 131", "big": true })
    );

    let run = run_of(&server, "order", &order_event("BOOM")).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = &step(&run, "total")["error"];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("RangeError: unknown coupon BOOM (script line 2, column"),
        "{message}"
    );
    assert!(message.ends_with("flow file line 9)"), "{message}");
    assert_eq!(error["detail"]["line"], 2, "{error}");
    assert_eq!(error["detail"]["flow_line"], 9, "{error}");
    assert_eq!(error["retryable"], false, "{error}");
    let attempts = step(&run, "total")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 1, "not retried");
    assert_eq!(
        attempts[0]["logs"],
        json!(["items: 2"]),
        "kept when the script fails"
    );

    // The preview runs the script too.
    let (status, preview) = server
        .post(
            "/api/v1/flows/order/preview",
            &json!({ "event": { "body": order_event("") } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let total = preview["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "total")
        .unwrap();
    assert_eq!(total["output"]["sum"], 131, "{preview:#}");
    assert_eq!(total["logs"], json!(["items: 2"]), "{preview:#}");
}

#[tokio::test]
async fn the_run_page_and_the_preview_show_a_scripts_console_lines() {
    let server = Server::start(&[("order.yaml", ORDER)]);
    let samples = server.flows_dir().join("samples/order");
    std::fs::create_dir_all(&samples).unwrap();
    let sample = json!({ "body": order_event("") });
    std::fs::write(samples.join("cart.json"), sample.to_string()).unwrap();
    let run = run_of(&server, "order", &order_event("")).await;
    let run_id = run["id"].as_str().unwrap();

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/runs/{run_id}", server.base))
        .await
        .unwrap();
    browser
        .text_of("[data-step=total] .step-logs", "items: 2")
        .await;

    browser
        .client
        .goto(&format!("{}/#/flows/order", server.base))
        .await
        .unwrap();
    // Found again each time: the page renders again as its samples arrive.
    eventually("the sample in the payload box", || async {
        let payload = browser.find("#payload").await;
        let value = payload.prop("value").await.ok().flatten();
        value.is_some_and(|v| v.contains("25.5")).then_some(())
    })
    .await;
    browser.find("#preview").await.click().await.unwrap();
    browser
        .text_of("#preview-result [data-step=total] .step-logs", "items: 2")
        .await;
    browser.close().await;
}

#[tokio::test]
async fn scripts_past_their_limits_fail_while_another_run_completes() {
    let spin = "id: spin\ntrigger: { webhook: }\nsteps:\n  - id: forever\n    code:\n      cpu_time: 2s\n      script: |\n        while (true) {}\n";
    let hog = "id: hog\ntrigger: { webhook: }\nsteps:\n  - id: grab\n    code:\n      cpu_time: 10s\n      memory_mb: 8\n      script: let a=[]; while(true) a.push(new Array(1e6))\n";
    let quick = "id: quick\ntrigger: { webhook: }\nsteps:\n  - id: double\n    code:\n      input: \"$.trigger.body.n\"\n      script: return input * 2\n";
    let server = Server::start(&[
        ("spin.yaml", spin),
        ("hog.yaml", hog),
        ("quick.yaml", quick),
    ]);

    let started = Instant::now();
    let (_, spinning) = server.send("spin", &json!({})).await;
    let spinning = spinning["run_id"].as_str().unwrap().to_owned();
    // Wait until the loop is running, then start another run: it finishes while the loop spins.
    eventually("the loop to start", || async {
        let metrics = server.metrics().await;
        metrics
            .contains("\nhookflow_code_scripts_running 1\n")
            .then_some(())
    })
    .await;
    let run = run_of(&server, "quick", &json!({ "n": 21 })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "double")["output"], 42);
    let (_, still) = server.get(&format!("/api/v1/runs/{spinning}")).await;
    assert!(
        matches!(still["status"].as_str(), Some("queued" | "running")),
        "the loop is still within its 2s when the other run is done: {still:#}"
    );

    let run = server.finished_run(&spinning).await;
    assert!(started.elapsed().as_secs_f64() >= 2.0);
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = &step(&run, "forever")["error"];
    assert_eq!(
        error["message"], "the script ran longer than its limit of 2s and was stopped",
        "{error}"
    );
    assert!(server
        .metrics()
        .await
        .contains("hookflow_code_scripts_stopped_total{limit=\"cpu_time\"} 1\n"));

    let run = run_of(&server, "hog", &json!({})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(
        step(&run, "grab")["error"]["message"],
        "the script used more than its memory limit of 8 MB"
    );
    assert!(server
        .metrics()
        .await
        .contains("hookflow_code_scripts_stopped_total{limit=\"memory\"} 1\n"));
    // The server is unharmed.
    let run = run_of(&server, "quick", &json!({ "n": 1 })).await;
    assert_eq!(step(&run, "double")["output"], 2);
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn validate_reports_a_script_syntax_error_at_its_line_in_the_flow_file() {
    let dir = tempfile::tempdir().unwrap();
    let flow = "id: f\ntrigger:\n  webhook:\nsteps:\n  - id: js\n    code:\n      script: |\n        const a = 1;\n        const b = (a + ;\n  - id: greedy\n    code:\n      memory_mb: 100000\n      script: return 1\n";
    write(dir.path(), "f.yaml", flow);
    let out = run_cli(&["validate", "."], dir.path());
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    let syntax = shown
        .lines()
        .find(|l| l.contains("steps[0].code.script"))
        .unwrap_or_else(|| panic!("no script error in {shown}"));
    assert!(syntax.starts_with("./f.yaml:9:"), "{syntax}");
    assert!(
        syntax.contains("the script does not compile (script line 2, column"),
        "{syntax}"
    );
    assert!(syntax.contains("): SyntaxError"), "{syntax}");
    assert!(
        shown.contains("./f.yaml:12:7: steps[1].code.memory_mb: `memory_mb` must be at least 1 and at most 256"),
        "{shown}"
    );

    // Editors learn the step from the schema.
    let out = run_cli(&["schema"], dir.path());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let code = &schema["$defs"]["CodeSpec"];
    assert_eq!(code["required"], json!(["script"]), "{code:#}");
    for field in ["input", "script", "cpu_time", "memory_mb"] {
        assert!(
            code["properties"][field]["description"].is_string(),
            "{field}: {code:#}"
        );
    }
}

const DISCOUNT: &str = r#"id: discount
trigger: { webhook: }
steps:
  - id: price
    code:
      input: { amount: "$.trigger.body.amount", vip: "$.trigger.body.vip" }
      script: |
        console.log("pricing", input.amount);
        return { net: input.vip ? input.amount * 0.9 : input.amount };
  - id: quote
    map: { net: "{{steps.price.net}}" }
"#;

const DISCOUNT_TESTS: &str = r#"cases:
  - name: a VIP gets ten percent off
    event: { body: { amount: 200, vip: true } }
    expect:
      steps:
        price: { output: { net: 180 } }
        quote: { output: { net: 180 } }
  - name: a stubbed price is used as is
    event: { body: { amount: 200, vip: true } }
    stubs: { price: { output: { net: 1 } } }
    expect:
      steps:
        quote: { output: { net: 1 } }
"#;

#[test]
fn hookflow_run_and_test_execute_code_steps_and_stub_them() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "flows/discount.yaml", DISCOUNT);
    write(dir.path(), "flows/discount.test.yaml", DISCOUNT_TESTS);
    write(
        dir.path(),
        "event.json",
        r#"{ "amount": 50, "vip": false }"#,
    );

    let out = run_cli(&["test", "flows"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 case(s) passed, 0 failed"),
        "{}",
        text(&out)
    );

    let out = run_cli(
        &["run", "flows/discount.yaml", "--event", "event.json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"net\": 50"), "{}", text(&out));
    assert!(
        text(&out).contains("  console: pricing 50\n"),
        "{}",
        text(&out)
    );
}
