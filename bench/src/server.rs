//! A `hookflow serve` child process for a scenario: started on a free port of 127.0.0.1 with a
//! flows directory and a data directory, watched through `/proc` (resident memory, CPU time) and
//! its `/metrics`, and stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running server.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The server's base URL.
    pub base: String,
    /// The catch URL of the flow the scenario posts to.
    pub catch_url: String,
    client: reqwest::Client,
}

/// Linux reports CPU time in `/proc` in ticks of USER_HZ, which is 100 on every Linux ABI.
const TICKS_PER_SEC: u64 = 100;

impl Server {
    /// Starts `hookflow serve` from `bin` in `dir` (which holds `flows/` and gets `data/`) with
    /// `workers` workers, HTTP actions allowed to reach 127.0.0.1, `config` as its
    /// configuration file and the store at `store` (`None`: sled in `data/`). Waits for the
    /// banner and finds `flow`'s catch URL.
    pub fn start(
        bin: &Path,
        dir: &Path,
        flow: &str,
        workers: usize,
        config: &str,
        store: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::write(dir.join("config.yaml"), config)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--allow-outbound", "127.0.0.1"])
            .args(["--workers", &workers.to_string()])
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--flows")
            .arg(dir.join("flows"))
            .arg("--data")
            .arg(dir.join("data"))
            .args(store.map(|url| ["--store", url]).into_iter().flatten())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let (mut base, mut catch_url) = (None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some(url) = line.split(" listening on ").nth(1) {
                base = Some(url.trim().to_owned());
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [id, "POST", url] = words[..] {
                if id == flow {
                    catch_url = Some(url.to_owned());
                }
            }
            if line.starts_with("request inspector:") {
                break;
            }
        }
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let (Some(base), Some(catch_url)) = (base, catch_url) else {
            bail!("the server did not print its address and the catch URL of `{flow}`");
        };
        Ok(Self {
            child,
            base,
            catch_url,
            client: reqwest::Client::new(),
        })
    }

    fn proc_status(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.proc_status("VmRSS:")
    }

    /// The most resident memory the process has had, in KiB.
    pub fn rss_peak_kib(&self) -> anyhow::Result<u64> {
        self.proc_status("VmHWM:")
    }

    /// CPU time the process has used (user + system), in milliseconds.
    pub fn cpu_ms(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks * 1000 / TICKS_PER_SEC)
    }

    /// The value of a series (its name with labels) in `/metrics`; 0 if absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<u64> {
        Ok(series_value(&self.metrics().await?, series))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.base);
        Ok(self.client.get(url).send().await?.text().await?)
    }

    /// How many runs of `flow` finished with each final status since the server started, from
    /// `/metrics`: (succeeded, filtered, failed).
    pub async fn finished(&self, flow: &str) -> anyhow::Result<(u64, u64, u64)> {
        let text = self.metrics().await?;
        let count = |status: &str| {
            series_value(
                &text,
                &format!("hookflow_runs_total{{flow=\"{flow}\",status=\"{status}\"}}"),
            )
        };
        Ok((count("succeeded"), count("filtered"), count("failed")))
    }
}

/// How many runs of `flow` finished with each final status on any of `servers` (nodes sharing
/// one store): (succeeded, filtered, failed).
pub async fn finished(servers: &[&Server], flow: &str) -> anyhow::Result<(u64, u64, u64)> {
    let mut total = (0, 0, 0);
    for server in servers {
        let (ok, filtered, failed) = server.finished(flow).await?;
        total = (total.0 + ok, total.1 + filtered, total.2 + failed);
    }
    Ok(total)
}

/// Waits until `expected` runs of `flow` have finished (any final status) on `servers` together;
/// returns when the last one was seen. Fails if none finish for `stall`.
pub async fn wait_finished(
    servers: &[&Server],
    flow: &str,
    expected: u64,
    stall: Duration,
) -> anyhow::Result<Instant> {
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let (ok, filtered, failed) = finished(servers, flow).await?;
        let done = ok + filtered + failed;
        if done >= expected {
            return Ok(Instant::now());
        }
        if done > last {
            (last, since) = (done, Instant::now());
        } else if since.elapsed() > stall {
            bail!("{done} of {expected} runs finished, none for {stall:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Server {
    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` in a Prometheus text; 0 if absent.
fn series_value(text: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Bytes a directory tree takes on disk (allocated blocks, as `du` counts).
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The `hookflow` binary beside this program (both are built into the same target directory).
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("hookflow"))
}
