//! New runs handed from the inbox straight to claims ("fresh" runs), written to the trees by the
//! update that commits their first step, in its transaction, rather than by the promoter first.
//!
//! A run through the promoter costs two transactions (its creation, then its first update) and
//! a queue item written, scanned for and deleted. A fresh run costs one transaction and no queue
//! item: while its workers keep claiming, the promoter only reads inbox records into memory
//! ([`Fresh`]); a claim takes them after the queue tree's due items, and the store answers reads
//! of a fresh run (its run and event) from memory until it is written.
//!
//! A fresh run that claims leave alone goes to the trees the usual way (the promoter writes it
//! with its item): when no claim took one for a moment ([`Tuning`]), when it waited too long,
//! or when its run is not a single item. A taken run whose first update takes too long (a slow
//! step) is written by the promoter too, its item leased to the worker that holds it. Whoever
//! writes a run first wins: both writers check, in their transaction, that the run is not stored
//! yet; the other then finds it stored.
//!
//! Nothing acknowledged is lost: the inbox position stored as promoted (the point recovery reads
//! on from) only passes a record once its run is in the trees and on disk ([`Fresh::low_water`]).
//! After a crash, the records past it are read again; those whose run the trees hold are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::new_runs::EncodedRun;
use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{QueueItem, Timestamp};
use crate::store::StoreError;

/// How many fresh runs wait in memory, and when they go to the trees without a claim's update.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// At most this many wait for a claim.
    pub(crate) capacity: usize,
    /// When no claim looked for fresh runs for this long, the waiting ones go.
    pub(crate) idle: Duration,
    /// A fresh run waiting (or taken and not written) this long goes.
    pub(crate) stale: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            capacity: 1024,
            idle: Duration::from_millis(50),
            stale: Duration::from_secs(1),
        }
    }
}

/// A new run read from the inbox and not yet in the trees.
#[derive(Debug)]
pub(super) struct FreshRun {
    /// Its inbox record's number.
    pub(super) number: u64,
    /// What the trees get.
    pub(super) encoded: EncodedRun,
    pub(super) run_id: RunId,
    pub(super) event_id: EventId,
    /// Its only queue item, when it has exactly one (a run with several goes to the trees).
    pub(super) item: Option<QueueItem>,
}

impl FreshRun {
    /// The flow and queue key of its item, if a claim may take it.
    fn claimable(&self) -> Option<(&FlowId, &[u8])> {
        let item = self.item.as_ref()?;
        let (key, _) = self.encoded.items.first()?;
        Some((&item.flow_id, key.as_slice()))
    }
}

impl FreshRun {
    /// The run of inbox record `number`.
    pub(super) fn new(number: u64, encoded: EncodedRun) -> Result<Self, String> {
        let ids = || Ok::<_, StoreError>((encoded.run_id()?, encoded.event_id()?));
        let (run_id, event_id) = ids().map_err(|e| e.to_string())?;
        let item = encoded.single_item().map_err(|e| e.to_string())?;
        Ok(Self {
            number,
            encoded,
            run_id,
            event_id,
            item,
        })
    }
}

/// Where a fresh run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Waiting for a claim, since then.
    Waiting(Instant),
    /// Taken by a claim then; its first update writes it.
    Taken(Instant),
    /// Being written by the promoter (with its item leased, if taken).
    Promoting { leased: bool },
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<RunId, (Arc<FreshRun>, Place)>,
    /// The waiting runs a claim may take, per flow, by queue key (due time, then item id).
    waiting: HashMap<FlowId, BTreeMap<Vec<u8>, RunId>>,
    events: HashMap<EventId, RunId>,
    /// The record numbers of `runs`.
    numbers: BTreeSet<u64>,
    /// The number of the last record read from the inbox.
    read_through: u64,
    /// When a claim last looked for fresh runs (or the store opened).
    last_claim: Option<Instant>,
    tuning: Tuning,
}

/// The fresh runs of a store (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Fresh(Mutex<State>);

impl State {
    /// Moves a run out of the waiting ones (a claim took it, or the promoter).
    fn unwait(&mut self, run: &FreshRun) {
        if let Some((flow, key)) = run.claimable() {
            if let Some(waiting) = self.waiting.get_mut(flow) {
                waiting.remove(key);
            }
        }
    }

