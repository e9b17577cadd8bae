//! Fires `schedule:` flows. Each tick becomes an event whose dedupe key is the tick itself, stored
//! with its run in one durable ingest — so a fire is recorded before its run starts, and a restart
//! can never fire the same tick twice. The last tick fired is kept in the store (`schedule:FLOW`):
//! at start-up, ticks that came due while the server was down are skipped, or fired (the most
//! recent, up to a cap) when the flow says `missed: catch_up`. `jitter` delays each fire by a
//! stable pseudo-random part of the jitter; the tick stays the run's identity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

use super::{AbortOnDrop, Engine};
use crate::flow::{Flow, Trigger};
use crate::ids::FlowId;
use crate::model::Timestamp;
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

async fn fire_until_stopped(engine: Arc<Engine>, mut stopped: watch::Receiver<bool>) {
    let started = Timestamp::now();
    // Per flow: the last tick handled.
    let mut cursors: HashMap<FlowId, Timestamp> = HashMap::new();
    loop {
        let now = Timestamp::now();
        let mut wake = now.plus(MAX_SLEEP);
        for flow in engine.catalog().all() {
            let Trigger::Schedule(schedule) = &flow.trigger else {
                continue;
            };
            if !flow.enabled {
                // Paused: its ticks pass unfired (re-enabling starts from then).
                cursors.insert(flow.id.clone(), Timestamp::now());
                continue;
            }
            let cursor = match cursors.get(&flow.id) {
                Some(c) => *c,
                None => match start_cursor(&engine, &flow, schedule, started).await {
                    Ok(c) => c,
                    Err(e) => {
                        error!(flow = %flow.id, error = %e, "cannot read the schedule's state; trying again");
                        continue;
                    }
                },
            };
            let cursor = fire_due(&engine, &flow, schedule, cursor, now, &stopped).await;
            cursors.insert(flow.id.clone(), cursor);
            if let Some(next) = schedule.next_after(cursor) {
                wake = wake.min(next.plus(jitter(&flow.id, schedule, next)));
            }
        }
        let sleep = Duration::from_millis(wake.millis_since(Timestamp::now()));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Where firing starts after a start-up: after the last tick fired, minus what the flow's
/// `missed` rule skips.
async fn start_cursor(
    engine: &Engine,
    flow: &Flow,
    schedule: &Schedule,
    started: Timestamp,
) -> Result<Timestamp> {
    let stored = engine.store().state(&state_key(&flow.id)).await?;
    let Some(last) = stored.and_then(|v| v["last_tick"].as_i64()).map(Timestamp) else {
        // Never fired: start from now.
        return Ok(started);
    };
    match schedule.missed {
        Missed::Skip => Ok(started.max(last)),
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
            Ok(match keep_from {
                0 => last,
                n => missed[n - 1],
            })
        }
    }
}

/// Fires every tick after `cursor` that is due at `now` (until stopped); answers the new cursor. A
/// tick that could not be stored is tried again on the next pass.
async fn fire_due(
    engine: &Engine,
    flow: &Flow,
    schedule: &Schedule,
    mut cursor: Timestamp,
    now: Timestamp,
    stopped: &watch::Receiver<bool>,
) -> Timestamp {
    while let Some(tick) = schedule.next_after(cursor) {
        if tick.plus(jitter(&flow.id, schedule, tick)) > now || *stopped.borrow() {
            break;
        }
        let span = info_span!("schedule", flow = %flow.id, tick = %tick);
        if let Err(e) = fire(engine, flow, tick).instrument(span).await {
            error!(flow = %flow.id, error = %e, "could not store a schedule fire; trying again");
            break;
        }
        cursor = tick;
    }
    cursor
}

async fn fire(engine: &Engine, flow: &Flow, tick: Timestamp) -> Result<()> {
    let now = Timestamp::now();
    let trigger = json!({
        "method": "SCHEDULE",
        "headers": {},
        "query": {},
        "body": { "scheduled_at": tick, "fired_at": now },
        "received_at": now,
    });
    let key = DedupeKey {
        key: format!("schedule:{}", tick.millis()),
        expires_at: now.plus(TICK_KEY_WINDOW),
    };
    let accepted = engine.store_event(flow, trigger, Some(key)).await?;
    let state = json!({ "last_tick": tick.millis() });
    engine
        .store()
        .put_state(&state_key(&flow.id), &state)
        .await?;
    if accepted.duplicate {
        info!(run_id = %accepted.run_id, "tick already fired before a restart");
    } else {
        info!(run_id = %accepted.run_id, "schedule fired");
    }
    Ok(())
}

fn state_key(flow: &FlowId) -> String {
    format!("schedule:{flow}")
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
