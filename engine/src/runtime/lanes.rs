//! Named queues' lanes: for a step with `queue: {name, key, concurrency, gap}`, at most
//! `concurrency` attempts with the same (name, key) execute at once, and the next starts `gap`
//! after one ends. A step that finds its lane busy goes back to the queue for a moment (not an
//! attempt).
//!
//! The lanes are kept by the store (`Store::enter_lane`, `Store::leave_lane`), so nodes sharing a
//! store share them. An attempt takes its [`Place`] before it executes and gives it back with
//! [`Place::leave`] after, however it ended; a place dropped without being given back (the attempt
//! panicked or was cancelled) is given back by a task spawned from its `Drop`, and one whose node
//! died stops counting when it expires: the step's timeout plus [`PLACE_GRACE`] after it was taken.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::ids::{ItemId, RunId};
use crate::model::Timestamp;
use crate::store::{LaneEntry, LaneKey, SharedClock, Store};

/// How soon a step that found its lane full looks again (a place is usually given back sooner
/// than it expires).
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// How long a place outlives its step's timeout before it stops counting (if its holder never
/// gives it back).
pub(super) const PLACE_GRACE: Duration = Duration::from_secs(60);

/// The lanes of every named queue, kept in the store.
#[derive(Clone)]
pub(super) struct Lanes {
    store: Arc<dyn Store>,
    clock: SharedClock,
}

/// A place in a lane: give it back with [`Place::leave`].
pub(super) struct Place {
    lanes: Lanes,
    lane: LaneKey,
    holder: ItemId,
    gap: Duration,
    /// Whether it was given back.
    left: bool,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place")
            .field("lane", &self.lane)
            .field("holder", &self.holder)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// The lanes kept in `store`, on `clock`'s time.
    pub(super) fn new(store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Takes a place in the lane for `holder` (the queue item about to be attempted), for at most
    /// `longest` (the step's timeout) plus [`PLACE_GRACE`], or answers how long to wait before
    /// trying again.
    pub(super) async fn enter(
        &self,
        lane: LaneKey,
        concurrency: usize,
        gap: Duration,
        (holder, turn): (ItemId, RunId),
        longest: Duration,
    ) -> Result<Place, Duration> {
        let now = self.clock.now();
        let expires = now.plus(longest).plus(PLACE_GRACE);
        let entry = self
            .store
            .enter_lane(&lane, concurrency, (holder, turn), now, expires)
            .await;
        match entry {
            Ok(LaneEntry::Entered) => Ok(Place {
                lanes: self.clone(),
                lane,
                holder,
                gap,
                left: false,
            }),
            Ok(LaneEntry::Full { until }) => Err(wait(until, now).min(BUSY_RETRY)),
            Ok(LaneEntry::Spaced { until }) => Err(wait(until, now)),
            Ok(LaneEntry::Behind) => Err(BUSY_RETRY),
            Err(e) => {
                warn!(error = %e, %lane, "could not take a place in the queue's lane; trying again");
                Err(BUSY_RETRY)
            }
        }
    }
}

impl Place {
    /// Gives the place back: the lane's next attempt may start `gap` from now.
    pub(super) async fn leave(mut self) {
        self.left = true;
        let free_at = self.lanes.clock.now().plus(self.gap);
        if let Err(e) = self
            .lanes
            .store
            .leave_lane(&self.lane, self.holder, free_at)
            .await
        {
            warn!(error = %e, lane = %self.lane, "could not give the queue's place back; it expires on its own");
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(lane = %self.lane, "a queue's place was dropped outside the runtime; it expires on its own");
            return;
        };
        let (store, lane, holder) = (self.lanes.store.clone(), self.lane.clone(), self.holder);
        let free_at = self.lanes.clock.now().plus(self.gap);
        runtime.spawn(async move {
            if let Err(e) = store.leave_lane(&lane, holder, free_at).await {
                warn!(error = %e, %lane, "could not give the queue's place back; it expires on its own");
            }
        });
    }
}

fn wait(until: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(until.millis_since(now).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;

    fn lanes() -> Lanes {
        let clock = Arc::new(crate::store::SystemClock);
        Lanes::new(Arc::new(SledStore::temporary().unwrap()), clock)
    }

    fn lane(key: &str) -> LaneKey {
        LaneKey::new("crm", key)
    }

    const LONGEST: Duration = Duration::from_secs(30);

    /// A new holder, all of the same turn (these tests are not about turns).
    fn holder() -> (ItemId, RunId) {
        (
            ItemId::new(),
            RunId::from_ulid(ulid::Ulid::from_parts(1, 1)),
        )
    }

    #[tokio::test]
    async fn a_lane_admits_its_concurrency_and_spaces_by_its_gap() {
        let lanes = lanes();
        let zero = Duration::ZERO;
        let first = lanes
            .enter(lane("a@x.com"), 1, zero, holder(), LONGEST)
            .await
            .unwrap();
        let busy = lanes
            .enter(lane("a@x.com"), 1, zero, holder(), LONGEST)
            .await
            .unwrap_err();
        assert!(busy <= BUSY_RETRY, "{busy:?}");
        let other = lanes.enter(lane("b@x.com"), 1, zero, holder(), LONGEST);
        assert!(other.await.is_ok(), "keys are independent");
        first.leave().await;
        let minute = Duration::from_secs(60);
        let again = lanes
            .enter(lane("a@x.com"), 1, minute, holder(), LONGEST)
            .await
            .unwrap();
        again.leave().await;
        let wait = lanes
            .enter(lane("a@x.com"), 1, minute, holder(), LONGEST)
            .await
            .unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }

    /// A place dropped without being given back (a panic, a cancelled attempt) is given back by a
    /// spawned task.
    #[tokio::test]
    async fn a_dropped_place_is_given_back() {
        let lanes = lanes();
        let zero = Duration::ZERO;
        let place = lanes
            .enter(lane("a"), 1, zero, holder(), LONGEST)
            .await
            .unwrap();
        drop(place);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match lanes.enter(lane("a"), 1, zero, holder(), LONGEST).await {
                Ok(place) => break place.leave().await,
                Err(_) => {
                    assert!(tokio::time::Instant::now() < deadline, "never given back");
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
