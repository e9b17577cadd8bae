//! Failure alerts for the whole server (the configuration's `alerts:`): when runs fail for good
//! (after their retries), when the backlog passes `backlog_over` queued steps, and when a flow's
//! catch hook refuses more than `rejections.over` requests within `rejections.within`, a message
//! goes to each target — an HTTP URL (the digest as JSON), a Slack incoming webhook (its text) or
//! email addresses (its text, through the SMTP server of the `email` step: `SMTP_HOST`, …).
//!
//! Invariants:
//! - A storm is one message per `digest` window, not one per run: the first failure after a
//!   quiet window is sent at once; failures within the window after a message are gathered and
//!   sent together when it ends. A digest counts every failed run and lists the first
//!   [`LISTED_RUNS`] of them.
//! - A target that cannot be reached costs that message (logged, counted on `/metrics`), never a
//!   run: alerts are sent by their own task, outside the workers.
//! - The alert task learns of failures from the engine's run notices; when it misses some (its
//!   receiver lagged), the digest says how many, since failures among them go unlisted.
//! - A condition (backlog, rejections) is alerted when it starts to hold, not again while it
//!   holds; it is checked every [`check_every`] of the digest window, and is open until it stops.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookflow_engine::flow::spec::HumanDuration;
use hookflow_engine::model::RunStatus;
use hookflow_engine::runtime::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::server::HookLog;

/// The most failed runs a digest names; it counts all of them.
pub const LISTED_RUNS: usize = 20;

/// How long a target has to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The `alerts:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where alerts go; none: no alerts.
    #[serde(default)]
    pub to: Vec<TargetConfig>,
    /// At most one message per this long; failures within it are sent together (default `1m`).
    #[serde(default = "default_digest")]
    pub digest: HumanDuration,
    /// Alert when more than this many steps are queued (none: no backlog alert).
    #[serde(default)]
    pub backlog_over: Option<u64>,
    /// Alert when a flow's catch hook refuses more than `over` requests within `within` (bad
    /// signatures, rate limits, bodies too large; none: no such alert).
    #[serde(default)]
    pub rejections: Option<RejectionsConfig>,
}

/// When refused catch-hook requests are alerted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionsConfig {
    /// More than this many refused requests of one flow's hook …
    pub over: u64,
    /// … within this long.
    pub within: HumanDuration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            to: Vec::new(),
            digest: default_digest(),
            backlog_over: None,
            rejections: None,
        }
    }
}

fn default_digest() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// One target: exactly one of `url`, `slack` and `email`. Each may be `${env:NAME}` (the
/// environment, then the secrets file), so the URL stays out of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// POST the digest as JSON here.
    #[serde(default)]
    pub url: Option<String>,
    /// A Slack incoming-webhook URL: the digest's text is posted as the message.
    #[serde(default)]
    pub slack: Option<String>,
    /// Email addresses, separated by commas: the digest's text is mailed through the SMTP server
    /// the `email` step uses (`SMTP_HOST`, `SMTP_FROM`, …).
    #[serde(default)]
    pub email: Option<String>,
}

/// A target, resolved.
#[derive(Debug, Clone)]
enum Target {
    Http(reqwest::Url),
    Slack(reqwest::Url),
    Email {
        mailer: hookflow_connectors::email::Mailer,
        to: String,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Http(_) => "url",
            Target::Slack(_) => "slack",
            Target::Email { .. } => "email",
        }
    }
}

impl AlertsConfig {
    /// The targets, with `${env:NAME}` read through `env`.
    fn targets(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Target>> {
        self.to
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let read = |text: &str| match text
                    .strip_prefix("${env:")
                    .and_then(|r| r.strip_suffix('}'))
                {
                    Some(name) => env(name).with_context(|| {
                        format!("alerts.to[{i}]: `{name}` is not set (environment or secrets file)")
                    }),
                    None => Ok(text.to_owned()),
                };
                let url = |text: &str| {
                    reqwest::Url::parse(&read(text)?)
                        .map_err(|e| anyhow::anyhow!("alerts.to[{i}]: not a URL: {e}"))
                };
                match (&t.url, &t.slack, &t.email) {
                    (Some(u), None, None) => Ok(Target::Http(url(u)?)),
                    (None, Some(u), None) => Ok(Target::Slack(url(u)?)),
                    (None, None, Some(to)) => Ok(Target::Email {
                        mailer: hookflow_connectors::email::Mailer::from_env(env)
                            .map_err(|e| anyhow::anyhow!("alerts.to[{i}]: email: {e}"))?,
                        to: read(to)?,
                    }),
                    _ => anyhow::bail!(
                        "alerts.to[{i}]: give exactly one of `url`, `slack` and `email`"
                    ),
                }
            })
            .collect()
    }
}

