//! `hookflow-load`: posts a Stripe-sized webhook event (about 2 KB of JSON, numbered) to a catch URL
//! over a fixed number of concurrent connections until a count is reached, then prints how many were
//! acknowledged, the rate, and acknowledgment latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

/// Load generator for hookflow catch hooks (127.0.0.1 only).
#[derive(Debug, Parser)]
struct Args {
    /// The catch URL (printed by `hookflow serve`).
    #[arg(long)]
    url: String,
    /// How many events to send.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
}

/// A Stripe `customer.subscription.updated` event, numbered, padded to about 2 KB.
fn event(n: u64) -> Value {
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

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, failed, url) = (
            client.clone(),
            next.clone(),
            failed.clone(),
            args.url.clone(),
        );
        let count = args.count;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return latencies;
                }
                let sent = Instant::now();
                match client.post(&url).json(&event(n)).send().await {
                    Ok(r) if r.status().is_success() => {
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let acked = latencies.len();
    println!(
        "acked {acked} of {} in {elapsed:.1} s: {:.0} events/s; failed {}; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        args.count,
        acked as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    anyhow::ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "some events were not acknowledged"
    );
    Ok(())
}
