//! A run as its executing node reads and writes it: `load_run` answers the run, its event and its
//! step records in one statement, and `update_run` writes a step's outcome with other workers'
//! in one statement (`finish.rs`) when this node knows the run's current row version, in a
//! transaction of a few statements otherwise.
//!
//! Invariants:
//! - An update is applied to the run as stored: `decide` is given the stored run, and what it
//!   decided is written only while that run is still the stored one and the finished item is
//!   still leased to the caller; otherwise nothing is written.
//! - [`Versions`] is only a hint: the run this node last read or wrote, with the row version
//!   (`xmin`, the transaction that wrote the row) it had then. The batched update locks the
//!   run's row only if its version is still that one, and writes only if it could; anything else
//!   (another node or a callback changed the run, a lease was lost, nothing known) takes the
//!   transaction, which reads the run under its lock and decides again.
//! - Locks: the run's row first, then its queue item (both paths).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::finish::Finish;
use super::{db_error, decode, decode_opt, ingest, insert_items, sql, PgStore};
use crate::ids::RunId;
use crate::model::{Run, StepRecord};
use crate::store::{Committed, Decide, Lease, LoadedRun, Result, StoreError};

/// Runs known to this node beyond this many are forgotten (each is only a hint).
const MAX_KNOWN: usize = 4096;

/// The run `$1`: the columns [`PgStore::loaded`] reads.
const LOAD: &str = "
    SELECT r.data, r.xmin::text, e.data,
           (SELECT coalesce(json_agg(s.data), '[]') FROM hookflow.step_records s WHERE s.run_id = r.id)
      FROM hookflow.runs r LEFT JOIN hookflow.events e ON e.id = r.event_id
     WHERE r.id = $1";

/// The runs this node last read or wrote, each with its row version then (see the module docs).
#[derive(Default)]
pub(super) struct Versions(Mutex<HashMap<RunId, (String, Run)>>);

impl Versions {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, (String, Run)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, run: &Run, version: String) {
        let mut known = self.known();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(run.id, (version, run.clone()));
    }

    fn take(&self, id: RunId) -> Option<(String, Run)> {
        self.known().remove(&id)
    }
}

impl PgStore {
    /// See [`Store::load_run`](crate::store::Store::load_run).
    pub(super) async fn load(&self, id: RunId) -> Result<Option<LoadedRun>> {
        let row =
            sql::query_opt(&self.lazy().await?, LOAD, &[&id.to_string()], "load a run").await?;
        row.map(|row| self.loaded(&row, 0)).transpose()
    }

    /// The run in the columns from `at` of `row` (its record, its row version, its event's
    /// record, its step records as a JSON array), remembered at that version.
    pub(super) fn loaded(&self, row: &Row, at: usize) -> Result<LoadedRun> {
        let run: Run = decode(row, at, "runs")?;
        let event = decode_opt(row, at + 2, "events")?;
        let records: Vec<StepRecord> = decode(row, at + 3, "step_records")?;
        self.versions.remember(&run, row.get(at + 1));
        Ok(LoadedRun {
            run,
            event,
            records,
        })
    }

    /// See [`Store::update_run`](crate::store::Store::update_run).
    pub(super) async fn update(
        &self,
        run_id: RunId,
        done: Option<&Lease>,
        decide: Decide<'_>,
    ) -> Result<Option<Committed>> {
        // Another writer's update (a callback) leaves the version known here stale: the
        // executing worker's next commit finds so and takes the transaction.
        let known = done.and_then(|lease| Some((lease, self.versions.take(run_id)?)));
        if let Some((lease, (version, run))) = known {
            if let Some(update) = decide(run) {
                let finish = Finish {
                    version,
                    lease: lease.clone(),
                    update,
                };
                let (update, written) = self.finisher.call(finish).await?;
                if let Some(written) = written {
                    return Ok(Some(self.committed(
                        update.run,
                        written.version,
                        written.taken,
                    )));
                }
            }
        }
        self.update_locked(run_id, done, decide).await
    }

