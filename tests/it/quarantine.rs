//! Nothing acknowledged is dropped when the inbox is damaged on disk (issue 22, item 7): events
//! are accepted with no workers and nothing promoted out of the inbox, the server is killed, one
//! inbox record is damaged (or made undecodable), and after a restart with workers every other
//! event runs while the record waits in the quarantine: listed by the API and the CLI, counted
//! on `/metrics`, and ingested again once repaired.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{eventually, Server};

const FLOW: &str = r#"
id: counted
trigger: { webhook: }
steps:
  - id: shape
    map: { n: "{{trigger.body.n}}" }
"#;

/// Starts a server that accepts events and moves none of them out of the inbox (no workers,
/// promotion window 0), and sends it `count` events, one after another (so record `n` of the
/// inbox is event `n`, counting from 1); returns the acknowledged run ids in order.
async fn accepted_and_killed(count: u64) -> (Server, Vec<String>) {
    let mut server = Server::start_with(
        &[("counted.yaml", FLOW)],
        &["--workers", "0"],
        &[("HOOKFLOW_PROMOTE_WINDOW", "0")],
    );
    let url = server.catch_url("counted");
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for n in 1..=count {
        let answer = client.post(&url).json(&json!({ "n": n })).send().await;
        let answer = answer.expect("the server answers");
        assert_eq!(answer.status(), 200);
        let ack: Value = answer.json().await.unwrap();
        runs.push(ack["run_id"].as_str().unwrap().to_owned());
    }
    // SIGKILL: on a graceful stop the store writes the runs it holds in memory to its trees,
    // and the damaged record's run would be stored already.
    server.kill_hard();
    (server, runs)
}

/// Restarts the server with workers and promotion as usual.
fn restarted(server: &mut Server) {
    server.remove_env("HOOKFLOW_PROMOTE_WINDOW");
    server.set_args(&["--workers", "2"]);
    server.restart();
}

/// The inbox segment holding record `n`, and the offset and payload length of that record.
fn find_record(data: &Path, n: u64) -> (PathBuf, u64, usize) {
    let inbox = data.join("inbox");
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let first = path
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((first, path))
        })
        .collect();
    segments.sort();
    let (first, path) = segments
        .into_iter()
        .rev()
        .find(|(first, _)| *first <= n)
        .expect("a segment holds the record");
    let bytes = std::fs::read(&path).unwrap();
    let mut offset = 0;
    for _ in first..n {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
        offset += 8 + len as usize;
    }
    let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
    (path, offset as u64, len as usize)
}

/// Overwrites bytes of a file at `offset`.
fn overwrite(path: &Path, offset: u64, with: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize..offset as usize + with.len()].copy_from_slice(with);
    std::fs::write(path, bytes).unwrap();
}

/// Waits until every run but `missing` has succeeded; checks that `missing` has no run.
async fn all_but_one_finish(server: &Server, runs: &[String], missing: usize) {
    for (i, run_id) in runs.iter().enumerate() {
        if i == missing {
            continue;
        }
        let run = server.finished_run(run_id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["event"]["trigger"]["body"]["n"], i as u64 + 1);
    }
    let (status, _) = server.get(&format!("/api/v1/runs/{}", runs[missing])).await;
    assert_eq!(status, 404, "the damaged record's run exists");
    assert_eq!(server.all_runs("counted").await.len(), runs.len() - 1);
}

/// The quarantine as the API lists it, once it holds `n` entries.
async fn quarantine_of(server: &Server, n: usize) -> Vec<Value> {
    eventually(&format!("{n} quarantined records"), || async {
        let (status, body) = server.get("/api/v1/quarantine").await;
        assert_eq!(status, 200, "{body}");
        let entries = body["quarantined"].as_array().unwrap().clone();
        (entries.len() == n).then_some(entries)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_newest_segment_is_quarantined_and_every_other_event_runs() {
    let (mut server, runs) = accepted_and_killed(200).await;
    let (segment, offset, len) = find_record(&server.data_dir(), 101);
    assert!(len > 100, "a record of {len} bytes");
    overwrite(&segment, offset + 8 + 16, &[0xa5; 64]);
    restarted(&mut server);

    all_but_one_finish(&server, &runs, 100).await;
    let entries = quarantine_of(&server, 1).await;
    let entry = &entries[0];
    assert_eq!(entry["kind"], "damaged");
    assert_eq!(entry["record"], 101);
    assert_eq!(entry["offset"], offset);
    assert_eq!(
        entry["segment"],
        segment.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(entry["bytes"], 8 + len as u64);
    let kept = std::fs::read(entry["kept"].as_str().unwrap()).unwrap();
    let damaged = std::fs::read(&segment).unwrap();
    let at = offset as usize;
    assert_eq!(kept, damaged[at..at + 8 + len], "kept byte for byte");

    let id = entry["id"].as_str().unwrap();
    let listed = server.cli(&["quarantine", "list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        stdout.contains(id) && stdout.contains("damaged"),
        "{stdout}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "hookflow_quarantined_total 1"),
        "{metrics}"
    );

    // Its bytes are still damaged: it stays, and says so.
    let (status, body) = server
        .post(&format!("/api/v1/quarantine/{id}/reingest"), &json!({}))
        .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("undecodable")));
    let (status, body) = server
        .post("/api/v1/quarantine/1-999999/reingest", &json!({}))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    assert_eq!(quarantine_of(&server, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_quarantined_not_skipped_and_ingested_again_once_repaired() {
    let (mut server, runs) = accepted_and_killed(20).await;
    // Record 10 keeps a whole frame (its checksum passes) around a payload no version reads.
    let (segment, offset, len) = find_record(&server.data_dir(), 10);
    let bytes = std::fs::read(&segment).unwrap();
    let at = offset as usize + 8;
    let original = bytes[at..at + len].to_vec();
    let mut garbled = original.clone();
    garbled[0] = 0x7f;
    overwrite(
        &segment,
        offset + 4,
        &crc32fast::hash(&garbled).to_le_bytes(),
    );
    overwrite(&segment, offset + 8, &garbled);
    restarted(&mut server);

    all_but_one_finish(&server, &runs, 9).await;
    let entries = quarantine_of(&server, 1).await;
    let entry = &entries[0];
    assert_eq!(entry["kind"], "undecodable");
    assert_eq!(entry["record"], 10);
    let id = entry["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .post(&format!("/api/v1/quarantine/{id}/reingest"), &json!({}))
        .await;
    assert_eq!(status, 422);

    // Repaired: the record as it was, in place of the kept frame.
    std::fs::write(entry["kept"].as_str().unwrap(), &original).unwrap();
    let reingested = server.cli(&["quarantine", "reingest", &id]);
    let stdout = String::from_utf8_lossy(&reingested.stdout);
    assert!(reingested.status.success(), "{reingested:?}");
    assert!(stdout.contains(&runs[9]), "{stdout}");
    let run = server.finished_run(&runs[9]).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["event"]["trigger"]["body"]["n"], 10);
    assert!(quarantine_of(&server, 0).await.is_empty());
    // `/metrics` counts the store at most once a second.
    eventually("the quarantine count to drop", || async {
        let metrics = server.metrics().await;
        metrics
            .lines()
            .any(|l| l == "hookflow_quarantined_total 0")
            .then_some(())
    })
    .await;
}
