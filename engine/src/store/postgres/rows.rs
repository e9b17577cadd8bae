//! Coordination rows: a lane of a named queue, or a paced connector account, is one row holding
//! the state `coordination.rs` keeps in memory for one process, read and written back under the
//! row's lock in one transaction, so every node applies the same rules atomically.

use deadpool_postgres::GenericClient;
use serde::de::DeserializeOwned;
use tokio_postgres::types::{Json, ToSql};

use super::{db_error, decode, sql, PgStore};
use crate::store::coordination::{Lane, LaneKey};
use crate::store::Result;

impl PgStore {
    /// Applies `change` to a lane's state under its row lock, creating the row first.
    pub(super) async fn with_lane<T>(
        &self,
        lane: &LaneKey,
        change: impl FnOnce(&mut Lane) -> T,
    ) -> Result<T> {
        sql::execute(
            &self.lazy().await?,
            "INSERT INTO hookflow.lanes (name, key, state) VALUES ($1, $2, '{}') ON CONFLICT DO NOTHING",
            &[&lane.name, &lane.key],
            "open a lane",
        )
        .await?;
        self.with_row(
            false,
            "lanes",
            "SELECT state FROM hookflow.lanes WHERE name = $1 AND key = $2 FOR UPDATE",
            "UPDATE hookflow.lanes SET state = $3 WHERE name = $1 AND key = $2",
            &[&lane.name, &lane.key],
            |state: &mut Option<Lane>| change(state.get_or_insert_with(Lane::default)),
        )
        .await
    }

    /// Reads the state in a row (`select`, locking it), applies `change`, and writes it back
    /// (`update`, with the state as the parameter after `keys`) in one transaction, committed
    /// durably if `durable`. The state is `None` when the row does not exist (then nothing is
    /// written).
    pub(super) async fn with_row<S, T>(
        &self,
        durable: bool,
        table: &'static str,
        select: &str,
        update: &str,
        keys: sql::Params<'_>,
        change: impl FnOnce(&mut Option<S>) -> T,
    ) -> Result<T>
    where
        S: DeserializeOwned + serde::Serialize + std::fmt::Debug + Sync,
    {
        let mut client = if durable {
            self.durable().await?
        } else {
            self.lazy().await?
        };
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin a coordination change"))?;
        let row = sql::query_opt(&tx, select, keys, "lock a coordination row").await?;
        let existed = row.is_some();
        let mut state: Option<S> = row.map(|row| decode(&row, 0, table)).transpose()?;
        let answer = change(&mut state);
        if let (true, Some(state)) = (existed, &state) {
            let json = Json(state);
            let mut params: Vec<&(dyn ToSql + Sync)> = keys.to_vec();
            params.push(&json);
            sql::execute(&tx, update, &params, "write a coordination row").await?;
        }
        tx.commit()
            .await
            .map_err(db_error("commit a coordination change"))?;
        Ok(answer)
    }
}
