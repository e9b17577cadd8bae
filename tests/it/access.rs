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

    // Logging out ends the session: the login page comes back, and stays after a reload.
    browser.find("#logout").await.click().await.unwrap();
    browser.text_of("main", "Log in").await;
    browser.client.refresh().await.unwrap();
    browser.text_of("main", "Log in").await;
    browser.close().await;
}

/// POSTs a login to the server at `base`; returns status, headers and JSON.
async fn login(base: &str, password: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("{base}/api/v1/login");
    call(
        reqwest::Method::POST,
        &url,
        &[],
        Some(json!({ "password": password })),
    )
    .await
}

#[tokio::test]
async fn failed_logins_are_throttled_with_a_growing_retry_after() {
    let server = guarded();
    for _ in 0..6 {
        let (status, _, body) = login(&server.base, "guess").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_credentials"))
        );
    }
    // Locked out: even the right password is not checked.
    let (status, headers, body) = login(&server.base, "correct horse").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts")),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");

    // Once the lockout passes, one more failure locks the address out for longer.
    crate::support::eventually("the first lockout to pass", || async {
        let (status, _, _) = login(&server.base, "guess").await;
        (status == 401).then_some(())
    })
    .await;
    let (status, headers, _) = login(&server.base, "correct horse").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "2");

    let (status, _, body) = crate::support::eventually("the second lockout to pass", || async {
        let answer = login(&server.base, "correct horse").await;
        (answer.0 != 429).then_some(answer)
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.base))
        .header("authorization", "Bearer tok-123")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("hookflow_logins_failed_total 7"), "{text}");
    assert!(
        !text.contains("hookflow_logins_throttled_total 0\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_cookie_secure_behind_https() {
    // Behind a TLS-terminating proxy: the public URL is https, the listener plain HTTP.
    let port = crate::support::unused_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(&config, format!("public_url: https://127.0.0.1:{port}\n")).unwrap();
    let _secure = Server::start_on(
        &format!("127.0.0.1:{port}"),
        &[],
        &["--config", config.to_str().unwrap()],
        &[
            ("HOOKFLOW_ADMIN_PASSWORD", "correct horse"),
            ("HOOKFLOW_API_TOKEN", "tok-123"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} tok-123");
        let url = format!("{base}/api/v1/flows");
        let (status, _, _) = call(
            reqwest::Method::GET,
            &url,
            &[("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(status, 200, "{scheme}");
    }
    let (status, headers, _) = login(&base, "correct horse").await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    let plain = guarded();
    let (_, headers, _) = login(&plain.base, "correct horse").await;
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[test]
fn a_short_password_is_refused_for_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::hookflow()
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--flows")
        .arg(dir.path().join("flows"))
        .env("HOOKFLOW_ADMIN_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shorter than 12 characters"), "{stderr}");
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
