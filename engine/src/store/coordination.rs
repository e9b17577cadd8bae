//! Coordination kept in one process's memory: the lanes of named queues and connector accounts'
//! pacing windows.
//!
//! The [`Store`](super::Store) trait offers these as atomic operations (`enter_lane`,
//! `leave_lane`, `pace_admit`, `pace_observe`) so that a backend shared by several nodes can
//! enforce them across nodes. A backend used by one process (sled) keeps them here instead, and
//! `Pacer::detached` (offline runs, which have no store) uses the same code, so the rules are
//! written once. Everything here is behind one mutex per kind, so each operation is atomic.
//!
//! Invariants:
//! - A lane never counts more than `concurrency` holders that have not expired at the time of an
//!   entry; a holder stops counting once its `expires` has passed (its node may have died without
//!   giving its place back), so a lane is never wedged.
//! - After a holder leaves, the lane admits nobody before the `free_at` it gave (its gap); a later
//!   leave never moves that time back.
//! - Callers take their turn: a caller refused a place waits in the lane under its `turn` (its
//!   run's id, which sorts by the event's arrival to the millisecond), and while an earlier turn
//!   waits, a later one is not admitted. A waiter that has not asked again for [`WAIT_TURN`] (its run was cancelled,
//!   or went another way) loses its turn, so a lane is never held by a waiter that is gone.
//! - A pacing account never admits more than its learned `max` calls whose admission time lies in
//!   any one window (`(now - window, now]`), and admits nothing before its `blocked_until`, which
//!   only ever rises.
//! - Nothing here is durable: a store that must keep something across a restart (sled keeps an
//!   account's `blocked_until`) stores it itself and gives it back with
//!   [`Coordination::pace_restore`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ids::{ItemId, RunId};
use crate::model::Timestamp;

/// A lane of a named queue: the queue's name and the key it serialises by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneKey {
    /// The queue's name (steps of any flow that name it share it).
    pub name: String,
    /// The rendered key (e.g. a contact's email); empty for one lane for all.
    pub key: String,
}

impl LaneKey {
    /// The lane of `key` in queue `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
        }
    }
}

impl std::fmt::Display for LaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.name, self.key)
    }
}

/// What asking for a place in a lane answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEntry {
    /// The holder has a place (taken now, or already held: its expiry is then the new one).
    Entered,
    /// Every place is held. `until` is when the earliest holder's place expires if it is never
    /// given back; it is usually given back sooner, so callers look again well before.
    Full {
        /// The earliest expiry among the holders.
        until: Timestamp,
    },
    /// A place was given back too recently: the lane's gap keeps it closed until `until`.
    Spaced {
        /// When the lane opens again.
        until: Timestamp,
    },
    /// An earlier turn is waiting for the lane: it goes first.
    Behind,
}

/// How long a waiter keeps its turn in a lane after it last asked for a place (callers ask again
/// every fraction of a second while they wait).
pub const WAIT_TURN: Duration = Duration::from_secs(10);

/// One lane's holders and gap. A backend shared by several nodes keeps it in a row it locks
/// while it applies [`Lane::enter`] or [`Lane::leave`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Lane {
    /// Who holds a place, and when each place expires.
    holders: HashMap<ItemId, Timestamp>,
    /// Nobody enters before this (the gap after the last place given back).
    free_at: Timestamp,
    /// The turns waiting for a place, and until when each keeps its turn.
    waiting: BTreeMap<RunId, Timestamp>,
}

impl Lane {
    /// Whether the lane holds nothing that matters at `now` (it can be forgotten).
    fn idle(&self, now: Timestamp) -> bool {
        self.free_at <= now
            && self.holders.values().all(|expires| *expires <= now)
            && self.waiting.values().all(|until| *until <= now)
    }

