//! Steps' outcomes written together: the executing workers' `update_run`s that know their run's
//! row version (see `runs.rs`) are handed to a [`Batcher`], and each batch is one statement (one
//! transaction) whatever its size.
//!
//! Invariants:
//! - A run's outcome is written only if the run still has the version its worker knows and the
//!   worker's item is still leased to it; the outcome of each run is written whole or not at
//!   all, whatever becomes of the others in the batch.
//! - A batch holds at most one outcome per run; a second one (parallel branches finishing at
//!   once) is answered "not written", and its caller takes the locked transaction.
//! - A batch that fails (the database is away, or one run's outcome cannot be written) is
//!   answered "not written" too: each caller then writes its own run in the locked transaction,
//!   so one run's failure never fails the others, and each caller hears its own error.
//! - Runs are locked in id order, so two batches (on any nodes) cannot wait on each other.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Pool;
use tokio_postgres::types::Json;

use super::batch::Batcher;
use super::runs::Records;
use super::{parse_id, pool_error, sql, ItemColumns, RUN_CHANNEL};
use crate::ids::RunId;
use crate::model::QueueItem;
use crate::store::{Lease, LeaseToken, Result, RunUpdate};

/// The most outcomes one statement writes.
const MAX_BATCH: usize = 64;

/// Tasks writing batches. A statement's fixed cost is some four outcomes' worth, so fewer,
/// larger batches cost the database less; two keep one batch written while the next gathers.
const TASKS: usize = 2;

/// Writes the outcomes `$1`–`$9` (per run: id, version, finished item, its lease's owner and
/// token, the run's status, whether final, its record and its notice or NULL), the step records
/// `$10`–`$12` (per record: run, step, record) and the new items `$13`–`$19` (per item: columns,
/// then the owner and lease expiry of an item its worker takes, or NULLs), of the runs that still
/// have their version and lease; their notices go on channel `$20`, joined in one notification
/// (at most [`MAX_BATCH`] notices of a run id and a status: well under the 8,000-byte limit).
/// Answers, per run written, its id, its new version, and the ids and lease tokens of its taken
/// items.
const FINISH_STEPS: &str = "
    WITH batch AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                             $6::text[], $7::bool[], $8::json[], $9::text[])
            AS b(run_id, version, item_id, owner, token, status, final, data, notice)
    ), current AS (
        SELECT r.id FROM hookflow.runs r JOIN batch b ON b.run_id = r.id AND r.xmin::text = b.version
         ORDER BY r.id
           FOR UPDATE OF r
    ), finished AS (
        DELETE FROM hookflow.queue q USING batch b
         WHERE q.id = b.item_id AND q.lease_owner = b.owner AND q.lease_token = b.token
           AND b.run_id IN (SELECT id FROM current)
        RETURNING b.run_id
    ), written AS (
        UPDATE hookflow.runs r SET status = b.status, final = b.final, data = b.data
          FROM batch b
         WHERE r.id = b.run_id AND r.id IN (SELECT run_id FROM finished)
        RETURNING r.id, r.xmin::text AS version, b.notice
    ), records AS (
        INSERT INTO hookflow.step_records (run_id, step_id, data)
        SELECT s.run_id, s.step_id, s.data
          FROM unnest($10::text[], $11::text[], $12::json[]) AS s(run_id, step_id, data)
         WHERE s.run_id IN (SELECT id FROM written)
        ON CONFLICT (run_id, step_id) DO UPDATE SET data = EXCLUDED.data
    ), items AS (
        INSERT INTO hookflow.queue
               (id, run_id, flow_id, due_at, data, lease_owner, lease_token, lease_until)
        SELECT i.id, i.run_id, i.flow_id, i.due_at, i.data, i.owner,
               CASE WHEN i.owner IS NOT NULL THEN nextval('hookflow.lease_tokens') END, i.until
          FROM unnest($13::text[], $14::text[], $15::text[], $16::int8[], $17::json[],
                      $18::text[], $19::int8[])
            AS i(id, run_id, flow_id, due_at, data, owner, until)
         WHERE i.run_id IN (SELECT id FROM written)
        RETURNING id, run_id, lease_token
    ), notified AS (
        SELECT pg_notify($20, string_agg(notice, ',')) FROM written WHERE notice IS NOT NULL
        HAVING count(*) > 0
    )
    SELECT w.id, w.version, (SELECT count(*) FROM notified),
           ARRAY(SELECT t.id FROM items t WHERE t.run_id = w.id AND t.lease_token IS NOT NULL),
           ARRAY(SELECT t.lease_token FROM items t WHERE t.run_id = w.id AND t.lease_token IS NOT NULL)
      FROM written w";

/// One run's outcome, decided on the run at `version`, finishing the item of `lease`.
pub(super) struct Finish {
    /// The run's row version the outcome was decided on.
    pub version: String,
    /// The lease of the item the step finished.
    pub lease: Lease,
    /// The outcome.
    pub update: RunUpdate,
}

