//! The `hookflow` binary: wires the engine, the connectors and the web UI to a CLI and an HTTP server.
//!
//! # Layout
//! - `cli`: the command line (clap).
//! - `config`: the server configuration (embedded default, file, flags).
//! - `serve`: `hookflow serve`: store, engine, workers, HTTP server, graceful shutdown; `reload`:
//!   the flows directory watched for changes.
//! - `server`: the axum application: catch hooks, REST API, request inspector.
//! - `alerts`: the configuration's `alerts:`: failed runs, backlog and refused hook requests sent
//!   as digests to an HTTP URL or Slack.
//! - `local`: commands that work on files without a server (`validate`, `schema`, `run`).
//! - `flow_tests`: `hookflow test`, flow tests beside the flows; `samples`: sample event files.
//! - `client`: commands that talk to a running server's API (`hooks`, `runs`, `inspect`,
//!   `capture`); `diff`: the flows on disk against the server's.

/// mimalloc instead of the system allocator: the catch path and the executor allocate many
/// small JSON values, and glibc's malloc took about a fifth of the CPU under load (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alerts;
mod cli;
mod client;
mod config;
mod diff;
mod flow_tests;
mod local;
mod migrate;
mod reload;
mod samples;
mod serve;
mod server;
mod storage_client;
mod worker_runtime;

use std::process::ExitCode;

use clap::Parser;
use hookflow_engine::steps::Registry;

use crate::cli::{Cli, Command, FlowsCommand, HooksCommand, QuarantineCommand, RunsCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output piped into `head` ends quietly when the pipe closes, as Unix tools
        // do, instead of panicking on the failed write. (The server keeps Rust's default: a
        // closed connection is an error to handle, not a signal.)
        // SAFETY: restoring the default action of a signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("hookflow-server")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Migrate(args) => migrate::migrate(args).await.map(|()| ExitCode::SUCCESS),
            Command::Validate { paths, samples } => Ok(local::validate(&paths, samples).await),
            Command::Test { paths } => Ok(flow_tests::run(&paths).await),
            Command::Schema => local::schema().map(|()| ExitCode::SUCCESS),
            Command::Run {
                flow,
                event,
                sample,
                tick,
                dry_run,
                allow_outbound,
            } => {
                let input = match (&event, &sample, &tick) {
                    (Some(path), _, _) => local::RunInput::Event(path),
                    (None, Some(name), _) => local::RunInput::Sample(name),
                    (None, None, Some(tick)) => local::RunInput::Tick(tick),
                    (None, None, None) => {
                        anyhow::bail!("give --event FILE, --sample NAME or --tick TIME")
                    }
                };
                local::run(&flow, input, dry_run, &allow_outbound).await
            }
            Command::Hooks {
                command: None,
                client,
            } => client::hooks(&client).await.map(|()| ExitCode::SUCCESS),
            Command::Hooks {
                command: Some(HooksCommand::Log { flow, client }),
                ..
            } => client::hook_log(&client, &flow)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Audit(args) => client::audit(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Runs {
                command: RunsCommand::List(args),
            } => client::list_runs(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Runs {
                command: RunsCommand::Show { run_id, client },
            } => client::show_run(&client, &run_id)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Runs {
                command: RunsCommand::Retry(args),
            } => client::retry(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Replay(args) => client::replay(&args).await.map(|()| ExitCode::SUCCESS),
            Command::Flows {
                command: FlowsCommand::History { flow, client },
            } => client::flow_history(&client, &flow)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Schedules(args) => match &args.flow {
                Some(flow) => local::schedules(flow, args.count, args.from.as_deref()),
                None => client::schedules(&args.client).await,
            }
            .map(|()| ExitCode::SUCCESS),
            Command::Trigger {
                flow,
                event,
                sample,
                wait,
                client,
            } => client::trigger(&client, &flow, event.as_deref(), sample.as_deref(), wait).await,
            Command::Capture {
                flow,
                count,
                client,
            } => client::capture(&client, &flow, count)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Diff { paths, client } => {
                diff::diff(&paths, &client).await.map(|_| ExitCode::SUCCESS)
            }
            Command::Inspect { bin, client } => client::inspect(&client, bin.as_deref())
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Quarantine {
                command: QuarantineCommand::List(client),
            } => client::quarantine_list(&client)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Quarantine {
                command: QuarantineCommand::Reingest { id, client },
            } => client::quarantine_reingest(&client, &id)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Storage { command } => storage_client::run(&command)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The step kinds: the engine's built-ins and every connector's.
fn registry() -> Registry {
    let mut registry = Registry::builtin();
    hookflow_connectors::register_all(&mut registry);
    registry
}
