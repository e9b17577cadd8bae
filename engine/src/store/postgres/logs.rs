//! The PostgreSQL backend's logs (see `store/logs.rs`): one row per entry in `hookflow.logs`,
//! keyed by log name (`audit`, `hooks:FLOW`) and entry id, written through the durable pool so an
//! entry is on disk when `append_log` returns. Every node reads every node's entries.

use tokio_postgres::types::Json;

use super::{db_error, decode, sql, PgStore};
use crate::model::Timestamp;
use crate::store::{LogEntry, LogName, LogPage, LogQuery, PruneLogs, Result};

impl PgStore {
    /// Appends entries in one transaction.
    pub(super) async fn append_entries(&self, log: &LogName, entries: &[LogEntry]) -> Result<()> {
        let mut client = self.durable().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin a log append"))?;
        let (name, kind) = (log.to_string(), log.kind().as_str());
        for entry in entries {
            sql::execute(
                &tx,
                "INSERT INTO hookflow.logs (log, kind, id, at, action, data)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &name,
                    &kind,
                    &entry.id.to_string(),
                    &entry.at.0,
                    &entry.action,
                    &Json(entry),
                ],
                "append to a log",
            )
            .await?;
        }
        tx.commit().await.map_err(db_error("commit a log append"))
    }

    /// A log's entries, newest first.
    pub(super) async fn read_entries(&self, log: &LogName, query: &LogQuery) -> Result<LogPage> {
        let limit = query.capped_limit();
        let rows = sql::query(
            &self.lazy().await?,
            "SELECT data FROM hookflow.logs
              WHERE log = $1 AND ($2::text IS NULL OR id < $2) AND at >= $3
                AND ($4::text IS NULL OR action = $4)
              ORDER BY id DESC LIMIT $5",
            &[
                &log.to_string(),
                &query.before.map(|b| b.to_string()),
                &query.since.unwrap_or(Timestamp(i64::MIN)).0,
                &query.action,
                &(limit as i64),
            ],
            "read a log",
        )
        .await?;
        let entries = rows
            .iter()
            .map(|row| decode(row, 0, "logs"))
            .collect::<Result<Vec<LogEntry>>>()?;
        Ok(LogPage::of(entries, limit))
    }

    /// Deletes what `prune` says, oldest first.
    pub(super) async fn prune_entries(&self, prune: &PruneLogs) -> Result<usize> {
        let n = sql::execute(
            &self.lazy().await?,
            "DELETE FROM hookflow.logs WHERE (log, id) IN (
                 SELECT log, id FROM (
                     SELECT log, id, at,
                            row_number() OVER (PARTITION BY log ORDER BY id DESC) AS newer
                       FROM hookflow.logs WHERE kind = $1) ranked
                  WHERE at < $2 OR newer > $3
                  ORDER BY id LIMIT $4)",
            &[
                &prune.kind.as_str(),
                &prune.older_than.0,
                &(prune.keep as i64),
                &(prune.max as i64),
            ],
            "prune logs",
        )
        .await?;
        Ok(n as usize)
    }
}
