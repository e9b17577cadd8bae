//! The test harness: the real `hookflow` binary on a random port with temporary flow and data
//! directories, a real HTTP sink on 127.0.0.1, and waiting on conditions with a deadline.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;

/// How long any awaited condition may take: generous, since CI machines can be slow (fsync under
/// load takes long); a passing test never waits for it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `hookflow` binary under test.
pub fn hookflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hookflow"))
}

/// Runs `hookflow ARGS` to completion.
pub fn run_cli(args: &[&str], cwd: &Path) -> Output {
    hookflow()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("hookflow runs")
}

/// Polls `check` every 25 ms until it yields a value; panics with `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `hookflow serve` child process with its own flows and data directories.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The lines printed at start-up.
    pub banner: Vec<String>,
    dir: TempDir,
    /// One client for every request (building a client per request is slow).
    client: reqwest::Client,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Server {
    /// Starts a server with these flow files (name, YAML); HTTP actions may reach 127.0.0.1.
    pub fn start(flows: &[(&str, &str)]) -> Self {
        Self::start_with(flows, &["--allow-outbound", "127.0.0.1"], &[])
    }

    /// Starts a server with extra `serve` arguments and environment variables.
    pub fn start_with(flows: &[(&str, &str)], extra_args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1:0", flows, extra_args, envs)
    }

    /// Starts a server listening on `listen`.
    pub fn start_on(
        listen: &str,
        flows: &[(&str, &str)],
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("flows")).unwrap();
        for (name, yaml) in flows {
            std::fs::write(dir.path().join("flows").join(name), yaml).unwrap();
        }
        let mut server = Self {
            child: None,
            base: String::new(),
            banner: Vec::new(),
            dir,
            client: reqwest::Client::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn(listen);
        server
    }

    fn spawn(&mut self, listen: &str) {
        let dir = self.dir.path();
        let mut child = hookflow()
            .args(["serve", "--listen", listen])
            .arg("--flows")
            .arg(dir.join("flows"))
            .arg("--data")
            .arg(dir.join("data"))
            .args(&self.extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("HOOKFLOW_TEST_LOG").unwrap_or("error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hookflow serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        // The banner ends with the request inspector line.
        for line in lines.by_ref() {
            let line = line.expect("stdout readable");
            let done = line.starts_with("request inspector:");
            banner.push(line);
            if done {
                break;
            }
        }
        let first = banner.first().cloned().unwrap_or_default();
        let base = first
            .split(" listening on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in banner {banner:?}"));
        self.base = base.trim().to_owned();
        self.banner = banner;
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        // Pooled connections to a previous process are dead.
        self.client = reqwest::Client::new();
    }

    /// The catch URL printed for a flow.
    pub fn catch_url(&self, flow: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(flow) && parts.next() == Some("POST"))
                    .then(|| parts.next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("no catch URL for {flow} in {:?}", self.banner))
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn stop_gracefully(&mut self) -> bool {
        self.send_sigterm();
        self.wait_for_exit()
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (after a signal); returns whether it exited successfully.
    pub fn wait_for_exit(&mut self) -> bool {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's resident memory, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The size of the data directory on disk, in bytes.
    pub fn data_bytes(&self) -> u64 {
        fn size(path: &Path) -> u64 {
            std::fs::read_dir(path).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => size(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        size(&self.data_dir())
    }

    /// Runs `hookflow ARGS --server BASE` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        hookflow()
            .args(args)
            .args(["--server", &self.base])
            .stdin(Stdio::null())
            .output()
            .expect("hookflow runs")
    }

    /// The directory the server reads its flows from.
    pub fn flows_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("flows")
    }

    /// POSTs JSON to an API path; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_to(&format!("{}{path}", self.base), body).await
    }

    /// POSTs JSON to a URL; returns status and JSON.
    pub async fn post_to(&self, url: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .expect("server answers");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }

    /// Every run of a flow, newest first, following the cursor.
    pub async fn all_runs(&self, flow: &str) -> Vec<Value> {
        let mut runs = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(&format!("/api/v1/runs?flow={flow}&limit=1000{cursor}"))
                .await;
            assert_eq!(status, 200, "{page}");
            runs.extend(page["runs"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return runs,
            }
        }
    }

    /// Kills the process with SIGKILL: no shutdown, no final flush.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL delivered");
        child.wait().expect("reaped");
    }

    /// Writes (or replaces) a flow file, for the next start.
    pub fn write_flow(&self, name: &str, yaml: &str) {
        std::fs::write(self.dir.path().join("flows").join(name), yaml).unwrap();
    }

    /// Removes an environment variable for the next start.
    pub fn remove_env(&mut self, name: &str) {
        self.envs.retain(|(k, _)| k != name);
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.remove_env(name);
        self.envs.push((name.to_owned(), value.to_owned()));
    }

    /// Replaces the extra `serve` arguments, for the next start.
    pub fn set_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the server again on the same directories (and the same port).
    pub fn restart(&mut self) {
        let listen = self.base.trim_start_matches("http://").to_owned();
        self.spawn(&listen);
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.get_raw("/metrics").await;
        r.text().await.expect("metrics text")
    }

    /// GETs an API path; returns status and JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.get_raw(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }

    /// GETs a path; returns the response as it came.
    async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("server answers")
    }

    /// POSTs JSON to a flow's catch URL; returns status and JSON once the run it started (if
    /// any) is readable through the API (an accepted event's run becomes readable a moment after
    /// the acknowledgment, when the store moves it out of its inbox).
    pub async fn send(&self, flow: &str, body: &Value) -> (u16, Value) {
        let (status, answer) = self.post_to(&self.catch_url(flow), body).await;
        if let Some(run_id) = answer["run_id"].as_str() {
            eventually(&format!("run {run_id} to be readable"), || async {
                let (status, _) = self.get(&format!("/api/v1/runs/{run_id}")).await;
                // 401 where the API needs credentials this helper does not send.
                (status != 404).then_some(())
            })
            .await;
        }
        (status, answer)
    }

    /// Waits until a run is final; returns its detail.
    pub async fn finished_run(&self, run_id: &str) -> Value {
        eventually(&format!("run {run_id} to finish"), || async {
            let (status, run) = self.get(&format!("/api/v1/runs/{run_id}")).await;
            let done = status == 200
                && matches!(
                    run["status"].as_str(),
                    Some("succeeded" | "failed" | "filtered")
                );
            done.then_some(run)
        })
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers.
    pub headers: HeaderMap,
    /// The body, parsed as JSON (or a JSON string of the text).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

/// An HTTP server on 127.0.0.1 that records requests and answers with scripted statuses.
#[derive(Clone)]
pub struct Sink {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    gate: Arc<watch::Sender<bool>>,
}

#[derive(Clone)]
struct SinkState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<u16>>>,
    retry_after: Option<&'static str>,
    open: watch::Receiver<bool>,
}

/// How a sink answers.
#[derive(Debug, Default)]
pub struct SinkOptions<'a> {
    /// Statuses answered in order, then 200.
    pub statuses: &'a [u16],
    /// A `Retry-After` header on every non-2xx answer.
    pub retry_after: Option<&'static str>,
    /// Hold every answer (after recording the request) until [`Sink::release`].
    pub held: bool,
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
}

