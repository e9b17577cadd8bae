//! Nothing from outside crashes or hangs the server: expressions nested past the bound are refused
//! with their place at validate, load and reload alike (quickly: parsing is linear), expressions
//! at the bound run on the server's threads, and slow or idle connections are closed on time
//! while others are answered.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, run_cli, Server};

/// A flow whose map value nests `depth` calls: `{{upper (upper … trigger.body.x)}}`.
fn nested_flow(id: &str, depth: usize) -> String {
    let calls = format!(
        "{{{{upper {}trigger.body.x{}}}}}",
        "(upper ".repeat(depth),
        ")".repeat(depth)
    );
    format!("id: {id}\ntrigger: {{ webhook: }}\nsteps:\n  - id: shape\n    map:\n      loud: \"{calls}\"\n")
}

/// A flow whose map value nests `depth` `#if` blocks.
fn nested_ifs(id: &str, depth: usize) -> String {
    let ifs = format!(
        "{}{{{{trigger.body.x}}}}{}",
        "{{#if trigger.body.x}}".repeat(depth),
        "{{/if}}".repeat(depth)
    );
    format!("id: {id}\ntrigger: {{ webhook: }}\nsteps:\n  - id: shape\n    map:\n      deep: \"{ifs}\"\n")
}

#[test]
fn validate_refuses_deep_expressions_quickly_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("calls.yaml"), nested_flow("calls", 5_000)).unwrap();
    std::fs::write(dir.path().join("ifs.yaml"), nested_ifs("ifs", 10_000)).unwrap();
    let start = Instant::now();
    let out = run_cli(&["validate", "."], dir.path());
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("./calls.yaml:6:") && stdout.contains("nest more than 32 deep"),
        "{stdout}"
    );
    assert!(stdout.contains("./ifs.yaml:6:"), "{stdout}");
    assert!(
        elapsed < Duration::from_secs(10),
        "validate took {elapsed:?}"
    );
}

#[tokio::test]
async fn deep_expressions_are_refused_at_load_and_reload_and_the_bound_runs() {
    let server = Server::start(&[
        ("deep.yaml", &nested_flow("deep", 1_000)),
        ("edge.yaml", &nested_flow("edge", 32)),
    ]);
    let (_, flows) = server.get("/api/v1/flows").await;
    let problems = flows["problems"].to_string();
    assert!(
        problems.contains("deep.yaml:6:") && problems.contains("nest more than 32 deep"),
        "{problems}"
    );
    assert!(flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["id"] != "deep"));

    // At the bound: a run, and a preview, on the server's own threads.
    let (status, ack) = server.send("edge", &json!({ "x": "hi" })).await;
    assert_eq!(status, 200, "{ack}");
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["output"]["loud"], "HI", "{run}");
    let (status, preview) = server
        .post(
            "/api/v1/flows/edge/preview",
            &json!({ "event": { "body": { "x": "yo" } } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["steps"][0]["output"]["loud"], "YO", "{preview}");

    // A deep edit while the server runs is refused; the revision before it keeps serving.
    server.write_flow("edge.yaml", &nested_ifs("edge", 10_000));
    eventually("the deep edit to be refused", || async {
        let (_, flows) = server.get("/api/v1/flows").await;
        let problems = flows["problems"].to_string();
        problems.contains("edge.yaml:6:").then_some(())
    })
    .await;
    let (status, ack) = server.send("edge", &json!({ "x": "still" })).await;
    assert_eq!(status, 200, "{ack}");
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["output"]["loud"], "STILL");
}

/// A server with these `http:` settings (a configuration file names only them).
fn server_with_http(settings: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(&config, format!("http: {{ {settings} }}\n")).unwrap();
    let server = Server::start_with(&[], &["--config", config.to_str().unwrap()], &[]);
    (server, dir)
}

/// Reads until the server closes the connection; returns what it sent, or `None` if it was still
/// open at the deadline.
async fn read_until_closed(socket: &mut TcpStream, deadline: Instant) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_on_time_while_others_are_answered() {
    let (server, _config) =
        server_with_http("header_timeout: 1s, body_timeout: 1s, idle_timeout: 1s");
    let started = Instant::now();
    let mut slow_heads = Vec::new();
    let mut slow_bodies = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut socket = connect(&server).await;
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow_heads.push(socket);
        let mut socket = connect(&server).await;
        let head =
            "POST /inspect/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        socket.write_all(head.as_bytes()).await.unwrap();
        slow_bodies.push(socket);
        idle.push(connect(&server).await);
    }
    // Others are answered meanwhile.
    let (status, health) = server.get("/healthz").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered while 60 connections dawdle"
    );

    // Every dawdling connection is closed soon after its timeout (a second).
    let deadline = started + Duration::from_secs(10);
    for socket in slow_heads.iter_mut().chain(&mut idle) {
        let answer = read_until_closed(socket, deadline).await;
        assert_eq!(answer.as_deref(), Some(""), "closed without an answer");
    }
    for socket in &mut slow_bodies {
        let answer = read_until_closed(socket, deadline).await.expect("closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
    }
    // A new connection: the helper's pooled one idled past the 1 s timeout and was closed too.
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let timeouts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookflow_http_timeouts_total "))
        .and_then(|n| n.parse().ok())
        .expect("the timeout counter");
    assert!(timeouts >= 60, "{timeouts}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_a_freed_slot_serves_again() {
    let (server, _config) = server_with_http("max_connections: 3, idle_timeout: 60s");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    let mut extra = connect(&server).await;
    let answer = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(
        answer.as_deref(),
        Some(""),
        "the fourth connection is closed at once"
    );

    drop(held.pop());
    let client = reqwest::Client::new();
    let health = format!("{}/healthz", server.base);
    eventually("a freed slot to serve a request", || async {
        let r = client.get(&health).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_hook_says_when_to_retry_in_retry_after() {
    let flow =
        "id: limited\ntrigger:\n  webhook: { rate_limit: 1/m }\nsteps:\n  - { id: a, map: {} }\n";
    let server = Server::start(&[("limited.yaml", flow)]);
    let client = reqwest::Client::new();
    let url = server.catch_url("limited");
    let first = client.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("retry-after").is_none());
    let second = client.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(second.status(), 429);
    // One request a minute: the next is allowed a minute after the first, in whole seconds.
    let retry_after = second.headers()["retry-after"].to_str().unwrap().to_owned();
    let answer: serde_json::Value = second.json().await.unwrap();
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    assert_eq!(retry_after, "60", "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .ends_with(&format!("retry in {retry_after} s")),
        "{answer}"
    );
}
