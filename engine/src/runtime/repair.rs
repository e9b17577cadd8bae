//! Fixing runs: retry a failed run from the step that failed, or replay a run's event from the
//! first step as a new run; one run at a time or every run of a flow matching a selection.

use std::fmt;
use std::str::FromStr;

use tracing::info;

use super::{advance, Accepted, Engine};
use crate::ids::{EventId, FlowId, RunId};
use crate::model::{Event, Run, RunStatus, StartedBy, Timestamp};
use crate::store::RunQuery;
use crate::{Error, Result};

/// The most runs one bulk action may select: narrow the time window for more.
pub const MAX_BULK: usize = 100_000;

/// Which revision of the flow a replay runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplayRevision {
    /// The flow as it is deployed now (after a fix to the flow file).
    #[default]
    Current,
    /// Exactly the revision the run ran (every revision's source is kept).
    Original,
}

impl FromStr for ReplayRevision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "current" => Ok(Self::Current),
            "original" => Ok(Self::Original),
            _ => Err(format!(
                "unknown revision `{s}` (expected `current` or `original`)"
            )),
        }
    }
}

impl fmt::Display for ReplayRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Current => "current",
            Self::Original => "original",
        })
    }
}

/// The runs of one flow a bulk action applies to.
#[derive(Debug, Clone)]
pub struct RunSelection {
    /// The flow.
    pub flow_id: FlowId,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after this time.
    pub since: Option<Timestamp>,
    /// Only runs created before this time.
    pub until: Option<Timestamp>,
}

/// What a bulk action did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bulk {
    /// How many runs matched the selection.
    pub matched: usize,
    /// The runs retried, or the new runs a replay started.
    pub started: Vec<RunId>,
    /// Runs that could not be retried or replayed, with why.
    pub failed: Vec<(RunId, String)>,
}

impl Engine {
    /// Resumes a failed run from its failed step (see [`advance::retry`]); `by` is who asked.
    pub async fn retry_run(&self, run_id: RunId, by: Option<&str>) -> Result<Run> {
        let store = self.store();
        let run = store.run(run_id).await?.ok_or(Error::RunNotFound(run_id))?;
        if run.status != RunStatus::Failed {
            return Err(advance::NotRetryable {
                run_id,
                status: run.status,
            }
            .into());
        }
        let flow = self
            .catalog()
            .revision(store, &run.flow_id, &run.revision)
            .await?;
        let now = self.now();
        let run = store
            .update_run(run_id, None, &|run| {
                advance::retry(&flow, run, now, by).ok()
            })
            .await?
            .ok_or(Error::RunNotFound(run_id))?
            .run;
        info!(%run_id, flow = %run.flow_id, "run retried from its failed step");
        self.wake.notify_one();
        Ok(run)
    }

    /// Starts a new run of a run's event from the first step, on the chosen revision of its flow.
    /// The new run records which run it replays.
    pub async fn replay_run(&self, run_id: RunId, revision: ReplayRevision) -> Result<Accepted> {
        let store = self.store();
        let run = store.run(run_id).await?.ok_or(Error::RunNotFound(run_id))?;
        let event = store
            .event(run.event_id)
            .await?
            .ok_or(Error::EventGone(run_id))?;
        let flow = match revision {
            ReplayRevision::Current => self
                .catalog()
                .current(&run.flow_id)
                .ok_or_else(|| Error::FlowNotDeployed(run.flow_id.clone()))?,
            ReplayRevision::Original => {
                self.catalog()
                    .revision(store, &run.flow_id, &run.revision)
                    .await?
            }
        };
        let now = self.now();
        let copy = Event {
            id: EventId::new(),
            flow_id: flow.id.clone(),
            received_at: now,
            trigger: event.trigger,
        };
        let accepted = Accepted {
            event_id: copy.id,
            run_id: RunId::new(),
            duplicate: false,
        };
        let mut new_run = advance::start(&flow, copy, accepted.run_id, now);
        new_run.run.replay_of = Some(run_id);
        new_run.run.started_by = Some(StartedBy::Replay);
        store.ingest(new_run).await?;
        info!(%run_id, new_run_id = %accepted.run_id, %revision, revision_id = %flow.revision, "run replayed");
        self.wake.notify_one();
        Ok(accepted)
    }

    /// The ids of every run matching a selection, newest first (at most [`MAX_BULK`]).
    pub async fn select_runs(&self, selection: &RunSelection) -> Result<Vec<RunId>> {
        let mut query = RunQuery {
            flow_id: Some(selection.flow_id.clone()),
            status: selection.status,
            since: selection.since,
            until: selection.until,
            before: None,
            limit: 1000,
        };
        let mut ids = Vec::new();
        loop {
            let page = self.store().list_runs(&query).await?;
            ids.extend(page.runs.iter().map(|r| r.id));
            if ids.len() > MAX_BULK {
                return Err(Error::TooManyRuns(MAX_BULK));
            }
            match page.next {
                Some(next) => query.before = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// Retries every failed run matching a selection (the status filter is forced to `failed`);
    /// `by` is who asked.
    pub async fn retry_runs(&self, selection: &RunSelection, by: Option<&str>) -> Result<Bulk> {
        let selection = RunSelection {
            status: Some(RunStatus::Failed),
            ..selection.clone()
        };
        let ids = self.select_runs(&selection).await?;
        let mut bulk = Bulk {
            matched: ids.len(),
            ..Bulk::default()
        };
        for id in ids {
            match self.retry_run(id, by).await {
                Ok(run) => bulk.started.push(run.id),
                Err(e) => bulk.failed.push((id, e.to_string())),
            }
        }
        Ok(bulk)
    }

    /// Replays every run matching a selection.
    pub async fn replay_runs(
        &self,
        selection: &RunSelection,
        revision: ReplayRevision,
    ) -> Result<Bulk> {
        let ids = self.select_runs(selection).await?;
        let mut bulk = Bulk {
            matched: ids.len(),
            ..Bulk::default()
        };
        for id in ids {
            match self.replay_run(id, revision).await {
                Ok(accepted) => bulk.started.push(accepted.run_id),
                Err(e) => bulk.failed.push((id, e.to_string())),
            }
        }
        Ok(bulk)
    }
}
