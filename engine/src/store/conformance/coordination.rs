//! Conformance checks of the coordination operations (`enter_lane`, `leave_lane`, `pace_admit`,
//! `pace_observe`, `claim_tick`, `last_tick`): what nodes sharing a backend rely on.
//!
//! Like the rest of the suite, the checks use explicit timestamps and never sleep. Racing callers
//! are tasks sharing one store handle; a backend shared by several nodes must give the same
//! answers to callers on different nodes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{at, flow, Open};
use crate::ids::{ItemId, RunId};
use crate::store::{LaneEntry, LaneKey, Store, WAIT_TURN};

const WINDOW: Duration = Duration::from_secs(10);

fn lane(key: &str) -> LaneKey {
    LaneKey::new("crm", key)
}

/// Runs `n` copies of `call` at once; answers what each returned.
async fn race<T, F, Fut>(store: &Arc<dyn Store>, n: usize, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        tasks.spawn(call(store.clone()));
    }
    let mut answers = Vec::with_capacity(n);
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

/// One turn for every caller of a check that is not about turns: no order among them.
fn one_turn() -> RunId {
    RunId::from_ulid(ulid::Ulid::from_parts(1, 1))
}

/// A lane admits its waiters in the order of their turns (their runs' ids): while an earlier turn
/// waits, a later one is refused even when a place is free; a waiter that stops asking loses its
/// turn once `WAIT_TURN` has passed.
pub(crate) async fn lanes_admit_waiters_in_turn_order(store: Arc<dyn Store>) {
    let l = lane("turns");
    let turn = |n: u64| RunId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000 + n, 7));
    let (a, b, c, d) = (ItemId::new(), ItemId::new(), ItemId::new(), ItemId::new());
    let enter =
        |holder, n, now| store.enter_lane(&l, 1, (holder, turn(n)), at(now), at(now + 60_000));
    assert_eq!(enter(a, 1, 0).await.unwrap(), LaneEntry::Entered);
    // Turn 3 asks before turn 2; both wait while turn 1 holds the place.
    assert!(matches!(
        enter(c, 3, 10).await.unwrap(),
        LaneEntry::Full { .. }
    ));
    assert!(matches!(
        enter(b, 2, 20).await.unwrap(),
        LaneEntry::Full { .. }
    ));
    store.leave_lane(&l, a, at(30)).await.unwrap();
    assert_eq!(
        enter(c, 3, 40).await.unwrap(),
        LaneEntry::Behind,
        "turn 2 waits: it goes first"
    );
    assert_eq!(enter(b, 2, 50).await.unwrap(), LaneEntry::Entered);
    store.leave_lane(&l, b, at(60)).await.unwrap();
    assert_eq!(enter(c, 3, 70).await.unwrap(), LaneEntry::Entered);
    store.leave_lane(&l, c, at(80)).await.unwrap();
    // Turn 4 waits behind a holder, then never asks again: turn 5 goes once turn 4 lost its turn.
    let e = ItemId::new();
    assert_eq!(enter(e, 9, 90).await.unwrap(), LaneEntry::Entered);
    assert!(matches!(
        enter(d, 4, 100).await.unwrap(),
        LaneEntry::Full { .. }
    ));
    store.leave_lane(&l, e, at(110)).await.unwrap();
    let f = ItemId::new();
    assert_eq!(enter(f, 5, 120).await.unwrap(), LaneEntry::Behind);
    let lost = 100 + WAIT_TURN.as_millis() as i64;
    assert_eq!(enter(f, 5, lost).await.unwrap(), LaneEntry::Entered);
}

