//! Fires `schedule:` flows. A tick is first claimed in the store ([`Store::claim_tick`]): of every
//! scheduler sharing the store (one per node), exactly one wins each tick, and a tick older than
//! the last one claimed is never fired. The winner stores the tick as an event whose dedupe key is
//! the tick itself, with its run, in one durable ingest — so a fire is recorded before its run
//! starts, and storing a tick again (after a store error, or at start-up, below) can never start a
//! second run. At start-up, ticks that came due while the server was down (after the last tick
//! claimed) are skipped, or fired (the most recent, up to a cap) when the flow says
//! `missed: catch_up`; catching up also stores the last claimed tick again, in case the server
//! stopped between claiming it and storing it. A schedule deployed while the server runs (a new
//! flow, or a flow whose `cron` or `timezone` changed) starts from its next tick after the
//! deployment: catching up is only for ticks missed while the server was down. `jitter` delays each fire by a stable
//! pseudo-random part of the jitter; the tick stays the run's identity.
//!
//! [`Store::claim_tick`]: crate::store::Store::claim_tick

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::{AbortOnDrop, Engine};
use crate::flow::{Flow, Trigger};
use crate::ids::FlowId;
use crate::model::{StartedBy, Timestamp};
use crate::schedule::{Missed, Schedule};
use crate::store::DedupeKey;
use crate::Result;

/// How long a tick's dedupe key is kept (far longer than any restart).
const TICK_KEY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest the scheduler sleeps (so newly deployed schedules are picked up).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The most missed ticks looked at when catching up.
const MAX_MISSED_SCAN: usize = 100_000;

/// The scheduler's task, stopped between fires (so a tick fired is always recorded as the last).
pub(super) struct Running {
    stop: watch::Sender<bool>,
    task: AbortOnDrop,
}

impl Running {
    /// Starts firing the due ticks of every deployed schedule flow.
    pub(super) fn start(engine: Arc<Engine>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = AbortOnDrop(Some(tokio::spawn(fire_until_stopped(engine, stopped))));
        Self { stop, task }
    }

    /// Stops at the end of the fire in progress (waiting at most `STOP_WAIT`).
    pub(super) async fn stop(mut self) {
        // The task may have ended already (a panic): nothing to wait for then.
        let _ = self.stop.send(true);
        if let Some(task) = self.task.0.as_mut() {
            if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
                warn!("the scheduler did not stop in time; the tick being fired may not be recorded as the last");
            }
        }
    }
}

/// How long stopping waits for a fire in progress (one durable write or two).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Where firing a flow's ticks goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// The last tick handled: fired, fired by another scheduler, or skipped.
    at: Timestamp,
    /// A tick this scheduler claimed (or may have) and has not stored yet: it is stored without
    /// claiming it again (its dedupe key makes storing it twice harmless), first if it is at or
    /// before `at` (a tick claimed before a restart).
    claimed: Option<Timestamp>,
}

impl Cursor {
    fn at(at: Timestamp) -> Self {
        Self { at, claimed: None }
    }
}

/// A flow's schedule as far as ticks go: its expression and timezone.
type When = (String, String);

fn when(schedule: &Schedule) -> When {
    (schedule.cron.clone(), schedule.timezone.clone())
}

/// Where a schedule deployed while the server runs starts, given what the scheduler last knew of
/// the flow (`None`: nothing). `None` answered: the flow was deployed when the server started, so
/// it resumes from its last claimed tick ([`start_cursor`]).
fn resume(
    known: Option<&(Cursor, When)>,
    schedule: &Schedule,
    deployed_at_start: bool,
    now: Timestamp,
) -> Option<Cursor> {
    match known {
        Some((cursor, was)) if *was == when(schedule) => Some(*cursor),
        // Changed, or new since the start: from the next tick on.
        Some(_) => Some(Cursor::at(now)),
        None if deployed_at_start => None,
        None => Some(Cursor::at(now)),
    }
}

