//! The PostgreSQL backend: several hookflow nodes sharing one database.
//!
//! # Where things are
//! Every table is in the `hookflow` schema (see `migrations/`); records are kept whole as `json`
//! beside the columns queries select on. A queue item is one row of `hookflow.queue`: **queued**
//! (no lease) or **leased** (owner node, fencing token from a sequence, expiry), or parked (see
//! `parked.rs`). A run is one row of `hookflow.runs`, committed with its event and first items
//! (and the records of a pure first step executed before ingest) in one transaction, or not at
//! all. There is no other place a run or item can be: what a node holds in memory is only what it
//! is executing. A run that waits (a `delay`, a retry's backoff, a `wait_for_callback` step) is
//! such a run with its item queued for later; a callback to a resume URL is an `update_run`
//! without a lease, under the run's row lock like any other.
//!
//! # How each promise of the contract is kept
//! - *Ingest is durable before the 2xx*: `ingest.rs` batches concurrent events into one
//!   transaction with a synchronous COMMIT (it writes through the durable pool, whose sessions
//!   run with `synchronous_commit = on`).
//! - *Claims*: see `claim.rs` (one statement; `FOR UPDATE SKIP LOCKED`; advisory locks for
//!   flows with a concurrency limit).
//! - *Commits check the lease*: `update_run` deletes the finished item only where owner and token
//!   still match, in the same transaction as the run's update; no match is `LeaseLost` and
//!   nothing written. The executing workers' updates are usually written several to a statement
//!   (`runs.rs`, `finish.rs`). `requeue_expired` clears leases whose expiry passed, so a later
//!   commit by their old holder finds no match.
//! - *When effects may start*: claims, renewals and `update_run` go through the **lazy** pool
//!   (claims through a pool of their own, lazy too: see `Session::Claims`), whose sessions
//!   commit with `synchronous_commit = off` (no wait for the disk); `flush` commits
//!   a write (this node's heartbeat row) through the **durable** pool, whose sessions commit
//!   synchronously: that flushes the write-ahead log up to it, and so every commit any node made
//!   before it. Everything the contract says is durable when it returns (ingest, hook tokens,
//!   revisions, state, pacing waits, schedule ticks) goes through the durable pool. A claim lost
//!   in a database crash is like an expired lease: its holder's commit is refused.
//! - *Storage between runs*: one row per key, changed under a per-key advisory lock (see
//!   `storage.rs`).
//! - *Coordination*: lanes and pacing accounts are rows holding the same state `coordination.rs`
//!   keeps in memory, changed under a row lock; schedule ticks are a conditional upsert.
//! - *Claims stay cheap*: each node vacuums the queue table once enough of it changed
//!   (`tidy.rs`), so claims do not step over the index entries of items already done.
//! - *Notices*: NOTIFY in the writing transaction, LISTEN on one connection per node
//!   (`listen.rs`).
//! - *Logs* (the audit record, hook logs): rows of `hookflow.logs`, appended through the durable
//!   pool (`logs.rs`).
//! - *Quarantine*: a queue item whose record this version cannot decode is parked (leased to
//!   [`QUARANTINE_OWNER`] for ever), never deleted, and listed by `quarantined`; once readable
//!   (after an upgrade) `reingest_quarantined` puts it back in the queue.
//!
//! # Lock order
//! No two transactions can wait on each other:
//! - A claim takes the advisory lock of each limited flow it concerns (sorted by flow id), then
//!   locks queue items with `SKIP LOCKED`, so it never waits on a row.
//! - `update_run` locks the run's row first, then deletes its own leased item (which only the
//!   lease holder deletes), then writes the run's other rows (see `runs.rs`).
//! - `requeue_expired` locks queue rows only.
//! - Ingest takes dedupe keys in (flow, key) order before inserting anything.
//! - Coordination rows are locked one at a time, each in a transaction of its own; so is a
//!   storage key's advisory lock (two-key form, apart from the claims' single-key locks).
//!
//! # Client
//! tokio-postgres, pooled by deadpool-postgres, TLS by tokio-postgres-rustls: it sends several
//! statements over one connection without waiting for each answer (a run's update, an ingest
//! batch: one round trip), prepares each statement once per connection, and listens for
//! notifications on an ordinary connection, all without a database at build time. sqlx checks its
//! queries against a database (or saved query data) when built, and offers no such pipelining.
//!
//! Errors: a failed connection or statement is [`StoreError::Unavailable`] (the pool reconnects
//! by itself); a deadlock or serialisation failure is [`StoreError::Conflict`].

