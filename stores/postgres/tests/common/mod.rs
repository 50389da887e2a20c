//! Helpers of the PostgreSQL store's tests: a schema per test, requests and completions.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    ClaimRequest, Completion, Event, Fingerprint, IdempotencyKey, Payload, RecordKey, Scope,
    StoredResponse, Timestamp,
};
use cnerium_store_postgres::{PostgresOptions, PostgresStore};
use http::{HeaderName, HeaderValue, StatusCode};

/// The server the tests use; `CNERIUM_POSTGRES_URL` overrides it.
pub fn url() -> String {
    std::env::var("CNERIUM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub const LEASE: Duration = Duration::from_secs(30);
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// A schema that belongs to one test: dropped when the test starts (leftovers of a crashed
/// run) and when it calls [`TestSchema::drop`].
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub async fn new(test: &str) -> Self {
        let schema = Self {
            name: format!("cnerium_test_{test}"),
        };
        schema.drop_now().await;
        schema
    }

    pub fn options(&self) -> PostgresOptions {
        PostgresOptions::new()
            .schema(self.name.clone())
            .pool_size(8)
    }

    pub async fn connect(&self) -> PostgresStore {
        PostgresStore::connect(&url(), self.options())
            .await
            .expect("connecting to the test database")
    }

    /// Runs `sql` on a connection of its own, outside any store.
    pub async fn execute(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connecting to the test database");
        let task = tokio::spawn(connection);
        client.batch_execute(sql).await.expect("running test sql");
        drop(client);
        let _ = task.await;
    }

    pub async fn drop(self) {
        self.drop_now().await;
    }

    async fn drop_now(&self) {
        self.execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await;
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
