//! Round-trips and throughput of the Redis store, next to the in-memory store.
//!
//! ```text
//! cargo run --release -p cnerium-store-redis --example redis_bench -- [OPS] [CONCURRENCY] [URL]
//! ```
//!
//! Uses (and deletes) the keys under `cnerium-bench:`. Prints figures only; nothing is
//! asserted.

use std::sync::Arc;

use cnerium_core::Store;
use cnerium_store_memory::MemoryStore;
use cnerium_store_redis::{RedisOptions, RedisStore};

const PREFIX: &str = "cnerium-bench:";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = cnerium_testkit::bench::Args::from_env("redis://127.0.0.1:6379/")?;
    let (ops, concurrency, url) = (args.ops, args.concurrency, args.url);

    delete_keys(&url).await?;
    let options = RedisOptions::new().key_prefix(PREFIX);
    let redis: Arc<dyn Store> = Arc::new(RedisStore::connect(&url, options).await?);
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());

    cnerium_testkit::bench::compare(&[("memory", memory), ("redis", redis)], ops, concurrency)
        .await;

    delete_keys(&url).await?;
    Ok(())
}

async fn delete_keys(url: &str) -> redis::RedisResult<()> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query_async(&mut connection)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(())
}