    /// The update in a transaction: the run read under its lock, `decide` applied, the outcome
    /// written and the finished item removed, or nothing written.
    async fn update_locked(
        &self,
        run_id: RunId,
        done: Option<&Lease>,
        decide: Decide<'_>,
    ) -> Result<Option<Committed>> {
        let mut client = self.lazy().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin a run update"))?;
        let id = run_id.to_string();
        let read = async {
            sql::query_opt(
                &tx,
                "SELECT data, xmin::text FROM hookflow.runs WHERE id = $1 FOR UPDATE",
                &[&id],
                "read a run",
            )
            .await
        };
        let finish = async {
            let Some(lease) = done else {
                return Ok(());
            };
            let finished = sql::execute(
                &tx,
                "DELETE FROM hookflow.queue WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
                &[
                    &lease.item.to_string(),
                    &lease.owner.as_str(),
                    &(lease.token.0 as i64),
                ],
                "finish a queue item",
            )
            .await?;
            match finished {
                0 => Err(StoreError::LeaseLost { item: lease.item }),
                _ => Ok(()),
            }
        };
        // Sent together (pipelined, in this order): a refused lease rolls the lock back with the
        // transaction.
        let (row, ()) = tokio::try_join!(read, finish)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db_error("commit a run update"))?;
            return Ok(None);
        };
        let run: Run = decode(&row, 0, "runs")?;
        let Some(update) = decide(run.clone()) else {
            tx.commit().await.map_err(db_error("commit a run update"))?;
            return Ok(Some(Committed {
                run,
                taken: Vec::new(),
            }));
        };
        let (status, final_) = (update.run.status.as_str(), update.run.status.is_final());
        let data = Json(&update.run);
        let write_run = async {
            sql::query_one(
                &tx,
                "UPDATE hookflow.runs SET status = $2, final = $3, data = $4 WHERE id = $1
                 RETURNING xmin::text",
                &[&id, &status, &final_, &data],
                "write a run",
            )
            .await
        };
        let records = Records::last_per_step(&update.records);
        let write_records = async {
            if records.steps.is_empty() {
                return Ok(0);
            }
            sql::execute(
                &tx,
                "INSERT INTO hookflow.step_records (run_id, step_id, data)
                 SELECT $1, s, d FROM unnest($2::text[], $3::json[]) AS r(s, d)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET data = EXCLUDED.data",
                &[&id, &records.steps, &records.data],
                "write step records",
            )
            .await
        };
        let enqueue: Vec<_> = update.enqueue.iter().collect();
        let take: Vec<_> = update.take.iter().flat_map(|t| &t.items).collect();
        let taker = update.take.as_ref().map(|t| (&t.owner, t.until));
        let notices: Vec<String> = notice(&update.run).into_iter().collect();
        // Sent together (pipelined on the connection): one round trip for the whole update.
        let (written, _, _, taken, ()) = tokio::try_join!(
            write_run,
            write_records,
            insert_items(&tx, &enqueue, None),
            async {
                match taker {
                    Some(taker) => insert_items(&tx, &take, Some(taker)).await,
                    None => Ok(Vec::new()),
                }
            },
            ingest::notify(&tx, &notices),
        )?;
        tx.commit().await.map_err(db_error("commit a run update"))?;
        Ok(Some(self.committed(update.run, written.get(0), taken)))
    }

    /// What an update wrote; the run is remembered at its new version while its caller goes on
    /// executing it (it took the next item).
    fn committed(&self, run: Run, version: String, taken: Vec<Lease>) -> Committed {
        self.queue_changes.changed(1 + taken.len());
        if !taken.is_empty() {
            self.versions.remember(&run, version);
        }
        Committed { run, taken }
    }
}

/// The notice of a run update: the run's final status, if it has one now.
pub(super) fn notice(run: &Run) -> Option<String> {
    run.status
        .is_final()
        .then(|| format!("{}:{}", run.id, run.status.as_str()))
}

/// Step records as statement parameters.
pub(super) struct Records<'a> {
    /// The records' step ids.
    pub steps: Vec<String>,
    /// The records, in the same order.
    pub data: Vec<Json<&'a StepRecord>>,
}

impl<'a> Records<'a> {
    /// One record per step: the last one given wins.
    pub fn last_per_step(records: &'a [StepRecord]) -> Self {
        let mut seen = HashSet::new();
        let mut last: Vec<&StepRecord> = Vec::new();
        for record in records.iter().rev() {
            if seen.insert(&record.step_id) {
                last.push(record);
            }
        }
        Self {
            steps: last.iter().map(|r| r.step_id.to_string()).collect(),
            data: last.into_iter().map(Json).collect(),
        }
    }
}
