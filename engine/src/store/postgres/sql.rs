//! Statements run through the pool: each is prepared once per connection (cached), so a call costs
//! one round trip, and its errors are mapped with what was being done.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::db_error;
use crate::store::Result;

/// Statement parameters.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `sql`; the number of rows it changed.
pub(super) async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    context: &'static str,
) -> Result<u64> {
    let statement = prepared(client, sql, context).await?;
    client
        .execute(&statement, params)
        .await
        .map_err(db_error(context))
}

/// Runs `sql`; the rows it answered.
pub(super) async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    context: &'static str,
) -> Result<Vec<Row>> {
    let statement = prepared(client, sql, context).await?;
    client
        .query(&statement, params)
        .await
        .map_err(db_error(context))
}

/// Runs `sql`; the one row it answered, if any.
pub(super) async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    context: &'static str,
) -> Result<Option<Row>> {
    let statement = prepared(client, sql, context).await?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(db_error(context))
}

/// Runs `sql`; the one row it answered (an error if none).
pub(super) async fn query_one(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    context: &'static str,
) -> Result<Row> {
    let statement = prepared(client, sql, context).await?;
    client
        .query_one(&statement, params)
        .await
        .map_err(db_error(context))
}

/// `sql` prepared on this connection (once: later calls reuse it).
async fn prepared(
    client: &impl GenericClient,
    sql: &str,
    context: &'static str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(db_error(context))
}
