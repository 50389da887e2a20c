//! The store's tables, the migration that creates them, and every statement it runs.
//!
//! One table holds the records, keyed by [`RecordKey::encode`](cnerium_core::RecordKey)
//! bytes; a sequence hands out fences; a version table tells which migrations ran. Times are
//! `BIGINT` milliseconds passed in by the caller: no statement reads the server's clock.

use tokio_postgres::Client;

use crate::error::ConnectError;
use crate::options::PostgresOptions;

/// The schema version this crate creates and understands.
pub(crate) const SCHEMA_VERSION: i32 = 2;

/// First key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i32 = 0x636e_7267; // "cnrg"

/// Quoted, fully qualified names of the store's objects.
#[derive(Debug)]
struct Names {
    schema: String,
    records: String,
    fences: String,
    versions: String,
    expires_index: String,
    pending_index: String,
    history_index: String,
}

impl Names {
    fn new(options: &PostgresOptions) -> Self {
        // Options are validated to lower-case letters, digits and '_', so quoting needs no
        // escaping.
        let schema = &options.schema;
        let prefix = &options.table_prefix;
        Self {
            schema: format!("\"{schema}\""),
            records: format!("\"{schema}\".\"{prefix}records\""),
            fences: format!("\"{schema}\".\"{prefix}fences\""),
            versions: format!("\"{schema}\".\"{prefix}schema_version\""),
            expires_index: format!("\"{prefix}records_expires_at\""),
            pending_index: format!("\"{prefix}records_pending\""),
            history_index: format!("\"{prefix}records_history\""),
        }
    }
}

/// The columns a record is read from, in the order [`crate::row`] decodes them.
const RECORD_COLUMNS: &str = "took_over, fingerprint_version, fingerprint, state, fence, \
     lease_until, created_at, expires_at, completed_at, status, header_names, header_values, \
     body, events, events_published";

/// Every statement the store runs, with its table names filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) claim: String,
    pub(crate) complete: String,
    pub(crate) release: String,
    pub(crate) mark_published: String,
    pub(crate) pending_events: String,
    pub(crate) events_since: String,
    pub(crate) lookup: String,
    pub(crate) purge_batch: String,
}

impl Statements {
    pub(crate) fn new(options: &PostgresOptions) -> Self {
        let Names {
            records, fences, ..
        } = Names::new(options);
        let columns = RECORD_COLUMNS;

        // $1 record key, $2 operation, $3 caller, $4 idempotency key, $5 fingerprint
        // version, $6 fingerprint, $7 lease until, $8 now, $9 expires at.
        //
        // `found` reads the record as the statement's snapshot shows it. When that record is
        // live and not claimable (a replay, a conflict, a request in progress) the insert
        // produces no row, so the statement only reads: no fence is drawn, no row is locked
        // and nothing is written. Otherwise the insert creates the record, or replaces it
        // when the newest version is claimable at $8 (ON CONFLICT looks past the snapshot);
        // the row it returns is the granted claim. When it returns nothing, the last branch
        // returns the record that stood in the way. `took_over` remembers whether the
        // replaced record was a live claim whose lease ran out. A fence drawn before the
        // record being replaced got its own (the statement waited on its row lock) is
        // drawn again, so the new fence exceeds the old one.
        let claim = format!(
            "WITH found AS (
                SELECT {columns} FROM {records} WHERE record_key = $1::bytea
            ),
            claimed AS (
                INSERT INTO {records} AS r (record_key, operation, caller, idempotency_key,
                    fingerprint_version, fingerprint, state, fence, lease_until, created_at,
                    expires_at)
                SELECT $1::bytea, $2::text, $3::text, $4::text, $5::smallint, $6::bytea,
                    'in_progress', nextval('{fences}'), $7::bigint, $8::bigint, $9::bigint
                WHERE NOT EXISTS (
                    SELECT 1 FROM found
                    WHERE found.expires_at > $8
                        AND (found.state = 'completed' OR found.lease_until > $8)
                )
                ON CONFLICT (record_key) DO UPDATE SET
                    fingerprint_version = EXCLUDED.fingerprint_version,
                    fingerprint = EXCLUDED.fingerprint,
                    state = 'in_progress',
                    fence = CASE WHEN EXCLUDED.fence > r.fence THEN EXCLUDED.fence
                        ELSE nextval('{fences}') END,
                    took_over = (r.state = 'in_progress' AND r.expires_at > $8),
                    lease_until = EXCLUDED.lease_until,
                    created_at = EXCLUDED.created_at,
                    expires_at = EXCLUDED.expires_at,
                    completed_at = NULL,
                    status = NULL,
                    header_names = NULL,
                    header_values = NULL,
                    body = NULL,
                    events = NULL,
                    event_count = 0,
                    events_published = false
                WHERE r.expires_at <= $8 OR (r.state = 'in_progress' AND r.lease_until <= $8)
                RETURNING {columns}
            )
            SELECT true AS granted, {columns} FROM claimed
            UNION ALL
            SELECT false AS granted, {columns} FROM found
            WHERE NOT EXISTS (SELECT 1 FROM claimed)"
        );

        // $1 key, $2 fence, $3 completed at, $4 expires at, $5 status, $6 header names,
        // $7 header values, $8 body, $9 events, $10 event count.
        let complete = format!(
            "UPDATE {records} SET state = 'completed', lease_until = NULL, completed_at = $3,
                expires_at = $4, status = $5, header_names = $6, header_values = $7, body = $8,
                events = $9, event_count = $10, events_published = false
            WHERE record_key = $1 AND state = 'in_progress' AND fence = $2"
        );

        let release = format!(
            "DELETE FROM {records} WHERE record_key = $1 AND state = 'in_progress' AND fence = $2"
        );