    /// Takes a place for `holder`, or makes `turn` wait (see [`Coordination::enter_lane`]).
    pub(crate) fn enter(
        &mut self,
        concurrency: usize,
        (holder, turn): (ItemId, RunId),
        now: Timestamp,
        expires: Timestamp,
    ) -> LaneEntry {
        self.holders.retain(|_, until| *until > now);
        self.waiting.retain(|_, until| *until > now);
        if let Some(until) = self.holders.get_mut(&holder) {
            *until = expires;
            return LaneEntry::Entered;
        }
        let refused = if self.holders.len() >= concurrency.max(1) {
            let until = self.holders.values().min().copied().unwrap_or(now);
            Some(LaneEntry::Full { until })
        } else if self.free_at > now {
            Some(LaneEntry::Spaced {
                until: self.free_at,
            })
        } else if self.waiting.range(..turn).next().is_some() {
            Some(LaneEntry::Behind)
        } else {
            None
        };
        match refused {
            Some(refused) => {
                self.waiting.insert(turn, now.plus(WAIT_TURN));
                refused
            }
            None => {
                self.waiting.remove(&turn);
                self.holders.insert(holder, expires);
                LaneEntry::Entered
            }
        }
    }

    /// Gives `holder`'s place back; nobody enters before `free_at`.
    pub(crate) fn leave(&mut self, holder: ItemId, free_at: Timestamp) {
        self.holders.remove(&holder);
        self.free_at = self.free_at.max(free_at);
    }
}

/// Every lane in use, with a bound on forgotten ones.
#[derive(Debug, Default)]
struct Lanes {
    lanes: HashMap<LaneKey, Lane>,
    /// Idle lanes are swept when the map grows past this (twice its size after the last sweep),
    /// so the cost of sweeping is spread over the entries that grew it.
    sweep_at: usize,
}

/// One account's pacing. A backend shared by several nodes keeps it in a row it locks while it
/// applies [`Allowance::admit`] or [`Allowance::observe`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Allowance {
    /// No call before this (a 429, or the window's allowance used up).
    blocked_until: Timestamp,
    /// The limit the service reported: calls per window.
    limit: Option<(u32, Duration)>,
    /// When the calls admitted within the last window were admitted, oldest first.
    admitted: VecDeque<Timestamp>,
}

impl Allowance {
    /// Admits one call at `now`, or answers the earliest time a call may be made (see
    /// [`Coordination::pace_admit`]).
    pub(crate) fn admit(&mut self, now: Timestamp) -> Result<(), Timestamp> {
        if self.blocked_until > now {
            return Err(self.blocked_until);
        }
        let Some((max, window)) = self.limit else {
            return Ok(());
        };
        let window_start = Timestamp(now.millis().saturating_sub(window.as_millis() as i64));
        while self.admitted.front().is_some_and(|t| *t <= window_start) {
            self.admitted.pop_front();
        }
        match self.admitted.front() {
            Some(oldest) if self.admitted.len() >= max.max(1) as usize => Err(oldest.plus(window)),
            _ => {
                // Callers' clocks may be read a moment apart: keep the log in time order.
                let at = self.admitted.partition_point(|t| *t <= now);
                self.admitted.insert(at, now);
                Ok(())
            }
        }
    }

    /// Records a reported limit and blocked-until time; answers the new `blocked_until` when this
    /// raised it.
    pub(crate) fn observe(
        &mut self,
        limit: Option<(u32, Duration)>,
        blocked_until: Option<Timestamp>,
    ) -> Option<Timestamp> {
        if let Some((max, window)) = limit {
            self.limit = Some((max.max(1), window));
        }
        match blocked_until {
            Some(until) if until > self.blocked_until => {
                self.blocked_until = until;
                Some(until)
            }
            _ => None,
        }
    }
}

/// The smallest lane table worth sweeping.
const MIN_SWEEP: usize = 64;

/// Lanes and pacing for one process. See the module docs for the invariants.
#[derive(Debug, Default)]
pub struct Coordination {
    lanes: Mutex<Lanes>,
    accounts: Mutex<HashMap<String, Allowance>>,
}

