//! The log of idempotent write requests, in the catalog database: what a write with a client
//! request id did, so that its retries (on any node, after any restart) write nothing twice.
//!
//! One row per (table uuid, request id): `pending` while an attempt appends, with the node that
//! claimed it and the changelog offsets the partitions had before the attempt appended; `done`
//! with the outcome the client was (or should have been) told. A retry of a `done` request gets
//! that outcome back. A retry of a `pending` one waits while the claiming node is alive and the
//! claim is recent; otherwise it takes the claim over and finds out from the changelog itself
//! which of the first attempt's records landed (they carry the request id in a header, see
//! docs/changelog-format.md), then appends only the rest.

use std::time::Duration;

use sqlx::AnyPool;

use crate::catalog::{CatalogConfig, SqlDialect};
use crate::error::Result;
use crate::lease::{NODES_SCHEMA, db, db_now, open_catalog_db};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS unitable_write_requests (\
    table_uuid VARCHAR(64) NOT NULL, \
    request_id VARCHAR(255) NOT NULL, \
    state VARCHAR(16) NOT NULL, \
    owner VARCHAR(255) NOT NULL, \
    created_ms BIGINT NOT NULL, \
    claimed_ms BIGINT NOT NULL, \
    start_offsets TEXT, \
    outcome TEXT, \
    PRIMARY KEY (table_uuid, request_id))";

/// A request's row as `claim` reads it: state, owner, claimed_ms, start offsets, outcome, the
/// database's time, and whether the owner is a live member (a count).
type RequestRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// The longest a request id may be.
pub const MAX_REQUEST_ID_LEN: usize = 255;

/// What claiming a request id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time seen: this attempt owns it.
    New,
    /// An earlier attempt finished: its outcome, as recorded with [`RequestLog::finish`].
    Done(String),
    /// An earlier attempt is still running on a live node.
    InProgress {
        /// The node running it.
        owner: String,
        /// How long ago it was claimed.
        age_ms: i64,
    },
    /// An earlier attempt died or gave up without an outcome; this attempt took it over. With
    /// the offsets recorded before the earlier attempt appended (`None`: it appended nothing).
    Recover(Option<String>),
}

/// The request log in a SQL catalog's database.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pool: AnyPool,
    dialect: SqlDialect,
}

impl RequestLog {
    /// Connects to the database of the SQL catalog in `config`, creating the table if missing;
    /// `None` for a REST catalog.
    pub async fn connect(config: &CatalogConfig) -> Result<Option<Self>> {
        Ok(open_catalog_db(config, 4, &[NODES_SCHEMA, SCHEMA])
            .await?
            .map(|(pool, dialect)| Self { pool, dialect }))
    }

    fn sql(&self, text: &str) -> String {
        self.dialect
            .placeholders(&text.replace("{now}", db_now(self.dialect)))
    }

    /// Claims `request_id` of table `table_uuid` for an attempt on `node`. A pending claim is
    /// taken over when its node is not a live member (see [`crate::lease`]) or it is older
    /// than `in_flight`.
    pub async fn claim(
        &self,
        table_uuid: &str,
        request_id: &str,
        node: &str,
        in_flight: Duration,
    ) -> Result<Claim> {
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO unitable_write_requests \
             (table_uuid, request_id, state, owner, created_ms, claimed_ms) \
             VALUES ($1, $2, 'pending', $3, {now}, {now}) ON CONFLICT (table_uuid, request_id) DO NOTHING",
        ))
        .bind(table_uuid)
        .bind(request_id)
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("record a write request"))?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        let row: Option<RequestRow> = sqlx::query_as(&self.sql(
            "SELECT r.state, r.owner, r.claimed_ms, r.start_offsets, r.outcome, {now}, \
                 (SELECT COUNT(*) FROM unitable_nodes n \
                  WHERE n.node_id = r.owner AND n.expires_ms > {now}) \
                 FROM unitable_write_requests r WHERE r.table_uuid = $1 AND r.request_id = $2",
        ))
        .bind(table_uuid)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a write request"))?;
        let Some((state, owner, claimed_ms, start, outcome, now, owner_live)) = row else {
            // Expired between the insert and the read: claim it afresh.
            return Box::pin(self.claim(table_uuid, request_id, node, in_flight)).await;
        };
        if state == "done" {
            return Ok(Claim::Done(outcome.unwrap_or_default()));
        }
        let age_ms = now - claimed_ms;
        let in_flight_ms = i64::try_from(in_flight.as_millis()).unwrap_or(i64::MAX);
        if owner_live > 0 && claimed_ms > 0 && age_ms < in_flight_ms {
            return Ok(Claim::InProgress { owner, age_ms });
        }
        let taken = sqlx::query(&self.sql(
            "UPDATE unitable_write_requests SET owner = $1, claimed_ms = {now} \
             WHERE table_uuid = $2 AND request_id = $3 AND state = 'pending' \
             AND owner = $4 AND claimed_ms = $5",
        ))
        .bind(node)
        .bind(table_uuid)
        .bind(request_id)
        .bind(owner.as_str())
        .bind(claimed_ms)
        .execute(&self.pool)
        .await
        .map_err(db("take over a write request"))?;
        if taken.rows_affected() == 1 {
            Ok(Claim::Recover(start))
        } else {
            // Another retry took it over first.
            Ok(Claim::InProgress { owner, age_ms: 0 })
        }
    }

    /// Records the offsets the attempt's partitions had before it appends (only the first
    /// attempt's are kept: a recovering attempt must search from the earliest).
    pub async fn record_start(
        &self,
        table_uuid: &str,
        request_id: &str,
        offsets: &str,
    ) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE unitable_write_requests SET start_offsets = $1 \
             WHERE table_uuid = $2 AND request_id = $3 AND start_offsets IS NULL",
        ))
        .bind(offsets)
        .bind(table_uuid)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(db("record a write request's offsets"))?;
        Ok(())
    }

    /// Records the outcome of the request.
    pub async fn finish(&self, table_uuid: &str, request_id: &str, outcome: &str) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE unitable_write_requests SET state = 'done', outcome = $1 \
             WHERE table_uuid = $2 AND request_id = $3",
        ))
        .bind(outcome)
        .bind(table_uuid)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(db("record a write request's outcome"))?;
        Ok(())
    }

    /// The attempt failed without knowing what it appended: the next retry recovers at once.
    pub async fn abandon(&self, table_uuid: &str, request_id: &str) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE unitable_write_requests SET claimed_ms = 0 \
             WHERE table_uuid = $1 AND request_id = $2 AND state = 'pending'",
        ))
        .bind(table_uuid)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(db("give up a write request"))?;
        Ok(())
    }

    /// A node starting: the pending claims it holds belong to its previous life (it has
    /// claimed nothing yet), so retries may recover them at once.
    pub async fn abandon_all(&self, node: &str) -> Result<u64> {
        let done = sqlx::query(&self.sql(
            "UPDATE unitable_write_requests SET claimed_ms = 0 \
             WHERE owner = $1 AND state = 'pending'",
        ))
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("give up this node's earlier write requests"))?;
        Ok(done.rows_affected())
    }

    /// Forgets requests first seen more than `window` ago; returns how many.
    pub async fn expire(&self, window: Duration) -> Result<u64> {
        let done = sqlx::query(
            &self.sql("DELETE FROM unitable_write_requests WHERE created_ms < {now} - $1"),
        )
        .bind(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db("expire old write requests"))?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests;
