//! Commands that work on flow files without a server: `validate`, `schema` and `run`.
//!
//! `run` uses the real runtime on a temporary store, so a local run behaves exactly like a served
//! one, except that failed steps are not retried; `--dry-run` runs offline and describes HTTP and
//! connector calls instead of making them. Both flag the expressions that resolved to nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hookflow_engine::authoring::empty::empty_fields;
use hookflow_engine::authoring::offline::{self, Trace};
use hookflow_engine::authoring::unresolved::unresolved;
use hookflow_engine::flow::{self, process_env, schema::json_schema, Flow, Trigger};
use hookflow_engine::intake::{self, Verdict};
use hookflow_engine::model::{RunStatus, StepStatus, Timestamp};
use hookflow_engine::outbound::{HttpClient, OutboundPolicy};
use hookflow_engine::runtime::catalog::Catalog;
use hookflow_engine::runtime::{Engine, EngineConfig};
use hookflow_engine::schedule::Schedule;
use hookflow_engine::steps::Registry;
use hookflow_engine::store::sled::SledStore;
use serde_json::{json, Value};

/// `hookflow validate [--samples]`: prints every problem and warning; exit code 1 if there is a
/// problem. Each flow runs offline on each of its samples: a request field a sample would send
/// empty and an expression that resolved to nothing are warnings; with `samples`, the latter are
/// problems (and so is a sample that does not read).
pub async fn validate(paths: &[PathBuf], samples: bool) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("flows")]
    } else {
        paths.to_vec()
    };
    let (flows, errors) = flow::load(&paths, &crate::registry(), &process_env);
    for e in &errors {
        println!("{e}");
    }
    for warning in flows.iter().flat_map(|f| &f.warnings) {
        println!("warning: {warning}");
    }
    let mut problems = errors.len();
    let mut checked = 0;
    for flow in &flows {
        for (name, path) in crate::samples::list(Path::new(&flow.file), flow.id.as_str()) {
            let trigger = match crate::samples::load(&path) {
                Ok(t) => t,
                Err(e) if samples => {
                    println!("{e:#}");
                    problems += 1;
                    continue;
                }
                Err(_) => continue,
            };
            let trace = offline::run(flow, trigger, &BTreeMap::new()).await;
            for warning in empty_fields(flow, &trace, &name) {
                println!("warning: {warning}");
            }
            checked += 1;
            for u in unresolved(flow, &trace) {
                if samples {
                    println!("{u} (sample {name})");
                    problems += 1;
                } else {
                    println!("warning: {u} (sample {name})");
                }
            }
        }
    }
    if problems == 0 {
        let with = if samples {
            format!(", {checked} sample(s) resolve every expression")
        } else {
            String::new()
        };
        println!("{} flow(s) valid{with}", flows.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{problems} problem(s) found");
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

/// What a local run starts from.
pub enum RunInput<'a> {
    /// A JSON file with the event's body.
    Event(&'a Path),
    /// A sample of the flow, by name.
    Sample(&'a str),
    /// A schedule flow's tick, as written (local time in the flow's timezone, or RFC 3339).
    Tick(&'a str),
}

/// `hookflow run`: one event through one flow, printing each step's input and output and every
/// expression that resolved to nothing. An event whose type the flow's `events:` does not take is
/// ignored, as the catch hook would. A dry run is offline (nothing is sent, nothing stored);
/// otherwise the real runtime runs on a temporary store, without retries.
pub async fn run(
    flow_path: &Path,
    input: RunInput<'_>,
    dry_run: bool,
    allow: &[String],
) -> anyhow::Result<ExitCode> {
    let registry = crate::registry();
    let flow = load_one(flow_path, &registry)?;
    let trigger = match input {
        RunInput::Event(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            crate::samples::trigger(&json!({ "body": body }))
        }
        RunInput::Sample(name) => {
            let path =
                crate::samples::dir(flow_path, flow.id.as_str()).join(format!("{name}.json"));
            crate::samples::load(&path)?
        }
        RunInput::Tick(text) => {
            let schedule = schedule_of(&flow, flow_path)?;
            let tick = local_time(schedule, text)?;
            if !schedule.is_tick(tick) {
                let next = schedule.next_after(tick).map(|t| schedule.local_time(t));
                eprintln!(
                    "note: {} is not a tick of `{}`; the next is {}",
                    schedule.local_time(tick),
                    schedule.cron,
                    next.as_deref().unwrap_or("never")
                );
            }
            Schedule::trigger(tick, tick)
        }
    };
    // As the catch hook would: an event whose type the flow does not take starts nothing.
    let screened = intake::screen(&flow, trigger.clone(), Timestamp::now());
    if let [(_, Verdict::Ignored(why))] = screened.as_slice() {
        println!("ignored: {why}: the catch hook answers `ignored` and starts no run");
        return Ok(ExitCode::SUCCESS);
    }
    let (flow, trace) = if dry_run {
        let trace = offline::run(&flow, trigger, &BTreeMap::new()).await;
        (Arc::new(flow), trace)
    } else {
        run_served(flow, registry, trigger, allow).await?
    };
    print_trace(&flow, &trace, dry_run)?;
    Ok(if trace.run.status == RunStatus::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `hookflow schedules FLOW`: the flow's next `count` ticks after `from` (default now), in its
/// timezone and in UTC, read from the file alone.
pub fn schedules(flow_path: &Path, count: usize, from: Option<&str>) -> anyhow::Result<()> {
    let flow = load_one(flow_path, &crate::registry())?;
    let schedule = schedule_of(&flow, flow_path)?;
    let from = match from {
        Some(text) => local_time(schedule, text)?,
        None => Timestamp::now(),
    };
    println!(
        "{}  `{}` ({}){}",
        flow.id,
        schedule.cron,
        schedule.timezone,
        paused_note(flow.enabled)
    );
    let ticks = schedule.upcoming(from, count);
    if ticks.is_empty() {
        println!("    never fires after {}", schedule.local_time(from));
    }
    for tick in ticks {
        println!("    {}    {}", schedule.local_time(tick), tick.to_rfc3339());
    }
    Ok(())
}

/// What `schedules` says after a paused flow's schedule: its ticks do not fire.
pub fn paused_note(enabled: bool) -> &'static str {
    if enabled {
        ""
    } else {
        "  PAUSED (`enabled: false`): these ticks do not fire until the flow is enabled"
    }
}

/// The one flow in a flow file, or every problem it has.
fn load_one(flow_path: &Path, registry: &Registry) -> anyhow::Result<Flow> {
    let (mut flows, errors) = flow::load(&[flow_path.to_path_buf()], registry, &process_env);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("{} has {} problem(s)", flow_path.display(), errors.len());
    }
    flows
        .pop()
        .with_context(|| format!("{} is not a flow file", flow_path.display()))
}

/// A flow's schedule, or an error saying it has none.
fn schedule_of<'a>(flow: &'a Flow, flow_path: &Path) -> anyhow::Result<&'a Schedule> {
    match &flow.trigger {
        Trigger::Schedule(schedule) => Ok(schedule),
        _ => bail!(
            "{}: `{}` is not a schedule flow (its trigger has no `schedule:`)",
            flow_path.display(),
            flow.id
        ),
    }
}

/// A time written in a schedule's timezone (or RFC 3339).
fn local_time(schedule: &Schedule, text: &str) -> anyhow::Result<Timestamp> {
    schedule.parse_local(text).with_context(|| {
        format!(
            "`{text}` is not a time: write YYYY-MM-DDTHH:MM (in {}) or RFC 3339",
            schedule.timezone
        )
    })
}

/// Runs the event through the real runtime on a temporary store, without retries.
async fn run_served(
    flow: Flow,
    registry: Registry,
    trigger: Value,
    allow: &[String],
) -> anyhow::Result<(Arc<Flow>, Trace)> {
    let allow = allow
        .iter()
        .map(|n| n.parse().map_err(|e: String| anyhow::anyhow!(e)))
        .collect::<anyhow::Result<_>>()?;
    // The shipped flows post to a local server's request inspector (the default listen address).
    let inspector = crate::config::Config::load(None)?.listen;
    let http = HttpClient::new(OutboundPolicy {
        allow,
        own_address: Some(inspector),
        proxy: None,
    })?;
    let store = SledStore::temporary().context("cannot create a temporary store")?;
    let config = EngineConfig {
        no_retries: true,
        schedules: false,
        ..EngineConfig::default()
    };
    let engine = Engine::new(Arc::new(store), Catalog::new(registry), http, config);
    let flow = engine.deploy(vec![flow]).await?.remove(0).0;
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
    let store = engine.store();
    let event = store
        .event(run.event_id)
        .await?
        .context("the run's event is missing")?;
    let records = store.step_records(run.id).await?;
    let resume_urls = engine.resume_urls(&flow, run.id).await?;
    let trace = Trace {
        event,
        run,
        records,
        resume_urls,
    };
    Ok((flow, trace))
}

/// Prints each step (status, input, output, error), the expressions that resolved to nothing,
/// and the run's outcome.
fn print_trace(flow: &Flow, trace: &Trace, dry_run: bool) -> anyhow::Result<()> {
    let Trace { run, records, .. } = trace;
    println!(
        "flow {} (revision {}){}",
        flow.id,
        flow.revision,
        if dry_run {
            " — dry run: nothing was sent"
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
        let path = progress
            .path
            .as_deref()
            .map(|p| format!(", took path `{p}`"))
            .unwrap_or_default();
        println!(
            "\n{mark} {} ({}) — {} in {ms} ms{path}",
            step.id,
            step.kind,
            status_word(progress.status)
        );
        if let Some(r) = record {
            if step.kind != "map" && step.kind != "filter" {
                println!(
                    "  input:\n{}",
                    indent(&serde_json::to_string_pretty(&r.input)?)
                );
            }
            if let Some(out) = &r.output {
                println!("  output:\n{}", indent(&serde_json::to_string_pretty(out)?));
            }
            if let Some(err) = &r.error {
                println!("  error: {}", err.message);
            }
            for line in r.attempts.last().map_or(&[][..], |a| &a.logs[..]) {
                println!("  console: {line}");
            }
        }
    }
    let missing = unresolved(flow, trace);
    if !missing.is_empty() {
        println!("\n{} expression(s) resolved to nothing:", missing.len());
        for u in &missing {
            println!("  ⚠ {u}");
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
    Ok(())
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
