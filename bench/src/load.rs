//! The load generator: posts numbered Stripe-sized webhook events (about 2 KB of JSON) to a catch
//! URL over a fixed number of connections and measures how long each acknowledgment took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// What a load run saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The numbers of the events answered with a 2xx.
    pub acked: Vec<u64>,
    /// Requests answered otherwise, or not at all.
    pub failed: u64,
    /// Wall-clock time from the first request to the last answer.
    pub elapsed: Duration,
    /// Acknowledgment latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadReport {
    /// Acknowledged events per second.
    pub fn acked_per_sec(&self) -> f64 {
        self.acked.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile (`p` in 0..=1) in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        let Some(last) = self.latencies_us.len().checked_sub(1) else {
            return 0.0;
        };
        let i = (last as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// A Stripe `customer.subscription.updated` event with number `n` in its id, padded to about 2 KB.
pub fn event(n: u64) -> Value {
    json!({
        "id": format!("evt_{n:024}"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1_763_800_000 + n,
        "type": "customer.subscription.updated",
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": format!("req_{n:014}"), "idempotency_key": null },
        "data": {
            "object": {
                "id": format!("sub_{n:024}"),
                "object": "subscription",
                "customer": format!("cus_{n:014}"),
                "customer_email": format!("user{n}@example.com"),
                "status": "active",
                "cancel_at_period_end": false,
                "current_period_start": 1_763_800_000,
                "current_period_end": 1_766_400_000,
                "items": { "object": "list", "data": [{
                    "id": format!("si_{n:014}"),
                    "price": { "id": "price_pro_monthly", "nickname": "Pro", "unit_amount": 4900,
                               "currency": "usd", "recurring": { "interval": "month" } },
                    "quantity": 3
                }]},
                "metadata": { "account_id": format!("acct-{n}"), "plan": "pro", "seats": "3",
                              "notes": "x".repeat(1100) }
            },
            "previous_attributes": { "items": { "data": [{ "price": { "id": "price_starter_monthly" } }] } }
        }
    })
}

/// The event number in an event id made by [`event`].
pub fn number_of(id: &str) -> Option<u64> {
    id.strip_prefix("evt_")?.parse().ok()
}

/// Sends events `first..first + count` to `url` over `concurrency` connections.
///
/// Each connection is a bare HTTP/1.1 keep-alive connection (hyper's client connection, without
/// a pool), so that the generator spends as little of the machine as it can on itself: it
/// shares the cores with the server it measures. A connection that fails counts its request as
/// failed and is opened again.
pub async fn send(
    url: &str,
    first: u64,
    count: u64,
    concurrency: u64,
) -> anyhow::Result<LoadReport> {
    send_to_all(&[url], first, count, concurrency, None).await
}

/// [`send`] spread over several catch URLs (one per node): the connections take the URLs in
/// turn. With a `rate` (events per second), event `n` is not sent before its time in that pace
/// (a connection still waiting for an answer sends late, so the pace is a ceiling).
pub async fn send_to_all(
    urls: &[&str],
    first: u64,
    count: u64,
    concurrency: u64,
    rate: Option<f64>,
) -> anyhow::Result<LoadReport> {
    let targets = urls
        .iter()
        .map(|url| Target::parse(url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (next, target) = (next.clone(), targets[i as usize % targets.len()].clone());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut latencies, mut failed) = (Vec::new(), Vec::new(), 0);
            let mut connection = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return (acked, latencies, failed);
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64((n - first) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                match target.post(&mut connection, event_bytes(n)).await {
                    Ok(true) => {
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        acked.push(n);
                    }
                    Ok(false) => failed += 1,
                    Err(_) => {
                        connection = None;
                        failed += 1;
                    }
                }
            }
        }));
    }
    let mut report = LoadReport {
        acked: Vec::new(),
        failed: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (acked, latencies, failed) = task.await?;
        report.acked.extend(acked);
        report.latencies_us.extend(latencies);
        report.failed += failed;
    }
    report.elapsed = started.elapsed();
    report.latencies_us.sort_unstable();
    report.acked.sort_unstable();
    Ok(report)
}

/// The JSON body of event `n`.
fn event_bytes(n: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&event(n)).expect("a JSON value serializes"))
}

/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the events go: the address to connect to and the request's host and path.
#[derive(Debug, Clone)]
struct Target {
    address: String,
    host: HeaderValue,
    path: Uri,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("URL {url}"))?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "only http:// URLs: {url}");
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url}"))?
            .clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        Ok(Self {
            address: authority.to_string(),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
        })
    }

    /// Posts `body` over `connection` (opened first if there is none); whether the answer was a
    /// 2xx. The answer's body is read to its end, so the connection can carry the next request.
    async fn post(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        body: Bytes,
    ) -> anyhow::Result<bool> {
        let sender = match connection {
            Some(sender) => sender,
            None => connection.insert(self.connect().await?),
        };
        let request = Request::post(self.path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let exchange = async {
            sender.ready().await?;
            let answer = sender.send_request(request).await?;
            let ok = answer.status().is_success();
            answer.into_body().collect().await?;
            anyhow::Ok(ok)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await?
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