/// What was written of a [`Finish`]: the run's new version and the leases of the items taken.
pub(super) struct Written {
    /// The run's row version now.
    pub version: String,
    /// The leases of the items its worker took.
    pub taken: Vec<Lease>,
}

/// Each outcome handed back with what was written of it (`None`: nothing, see the module docs).
pub(super) type Finisher = Batcher<Finish, (RunUpdate, Option<Written>)>;

/// Starts the tasks writing batches of outcomes through `pool`.
pub(super) fn start(pool: Pool) -> Finisher {
    Batcher::start(TASKS, MAX_BATCH, move |batch: Vec<Finish>| {
        let pool = pool.clone();
        async move {
            let mut runs = HashSet::new();
            let first: Vec<bool> = batch.iter().map(|f| runs.insert(f.update.run.id)).collect();
            let once: Vec<&Finish> = batch
                .iter()
                .zip(&first)
                .filter(|(_, &f)| f)
                .map(|(f, _)| f)
                .collect();
            let mut written = write(&pool, &once).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, runs = once.len(), "a batch of steps' outcomes failed; writing each on its own");
                HashMap::new()
            });
            batch
                .into_iter()
                .zip(first)
                .map(|(finish, first)| {
                    let run = finish.update.run.id;
                    let written = if first { written.remove(&run) } else { None };
                    (finish.update, written)
                })
                .collect()
        }
    })
}

/// Writes the batch in one statement: what was written, by run.
async fn write(pool: &Pool, batch: &[&Finish]) -> Result<HashMap<RunId, Written>> {
    let column = |f: fn(&Finish) -> String| -> Vec<String> { batch.iter().map(|x| f(x)).collect() };
    let runs = column(|f| f.update.run.id.to_string());
    let versions = column(|f| f.version.clone());
    let items = column(|f| f.lease.item.to_string());
    let owners = column(|f| f.lease.owner.to_string());
    let statuses = column(|f| f.update.run.status.as_str().to_owned());
    let tokens: Vec<i64> = batch.iter().map(|f| f.lease.token.0 as i64).collect();
    let finals: Vec<bool> = batch
        .iter()
        .map(|f| f.update.run.status.is_final())
        .collect();
    let data: Vec<Json<_>> = batch.iter().map(|f| Json(&f.update.run)).collect();
    let notices: Vec<Option<String>> = batch
        .iter()
        .map(|f| super::runs::notice(&f.update.run))
        .collect();

    let (mut record_runs, mut record_steps, mut record_data) = (Vec::new(), Vec::new(), Vec::new());
    for f in batch {
        let records = Records::last_per_step(&f.update.records);
        record_runs.extend(records.steps.iter().map(|_| f.update.run.id.to_string()));
        record_steps.extend(records.steps);
        record_data.extend(records.data);
    }

    let new_items: Vec<(&QueueItem, Option<(&str, i64)>)> = batch
        .iter()
        .flat_map(|f| {
            let queued = f.update.enqueue.iter().map(|i| (i, None));
            let taken = f.update.take.iter().flat_map(|t| {
                t.items
                    .iter()
                    .map(|i| (i, Some((t.owner.as_str(), t.until.0))))
            });
            queued.chain(taken)
        })
        .collect();
    let columns = ItemColumns::of(new_items.iter().map(|(i, _)| *i));
    let takers: Vec<Option<&str>> = new_items.iter().map(|(_, t)| t.map(|t| t.0)).collect();
    let untils: Vec<Option<i64>> = new_items.iter().map(|(_, t)| t.map(|t| t.1)).collect();

    let client = pool.get().await.map_err(pool_error)?;
    let rows = sql::query(
        &client,
        FINISH_STEPS,
        &[
            &runs,
            &versions,
            &items,
            &owners,
            &tokens,
            &statuses,
            &finals,
            &data,
            &notices,
            &record_runs,
            &record_steps,
            &record_data,
            &columns.ids,
            &columns.runs,
            &columns.flows,
            &columns.due,
            &columns.data,
            &takers,
            &untils,
            &RUN_CHANNEL,
        ],
        "write steps' outcomes",
    )
    .await?;
    let by_id: HashMap<&str, &Finish> = runs
        .iter()
        .map(String::as_str)
        .zip(batch.iter().copied())
        .collect();
    let mut written = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: &str = row.get(0);
        let finish = by_id[id];
        let ids: Vec<&str> = row.get(3);
        let tokens: Vec<i64> = row.get(4);
        let take = finish.update.take.as_ref();
        let taken = ids
            .into_iter()
            .zip(tokens)
            .map(|(item, token)| {
                let take = take.expect("only a worker's take is leased");
                Ok(Lease {
                    item: parse_id(item, "queue")?,
                    owner: take.owner.clone(),
                    token: LeaseToken(token as u64),
                    until: take.until,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        written.insert(
            finish.update.run.id,
            Written {
                version: row.get(1),
                taken,
            },
        );
    }
    Ok(written)
}
