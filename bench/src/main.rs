//! `hookflow-bench`: runs one benchmark scenario (or all) against the release build of hookflow,
//! prints the figures, and with `--record` appends them to `bench/RESULTS.md` with the date, the
//! commit and the machine.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Parser;
use hookflow_bench::load::LoadReport;
use hookflow_bench::scenario::{self, Options, Postgres, Scenario};
use hookflow_bench::sink::Sink;

/// Benchmark scenarios for hookflow (127.0.0.1 only).
#[derive(Debug, Parser)]
struct Args {
    /// The scenarios to run (default: all five).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Events to send per scenario.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// The server's workers.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Run the server with a compressed store (`compression: true`).
    #[arg(long)]
    compression: bool,
    /// The store: `sled` (default), `postgres` (a throwaway PostgreSQL cluster started for the
    /// run, a fresh database per scenario) or a `postgres://…` URL of an empty database.
    #[arg(long, default_value = "sled")]
    store: String,
    /// Nodes sharing the PostgreSQL store, each started with `--workers`; the load generator's
    /// connections take their catch URLs in turn.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Send at most this many events per second (default: as fast as they are answered), to see
    /// whether a node keeps pace with a steady load.
    #[arg(long)]
    rate: Option<f64>,
    /// The hookflow binary (default: the one beside this program).
    #[arg(long)]
    hookflow: Option<PathBuf>,
    /// Only send events to this catch URL of a server already running (for profiling it) and
    /// print the acknowledgment figures.
    #[arg(long, conflicts_with = "scenarios")]
    url: Option<String>,
    /// Only measure the machine's ceiling, without hookflow: events sent to the benchmark's own
    /// sink (which parses each and answers 200), then through a relay that passes each on to the
    /// sink (one request in, one out, like an end-to-end run).
    #[arg(long, conflicts_with_all = ["scenarios", "url"])]
    ceiling: bool,
    /// Append the figures to this results file (bench/RESULTS.md).
    #[arg(long)]
    record: Option<PathBuf>,
}

const HEADER: &str = "scenario | runs | acked/s | completed runs/s | ack p50 / p99 / p99.9 ms | RSS peak MB | store KB per 1000 runs | CPU ms per 1000 runs | notes";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.ceiling {
        let sink = Sink::start().await?;
        let relay = hookflow_bench::relay::start(sink.url.clone()).await?;
        for (label, url) in [("to the sink", &sink.url), ("through a relay", &relay)] {
            let load = hookflow_bench::load::send(url, 0, args.count, args.concurrency).await?;
            println!("{label}: {}", describe(&load, args.count));
        }
        return Ok(());
    }
    if let Some(url) = &args.url {
        let load = hookflow_bench::load::send(url, 0, args.count, args.concurrency).await?;
        println!("{}", describe(&load, args.count));
        return Ok(());
    }
    let options = Options {
        hookflow: match args.hookflow {
            Some(path) => path,
            None => hookflow_bench::server::default_binary()?,
        },
        count: args.count,
        concurrency: args.concurrency,
        workers: args.workers,
        compression: args.compression,
        nodes: args.nodes,
        rate: args.rate,
        postgres: match args.store.as_str() {
            "sled" => None,
            "postgres" => Some(Postgres::Throwaway(hookflow_testpg::Cluster::start()?)),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(Postgres::Given(url.to_owned()))
            }
            other => anyhow::bail!("--store {other}: expected sled, postgres or a postgres:// URL"),
        },
    };
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Ingest,
            Scenario::IngestDedupe,
            Scenario::EndToEnd,
            Scenario::Backlog,
            Scenario::TenSteps,
        ]
    } else {
        args.scenarios
    };
    // Opened first, so that a bad path fails now rather than after the scenarios have run.
    let mut record = args.record.as_deref().map(results_file).transpose()?;
    let context = format!(
        "{} | {} | {} | concurrency {}, workers {}{}{}{}",
        shell("date -u +%F"),
        shell("git rev-parse --short HEAD"),
        machine(),
        args.concurrency,
        args.workers,
        if args.compression {
            ", compressed store"
        } else {
            ""
        },
        match (&options.postgres, args.nodes) {
            (None, _) => String::new(),
            (Some(_), 1) => ", PostgreSQL store".to_owned(),
            (Some(_), n) => format!(", PostgreSQL store, {n} nodes"),
        },
        args.rate
            .map(|rate| format!(", sent at {rate} events/s"))
            .unwrap_or_default()
    );
    println!("{HEADER}");
    for s in scenarios {
        let report = scenario::run(s, &options)
            .await
            .with_context(|| format!("scenario {s:?}"))?;
        println!("{}", report.row());
        // Each row as soon as it is measured: a later scenario's failure loses none.
        if let Some(file) = &mut record {
            writeln!(file, "| {context} | {} |", report.row())?;
        }
    }
    Ok(())
}

/// Opens a results file for appending; a new one starts with the table's header.
fn results_file(path: &Path) -> anyhow::Result<File> {
    let open = || {
        let new = !path.exists();
        let mut file = OpenOptions::new().append(true).create(true).open(path)?;
        if new {
            let columns = 4 + HEADER.split(" | ").count();
            writeln!(file, "| date | commit | machine | load | {HEADER} |")?;
            writeln!(file, "|{}", " --- |".repeat(columns))?;
        }
        Ok::<_, std::io::Error>(file)
    };
    open().with_context(|| format!("cannot append to the results file {}", path.display()))
}

/// The acknowledgment figures of a load run.
fn describe(load: &LoadReport, count: u64) -> String {
    format!(
        "acked {} of {count} in {:.1} s: {:.0} events/s; failed {}; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        load.acked.len(),
        load.elapsed.as_secs_f64(),
        load.acked_per_sec(),
        load.failed,
        load.latency_ms(0.5),
        load.latency_ms(0.99),
        load.latency_ms(0.999)
    )
}

/// A command's trimmed output ("?" if it fails).
fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// The CPU model and count, from /proc/cpuinfo.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{cores} × {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_results_file_starts_with_the_table_header_and_an_old_one_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.md");
        writeln!(results_file(&path).unwrap(), "| row 1 |").unwrap();
        writeln!(results_file(&path).unwrap(), "| row 2 |").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("| date | commit | machine | load | scenario | runs |"));
        assert_eq!(lines[1].matches("---").count(), 13, "one per column");
        assert_eq!(lines[2..], ["| row 1 |", "| row 2 |"]);
    }

    #[test]
    fn a_results_file_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir/results.md");
        let error = format!("{:#}", results_file(&path).unwrap_err());
        assert!(error.contains("no-such-dir/results.md"), "{error}");
    }
}
