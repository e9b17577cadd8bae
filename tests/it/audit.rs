//! The audit record and the stored hook log, against the real binary: logins (failed ones too)
//! with the client's address and the actor, manual runs, replays and retries are recorded and
//! listed by `GET /api/v1/audit` and `hookflow audit`; rejected and duplicate deliveries are in
//! `hookflow hooks log FLOW` and survive a restart; `runs list` says what started each run.

use serde_json::{json, Value};

use crate::support::{eventually, numbered_flow, Server, Sink, EVERY_SECOND};

const LEADS: &str = "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { email: \"{{trigger.body.email}}\" } }\n";

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// POSTs JSON with headers; status, `Set-Cookie` and JSON.
async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned());
    (r.status().as_u16(), cookie, r.json().await.unwrap())
}

/// The audit record's entries of one action, read with the token, once there are `n`.
async fn audited(server: &Server, action: &str, n: usize) -> Vec<Value> {
    let url = format!("{}/api/v1/audit?action={action}", server.base);
    eventually(&format!("{n} `{action}` audit entries"), || async {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth("tok-123")
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let entries = body["entries"].as_array().cloned().unwrap_or_default();
        (entries.len() >= n).then_some(entries)
    })
    .await
}

#[tokio::test]
async fn logins_manual_runs_replays_and_captures_are_audited_with_actor_and_address() {
    let server = Server::start_with(
        &[("leads.yaml", LEADS)],
        &[],
        &[
            ("HOOKFLOW_ADMIN_PASSWORD", "correct horse battery"),
            ("HOOKFLOW_API_TOKEN", "tok-123"),
        ],
    );
    let url = |path: &str| format!("{}{path}", server.base);
    let (status, _, _) = post(&url("/api/v1/login"), &[], json!({ "password": "nope" })).await;
    assert_eq!(status, 401);
    let right = json!({ "password": "correct horse battery" });
    let (status, cookie, session) = post(&url("/api/v1/login"), &[], right).await;
    assert_eq!(status, 200);
    let (cookie, csrf) = (cookie.unwrap(), session["csrf_token"].as_str().unwrap());

    // A manual run by the session, replayed with the token.
    let headers = [("cookie", cookie.as_str()), ("x-csrf-token", csrf)];
    let start = json!({ "body": { "email": "a@example.com" } });
    let (status, _, started) = post(&url("/api/v1/flows/leads/runs"), &headers, start).await;
    assert_eq!(status, 201, "{started}");
    let run_id = started["run_id"].as_str().unwrap();
    let token = [("authorization", "Bearer tok-123")];
    let (status, _, replayed) = post(
        &url(&format!("/api/v1/runs/{run_id}/replay")),
        &token,
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{replayed}");

    // A capture armed and a bulk replay, with the token.
    let (status, _, _) = post(
        &url("/api/v1/flows/leads/capture"),
        &token,
        json!({ "count": 2 }),
    )
    .await;
    assert_eq!(status, 200);
    let bulk = json!({ "flow": "leads", "since": "1h" });
    let (status, _, replayed_all) = post(&url("/api/v1/runs/replay"), &token, bulk).await;
    assert_eq!(status, 200, "{replayed_all}");

    let failed = audited(&server, "login_failed", 1).await;
    assert_eq!(failed[0]["actor"], "password");
    assert_eq!(failed[0]["address"], "127.0.0.1");
    assert_eq!(failed[0]["reason"], "invalid_credentials");
    let login = &audited(&server, "login", 1).await[0];
    assert_eq!(login["address"], "127.0.0.1");
    let session_actor = login["session"].as_str().unwrap();
    assert!(session_actor.starts_with("session:"), "{login}");
    let trigger = &audited(&server, "trigger", 1).await[0];
    assert_eq!(
        (&trigger["actor"], &trigger["run_id"], &trigger["flow"]),
        (&json!(session_actor), &json!(run_id), &json!("leads"))
    );
    let replay = &audited(&server, "replay", 1).await[0];
    assert_eq!(
        (&replay["actor"], &replay["run_id"], &replay["new_run_id"]),
        (&json!("token"), &json!(run_id), &replayed["run_id"])
    );

    let capture = &audited(&server, "capture", 1).await[0];
    assert_eq!(
        (&capture["flow"], &capture["count"]),
        (&json!("leads"), &json!(2))
    );
    let bulk = &audited(&server, "replay_bulk", 1).await[0];
    assert_eq!(bulk["matched"], replayed_all["matched"], "{bulk}");
    assert_eq!(bulk["actor"], "token");

    // The CLI lists them newest first; the API's errors are `{code, detail}`.
    let listed = stdout(&server.cli(&["audit", "--token", "tok-123"]));
    let order: Vec<usize> = ["replay", "trigger", "login ", "login_failed"]
        .iter()
        .map(|a| {
            listed
                .find(a)
                .unwrap_or_else(|| panic!("no {a} in\n{listed}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{listed}");
    assert!(listed.contains("127.0.0.1"), "{listed}");
    let only = stdout(&server.cli(&["audit", "--token", "tok-123", "--action", "replay"]));
    assert!(!only.contains("login"), "{only}");
    let r = reqwest::Client::new()
        .get(url("/api/v1/audit?action=bogus"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["code"], "invalid_parameter", "{error}");
    let r = reqwest::get(url("/api/v1/audit")).await.unwrap();
    assert_eq!(r.status(), 401, "the audit record needs credentials");
}

/// `hookflow hooks log FLOW`'s output.
fn hook_log(server: &Server, flow: &str) -> String {
    stdout(&server.cli(&["hooks", "log", flow]))
}

#[tokio::test]
async fn rejected_and_duplicate_deliveries_are_in_the_hook_log_after_a_restart() {
    let signed = "id: signed\ntrigger:\n  webhook:\n    verify: { provider: github, secret: s3cret }\nsteps:\n  - { id: shape, map: { x: 1 } }\n";
    let deduped = "id: deduped\ntrigger:\n  webhook:\n    dedupe: \"{{trigger.body.id}}\"\nsteps:\n  - { id: shape, map: { x: 1 } }\n";
    let mut server = Server::start(&[("signed.yaml", signed), ("deduped.yaml", deduped)]);
    let (status, _) = server.send("signed", &json!({ "id": 1 })).await;
    assert_eq!(status, 401);
    let (_, first) = server.send("deduped", &json!({ "id": 7 })).await;
    let (_, again) = server.send("deduped", &json!({ "id": 7 })).await;
    assert_eq!(again["status"], "duplicate");
    let run_id = first["run_id"].as_str().unwrap().to_owned();

    let rejected = eventually("the rejected delivery in the hook log", || async {
        let out = hook_log(&server, "signed");
        out.contains("rejected").then_some(out)
    })
    .await;
    assert!(
        rejected.contains("401") && rejected.contains("invalid_signature"),
        "{rejected}"
    );
    let duplicates = eventually("the duplicate in the hook log", || async {
        let out = hook_log(&server, "deduped");
        out.contains("duplicate").then_some(out)
    })
    .await;
    assert!(
        duplicates.contains(&format!("original run {run_id}")),
        "{duplicates}"
    );
    assert!(duplicates.contains("queued"), "{duplicates}");

    assert!(server.stop_gracefully());
    server.restart();
    let rejected = hook_log(&server, "signed");
    assert!(rejected.contains("invalid_signature"), "{rejected}");
    let duplicates = hook_log(&server, "deduped");
    assert!(
        duplicates.contains(&format!("original run {run_id}")),
        "{duplicates}"
    );
    // The API the UI reads lists them too.
    let (_, body) = server.get("/api/v1/flows/signed/hooks").await;
    assert_eq!(body["requests"][0]["reason"], "invalid_signature", "{body}");
    let runs = stdout(&server.cli(&["runs", "list", "--flow", "deduped"]));
    assert!(
        runs.contains("STARTED BY") && runs.contains("webhook"),
        "{runs}"
    );
}

#[tokio::test]
async fn runs_list_says_what_started_each_run() {
    let sink = Sink::scripted(&[400]).await;
    let flows = [
        ("numbered.yaml", numbered_flow(&sink, 1, "1s")),
        ("every-second.yaml", EVERY_SECOND.to_owned()),
        ("leads.yaml", LEADS.to_owned()),
    ];
    let flows: Vec<(&str, &str)> = flows.iter().map(|(n, f)| (*n, f.as_str())).collect();
    let server = Server::start_with(&flows, &["--allow-outbound", "127.0.0.1"], &[]);
    let (_, ack) = server.send("numbered", &json!({ "n": 1 })).await;
    let failed = ack["run_id"].as_str().unwrap();
    assert_eq!(server.finished_run(failed).await["status"], "failed");
    let (status, _) = server
        .post(&format!("/api/v1/runs/{failed}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.finished_run(failed).await["status"], "succeeded");
    let (_, manual) = server
        .post("/api/v1/flows/leads/runs", &json!({ "body": {} }))
        .await;
    let manual = manual["run_id"].as_str().unwrap();
    server.finished_run(manual).await;
    let (_, replay) = server
        .post(&format!("/api/v1/runs/{manual}/replay"), &json!({}))
        .await;
    let replay = replay["run_id"].as_str().unwrap();
    eventually("a schedule tick's run", || async {
        (!server.all_runs("every-second").await.is_empty()).then_some(())
    })
    .await;

    let list = |flow: &str| stdout(&server.cli(&["runs", "list", "--flow", flow]));
    let line_of = |out: &str, id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no run {id} in\n{out}"))
            .to_owned()
    };
    assert!(line_of(&list("numbered"), failed).contains("webhook, retry"));
    let leads = list("leads");
    assert!(line_of(&leads, manual).contains("manual"), "{leads}");
    assert!(line_of(&leads, replay).contains("replay"), "{leads}");
    assert!(list("every-second").contains("schedule"));
    // The retry is in the audit record, by anyone (no credential configured) from 127.0.0.1.
    let audit = stdout(&server.cli(&["audit", "--action", "retry"]));
    assert!(
        audit.contains("anyone") && audit.contains(failed),
        "{audit}"
    );
}