mod batch;
mod claim;
mod finish;
mod ingest;
mod listen;
mod logs;
mod parked;
mod rows;
mod runs;
pub mod schema;
mod sql;
mod storage;
mod tidy;

#[cfg(test)]
mod suite;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::de::DeserializeOwned;
use tokio_postgres::types::Json;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::coordination::{Allowance, LaneEntry, LaneKey};
use super::{
    ClaimRequest, Claimed, Committed, Decide, Entry, Ingested, Lease, LeaseToken, LoadedRun,
    LogEntry, LogName, LogPage, LogQuery, Namespace, NewRun, NodeId, Notices, PruneLogs,
    Quarantined, Reingested, Result, RunNotice, RunPage, RunQuery, StorageAnswer, StorageCall,
    StorageKey, Store, StoreError, StoreStats,
};
use crate::ids::{EventId, FlowId, ItemId, RunId};
use crate::model::{Event, QueueItem, Revision, Run, StepRecord, Timestamp};

pub use self::schema::SchemaError;

/// Sessions a node keeps for claims: its dispatcher claims one batch at a time.
const CLAIM_SESSIONS: usize = 2;

/// The NOTIFY channel of run notices.
const RUN_CHANNEL: &str = "hookflow_runs";

/// The owner of parked (quarantined) queue items: no node has this name (node ids cannot start
/// with `~`).
pub const QUARANTINE_OWNER: &str = "~quarantine";

/// How a PostgreSQL store is opened.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The connection URL (`postgres://user:password@host:port/database`).
    pub url: String,
    /// The password, when it is kept apart from the URL (a secrets file).
    pub password: Option<String>,
    /// Connections in this node's pool.
    pub pool_size: usize,
    /// Concurrent batch writers of ingests.
    pub writers: usize,
}

impl PgOptions {
    /// Options for `url` with default sizes.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            pool_size: 24,
            writers: 4,
        }
    }

    /// The parsed connection settings, with the password applied and every session's commits
    /// synchronous (so a commit that returned is durable).
    pub fn config(&self) -> std::result::Result<tokio_postgres::Config, StoreError> {
        self.config_for(Session::Durable)
    }

    /// The connection settings of a kind of session.
    fn config_for(
        &self,
        session: Session,
    ) -> std::result::Result<tokio_postgres::Config, StoreError> {
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| StoreError::unavailable("read the PostgreSQL URL", e))?;
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
            .options(session.settings())
            .application_name("hookflow")
            .connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(30));
        Ok(config)
    }

    /// One connection of its own (not pooled), driven by a task of its own until dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .config()?
            .connect(tls()?)
            .await
            .map_err(|e| StoreError::unavailable("connect to PostgreSQL", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// The kinds of session a node opens, by the settings they run with.
#[derive(Debug, Clone, Copy)]
enum Session {
    /// A commit is durable when it returns.
    Durable,
    /// A commit becomes durable at the next durable commit (see the module docs).
    Lazy,
    /// Lazy, and each prepared statement planned once: the claim's custom plans cost as much
    /// to make as to run, and its generic plan reads `queue_ready` as they do (see `claim.rs`).
    Claims,
}

impl Session {
    /// The session's settings, as the `options` connection parameter. JIT compilation never
    /// pays for hookflow's short statements (a claim over a large backlog was estimated costly
    /// enough to be compiled at every execution).
    fn settings(self) -> &'static str {
        match self {
            Session::Durable => "-c synchronous_commit=on -c jit=off",
            Session::Lazy => "-c synchronous_commit=off -c jit=off",
            Session::Claims => {
                "-c synchronous_commit=off -c jit=off -c plan_cache_mode=force_generic_plan"
            }
        }
    }
}

/// The PostgreSQL store. See the module docs.
pub struct PgStore {
    /// Sessions whose commits are durable when they return.
    pool: Pool,
    /// Sessions whose commits become durable at the next durable commit (see the module docs).
    lazy: Pool,
    /// Lazy sessions for claims (see [`Session::Claims`]).
    claims: Pool,
    node: NodeId,
    writer: ingest::Writer,
    notices: Notices,
    listener: tokio::task::JoinHandle<()>,
    tidier: tokio::task::JoinHandle<()>,
    queue_changes: Arc<tidy::QueueChanges>,
    syncs: Arc<AtomicU64>,
    tokens: std::sync::Mutex<std::collections::HashMap<FlowId, String>>,
    versions: runs::Versions,
    finisher: finish::Finisher,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.tidier.abort();
    }
}

