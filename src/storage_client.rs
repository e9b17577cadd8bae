//! `hookflow storage list | get | set | delete`: storage between runs on a running server,
//! through `/api/v1/storage…`. Keys are percent-encoded into the path, so any key a step may
//! write can be read and changed.

use serde_json::{json, Value};

use crate::cli::{ClientArgs, StorageCommand};
use crate::client::{call, print_json, text};

/// Runs one `hookflow storage` command.
pub async fn run(command: &StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::List {
            namespace: None,
            client,
            ..
        } => namespaces(client).await,
        StorageCommand::List {
            namespace: Some(namespace),
            after,
            limit,
            client,
        } => entries(client, namespace, after.as_deref(), *limit).await,
        StorageCommand::Get {
            namespace,
            key,
            client,
        } => {
            let body = request(client, reqwest::Method::GET, namespace, key, None).await?;
            match client.json {
                true => print_json(&body),
                false => print_json(&body["value"]),
            }
        }
        StorageCommand::Set {
            namespace,
            key,
            value,
            expires_in,
            client,
        } => {
            let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
            let mut body = json!({ "value": value });
            if let Some(text) = expires_in {
                let d = humantime::parse_duration(text).map_err(|e| {
                    anyhow::anyhow!("--expires-in `{text}` is not a duration like `24h`: {e}")
                })?;
                body["expires_in_seconds"] = json!(d.as_secs().max(1));
            }
            let put = request(client, reqwest::Method::PUT, namespace, key, Some(body)).await?;
            match client.json {
                true => print_json(&put),
                false => {
                    println!("stored {namespace}/{key}{}", expiry(&put));
                    Ok(())
                }
            }
        }
        StorageCommand::Delete {
            namespace,
            key,
            client,
        } => {
            let body = request(client, reqwest::Method::DELETE, namespace, key, None).await?;
            match client.json {
                true => print_json(&body),
                false => {
                    println!("deleted {namespace}/{key}");
                    Ok(())
                }
            }
        }
    }
}

async fn namespaces(client: &ClientArgs) -> anyhow::Result<()> {
    let body = call(client, reqwest::Method::GET, "/api/v1/storage", None).await?;
    if client.json {
        return print_json(&body);
    }
    let list = body["namespaces"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("storage holds nothing");
    }
    for n in &list {
        println!("{:<40} {} key(s)", text(&n["namespace"]), text(&n["keys"]));
    }
    Ok(())
}

async fn entries(
    client: &ClientArgs,
    namespace: &str,
    after: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/storage/{}?limit={limit}", segment(namespace));
    if let Some(after) = after {
        path.push_str(&format!("&after={}", segment(after)));
    }
    let body = call(client, reqwest::Method::GET, &path, None).await?;
    if client.json {
        return print_json(&body);
    }
    let list = body["entries"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("`{namespace}` holds nothing");
    }
    for e in &list {
        println!("{}  {}{}", text(&e["key"]), e["value"], expiry(e));
    }
    if let Some(next) = body["next_cursor"].as_str() {
        println!("more: hookflow storage list {namespace} --after {next:?}");
    }
    Ok(())
}

/// A request on one key.
async fn request(
    client: &ClientArgs,
    method: reqwest::Method,
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
