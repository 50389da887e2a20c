//! Round-trips and throughput of the PostgreSQL store, next to the in-memory store.
//!
//! ```text
//! cargo run --release -p cnerium-store-postgres --example postgres_bench -- [OPS] [CONCURRENCY] [URL]
//! ```
//!
//! Uses (and drops) the schema `cnerium_bench`. Prints figures only; nothing is asserted.

use std::sync::Arc;

use cnerium_core::Store;
use cnerium_store_memory::MemoryStore;
use cnerium_store_postgres::{PostgresOptions, PostgresStore};

const SCHEMA: &str = "cnerium_bench";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = cnerium_testkit::bench::Args::from_env("postgres://postgres@127.0.0.1:5432/test")?;
    let (ops, concurrency, url) = (args.ops, args.concurrency, args.url);

    drop_schema(&url).await?;
    let options = PostgresOptions::new()
        .schema(SCHEMA)
        .pool_size(concurrency.max(1));
    let postgres: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, options).await?);
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());

    cnerium_testkit::bench::compare(
        &[("memory", memory), ("postgres", postgres)],
        ops,
        concurrency,
    )
    .await;

    drop_schema(&url).await?;
    Ok(())
}

async fn drop_schema(url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}