impl PgStore {
    /// Connects as `node`, migrates the schema to this version (refusing a newer one), and starts
    /// the ingest writers and the notice listener. Needs a tokio runtime.
    pub async fn open(options: &PgOptions, node: &NodeId) -> Result<Self> {
        let config = options.config()?;
        let mut client = options.connect().await?;
        schema::migrate(&mut client)
            .await
            .map_err(|e| StoreError::unavailable("prepare the hookflow schema", e))?;
        drop(client);

        let pool = build_pool(config.clone(), options.writers + 4)?;
        let lazy = build_pool(options.config_for(Session::Lazy)?, options.pool_size)?;
        let claims = build_pool(options.config_for(Session::Claims)?, CLAIM_SESSIONS)?;
        let syncs = Arc::new(AtomicU64::new(0));
        let notices = Notices::default();
        let queue_changes = Arc::new(tidy::QueueChanges::default());
        let store = Self {
            writer: ingest::Writer::start(pool.clone(), options.writers, syncs.clone()),
            finisher: finish::start(lazy.clone()),
            listener: tokio::spawn(listen::listen_forever(config, notices.clone())),
            tidier: tokio::spawn(tidy::tidy_forever(lazy.clone(), queue_changes.clone())),
            queue_changes,
            pool,
            lazy,
            claims,
            node: node.clone(),
            notices,
            syncs,
            tokens: Default::default(),
            versions: Default::default(),
        };
        store.heartbeat(true).await?;
        Ok(store)
    }
    /// Records this node as seen now (and as started now, at open), durably.
    async fn heartbeat(&self, starting: bool) -> Result<()> {
        let sql = if starting {
            "INSERT INTO hookflow.nodes (id, version, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,
                 started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at"
        } else {
            "INSERT INTO hookflow.nodes (id, version, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at"
        };
        let params: sql::Params = &[
            &self.node.as_str(),
            &env!("CARGO_PKG_VERSION"),
            &Timestamp::now().0,
        ];
        sql::execute(&self.durable().await?, sql, params, "record this node").await?;
        Ok(())
    }

