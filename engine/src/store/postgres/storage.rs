//! Storage between runs in PostgreSQL: one row of `hookflow.storage` per key (migration
//! `0002_storage.sql`).
//!
//! An operation is one transaction that first takes a transaction-scoped advisory lock on its
//! (namespace, key) — two-key form, class [`LOCK_CLASS`], so it never meets the single-key locks
//! of claims and migrations — then reads the row, applies [`apply`] and upserts or deletes it.
//! The lock serialises every writer of a key across nodes, including when the row does not exist
//! yet (a row lock could not), so concurrent increments and appends lose nothing; a write with an
//! operation key also reads and records its answer in `hookflow.storage_applied` under it. It then locks
//! only its own row (`FOR UPDATE`, which the expiry sweep's `SKIP LOCKED` passes over), so it
//! cannot deadlock. Writes go through the lazy pool, like run updates: durable at the next
//! [`Store::flush`](crate::store::Store::flush).

use tokio_postgres::types::Json;

use super::{db_error, decode, sql, PgStore};
use crate::model::Timestamp;
use crate::store::storage::{
    apply, Entry, Namespace, StorageAnswer, StorageCall, StorageError, StorageKey, APPLIED_KEPT,
};
use crate::store::{Result, StoreError};

/// The first key of the advisory locks on storage keys ("stor" in ASCII).
const LOCK_CLASS: i32 = 0x7374_6f72;

/// An entry from a row's `value`, `expires_at`, `updated_at` columns (from `first` on).
fn entry(row: &tokio_postgres::Row, first: usize) -> Result<Entry> {
    Ok(Entry {
        value: decode(row, first, "storage")?,
        expires_at: row.get::<_, Option<i64>>(first + 1).map(Timestamp),
        updated_at: Timestamp(row.get(first + 2)),
    })
}

/// A column read back as a name.
fn name<T>(text: &str, parse: fn(&str) -> std::result::Result<T, StorageError>) -> Result<T> {
    parse(text).map_err(|e| StoreError::Corrupt {
        tree: "storage",
        detail: e.to_string(),
    })
}

impl PgStore {
    pub(super) async fn storage_op(&self, call: StorageCall<'_>) -> Result<StorageAnswer> {
        let StorageCall {
            namespace,
            key,
            op,
            once,
            now,
        } = call;
        let (ns, k) = (namespace.as_str(), key.as_str());
        let select = "SELECT value, expires_at, updated_at FROM hookflow.storage
                       WHERE namespace = $1 AND key = $2";
        if !op.writes() {
            let row =
                sql::query_opt(&self.lazy().await?, select, &[&ns, &k], "read storage").await?;
            let stored = row.map(|row| entry(&row, 0)).transpose()?;
            return Ok(apply(key, stored, op, now));
        }
        let mut client = self.lazy().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin a storage change"))?;
        sql::execute(
            &tx,
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(1) || $3))",
            &[&LOCK_CLASS, &ns, &k],
            "lock a storage key",
        )
        .await?;
        // A repeat of an operation key is on the same key, so the lock above orders it too.
        if let Some(once) = once {
            let recorded = sql::query_opt(
                &tx,
                "SELECT answer FROM hookflow.storage_applied WHERE op_key = $1",
                &[&once],
                "read a storage answer",
            )
            .await?;
            if let Some(row) = recorded {
                return Ok(Ok(decode(&row, 0, "storage_applied")?));
            }
        }
        // The row lock keeps the sweeper (`SKIP LOCKED`) off an entry being changed.
        let locked = format!("{select} FOR UPDATE");
        let row = sql::query_opt(&tx, &locked, &[&ns, &k], "read storage").await?;
        let stored = row.map(|row| entry(&row, 0)).transpose()?;
        let applied = match apply(key, stored, op, now) {
            Ok(applied) => applied,
            Err(refused) => return Ok(Err(refused)),
        };
        match &applied.after {
            Some(after) => {
                sql::execute(
                    &tx,
                    "INSERT INTO hookflow.storage (namespace, key, value, expires_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value,
                         expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at",
                    &[
                        &ns,
                        &k,
                        &Json(&after.value),
                        &after.expires_at.map(|t| t.0),
                        &after.updated_at.0,
                    ],
                    "write storage",
                )
                .await?;
            }
            None => {
                sql::execute(
                    &tx,
                    "DELETE FROM hookflow.storage WHERE namespace = $1 AND key = $2",
                    &[&ns, &k],
                    "delete storage",
                )
                .await?;
            }
        }
        if let Some(once) = once {
            sql::execute(
                &tx,
                "INSERT INTO hookflow.storage_applied (op_key, answer, expires_at)
                 VALUES ($1, $2, $3)",
                &[&once, &Json(&applied), &now.plus(APPLIED_KEPT).0],
                "record a storage answer",
            )
            .await?;
        }
        tx.commit()
            .await
            .map_err(db_error("commit a storage change"))?;
        Ok(Ok(applied))
    }

    pub(super) async fn storage_namespace_counts(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(Namespace, u64)>> {
        let rows = sql::query(
            &self.lazy().await?,
            "SELECT namespace, count(*) FROM hookflow.storage
              WHERE expires_at IS NULL OR expires_at > $1
              GROUP BY namespace ORDER BY namespace",
            &[&now.0],
            "list storage namespaces",
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    name(row.get(0), Namespace::new)?,
                    row.get::<_, i64>(1) as u64,
                ))
            })
            .collect()
    }

    pub(super) async fn storage_page(
        &self,
        namespace: &Namespace,
        after: Option<&StorageKey>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Entry)>> {
        let rows = sql::query(
            &self.lazy().await?,
            "SELECT key, value, expires_at, updated_at FROM hookflow.storage
              WHERE namespace = $1 AND ($2::text IS NULL OR key > $2)
                AND (expires_at IS NULL OR expires_at > $3)
              ORDER BY key LIMIT $4",
            &[
                &namespace.as_str(),
                &after.map(StorageKey::as_str),
                &now.0,
                &(limit as i64),
            ],
            "list storage entries",
        )
        .await?;
        rows.iter()
            .map(|row| Ok((name(row.get(0), StorageKey::new)?, entry(row, 1)?)))
            .collect()
    }
}
