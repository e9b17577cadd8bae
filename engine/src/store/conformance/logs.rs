//! Conformance checks of the logs beside runs (`append_log`, `read_log`, `prune_logs`): the audit
//! record and the hook logs. Entries carry explicit times; nothing sleeps.

use std::sync::Arc;

use serde_json::json;

use super::{at, flow, Open};
use crate::store::{LogEntry, LogKind, LogName, LogQuery, PruneLogs, Store};

/// An entry of `action` at `ms`, numbered `n` in its detail.
fn entry(ms: i64, action: &str, n: u64) -> LogEntry {
    LogEntry::new(at(ms), action, json!({ "n": n }))
}

/// The numbers of a log's entries, newest first, reading pages of `limit`.
async fn numbers(store: &Arc<dyn Store>, log: &LogName, mut query: LogQuery) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let page = store.read_log(log, &query).await.unwrap();
        assert!(page.entries.len() <= query.limit);
        seen.extend(page.entries.iter().map(|e| e.detail["n"].as_u64().unwrap()));
        match page.next {
            Some(next) => query.before = Some(next),
            None => return seen,
        }
    }
}

fn prune(kind: LogKind, older_than: i64, keep: usize, max: usize) -> PruneLogs {
    PruneLogs {
        kind,
        older_than: at(older_than),
        keep,
        max,
    }
}

fn all(limit: usize) -> LogQuery {
    LogQuery {
        limit,
        ..LogQuery::default()
    }
}

pub(crate) async fn logs_read_newest_first_in_pages_and_filter(store: Arc<dyn Store>) {
    let hooks = LogName::Hooks(flow("orders"));
    let other = LogName::Hooks(flow("refunds"));
    let entries: Vec<LogEntry> = (1..=5)
        .map(|n| {
            entry(
                1_000 * n as i64,
                if n % 2 == 0 { "replay" } else { "login" },
                n,
            )
        })
        .collect();
    // Appended out of order, in two calls: reads still come newest first.
    store
        .append_log(&LogName::Audit, &entries[2..])
        .await
        .unwrap();
    store
        .append_log(&LogName::Audit, &entries[..2])
        .await
        .unwrap();
    store
        .append_log(&hooks, &[entry(500, "rejected", 9)])
        .await
        .unwrap();
    store
        .append_log(&other, &[entry(600, "duplicate", 8)])
        .await
        .unwrap();

    assert_eq!(
        numbers(&store, &LogName::Audit, all(2)).await,
        [5, 4, 3, 2, 1]
    );
    assert_eq!(numbers(&store, &LogName::Audit, all(100)).await.len(), 5);
    let replays = LogQuery {
        action: Some("replay".into()),
        ..all(1)
    };
    assert_eq!(numbers(&store, &LogName::Audit, replays).await, [4, 2]);
    let recent = LogQuery {
        since: Some(at(3_000)),
        ..all(10)
    };
    assert_eq!(numbers(&store, &LogName::Audit, recent).await, [5, 4, 3]);
    // Each flow's hook log holds its own entries only.
    assert_eq!(numbers(&store, &hooks, all(10)).await, [9]);
    assert_eq!(numbers(&store, &other, all(10)).await, [8]);
    let read = store.read_log(&hooks, &all(10)).await.unwrap();
    let kept = &read.entries[0];
    assert_eq!((kept.at, kept.action.as_str()), (at(500), "rejected"));
}

pub(crate) async fn logs_are_pruned_by_age_and_count(store: Arc<dyn Store>) {
    let (a, b) = (LogName::Hooks(flow("a")), LogName::Hooks(flow("b")));
    for (log, base) in [(&LogName::Audit, 0), (&a, 100), (&b, 200)] {
        let entries: Vec<LogEntry> = (1..=6)
            .map(|n| entry(1_000 * n as i64, "x", base + n))
            .collect();
        store.append_log(log, &entries).await.unwrap();
    }
    // Hook logs: each flow keeps its newest 4, and nothing before t = 2.5 s; at most 3 per call.
    let pruned = store
        .prune_logs(&prune(LogKind::Hooks, 2_500, 4, 3))
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    let rest = store
        .prune_logs(&prune(LogKind::Hooks, 2_500, 4, 100))
        .await
        .unwrap();
    assert_eq!(rest, 1);
    assert_eq!(numbers(&store, &a, all(10)).await, [106, 105, 104, 103]);
    assert_eq!(numbers(&store, &b, all(10)).await, [206, 205, 204, 203]);
    // The audit record was not touched; then its count bound applies.
    assert_eq!(numbers(&store, &LogName::Audit, all(10)).await.len(), 6);
    let pruned = store
        .prune_logs(&prune(LogKind::Audit, 0, 2, 100))
        .await
        .unwrap();
    assert_eq!(pruned, 4);
    assert_eq!(numbers(&store, &LogName::Audit, all(10)).await, [6, 5]);
    assert_eq!(
        store
            .prune_logs(&prune(LogKind::Audit, 0, 2, 100))
            .await
            .unwrap(),
        0
    );
}

pub(crate) async fn logs_survive_reopen(open: Open<'_>) {
    let hooks = LogName::Hooks(flow("orders"));
    {
        let store = open();
        store
            .append_log(&LogName::Audit, &[entry(1_000, "login", 1)])
            .await
            .unwrap();
        store
            .append_log(&hooks, &[entry(2_000, "duplicate", 2)])
            .await
            .unwrap();
    }
    let store = open();
    assert_eq!(numbers(&store, &LogName::Audit, all(10)).await, [1]);
    assert_eq!(numbers(&store, &hooks, all(10)).await, [2]);
}
