//! What the engine counts for `/metrics`: runs finished by flow and status, step durations (a
//! histogram by flow and kind), retries scheduled, leases renewed, commits refused for a lost lease,
//! steps that panicked, and callbacks to resume URLs by outcome. In memory, since the process started.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::model::RunStatus;

/// The histogram's upper bounds, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One histogram: counts per bucket (not cumulative), the count and the sum.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations at or under each bound of [`BUCKETS`] (and over the last one, at the end).
    pub buckets: [u64; BUCKETS.len() + 1],
    /// How many observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Counts {
    runs: BTreeMap<(String, RunStatus), u64>,
    retries: BTreeMap<String, u64>,
    resent: BTreeMap<String, u64>,
    steps: BTreeMap<(String, String), Histogram>,
    refused_commits: u64,
    step_panics: u64,
    lease_renewals: u64,
    callbacks: BTreeMap<&'static str, u64>,
}

/// The engine's counters.
#[derive(Default)]
pub struct Metrics(Mutex<Counts>);

/// A copy of the counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Runs finished, by (flow, status).
    pub runs: Vec<(String, RunStatus, u64)>,
    /// Retries scheduled, by flow.
    pub retries: Vec<(String, u64)>,
    /// Automatic retries that resent the request recorded for their key, by flow.
    pub resent: Vec<(String, u64)>,
    /// Step attempt durations, by (flow, kind).
    pub steps: Vec<(String, String, Histogram)>,
    /// Commits the store refused because the worker's lease was no longer held.
    pub refused_commits: u64,
    /// Step attempts that panicked (each failed as an attempt).
    pub step_panics: u64,
    /// Leases renewed by running steps.
    pub lease_renewals: u64,
    /// Calls to `wait_for_callback` resume URLs, by outcome (`resumed`, `not_waiting`,
    /// `not_found`).
    pub callbacks: Vec<(&'static str, u64)>,
}

impl Metrics {
    pub(super) fn run_finished(&self, flow: &str, status: RunStatus) {
        *self
            .lock()
            .runs
            .entry((flow.to_owned(), status))
            .or_default() += 1;
    }

    pub(super) fn commit_refused(&self) {
        self.lock().refused_commits += 1;
    }

    pub(super) fn lease_renewed(&self) {
        self.lock().lease_renewals += 1;
    }

    pub(super) fn callback(&self, outcome: &'static str) {
        *self.lock().callbacks.entry(outcome).or_default() += 1;
    }

    pub(super) fn step_panicked(&self) {
        self.lock().step_panics += 1;
    }

    pub(super) fn retry_scheduled(&self, flow: &str) {
        *self.lock().retries.entry(flow.to_owned()).or_default() += 1;
    }

    pub(super) fn request_resent(&self, flow: &str) {
        *self.lock().resent.entry(flow.to_owned()).or_default() += 1;
    }

    pub(super) fn step_took(&self, flow: &str, kind: &str, took: Duration) {
        self.lock()
            .steps
            .entry((flow.to_owned(), kind.to_owned()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.lock();
        Snapshot {
            runs: counts
                .runs
                .iter()
                .map(|((f, s), n)| (f.clone(), *s, *n))
                .collect(),
            retries: counts
                .retries
                .iter()
                .map(|(f, n)| (f.clone(), *n))
                .collect(),
            resent: counts.resent.iter().map(|(f, n)| (f.clone(), *n)).collect(),
            steps: counts
                .steps
                .iter()
                .map(|((f, k), h)| (f.clone(), k.clone(), h.clone()))
                .collect(),
            refused_commits: counts.refused_commits,
            step_panics: counts.step_panics,
            lease_renewals: counts.lease_renewals,
            callbacks: counts.callbacks.iter().map(|(o, n)| (*o, *n)).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
