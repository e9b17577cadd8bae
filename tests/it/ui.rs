//! The browser UI in a real headless Chromium: the page is rendered with its scripts run against
//! the live server's REST API, and the rendered DOM is checked.

use std::process::Command;

use serde_json::json;

use crate::support::Server;

/// The page at `url` as Chromium renders it (scripts run, fetches answered).
fn rendered(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let server = Server::start(&[("signed.yaml", flow)]);
    let (status, _) = server.send("signed", &json!({ "id": 1 })).await;
    assert_eq!(status, 401);

    let page = rendered(&server.base);
    let row = page
        .split("<tr ")
        .find(|r| r.contains(r#"data-flow="signed""#))
        .unwrap_or_else(|| panic!("no hook log row for the flow in\n{page}"));
    assert!(row.contains(r#"data-outcome="rejected""#), "{row}");
    assert!(row.contains("invalid_signature"), "{row}");
    assert!(
        row.contains("missing"),
        "the detail says what was missing: {row}"
    );
}
