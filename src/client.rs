//! Commands that talk to a running server's REST API: `hooks`, `runs list`, `runs show`, `inspect`.

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::ClientArgs;

/// GETs an API path and returns its JSON, turning `{code, detail}` answers into errors.
async fn get(client: &ClientArgs, path_and_query: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path_and_query}", client.server.trim_end_matches('/'));
    let response = reqwest::get(&url).await.with_context(|| {
        format!(
            "cannot reach the hookflow server at {} (is `hookflow serve` running? set --server)",
            client.server
        )
    })?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            status,
            body["detail"].as_str().unwrap_or("request failed")
        );
    }
    Ok(body)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `hookflow hooks`.
pub async fn hooks(client: &ClientArgs) -> anyhow::Result<()> {
    let body = get(client, "/api/v1/flows").await?;
    if client.json {
        return print_json(&body);
    }
    let flows = body["flows"].as_array().cloned().unwrap_or_default();
    if flows.is_empty() {
        println!("no flows on this server");
    }
    for f in flows {
        let target = f["catch_url"]
            .as_str()
            .map_or("(manual trigger)".to_owned(), |u| format!("POST {u}"));
        println!("{:<24} {target}", f["id"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `hookflow runs list`.
pub async fn list_runs(
    client: &ClientArgs,
    flow: Option<String>,
    status: Option<String>,
    limit: usize,
    cursor: Option<String>,
) -> anyhow::Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(flow.map(|f| ("flow", f)));
    query.extend(status.map(|s| ("status", s)));
    query.extend(cursor.map(|c| ("cursor", c)));
    let query = serde_urlencoded::to_string(&query)?;
    let body = get(client, &format!("/api/v1/runs?{query}")).await?;
    if client.json {
        return print_json(&body);
    }
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        println!("no runs");
        return Ok(());
    }
    println!(
        "{:<31} {:<24} {:<10} {:<25} REASON",
        "RUN", "FLOW", "STATUS", "CREATED"
    );
    for r in &runs {
        println!(
            "{:<31} {:<24} {:<10} {:<25} {}",
            text(&r["id"]),
            text(&r["flow_id"]),
            text(&r["status"]),
            text(&r["created_at"]),
            text(&r["reason"])
        );
    }
    if let Some(next) = body["next_cursor"].as_str() {
        println!("more: hookflow runs list --cursor {next}");
    }
    Ok(())
}

/// `hookflow runs show`.
pub async fn show_run(client: &ClientArgs, run_id: &str) -> anyhow::Result<()> {
    let run = get(client, &format!("/api/v1/runs/{run_id}")).await?;
    if client.json {
        return print_json(&run);
    }
    println!("run      {}", text(&run["id"]));
    println!(
        "flow     {} (revision {})",
        text(&run["flow_id"]),
        text(&run["revision"])
    );
    println!("status   {}", text(&run["status"]));
    if !run["reason"].is_null() {
        println!("reason   {}", text(&run["reason"]));
    }
    println!("created  {}", text(&run["created_at"]));
    println!("finished {}", text(&run["finished_at"]));
    println!("\ntrigger payload (event {}):", text(&run["event"]["id"]));
    println!(
        "{}",
        indent(&serde_json::to_string_pretty(
            &run["event"]["trigger"]["body"]
        )?)
    );
    for step in run["steps"].as_array().cloned().unwrap_or_default() {
        let attempts = step["attempts"].as_array().map_or(0, Vec::len);
        println!(
            "\nstep {} ({}) — {}, {attempts} attempt(s), {} ms",
            text(&step["id"]),
            text(&step["kind"]),
            text(&step["status"]),
            step["duration_ms"].as_u64().unwrap_or_default()
        );
        for (label, key) in [("input", "input"), ("output", "output")] {
            if !step[key].is_null() {
                println!(
                    "  {label}:\n{}",
                    indent(&indent(&serde_json::to_string_pretty(&step[key])?))
                );
            }
        }
        if !step["error"].is_null() {
            println!("  error: {}", text(&step["error"]["message"]));
        }
        for a in step["attempts"].as_array().cloned().unwrap_or_default() {
            let outcome = a["error"]
                .as_str()
                .map_or("ok".to_owned(), |e| format!("failed: {e}"));
            println!(
                "  attempt {} at {} ({} ms): {outcome}",
                a["number"],
                text(&a["started_at"]),
                a["duration_ms"]
            );
        }
    }
    Ok(())
}

/// `hookflow inspect`.
pub async fn inspect(client: &ClientArgs, bin: Option<&str>) -> anyhow::Result<()> {
    let Some(bin) = bin else {
        let body = get(client, "/api/v1/inspector").await?;
        if client.json {
            return print_json(&body);
        }
        let bins = body["bins"].as_array().cloned().unwrap_or_default();
        if bins.is_empty() {
            println!(
                "the inspector has received nothing yet; point an HTTP action at {}/inspect/NAME",
                client.server
            );
        }
        for b in bins {
            println!("{:<24} {} request(s)", text(&b["bin"]), b["requests"]);
        }
        return Ok(());
    };
    let body = get(client, &format!("/api/v1/inspector/{bin}")).await?;
    if client.json {
        return print_json(&body);
    }
    for r in body["requests"].as_array().cloned().unwrap_or_default() {
        println!(
            "{} {} {}",
            text(&r["received_at"]),
            text(&r["method"]),
            text(&r["path"])
        );
        println!("{}\n", indent(&serde_json::to_string_pretty(&r["body"])?));
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
