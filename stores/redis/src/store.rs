//! [`RedisStore`]: records in Redis hashes, made atomic by Lua scripts.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, Store, StoreError, Timestamp,
};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::ConnectError;
use crate::options::RedisOptions;
use crate::record::{self, Keys, corrupt, pending_member, record_id};
use crate::relay::RedisEventSink;
use crate::scripts::Scripts;

/// The longest TTL the store sets, about 30 years: Redis refuses an expiry that overflows
/// its clock, and a record kept that long is kept forever for any practical purpose. The
/// record's own `expires_at` still decides when it stops existing.
const MAX_TTL: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Records in Redis, shared by every replica that connects with the same key prefix.
///
/// Cloning is cheap: clones share one multiplexed connection, which reconnects by itself
/// after a failure. Each method is one script or command, so one round-trip.
///
/// What survives a restart of Redis depends on its persistence settings (RDB snapshots,
/// AOF): with persistence off, a restart forgets every record and a retry runs the handler
/// again.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    options: Arc<RedisOptions>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.options.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://host:6379/0`, `redis://:password@host`).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, ConnectError> {
        options.validate()?;
        let connection = connection_manager(url, &options).await?;
        tracing::debug!(key_prefix = %options.key_prefix, "redis store connected");
        Ok(Self {
            connection,
            keys: Arc::new(Keys::new(&options.key_prefix)),
            scripts: Arc::new(Scripts::new()),
            options: Arc::new(options),
        })
    }

    /// An event sink that publishes to `channel` over this store's connection.
    ///
    /// See [`RedisEventSink`] for how events reach every replica.
    pub fn event_sink(&self, channel: impl Into<String>) -> RedisEventSink {
        RedisEventSink::with_connection(self.connection.clone(), channel)
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

/// A reconnecting, multiplexed connection with the timeouts of `options`.
pub(crate) async fn connection_manager(
    url: &str,
    options: &RedisOptions,
) -> Result<ConnectionManager, ConnectError> {
    let client = redis::Client::open(url).map_err(ConnectError::InvalidUrl)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(3);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(ConnectError::Unreachable)
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let id = record_id(&request.key);
        let result: Value = self
            .scripts
            .claim
            .key(self.keys.record(&id))
            .key(&self.keys.fence)
            .key(&self.keys.expiry)
            .key(&self.keys.pending)
            .key(&self.keys.history)
            .arg(request.now.as_millis())
            .arg(request.lease_until.as_millis())
            .arg(request.expires_at.as_millis())
            .arg(record::fingerprint_bytes(&request.fingerprint))
            .arg(&id)
            .arg(ttl_millis(request.now, request.expires_at))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("claim", e))?;

        let Value::Array(parts) = result else {
            return Err(corrupt("unexpected claim answer"));
        };
        match parts.as_slice() {
            [Value::Int(1), Value::Int(fence), Value::Int(takeover)] => {
                let fence = Fence(u64::try_from(*fence).map_err(|_| corrupt("negative fence"))?);
                let takeover = *takeover == 1;
                tracing::trace!(key = %request.key, %fence, takeover, "claim granted");
                Ok(ClaimOutcome::Claimed { fence, takeover })
            }
            [Value::Int(0), fields] => {
                let fields: HashMap<String, Vec<u8>> = redis::from_redis_value_ref(fields)
                    .map_err(|e| StoreError::with_source("redis store: unreadable record", e))?;
                let record = record::decode_record(fields)?
                    .ok_or_else(|| corrupt("existing record without fields"))?;
                tracing::trace!(key = %request.key, fence = %record.fence(), "record exists");
                Ok(ClaimOutcome::Existing(record))
            }
            _ => Err(corrupt("unexpected claim answer")),
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let id = record_id(key);
        let response = &completion.response;
        let stored: i64 = self
            .scripts
            .complete
            .key(self.keys.record(&id))
            .key(&self.keys.expiry)
            .key(&self.keys.pending)
            .key(&self.keys.history)
            .arg(fence.0)
            .arg(completion.completed_at.as_millis())
            .arg(completion.expires_at.as_millis())
            .arg(response.status.as_u16())
            .arg(record::encode_headers(&response.headers))
            .arg(response.body.as_ref())
            .arg(record::encode_events(&completion.events))
            .arg(if completion.events.is_empty() {
                "0"
            } else {
                "1"
            })
            .arg(&id)
            .arg(ttl_millis(completion.completed_at, completion.expires_at))
            .arg(pending_member(&id, fence))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("complete", e))?;
        if stored == 0 {
            tracing::debug!(%key, %fence, "completion fenced off");
            return Err(CompleteError::Fenced);
        }
        tracing::trace!(%key, %fence, events = completion.events.len(), "completion stored");
        Ok(())
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let id = record_id(key);
        let released: i64 = self
            .scripts
            .release
            .key(self.keys.record(&id))
            .key(&self.keys.expiry)
            .arg(fence.0)
            .arg(&id)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("release", e))?;
        tracing::trace!(%key, %fence, released = released == 1, "release");
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let id = record_id(key);
        let _marked: i64 = self
            .scripts
            .mark_published
            .key(self.keys.record(&id))
            .key(&self.keys.pending)
            .arg(fence.0)
            .arg(pending_member(&id, fence))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("mark published", e))?;
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let flat: Vec<Vec<u8>> = self
            .scripts
            .pending_events
            .key(&self.keys.pending)
            .arg(&self.keys.record_prefix)
            .arg(limit)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("pending events", e))?;

        flat.chunks(3)
            .map(|triple| {
                let [id, fence, events] = triple else {
                    return Err(corrupt("unexpected pending events answer"));
                };
                let key = hex::decode(id)
                    .ok()
                    .and_then(|bytes| RecordKey::decode(&bytes))
                    .ok_or_else(|| corrupt("invalid record id"))?;
                Ok(PendingEvents {
                    key,
                    fence: Fence(record::number(fence)?),
                    events: record::decode_events(events)?,
                })
            })
            .collect()
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let fields: Vec<Vec<u8>> = self
            .scripts
            .events_since
            .key(&self.keys.history)
            .arg(&self.keys.record_prefix)
            .arg(since.as_millis())
            .arg(limit)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| failed("event history", e))?;

        let mut events = Vec::new();
        for field in fields {
            events.extend(record::decode_events(&field)?);
            if events.len() >= limit {
                events.truncate(limit);
                break;
            }
        }
        Ok(events)
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.record(&record_id(key)))
            .query_async(&mut self.connection())
            .await
            .map_err(|e| failed("lookup", e))?;
        // Redis expires records by its own clock; the caller's clock has the last word.
        Ok(record::decode_record(fields)?.filter(|record| record.is_live(now)))
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let (looked_at, removed): (u64, u64) = self
                .scripts
                .purge_batch
                .key(&self.keys.expiry)
                .key(&self.keys.pending)
                .key(&self.keys.history)
                .arg(now.as_millis())
                .arg(self.options.purge_batch_size)
                .arg(&self.keys.record_prefix)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|e| failed("purge", e))?;
            purged += removed;
            if looked_at < u64::from(self.options.purge_batch_size) {
                break;
            }
        }
        tracing::debug!(purged, "purged expired records");
        Ok(purged)
    }
}

/// Milliseconds from `now` to `expires_at` for `PEXPIRE`: at least 1 (Redis deletes a key
/// at once for a TTL of zero or less), at most [`MAX_TTL`].
fn ttl_millis(now: Timestamp, expires_at: Timestamp) -> u64 {
    let ttl = expires_at.saturating_since(now).min(MAX_TTL);
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn failed(what: &str, e: redis::RedisError) -> StoreError {
    StoreError::with_source(format!("redis store: {what} failed"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_positive_and_bounded() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(ttl_millis(t, Timestamp::from_millis(1_250)), 250);
        assert_eq!(ttl_millis(t, t), 1);
        assert_eq!(ttl_millis(t, Timestamp::EPOCH), 1);
        assert_eq!(
            ttl_millis(t, Timestamp::from_millis(u64::MAX)),
            MAX_TTL.as_millis() as u64
        );
    }
}
