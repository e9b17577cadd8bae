//! Commands that work on flow files without a server: `validate`, `schema` and `run`.
//!
//! `run` uses the real runtime on a temporary store, so a local run behaves exactly like a served
//! one, except that failed steps are not retried and `--dry-run` describes HTTP actions instead of
//! sending them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hookflow_engine::flow::{self, process_env, schema::json_schema};
use hookflow_engine::model::{RunStatus, StepStatus, Timestamp};
use hookflow_engine::outbound::{HttpClient, OutboundPolicy};
use hookflow_engine::runtime::catalog::Catalog;
use hookflow_engine::runtime::{Engine, EngineConfig};
use hookflow_engine::store::sled::SledStore;
use serde_json::{json, Value};

/// `hookflow validate`: prints every problem; exit code 1 if there is one.
pub fn validate(paths: &[PathBuf]) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("flows")]
    } else {
        paths.to_vec()
    };
    let (flows, errors) = flow::load(&paths, &crate::registry(), &process_env);
    for e in &errors {
        println!("{e}");
    }
    if errors.is_empty() {
        println!("{} flow(s) valid", flows.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s) found", errors.len());
        ExitCode::FAILURE
    }
}

/// `hookflow schema`.
pub fn schema() -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&json_schema(&crate::registry()))?
    );
    Ok(())
}

/// How long a local run may take in all.
const LOCAL_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// `hookflow run`: one event through one flow, printing each step.
pub async fn run(
    flow_path: &Path,
    event_path: &Path,
    dry_run: bool,
    allow: &[String],
) -> anyhow::Result<ExitCode> {
    let registry = crate::registry();
    let (mut flows, errors) = flow::load(&[flow_path.to_path_buf()], &registry, &process_env);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("{} has {} problem(s)", flow_path.display(), errors.len());
    }
    let Some(flow) = flows.pop() else {
        bail!("{} is not a flow file", flow_path.display())
    };
    let text = std::fs::read_to_string(event_path)
        .with_context(|| format!("cannot read {}", event_path.display()))?;
    let body: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", event_path.display()))?;

    let allow = allow
        .iter()
        .map(|n| n.parse().map_err(|e: String| anyhow::anyhow!(e)))
        .collect::<anyhow::Result<_>>()?;
    // The shipped flows post to a local server's request inspector (the default listen address).
    let inspector = crate::config::Config::load(None)?.listen;
    let http = HttpClient::new(OutboundPolicy {
        allow,
        own_address: Some(inspector),
    })?;
    let store = SledStore::temporary().context("cannot create a temporary store")?;
    let config = EngineConfig {
        dry_run,
        no_retries: true,
        ..EngineConfig::default()
    };
    let engine = Engine::new(Arc::new(store), Catalog::new(registry), http, config);
    let flow = engine.deploy(vec![flow]).await?.remove(0).0;
    let trigger = json!({ "method": "POST", "headers": {}, "query": {}, "body": body, "received_at": Timestamp::now() });
    let accepted = engine.ingest(&flow, trigger).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(engine.clone().run(
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let run = engine.wait_for(accepted.run_id, LOCAL_RUN_TIMEOUT).await?;
    let _ = stop.send(());
    workers.await??;
    let Some(run) = run.filter(|r| r.status.is_final()) else {
        bail!("the run did not finish within {LOCAL_RUN_TIMEOUT:?}")
    };

    let records = engine.store().step_records(run.id).await?;
    println!(
        "flow {} (revision {}){}",
        flow.id,
        flow.revision,
        if dry_run {
            " — dry run: HTTP actions were not sent"
        } else {
            ""
        }
    );
    for progress in &run.steps {
        let step = flow
            .step(&progress.id)
            .expect("the run's steps are the flow's");
        let record = records.iter().find(|r| r.step_id == progress.id);
        let ms: u64 = record
            .map(|r| r.attempts.iter().map(|a| a.duration_ms).sum())
            .unwrap_or_default();
        let mark = match progress.status {
            StepStatus::Succeeded => "✔",
            StepStatus::Failed => "✘",
            StepStatus::Filtered => "⊘",
            _ => "·",
        };
        println!(
            "\n{mark} {} ({}) — {} in {ms} ms",
            step.id,
            step.kind,
            status_word(progress.status)
        );
        if let Some(r) = record {
            if let Some(out) = &r.output {
                println!("{}", indent(&serde_json::to_string_pretty(out)?));
            }
            if let Some(err) = &r.error {
                println!("  error: {}", err.message);
            }
        }
    }
    println!(
        "\nrun {}: {}{}",
        run.id,
        run.status,
        run.reason
            .as_deref()
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    );
    if run.status == RunStatus::Failed && !dry_run {
        println!("tip: `--dry-run` shows HTTP requests without sending them; the shipped flows send to a running `hookflow serve`'s request inspector");
    }
    Ok(if run.status == RunStatus::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn status_word(s: StepStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
