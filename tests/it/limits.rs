//! Nothing from outside crashes or hangs the server: expressions nested past the bound are refused
//! with their place at validate, load and reload alike (quickly: parsing is linear), expressions
//! at the bound run on the server's threads, and slow or idle connections are closed on time
//! while others are answered.

use std::time::{Duration, Instant};

use serde_json::json;

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
