//! A PostgreSQL [`Store`] for Cnerium: records shared by every replica of a service and kept
//! across restarts.
//!
//! ```no_run
//! use cnerium_store_postgres::{PostgresOptions, PostgresStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let options = PostgresOptions::new().schema("orders_service");
//! let store = PostgresStore::connect("postgres://app@db.internal:5432/app", options).await?;
//! // ... hand `store` to the engine, serve ...
//! # Ok(())
//! # }
//! ```
//!
//! [`PostgresStore::connect`] creates the schema, a records table, a fence sequence and a
//! schema version table when they are missing, so a fresh database needs no setup beyond a
//! role that may create them. Connections are plain TCP: a server that requires TLS cannot
//! be used until this crate grows a TLS option.
//!
//! # How each method maps to SQL
//!
//! Every [`Store`] method is one statement, run in its own implicit transaction, so one
//! call costs one round-trip once the pooled connection has prepared the statement:
//!
//! - `claim` is one statement: a CTE reads the record, an `INSERT ... ON CONFLICT DO UPDATE
//!   ... WHERE <existing record is claimable> RETURNING` writes the claim, and a last branch
//!   returns the existing record when the claim is not granted. When the record read is
//!   live and not claimable (a replay, a conflict, a request in progress) the insert
//!   produces no row, so the statement only reads: a replay locks and writes nothing. The
//!   row lock of the conflict makes concurrent claims of one key queue up, so exactly one
//!   is granted. In the rare race where the statement's snapshot misses a record that a
//!   concurrent claim committed a moment earlier, the statement is run again.
//! - Fences come from a `BIGINT` sequence, which never goes back, so a fence is greater than
//!   every fence granted before it, across takeovers, releases and purges.
//! - `complete`, `release` and `mark_published` are an `UPDATE` or `DELETE` whose `WHERE`
//!   names the key, the state and the fence; no matching row means the caller was fenced.
//! - `purge_expired` deletes expired rows in batches, skipping rows a claim holds locked.
//! - `events_since` unnests the events of completed rows from a time, ordered by completion
//!   time, fence and staging order, over a partial index on `(completed_at, fence)`.
//!
//! Every time in the table is a `BIGINT` of milliseconds handed in by the engine's clock;
//! no statement reads the database server's clock.

#![warn(missing_docs)]

mod error;
mod options;
mod row;
mod schema;

use std::fmt;
use std::sync::Arc;

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, Store, StoreError, Timestamp,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::types::Json;

pub use error::ConnectError;
pub use options::PostgresOptions;

use row::{StoredEvent, fence_to_sql, millis_to_sql};
use schema::Statements;

/// How often a claim runs again when its snapshot raced a concurrent write; each race needs
/// another transaction to commit on the same key in between, so a few suffice.
const CLAIM_ATTEMPTS: usize = 8;

