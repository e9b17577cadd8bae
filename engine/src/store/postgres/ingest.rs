//! Ingest on PostgreSQL: concurrent `ingest` calls share transactions, so the acknowledgement rate
//! is not one commit (and one WAL flush) per event.
//!
//! Callers hand their new run to a [`Batcher`]; a few writer tasks each take what is waiting (up
//! to [`MAX_BATCH`]) and write it in one transaction, committed synchronously. A batch without
//! dedupe keys is one statement (events, runs, first items and notices together); a batch with
//! keys takes them first, then writes that statement, then commits. Every caller of a batch is
//! answered only after the commit returns.
//!
//! Invariants:
//! - A caller hears `Created` only once its event, run and items are committed durably; when the
//!   batch fails, every caller in it hears the error and nothing of the batch is written.
//! - Of deliveries sharing a dedupe key (in one batch, in concurrent batches or on other nodes),
//!   exactly one creates a run: the key's row is taken with `INSERT … ON CONFLICT`, which waits
//!   for a concurrent writer of the same key to commit. The others are answered with the
//!   original's ids once it is committed.
//! - Keys are written in one order (flow, key), so concurrent batches cannot deadlock on them; a
//!   deadlock or serialisation failure anyway retries the batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;

use super::batch::{shared_error, Batcher};
use super::{db_error, pool_error, sql, ItemColumns, RUN_CHANNEL};
use crate::store::{Ingested, NewRun, Result, RunNotice, StoreError};

/// The most runs one transaction writes.
pub(super) const MAX_BATCH: usize = 256;

/// How often a batch that hit a deadlock or serialisation failure is tried again.
const TRIES: usize = 3;

/// A notification's payload stays below PostgreSQL's 8,000-byte limit.
const MAX_PAYLOAD: usize = 7_000;

/// The ingest writers. Dropping it ends the writer tasks once they have answered what they took.
pub(super) struct Writer(Batcher<NewRun, Result<Ingested>>);

impl Writer {
    /// Starts `writers` writer tasks on `pool`; `syncs` counts their commits.
    pub(super) fn start(pool: Pool, writers: usize, syncs: Arc<AtomicU64>) -> Self {
        Self(Batcher::start(
            writers,
            MAX_BATCH,
            move |batch: Vec<NewRun>| {
                let (pool, syncs) = (pool.clone(), syncs.clone());
                async move {
                    let news: Vec<&NewRun> = batch.iter().collect();
                    let outcome = write_with_retries(&pool, &news).await;
                    match outcome {
                        Ok(outcomes) => {
                            syncs.fetch_add(1, Ordering::Relaxed);
                            outcomes.into_iter().map(Ok).collect()
                        }
                        Err(e) => batch
                            .iter()
                            .map(|_| Err(shared_error(&e, "write the event")))
                            .collect(),
                    }
                }
            },
        ))
    }

    /// Writes `new` with whatever else is waiting; returns once it is committed.
    pub(super) async fn ingest(&self, new: NewRun) -> Result<Ingested> {
        self.0.call(new).await?
    }
}

async fn write_with_retries(pool: &Pool, batch: &[&NewRun]) -> Result<Vec<Ingested>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match write(pool, batch).await {
            Err(StoreError::Conflict(why)) if tries < TRIES => {
                tracing::debug!(%why, "ingest batch collided with another; writing it again");
            }
            outcome => return outcome,
        }
    }
}

/// What each run of a batch comes to before the database is asked.
#[derive(Clone, Copy)]
enum Plan {
    /// Written unless its dedupe key (if any) is taken.
    Write,
    /// Shares a dedupe key with an earlier run of the batch: answered as its duplicate.
    SameKeyAs(usize),
}

