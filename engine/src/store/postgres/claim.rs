//! Claims on PostgreSQL: one statement finds the due items, shares them between flows, locks them
//! (skipping items another node is claiming), leases them and reads their runs.
//!
//! Invariants:
//! - An item is leased by one claim only: candidates are locked `FOR UPDATE SKIP LOCKED`, and the
//!   lease is written in the same statement.
//! - A flow's concurrency limit holds across nodes: a claim that concerns flows with a limit runs
//!   in a transaction that first takes an advisory lock per limited flow (in one order, so claims
//!   cannot deadlock), counts the flow's leased items, and claims at most the room left; the lock
//!   is held until the claim commits, so the next claimer counts its leases.
//! - Flows share a claim fairly: round after round, one item per flow (the flow whose oldest
//!   candidate is due first goes first in each round), oldest due first within a flow.

use std::collections::HashMap;

use super::{decode, parse_id, pool_error, sql, PgStore};
use crate::ids::FlowId;
use crate::model::QueueItem;
use crate::store::{ClaimRequest, Claimed, Lease, LeaseToken, Result};

/// `flows`: the flows with queued items, one probe of `queue_ready` each (a loose index scan), so
/// reading them costs the number of flows, not of items.
macro_rules! queued_flows {
    () => {
        "
    WITH RECURSIVE flows(flow_id) AS (
        (SELECT flow_id FROM hookflow.queue WHERE lease_owner IS NULL ORDER BY flow_id LIMIT 1)
        UNION ALL
        SELECT (SELECT q.flow_id FROM hookflow.queue q
                 WHERE q.lease_owner IS NULL AND q.flow_id > flows.flow_id
                 ORDER BY q.flow_id LIMIT 1)
          FROM flows WHERE flows.flow_id IS NOT NULL
    )"
    };
}

/// Leases up to `$2` items due at `$1` to `$3` until `$4`; a flow listed in `$5` takes at most its
/// room in `$6`, others at most `$2`. Answers the leased items, each with its run (the columns
/// [`PgStore::loaded`] reads, NULL if the run is gone). It runs on sessions that plan it once
/// (a custom plan took as long to make as to run), so the plan is generic and cannot know `$2`:
/// the leased rows are found by primary key from an array, which keeps the plan an index lookup
/// however large the queue (a join with `chosen` was planned as a scan of the whole queue), and
/// a flow's candidates are read through `queue_ready`, the only index of queued items.
const CLAIM: &str = concat!(
    queued_flows!(),
    ",
    room AS (
        SELECT f.flow_id, coalesce(l.room, $2) AS quota
          FROM flows f LEFT JOIN unnest($5::text[], $6::int8[]) AS l(flow_id, room)
            ON l.flow_id = f.flow_id
         WHERE f.flow_id IS NOT NULL
    ),
    candidates AS (
        SELECT c.id, c.flow_id, c.due_at
          FROM room r CROSS JOIN LATERAL (
            SELECT q.id, q.flow_id, q.due_at FROM hookflow.queue q
             WHERE q.flow_id = r.flow_id AND q.lease_owner IS NULL AND q.due_at <= $1
             ORDER BY q.flow_id, q.due_at, q.id
             LIMIT r.quota
             FOR UPDATE SKIP LOCKED
          ) c
    ),
    chosen AS (
        SELECT id FROM (
            SELECT id, flow_id, due_at,
                   row_number() OVER (PARTITION BY flow_id ORDER BY due_at, id) AS turn,
                   min(due_at) OVER (PARTITION BY flow_id) AS head
              FROM candidates
        ) ranked
         ORDER BY turn, head, flow_id, due_at, id
         LIMIT $2
    ),
    leased AS (
        UPDATE hookflow.queue q
           SET lease_owner = $3, lease_token = nextval('hookflow.lease_tokens'), lease_until = $4
         WHERE q.id = ANY(ARRAY(SELECT id FROM chosen))
        RETURNING q.id, q.run_id, q.data, q.lease_token
    )
    SELECT l.id, l.data, l.lease_token, r.data, r.xmin::text, e.data,
           (SELECT coalesce(json_agg(s.data), '[]') FROM hookflow.step_records s WHERE s.run_id = r.id)
      FROM leased l
      LEFT JOIN hookflow.runs r ON r.id = l.run_id
      LEFT JOIN hookflow.events e ON e.id = r.event_id"
);

