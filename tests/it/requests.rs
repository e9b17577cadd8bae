//! Bad requests get a 4xx with a JSON reason and store nothing; the server keeps serving.

use serde_json::{json, Value};

use crate::support::Server;

const FLOW: &str = r#"
id: echo
trigger: { webhook: }
steps:
  - id: keep
    map: { body: "{{trigger.body}}", q: "{{trigger.query.source}}", m: "{{trigger.method}}" }
"#;

async fn post_raw(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.expect("a JSON answer"))
}

async fn run_count(server: &Server) -> usize {
    server.get("/api/v1/runs").await.1["runs"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_reason() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    let (status, body) = post_raw(&server.catch_url("echo"), "application/json", "{\"a\": ").await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_json");
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(run_count(&server).await, 0, "nothing stored");
}

#[tokio::test]
async fn unknown_flow_or_token_is_a_404() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    let url = server.catch_url("echo");
    // The right token with its last character changed.
    let last = if url.ends_with('0') { "1" } else { "0" };
    let wrong_token = format!("{}{last}", &url[..url.len() - 1]);
    for target in [
        wrong_token,
        format!("{}/hooks/catch/nope/abc", server.base),
        format!("{}/hooks/catch/echo", server.base),
    ] {
        let (status, body) = post_raw(&target, "application/json", "{}").await;
        assert_eq!(status, 404, "{target}");
        assert_eq!(body["code"], "not_found");
    }
    assert_eq!(run_count(&server).await, 0);
}

#[tokio::test]
async fn an_oversized_body_is_a_413_and_the_server_keeps_serving() {
    let server = Server::start_with(&[("echo.yaml", FLOW)], &["--max-body-bytes", "1000"], &[]);
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2000));
    let (status, body) = post_raw(&server.catch_url("echo"), "application/json", big).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "payload_too_large");

    // A chunked body has no Content-Length: the limit applies while reading.
    let chunks = futures_chunks(3000);
    let (status, _) = post_raw(&server.catch_url("echo"), "application/json", chunks).await;
    assert_eq!(status, 413);

    let (status, ack) = server.send("echo", &json!({ "ok": true })).await;
    assert_eq!(status, 200, "still serving: {ack}");
    assert_eq!(run_count(&server).await, 1);
}

fn futures_chunks(total: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..total / 100).map(|_| Ok(vec![b' '; 100])).collect();
    reqwest::Body::wrap_stream(tokio_stream::iter(chunks))
}

#[tokio::test]
async fn form_query_and_get_payloads_are_accepted() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    let url = server.catch_url("echo");

    let (status, ack) = post_raw(
        &format!("{url}?source=form"),
        "application/x-www-form-urlencoded",
        "name=Ann&plan=pro",
    )
    .await;
    assert_eq!(status, 200);
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(
        run["steps"][0]["output"],
        json!({ "body": { "name": "Ann", "plan": "pro" }, "q": "form", "m": "POST" })
    );

    let r = reqwest::get(format!("{url}?source=get")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(
        run["steps"][0]["output"],
        json!({ "body": null, "q": "get", "m": "GET" })
    );

    let r = reqwest::Client::new()
        .put(&url)
        .json(&json!({ "n": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, body) = post_raw(&url, "application/octet-stream", vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["code"], "unsupported_body");
}

#[tokio::test]
async fn api_errors_are_json() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    let (status, body) = server.get("/api/v1/runs/not-a-run").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_run_id"))
    );
    let (status, body) = server
        .get("/api/v1/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = server.get("/api/v1/runs?status=done").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.get("/no/such/page").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let page = reqwest::get(&server.base).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        page.text().await.unwrap().contains("/assets/app.js"),
        "the page loads the app"
    );
    let script = reqwest::get(format!("{}/assets/app.js", server.base))
        .await
        .unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript");
    assert!(
        script.text().await.unwrap().contains("/api/v1/flows"),
        "the app reads the API"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_server_keeps_serving() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = post_raw(&server.catch_url("echo"), "application/json", deep).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_json");
    assert!(
        body["detail"].as_str().unwrap().contains("recursion limit"),
        "{body}"
    );
    let (status, _) = server.send("echo", &json!({ "still": "serving" })).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_error_is_json_including_the_frameworks_rejections_and_trace_is_refused() {
    let server = Server::start(&[("echo.yaml", FLOW)]);
    // A client per request: an answer that leaves a body unread closes its connection.
    let client = reqwest::Client::new;
    let url = |path: &str| format!("{}{path}", server.base);
    let preview = url("/api/v1/flows/echo/preview");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("a body-less POST", client().post(&preview), 415),
        (
            "bad JSON to the API",
            client()
                .post(&preview)
                .header("content-type", "application/json")
                .body("{\"event\": "),
            400,
        ),
        (
            "JSON of the wrong shape",
            client()
                .post(&preview)
                .json(&json!({ "event": 1, "nope": 2 })),
            422,
        ),
        (
            "a body past the API's limit",
            client()
                .post(&preview)
                .header("content-type", "application/json")
                .body(vec![b' '; 3 << 20]),
            413,
        ),
        (
            "an empty ?limit=",
            client().get(url("/api/v1/runs?limit=")),
            400,
        ),
        (
            "a method the route lacks",
            client().delete(url("/api/v1/runs")),
            405,
        ),
        (
            "TRACE on the inspector",
            client().request(reqwest::Method::TRACE, url("/inspect/x")),
            405,
        ),
        (
            "TRACE on the API",
            client().request(reqwest::Method::TRACE, url("/api/v1/flows")),
            405,
        ),
        ("an unknown path", client().get(url("/nope")), 404),
        ("a bad bin name", client().post(url("/inspect/a%20b")), 400),
    ];
    for (what, request, expected) in cases {
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let content_type = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{what}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        assert!(
            body["code"].is_string() && !body["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
    }
    let (status, bins) = server.get("/api/v1/inspector").await;
    assert_eq!(status, 200, "the server still serves");
    assert_eq!(
        bins["bins"],
        json!([]),
        "the TRACE was not recorded: {bins}"
    );
}
