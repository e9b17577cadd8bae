//! The store conformance suite run against PostgreSQL: each check gets a fresh database in the
//! test binary's throwaway cluster (`hookflow-testpg`), so checks run in parallel without
//! sharing rows.
use std::sync::Arc;

use crate::store::conformance::*;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::Store;

/// A PostgreSQL store on a database of its own.
struct Postgres;

impl Backend for Postgres {
    /// The database's URL.
    type Place = String;

    fn place() -> Self::Place {
        hookflow_testpg::shared()
            .fresh_database()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn open(place: &Self::Place) -> Arc<dyn Store> {
        let options = PgOptions::new(place.clone());
        let node = node();
        let open = PgStore::open(&options, &node);
        let store =
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(open))
                .unwrap_or_else(|e| panic!("open the PostgreSQL store: {e}"));
        Arc::new(store)
    }
}

conformance_suite!(Postgres);
