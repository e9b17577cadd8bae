//! The relay: a minimal server that checks each POSTed body is JSON, sends it on to another URL
//! and answers 200 once that URL has. It is the least an end-to-end run does (one request in, one
//! out), so `hookflow-bench --ceiling` can show what the machine allows for that without hookflow.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

/// Starts a relay to `target` on a free port of 127.0.0.1; returns its URL. It stops when the
/// process ends.
pub async fn start(target: String) -> anyhow::Result<String> {
    let app = Router::new()
        .route("/", post(forward))
        .with_state((reqwest::Client::new(), target));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn forward(
    State((client, target)): State<(reqwest::Client, String)>,
    body: Bytes,
) -> StatusCode {
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let sent = client
        .post(&target)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => StatusCode::OK,
        _ => StatusCode::BAD_GATEWAY,
    }
}
