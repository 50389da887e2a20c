//! The testkit's store conformance suite against the PostgreSQL store, restart checks
//! included: each check gets a schema of its own, and a reopen connects a new store to the
//! same schema.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use cnerium_store_postgres::PostgresStore;
use cnerium_testkit::conformance::{self, OnRuntime};

const SCHEMA_PREFIX: &str = "cnerium_conformance_";

fn drop_schemas(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                &[&SCHEMA_PREFIX],
            )
            .await
            .unwrap();
        for row in rows {
            let name: String = row.get(0);
            client
                .batch_execute(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                .await
                .unwrap();
        }
    });
}

#[test]
fn the_postgres_store_passes_the_conformance_suite() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    drop_schemas(&runtime);
    let handle = runtime.handle().clone();
    let open = move |schema: String| {
        let options = cnerium_store_postgres::PostgresOptions::new()
            .schema(schema.clone())
            .pool_size(8);
        let inner = handle
            .block_on(PostgresStore::connect(&common::url(), options))
            .expect("connecting to the test database");
        OnRuntime::new(handle.clone(), inner).with_label(schema)
    };
    let created = AtomicUsize::new(0);
    let create = {
        let open = open.clone();
        move || {
            open(format!(
                "{SCHEMA_PREFIX}{}",
                created.fetch_add(1, Ordering::SeqCst)
            ))
        }
    };
    let reopen = move |old: OnRuntime<PostgresStore>| {
        let name = old.label().to_owned();
        drop(old);
        open(name)
    };

    let report = conformance::run(conformance::persistent(create, reopen));

    assert_eq!(report.passed(), conformance::CHECKS.len(), "{report}");
    drop_schemas(&runtime);
}