/// The earliest due time of a queued item, or NULL: one probe of `queue_ready` per flow.
pub(super) const NEXT_DUE: &str = concat!(
    queued_flows!(),
    "
    SELECT min((SELECT q.due_at FROM hookflow.queue q
                 WHERE q.flow_id = f.flow_id AND q.lease_owner IS NULL
                 ORDER BY q.due_at LIMIT 1))
      FROM flows f WHERE f.flow_id IS NOT NULL"
);

/// Serialises claims of one limited flow until the claiming transaction ends.
const LOCK_FLOW: &str = "SELECT pg_advisory_xact_lock(hashtextextended('hookflow.flow/' || $1, 0))";

/// How many items of each listed flow are leased.
const COUNT_LEASED: &str = "
    SELECT flow_id, count(*) FROM hookflow.queue
     WHERE lease_owner IS NOT NULL AND flow_id = ANY($1)
     GROUP BY flow_id";

impl PgStore {
    /// See [`Store::claim_due`](crate::store::Store::claim_due).
    pub(super) async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = request.limit as i64;
        let (owner, now, until) = (request.owner.as_str(), request.now.0, request.until.0);
        let mut client = self.claims.get().await.map_err(pool_error)?;
        let rows = if request.concurrency.is_empty() {
            let none: (Vec<String>, Vec<i64>) = Default::default();
            sql::query(
                &client,
                CLAIM,
                &[&now, &limit, &owner, &until, &none.0, &none.1],
                "claim due items",
            )
            .await?
        } else {
            let mut limited: Vec<(&FlowId, usize)> = request
                .concurrency
                .iter()
                .map(|(flow, limit)| (flow, *limit))
                .collect();
            limited.sort();
            let names: Vec<String> = limited.iter().map(|(f, _)| f.to_string()).collect();
            let tx = client
                .transaction()
                .await
                .map_err(super::db_error("begin a claim"))?;
            for name in &names {
                sql::execute(&tx, LOCK_FLOW, &[name], "lock a flow's concurrency").await?;
            }
            let leased: HashMap<String, i64> =
                sql::query(&tx, COUNT_LEASED, &[&names], "count leased items")
                    .await?
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect();
            let rooms: Vec<i64> = limited
                .iter()
                .zip(&names)
                .map(|((_, max), name)| {
                    let held = leased.get(name).copied().unwrap_or(0);
                    (*max as i64 - held).clamp(0, limit)
                })
                .collect();
            let rows = sql::query(
                &tx,
                CLAIM,
                &[&now, &limit, &owner, &until, &names, &rooms],
                "claim due items",
            )
            .await?;
            tx.commit()
                .await
                .map_err(super::db_error("commit a claim"))?;
            rows
        };
        let mut claimed = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in &rows {
            let id: &str = row.get(0);
            match decode::<QueueItem>(row, 1, "queue") {
                Ok(item) => claimed.push(Claimed {
                    lease: Lease {
                        item: item.id,
                        owner: request.owner.clone(),
                        token: LeaseToken(row.get::<_, i64>(2) as u64),
                        until: request.until,
                    },
                    // A run gone or unreadable is read again (and reported) by `load_run`.
                    run: self.loaded(row, 3).ok(),
                    item,
                }),
                Err(e) => {
                    tracing::error!(item = id, error = %e, "a queue item cannot be read: parked in the quarantine");
                    unreadable.push(parse_id(id, "queue")?);
                }
            }
        }
        self.queue_changes.changed(rows.len());
        self.park(&unreadable).await?;
        claimed.sort_by_key(|c| (c.item.due_at, c.item.id));
        Ok(claimed)
    }
}