/// Records in a PostgreSQL database, behind a pool of connections.
///
/// Cloning is cheap: clones share the pool. Any number of stores, in any number of
/// processes, may use the same tables at once; the database keeps every method atomic.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    statements: Arc<Statements>,
    options: Arc<PostgresOptions>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.options.schema)
            .field("table_prefix", &self.options.table_prefix)
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and creates the store's tables when missing.
    ///
    /// `url` is a libpq-style connection string or URL
    /// (`postgres://user:password@host:5432/database`). One connection is opened right away
    /// to check the server and run the migration; the pool opens more on demand.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, ConnectError> {
        options.validate()?;
        let mut config: tokio_postgres::Config = url.parse().map_err(ConnectError::InvalidUrl)?;
        config.connect_timeout(options.connect_timeout);

        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| ConnectError::Unreachable(Box::new(e)))?;

        let mut client = pool
            .get()
            .await
            .map_err(|e| ConnectError::Unreachable(Box::new(e)))?;
        schema::migrate(&mut client, &options).await?;
        drop(client);

        tracing::debug!(
            schema = %options.schema,
            table_prefix = %options.table_prefix,
            "postgres store connected"
        );
        Ok(Self {
            pool,
            statements: Arc::new(Statements::new(&options)),
            options: Arc::new(options),
        })
    }

    /// A pooled connection with `sql` prepared on it.
    async fn prepared(
        &self,
        sql: &str,
    ) -> Result<(deadpool_postgres::Client, tokio_postgres::Statement), StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::with_source("postgres store: no connection", e))?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| failed("prepare", e))?;
        Ok((client, statement))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let (client, statement) = self.prepared(&self.statements.claim).await?;
        let encoded = request.key.encode();
        let scope = request.key.scope();
        let fingerprint_version = i16::from(request.fingerprint.version());
        let now = millis_to_sql(request.now);
        let lease_until = millis_to_sql(request.lease_until);
        let expires_at = millis_to_sql(request.expires_at);

        for attempt in 1..=CLAIM_ATTEMPTS {
            let rows = client
                .query(
                    &statement,
                    &[
                        &encoded,
                        &scope.operation(),
                        &scope.caller(),
                        &request.key.key().as_str(),
                        &fingerprint_version,
                        &request.fingerprint.digest().as_slice(),
                        &lease_until,
                        &now,
                        &expires_at,
                    ],
                )
                .await
                .map_err(|e| failed("claim", e))?;
            let Some(row) = rows.first().map(row::record_row).transpose()? else {
                tracing::trace!(key = %request.key, attempt, "claim raced a concurrent insert");
                continue;
            };

            if row.granted {
                let fence = row.record.fence();
                tracing::trace!(
                    key = %request.key,
                    %fence,
                    takeover = row.took_over,
                    "claim granted"
                );
                return Ok(ClaimOutcome::Claimed {
                    fence,
                    takeover: row.took_over,
                });
            }
            if !row.record.is_claimable(request.now) {
                tracing::trace!(key = %request.key, fence = %row.record.fence(), "record exists");
                return Ok(ClaimOutcome::Existing(row.record));
            }
            // The snapshot showed a record that a concurrent claim replaced since.
            tracing::trace!(key = %request.key, attempt, "claim raced a concurrent takeover");
        }
        Err(StoreError::new(format!(
            "postgres store: claim of {} did not settle after {CLAIM_ATTEMPTS} attempts",
            request.key
        )))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let (client, statement) = self.prepared(&self.statements.complete).await?;
        let response = &completion.response;
        // A StatusCode is at most 999.
        let status = i16::try_from(response.status.as_u16()).unwrap_or(i16::MAX);
        let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
        let values: Vec<&[u8]> = response.headers.iter().map(|(_, v)| v.as_bytes()).collect();
        let events: Vec<StoredEvent> = completion
            .events
            .iter()
            .map(StoredEvent::from_event)
            .collect();
        let event_count = i32::try_from(events.len()).unwrap_or(i32::MAX);

        let updated = client
            .execute(
                &statement,
                &[
                    &key.encode(),
                    &fence_to_sql(fence),
                    &millis_to_sql(completion.completed_at),
                    &millis_to_sql(completion.expires_at),
                    &status,
                    &names,
                    &values,
                    &response.body.as_ref(),
                    &Json(&events),
                    &event_count,
                ],
            )
            .await
            .map_err(|e| failed("complete", e))?;
        if updated == 0 {
            tracing::debug!(%key, %fence, "completion fenced off");
            return Err(CompleteError::Fenced);
        }
        tracing::trace!(%key, %fence, events = event_count, "completion stored");
        Ok(())
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let (client, statement) = self.prepared(&self.statements.release).await?;
        let removed = client
            .execute(&statement, &[&key.encode(), &fence_to_sql(fence)])
            .await
            .map_err(|e| failed("release", e))?;
        tracing::trace!(%key, %fence, released = removed > 0, "release");
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let (client, statement) = self.prepared(&self.statements.mark_published).await?;
        client
            .execute(&statement, &[&key.encode(), &fence_to_sql(fence)])
            .await
            .map_err(|e| failed("mark published", e))?;
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (client, statement) = self.prepared(&self.statements.pending_events).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&limit])
            .await
            .map_err(|e| failed("pending events", e))?;
        rows.iter()
            .map(|row| {
                let (key, fence, events) = row::pending_row(row)?;
                Ok(PendingEvents { key, fence, events })
            })
            .collect()
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (client, statement) = self.prepared(&self.statements.events_since).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&millis_to_sql(since), &limit])
            .await
            .map_err(|e| failed("event history", e))?;
        rows.iter().map(row::history_row).collect()
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let (client, statement) = self.prepared(&self.statements.lookup).await?;
        let row = client
            .query_opt(&statement, &[&key.encode(), &millis_to_sql(now)])
            .await
            .map_err(|e| failed("lookup", e))?;
        Ok(row
            .as_ref()
            .map(row::record_row)
            .transpose()?
            .map(|r| r.record))
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let (client, statement) = self.prepared(&self.statements.purge_batch).await?;
        let batch = i64::from(self.options.purge_batch_size);
        let now = millis_to_sql(now);
        let mut purged = 0;
        loop {
            let deleted = client
                .execute(&statement, &[&now, &batch])
                .await
                .map_err(|e| failed("purge", e))?;
            purged += deleted;
            if deleted < batch as u64 {
                break;
            }
        }
        tracing::debug!(purged, "purged expired records");
        Ok(purged)
    }
}

fn failed(what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::with_source(format!("postgres store: {what} failed"), e)
}