impl Sink {
    /// A sink answering 200 to everything.
    pub async fn start() -> Self {
        Self::scripted(&[]).await
    }

    /// A sink answering the given statuses in order, then 200.
    pub async fn scripted(statuses: &[u16]) -> Self {
        Self::with(SinkOptions {
            statuses,
            ..SinkOptions::default()
        })
        .await
    }

    /// A sink that holds every request unanswered until [`release`](Self::release).
    pub async fn held() -> Self {
        Self::with(SinkOptions {
            held: true,
            ..SinkOptions::default()
        })
        .await
    }

    /// A sink with options.
    pub async fn with(options: SinkOptions<'_>) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let (gate, open) = watch::channel(!options.held);
        let state = SinkState {
            received: received.clone(),
            script: Arc::new(Mutex::new(options.statuses.iter().rev().copied().collect())),
            retry_after: options.retry_after,
            open,
        };
        let app = Router::new().fallback(any(record)).with_state(state);
        let address = format!("127.0.0.1:{}", options.port.unwrap_or(0));
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            received,
            gate: Arc::new(gate),
        }
    }

    /// Lets held answers (and all later ones) go.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// What was received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A port on 127.0.0.1 that nothing listens on (for now): connections to it are refused.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn record(
    State(mut state): State<SinkState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let parsed = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    state.received.lock().unwrap().push(Received {
        headers,
        body: parsed,
        at: Instant::now(),
    });
    let _ = state.open.wait_for(|open| *open).await;
    let status = state.script.lock().unwrap().pop().unwrap_or(200);
    let mut answer = HeaderMap::new();
    if let (Some(after), false) = (state.retry_after, (200..300).contains(&status)) {
        answer.insert("retry-after", after.parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), answer, "{}")
}

/// HMAC-SHA256 of `data` with `key` (how most webhook senders sign).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The step with this id in a run's detail (`GET /api/v1/runs/{id}`).
pub fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run:#}"))
}

/// A TCP listener on 127.0.0.1 that only counts the connections it accepts: the proof that
/// nothing reached it.
pub struct Canary {
    /// The port it listens on.
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Canary {
    /// Starts listening.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        Self { port, accepted }
    }

    /// How many connections it accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A flow that numbers events and delivers each number to the sink with the run's idempotency key
/// (`Idempotency-Key: RUN:deliver`), retrying the delivery `attempts` times `initial` apart.
pub fn numbered_flow(sink: &Sink, attempts: u32, initial: &str) -> String {
    format!(
        r#"
id: numbered
trigger: {{ webhook: }}
steps:
  - id: shape
    map: {{ n: "{{{{trigger.body.n}}}}" }}
  - id: deliver
    http: {{ url: "{}/numbered", json: {{ n: "{{{{steps.shape.n}}}}", run: "{{{{run.id}}}}" }} }}
    retry: {{ attempts: {attempts}, backoff: fixed, initial: {initial} }}
"#,
        sink.url
    )
}

/// A schedule flow, `every-second`, that fires every second and keeps its tick.
pub const EVERY_SECOND: &str = "id: every-second\ntrigger:\n  schedule: { cron: \"* * * * * *\" }\nsteps:\n  - { id: tick, map: { at: \"{{trigger.body.scheduled_at}}\" } }\n";

/// The ticks `flow`'s runs fired for (each run's `trigger.body.scheduled_at`), oldest first;
/// asserts that no tick fired twice.
pub async fn fired_ticks(server: &Server, flow: &str) -> Vec<time::OffsetDateTime> {
    let mut fired = Vec::new();
    for run in server.all_runs(flow).await {
        let run = server.finished_run(run["id"].as_str().unwrap()).await;
        let at = run["event"]["trigger"]["body"]["scheduled_at"]
            .as_str()
            .expect("a schedule run holds its tick");
        let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339);
        fired.push(at.expect("the tick is an RFC 3339 time"));
    }
    fired.sort();
    let unique: std::collections::BTreeSet<_> = fired.iter().collect();
    assert_eq!(unique.len(), fired.len(), "a tick fired twice: {fired:?}");
    fired
}
