//! The testkit's store conformance suite against the Redis store, restart checks included:
//! each check gets a key prefix of its own, and a reopen connects a new store to the same
//! prefix.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use cnerium_store_redis::{RedisOptions, RedisStore};
use cnerium_testkit::conformance::{self, OnRuntime};
use redis::AsyncCommands;

const PREFIX: &str = "cnerium-test:conformance:";

fn delete_keys(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let mut raw = redis::Client::open(common::url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test redis");
        let keys: Vec<String> = raw.keys(format!("{PREFIX}*")).await.unwrap();
        if !keys.is_empty() {
            let _: () = raw.del(keys).await.unwrap();
        }
    });
}

#[test]
fn the_redis_store_passes_the_conformance_suite() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    delete_keys(&runtime);
    let handle = runtime.handle().clone();
    let open = move |prefix: String| {
        let options = RedisOptions::new().key_prefix(prefix.clone());
        let inner = handle
            .block_on(RedisStore::connect(&common::url(), options))
            .expect("connecting to the test redis");
        OnRuntime::new(handle.clone(), inner).with_label(prefix)
    };
    let created = AtomicUsize::new(0);
    let create = {
        let open = open.clone();
        move || {
            open(format!(
                "{PREFIX}{}:",
                created.fetch_add(1, Ordering::SeqCst)
            ))
        }
    };
    let reopen = move |old: OnRuntime<RedisStore>| {
        let prefix = old.label().to_owned();
        drop(old);
        open(prefix)
    };

    let report = conformance::run(conformance::persistent(create, reopen));

    assert_eq!(report.passed(), conformance::CHECKS.len(), "{report}");
    delete_keys(&runtime);
}
