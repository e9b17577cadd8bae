//! Commands that talk to a running server's REST API: `hooks`, `hooks log`, `runs list`,
//! `runs show`, `runs retry`, `replay`, `inspect`, `trigger`, `capture`, `audit`,
//! `quarantine list`, `quarantine reingest` (and, through [`call`], `storage …` in
//! `storage_client.rs`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::{AuditArgs, BulkArgs, ClientArgs, ListArgs, ReplayArgs, RetryArgs};

/// GETs an API path and returns its JSON, turning `{code, detail}` answers into errors.
pub async fn get(client: &ClientArgs, path_and_query: &str) -> anyhow::Result<Value> {
    call(client, reqwest::Method::GET, path_and_query, None).await
}

/// POSTs a JSON body to an API path and returns its JSON answer.
async fn post(client: &ClientArgs, path: &str, body: Value) -> anyhow::Result<Value> {
    call(client, reqwest::Method::POST, path, Some(body)).await
}

/// Sends a request to an API path (with a JSON body, if any) and returns its JSON answer.
pub(crate) async fn call(
    client: &ClientArgs,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path_and_query}", client.server.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| {
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

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `hookflow flows history FLOW`.
pub async fn flow_history(client: &ClientArgs, flow: &str) -> anyhow::Result<()> {
    let body = get(client, &format!("/api/v1/flows/{flow}/revisions")).await?;
    if client.json {
        return print_json(&body);
    }
    for r in body["revisions"].as_array().into_iter().flatten() {
        let current = if r["current"] == true {
            "  (current)"
        } else {
            ""
        };
        println!(
            "{}  deployed {}{current}",
            text(&r["revision"]),
            text(&r["deployed_at"])
        );
    }
    Ok(())
}