/// What `/metrics` shows of alerts, since the process started.
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Failed runs waiting for the next digest (the open alerts).
    pub open: AtomicU64,
    /// Failed runs alerted about.
    pub runs_failed: AtomicU64,
    /// Messages delivered, and messages a target did not take.
    pub sent: AtomicU64,
    /// See `sent`.
    pub send_failures: AtomicU64,
}

/// The process's alert counters (one server per process; read by `/metrics`).
pub static STATS: AlertStats = AlertStats {
    open: AtomicU64::new(0),
    runs_failed: AtomicU64::new(0),
    sent: AtomicU64::new(0),
    send_failures: AtomicU64::new(0),
};

/// Failed runs gathered for the next message.
#[derive(Debug, Default)]
struct Digest {
    count: u64,
    by_flow: BTreeMap<String, u64>,
    runs: Vec<Value>,
    /// Run notices the task missed (its receiver lagged): failures among them go unlisted.
    missed: u64,
    /// Conditions that started to hold: `{alert, text, …}`.
    conditions: Vec<Value>,
}

impl Digest {
    fn is_empty(&self) -> bool {
        self.count == 0 && self.missed == 0 && self.conditions.is_empty()
    }

    fn add(&mut self, run: Value, flow: &str) {
        self.count += 1;
        *self.by_flow.entry(flow.to_owned()).or_default() += 1;
        if self.runs.len() < LISTED_RUNS {
            self.runs.push(run);
        }
    }

