//! An acknowledged event is never lost: the server is killed with SIGKILL while events arrive and
//! runs execute; after a restart on the same data directory, every event that got a 2xx has exactly
//! one run, the run finishes, and the target received it (a repeat only with the same idempotency
//! key).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{eventually, Server, Sink};

/// Concurrent senders.
const SENDERS: u64 = 16;
/// Acknowledged events before the kill (then the kill lands while more arrive).
const ACKED_BEFORE_KILL: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_acknowledged_before_a_sigkill_all_finish_after_restart() {
    let sink = Sink::start().await;
    let flow = format!(
        r#"
id: numbered
trigger: {{ webhook: }}
steps:
  - id: shape
    map: {{ n: "{{{{trigger.body.n}}}}" }}
  - id: deliver
    http: {{ url: "{}/numbered", json: {{ n: "{{{{steps.shape.n}}}}", run: "{{{{run.id}}}}" }} }}
    retry: {{ attempts: 10, backoff: fixed, initial: 50ms }}
"#,
        sink.url
    );
    let mut server = Server::start(&[("numbered.yaml", &flow)]);
    let url = server.catch_url("numbered");

    // Senders post numbered events until told to stop, recording which were acknowledged.
    let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = s;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.post(&url).json(&json!({ "n": n })).send().await {
                    if r.status() == 200 {
                        let ack: Value = r.json().await.expect("an acknowledgment is JSON");
                        acked
                            .lock()
                            .unwrap()
                            .insert(n, ack["run_id"].as_str().unwrap().to_owned());
                    }
                }
                n += SENDERS;
            }
        }));
    }
    eventually("enough acknowledged events", || async {
        (acked.lock().unwrap().len() >= ACKED_BEFORE_KILL).then_some(())
    })
    .await;
    server.kill_hard();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    server.restart();
    for (n, run_id) in &acked {
        let run = server.finished_run(run_id).await;
        assert_eq!(run["status"], "succeeded", "event {n}: {run:#}");
        assert_eq!(
            run["event"]["trigger"]["body"]["n"], *n,
            "the run has its event"
        );
    }

    // Exactly one run per acknowledged event (senders never retried, so no more runs than acks
    // can exist for acknowledged numbers).
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = server
            .get(&format!("/api/v1/runs?limit=1000{cursor}"))
            .await;
        for r in page["runs"].as_array().unwrap() {
            assert!(
                listed.insert(r["id"].as_str().unwrap().to_owned()),
                "a run listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
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
