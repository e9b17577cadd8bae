//! `hookflow storage list | get | set | delete`: storage between runs on a running server,
//! through `/api/v1/storage…`. Keys are percent-encoded into the path, so any key a step may
//! write can be read and changed.

use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{ClientArgs, StorageCommand};
use crate::client::{call, print_json, text};

/// Runs one `hookflow storage` command: prints the API's answer as text, or as JSON (`--json`).
pub async fn run(command: &StorageCommand) -> anyhow::Result<()> {
    let (client, answer, shown) = match command {
        StorageCommand::List {
            namespace: None,
            client,
            ..
        } => {
            let body = call(client, Method::GET, "/api/v1/storage", None).await?;
            let shown = namespaces(&body);
            (client, body, shown)
        }
        StorageCommand::List {
            namespace: Some(namespace),
            after,
            limit,
            client,
        } => {
            let mut path = format!("/api/v1/storage/{}?limit={limit}", segment(namespace));
            if let Some(after) = after {
                let _ = write!(path, "&after={}", segment(after));
            }
            let body = call(client, Method::GET, &path, None).await?;
            let shown = entries(namespace, &body);
            (client, body, shown)
        }
        StorageCommand::Get {
            namespace,
            key,
            client,
        } => {
            let body = request(client, Method::GET, namespace, key, None).await?;
            let shown = serde_json::to_string_pretty(&body["value"])?;
            (client, body, shown)
        }
        StorageCommand::Set {
            namespace,
            key,
            value,
            expires_in,
            client,
        } => {
            let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
            let mut put = json!({ "value": value });
            if let Some(text) = expires_in {
                let d = humantime::parse_duration(text).map_err(|e| {
                    anyhow::anyhow!("--expires-in `{text}` is not a duration like `24h`: {e}")
                })?;
                put["expires_in_seconds"] = json!(d.as_secs().max(1));
            }
            let body = request(client, Method::PUT, namespace, key, Some(put)).await?;
            let shown = format!("stored {namespace}/{key}{}", expiry(&body));
            (client, body, shown)
        }
        StorageCommand::Delete {
            namespace,
            key,
            client,
        } => {
            let body = request(client, Method::DELETE, namespace, key, None).await?;
            (client, body, format!("deleted {namespace}/{key}"))
        }
    };
    if client.json {
        return print_json(&answer);
    }
    println!("{shown}");
    Ok(())
}

/// The namespaces with their key counts, a line each.
fn namespaces(body: &Value) -> String {
    let lines: Vec<String> = body["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("{:<40} {} key(s)", text(&n["namespace"]), text(&n["keys"])))
        .collect();
    if lines.is_empty() {
        return "storage holds nothing".to_owned();
    }
    lines.join("\n")
}

/// A page of entries, a line each, and how to get the next page.
fn entries(namespace: &str, body: &Value) -> String {
    let mut lines: Vec<String> = body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}  {}{}", text(&e["key"]), e["value"], expiry(e)))
        .collect();
    if lines.is_empty() {
        lines.push(format!("`{namespace}` holds nothing"));
    }
    if let Some(next) = body["next_cursor"].as_str() {
        lines.push(format!(
            "more: hookflow storage list {namespace} --after {next:?}"
        ));
    }
    lines.join("\n")
}

/// A request on one key.
async fn request(
    client: &ClientArgs,
    method: Method,
    namespace: &str,
    key: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let path = format!("/api/v1/storage/{}/{}", segment(namespace), segment(key));
    call(client, method, &path, body).await
}

/// `  (expires …)` for an entry that expires.
fn expiry(entry: &Value) -> String {
    entry["expires_at"]
        .as_str()
        .map(|at| format!("  (expires {at})"))
        .unwrap_or_default()
}

/// Text percent-encoded for a path segment or query value: every byte but ASCII letters, digits
/// and `-._~`.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