async fn write(pool: &Pool, batch: &[&NewRun]) -> Result<Vec<Ingested>> {
    // Within the batch, the first delivery with a key goes to the database; later ones follow it.
    let mut first_with_key: HashMap<(&str, &str), usize> = HashMap::new();
    let plans: Vec<Plan> = batch
        .iter()
        .enumerate()
        .map(|(n, new)| match &new.dedupe {
            Some(key) => match first_with_key.entry((new.run.flow_id.as_str(), &key.key)) {
                std::collections::hash_map::Entry::Occupied(first) => Plan::SameKeyAs(*first.get()),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(n);
                    Plan::Write
                }
            },
            None => Plan::Write,
        })
        .collect();

    let mut client = pool.get().await.map_err(pool_error)?;
    if first_with_key.is_empty() {
        // Nothing to look up first: one statement, committed (durably) on its own.
        insert_created(&client, batch).await?;
        return Ok(vec![Ingested::Created; batch.len()]);
    }
    let tx = client
        .transaction()
        .await
        .map_err(db_error("begin an ingest"))?;

    let mut outcomes: Vec<Option<Ingested>> = vec![None; batch.len()];
    let mut keyed: Vec<usize> = first_with_key.values().copied().collect();
    keyed.sort_by_key(|&n| (batch[n].run.flow_id.as_str(), dedupe_key(batch[n])));
    if !keyed.is_empty() {
        let column = |f: fn(&NewRun) -> String| -> Vec<String> {
            keyed.iter().map(|&n| f(batch[n])).collect()
        };
        let (flows, keys) = (
            column(|n| n.run.flow_id.to_string()),
            column(|n| dedupe_key(n).to_owned()),
        );
        let (events, runs) = (
            column(|n| n.event.id.to_string()),
            column(|n| n.run.id.to_string()),
        );
        let taken: Vec<i64> = keyed
            .iter()
            .map(|&n| batch[n].event.received_at.0)
            .collect();
        let expires: Vec<i64> = keyed
            .iter()
            .map(|&n| batch[n].dedupe.as_ref().map_or(0, |d| d.expires_at.0))
            .collect();
        let won = sql::query(
        &tx,
        "INSERT INTO hookflow.dedupe AS d (flow_id, key, event_id, run_id, taken_at, expires_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
                 ON CONFLICT (flow_id, key) DO UPDATE
                    SET event_id = EXCLUDED.event_id, run_id = EXCLUDED.run_id,
                        taken_at = EXCLUDED.taken_at, expires_at = EXCLUDED.expires_at
                    WHERE d.expires_at <= EXCLUDED.taken_at
                 RETURNING flow_id, key",
        &[&flows, &keys, &events, &runs, &taken, &expires],
        "take dedupe keys",
    )
    .await?;
        let won: std::collections::HashSet<(String, String)> =
            won.iter().map(|row| (row.get(0), row.get(1))).collect();
        let lost: Vec<usize> = keyed
            .iter()
            .copied()
            .filter(|&n| {
                let key = (
                    batch[n].run.flow_id.to_string(),
                    dedupe_key(batch[n]).to_owned(),
                );
                !won.contains(&key)
            })
            .collect();
        if !lost.is_empty() {
            let flows: Vec<String> = lost
                .iter()
                .map(|&n| batch[n].run.flow_id.to_string())
                .collect();
            let keys: Vec<String> = lost
                .iter()
                .map(|&n| dedupe_key(batch[n]).to_owned())
                .collect();
            let originals = sql::query(
                &tx,
                "SELECT d.flow_id, d.key, d.event_id, d.run_id
                       FROM hookflow.dedupe d
                       JOIN unnest($1::text[], $2::text[]) AS k(flow_id, key)
                         ON d.flow_id = k.flow_id AND d.key = k.key",
                &[&flows, &keys],
                "read the originals of repeated deliveries",
            )
            .await?;
            let mut by_key = HashMap::new();
            for row in &originals {
                let key: (String, String) = (row.get(0), row.get(1));
                let ids = (row.get::<_, String>(2), row.get::<_, String>(3));
                by_key.insert(key, ids);
            }
            for &n in &lost {
                let key = (
                    batch[n].run.flow_id.to_string(),
                    dedupe_key(batch[n]).to_owned(),
                );
                let (event, run) = by_key.get(&key).ok_or_else(|| {
                    StoreError::Conflict(format!("dedupe key `{}` vanished while read", key.1))
                })?;
                outcomes[n] = Some(Ingested::Duplicate {
                    event_id: super::parse_id(event, "dedupe")?,
                    run_id: super::parse_id(run, "dedupe")?,
                });
            }
        }
    }

    let created: Vec<&NewRun> = batch
        .iter()
        .zip(&plans)
        .zip(&outcomes)
        .filter(|((_, plan), outcome)| matches!(plan, Plan::Write) && outcome.is_none())
        .map(|((new, _), _)| *new)
        .collect();
    if !created.is_empty() {
        insert_created(&tx, &created).await?;
    }
    tx.commit().await.map_err(db_error("commit the ingest"))?;

    let mut answers = Vec::with_capacity(batch.len());
    for (n, plan) in plans.iter().enumerate() {
        let answer = match (plan, outcomes[n]) {
            (_, Some(outcome)) => outcome,
            (Plan::Write, None) => Ingested::Created,
            (Plan::SameKeyAs(first), None) => match outcomes[*first] {
                Some(duplicate @ Ingested::Duplicate { .. }) => duplicate,
                _ => Ingested::Duplicate {
                    event_id: batch[*first].event.id,
                    run_id: batch[*first].run.id,
                },
            },
        };
        answers.push(answer);
    }
    Ok(answers)
}

