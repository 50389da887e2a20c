//! Helpers of the Redis store's tests: a key prefix per test, requests and completions.

#![allow(dead_code)]

pub mod replica;

use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    ClaimRequest, Completion, Event, Fingerprint, IdempotencyKey, Payload, RecordKey, Scope,
    StoredResponse, Timestamp,
};
use cnerium_store_redis::{RedisOptions, RedisStore};
use http::{HeaderName, HeaderValue, StatusCode};
use redis::AsyncCommands;

/// The server the tests use; `CNERIUM_REDIS_URL` overrides it.
pub fn url() -> String {
    std::env::var("CNERIUM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

pub const LEASE: Duration = Duration::from_secs(30);
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// A key prefix that belongs to one test: its keys are deleted when the test starts
/// (leftovers of a crashed run) and when it calls [`TestPrefix::clean`].
pub struct TestPrefix {
    pub prefix: String,
}

impl TestPrefix {
    pub async fn new(test: &str) -> Self {
        let prefix = Self {
            prefix: format!("cnerium-test:{test}:"),
        };
        prefix.delete_keys().await;
        prefix
    }

    pub fn options(&self) -> RedisOptions {
        RedisOptions::new().key_prefix(self.prefix.clone())
    }

    pub async fn connect(&self) -> RedisStore {
        RedisStore::connect(&url(), self.options())
            .await
            .expect("connecting to the test redis")
    }

    /// A plain connection, to look at the store's keys from outside.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test redis")
    }

    /// Every key under the prefix, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut raw = self.raw().await;
        let mut keys: Vec<String> = raw.keys(format!("{}*", self.prefix)).await.unwrap();
        keys.sort();
        keys
    }

    pub async fn clean(self) {
        self.delete_keys().await;
    }

    async fn delete_keys(&self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let _: () = self.raw().await.del(keys).await.unwrap();
        }
    }
}

pub fn key(name: &str) -> RecordKey {
    RecordKey::new(
        Scope::with_caller("orders.create", "tenant-1"),
        IdempotencyKey::new(name).unwrap(),
    )
}

pub fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::from_parts(1, [n; 32])
}

pub fn claim(key: &RecordKey, fingerprint: Fingerprint, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        fingerprint,
        now,
        lease_until: now.saturating_add(LEASE),
        expires_at: now.saturating_add(RETENTION),
    }
}

pub fn event(kind: &str, room: Option<&str>, n: u64) -> Event {
    Event {
        id: format!("evt_{kind}_{n}"),
        kind: kind.to_owned(),
        room: room.map(str::to_owned),
        payload: Payload::from_value(&serde_json::json!({
            "n": n,
            "nested": {"ok": true},
            "big": 12345678901234567890123_u128,
        })),
        ts: Timestamp::from_millis(T0.as_millis() + n),
    }
}

pub fn completion(now: Timestamp, events: Vec<Event>) -> Completion {
    Completion {
        response: StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-raw"),
                    HeaderValue::from_bytes(b"caf\xe9 \x80").unwrap(),
                ),
                (
                    HeaderName::from_static("link"),
                    HeaderValue::from_static("</a>; rel=next"),
                ),
            ],
            body: Bytes::from_static(b"{\"ok\":true}\x00\xff\xfe binary tail"),
        },
        events,
        completed_at: now,
        expires_at: now.saturating_add(RETENTION),
    }
}