async fn fire_until_stopped(engine: Arc<Engine>, mut stopped: watch::Receiver<bool>) {
    let started = engine.now();
    // The schedule flows deployed when the scheduler started: only they catch up.
    let at_start: std::collections::HashSet<FlowId> = engine
        .catalog()
        .all()
        .iter()
        .map(|f| f.id.clone())
        .collect();
    // Per flow: the last tick handled, and the schedule it was handled for.
    let mut cursors: HashMap<FlowId, (Cursor, When)> = HashMap::new();
    loop {
        let now = engine.now();
        let mut wake = now.plus(MAX_SLEEP);
        for flow in engine.catalog().all() {
            let Trigger::Schedule(schedule) = &flow.trigger else {
                continue;
            };
            if !flow.enabled {
                // Paused: its ticks pass unfired (re-enabling starts from then).
                cursors.insert(flow.id.clone(), (Cursor::at(engine.now()), when(schedule)));
                continue;
            }
            let known = cursors.get(&flow.id);
            let cursor = match resume(known, schedule, at_start.contains(&flow.id), now) {
                Some(cursor) => {
                    if known.is_some_and(|(c, _)| *c != cursor) {
                        info!(flow = %flow.id, "schedule changed: it fires from its next tick");
                    }
                    cursor
                }
                None => match engine.store().last_tick(&flow.id).await {
                    Ok(last) => start_cursor(schedule, last, started),
                    Err(e) => {
                        error!(flow = %flow.id, error = %e, "cannot read the schedule's last tick; trying again");
                        continue;
                    }
                },
            };
            let cursor = fire_due(&engine, &flow, schedule, cursor, now, &stopped).await;
            cursors.insert(flow.id.clone(), (cursor, when(schedule)));
            if let Some(next) = schedule.next_after(cursor.at) {
                wake = wake.min(next.plus(jitter(&flow.id, schedule, next)));
            }
        }
        tokio::select! {
            () = engine.config.clock.sleep_until(wake) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Where firing starts after a start-up, given the last tick claimed (`None`: never fired): after
/// it, minus what the flow's `missed` rule skips. The last claimed tick is stored again (a
/// duplicate, unless the server stopped between claiming and storing it) while its dedupe key is
/// surely still kept, and, when catching up, every missed tick is fired.
fn start_cursor(schedule: &Schedule, last: Option<Timestamp>, started: Timestamp) -> Cursor {
    let Some(last) = last else {
        // Never fired: start from now.
        return Cursor::at(started);
    };
    let key_kept = last.plus(TICK_KEY_WINDOW / 2) > started;
    match schedule.missed {
        Missed::Skip => Cursor {
            at: started.max(last),
            claimed: key_kept.then_some(last),
        },
        Missed::CatchUp(max) => {
            let mut missed = Vec::new();
            let mut at = last;
            while let Some(tick) = schedule.next_after(at).filter(|t| *t <= started) {
                missed.push(tick);
                at = tick;
                if missed.len() >= MAX_MISSED_SCAN {
                    break;
                }
            }
            let keep_from = missed.len().saturating_sub(max);
            match keep_from {
                0 if key_kept => Cursor {
                    at: Timestamp(last.millis() - 1),
                    claimed: Some(last),
                },
                0 => Cursor::at(last),
                n => Cursor::at(missed[n - 1]),
            }
        }
    }
}

/// Fires every tick after `cursor` that is due at `now` (until stopped); answers the new cursor. A
/// tick that could not be claimed or stored is tried again on the next pass.
async fn fire_due(
    engine: &Engine,
    flow: &Arc<Flow>,
    schedule: &Schedule,
    mut cursor: Cursor,
    now: Timestamp,
    stopped: &watch::Receiver<bool>,
) -> Cursor {
    if let Some(tick) = cursor.claimed.filter(|t| *t <= cursor.at) {
        let span = info_span!("schedule", flow = %flow.id, tick = %tick);
        let stored = fire(engine, flow, tick, &mut cursor.claimed);
        if let Err(e) = stored.instrument(span).await {
            error!(flow = %flow.id, error = %e, "could not store a schedule fire; trying again");
            return cursor;
        }
    }
    while let Some(tick) = schedule.next_after(cursor.at) {
        if tick.plus(jitter(&flow.id, schedule, tick)) > now || *stopped.borrow() {
            break;
        }
        let span = info_span!("schedule", flow = %flow.id, tick = %tick);
        let fired = fire(engine, flow, tick, &mut cursor.claimed);
        if let Err(e) = fired.instrument(span).await {
            error!(flow = %flow.id, error = %e, "could not store a schedule fire; trying again");
            break;
        }
        cursor = Cursor::at(tick);
    }
    cursor
}

/// Claims the tick (unless `claimed` says this scheduler has) and stores it as an event with its
/// run; a tick another scheduler claimed is left to it.
async fn fire(
    engine: &Engine,
    flow: &Arc<Flow>,
    tick: Timestamp,
    claimed: &mut Option<Timestamp>,
) -> Result<()> {
    if *claimed != Some(tick) {
        // If the claim fails, it may still have been made: store the tick anyway when trying
        // again (its dedupe key keeps that from starting a second run).
        *claimed = Some(tick);
        if !engine.store().claim_tick(&flow.id, tick).await? {
            *claimed = None;
            debug!("tick claimed by another scheduler (or an earlier one of this flow)");
            return Ok(());
        }
    }
    let now = engine.now();
    let trigger = Schedule::trigger(tick, now);
    let key = DedupeKey {
        key: format!("schedule:{}", tick.millis()),
        expires_at: now.plus(TICK_KEY_WINDOW),
    };
    let accepted = engine
        .store_event(flow, trigger, Some(key), StartedBy::Schedule)
        .await?;
    *claimed = None;
    if accepted.duplicate {
        info!(run_id = %accepted.run_id, "tick already fired");
    } else {
        info!(run_id = %accepted.run_id, "schedule fired");
    }
    Ok(())
}

/// A stable part of the schedule's jitter for one tick (the same on every pass and restart).
fn jitter(flow: &FlowId, schedule: &Schedule, tick: Timestamp) -> Duration {
    let max = schedule.jitter.as_millis() as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (flow.as_str(), tick.millis()).hash(&mut hasher);
    Duration::from_millis(hasher.finish() % (max + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_second(missed: Missed) -> Schedule {
        let mut schedule = Schedule::parse("* * * * * *", None).unwrap();
        schedule.missed = missed;
        schedule
    }

    const SECOND: i64 = 1000;
    const STARTED: Timestamp = Timestamp(1_700_000_000_500);

    /// A tick `n` seconds before the whole second before `STARTED`.
    fn tick(n: i64) -> Timestamp {
        Timestamp(1_700_000_000_000 - n * SECOND)
    }

    #[test]
    fn a_schedule_deployed_or_changed_while_running_starts_from_its_next_tick() {
        let schedule = every_second(Missed::CatchUp(5));
        let now = tick(50);
        assert_eq!(
            resume(None, &schedule, false, now),
            Some(Cursor::at(now)),
            "new since the start: no past tick fires"
        );
        assert_eq!(
            resume(None, &schedule, true, now),
            None,
            "deployed at the start: resumes from the last claimed tick"
        );
        let known = (Cursor::at(tick(40)), when(&schedule));
        assert_eq!(resume(Some(&known), &schedule, true, now), Some(known.0));
        let changed = (
            Cursor::at(tick(40)),
            ("0 9 * * MON-FRI".into(), "UTC".into()),
        );
        assert_eq!(
            resume(Some(&changed), &schedule, true, now),
            Some(Cursor::at(now)),
            "a changed schedule starts afresh"
        );
    }

    #[test]
    fn a_schedule_that_never_fired_starts_now() {
        for missed in [Missed::Skip, Missed::CatchUp(3)] {
            assert_eq!(
                start_cursor(&every_second(missed), None, STARTED),
                Cursor::at(STARTED)
            );
        }
    }

    #[test]
    fn skipping_starts_after_the_start_or_the_last_tick_claimed() {
        let skip = every_second(Missed::Skip);
        assert_eq!(
            start_cursor(&skip, Some(tick(10)), STARTED),
            Cursor {
                at: STARTED,
                claimed: Some(tick(10)),
            },
            "the last claimed tick is stored again (a duplicate unless the crash came between)"
        );
        let later = Timestamp(STARTED.millis() + 5 * SECOND);
        assert_eq!(
            start_cursor(&skip, Some(later), STARTED),
            Cursor {
                at: later,
                claimed: Some(later),
            },
            "another scheduler claimed later ticks"
        );
        let long_ago = Timestamp(STARTED.millis() - 30 * 24 * 3600 * SECOND);
        assert_eq!(
            start_cursor(&skip, Some(long_ago), STARTED),
            Cursor::at(STARTED),
            "too old to be stored again"
        );
    }

    #[test]
    fn catching_up_fires_the_most_recent_missed_ticks() {
        let catch_up = every_second(Missed::CatchUp(2));
        // Missed: ticks 9 … 0 seconds back; the two most recent fire, so firing goes on after 2.
        assert_eq!(
            start_cursor(&catch_up, Some(tick(10)), STARTED),
            Cursor::at(tick(2))
        );
    }

    #[test]
    fn catching_up_everything_stores_the_last_claimed_tick_again() {
        let catch_up = every_second(Missed::CatchUp(10));
        let cursor = start_cursor(&catch_up, Some(tick(2)), STARTED);
        assert_eq!(
            cursor,
            Cursor {
                at: Timestamp(tick(2).millis() - 1),
                claimed: Some(tick(2)),
            }
        );
        assert_eq!(catch_up.next_after(cursor.at), Some(tick(2)));
    }

    #[test]
    fn a_claimed_tick_older_than_its_dedupe_key_is_never_stored_again() {
        let mut monthly = Schedule::parse("0 0 1 * *", None).unwrap();
        monthly.missed = Missed::CatchUp(10);
        let first = Timestamp(1_704_067_200_000); // 2024-01-01T00:00:00Z
        let started = first.plus(Duration::from_secs(20 * 24 * 3600));
        assert_eq!(
            start_cursor(&monthly, Some(first), started),
            Cursor::at(first)
        );
    }
}