/// A lane admits `concurrency` holders; others wait until a place is given back or expires. Keys
/// and queues are independent, and a holder entering again keeps its place.
pub(crate) async fn lanes_admit_their_concurrency_until_given_back_or_expired(
    store: Arc<dyn Store>,
) {
    let (a, b, c) = (ItemId::new(), ItemId::new(), ItemId::new());
    let l = lane("a@x.com");
    let enter =
        |holder, now, expires| store.enter_lane(&l, 1, (holder, one_turn()), at(now), at(expires));
    assert_eq!(enter(a, 0, 1_000).await.unwrap(), LaneEntry::Entered);
    assert_eq!(
        enter(b, 10, 2_000).await.unwrap(),
        LaneEntry::Full { until: at(1_000) }
    );
    let other_key = lane("b@x.com");
    let other_key = store.enter_lane(&other_key, 1, (b, one_turn()), at(10), at(2_000));
    assert_eq!(other_key.await.unwrap(), LaneEntry::Entered);
    let other_queue = LaneKey::new("billing", "a@x.com");
    let other_queue = store.enter_lane(&other_queue, 1, (c, one_turn()), at(10), at(2_000));
    assert_eq!(other_queue.await.unwrap(), LaneEntry::Entered);

    assert_eq!(
        enter(a, 20, 1_500).await.unwrap(),
        LaneEntry::Entered,
        "a holder entering again keeps its place"
    );
    assert_eq!(
        enter(b, 30, 2_000).await.unwrap(),
        LaneEntry::Full { until: at(1_500) }
    );
    store.leave_lane(&l, a, at(40)).await.unwrap();
    assert_eq!(enter(b, 40, 3_000).await.unwrap(), LaneEntry::Entered);

    // `b` never gives its place back: it stops counting when it expires.
    assert_eq!(
        enter(c, 2_999, 4_000).await.unwrap(),
        LaneEntry::Full { until: at(3_000) }
    );
    assert_eq!(enter(c, 3_000, 4_000).await.unwrap(), LaneEntry::Entered);
    // Giving back an expired place changes nothing for the holder that has one now.
    store.leave_lane(&l, b, at(3_000)).await.unwrap();
    assert_eq!(
        enter(a, 3_001, 5_000).await.unwrap(),
        LaneEntry::Full { until: at(4_000) }
    );
}

/// After a place is given back, the lane stays closed until the `free_at` it was given back with
/// (the gap); an earlier `free_at` never reopens it sooner.
pub(crate) async fn lanes_honour_their_gap(store: Arc<dyn Store>) {
    let (a, b, c) = (ItemId::new(), ItemId::new(), ItemId::new());
    let l = lane("gap");
    let enter =
        |holder, now| store.enter_lane(&l, 2, (holder, one_turn()), at(now), at(now + 10_000));
    assert_eq!(enter(a, 0).await.unwrap(), LaneEntry::Entered);
    assert_eq!(enter(b, 0).await.unwrap(), LaneEntry::Entered);
    store.leave_lane(&l, a, at(500)).await.unwrap();
    assert_eq!(
        enter(c, 100).await.unwrap(),
        LaneEntry::Spaced { until: at(500) },
        "a place is free, but the gap has not passed"
    );
    store.leave_lane(&l, b, at(200)).await.unwrap();
    assert_eq!(
        enter(c, 499).await.unwrap(),
        LaneEntry::Spaced { until: at(500) }
    );
    assert_eq!(enter(c, 500).await.unwrap(), LaneEntry::Entered);
}

/// Of many callers racing for a lane's places, exactly `concurrency` get one, every time.
pub(crate) async fn racing_entries_take_at_most_concurrency_places(store: Arc<dyn Store>) {
    let l = lane("race");
    for round in 0..3 {
        let now = at(round * 100);
        let answers = race(&store, 16, |store| {
            let l = l.clone();
            let holder = ItemId::new();
            async move {
                let entry = store
                    .enter_lane(&l, 3, (holder, one_turn()), now, at(1_000_000))
                    .await;
                (holder, entry.unwrap())
            }
        })
        .await;
        let held: Vec<ItemId> = answers
            .iter()
            .filter(|(_, entry)| *entry == LaneEntry::Entered)
            .map(|(holder, _)| *holder)
            .collect();
        assert_eq!(held.len(), 3, "round {round}: {answers:?}");
        assert!(answers
            .iter()
            .all(|(_, e)| matches!(e, LaneEntry::Entered | LaneEntry::Full { .. })));
        for holder in held {
            store.leave_lane(&l, holder, now).await.unwrap();
        }
    }
}

/// An account admits every call until a limit is observed; then at most `max` calls in any
/// window, however many callers race, the others told when the window's oldest call leaves it.
pub(crate) async fn pacing_admits_at_most_max_per_window(store: Arc<dyn Store>) {
    for n in 0..50 {
        assert_eq!(store.pace_admit("new", at(n)).await.unwrap(), Ok(()));
    }
    store
        .pace_observe("acct", Some((3, WINDOW)), None)
        .await
        .unwrap();
    let answers = race(&store, 8, |store| async move {
        store.pace_admit("acct", at(1_000)).await.unwrap()
    })
    .await;
    let admitted = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(admitted, 3, "{answers:?}");
    assert!(answers
        .iter()
        .all(|a| *a == Ok(()) || *a == Err(at(11_000))));
    assert_eq!(
        store.pace_admit("acct", at(10_999)).await.unwrap(),
        Err(at(11_000))
    );
    assert_eq!(store.pace_admit("other", at(1_000)).await.unwrap(), Ok(()));
    assert_eq!(
        store.pace_admit("acct", at(11_000)).await.unwrap(),
        Ok(()),
        "the window has moved on"
    );
    store
        .pace_observe("acct", Some((1, WINDOW)), None)
        .await
        .unwrap();
    assert_eq!(
        store.pace_admit("acct", at(11_001)).await.unwrap(),
        Err(at(21_000)),
        "the latest limit reported applies"
    );
}