    /// The hook tokens read so far (they never change once stored).
    fn tokens(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<FlowId, String>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session whose commits are durable when they return.
    async fn durable(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A session whose commits become durable at the next durable commit.
    async fn lazy(&self) -> Result<deadpool_postgres::Object> {
        self.lazy.get().await.map_err(pool_error)
    }

    /// Deletes up to `max` rows of `hookflow.{table}` (whose key columns are `key`) that expired
    /// at or before `now`, oldest first, skipping rows another transaction holds; how many.
    async fn delete_expired(
        &self,
        table: &str,
        key: &str,
        now: Timestamp,
        max: usize,
        context: &'static str,
    ) -> Result<usize> {
        let delete = format!(
            "DELETE FROM hookflow.{table} WHERE ({key}) IN (
                 SELECT {key} FROM hookflow.{table} WHERE expires_at <= $1
                  ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        );
        let n = sql::execute(
            &self.lazy().await?,
            &delete,
            &[&now.0, &(max as i64)],
            context,
        )
        .await?;
        Ok(n as usize)
    }

    /// The record in the first column of the row `select` finds by `key`, if any.
    async fn one<T: DeserializeOwned>(
        &self,
        select: &str,
        key: &str,
        table: &'static str,
    ) -> Result<Option<T>> {
        let row = sql::query_opt(&self.lazy().await?, select, &[&key], "read a record").await?;
        row.map(|row| decode(&row, 0, table)).transpose()
    }
}

/// How connections are encrypted: TLS when the server offers it (`sslmode=prefer`, the default)
/// or requires it (`?sslmode=require` in the URL), the server's certificate checked against the
/// system's trusted roots (`SSL_CERT_FILE` names others).
pub(super) fn tls() -> Result<MakeRustlsConnect> {
    let failed = |e: rustls::Error| StoreError::unavailable("set up TLS for PostgreSQL", e);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone()).map_err(failed)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// A pool of `size` connections with these settings.
fn build_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        tls()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(2))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::unavailable("build the PostgreSQL pool", e))
}

/// Maps a database error: collisions are conflicts (retry), everything else is unavailability.
pub(super) fn db_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(code)
                if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                StoreError::Conflict(format!("{context}: {e}"))
            }
            _ => StoreError::unavailable(context, e),
        }
    }
}

/// A connection could not be had from the pool.
pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable("connect to PostgreSQL", e)
}

/// An id read from a column.
pub(super) fn parse_id<T: FromStr>(text: &str, table: &'static str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| StoreError::Corrupt {
        tree: table,
        detail: format!("`{text}`: {e}"),
    })
}

/// A record decoded from a `json` column.
fn decode<T: DeserializeOwned>(row: &Row, column: usize, table: &'static str) -> Result<T> {
    row.try_get::<_, Json<T>>(column)
        .map(|Json(value)| value)
        .map_err(corrupt(table))
}

/// A record decoded from a `json` column that may be NULL.
fn decode_opt<T: DeserializeOwned>(
    row: &Row,
    column: usize,
    table: &'static str,
) -> Result<Option<T>> {
    row.try_get::<_, Option<Json<T>>>(column)
        .map(|value| value.map(|Json(value)| value))
        .map_err(corrupt(table))
}

/// A column of `table` that cannot be decoded.
fn corrupt(table: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        tree: table,
        detail: format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        ),
    }
}

/// Queue items as the columns of `hookflow.queue`, one array each (statement parameters).
struct ItemColumns<'a> {
    ids: Vec<String>,
    runs: Vec<String>,
    flows: Vec<String>,
    due: Vec<i64>,
    data: Vec<Json<&'a QueueItem>>,
}

impl<'a> ItemColumns<'a> {
    fn of(items: impl Iterator<Item = &'a QueueItem>) -> Self {
        let mut columns = Self {
            ids: Vec::new(),
            runs: Vec::new(),
            flows: Vec::new(),
            due: Vec::new(),
            data: Vec::new(),
        };
        for item in items {
            columns.ids.push(item.id.to_string());
            columns.runs.push(item.run_id.to_string());
            columns.flows.push(item.flow_id.to_string());
            columns.due.push(item.due_at.0);
            columns.data.push(Json(item));
        }
        columns
    }
}

