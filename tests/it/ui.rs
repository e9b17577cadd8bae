//! The browser UI in a real headless Chromium against the live server's REST API, driven over
//! WebDriver (pages read as rendered, clicks, forms).

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::support::{eventually, Server};

/// The home page of the server at `base` as Chromium shows it (scripts run, fetches answered), as
/// HTML. Read over WebDriver: the page keeps its live stream open, which `--dump-dom` would wait on
/// forever.
pub async fn home_page(base: &str) -> String {
    let browser = Browser::start().await;
    browser.client.goto(base).await.unwrap();
    // The page is drawn at once, the catch-hook log last.
    browser.find("#hook-log").await;
    let html = browser.client.source().await.unwrap();
    browser.close().await;
    html
}

#[tokio::test]
async fn the_hook_log_shows_refused_requests_with_their_reason() {
    let flow = r#"
id: signed
trigger:
  webhook:
    verify: { provider: github, secret: s3cret }
steps:
  - { id: shape, map: { x: 1 } }
"#;
    let deduped = r#"
id: deduped
trigger:
  webhook:
    dedupe: "{{trigger.body.id}}"
steps:
  - { id: shape, map: { x: 1 } }
"#;
    let server = Server::start(&[("signed.yaml", flow), ("deduped.yaml", deduped)]);
    let (status, _) = server.send("signed", &json!({ "id": 1 })).await;
    assert_eq!(status, 401);
    let (_, first) = server.send("deduped", &json!({ "id": 7 })).await;
    let (_, again) = server.send("deduped", &json!({ "id": 7 })).await;
    assert_eq!(again["status"], "duplicate");
    let run_id = first["run_id"].as_str().unwrap();

    let page = home_page(&server.base).await;
    // The flow refusing every request says so, with the reason; the log itself starts folded.
    let flow_row = page
        .split("<tr ")
        .find(|r| r.contains(r#"data-flow-row="signed""#))
        .unwrap();
    assert!(flow_row.contains(r#"data-health="refusing""#), "{flow_row}");
    assert!(
        flow_row.contains("refusing every request: 1 of the last 1 refused — invalid_signature"),
        "{flow_row}"
    );
    assert!(page.contains(r#"<details id="hook-log">"#), "folded");
    // Each taken request links to its run; a duplicate to the original run.
    let row = |outcome: &str| {
        let marker = format!(r#"data-flow="deduped" data-outcome="{outcome}""#);
        page.split("<tr ")
            .find(|r| r.contains(&marker))
            .unwrap_or_else(|| panic!("no {outcome} row in\n{page}"))
    };
    let link = format!(r##"href="#/runs/{run_id}""##);
    let duplicate = row("duplicate");
    assert!(
        duplicate.contains(&link) && duplicate.contains("original run"),
        "{duplicate}"
    );
    let queued = row("queued");
    assert!(
        queued.contains(&link) && queued.contains(">run<"),
        "{queued}"
    );
    let refused = page
        .split("<tr ")
        .find(|r| r.contains(r#"data-flow="signed""#))
        .unwrap_or_else(|| panic!("no hook log row for the flow in\n{page}"));
    assert!(refused.contains(r#"data-outcome="rejected""#), "{refused}");
    assert!(refused.contains("invalid_signature"), "{refused}");
    assert!(
        refused.contains("missing"),
        "the detail says what was missing: {refused}"
    );
}

const PAYMENTS: &str = r#"id: payments
name: Paid invoices to the CRM
trigger: { webhook: }
steps:
  - id: paid
    filter: { value: "{{trigger.body.data.object.paid_at}}", exists: true }
  - id: shape
    map:
      email: "{{lower trigger.body.customer_email}}"
      day: "{{date_format trigger.received_at 'YYYY-MM-DD'}}"
"#;

#[tokio::test]
async fn the_flow_page_previews_a_sample_marks_the_typo_and_captures_new_samples() {
    let server = Server::start(&[("payments.yaml", PAYMENTS)]);
    let samples = server.flows_dir().join("samples/payments");
    std::fs::create_dir_all(&samples).unwrap();
    let paid =
        json!({ "body": { "data": { "object": { "customer_email": "A@X.COM", "paid_at": 1 } } } });
    std::fs::write(samples.join("paid.json"), paid.to_string()).unwrap();

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/flows/payments", server.base))
        .await
        .unwrap();
    // The payload box starts with the latest sample.
    let payload = browser.find("#payload").await;
    eventually("the sample in the payload box", || async {
        let value = payload.prop("value").await.unwrap().unwrap_or_default();
        value.contains("A@X.COM").then_some(())
    })
    .await;
    browser.find("#preview").await.click().await.unwrap();
    let flag = browser.text_of(".unresolved", "did you mean").await;
    assert!(flag.contains("line 9"), "{flag}");
    assert!(flag.contains("trigger.body.customer_email"), "{flag}");
    assert!(
        flag.contains("trigger.body.data.object.customer_email"),
        "{flag}"
    );
    let line = browser.find("#line-9").await;
    assert!(line
        .attr("class")
        .await
        .unwrap()
        .unwrap_or_default()
        .contains("flagged"));
    assert!(line.text().await.unwrap().contains("email:"));
    // The flow's warnings show with the preview, at their line.
    let warning = browser.text_of(".warning", "strftime").await;
    assert!(
        warning.contains("line 10") && warning.contains("write `%Y-%m-%d`"),
        "{warning}"
    );
    // The flag links to its line.
    browser
        .find("[data-goto-line='9']")
        .await
        .click()
        .await
        .unwrap();
    let focused = browser
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("line-9"));
    browser.text_of("[data-step=shape]", "succeeded").await;
    browser.screenshot("flow-preview").await;

    // Capture the next event from the page.
    browser.find("#capture").await.click().await.unwrap();
    browser.text_of("#capture-status", "Waiting for 1").await;
    let (status, _) = server
        .send("payments", &json!({ "customer_email": "b@y.com" }))
        .await;
    assert_eq!(status, 200);
    let shown = browser.text_of("#capture-status", "Captured").await;
    let written = eventually("the captured sample file", || async {
        let files: Vec<_> = std::fs::read_dir(&samples)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "paid.json")
            .collect();
        (files.len() == 1).then(|| files[0].clone())
    })
    .await;
    let captured = written.trim_end_matches(".json");
    assert!(shown.contains(captured), "{shown} vs {written}");
    // The sample list has the captured sample, chosen, and it fills the payload box.
    let chosen = browser.find("#sample").await.prop("value").await.unwrap();
    assert_eq!(chosen.as_deref(), Some(captured));
    let value = payload.prop("value").await.unwrap().unwrap_or_default();
    assert!(value.contains("b@y.com"), "{value}");

    // Start a run with a payload typed into the page; the answer links to the run's page.
    payload.clear().await.unwrap();
    payload
        .send_keys(r#"{"customer_email": "typed@example.com"}"#)
        .await
        .unwrap();
    browser.find("#start-run").await.click().await.unwrap();
    let started = browser.text_of("#run-status", "Started").await;
    let run_id = started.trim_start_matches("Started ").trim();
    let run = server.finished_run(run_id).await;
    assert_eq!(
        run["event"]["trigger"]["body"]["customer_email"],
        "typed@example.com"
    );
    // The flow's recent runs show it without a reload.
    browser
        .find(&format!(
            "#runs tr[data-run='{run_id}'][data-status='filtered']"
        ))
        .await;
    browser
        .find(&format!("#run-status a[href='#/runs/{run_id}']"))
        .await
        .click()
        .await
        .unwrap();
    browser.text_of("#run-state", "filtered").await;
    browser.close().await;
}

#[tokio::test]
async fn the_home_page_lists_new_runs_live() {
    let flow = "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { n: \"{{trigger.body.n}}\" } }\n";
    let server = Server::start(&[("leads.yaml", flow)]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/", server.base))
        .await
        .unwrap();
    browser.find("#live[data-state='live']").await;
    let (_, answer) = server.send("leads", &json!({ "n": 1 })).await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    browser
        .find(&format!(
            "#runs tr[data-run='{run_id}'][data-status='succeeded']"
        ))
        .await;
    browser.close().await;
}

#[tokio::test]
async fn runs_appear_live_and_a_failed_run_is_retried_from_its_page() {
    let sink = crate::support::Sink::scripted(&[500]).await;
    let flow = format!(
        r#"
id: leads
trigger: {{ webhook: }}
steps:
  - id: big
    filter: {{ value: "{{{{trigger.body.employees}}}}", gte: 10 }}
  - id: shape
    map: {{ email: "{{{{lower trigger.body.email}}}}" }}
  - id: deliver
    retry: {{ attempts: 1 }}
    http: {{ url: "{}/crm", json: "$.steps.shape" }}
"#,
        sink.url
    );
    let server = Server::start(&[("leads.yaml", &flow)]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/runs", server.base))
        .await
        .unwrap();
    browser.find("#run-filters").await;

    // A new run appears without a reload, and turns failed (the CRM answers 500 once).
    let (_, answer) = server
        .send("leads", &json!({ "email": "Ann@X.com", "employees": 50 }))
        .await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    browser
        .find(&format!("tr[data-run='{run_id}'][data-status='failed']"))
        .await;

    // Its page shows each step's output; retrying from the page makes it succeed.
    browser
        .find(&format!("tr[data-run='{run_id}'] a[href^='#/runs/']"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_of("[data-step=shape] .output", "ann@x.com")
        .await;
    browser
        .text_of("[data-step=deliver] .step-error", "500")
        .await;
    // The failed step's request is open beside its (empty) response, each with a copy button;
    // the JSON tree folds.
    let sent = browser
        .text_of("[data-step=deliver] .tree.input", "ann@x.com")
        .await;
    assert!(sent.contains("/crm"), "the request names its URL: {sent}");
    let copy = browser
        .find("[data-step=deliver] .json-block summary .copy")
        .await;
    assert_eq!(
        copy.attr("aria-label").await.unwrap().as_deref(),
        Some("Copy request sent")
    );
    let fold = browser
        .find("[data-step=shape] .tree.output > details > summary")
        .await;
    let email = browser
        .find("[data-step=shape] .tree.output .v-string")
        .await;
    assert!(email.is_displayed().await.unwrap());
    fold.click().await.unwrap();
    assert!(!email.is_displayed().await.unwrap(), "folded away");
    browser.find("#retry").await.click().await.unwrap();
    browser.client.accept_alert().await.unwrap();
    browser.text_of("#run-state", "succeeded").await;
    browser
        .text_of(
            "[data-step=deliver] tr[data-attempt='2']",
            "manual retry by anyone",
        )
        .await;
    browser.text_of("#run-started-by", "webhook, retried").await;
    // The step graph, coloured by the run's statuses.
    let node = browser
        .find("#run-graph g.node.succeeded[data-node='deliver']")
        .await;
    // A graph node is focusable and opens its step.
    assert_eq!(node.attr("tabindex").await.unwrap().as_deref(), Some("0"));
    node.click().await.unwrap();
    let opened = browser
        .client
        .execute(
            "const a = document.activeElement; return [a.dataset.step, a.querySelector('.json-block').open]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(opened, json!(["deliver", true]));
    browser.screenshot("run").await;

    // Replay asks on which revision, naming the step that will call the CRM again.
    browser.find("#replay").await.click().await.unwrap();
    browser
        .text_of(
            "#replay-dialog .callers",
            "will call out again: deliver (http)",
        )
        .await;
    browser
        .find("#replay-dialog input[value=original]")
        .await
        .click()
        .await
        .unwrap();
    browser.screenshot("replay-dialog").await;
    browser
        .find("#replay-dialog button[value=replay]")
        .await
        .click()
        .await
        .unwrap();
    browser.find(&format!("a[href='#/runs/{run_id}']")).await;
    let replayed = browser.client.current_url().await.unwrap();
    let new_id = replayed.fragment().unwrap().trim_start_matches("/runs/");
    let (_, new_run) = server.get(&format!("/api/v1/runs/{new_id}")).await;
    assert_eq!(new_run["replay_of"], run_id.as_str());
    browser.text_of("#run-started-by", "replay").await;

    // Filter by status.
    let (_, small) = server
        .send("leads", &json!({ "email": "b@y.com", "employees": 2 }))
        .await;
    let small_id = small["run_id"].as_str().unwrap().to_owned();
    server.finished_run(&small_id).await;
    browser
        .client
        .goto(&format!("{}/#/runs?status=filtered", server.base))
        .await
        .unwrap();
    browser
        .text_of(
            &format!("tr[data-run='{small_id}']"),
            "Filtered by step big: trigger.body.employees (was 2) is not greater than or equal to 10",
        )
        .await;
    browser.screenshot("runs").await;
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("#runs tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only the filtered run");

    // The flows page counts the last day's runs.
    browser
        .client
        .goto(&format!("{}/#/", server.base))
        .await
        .unwrap();
    let counts = browser
        .text_of("tr[data-flow-row='leads']", "1 filtered")
        .await;
    assert!(counts.contains("2 ok"), "the run and its replay: {counts}");
    browser.find("tr[data-flow-row='leads'] svg.spark").await;
    browser.screenshot("flows").await;
    browser.close().await;
}

#[tokio::test]
async fn a_run_page_opened_while_running_turns_final_and_draws_the_whole_run() {
    // The CRM holds its answers until released: a 500 first, then 200 after a 1 s backoff.
    let sink = crate::support::Sink::with(crate::support::SinkOptions {
        statuses: &[500],
        held: true,
        ..Default::default()
    })
    .await;
    let flow = format!(
        r#"
id: sync
trigger: {{ webhook: }}
steps:
  - id: deliver
    retry: {{ attempts: 2, backoff: fixed, initial: 1s, jitter: false }}
    http: {{ url: "{}/crm", json: "$.trigger.body" }}
"#,
        sink.url
    );
    let server = Server::start(&[("sync.yaml", &flow)]);
    let (_, answer) = server.send("sync", &json!({ "email": "a@x.com" })).await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    eventually("the CRM's first request", || async {
        (!sink.received().is_empty()).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/runs/{run_id}", server.base))
        .await
        .unwrap();
    // (The run reads `queued` while its one step is in flight.)
    let state = browser.find("#run-state").await.text().await.unwrap();
    assert!(["queued", "running"].contains(&state.as_str()), "{state}");
    browser.text_of("#live", "live").await;
    let replay = browser
        .client
        .find(fantoccini::Locator::Css("#replay"))
        .await;
    assert!(replay.is_err(), "no replay while the run is not done");
    sink.release();

    // Without a reload, the page shows the run finished, with a duration for people.
    browser.text_of("#run-state", "succeeded").await;
    let took = browser.find("#run-took").await.text().await.unwrap();
    let seconds = regex::Regex::new(r"^\d+(\.\d)? s$").unwrap();
    assert!(seconds.is_match(&took), "took {took:?}");
    // The timeline draws the queued time, both attempts and the backoff between them.
    browser.find("[data-part=queued] .seg.queued").await;
    let deliver = "[data-step-bar=deliver]";
    let said = browser
        .text_of(&format!("{deliver} .said"), "2 attempts")
        .await;
    assert!(said.contains("waiting"), "{said}");
    let bars = browser
        .client
        .find_all(fantoccini::Locator::Css(&format!("{deliver} .seg")))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for bar in bars {
        kinds.push(bar.attr("class").await.unwrap().unwrap_or_default());
    }
    assert_eq!(
        kinds,
        ["seg failed", "seg wait", "seg succeeded"],
        "attempt, backoff, attempt"
    );
    let wait = browser.find(&format!("{deliver} .seg.wait")).await;
    let title = wait.attr("title").await.unwrap().unwrap_or_default();
    assert!(
        title.starts_with("backoff ") && title.ends_with(" s before attempt 2"),
        "{title}"
    );
    browser.screenshot("run-live").await;
    browser.close().await;
}

#[tokio::test]
async fn runs_carry_their_title_and_failed_runs_are_retried_in_bulk_after_a_count() {
    // The CRM fails the first two requests, then accepts.
    let sink = crate::support::Sink::scripted(&[500, 500]).await;
    let flow = format!(
        r#"
id: orders
title: "{{{{trigger.body.email}}}} → {{{{trigger.body.plan}}}}"
trigger: {{ webhook: }}
steps:
  - id: deliver
    retry: {{ attempts: 1 }}
    http: {{ url: "{}/crm", json: "$.trigger.body" }}
"#,
        sink.url
    );
    let server = Server::start(&[("orders.yaml", &flow)]);
    let mut ids = Vec::new();
    for email in ["a@x.com", "b@x.com"] {
        let (_, answer) = server
            .send("orders", &json!({ "email": email, "plan": "pro" }))
            .await;
        let id = answer["run_id"].as_str().unwrap().to_owned();
        assert_eq!(server.finished_run(&id).await["status"], "failed");
        ids.push(id);
    }

    // The home page's failed count opens the flow's failed runs, each titled from its event.
    let browser = Browser::start().await;
    let base = &server.base;
    browser.client.goto(&format!("{base}/#/")).await.unwrap();
    browser
        .text_of("tr[data-flow-row='orders'] a.failed", "2 failed")
        .await;
    browser
        .find("tr[data-flow-row='orders'] a.failed")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#run-filters").await;
    let hash = browser.client.current_url().await.unwrap();
    assert_eq!(
        hash.fragment(),
        Some("/runs?flow=orders&status=failed&since=24h")
    );
    browser
        .text_of(
            &format!("tr[data-run='{}'] .run-title", ids[0]),
            "a@x.com → pro",
        )
        .await;
    browser
        .text_of(
            &format!("tr[data-run='{}'] .run-title", ids[1]),
            "b@x.com → pro",
        )
        .await;

    // Bulk retry: the count first, then a confirmation, then the runs go again.
    browser
        .find("[data-bulk=retry]")
        .await
        .click()
        .await
        .unwrap();
    let question = eventually("the confirmation", || async {
        browser.client.get_alert_text().await.ok()
    })
    .await;
    assert!(
        question.contains("Retry 2 failed runs of orders"),
        "{question}"
    );
    browser.client.accept_alert().await.unwrap();
    browser.text_of("#bulk-status", "Retried 2 of 2").await;
    for id in &ids {
        eventually("the retried run succeeds", || async {
            let (_, run) = server.get(&format!("/api/v1/runs/{id}")).await;
            (run["status"] == "succeeded").then_some(())
        })
        .await;
    }

    // Bulk replay asks on which revision: after an edit of the flow, each run's own is chosen.
    let (_, before) = server.get("/api/v1/flows/orders").await;
    server.write_flow(
        "orders.yaml",
        &flow.replace("id: orders", "id: orders\nname: Orders"),
    );
    eventually("the edited flow to be deployed", || async {
        let (_, now) = server.get("/api/v1/flows/orders").await;
        (now["revision"] != before["revision"]).then_some(())
    })
    .await;
    // By way of the home page, so that the button found is the new list's.
    browser.client.goto(&format!("{base}/#/")).await.unwrap();
    browser.find("tr[data-flow-row='orders']").await;
    browser
        .client
        .goto(&format!("{base}/#/runs?flow=orders"))
        .await
        .unwrap();
    browser
        .find("[data-bulk=replay]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_of(
            "#bulk-replay-dialog .callers",
            "will call out again: deliver (http)",
        )
        .await;
    browser
        .find("#bulk-replay-dialog input[value=original]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_of("#bulk-replay-dialog .callers", "each run's revision")
        .await;
    browser
        .find("#bulk-replay-dialog button[value=replay]")
        .await
        .click()
        .await
        .unwrap();
    browser.text_of("#bulk-status", "Replayed 2 of 2").await;
    let replays: Vec<Value> = server
        .all_runs("orders")
        .await
        .into_iter()
        .filter(|r| r["replay_of"].is_string())
        .collect();
    assert_eq!(replays.len(), 2, "{replays:#?}");
    for replay in &replays {
        assert_eq!(replay["revision"], before["revision"], "{replay:#}");
    }

    // A date range: until 2000 matches none; from 2000 matches both, the date shown in the form.
    browser
        .client
        .goto(&format!(
            "{base}/#/runs?flow=orders&until=2000-01-01T00:00:00Z"
        ))
        .await
        .unwrap();
    browser.find("#no-runs").await;
    // A run that starts meanwhile is outside the range: the live stream does not add it.
    let (_, answer) = server
        .send("orders", &json!({ "email": "c@x.com", "plan": "pro" }))
        .await;
    server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    browser.find("#no-runs").await;
    assert!(
        browser
            .client
            .find_all(fantoccini::Locator::Css("tr[data-run]"))
            .await
            .unwrap()
            .is_empty(),
        "no run is listed before 2000"
    );
    browser
        .client
        .goto(&format!(
            "{base}/#/runs?flow=orders&since=2000-01-01T00:00:00Z"
        ))
        .await
        .unwrap();
    browser.find(&format!("tr[data-run='{}']", ids[1])).await;
    let from = browser.find("#f-from").await.prop("value").await.unwrap();
    assert!(
        from.is_some_and(|v| !v.is_empty()),
        "the start date is shown"
    );

    // A run's page is titled; its flow's page links to all its runs.
    browser
        .client
        .goto(&format!("{base}/#/runs/{}", ids[0]))
        .await
        .unwrap();
    browser.text_of("#run-title", "a@x.com → pro").await;
    // The page's title names it, and focus is on its heading.
    let (title, focused) = eventually("the page title", || async {
        let seen = browser
            .client
            .execute("return [document.title, document.activeElement.id]", vec![])
            .await
            .unwrap();
        (seen[0] == "a@x.com → pro · hookflow").then(|| (seen[0].clone(), seen[1].clone()))
    })
    .await;
    assert_eq!(focused, "run-title", "{title}");
    browser.screenshot("runs-titled").await;
    browser
        .client
        .goto(&format!("{base}/#/flows/orders"))
        .await
        .unwrap();
    browser.find("#all-runs").await.click().await.unwrap();
    browser.find(&format!("tr[data-run='{}']", ids[0])).await;

    // On a phone, the flows, the runs list and a run's page do not scroll sideways.
    browser.client.set_window_size(390, 844).await.unwrap();
    for (page, ready) in [
        ("#/".to_owned(), "tr[data-flow-row='orders']"),
        ("#/runs?flow=orders".to_owned(), "#runs tr"),
        (format!("#/runs/{}", ids[0]), "[data-step-bar=deliver]"),
    ] {
        browser
            .client
            .goto(&format!("{base}/{page}"))
            .await
            .unwrap();
        browser.find(ready).await;
        let wide = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(wide, json!(0), "{page} scrolls sideways at 390 px");
        let boxes = browser
            .client
            .execute(
                "return [...document.querySelectorAll('table.cards')].map(t => t.parentElement.scrollWidth - t.parentElement.clientWidth)",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            boxes.as_array().unwrap().iter().all(|w| w == &json!(0)),
            "a table scrolls sideways on {page}: {boxes}"
        );
    }
    browser.screenshot("run-phone").await;
    browser
        .client
        .goto(&format!("{base}/#/runs?flow=orders"))
        .await
        .unwrap();
    browser.find("#runs tr").await;
    browser.screenshot("runs-phone").await;
    browser.close().await;
}

#[tokio::test]
async fn people_see_who_is_signed_in_log_out_and_are_told_when_the_server_is_gone() {
    let mut server = Server::start_with(
        &[("payments.yaml", PAYMENTS)],
        &[],
        &[("HOOKFLOW_ADMIN_PASSWORD", "correct horse")],
    );
    let browser = Browser::start().await;
    browser.client.goto(&server.base).await.unwrap();
    browser
        .find("#password")
        .await
        .send_keys("correct horse")
        .await
        .unwrap();
    browser
        .find("#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    browser.text_of("#who", "signed in as admin").await;
    browser.find("#logout").await.click().await.unwrap();
    browser.text_of("#login-error", "logged out").await;
    assert_eq!(browser.find("#who").await.text().await.unwrap(), "");

    // Logged in again on the runs page, the live stream says when the server goes away, and a
    // page opened then says the server is unreachable.
    browser
        .find("#password")
        .await
        .send_keys("correct horse")
        .await
        .unwrap();
    browser
        .find("#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .client
        .goto(&format!("{}/#/runs", server.base))
        .await
        .unwrap();
    browser.text_of("#live", "live").await;
    server.kill_hard();
    browser.text_of("#live", "disconnected, retrying").await;
    browser
        .client
        .execute("location.hash = '#/flows/payments'", vec![])
        .await
        .unwrap();
    browser
        .text_of("main h1", "The server is unreachable")
        .await;
    browser.close().await;
}

#[tokio::test]
async fn a_run_links_to_its_revision_and_revisions_show_their_difference() {
    let server = Server::start(&[("payments.yaml", PAYMENTS)]);
    let (_, answer) = server
        .send("payments", &json!({ "customer_email": "a@x.com" }))
        .await;
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    server.finished_run(&run_id).await;
    server.write_flow(
        "payments.yaml",
        &PAYMENTS.replace(
            "{{lower trigger.body.customer_email}}",
            "{{lower trigger.body.data.object.customer_email}}",
        ),
    );
    eventually("the second revision", || async {
        let (_, history) = server.get("/api/v1/flows/payments/revisions").await;
        (history["revisions"].as_array()?.len() == 2).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/runs/{run_id}", server.base))
        .await
        .unwrap();
    browser.find("#run-revision").await.click().await.unwrap();
    let removed = browser
        .text_of("#diff .removed", "trigger.body.customer_email")
        .await;
    assert!(removed.starts_with("- "), "{removed}");
    browser
        .text_of("#diff .added", "trigger.body.data.object.customer_email")
        .await;
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("tr[data-revision]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    browser.screenshot("revisions").await;
    browser.close().await;
}

#[tokio::test]
async fn a_flow_page_shows_new_hook_requests_without_a_reload() {
    let flow = r#"
id: signed
trigger:
  webhook:
    verify: { provider: github, secret: s3cret }
steps:
  - { id: shape, map: { x: 1 } }
"#;
    let server = Server::start(&[("signed.yaml", flow)]);
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/flows/signed", server.base))
        .await
        .unwrap();
    browser.find("#no-hooks").await;
    let (status, _) = server.send("signed", &json!({ "id": 1 })).await;
    assert_eq!(status, 401);
    browser
        .text_of("#flow-hooks tr[data-outcome=rejected]", "invalid_signature")
        .await;
    browser.close().await;
}

#[tokio::test]
async fn the_audit_page_lists_who_did_what_and_filters_by_action() {
    let flow = "id: leads\ntrigger: { manual: }\nsteps:\n  - { id: shape, map: { x: 1 } }\n";
    let server = Server::start(&[("leads.yaml", flow)]);
    let (status, started) = server
        .post(
            "/api/v1/flows/leads/runs",
            &json!({ "body": { "email": "a@x.com" } }),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{}/#/audit", server.base))
        .await
        .unwrap();
    // Written off the request path: the page is opened again until the entry is there.
    eventually("the manual run in the audit page", || async {
        browser.client.refresh().await.ok()?;
        let row = browser
            .client
            .find(fantoccini::Locator::Css("#audit tr[data-action=trigger]"))
            .await
            .ok()?;
        row.text().await.ok()
    })
    .await;
    let row = browser
        .text_of("#audit tr[data-action=trigger]", "anyone")
        .await;
    assert!(row.contains("127.0.0.1"), "{row}");
    browser
        .find(&format!(
            "#audit tr[data-action=trigger] a[href='#/runs/{run_id}']"
        ))
        .await;
    assert_eq!(
        browser.client.title().await.unwrap(),
        "Audit record · hookflow"
    );
    browser.screenshot("audit").await;

    // Filtered by an action nothing did: the empty state says so.
    let select = browser.find("#audit-filter select").await;
    select.select_by_value("login").await.unwrap();
    browser
        .text_of(".empty", "Nothing recorded for login yet.")
        .await;
    browser.close().await;
}
