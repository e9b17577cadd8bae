//! Conformance checks of storage between runs (`storage`, `storage_namespaces`,
//! `storage_entries`, `expire_storage`): atomic under racing callers, expiry on the caller's
//! clock (explicit timestamps, never a sleep), namespaces isolated, refusals change nothing.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{at, Open};
use crate::model::Timestamp;
use crate::store::{
    Applied, Entry, Namespace, StorageCall, StorageError, StorageKey, StorageOp, Store,
};

fn ns(name: &str) -> Namespace {
    Namespace::new(name).unwrap()
}

fn key(name: &str) -> StorageKey {
    StorageKey::new(name).unwrap()
}

fn set(value: Value, expires_at: Option<Timestamp>) -> StorageOp {
    StorageOp::Set { value, expires_at }
}

fn increment(by: i64) -> StorageOp {
    StorageOp::Increment {
        by: by.into(),
        expires_at: None,
    }
}

/// Applies `op`, expecting the store to answer and the operation to be allowed.
async fn run(store: &dyn Store, n: &str, k: &str, op: &StorageOp, now: Timestamp) -> Applied {
    store
        .storage(StorageCall::new(&ns(n), &key(k), op, now))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{} refused: {e}", op.name()))
}

/// The live value of a key at `now`.
async fn value(store: &dyn Store, n: &str, k: &str, now: Timestamp) -> Option<Value> {
    run(store, n, k, &StorageOp::Get, now)
        .await
        .before
        .map(|e| e.value)
}

/// Every live entry of a namespace, paging `page` at a time.
async fn all_entries(
    store: &dyn Store,
    n: &str,
    page: usize,
    now: Timestamp,
) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    let mut after: Option<StorageKey> = None;
    loop {
        let got = store
            .storage_entries(&ns(n), after.as_ref(), page, now)
            .await
            .unwrap();
        assert!(got.len() <= page);
        let done = got.len() < page;
        after = got.last().map(|(k, _)| k.clone());
        all.extend(got.into_iter().map(|(k, e)| (k.to_string(), e.value)));
        if done || after.is_none() {
            return all;
        }
    }
}

/// Many callers incrementing one key at once: the total is the sum of every increment.
pub(crate) async fn storage_increments_from_racing_callers_all_count(store: Arc<dyn Store>) {
    let mut tasks = JoinSet::new();
    for n in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..5 {
                run(&*store, "counts", "events", &increment(1), at(n * 10 + i)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        value(&*store, "counts", "events", at(1_000)).await,
        Some(json!(200))
    );
    let after = run(&*store, "counts", "events", &increment(-50), at(1_001)).await;
    assert_eq!(after.before.unwrap().value, json!(200));
    assert_eq!(after.after.unwrap().value, json!(150));
}

/// Many callers appending to one list at once: every element is kept, once.
pub(crate) async fn storage_appends_from_racing_callers_keep_every_element(store: Arc<dyn Store>) {
    let mut tasks = JoinSet::new();
    for n in 0..60 {
        let store = store.clone();
        tasks.spawn(async move {
            let op = StorageOp::Append {
                value: json!(n),
                keep: None,
                expires_at: None,
            };
            run(&*store, "lists", "seen", &op, at(n)).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let Some(Value::Array(items)) = value(&*store, "lists", "seen", at(100)).await else {
        panic!("no list stored");
    };
    let mut items: Vec<i64> = items.iter().map(|v| v.as_i64().unwrap()).collect();
    items.sort_unstable();
    assert_eq!(items, (0..60).collect::<Vec<_>>());

    let keep = StorageOp::Append {
        value: json!("last"),
        keep: Some(2),
        expires_at: None,
    };
    let kept = run(&*store, "lists", "seen", &keep, at(101)).await;
    assert_eq!(kept.after.unwrap().value.as_array().unwrap().len(), 2);
}

/// An entry counts until its expiry on the caller's clock, then reads as absent everywhere, and
/// `expire_storage` deletes exactly the expired ones; `set` replaces an expiry, `increment`
/// keeps it.
pub(crate) async fn storage_entries_expire_at_their_time(store: Arc<dyn Store>) {
    let s = &*store;
    run(s, "ttl", "short", &set(json!("a"), Some(at(1_000))), at(0)).await;
    run(s, "ttl", "kept", &set(json!("b"), None), at(0)).await;
    let inc = StorageOp::Increment {
        by: 1.into(),
        expires_at: Some(at(2_000)),
    };
    run(s, "ttl", "window", &inc, at(0)).await;
    let again = run(s, "ttl", "window", &inc, at(1_500)).await;
    assert_eq!(
        again.after.unwrap().expires_at,
        Some(at(2_000)),
        "an increment keeps the entry's expiry"
    );

    assert_eq!(value(s, "ttl", "short", at(999)).await, Some(json!("a")));
    assert_eq!(value(s, "ttl", "short", at(1_000)).await, None);
    let listed = |now| async move {
        all_entries(s, "ttl", 10, at(now))
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(999).await, ["kept", "short", "window"]);
    assert_eq!(listed(1_000).await, ["kept", "window"]);
    assert_eq!(
        s.storage_namespaces(at(2_000)).await.unwrap(),
        [(ns("ttl"), 1)]
    );

    assert_eq!(s.expire_storage(at(999), 100).await.unwrap(), 0);
    assert_eq!(s.expire_storage(at(1_000), 100).await.unwrap(), 1);
    // Written again without an expiry before the sweep: the sweep leaves it.
    run(s, "ttl", "window", &set(json!(7), None), at(2_500)).await;
    assert_eq!(s.expire_storage(at(9_000), 100).await.unwrap(), 0);
    assert_eq!(value(s, "ttl", "window", at(9_000)).await, Some(json!(7)));

    // A write after the expiry starts afresh, with the new expiry.
    run(s, "ttl", "short", &set(json!("b"), Some(at(3_000))), at(0)).await;
    let later = StorageOp::Increment {
        by: 1.into(),
        expires_at: Some(at(4_000)),
    };
    let fresh = run(s, "ttl", "short", &later, at(3_000)).await;
    assert_eq!(fresh.before, None);
    assert_eq!(
        fresh.after.map(|e| (e.value, e.expires_at)),
        Some((json!(1), Some(at(4_000))))
    );
}

/// The same key in two namespaces is two entries; listing pages by key within one namespace.
pub(crate) async fn storage_namespaces_are_isolated(store: Arc<dyn Store>) {
    let s = &*store;
    for k in ["a", "b", "c", "d", "e"] {
        run(s, "flow-one", k, &set(json!(k), None), at(1)).await;
    }
    run(s, "shared", "a", &set(json!("shared"), None), at(1)).await;
    assert_eq!(value(s, "flow-one", "a", at(2)).await, Some(json!("a")));
    assert_eq!(value(s, "shared", "a", at(2)).await, Some(json!("shared")));
    let deleted = run(s, "shared", "a", &StorageOp::Delete, at(3)).await;
    assert_eq!(deleted.before.map(|e| e.value), Some(json!("shared")));
    assert_eq!(value(s, "shared", "a", at(4)).await, None);
    assert_eq!(value(s, "flow-one", "a", at(4)).await, Some(json!("a")));
    assert_eq!(
        s.storage_namespaces(at(4)).await.unwrap(),
        [(ns("flow-one"), 5)],
        "an emptied namespace is not listed"
    );
    let keys: Vec<String> = all_entries(s, "flow-one", 2, at(4))
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a", "b", "c", "d", "e"]);
    assert!(
        all_entries(s, "flow", 10, at(4)).await.is_empty(),
        "a prefix is not a namespace"
    );
}

/// An operation the entry does not allow is refused and changes nothing.
pub(crate) async fn storage_refusals_change_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    run(s, "refusals", "name", &set(json!("text"), None), at(1)).await;
    let refused = s
        .storage(StorageCall::new(
            &ns("refusals"),
            &key("name"),
            &increment(1),
            at(2),
        ))
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(StorageError::NotANumber { .. })),
        "{refused:?}"
    );
    let append = StorageOp::Append {
        value: json!(1),
        keep: None,
        expires_at: None,
    };
    let refused = s
        .storage(StorageCall::new(
            &ns("refusals"),
            &key("name"),
            &append,
            at(2),
        ))
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(StorageError::NotAList { .. })),
        "{refused:?}"
    );
    let read = run(s, "refusals", "name", &StorageOp::Get, at(3)).await;
    assert_eq!(
        read.before,
        Some(Entry {
            value: json!("text"),
            expires_at: None,
            updated_at: at(1),
        })
    );
}