    /// Puts a run among the waiting ones.
    fn wait(&mut self, run: &FreshRun) {
        if let Some((flow, key)) = run.claimable() {
            let waiting = self.waiting.entry(flow.clone()).or_default();
            waiting.insert(key.to_vec(), run.run_id);
        }
    }
}

impl Fresh {
    /// Fresh runs that start after inbox record `read_through`.
    pub(super) fn after(read_through: u64, tuning: Tuning) -> Self {
        Self(Mutex::new(State {
            read_through,
            last_claim: Some(Instant::now()),
            tuning,
            ..State::default()
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds runs read from the inbox, through record `read_through`.
    pub(super) fn add(&self, runs: Vec<FreshRun>, read_through: u64) {
        let now = Instant::now();
        let mut state = self.state();
        for run in runs {
            state.numbers.insert(run.number);
            state.events.insert(run.event_id, run.run_id);
            state.wait(&run);
            state
                .runs
                .insert(run.run_id, (Arc::new(run), Place::Waiting(now)));
        }
        state.read_through = state.read_through.max(read_through);
    }

    /// How many runs may wait for a claim.
    pub(super) fn capacity(&self) -> usize {
        self.state().tuning.capacity
    }

    /// The number of the last record read from the inbox.
    pub(super) fn read_through(&self) -> u64 {
        self.state().read_through
    }

    /// When the earliest item of a run not taken is due (a run of several items: now, as the
    /// promoter is about to queue them).
    pub(super) fn next_due(&self) -> Option<Timestamp> {
        let state = self.state();
        state
            .runs
            .values()
            .filter(|(_, place)| {
                !matches!(place, Place::Taken(_) | Place::Promoting { leased: true })
            })
            .map(|(run, _)| {
                run.item
                    .as_ref()
                    .map_or_else(Timestamp::now, |item| item.due_at)
            })
            .min()
    }

    /// Whether no fresh run is in memory.
    pub(super) fn is_empty(&self) -> bool {
        self.state().runs.is_empty()
    }

    /// How many runs wait for a claim.
    pub(super) fn waiting(&self) -> usize {
        let state = self.state();
        let waiting = |(_, place): &&(Arc<FreshRun>, Place)| matches!(place, Place::Waiting(_));
        state.runs.values().filter(waiting).count()
    }

    /// Up to `want` items per flow of waiting runs due at `now` and not `leased` already, oldest
    /// due first.
    pub(super) fn peek(
        &self,
        now: Timestamp,
        want: usize,
        leased: impl Fn(&QueueItem) -> bool,
    ) -> Vec<QueueItem> {
        let state = self.state();
        let mut due = Vec::new();
        for waiting in state.waiting.values() {
            let items = waiting
                .values()
                .filter_map(|run_id| state.runs.get(run_id)?.0.item.as_ref())
                .take_while(|item| item.due_at <= now)
                .filter(|item| !leased(item))
                .take(want);
            due.extend(items.cloned());
        }
        due
    }

    /// A claim takes these items (of waiting runs, from [`peek`](Self::peek)); returns the ids of
    /// those it got (not those the promoter started writing meanwhile: they come out of the queue
    /// tree next). Also records that claims are active.
    pub(super) fn took(&self, items: &[&QueueItem]) -> HashSet<ItemId> {
        let now = Instant::now();
        let mut state = self.state();
        state.last_claim = Some(now);
        let mut got = HashSet::new();
        for item in items {
            let Some((run, place)) = state.runs.get_mut(&item.run_id) else {
                continue;
            };
            if let Place::Waiting(_) = place {
                *place = Place::Taken(now);
                let run = run.clone();
                state.unwait(&run);
                got.insert(item.id);
            }
        }
        got
    }

    /// The leases of these items ended: those of taken fresh runs wait for a claim again;
    /// returns how many.
    pub(super) fn released(&self, items: &[ItemId]) -> usize {
        if items.is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut state = self.state();
        let again: Vec<_> = state
            .runs
            .values_mut()
            .filter(|(run, place)| {
                matches!(place, Place::Taken(_))
                    && run
                        .item
                        .as_ref()
                        .is_some_and(|item| items.contains(&item.id))
            })
            .map(|(run, place)| {
                *place = Place::Waiting(now);
                run.clone()
            })
            .collect();
        for run in &again {
            state.wait(run);
        }
        again.len()
    }

    /// The flows of the fresh runs.
    pub(super) fn flows(&self) -> Vec<FlowId> {
        let state = self.state();
        let mut flows: Vec<FlowId> = state
            .runs
            .values()
            .filter_map(|(run, _)| run.item.as_ref().map(|item| item.flow_id.clone()))
            .collect();
        flows.sort();
        flows.dedup();
        flows
    }

    /// Every fresh run, for writing to the trees with its items queued (at close).
    pub(super) fn all(&self) -> Vec<(Arc<FreshRun>, bool)> {
        let mut state = self.state();
        state.waiting.clear();
        state
            .runs
            .values_mut()
            .map(|(run, place)| {
                *place = Place::Promoting { leased: false };
                (run.clone(), false)
            })
            .collect()
    }

    /// The fresh run with this id.
    pub(super) fn run(&self, run_id: RunId) -> Option<Arc<FreshRun>> {
        self.state().runs.get(&run_id).map(|(run, _)| run.clone())
    }

    /// The fresh run of this event.
    pub(super) fn of_event(&self, event_id: EventId) -> Option<Arc<FreshRun>> {
        let state = self.state();
        let run_id = state.events.get(&event_id)?;
        state.runs.get(run_id).map(|(run, _)| run.clone())
    }

    /// The fresh runs of a flow (or all), with ids within bounds (`lower` included, `upper`
    /// not), newest first.
    pub(super) fn listed(
        &self,
        flow_id: Option<&FlowId>,
        lower: Option<[u8; 16]>,
        upper: Option<[u8; 16]>,
    ) -> Vec<Arc<FreshRun>> {
        let state = self.state();
        let mut runs: Vec<_> = state
            .runs
            .values()
            .map(|(run, _)| run)
            .filter(|run| {
                let id = run.run_id.to_bytes();
                lower.is_none_or(|l| id >= l)
                    && upper.is_none_or(|u| id < u)
                    && flow_id.is_none_or(|f| run.encoded.in_flow(f))
            })
            .cloned()
            .collect();
        runs.sort_by_key(|run| std::cmp::Reverse(run.run_id));
        runs
    }

    /// Up to `max` runs for the promoter to write, at most `queue_room` of them with items not
    /// leased: the waiting ones when claims are idle (or the run is stale, or not a single item),
    /// the taken ones gone stale, and those a failed write left; each `true` when its item is
    /// leased (taken). They stay readable until [`written`](Self::written).
    pub(super) fn for_trees(
        &self,
        max: usize,
        mut queue_room: usize,
    ) -> Vec<(Arc<FreshRun>, bool)> {
        let now = Instant::now();
        let mut state = self.state();
        let tuning = state.tuning;
        let idle = state.last_claim.is_none_or(|t| now - t >= tuning.idle);
        // Taken ones gone stale and failed writes first, then the waiting ones, oldest first.
        let mut ids: Vec<RunId> = state
            .runs
            .iter()
            .filter(|(_, (run, place))| {
                !matches!(place, Place::Waiting(_)) || run.claimable().is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        ids.extend(state.waiting.values().flat_map(|w| w.values().copied()));
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= max {
                break;
            }
            let Some((run, place)) = state.runs.get_mut(&id) else {
                continue;
            };
            let leased = match *place {
                Place::Waiting(since)
                    if idle || run.item.is_none() || now - since >= tuning.stale =>
                {
                    false
                }
                Place::Taken(since) if now - since >= tuning.stale => true,
                Place::Promoting { leased } => leased,
                _ => continue,
            };
            if !leased {
                if queue_room == 0 {
                    continue;
                }
                queue_room -= 1;
            }
            let was_waiting = matches!(place, Place::Waiting(_));
            *place = Place::Promoting { leased };
            let run = run.clone();
            if was_waiting {
                state.unwait(&run);
            }
            out.push((run, leased));
        }
        out
    }

    /// These runs are in the trees now (or were found there).
    pub(super) fn written(&self, run_ids: impl IntoIterator<Item = RunId>) {
        let mut state = self.state();
        for run_id in run_ids {
            if let Some((run, place)) = state.runs.remove(&run_id) {
                state.numbers.remove(&run.number);
                state.events.remove(&run.event_id);
                if let Place::Waiting(_) = place {
                    state.unwait(&run);
                }
            }
        }
    }

    /// The number of the last inbox record before which every run is in the trees (written,
    /// not necessarily on disk yet).
    pub(super) fn low_water(&self) -> u64 {
        let state = self.state();
        state
            .numbers
            .first()
            .map_or(state.read_through, |first| first - 1)
    }
}
