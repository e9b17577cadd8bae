//! Parked queue items: the PostgreSQL backend's quarantine. A queue item whose record this version
//! cannot decode (written by a newer version, or damaged) is leased to [`QUARANTINE_OWNER`] for
//! ever instead of being claimed again and again or skipped; it is listed as a quarantine entry
//! and put back in the queue once it reads.
//!
//! Invariants: a parked row is never deleted nor taken over by `requeue_expired`; only
//! [`PgStore::unpark`] gives it back to the queue, and only once it decodes.

use super::{sql, PgStore, QUARANTINE_OWNER};
use crate::ids::ItemId;
use crate::model::{QueueItem, Timestamp};
use crate::store::{Ingested, QuarantineKind, Quarantined, Reingested, Result, Store, StoreError};

impl PgStore {
    /// Parks items whose record cannot be read (see [`QUARANTINE_OWNER`]).
    pub(super) async fn park(&self, ids: &[ItemId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = ids.iter().map(ItemId::to_string).collect();
        sql::execute(
            &self.durable().await?,
            "UPDATE hookflow.queue SET lease_owner = $1, lease_token = 0, lease_until = $2,
                    parked_at = $4
              WHERE id = ANY($3)",
            &[&QUARANTINE_OWNER, &i64::MAX, &ids, &Timestamp::now().0],
            "park unreadable queue items",
        )
        .await?;
        Ok(())
    }

    /// The parked items, as quarantine entries (see [`Store::quarantined`](crate::store::Store::quarantined)).
    pub(super) async fn parked(&self) -> Result<Vec<Quarantined>> {
        let rows = sql::query(
            &self.lazy().await?,
            "SELECT id, data::text, parked_at FROM hookflow.queue
              WHERE lease_owner = $1 ORDER BY id",
            &[&QUARANTINE_OWNER],
            "list parked queue items",
        )
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let (id, data): (String, String) = (row.get(0), row.get(1));
                let reason = match serde_json::from_str::<QueueItem>(&data) {
                    Err(e) => e.to_string(),
                    Ok(_) => "readable by this version: ingest it again".to_owned(),
                };
                Quarantined {
                    quarantined_at: Timestamp(row.get::<_, Option<i64>>(2).unwrap_or_default()),
                    id,
                    segment: "hookflow.queue".into(),
                    offset: 0,
                    record: 0,
                    records: 1,
                    kind: QuarantineKind::Undecodable,
                    reason,
                    bytes: data.len() as u64,
                    kept: Default::default(),
                }
            })
            .collect())
    }

    /// Puts a parked item back in the queue once its record reads (see
    /// [`Store::reingest_quarantined`](crate::store::Store::reingest_quarantined)).
    pub(super) async fn unpark(&self, id: &str) -> Result<Reingested> {
        let client = self.durable().await?;
        let data: String = sql::query_opt(
            &client,
            "SELECT data::text FROM hookflow.queue WHERE id = $1 AND lease_owner = $2",
            &[&id, &QUARANTINE_OWNER],
            "read a parked queue item",
        )
        .await?
        .ok_or_else(|| StoreError::NotQuarantined(id.to_owned()))?
        .get(0);
        let item: QueueItem =
            serde_json::from_str(&data).map_err(|e| StoreError::StillUnreadable {
                id: id.to_owned(),
                detail: format!("{e} (the record is row `{id}` of hookflow.queue)"),
            })?;
        let event_id = self
            .run(item.run_id)
            .await?
            .map(|run| run.event_id)
            .ok_or_else(|| StoreError::NotFound(format!("run {}", item.run_id)))?;
        sql::execute(
            &client,
            "UPDATE hookflow.queue SET lease_owner = NULL, lease_token = NULL, lease_until = NULL
              WHERE id = $1 AND lease_owner = $2",
            &[&id, &QUARANTINE_OWNER],
            "put a parked item back in the queue",
        )
        .await?;
        Ok(Reingested {
            run_id: item.run_id,
            event_id,
            outcome: Ingested::Created,
        })
    }
}
