//! `hookflow migrate`: brings a PostgreSQL store's schema to this version, or with `--dry-run`
//! says what that would apply. Nodes migrate at start too; this is for doing it before a rolling
//! upgrade, and for seeing where a database stands.

use anyhow::Context;
use hookflow_engine::store::postgres::schema;

use crate::cli::MigrateArgs;
use crate::config::{Config, StoreChoice};

/// Runs `hookflow migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(store) = args.store {
        config.store = Some(store);
    }
    let secrets = config.secrets()?;
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| secrets.get(name).cloned())
    };
    let choice = config.store_choice(&env)?;
    let StoreChoice::Postgres(options) = &choice else {
        println!("the store is the embedded sled database: it has no schema to migrate");
        return Ok(());
    };
    let target = choice.describe(&config.data);
    let mut client = options
        .connect()
        .await
        .with_context(|| format!("cannot reach {target}"))?;
    let status = schema::status(&client)
        .await
        .with_context(|| format!("cannot read the schema of {target}"))?;
    println!(
        "{target}: schema version {} (this hookflow knows up to {})",
        status.current,
        schema::known_version()
    );
    if status.pending.is_empty() {
        println!("nothing to apply");
        return Ok(());
    }
    for migration in &status.pending {
        let verb = if args.dry_run {
            "would apply"
        } else {
            "applying"
        };
        println!("{verb} {}: {}", migration.version, migration.name);
    }
    if args.dry_run {
        return Ok(());
    }
    let applied = schema::migrate(&mut client)
        .await
        .with_context(|| format!("cannot migrate {target}"))?;
    println!(
        "applied {} migration(s): schema version {}",
        applied.len(),
        schema::known_version()
    );
    Ok(())
}