impl Coordination {
    /// Takes a place in `lane` for `holder` until `expires` at the latest, if fewer than
    /// `concurrency` unexpired holders have one, the lane's gap has passed at `now`, and no
    /// earlier `turn` waits; else `turn` waits (see the module docs). A holder that already has a
    /// place keeps it, with the new expiry.
    pub fn enter_lane(
        &self,
        lane: &LaneKey,
        concurrency: usize,
        holder: (ItemId, RunId),
        now: Timestamp,
        expires: Timestamp,
    ) -> LaneEntry {
        let mut lanes = lock(&self.lanes);
        if lanes.lanes.len() >= lanes.sweep_at.max(MIN_SWEEP) {
            lanes.lanes.retain(|_, lane| !lane.idle(now));
            lanes.sweep_at = lanes.lanes.len() * 2;
        }
        lanes
            .lanes
            .entry(lane.clone())
            .or_default()
            .enter(concurrency, holder, now, expires)
    }

    /// Gives `holder`'s place in `lane` back; nobody enters before `free_at` (the caller's time
    /// plus the queue's gap). Giving back a place not held (it expired, or was given back) only
    /// applies `free_at`.
    pub fn leave_lane(&self, lane: &LaneKey, holder: ItemId, free_at: Timestamp) {
        let mut lanes = lock(&self.lanes);
        let Some(state) = lanes.lanes.get_mut(lane) else {
            // Swept: nobody held a place there.
            return;
        };
        state.leave(holder, free_at);
    }

    /// Whether `account` has been seen (admitted, observed or restored) in this process.
    pub fn pace_known(&self, account: &str) -> bool {
        lock(&self.accounts).contains_key(account)
    }

    /// Gives back an account's `blocked_until` read from durable storage (it only ever rises).
    pub fn pace_restore(&self, account: &str, blocked_until: Timestamp) {
        let mut accounts = lock(&self.accounts);
        let allowance = accounts.entry(account.to_owned()).or_default();
        allowance.blocked_until = allowance.blocked_until.max(blocked_until);
    }

    /// Admits one call of `account` at `now`, or answers the earliest time a call may be made:
    /// its `blocked_until`, or when the oldest call of a full window leaves the window.
    pub fn pace_admit(&self, account: &str, now: Timestamp) -> Result<(), Timestamp> {
        let mut accounts = lock(&self.accounts);
        accounts.entry(account.to_owned()).or_default().admit(now)
    }

    /// Records what a service said about `account`: its limit (`max` calls per window), and a
    /// time before which no call may be made. Answers the account's `blocked_until` when this
    /// raised it (the caller stores it, if it keeps it durably).
    pub fn pace_observe(
        &self,
        account: &str,
        limit: Option<(u32, Duration)>,
        blocked_until: Option<Timestamp>,
    ) -> Option<Timestamp> {
        let mut accounts = lock(&self.accounts);
        accounts
            .entry(account.to_owned())
            .or_default()
            .observe(limit, blocked_until)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// One turn for every caller of a test: no order among them.
    fn turn() -> RunId {
        RunId::from_ulid(ulid::Ulid::from_parts(1, 1))
    }

    #[test]
    fn idle_lanes_are_forgotten_and_busy_ones_kept() {
        let c = Coordination::default();
        let busy = LaneKey::new("crm", "busy");
        let holder = ItemId::new();
        assert_eq!(
            c.enter_lane(&busy, 1, (holder, turn()), at(0), at(1_000_000)),
            LaneEntry::Entered
        );
        for n in 0..1000 {
            let lane = LaneKey::new("crm", format!("{n}"));
            let item = ItemId::new();
            assert_eq!(
                c.enter_lane(&lane, 1, (item, turn()), at(n), at(n + 10)),
                LaneEntry::Entered
            );
            c.leave_lane(&lane, item, at(n));
        }
        assert!(lock(&c.lanes).lanes.len() < 200, "idle lanes were swept");
        assert!(matches!(
            c.enter_lane(&busy, 1, (ItemId::new(), turn()), at(2_000), at(3_000)),
            LaneEntry::Full { .. }
        ));
    }

    #[test]
    fn the_pacing_log_stays_in_time_order() {
        let c = Coordination::default();
        c.pace_observe("a", Some((2, Duration::from_millis(100))), None);
        assert_eq!(c.pace_admit("a", at(50)), Ok(()));
        assert_eq!(c.pace_admit("a", at(40)), Ok(()), "read a moment earlier");
        assert_eq!(c.pace_admit("a", at(60)), Err(at(140)));
        assert_eq!(c.pace_admit("a", at(140)), Ok(()));
    }
}