/// Inserts queue items, leased to `lease` (owner, expiry) when given: the new leases.
pub(super) async fn insert_items(
    tx: &Transaction<'_>,
    items: &[&QueueItem],
    lease: Option<(&NodeId, Timestamp)>,
) -> Result<Vec<Lease>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ItemColumns {
        ids,
        runs,
        flows,
        due,
        data,
    } = ItemColumns::of(items.iter().copied());
    let Some((owner, until)) = lease else {
        sql::execute(
            tx,
            "INSERT INTO hookflow.queue (id, run_id, flow_id, due_at, data)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::json[])",
            &[&ids, &runs, &flows, &due, &data],
            "queue items",
        )
        .await?;
        return Ok(Vec::new());
    };
    let rows = sql::query(
        tx,
        "INSERT INTO hookflow.queue (id, run_id, flow_id, due_at, data, lease_owner, lease_token, lease_until)
         SELECT i.*, $6, nextval('hookflow.lease_tokens'), $7
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::json[]) AS i
         RETURNING id, lease_token",
        &[&ids, &runs, &flows, &due, &data, &owner.as_str(), &until.0],
        "take items",
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Lease {
                item: parse_id(row.get::<_, &str>(0), "queue")?,
                owner: owner.clone(),
                token: LeaseToken(row.get::<_, i64>(1) as u64),
                until,
            })
        })
        .collect()
}

#[async_trait]
impl Store for PgStore {
    async fn ingest(&self, new: NewRun) -> Result<Ingested> {
        self.writer.ingest(new).await
    }

    /// The ingest statement writes step records as it writes queue items.
    fn takes_steps_at_ingest(&self) -> bool {
        true
    }

    async fn claim_due(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>> {
        self.claim(request).await
    }

    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        let renewed = sql::execute(
            &self.lazy().await?,
            "UPDATE hookflow.queue SET lease_until = $4
              WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
            &[
                &lease.item.to_string(),
                &lease.owner.as_str(),
                &(lease.token.0 as i64),
                &until.0,
            ],
            "renew a lease",
        )
        .await?;
        if renewed == 0 {
            return Err(StoreError::LeaseLost { item: lease.item });
        }
        Ok(Lease {
            until,
            ..lease.clone()
        })
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let row = sql::query_opt(
            &self.lazy().await?,
            claim::NEXT_DUE,
            &[],
            "read the next due time",
        )
        .await?;
        Ok(row
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(Timestamp))
    }

    async fn update_run(
        &self,
        run_id: RunId,
        done: Option<&Lease>,
        decide: Decide<'_>,
    ) -> Result<Option<Committed>> {
        self.update(run_id, done, decide).await
    }

    async fn requeue_expired(&self, now: Timestamp) -> Result<usize> {
        let n = sql::execute(
            &self.lazy().await?,
            "UPDATE hookflow.queue SET lease_owner = NULL, lease_token = NULL, lease_until = NULL
              WHERE lease_owner IS NOT NULL AND lease_owner <> $2 AND lease_until <= $1",
            &[&now.0, &QUARANTINE_OWNER],
            "requeue expired leases",
        )
        .await?;
        self.queue_changes.changed(n as usize);
        Ok(n as usize)
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        let id = id.to_string();
        self.one("SELECT data FROM hookflow.runs WHERE id = $1", &id, "runs")
            .await
    }

    async fn event(&self, id: EventId) -> Result<Option<Event>> {
        let id = id.to_string();
        self.one(
            "SELECT data FROM hookflow.events WHERE id = $1",
            &id,
            "events",
        )
        .await
    }

    async fn step_records(&self, run_id: RunId) -> Result<Vec<StepRecord>> {
        sql::query(
            &self.lazy().await?,
            "SELECT data FROM hookflow.step_records WHERE run_id = $1",
            &[&run_id.to_string()],
            "read step records",
        )
        .await?
        .iter()
        .map(|row| decode(row, 0, "step_records"))
        .collect()
    }

