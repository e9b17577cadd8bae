//! The PostgreSQL schema: embedded, versioned migrations, applied in order, each in its own
//! transaction, under an advisory lock so that nodes starting together apply each one once.
//!
//! Invariants:
//! - `hookflow.schema_migrations` lists every migration applied, by version; versions are applied
//!   in increasing order and never edited once released (a change is a new migration).
//! - A node never runs against a schema newer than it knows (a later version applied by a newer
//!   node): it stops with [`SchemaError::TooNew`] rather than misread what it does not know.

use tokio_postgres::Client;

/// One migration: its version, a name for people, and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: 1, 2, … in the order they apply.
    pub version: i32,
    /// What it does, in a few words.
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration this version knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial tables",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "storage between runs",
        sql: include_str!("migrations/0002_storage.sql"),
    },
    Migration {
        version: 3,
        name: "audit record and hook logs",
        sql: include_str!("migrations/0003_audit.sql"),
    },
    Migration {
        version: 4,
        name: "claims by flow only",
        sql: include_str!("migrations/0004_claim_index.sql"),
    },
    Migration {
        version: 5,
        name: "lz4 compression where the server has it",
        sql: include_str!("migrations/0005_lz4.sql"),
    },
];

/// Serialises schema changes between nodes (an arbitrary constant: "hookflow" in ASCII).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_666c_6f77;

/// What can keep the schema from being used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A newer hookflow migrated the database.
    #[error("the database's hookflow schema is at version {found}, newer than this hookflow knows (up to {known}): upgrade this node, or point it at another database")]
    TooNew {
        /// The newest version applied.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// The database failed.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The database's error.
        source: tokio_postgres::Error,
    },
}

fn database(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    let context = context.into();
    move |source| SchemaError::Database { context, source }
}

/// The schema's state: the versions applied, and the migrations still to apply.
#[derive(Debug, Clone)]
pub struct SchemaStatus {
    /// The newest version applied (0 for an empty database).
    pub current: i32,
    /// The migrations still to apply, oldest first.
    pub pending: Vec<Migration>,
}

/// The newest version this build knows.
pub fn known_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Reads the schema's state without changing anything. Fails with [`SchemaError::TooNew`] for a
/// schema newer than this build.
pub async fn status(client: &Client) -> Result<SchemaStatus, SchemaError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('hookflow.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(database("read the schema version"))?
        .get(0);
    let current: i32 = if exists {
        client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM hookflow.schema_migrations",
                &[],
            )
            .await
            .map_err(database("read the schema version"))?
            .get(0)
    } else {
        0
    };
    if current > known_version() {
        return Err(SchemaError::TooNew {
            found: current,
            known: known_version(),
        });
    }
    let pending = MIGRATIONS
        .iter()
        .filter(|m| m.version > current)
        .copied()
        .collect();
    Ok(SchemaStatus { current, pending })
}

/// Applies the pending migrations (each in a transaction, under the migration lock); returns those
/// applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<Migration>, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(database("take the migration lock"))?;
    let applied = apply_pending(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(database("release the migration lock"));
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<Migration>, SchemaError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS hookflow;
             CREATE TABLE IF NOT EXISTS hookflow.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(database("create the migrations table"))?;
    let pending = status(client).await?.pending;
    for migration in &pending {
        let context = || format!("apply migration {} ({})", migration.version, migration.name);
        let tx = client.transaction().await.map_err(database(context()))?;
        tx.batch_execute(migration.sql)
            .await
            .map_err(database(context()))?;
        tx.execute(
            "INSERT INTO hookflow.schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(database(context()))?;
        tx.commit().await.map_err(database(context()))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied a schema migration"
        );
    }
    Ok(pending)
}
