//! Access to the UI and the API: with an admin password and an API token configured, requests
//! without a session or the token are refused, a session's changes need its CSRF token, catch
//! hooks stay open; without credentials the server keeps to 127.0.0.1 and says so.

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::support::Server;

const FLOW: &str = "id: leads\ntrigger: { webhook: }\nsteps:\n  - { id: shape, map: { email: \"{{trigger.body.email}}\" } }\n";

fn guarded() -> Server {
    Server::start_with(
        &[("leads.yaml", FLOW)],
        &[],
        &[
            ("HOOKFLOW_ADMIN_PASSWORD", "correct horse"),
            ("HOOKFLOW_API_TOKEN", "tok-123"),
        ],
    )
}

async fn call(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let r = request.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_needs_a_session_or_the_token_and_changes_need_the_csrf_token() {
    let server = guarded();
    assert!(!server
        .banner
        .iter()
        .any(|l| l.contains("no admin credential")));
    let url = |path: &str| format!("{}{path}", server.base);
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    for path in [
        "/api/v1/flows",
        "/api/v1/runs",
        "/metrics",
        "/api/v1/inspector",
    ] {
        let (status, _, body) = call(get.clone(), &url(path), &[], None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{path}"
        );
    }
    let (status, _, _) = call(
        get.clone(),
        &url("/api/v1/flows"),
        &[("authorization", "Bearer nope")],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        get.clone(),
        &url("/api/v1/flows"),
        &[("authorization", "Bearer tok-123")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let page = reqwest::get(url("/")).await.unwrap();
    assert_eq!(page.status(), 200, "the page loads and asks to log in");

    // Catch hooks stay open.
    let (status, _) = server.send("leads", &json!({ "email": "a@x.com" })).await;
    assert_eq!(status, 200);

    let (status, _, body) = call(
        post.clone(),
        &url("/api/v1/login"),
        &[],
        Some(json!({ "password": "wrong" })),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, headers, body) = call(
        post.clone(),
        &url("/api/v1/login"),
        &[],
        Some(json!({ "password": "correct horse" })),
    )
    .await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let (status, _, _) = call(
        get.clone(),
        &url("/api/v1/flows"),
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let start = url("/api/v1/flows/leads/runs");
    let payload = Some(json!({ "body": { "email": "b@x.com" } }));
    let (status, _, body) = call(
        post.clone(),
        &start,
        &[("cookie", &cookie)],
        payload.clone(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("csrf")),
        "a change without the CSRF token"
    );
    let (status, _, _) = call(
        post.clone(),
        &start,
        &[("cookie", &cookie), ("x-csrf-token", "forged")],
        payload.clone(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(
        post.clone(),
        &start,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        payload.clone(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, _) = call(
        post.clone(),
        &start,
        &[("authorization", "Bearer tok-123")],
        payload,
    )
    .await;
    assert_eq!(status, 201, "API clients with the token need no CSRF token");

    let out = server.cli(&["hooks", "--token", "tok-123"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["hooks"]);
    assert!(
        !out.status.success(),
        "the CLI without the token is refused"
    );
}

#[tokio::test]
async fn without_credentials_the_server_keeps_to_localhost_and_says_so() {
    let server = Server::start_on("0.0.0.0:0", &[("leads.yaml", FLOW)], &[], &[]);
    assert!(
        server.base.starts_with("http://127.0.0.1:"),
        "{}",
        server.base
    );
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("no admin credential is set")),
        "{:?}",
        server.banner
    );
}

#[tokio::test]
async fn people_log_in_with_the_password_and_a_wrong_one_is_refused() {
    // The shipped flows, as `cargo run -- serve` serves them.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let shipped: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.to_string_lossy().ends_with(".test.yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    let flows: Vec<(&str, &str)> = shipped
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let server = Server::start_with(&flows, &[], &[("HOOKFLOW_ADMIN_PASSWORD", "correct horse")]);
    let browser = Browser::start().await;
    browser.client.goto(&server.base).await.unwrap();
    let password = browser.find("#password").await;
    password.send_keys("guess").await.unwrap();
    browser
        .find("#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    browser.text_of("#login-error", "wrong password").await;

    let password = browser.find("#password").await;
    password.clear().await.unwrap();
    password.send_keys("correct horse").await.unwrap();
    browser
        .find("#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    let page = browser.text_of("main", "Route new business leads").await;
    for name in [
        "Sync plan changes to the CRM",
        "Stripe plan changes update HubSpot",
        "Failed payments become HubSpot tasks",
        "Enrich new HubSpot contacts",
    ] {
        assert!(page.contains(name), "{name} in {page}");
    }
    browser.close().await;
}

#[tokio::test]
async fn the_inspector_limits_bodies_needs_the_credentials_to_read_and_redacts_them() {
    let server = Server::start_with(
        &[("leads.yaml", FLOW)],
        &["--max-body-bytes", "1024"],
        &[("HOOKFLOW_API_TOKEN", "tok-123")],
    );
    let url = format!("{}/inspect/probe", server.base);
    let client = reqwest::Client::new();
    let big = client
        .post(&url)
        .body("x".repeat(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large", "{body}");

    let sent = client
        .post(&url)
        .header("authorization", "Bearer hunter2")
        .header("cookie", "session=hunter2")
        .header("x-api-key", "hunter2")
        .header("stripe-signature", "t=1,v1=hunter2")
        .json(&json!({ "ok": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);

    let read = format!("{}/api/v1/inspector/probe", server.base);
    let (status, _, _) = call(reqwest::Method::GET, &read, &[], None).await;
    assert_eq!(status, 401, "reading the inspector needs the credentials");
    let bearer = [("authorization", "Bearer tok-123")];
    let (status, _, bin) = call(reqwest::Method::GET, &read, &bearer, None).await;
    assert_eq!(status, 200, "{bin}");
    let request = &bin["requests"][0];
    assert_eq!(request["body"], json!({ "ok": 1 }));
    for header in ["authorization", "cookie", "x-api-key", "stripe-signature"] {
        assert_eq!(
            request["headers"][header], "[redacted]",
            "{header}: {request}"
        );
    }
    assert!(!bin.to_string().contains("hunter2"), "{bin}");
}