    async fn load_run(&self, id: RunId) -> Result<Option<LoadedRun>> {
        self.load(id).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage> {
        let limit = match query.limit {
            0 => 50,
            n => n.min(1000),
        };
        // Each filter is a condition on one parameter; absent ones are left out of the SQL, so
        // the planner sees only the indexes that matter.
        let flow = query.flow_id.as_ref().map(ToString::to_string);
        let status = query.status.map(|s| s.as_str());
        let before = query.before.map(|id| id.to_string());
        let (since, until) = (query.since.map(|t| t.0), query.until.map(|t| t.0));
        let filters: [(&str, Option<&(dyn ToSql + Sync)>); 5] = [
            ("flow_id = ", flow.as_ref().map(|v| v as _)),
            ("status = ", status.as_ref().map(|v| v as _)),
            ("id < ", before.as_ref().map(|v| v as _)),
            ("created_at >= ", since.as_ref().map(|v| v as _)),
            ("created_at < ", until.as_ref().map(|v| v as _)),
        ];
        let mut conditions = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (condition, value) in filters {
            if let Some(value) = value {
                params.push(value);
                conditions.push(format!("{condition}${}", params.len()));
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let select = format!(
            "SELECT data FROM hookflow.runs {filter} ORDER BY id DESC LIMIT {}",
            limit + 1
        );
        let rows = sql::query(&self.lazy().await?, &select, &params, "list runs").await?;
        let mut runs = rows
            .iter()
            .map(|row| decode::<Run>(row, 0, "runs"))
            .collect::<Result<Vec<_>>>()?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn hook_token(&self, flow_id: &FlowId, candidate: &str) -> Result<String> {
        // A stored token never changes: once read, it is answered from memory (every catch-hook
        // request asks).
        if let Some(token) = self.tokens().get(flow_id) {
            return Ok(token.clone());
        }
        let client = self.durable().await?;
        let flow = flow_id.to_string();
        sql::execute(
            &client,
            "INSERT INTO hookflow.hook_tokens (flow_id, token) VALUES ($1, $2)
             ON CONFLICT (flow_id) DO NOTHING",
            &[&flow, &candidate],
            "store a hook token",
        )
        .await?;
        let token: String = sql::query_opt(
            &client,
            "SELECT token FROM hookflow.hook_tokens WHERE flow_id = $1",
            &[&flow],
            "read a hook token",
        )
        .await?
        .ok_or_else(|| StoreError::unavailable_because("read a hook token: it vanished"))?
        .get(0);
        self.tokens().insert(flow_id.clone(), token.clone());
        Ok(token)
    }

    async fn put_revision(
        &self,
        flow_id: &FlowId,
        revision: &Revision,
        source: &str,
    ) -> Result<()> {
        sql::execute(
            &self.durable().await?,
            "INSERT INTO hookflow.revisions (flow_id, revision, source) VALUES ($1, $2, $3)
             ON CONFLICT (flow_id, revision) DO NOTHING",
            &[&flow_id.to_string(), &revision.0, &source],
            "keep a flow revision",
        )
        .await?;
        Ok(())
    }

    async fn revision(&self, flow_id: &FlowId, revision: &Revision) -> Result<Option<String>> {
        let row = sql::query_opt(
            &self.lazy().await?,
            "SELECT source FROM hookflow.revisions WHERE flow_id = $1 AND revision = $2",
            &[&flow_id.to_string(), &revision.0],
            "read a flow revision",
        )
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn flows_with_runs(&self) -> Result<Vec<FlowId>> {
        // A loose index scan: one probe of `runs_by_flow` per flow, however many runs.
        sql::query(
            &self.lazy().await?,
            "WITH RECURSIVE flows(flow_id) AS (
                 (SELECT flow_id FROM hookflow.runs ORDER BY flow_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT r.flow_id FROM hookflow.runs r WHERE r.flow_id > flows.flow_id
                          ORDER BY r.flow_id LIMIT 1)
                   FROM flows WHERE flows.flow_id IS NOT NULL
             )
             SELECT flow_id FROM flows WHERE flow_id IS NOT NULL",
            &[],
            "list flows with runs",
        )
        .await?
        .iter()
        .map(|row| parse_id(row.get::<_, &str>(0), "runs"))
        .collect()
    }

    async fn prune_runs(
        &self,
        flow_id: &FlowId,
        older_than: Timestamp,
        keep: usize,
        max: usize,
    ) -> Result<usize> {
        let mut client = self.lazy().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin pruning"))?;
        let pruned = sql::query(
            &tx,
            "DELETE FROM hookflow.runs WHERE id IN (
                 SELECT id FROM hookflow.runs
                  WHERE flow_id = $1 AND final
                    AND (created_at < $2 OR id <= (SELECT id FROM hookflow.runs
                                                    WHERE flow_id = $1
                                                    ORDER BY id DESC OFFSET $3 LIMIT 1))
                  ORDER BY id LIMIT $4
                  FOR UPDATE SKIP LOCKED)
             RETURNING id, event_id",
            &[
                &flow_id.to_string(),
                &older_than.0,
                &(keep as i64),
                &(max as i64),
            ],
            "prune runs",
        )
        .await?;
        let runs: Vec<String> = pruned.iter().map(|r| r.get(0)).collect();
        let events: Vec<String> = pruned.iter().map(|r| r.get(1)).collect();
        sql::execute(
            &tx,
            "DELETE FROM hookflow.step_records WHERE run_id = ANY($1)",
            &[&runs],
            "prune step records",
        )
        .await?;
        sql::execute(
            &tx,
            "DELETE FROM hookflow.events WHERE id = ANY($1)",
            &[&events],
            "prune events",
        )
        .await?;
        tx.commit().await.map_err(db_error("commit pruning"))?;
        Ok(runs.len())
    }

    async fn expire_dedupe(&self, now: Timestamp, max: usize) -> Result<usize> {
        self.delete_expired("dedupe", "flow_id, key", now, max, "expire dedupe keys")
            .await
    }

    async fn put_state(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        sql::execute(
            &self.durable().await?,
            "INSERT INTO hookflow.state (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&key, &Json(value)],
            "store state",
        )
        .await?;
        Ok(())
    }

    async fn state(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.one(
            "SELECT value FROM hookflow.state WHERE key = $1",
            key,
            "state",
        )
        .await
    }

    async fn init_state(&self, key: &str, value: &serde_json::Value) -> Result<serde_json::Value> {
        let client = self.durable().await?;
        sql::execute(
            &client,
            "INSERT INTO hookflow.state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &Json(value)],
            "store state",
        )
        .await?;
        // A statement of its own: it sees a row a concurrent caller committed first.
        let row = sql::query_opt(
            &client,
            "SELECT value FROM hookflow.state WHERE key = $1",
            &[&key],
            "read a record",
        )
        .await?
        .ok_or_else(|| {
            StoreError::unavailable_because(format!("state {key}: stored, then not found"))
        })?;
        decode(&row, 0, "state")
    }

    async fn stats(&self) -> Result<StoreStats> {
        let row = sql::query_opt(
            &self.lazy().await?,
            "SELECT count(*) FILTER (WHERE lease_owner IS DISTINCT FROM $1),
                    count(*) FILTER (WHERE lease_owner = $1),
                    pg_database_size(current_database())
               FROM hookflow.queue",
            &[&QUARANTINE_OWNER],
            "count the queue",
        )
        .await?
        .ok_or_else(|| StoreError::unavailable_because("count the queue: no row answered"))?;
        Ok(StoreStats {
            queued: row.get::<_, i64>(0) as u64,
            quarantined: row.get::<_, i64>(1) as u64,
            bytes: row.get::<_, i64>(2) as u64,
            ingest_syncs: self.syncs.load(Ordering::Relaxed),
            queue_vacuums: self.queue_changes.vacuums(),
        })
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<RunNotice> {
        self.notices.subscribe()
    }

    async fn flush(&self) -> Result<()> {
        // A synchronous commit of a write flushes the log up to it: every earlier commit too.
        self.heartbeat(false).await
    }

    async fn enter_lane(
        &self,
        lane: &LaneKey,
        concurrency: usize,
        holder: (ItemId, RunId),
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<LaneEntry> {
        self.with_lane(lane, |state| state.enter(concurrency, holder, now, expires))
            .await
    }

    async fn leave_lane(&self, lane: &LaneKey, holder: ItemId, free_at: Timestamp) -> Result<()> {
        self.with_lane(lane, |state| state.leave(holder, free_at))
            .await
    }

    async fn pace_admit(
        &self,
        account: &str,
        now: Timestamp,
    ) -> Result<std::result::Result<(), Timestamp>> {
        let admitted = self
            .with_row(
                false,
                "pacing",
                "SELECT state FROM hookflow.pacing WHERE account = $1 FOR UPDATE",
                "UPDATE hookflow.pacing SET state = $2 WHERE account = $1",
                &[&account],
                |state: &mut Option<Allowance>| state.as_mut().map(|a| a.admit(now)),
            )
            .await?;
        // An account never observed has no row: always admitted.
        Ok(admitted.unwrap_or(Ok(())))
    }

    async fn pace_observe(
        &self,
        account: &str,
        limit: Option<(u32, Duration)>,
        blocked_until: Option<Timestamp>,
    ) -> Result<()> {
        sql::execute(
            &self.durable().await?,
            "INSERT INTO hookflow.pacing (account, state) VALUES ($1, '{}') ON CONFLICT DO NOTHING",
            &[&account],
            "record an account's pacing",
        )
        .await?;
        self.with_row(
            true,
            "pacing",
            "SELECT state FROM hookflow.pacing WHERE account = $1 FOR UPDATE",
            "UPDATE hookflow.pacing SET state = $2 WHERE account = $1",
            &[&account],
            |state: &mut Option<Allowance>| {
                state
                    .get_or_insert_with(Allowance::default)
                    .observe(limit, blocked_until)
            },
        )
        .await?;
        Ok(())
    }

    async fn claim_tick(&self, flow: &FlowId, tick: Timestamp) -> Result<bool> {
        let claimed = sql::execute(
            &self.durable().await?,
            "INSERT INTO hookflow.ticks AS t (flow_id, last_tick) VALUES ($1, $2)
             ON CONFLICT (flow_id) DO UPDATE SET last_tick = EXCLUDED.last_tick
              WHERE t.last_tick < EXCLUDED.last_tick",
            &[&flow.to_string(), &tick.0],
            "claim a schedule tick",
        )
        .await?;
        Ok(claimed == 1)
    }

    async fn last_tick(&self, flow: &FlowId) -> Result<Option<Timestamp>> {
        let row = sql::query_opt(
            &self.lazy().await?,
            "SELECT last_tick FROM hookflow.ticks WHERE flow_id = $1",
            &[&flow.to_string()],
            "read a schedule's last tick",
        )
        .await?;
        Ok(row.map(|r| Timestamp(r.get(0))))
    }

    async fn quarantined(&self) -> Result<Vec<Quarantined>> {
        self.parked().await
    }

    async fn append_log(&self, log: &LogName, entries: &[LogEntry]) -> Result<()> {
        self.append_entries(log, entries).await
    }

    async fn read_log(&self, log: &LogName, query: &LogQuery) -> Result<LogPage> {
        self.read_entries(log, query).await
    }

    async fn prune_logs(&self, prune: &PruneLogs) -> Result<usize> {
        self.prune_entries(prune).await
    }

    async fn reingest_quarantined(&self, id: &str) -> Result<Reingested> {
        self.unpark(id).await
    }

    async fn storage(&self, call: StorageCall<'_>) -> Result<StorageAnswer> {
        self.storage_op(call).await
    }

    async fn storage_namespaces(&self, now: Timestamp) -> Result<Vec<(Namespace, u64)>> {
        self.storage_namespace_counts(now).await
    }

    async fn storage_entries(
        &self,
        namespace: &Namespace,
        after: Option<&StorageKey>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Entry)>> {
        self.storage_page(namespace, after, limit, now).await
    }

    async fn expire_storage(&self, now: Timestamp, max: usize) -> Result<usize> {
        let entries = self
            .delete_expired(
                "storage",
                "namespace, key",
                now,
                max,
                "expire storage entries",
            )
            .await?;
        let answers = self
            .delete_expired(
                "storage_applied",
                "op_key",
                now,
                max,
                "forget storage answers",
            )
            .await?;
        Ok(entries + answers)
    }
}