        let mark_published = format!(
            "UPDATE {records} SET events_published = true
            WHERE record_key = $1 AND state = 'completed' AND fence = $2
                AND NOT events_published"
        );

        let pending_events = format!(
            "SELECT record_key, fence, events FROM {records}
            WHERE state = 'completed' AND NOT events_published AND event_count > 0
            ORDER BY completed_at, fence
            LIMIT $1"
        );

        // $1 since, $2 limit. Each record's JSON array is unnested in its stored order, so
        // the limit counts events, not records.
        let events_since = format!(
            "SELECT e.event FROM {records} r
            CROSS JOIN LATERAL json_array_elements(r.events) WITH ORDINALITY AS e(event, n)
            WHERE r.state = 'completed' AND r.event_count > 0 AND r.completed_at >= $1
            ORDER BY r.completed_at, r.fence, e.n
            LIMIT $2"
        );

        let lookup = format!(
            "SELECT false AS granted, {columns} FROM {records}
            WHERE record_key = $1 AND expires_at > $2"
        );

        // Rows a claim is replacing right now are skipped, not waited for: the claim makes
        // them live again anyway.
        let purge_batch = format!(
            "WITH doomed AS (
                SELECT record_key FROM {records}
                WHERE expires_at <= $1
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            DELETE FROM {records} r USING doomed
            WHERE r.record_key = doomed.record_key AND r.expires_at <= $1"
        );

        Self {
            claim,
            complete,
            release,
            mark_published,
            pending_events,
            events_since,
            lookup,
            purge_batch,
        }
    }
}

/// The statements of migration `n` (1-based).
fn migration(names: &Names, n: i32) -> Option<String> {
    let Names {
        records,
        fences,
        expires_index,
        pending_index,
        history_index,
        ..
    } = names;
    match n {
        1 => Some(format!(
            "CREATE TABLE IF NOT EXISTS {records} (
                record_key BYTEA PRIMARY KEY,
                operation TEXT NOT NULL,
                caller TEXT,
                idempotency_key TEXT NOT NULL,
                fingerprint_version SMALLINT NOT NULL,
                fingerprint BYTEA NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
                fence BIGINT NOT NULL,
                took_over BOOLEAN NOT NULL DEFAULT false,
                lease_until BIGINT,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                completed_at BIGINT,
                status SMALLINT,
                header_names TEXT[],
                header_values BYTEA[],
                body BYTEA,
                events JSON,
                event_count INTEGER NOT NULL DEFAULT 0,
                events_published BOOLEAN NOT NULL DEFAULT false
            );
            CREATE INDEX IF NOT EXISTS {expires_index} ON {records} (expires_at);
            CREATE INDEX IF NOT EXISTS {pending_index} ON {records} (completed_at, fence)
                WHERE state = 'completed' AND NOT events_published AND event_count > 0;
            CREATE SEQUENCE IF NOT EXISTS {fences} AS BIGINT;"
        )),
        // The event history reconnecting clients catch up from, published or not.
        2 => Some(format!(
            "CREATE INDEX IF NOT EXISTS {history_index} ON {records} (completed_at, fence)
                WHERE state = 'completed' AND event_count > 0;"
        )),
        _ => None,
    }
}

/// Creates the schema and tables when missing and brings them to [`SCHEMA_VERSION`].
///
/// Runs in one transaction under an advisory lock, so that stores connecting at the same
/// time do not race each other's `CREATE` statements.
pub(crate) async fn migrate(
    client: &mut Client,
    options: &PostgresOptions,
) -> Result<(), ConnectError> {
    let names = Names::new(options);
    let tx = client
        .transaction()
        .await
        .map_err(ConnectError::Migration)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[
            &MIGRATION_LOCK,
            &format!("{}.{}", options.schema, options.table_prefix),
        ],
    )
    .await
    .map_err(ConnectError::Migration)?;

    // CREATE SCHEMA needs a privilege on the database even when the schema exists, so it is
    // only sent for a missing schema.
    let schema_exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&options.schema],
        )
        .await
        .map_err(ConnectError::Migration)?
        .is_some();
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", names.schema))
            .await
            .map_err(ConnectError::Migration)?;
    }

    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY)",
        names.versions
    ))
    .await
    .map_err(ConnectError::Migration)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {}", names.versions),
            &[],
        )
        .await
        .map_err(ConnectError::Migration)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(ConnectError::UnsupportedSchemaVersion {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }

    for n in current + 1..=SCHEMA_VERSION {
        let Some(sql) = migration(&names, n) else {
            break;
        };
        tx.batch_execute(&sql)
            .await
            .map_err(ConnectError::Migration)?;
        tx.execute(
            &format!("INSERT INTO {} (version) VALUES ($1)", names.versions),
            &[&n],
        )
        .await
        .map_err(ConnectError::Migration)?;
        tracing::debug!(schema = %options.schema, version = n, "applied store migration");
    }
    tx.commit().await.map_err(ConnectError::Migration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_up_to_the_current_one_has_a_migration() {
        let names = Names::new(&PostgresOptions::new());
        for n in 1..=SCHEMA_VERSION {
            assert!(migration(&names, n).is_some(), "migration {n} is missing");
        }
        assert!(migration(&names, SCHEMA_VERSION + 1).is_none());
    }

    #[test]
    fn names_carry_schema_and_prefix() {
        let options = PostgresOptions::new().schema("s1").table_prefix("t_");
        let statements = Statements::new(&options);
        assert!(statements.claim.contains("\"s1\".\"t_records\""));
        assert!(statements.claim.contains("nextval('\"s1\".\"t_fences\"')"));
    }
}
