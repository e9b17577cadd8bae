//! Named queues' lanes: for a step with `queue: {name, key, concurrency, gap}`, at most
//! `concurrency` attempts with the same (name, key) execute at once, and the next starts `gap`
//! after one ends. A step that finds its lane busy goes back to the queue for a moment (not an
//! attempt). Lanes live in this process's memory: after a restart they start empty, which only
//! matters for the steps that were executing (they run again, as every in-flight step does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How soon a step that found its lane full looks again.
const BUSY_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Lane {
    running: usize,
    free_at: Option<Instant>,
}

type LaneKey = (String, String);

/// Every lane in use.
#[derive(Debug, Clone, Default)]
pub(super) struct Lanes(Arc<Mutex<HashMap<LaneKey, Lane>>>);

/// A place in a lane, given back when dropped.
#[derive(Debug)]
pub(super) struct Place {
    lanes: Lanes,
    key: LaneKey,
    gap: Duration,
}

impl Lanes {
    /// Takes a place in the lane, or answers how long to wait before trying again.
    pub(super) fn enter(
        &self,
        name: &str,
        key: &str,
        concurrency: usize,
        gap: Duration,
    ) -> Result<Place, Duration> {
        let now = Instant::now();
        let lane_key = (name.to_owned(), key.to_owned());
        let mut lanes = self.lock();
        let lane = lanes.entry(lane_key.clone()).or_default();
        if lane.running >= concurrency {
            return Err(BUSY_RETRY);
        }
        if let Some(free_at) = lane.free_at.filter(|f| *f > now) {
            return Err(free_at - now);
        }
        lane.running += 1;
        Ok(Place {
            lanes: self.clone(),
            key: lane_key,
            gap,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<LaneKey, Lane>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lanes = self.lanes.lock();
        if let Some(lane) = lanes.get_mut(&self.key) {
            lane.running = lane.running.saturating_sub(1);
            if self.gap.is_zero() {
                if lane.running == 0 {
                    lanes.remove(&self.key);
                }
            } else {
                lane.free_at = Some(Instant::now() + self.gap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_admits_its_concurrency_and_spaces_by_its_gap() {
        let lanes = Lanes::default();
        let first = lanes.enter("crm", "a@x.com", 1, Duration::ZERO).unwrap();
        assert!(lanes.enter("crm", "a@x.com", 1, Duration::ZERO).is_err());
        assert!(
            lanes.enter("crm", "b@x.com", 1, Duration::ZERO).is_ok(),
            "keys are independent"
        );
        drop(first);
        let again = lanes
            .enter("crm", "a@x.com", 1, Duration::from_secs(60))
            .unwrap();
        drop(again);
        let wait = lanes
            .enter("crm", "a@x.com", 1, Duration::from_secs(60))
            .unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }
}