/// `hookflow schedules`: the schedule flows and their next fire times.
pub async fn schedules(client: &ClientArgs) -> anyhow::Result<()> {
    let body = get(client, "/api/v1/flows").await?;
    if client.json {
        return print_json(&body);
    }
    let flows: Vec<Value> = body["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["trigger"]["type"] == "schedule")
        .cloned()
        .collect();
    if flows.is_empty() {
        println!("no schedule flows on this server");
    }
    for f in flows {
        let t = &f["trigger"];
        println!(
            "{}  `{}` ({}){}",
            text(&f["id"]),
            text(&t["cron"]),
            text(&t["timezone"]),
            crate::local::paused_note(f["enabled"] != false)
        );
        for next in t["next"].as_array().into_iter().flatten() {
            println!("    next: {}", text(next));
        }
    }
    Ok(())
}

/// How often `trigger --wait` and `capture` ask the server how things stand.
const POLL: std::time::Duration = std::time::Duration::from_millis(300);

/// `hookflow trigger FLOW (--event FILE | --sample NAME) [--wait]`: starts a run; with `--wait`,
/// waits for it to finish (exit code 1 if it failed).
pub async fn trigger(
    client: &ClientArgs,
    flow: &str,
    event: Option<&std::path::Path>,
    sample: Option<&str>,
    wait: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let request = match (event, sample) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            json!({ "body": body })
        }
        (None, Some(name)) => json!({ "sample": name }),
        (None, None) => bail!("give --event FILE or --sample NAME"),
    };
    let started = post(client, &format!("/api/v1/flows/{flow}/runs"), request).await?;
    let run_id = text(&started["run_id"]);
    println!("started run {run_id}");
    if !wait {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    loop {
        let run = get(client, &format!("/api/v1/runs/{run_id}")).await?;
        let status = text(&run["status"]);
        if matches!(status.as_str(), "succeeded" | "failed" | "filtered") {
            let reason = run["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default();
            println!("run {run_id}: {status}{reason}");
            return Ok(if status == "failed" {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `hookflow capture FLOW --count N`: keeps the next N events sent to the flow as samples, and
/// waits until they are written (Ctrl-C stops waiting; the capture stays armed).
pub async fn capture(client: &ClientArgs, flow: &str, count: usize) -> anyhow::Result<()> {
    let path = format!("/api/v1/flows/{flow}/capture");
    let armed = post(client, &path, json!({ "count": count })).await?;
    println!(
        "capturing the next {count} event(s) sent to `{flow}` into {}",
        text(&armed["dir"])
    );
    let mut shown = 0;
    loop {
        let status = get(client, &path).await?;
        let samples = status["samples"].as_array().cloned().unwrap_or_default();
        for name in samples.iter().skip(shown) {
            println!("  captured {}", text(name));
        }
        shown = samples.len();
        if status["done"] == true {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    println!("{shown} sample(s) written; preview one with `hookflow run FLOW_FILE --sample NAME --dry-run`");
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
    let id = |f: &Value| f["id"].as_str().unwrap_or_default().to_owned();
    let width = flows.iter().map(|f| id(f).len()).max().unwrap_or(0);
    for f in &flows {
        let trigger = &f["trigger"];
        let target = match (f["catch_url"].as_str(), trigger["type"].as_str()) {
            (Some(url), _) => format!("POST {url}"),
            (None, Some("schedule")) => format!(
                "(schedule `{}` {})",
                trigger["cron"].as_str().unwrap_or_default(),
                trigger["timezone"].as_str().unwrap_or("UTC")
            ),
            _ => "(manual trigger)".to_owned(),
        };
        println!("{:<width$} {target}", id(f));
    }
    Ok(())
}

/// `hookflow hooks log FLOW`: the flow's recent catch-hook requests, newest first.
pub async fn hook_log(client: &ClientArgs, flow: &str) -> anyhow::Result<()> {
    let body = get(client, &format!("/api/v1/flows/{flow}/hooks")).await?;
    if client.json {
        return print_json(&body);
    }
    let requests = body["requests"].as_array().cloned().unwrap_or_default();
    if requests.is_empty() {
        println!("no requests to `{flow}`'s catch URL yet");
        return Ok(());
    }
    println!(
        "{:<25} {:<10} {:<6} {:<7} {:>8}  WHAT",
        "AT", "OUTCOME", "STATUS", "METHOD", "BYTES"
    );
    for r in &requests {
        let summary = &r["summary"];
        let what = match r["outcome"].as_str() {
            Some("rejected") => format!("{}: {}", text(&r["reason"]), text(&r["detail"])),
            Some("ignored") => text(&summary["reason"]),
            Some("duplicate") => format!("original run {}", text(&summary["run_id"])),
            _ => text(&summary["run_id"]),
        };
        println!(
            "{:<25} {:<10} {:<6} {:<7} {:>8}  {what}",
            text(&r["at"]),
            text(&r["outcome"]),
            text(&r["status"]),
            text(&r["method"]),
            text(&r["bytes"]),
        );
    }
    Ok(())
}

/// A list's query string: `limit` and the filters given.
fn list_query(limit: usize, filters: &[(&str, &Option<String>)]) -> anyhow::Result<String> {
    let mut query = vec![("limit", limit.to_string())];
    for (key, value) in filters {
        query.extend(value.as_ref().map(|v| (*key, v.clone())));
    }
    Ok(serde_urlencoded::to_string(&query)?)
}

/// `hookflow audit`: who did what, newest first.
pub async fn audit(args: &AuditArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let filters = [
        ("action", &args.action),
        ("since", &args.since),
        ("before", &args.before),
    ];
    let query = list_query(args.limit, &filters)?;
    let body = get(client, &format!("/api/v1/audit?{query}")).await?;
    if client.json {
        return print_json(&body);
    }
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("nothing recorded");
        return Ok(());
    }
    println!(
        "{:<25} {:<12} {:<17} {:<16} WHAT",
        "AT", "ACTION", "ACTOR", "ADDRESS"
    );
    for e in &entries {
        let what: Vec<String> = e
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                !matches!(k.as_str(), "id" | "at" | "action" | "actor" | "address") && !v.is_null()
            })
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        println!(
            "{:<25} {:<12} {:<17} {:<16} {}",
            text(&e["at"]),
            text(&e["action"]),
            text(&e["actor"]),
            text(&e["address"]),
            what.join(" ")
        );
    }
    if let Some(next) = body["next_cursor"].as_str() {
        println!("more: hookflow audit --before {next}");
    }
    Ok(())
}

/// What started a run, as `runs list` shows it: `webhook`, `schedule`, `manual`, `replay` or
/// `flow`, then `, retry` once a person retried it.
fn started_by(run: &Value) -> String {
    let origin = run["started_by"].as_str().unwrap_or("-");
    if run["retried"] == true {
        format!("{origin}, retry")
    } else {
        origin.to_owned()
    }
}

/// `hookflow runs list`.
pub async fn list_runs(args: &ListArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let filters = [
        ("flow", &args.flow),
        ("status", &args.status),
        ("since", &args.since),
        ("until", &args.until),
        ("cursor", &args.cursor),
    ];
    let query = list_query(args.limit, &filters)?;
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
        "{:<31} {:<24} {:<10} {:<16} {:<25} REASON",
        "RUN", "FLOW", "STATUS", "STARTED BY", "CREATED"
    );
    for r in &runs {
        println!(
            "{:<31} {:<24} {:<10} {:<16} {:<25} {}",
            text(&r["id"]),
            text(&r["flow_id"]),
            text(&r["status"]),
            started_by(r),
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

/// `hookflow runs retry`: one failed run, or every failed run of a flow in a window.
pub async fn retry(args: &RetryArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let Some(run_id) = one_or_many(args.run_id.as_deref(), &args.bulk)? else {
        let selection = selection(&args.bulk, None, None);
        return bulk(client, &RETRY, selection, args.bulk.yes).await;
    };
    let run = post(client, &format!("/api/v1/runs/{run_id}/retry"), json!({})).await?;
    if client.json {
        return print_json(&run);
    }
    println!(
        "run {} resumed from its failed step (status {}); follow it with: hookflow runs show {}",
        text(&run["id"]),
        text(&run["status"]),
        text(&run["id"])
    );
    Ok(())
}

/// `hookflow replay`: one run, or every matching run of a flow in a window.
pub async fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let Some(run_id) = one_or_many(args.run_id.as_deref(), &args.bulk)? else {
        let selection = selection(&args.bulk, args.status.as_deref(), Some(&args.revision));
        return bulk(client, &REPLAY, selection, args.bulk.yes).await;
    };
    if args.status.is_some() {
        bail!("--status selects runs of a flow: use it with --flow, not with a run id");
    }
    let body = json!({ "revision": args.revision });
    let started = post(client, &format!("/api/v1/runs/{run_id}/replay"), body).await?;
    if client.json {
        return print_json(&started);
    }
    println!(
        "replaying {run_id} on the {} revision as run {}; follow it with: hookflow runs show {}",
        args.revision,
        text(&started["run_id"]),
        text(&started["run_id"])
    );
    Ok(())
}

/// The run id of a one-run command, or `None` for a bulk one; exactly one must be given.
fn one_or_many<'a>(run_id: Option<&'a str>, bulk: &BulkArgs) -> anyhow::Result<Option<&'a str>> {
    let bulk_given = bulk.flow.is_some() || bulk.since.is_some() || bulk.until.is_some();
    match (run_id, bulk_given) {
        (Some(id), false) => Ok(Some(id)),
        (None, true) if bulk.flow.is_some() => Ok(None),
        (None, _) => bail!("give a run id, or --flow (with --since/--until) for many runs"),
        (Some(_), true) => bail!("give a run id or --flow, not both"),
    }
}

fn selection(bulk: &BulkArgs, status: Option<&str>, revision: Option<&str>) -> Value {
    json!({
        "flow": bulk.flow, "since": bulk.since, "until": bulk.until, "status": status,
        "revision": revision,
    })
}

/// A bulk action: its API path and how it is described.
struct BulkAction {
    path: &'static str,
    /// What is selected (`failed runs`).
    what: &'static str,
    /// The confirmation question.
    ask: &'static str,
    /// The past tense (`retried`).
    done: &'static str,
}

const RETRY: BulkAction = BulkAction {
    path: "/api/v1/runs/retry",
    what: "failed runs",
    ask: "Retry them from their failed steps? [y/N] ",
    done: "retried",
};

const REPLAY: BulkAction = BulkAction {
    path: "/api/v1/runs/replay",
    what: "runs",
    ask: "Replay them as new runs? [y/N] ",
    done: "replayed",
};

/// Counts the selection, asks (unless `yes`), then starts the action.
async fn bulk(
    client: &ClientArgs,
    action: &BulkAction,
    mut selection: Value,
    yes: bool,
) -> anyhow::Result<()> {
    selection["dry_run"] = json!(true);
    let matched = post(client, action.path, selection.clone()).await?["matched"]
        .as_u64()
        .unwrap_or_default();
    eprintln!(
        "{matched} {} of flow {} match",
        action.what,
        text(&selection["flow"])
    );
    if matched == 0 {
        return Ok(());
    }
    if !yes && !confirm(action.ask)? {
        eprintln!("nothing started (add --yes to start without asking)");
        return Ok(());
    }
    selection["dry_run"] = json!(false);
    let result = post(client, action.path, selection).await?;
    if client.json {
        return print_json(&result);
    }
    let started = result["started"].as_array().map_or(0, Vec::len);
    println!("{} {started} of {} run(s)", action.done, result["matched"]);
    for f in result["failed"].as_array().cloned().unwrap_or_default() {
        println!("  {}: {}", text(&f["run_id"]), text(&f["reason"]));
    }
    Ok(())
}

/// Asks on the terminal; without one (a script), the answer is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
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

/// `hookflow quarantine list`.
pub async fn quarantine_list(client: &ClientArgs) -> anyhow::Result<()> {
    let body = get(client, "/api/v1/quarantine").await?;
    if client.json {
        return print_json(&body);
    }
    let entries = body["quarantined"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("no quarantined records");
        return Ok(());
    }
    println!(
        "{:<24} {:<12} {:>8} {:>8} {:<25} WHERE",
        "ID", "KIND", "RECORD", "BYTES", "QUARANTINED"
    );
    for e in &entries {
        println!(
            "{:<24} {:<12} {:>8} {:>8} {:<25} {} at offset {}",
            text(&e["id"]),
            text(&e["kind"]),
            text(&e["record"]),
            text(&e["bytes"]),
            text(&e["quarantined_at"]),
            text(&e["segment"]),
            text(&e["offset"])
        );
        println!("    {}", text(&e["reason"]));
        println!("    kept in {}", text(&e["kept"]));
    }
    println!(
        "once a record's bytes are repaired (or this version reads them): hookflow quarantine reingest ID"
    );
    Ok(())
}

/// `hookflow quarantine reingest ID`.
pub async fn quarantine_reingest(client: &ClientArgs, id: &str) -> anyhow::Result<()> {
    let body = post(
        client,
        &format!("/api/v1/quarantine/{id}/reingest"),
        json!({}),
    )
    .await?;
    if client.json {
        return print_json(&body);
    }
    match body["outcome"].as_str() {
        Some("created") => println!("ingested {id} again: run {}", text(&body["run_id"])),
        _ => println!(
            "{id} was stored already (run {}); its entry is removed",
            text(&body["original_run_id"])
        ),
    }
    Ok(())
}

/// A JSON value as a person reads it: text unquoted, `-` for nothing.
pub(crate) fn text(v: &Value) -> String {
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
