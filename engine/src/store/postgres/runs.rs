//! A run as its executing node reads and writes it: `load_run` answers the run, its event and its
//! step records in one statement, and `update_run` writes a step's outcome in one statement when
//! this node knows the run's current row version, in a transaction of a few statements otherwise.
//!
//! Invariants:
//! - An update is applied to the run as stored: `decide` is given the stored run, and what it
//!   decided is written only while that run is still the stored one and the finished item is
//!   still leased to the caller; otherwise nothing is written.
//! - [`Versions`] is only a hint: the run this node last read or wrote, with the row version
//!   (`xmin`, the transaction that wrote the row) it had then. The one-statement update locks the
//!   run's row only if its version is still that one, and writes only if it could; anything else
//!   (another node or a callback changed the run, a lease was lost, nothing known) takes the
//!   transaction, which reads the run under its lock and decides again.
//! - Locks: the run's row first, then its queue item (both paths).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use tokio_postgres::types::Json;

use super::{
    db_error, decode, decode_opt, ingest, insert_items, parse_id, sql, ItemColumns, PgStore,
};
use crate::ids::RunId;
use crate::model::{Run, StepRecord};
use crate::store::{
    Committed, Decide, Lease, LeaseToken, LoadedRun, Result, RunUpdate, StoreError,
};

/// Runs known to this node beyond this many are forgotten (each is only a hint).
const MAX_KNOWN: usize = 4096;

/// The run, its row version, its event and its step records.
const LOAD: &str = "
    SELECT r.data, r.xmin::text, e.data,
           (SELECT coalesce(json_agg(s.data), '[]') FROM hookflow.step_records s WHERE s.run_id = r.id)
      FROM hookflow.runs r LEFT JOIN hookflow.events e ON e.id = r.event_id
     WHERE r.id = $1";

/// One step's outcome, written if run `$1` still has version `$2` and item `$3` is still leased to
/// `$4` with token `$5`: the run (`$6`–`$8`), its step records (`$9`, `$10`), new queued items
/// (`$11`–`$15`) and items taken by `$21` until `$22` (`$16`–`$20`), and the notices `$24` on
/// channel `$23`. Answers the run's new version (NULL if nothing was written) and the taken items'
/// ids and lease tokens.
const FINISH_STEP: &str = "
    WITH current AS (
        SELECT id FROM hookflow.runs WHERE id = $1 AND xmin::text = $2 FOR UPDATE
    ), finished AS (
        DELETE FROM hookflow.queue
         WHERE id = $3 AND lease_owner = $4 AND lease_token = $5 AND EXISTS (SELECT FROM current)
        RETURNING id
    ), written AS (
        UPDATE hookflow.runs SET status = $6, final = $7, data = $8
         WHERE id = $1 AND EXISTS (SELECT FROM finished)
        RETURNING xmin::text AS version
    ), records AS (
        INSERT INTO hookflow.step_records (run_id, step_id, data)
        SELECT $1, s, d FROM unnest($9::text[], $10::json[]) AS r(s, d)
         WHERE EXISTS (SELECT FROM written)
        ON CONFLICT (run_id, step_id) DO UPDATE SET data = EXCLUDED.data
    ), queued AS (
        INSERT INTO hookflow.queue (id, run_id, flow_id, due_at, data)
        SELECT * FROM unnest($11::text[], $12::text[], $13::text[], $14::int8[], $15::json[])
         WHERE EXISTS (SELECT FROM written)
    ), taken AS (
        INSERT INTO hookflow.queue
               (id, run_id, flow_id, due_at, data, lease_owner, lease_token, lease_until)
        SELECT i.*, $21, nextval('hookflow.lease_tokens'), $22
          FROM unnest($16::text[], $17::text[], $18::text[], $19::int8[], $20::json[]) AS i
         WHERE EXISTS (SELECT FROM written)
        RETURNING id, lease_token
    )
    SELECT (SELECT version FROM written),
           (SELECT count(pg_notify($23, n)) FROM written, unnest($24::text[]) AS n),
           ARRAY(SELECT id FROM taken), ARRAY(SELECT lease_token FROM taken)";

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
        let Some(row) = row else {
            return Ok(None);
        };
        let run: Run = decode(&row, 0, "runs")?;
        let event = decode_opt(&row, 2, "events")?;
        let records: Vec<StepRecord> = decode(&row, 3, "step_records")?;
        self.versions.remember(&run, row.get(1));
        Ok(Some(LoadedRun {
            run,
            event,
            records,
        }))
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
                if let Some(committed) = self.finish_step(&version, lease, &update).await? {
                    return Ok(Some(committed));
                }
            }
        }
        self.update_locked(run_id, done, decide).await
    }

    /// The one-statement update; `None` if it wrote nothing (see [`FINISH_STEP`]).
    async fn finish_step(
        &self,
        version: &str,
        lease: &Lease,
        update: &RunUpdate,
    ) -> Result<Option<Committed>> {
        let run = &update.run;
        let records = Records::last_per_step(&update.records);
        let queued = ItemColumns::of(update.enqueue.iter());
        let take = update.take.as_ref();
        let taken = ItemColumns::of(take.iter().flat_map(|t| &t.items));
        let owner = take.map(|t| t.owner.as_str());
        let until = take.map(|t| t.until.0);
        let notices = notices(run);
        let row = sql::query_opt(
            &self.lazy().await?,
            FINISH_STEP,
            &[
                &run.id.to_string(),
                &version,
                &lease.item.to_string(),
                &lease.owner.as_str(),
                &(lease.token.0 as i64),
                &run.status.as_str(),
                &run.status.is_final(),
                &Json(run),
                &records.steps,
                &records.data,
                &queued.ids,
                &queued.runs,
                &queued.flows,
                &queued.due,
                &queued.data,
                &taken.ids,
                &taken.runs,
                &taken.flows,
                &taken.due,
                &taken.data,
                &owner,
                &until,
                &super::RUN_CHANNEL,
                &notices,
            ],
            "finish a step",
        )
        .await?;
        let Some(version) = row.as_ref().and_then(|r| r.get::<_, Option<String>>(0)) else {
            return Ok(None);
        };
        let row = row.expect("a version was answered");
        let ids: Vec<&str> = row.get(2);
        let tokens: Vec<i64> = row.get(3);
        let leases = match take {
            Some(take) => ids
                .into_iter()
                .zip(tokens)
                .map(|(id, token)| {
                    Ok(Lease {
                        item: parse_id(id, "queue")?,
                        owner: take.owner.clone(),
                        token: LeaseToken(token as u64),
                        until: take.until,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(Some(self.committed(update.run.clone(), version, leases)))
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
        let notices = notices(&update.run);
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

/// The notices of a run update: the run's final status, if it has one now.
fn notices(run: &Run) -> Vec<String> {
    run.status
        .is_final()
        .then(|| format!("{}:{}", run.id, run.status.as_str()))
        .into_iter()
        .collect()
}

/// Step records as statement parameters.
struct Records<'a> {
    steps: Vec<String>,
    data: Vec<Json<&'a StepRecord>>,
}

impl<'a> Records<'a> {
    /// One record per step: the last one given wins.
    fn last_per_step(records: &'a [StepRecord]) -> Self {
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
