//! The outbound guard against server-side request forgery, end to end: an HTTP action whose URL
//! comes from the event may reach hookflow's own server only at the request inspector, no
//! special-purpose address in any spelling (a canary listener shows no connection), and no proxy
//! unless the configuration names one.

use serde_json::json;

use crate::support::{Canary, Server, Sink};

/// A flow posting to the URL the event names.
const RELAY: &str = "id: relay\ntrigger: { webhook: }\nsteps:\n  - id: call\n    http: { url: \"{{trigger.body.u}}\", json: { probe: true } }\n";

/// Sends `u` to the relay and returns the finished run.
async fn relay(server: &Server, u: &str) -> serde_json::Value {
    let (status, ack) = server.send("relay", &json!({ "u": u })).await;
    assert_eq!(status, 200, "{ack}");
    server.finished_run(ack["run_id"].as_str().unwrap()).await
}

#[tokio::test]
async fn the_servers_own_address_is_reachable_only_at_the_inspector() {
    let server = Server::start_with(&[("relay.yaml", RELAY)], &[], &[]);

    for path in ["/api/v1/flows", "/inspect/../api/v1/flows", "/healthz"] {
        let run = relay(&server, &format!("{}{path}", server.base)).await;
        assert_eq!(run["status"], "failed", "{path}: {run}");
        let error = run["steps"][0]["error"]["message"].as_str().unwrap();
        assert!(error.contains("not a public address"), "{path}: {error}");
    }

    let run = relay(&server, &format!("{}/inspect/probe", server.base)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, bin) = server.get("/api/v1/inspector/probe").await;
    assert_eq!(status, 200);
    assert_eq!(bin["requests"][0]["body"], json!({ "probe": true }));
}

#[tokio::test]
async fn special_purpose_addresses_are_refused_in_every_spelling() {
    let canary = Canary::start().await;
    let server = Server::start_with(&[("relay.yaml", RELAY)], &[], &[]);
    let port = canary.port;
    let spellings = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::127.0.0.1]:{port}/"),
        format!("http://[64:ff9b::7f00:1]:{port}/"),
        format!("http://[2002:7f00:1::]:{port}/"),
        format!("http://[fec0::1]:{port}/"),
        format!("http://198.18.0.1:{port}/"),
        format!("http://192.0.0.8:{port}/"),
        format!("http://[::1]:{port}/"),
    ];
    for url in &spellings {
        let run = relay(&server, url).await;
        assert_eq!(run["status"], "failed", "{url}: {run}");
        let error = run["steps"][0]["error"]["message"].as_str().unwrap();
        assert!(error.contains("not a public address"), "{url}: {error}");
    }
    assert_eq!(canary.accepted(), 0, "a refused request reached the canary");
    let metrics = server.metrics().await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookflow_outbound_refused_total "))
        .and_then(|n| n.parse().ok())
        .expect("the refusal counter");
    assert!(refused >= spellings.len() as u64, "{refused}");
}

#[tokio::test]
async fn the_environments_proxy_is_ignored_and_the_configured_one_is_used() {
    let (target, proxy) = (Sink::start().await, Sink::start().await);
    let env = [
        ("HTTP_PROXY", proxy.url.as_str()),
        ("http_proxy", proxy.url.as_str()),
        ("ALL_PROXY", proxy.url.as_str()),
    ];
    let allow = ["--allow-outbound", "127.0.0.1"];
    let server = Server::start_with(&[("relay.yaml", RELAY)], &allow, &env);
    let run = relay(&server, &format!("{}/direct", target.url)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(target.received().len(), 1);
    assert!(
        proxy.received().is_empty(),
        "the environment's proxy was used"
    );
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(
        &config,
        format!("outbound: {{ proxy: \"{}\" }}\n", proxy.url),
    )
    .unwrap();
    let args = [
        "--allow-outbound",
        "127.0.0.1",
        "--config",
        config.to_str().unwrap(),
    ];
    let server = Server::start_with(&[("relay.yaml", RELAY)], &args, &[]);
    let run = relay(&server, &format!("{}/proxied", target.url)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        proxy.received().len(),
        1,
        "the configured proxy carried the request"
    );
    assert_eq!(target.received().len(), 1, "the proxy answered itself");
}