/// A write under an operation key is applied once, however often (or however many callers at
/// once) it is repeated, answering the first outcome each time, until its answer is forgotten.
pub(crate) async fn storage_a_repeated_operation_key_applies_once(store: Arc<dyn Store>) {
    let (n, k) = (ns("once"), key("count"));
    let first = store
        .storage(StorageCall::new(&n, &k, &increment(1), at(1)).once(Some("run_a:count")))
        .await
        .unwrap()
        .unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        let (n, k) = (n.clone(), k.clone());
        tasks.spawn(async move {
            let once = if i % 2 == 0 {
                "run_a:count"
            } else {
                "run_b:count"
            };
            let op = increment(1);
            let answer = store
                .storage(StorageCall::new(&n, &k, &op, at(2 + i)).once(Some(once)))
                .await;
            (once, answer.unwrap().unwrap())
        });
    }
    let mut b_answers = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (once, answer) = done.unwrap();
        match once {
            "run_a:count" => assert_eq!(answer, first, "a repeat answers the first outcome"),
            _ => b_answers.push(answer),
        }
    }
    assert!(b_answers.windows(2).all(|w| w[0] == w[1]), "{b_answers:?}");
    assert_eq!(
        b_answers[0].after.as_ref().map(|e| &e.value),
        Some(&json!(2))
    );
    assert_eq!(
        value(&*store, "once", "count", at(100)).await,
        Some(json!(2))
    );

    let later = at(100).plus(crate::store::storage::APPLIED_KEPT);
    assert_eq!(
        store.expire_storage(later, 100).await.unwrap(),
        2,
        "both answers"
    );
    let again = store
        .storage(StorageCall::new(&n, &k, &increment(1), later).once(Some("run_a:count")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.after.map(|e| e.value),
        Some(json!(3)),
        "forgotten: applied again"
    );
}

/// Stored entries, with their expiry, are there after the store is closed and opened again.
pub(crate) async fn storage_survives_reopen(open: Open<'_>) {
    let store = open();
    run(&*store, "kept", "count", &increment(3), at(1)).await;
    run(&*store, "kept", "ttl", &set(json!(1), Some(at(500))), at(1)).await;
    store.flush().await.unwrap();
    drop(store);
    let store = open();
    assert_eq!(value(&*store, "kept", "count", at(2)).await, Some(json!(3)));
    assert_eq!(value(&*store, "kept", "ttl", at(499)).await, Some(json!(1)));
    assert_eq!(store.expire_storage(at(500), 10).await.unwrap(), 1);
}