    /// The message: JSON with a `text` for people.
    fn message(&self, base_url: &str, window: Duration) -> Value {
        let flows = self
            .by_flow
            .iter()
            .map(|(f, n)| format!("{f}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut parts: Vec<String> = Vec::new();
        if self.count > 0 {
            let mut failed = format!("{} run(s) failed ({flows})", self.count);
            if let Some(first) = self.runs.first() {
                let id = first["run_id"].as_str().unwrap_or_default();
                failed.push_str(&format!(
                    ". First: {id} of {}: {} — {base_url}/#/runs/{id}",
                    first["flow"].as_str().unwrap_or_default(),
                    first["reason"].as_str().unwrap_or("no reason recorded"),
                ));
            }
            parts.push(failed);
        }
        if self.missed > 0 {
            parts.push(format!(
                "{} run notices were missed: failures among them are not listed",
                self.missed
            ));
        }
        parts.extend(
            self.conditions
                .iter()
                .map(|c| c["text"].as_str().unwrap_or_default().to_owned()),
        );
        let text = format!("hookflow: {}", parts.join("; "));
        let mut kinds: Vec<&str> = Vec::new();
        if self.count > 0 {
            kinds.push("runs_failed");
        }
        kinds.extend(self.conditions.iter().filter_map(|c| c["alert"].as_str()));
        kinds.dedup();
        json!({
            "alerts": kinds,
            "text": text,
            "count": self.count,
            "flows": self.by_flow,
            "runs": self.runs,
            "more": self.count.saturating_sub(self.runs.len() as u64),
            "missed_notices": self.missed,
            "digest_seconds": window.as_secs_f64(),
            "conditions": self.conditions,
            "server": base_url,
        })
    }
}

/// Alerts as configured, checked, before the server starts.
pub struct Alerts {
    targets: Vec<Target>,
    client: reqwest::Client,
    window: Duration,
    backlog_over: Option<u64>,
    rejections: Option<RejectionsConfig>,
}

impl AlertsConfig {
    /// Checks the section (targets resolved through `env`); `None` when no target is configured.
    pub fn prepare(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<Alerts>> {
        let targets = self.targets(env)?;
        if targets.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            !self.digest.0.is_zero(),
            "alerts.digest must be longer than 0s"
        );
        let client = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .build()
            .context("cannot set up the alerts' HTTP client")?;
        Ok(Some(Alerts {
            targets,
            client,
            window: self.digest.0,
            backlog_over: self.backlog_over,
            rejections: self.rejections.clone(),
        }))
    }
}

impl Alerts {
    /// Starts the alert task; it stops when `stopped` turns true.
    pub fn spawn(
        self,
        engine: Arc<Engine>,
        hook_log: HookLog,
        base_url: String,
        stopped: watch::Receiver<bool>,
    ) {
        let sender = Sender {
            client: self.client,
            targets: self.targets,
            base_url,
            window: self.window,
            watch: Watch {
                backlog_over: self.backlog_over,
                rejections: self.rejections,
                hook_log,
                ..Watch::default()
            },
        };
        info!(targets = sender.targets.len(), window = ?sender.window, "failure alerts on");
        let notices = engine.subscribe();
        tokio::spawn(sender.run(engine, notices, stopped));
    }
}

struct Sender {
    client: reqwest::Client,
    targets: Vec<Target>,
    base_url: String,
    window: Duration,
    watch: Watch,
}

/// How often conditions are checked: a tenth of the digest window, from 100 ms to 10 s.
fn check_every(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The conditions watched, and which hold.
#[derive(Default)]
struct Watch {
    backlog_over: Option<u64>,
    rejections: Option<RejectionsConfig>,
    hook_log: HookLog,
    backlog_open: bool,
    /// Each check's refused-request totals by flow, oldest first, reaching back `within`.
    rejected: VecDeque<(Instant, BTreeMap<String, u64>)>,
    /// Flows whose rejections alert is open.
    rejecting: BTreeSet<String>,
}

impl Watch {
    /// Checks every condition; the ones that started to hold go into `digest`.
    async fn check(&mut self, engine: &Engine, digest: &mut Digest) {
        if let Some(over) = self.backlog_over {
            match engine.store().stats().await {
                Ok(stats) if stats.queued > over && !self.backlog_open => {
                    self.backlog_open = true;
                    warn!(queued = stats.queued, over, "alert: backlog");
                    digest.conditions.push(json!({
                        "alert": "backlog",
                        "queued": stats.queued,
                        "over": over,
                        "text": format!("backlog: {} steps queued (alert over {over})", stats.queued),
                    }));
                }
                Ok(stats) if stats.queued <= over && self.backlog_open => {
                    self.backlog_open = false;
                    info!(queued = stats.queued, over, "alert closed: backlog");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "alerts: cannot count the backlog"),
            }
        }
        if let Some(RejectionsConfig { over, within }) = &self.rejections {
            let now = Instant::now();
            let mut totals: BTreeMap<String, u64> = BTreeMap::new();
            for (flow, kind, _, n) in self.hook_log.counts() {
                if kind == "rejected" {
                    *totals.entry(flow).or_default() += n;
                }
            }
            // Keep the newest sample at or before the window's start as the baseline.
            while self.rejected.len() > 1 && now - self.rejected[1].0 >= within.0 {
                self.rejected.pop_front();
            }
            let baseline = self
                .rejected
                .front()
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            for (flow, total) in &totals {
                let recent = total - baseline.get(flow).copied().unwrap_or(0);
                if recent > *over && self.rejecting.insert(flow.clone()) {
                    warn!(%flow, recent, over, "alert: hook rejections");
                    digest.conditions.push(json!({
                        "alert": "hook_rejections",
                        "flow": flow,
                        "rejected": recent,
                        "over": over,
                        "within_seconds": within.0.as_secs_f64(),
                        "text": format!(
                            "the catch hook of {flow} refused {recent} requests within {:?} (alert over {over})",
                            within.0
                        ),
                    }));
                } else if recent <= *over && self.rejecting.remove(flow) {
                    info!(%flow, "alert closed: hook rejections");
                }
            }
            self.rejected.push_back((now, totals));
        }
    }

    /// Conditions that hold now.
    fn open(&self) -> u64 {
        u64::from(self.backlog_open) + self.rejecting.len() as u64
    }
}

impl Sender {
    async fn run(
        mut self,
        engine: Arc<Engine>,
        mut notices: broadcast::Receiver<hookflow_engine::store::RunNotice>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut digest = Digest::default();
        let mut last_sent: Option<Instant> = None;
        let mut checks = tokio::time::interval(check_every(self.window));
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            STATS
                .open
                .store(digest.count + self.watch.open(), Ordering::Relaxed);
            let due = (!digest.is_empty())
                .then(|| last_sent.map_or_else(Instant::now, |t| t + self.window));
            tokio::select! {
                _ = async { stopped.wait_for(|s| *s).await.map(|_| ()) } => return,
                _ = sleep_until(due) => {
                    self.send(&std::mem::take(&mut digest)).await;
                    last_sent = Some(Instant::now());
                }
                _ = checks.tick() => self.watch.check(&engine, &mut digest).await,
                notice = notices.recv() => match notice {
                    Ok(n) if n.status == RunStatus::Failed => {
                        let run = engine.store().run(n.run_id).await.ok().flatten();
                        let flow = run.as_ref().map_or("?".to_owned(), |r| r.flow_id.to_string());
                        let reason = run.and_then(|r| r.reason);
                        digest.add(json!({
                            "run_id": n.run_id.to_string(),
                            "flow": flow,
                            "reason": reason,
                            "url": format!("{}/#/runs/{}", self.base_url, n.run_id),
                        }), &flow);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "alerts: run notices missed; the digest says so");
                        digest.missed += missed;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// POSTs `body` as JSON to `url`; why not, in words.
    async fn post(&self, url: &reqwest::Url, body: &Value) -> Result<(), String> {
        let sent = self.client.post(url.clone()).json(body).send().await;
        sent.and_then(reqwest::Response::error_for_status)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Sends one digest to every target.
    async fn send(&self, digest: &Digest) {
        let message = digest.message(&self.base_url, self.window);
        STATS.runs_failed.fetch_add(digest.count, Ordering::Relaxed);
        for target in &self.targets {
            let sent = match target {
                Target::Http(url) => self.post(url, &message).await,
                Target::Slack(url) => self.post(url, &json!({ "text": message["text"] })).await,
                Target::Email { mailer, to } => {
                    let text = message["text"].as_str().unwrap_or_default();
                    let subject = format!("hookflow: {}", first_sentence(text));
                    let key = format!(
                        "alert.{}",
                        hookflow_engine::model::Timestamp::now().millis()
                    );
                    mailer.send(to, &subject, text, &key, SEND_TIMEOUT).await
                }
            };
            match sent {
                Ok(()) => {
                    STATS.sent.fetch_add(1, Ordering::Relaxed);
                    info!(target = target.name(), runs = digest.count, "alert sent");
                }
                Err(e) => {
                    STATS.send_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(target = target.name(), error = %e, "alert not delivered");
                }
            }
        }
    }
}

/// A digest's first sentence, for a mail's subject (at most 120 characters).
fn first_sentence(text: &str) -> String {
    let sentence = text.split(". ").next().unwrap_or_default();
    match sentence.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &sentence[..cut]),
        None => sentence.to_owned(),
    }
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_exactly_one_url_read_from_the_environment_when_asked() {
        let config = |to: Value| AlertsConfig {
            to: serde_json::from_value(to).unwrap(),
            ..AlertsConfig::default()
        };
        let env = |name: &str| (name == "HOOK").then(|| "https://hooks.slack.com/x".to_owned());
        let targets =
            config(json!([{ "url": "https://ops.example.com/a" }, { "slack": "${env:HOOK}" }]))
                .targets(&env)
                .unwrap();
        assert!(
            matches!(&targets[1], Target::Slack(u) if u.as_str() == "https://hooks.slack.com/x")
        );
        let e = config(json!([{ "url": "https://a", "slack": "https://b" }]))
            .targets(&env)
            .unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = config(json!([{ "slack": "${env:NOPE}" }]))
            .targets(&env)
            .unwrap_err();
        assert!(e.to_string().contains("`NOPE` is not set"), "{e}");
    }

    #[test]
    fn a_digest_counts_every_run_and_names_the_first_few() {
        let mut digest = Digest::default();
        for i in 0..(LISTED_RUNS + 5) {
            let flow = if i % 2 == 0 { "orders" } else { "leads" };
            digest.add(
                json!({ "run_id": format!("run_{i}"), "flow": flow, "reason": "boom" }),
                flow,
            );
        }
        let m = digest.message("http://h", Duration::from_secs(60));
        assert_eq!(m["count"], (LISTED_RUNS + 5) as u64);
        assert_eq!(m["runs"].as_array().unwrap().len(), LISTED_RUNS);
        assert_eq!(m["more"], 5);
        assert_eq!(m["flows"], json!({ "leads": 12, "orders": 13 }));
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with("hookflow: 25 run(s) failed (leads: 12, orders: 13)"),
            "{text}"
        );
        assert!(
            text.contains("run_0 of orders: boom — http://h/#/runs/run_0"),
            "{text}"
        );
    }
}