fn dedupe_key(new: &NewRun) -> &str {
    new.dedupe.as_ref().map_or("", |d| d.key.as_str())
}

/// Inserts the events, runs, first items and step records of `created`, and notifies their
/// creation (and the end of those that ended at ingest), in one statement.
async fn insert_created(client: &impl GenericClient, created: &[&NewRun]) -> Result<()> {
    let ids = |f: fn(&NewRun) -> String| -> Vec<String> { created.iter().map(|n| f(n)).collect() };
    let event_ids = ids(|n| n.event.id.to_string());
    let flows = ids(|n| n.run.flow_id.to_string());
    let received: Vec<i64> = created.iter().map(|n| n.event.received_at.0).collect();
    let events: Vec<Json<&crate::model::Event>> = created.iter().map(|n| Json(&n.event)).collect();
    let run_ids = ids(|n| n.run.id.to_string());
    let statuses = ids(|n| n.run.status.as_str().to_owned());
    let finals: Vec<bool> = created.iter().map(|n| n.run.status.is_final()).collect();
    let created_at: Vec<i64> = created.iter().map(|n| n.run.created_at.0).collect();
    let runs: Vec<Json<&crate::model::Run>> = created.iter().map(|n| Json(&n.run)).collect();
    let items = ItemColumns::of(created.iter().flat_map(|n| &n.items));
    let records: Vec<&crate::model::StepRecord> = created.iter().flat_map(|n| &n.records).collect();
    let record_runs: Vec<String> = records.iter().map(|r| r.run_id.to_string()).collect();
    let record_steps: Vec<&str> = records.iter().map(|r| r.step_id.as_str()).collect();
    let record_data: Vec<Json<&crate::model::StepRecord>> =
        records.iter().map(|r| Json(*r)).collect();
    let notices: Vec<String> = created
        .iter()
        .map(|n| {
            let notice = RunNotice::created(&n.run);
            format!("{}:{}", notice.run_id, notice.status.as_str())
        })
        .collect();
    sql::execute(
        client,
        "WITH events AS (
             INSERT INTO hookflow.events (id, flow_id, received_at, data)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::json[])
         ), runs AS (
             INSERT INTO hookflow.runs (id, flow_id, event_id, status, final, created_at, data)
             SELECT * FROM unnest($5::text[], $2::text[], $1::text[], $6::text[], $7::bool[],
                                  $8::int8[], $9::json[])
         ), items AS (
             INSERT INTO hookflow.queue (id, run_id, flow_id, due_at, data)
             SELECT * FROM unnest($10::text[], $11::text[], $12::text[], $13::int8[], $14::json[])
         ), records AS (
             INSERT INTO hookflow.step_records (run_id, step_id, data)
             SELECT * FROM unnest($17::text[], $18::text[], $19::json[])
         )
         SELECT pg_notify($15, p) FROM unnest($16::text[]) AS p",
        &[
            &event_ids,
            &flows,
            &received,
            &events,
            &run_ids,
            &statuses,
            &finals,
            &created_at,
            &runs,
            &items.ids,
            &items.runs,
            &items.flows,
            &items.due,
            &items.data,
            &RUN_CHANNEL,
            &payloads(&notices),
            &record_runs,
            &record_steps,
            &record_data,
        ],
        "insert events, runs and their first items",
    )
    .await?;
    Ok(())
}

/// Sends `notices` (`RUN:STATUS` each) on the runs channel when the transaction commits, as few
/// notifications as the payload limit allows.
pub(super) async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    notices: &[String],
) -> Result<()> {
    let payloads = payloads(notices);
    if payloads.is_empty() {
        return Ok(());
    }
    sql::execute(
        tx,
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
        &[&RUN_CHANNEL, &payloads],
        "notify the other nodes",
    )
    .await?;
    Ok(())
}

/// `notices` joined into as few notification payloads as the payload limit allows.
fn payloads(notices: &[String]) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for notice in notices {
        match payloads.last_mut() {
            Some(last) if last.len() + notice.len() < MAX_PAYLOAD => {
                last.push(',');
                last.push_str(notice);
            }
            _ => payloads.push(notice.clone()),
        }
    }
    payloads
}
