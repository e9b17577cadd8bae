//! An acknowledged event is never lost: the server is killed with SIGKILL (three times) while
//! events arrive and runs execute; after each restart on the same data directory, every event that
//! got a 2xx has exactly one run, the run finishes, and the target received it (a repeat only with the same idempotency
//! key).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{eventually, numbered_flow, Server, Sink};

/// Concurrent senders.
const SENDERS: u64 = 16;
/// Acknowledged events per round before the kill (which then lands while more arrive).
const ACKED_PER_ROUND: usize = 100;
/// How many times the server is killed.
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_acknowledged_before_repeated_sigkills_all_finish_after_restart() {
    let sink = Sink::start().await;
    let flow = numbered_flow(&sink, 10, "50ms");
    let mut server = Server::start(&[("numbered.yaml", &flow)]);
    let url = server.catch_url("numbered");

    // Each round: senders post numbered events (numbers never reused) until enough more are
    // acknowledged, then the server is killed mid-load and restarted on the same data.
    let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    for round in 1..=KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            let (acked, stop, next, url) = (acked.clone(), stop.clone(), next.clone(), url.clone());
            senders.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if let Ok(r) = client.post(&url).json(&json!({ "n": n })).send().await {
                        if r.status() == 200 {
                            let ack: Value = r.json().await.expect("an acknowledgment is JSON");
                            acked
                                .lock()
                                .unwrap()
                                .insert(n, ack["run_id"].as_str().unwrap().to_owned());
                        }
                    }
                }
            }));
        }
        let target = round * ACKED_PER_ROUND;
        eventually("enough acknowledged events", || async {
            (acked.lock().unwrap().len() >= target).then_some(())
        })
        .await;
        server.kill_hard();
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            s.await.unwrap();
        }
        server.restart();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILLS * ACKED_PER_ROUND);

    for (n, run_id) in &acked {
        let run = server.finished_run(run_id).await;
        assert_eq!(run["status"], "succeeded", "event {n}: {run:#}");
        assert_eq!(
            run["event"]["trigger"]["body"]["n"], *n,
            "the run has its event"
        );
    }

    // Exactly one run per acknowledged event (senders never retried, so no more runs than acks
    // can exist for acknowledged numbers), and no run without its event: events the kill cut off
    // before their answer either have a whole run or none.
    let all = server.all_runs("numbered").await;
    let listed: HashSet<String> = all
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), all.len(), "a run listed twice");
    let unacknowledged = listed.len().saturating_sub(acked.len());
    for r in &all {
        let id = r["id"].as_str().unwrap();
        if !acked.values().any(|a| a == id) {
            let run = server.finished_run(id).await;
            assert!(run["event"]["trigger"]["body"]["n"].is_u64(), "{run:#}");
        }
    }
    assert!(
        unacknowledged <= KILLS * SENDERS as usize,
        "{unacknowledged} runs without an answer"
    );
    for run_id in acked.values() {
        assert!(
            listed.contains(run_id),
            "acknowledged run {run_id} is not listed"
        );
    }

    // Every acknowledged number reached the sink; a repeat (a step re-run after the crash) carries
    // the same run id and idempotency key.
    let received = sink.received();
    let mut keys: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in &received {
        let n = r.body["n"].as_u64().expect("n is a number");
        let key = r.headers["idempotency-key"].to_str().unwrap().to_owned();
        assert_eq!(key, format!("{}:deliver", r.body["run"].as_str().unwrap()));
        keys.entry(n).or_default().insert(key);
    }
    for (n, run_id) in &acked {
        let seen = keys
            .get(n)
            .unwrap_or_else(|| panic!("acknowledged event {n} never reached the sink"));
        assert_eq!(
            seen,
            &HashSet::from([format!("{run_id}:deliver")]),
            "event {n}"
        );
    }
}