/// A blocked-until time holds every call until it passes, and only ever rises.
pub(crate) async fn pacing_honours_blocked_until(store: Arc<dyn Store>) {
    store
        .pace_observe("a", None, Some(at(5_000)))
        .await
        .unwrap();
    assert_eq!(
        store.pace_admit("a", at(4_000)).await.unwrap(),
        Err(at(5_000))
    );
    store
        .pace_observe("a", Some((100, WINDOW)), Some(at(3_000)))
        .await
        .unwrap();
    assert_eq!(
        store.pace_admit("a", at(4_999)).await.unwrap(),
        Err(at(5_000)),
        "an earlier time does not lower it"
    );
    assert_eq!(store.pace_admit("b", at(4_000)).await.unwrap(), Ok(()));
    assert_eq!(store.pace_admit("a", at(5_000)).await.unwrap(), Ok(()));
    store
        .pace_observe("a", None, Some(at(9_000)))
        .await
        .unwrap();
    assert_eq!(
        store.pace_admit("a", at(5_001)).await.unwrap(),
        Err(at(9_000))
    );
}

/// An account's blocked-until time survives closing and reopening the store.
pub(crate) async fn pacing_waits_survive_reopen(open: Open<'_>) {
    let store = open();
    store
        .pace_observe("a", Some((10, WINDOW)), Some(at(5_000)))
        .await
        .unwrap();
    store
        .pace_observe("a", None, Some(at(4_000)))
        .await
        .unwrap();
    drop(store);
    let store = open();
    assert_eq!(
        store.pace_admit("a", at(4_000)).await.unwrap(),
        Err(at(5_000))
    );
    assert_eq!(store.pace_admit("a", at(5_000)).await.unwrap(), Ok(()));
    assert_eq!(store.pace_admit("b", at(0)).await.unwrap(), Ok(()));
}

/// Of callers racing to claim one tick, exactly one wins; a tick not later than the last one
/// claimed is refused; flows are independent.
pub(crate) async fn one_caller_claims_each_tick(store: Arc<dyn Store>) {
    let (f, g) = (flow("nightly"), flow("hourly"));
    assert_eq!(store.last_tick(&f).await.unwrap(), None);
    let won = race(&store, 8, |store| async move {
        store.claim_tick(&flow("nightly"), at(100)).await.unwrap()
    })
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert_eq!(store.last_tick(&f).await.unwrap(), Some(at(100)));
    assert!(!store.claim_tick(&f, at(100)).await.unwrap(), "claimed");
    assert!(!store.claim_tick(&f, at(50)).await.unwrap(), "older");
    assert!(store.claim_tick(&g, at(50)).await.unwrap(), "another flow");
    assert!(store.claim_tick(&f, at(200)).await.unwrap());
    assert_eq!(store.last_tick(&f).await.unwrap(), Some(at(200)));
    assert_eq!(store.last_tick(&g).await.unwrap(), Some(at(50)));

    // Racing for different ticks: only increasing claims win, and the latest tick is kept.
    let won = race(&store, 8, |store| {
        let tick = at(300 + rand::random::<u8>() as i64 % 4);
        async move {
            (
                tick,
                store.claim_tick(&flow("nightly"), tick).await.unwrap(),
            )
        }
    })
    .await;
    let mut winners: Vec<_> = won.iter().filter(|(_, w)| *w).map(|(t, _)| *t).collect();
    winners.sort();
    winners.dedup();
    let claimed = won.iter().filter(|(_, w)| *w).count();
    assert_eq!(claimed, winners.len(), "a tick won twice: {won:?}");
    let latest = won.iter().map(|(t, _)| *t).max();
    assert_eq!(store.last_tick(&f).await.unwrap(), latest);
}

/// A claimed tick stays claimed across closing and reopening the store.
pub(crate) async fn claimed_ticks_survive_reopen(open: Open<'_>) {
    let f = flow("nightly");
    let store = open();
    assert!(store.claim_tick(&f, at(100)).await.unwrap());
    drop(store);
    let store = open();
    assert_eq!(store.last_tick(&f).await.unwrap(), Some(at(100)));
    assert!(!store.claim_tick(&f, at(100)).await.unwrap());
    assert!(store.claim_tick(&f, at(101)).await.unwrap());
}
