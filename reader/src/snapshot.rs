//! SNAPSHOT and FRESH reads: one Iceberg snapshot (deletes applied), and for FRESH the
//! changelog tail merged by key, streamed batch by batch.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use iceberg::spec::SnapshotRef;
use unitable_core::commit::read::snapshot_as_of;
use unitable_core::naming::TableName;
use unitable_core::offsets::AsOf;
use unitable_core::record::RecordCodec;
use unitable_core::table::TableDef;

use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::filter::RowFilter;
use crate::freshness;
use crate::pinned::{BatchStream, Part, Pinned, Tip, limited};

/// Which snapshot to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSelector {
    /// The current one.
    Latest,
    /// A snapshot by id.
    Id(i64),
    /// The one current at this time (ms since the epoch).
    AsOf(i64),
}

/// A SNAPSHOT read.
#[derive(Debug, Clone)]
pub struct SnapshotRead {
    /// The table.
    pub table: TableName,
    /// Columns to return, in this order; empty = all.
    pub columns: Vec<String>,
    /// Row filter, a SQL boolean expression over the table's columns.
    pub filter: Option<String>,
    /// Which snapshot.
    pub snapshot: SnapshotSelector,
    /// Stop after this many rows.
    pub limit: Option<u64>,
}

/// A FRESH read: the latest snapshot merged with every acknowledged write after it.
#[derive(Debug, Clone)]
pub struct FreshRead {
    /// The table.
    pub table: TableName,
    /// Columns to return, in this order; empty = all.
    pub columns: Vec<String>,
    /// Row filter, a SQL boolean expression over the table's columns.
    pub filter: Option<String>,
    /// Stop after this many rows.
    pub limit: Option<u64>,
    /// Serve the snapshot alone when the oldest write it lacks is at most this old.
    pub max_staleness: Option<Duration>,
}

/// A read about to stream: what it reflects, its schema, and the batches.
pub struct ReadStream {
    /// Which data is served.
    pub as_of: AsOf,
    /// The schema of every batch (also of an empty result).
    pub schema: SchemaRef,
    /// The batches.
    pub batches: BatchStream,
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("as_of", &self.as_of)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Counter of FRESH reads by where their changelog tail came from: `followed` (kept in memory
/// by a follower) or `changelog` (read and folded for the request).
const FRESH_TAILS: &str = "unitable_fresh_tails_total";

impl Reader {
    /// Pins a SNAPSHOT read of `table`.
    pub async fn pin_snapshot(
        &self,
        table: &TableName,
        selector: SnapshotSelector,
    ) -> ReadResult<Pinned> {
        let loaded = self.catalog.load(table).await?;
        let snapshot = select(table, loaded.metadata(), selector)?;
        self.pin(table, loaded, snapshot, Tip::Snapshot).await
    }

    /// Pins a FRESH read of `table`: the latest snapshot plus the changelog up to its heads
    /// now, or the snapshot alone when it lags by at most `max_staleness`.
    pub async fn pin_fresh(
        &self,
        table: &TableName,
        max_staleness: Option<Duration>,
    ) -> ReadResult<Pinned> {
        // The table first, then the heads: every write acknowledged before this request is
        // below the heads, and the snapshot's anchored offsets are at or below them.
        let loaded = self.catalog.load(table).await?;
        let def = TableDef::from_iceberg(table.clone(), loaded.metadata())?;
        let to = freshness::heads(
            self.changelog.as_ref(),
            &def.changelog.topic,
            def.changelog.partitions,
        )
        .await?;
        let snapshot = loaded.metadata().current_snapshot().cloned();
        if let Some(max) = max_staleness {
            let pinned = self
                .pin(table, loaded.clone(), snapshot.clone(), Tip::Snapshot)
                .await?;
            if u128::from(pinned.as_of.lag_ms.max(0) as u64) <= max.as_millis() {
                return Ok(pinned);
            }
        }
        // Keyed tables: the tail a follower keeps in memory, when it can serve.
        let codec = Arc::new(RecordCodec::of_table(&def, loaded.metadata())?);
        let followed = self
            .followed
            .read(&loaded, &def, &codec, &to, &self.catalog, &self.changelog)
            .await?;
        let source = if followed.is_some() {
            "followed"
        } else {
            "changelog"
        };
        metrics::counter!(FRESH_TAILS, "table" => table.to_string(), "source" => source)
            .increment(1);
        if let Some(f) = followed {
            let tip = Tip::Followed {
                to: f.to,
                tail: f.tail,
            };
            return self.pin(table, loaded, f.snapshot, tip).await;
        }
        self.pin(table, loaded, snapshot, Tip::Fresh { to }).await
    }

    /// Starts a SNAPSHOT read.
    pub async fn snapshot(&self, request: &SnapshotRead) -> ReadResult<ReadStream> {
        let pinned = self.pin_snapshot(&request.table, request.snapshot).await?;
        stream(
            pinned,
            &request.columns,
            request.filter.as_deref(),
            request.limit,
            Part::Whole,
        )
        .await
    }

    /// Starts a FRESH read.
    pub async fn fresh(&self, request: &FreshRead) -> ReadResult<ReadStream> {
        let pinned = self
            .pin_fresh(&request.table, request.max_staleness)
            .await?;
        stream(
            pinned,
            &request.columns,
            request.filter.as_deref(),
            request.limit,
            Part::Whole,
        )
        .await
    }
}

/// `filter` (SQL text; blank: none) parsed against `pinned`, and its Iceberg push-down.
pub(crate) fn parse_filter(
    pinned: &Pinned,
    filter: Option<&str>,
) -> ReadResult<(Option<RowFilter>, Option<iceberg::expr::Predicate>)> {
    let filter = filter
        .filter(|f| !f.trim().is_empty())
        .map(|f| RowFilter::parse(f, pinned.schema()))
        .transpose()?;
    let predicate = filter.as_ref().and_then(|f| pinned.pushdown(f));
    Ok((filter, predicate))
}

pub(crate) async fn stream(
    pinned: Pinned,
    columns: &[String],
    filter: Option<&str>,
    limit: Option<u64>,
    part: Part,
) -> ReadResult<ReadStream> {
    let schema = pinned.output_schema(columns)?;
    let (filter, predicate) = parse_filter(&pinned, filter)?;
    let batches = pinned
        .part_batches(columns, filter.as_ref(), predicate, part)
        .await?;
    let batches = match limit {
        None => batches,
        Some(limit) => limited(batches, limit),
    };
    Ok(ReadStream {
        as_of: pinned.as_of.clone(),
        schema,
        batches,
    })
}

/// The snapshot `selector` picks (`None`: the table has no snapshot and the latest is asked).
pub(crate) fn select(
    table: &TableName,
    metadata: &iceberg::spec::TableMetadata,
    selector: SnapshotSelector,
) -> ReadResult<Option<SnapshotRef>> {
    let not_found = |what: String| ReadError::SnapshotNotFound {
        table: table.clone(),
        what,
    };
    Ok(match selector {
        SnapshotSelector::Latest => metadata.current_snapshot().cloned(),
        SnapshotSelector::Id(id) => Some(
            metadata
                .snapshot_by_id(id)
                .cloned()
                .ok_or_else(|| not_found(format!("with id {id} (expired or never committed)")))?,
        ),
        SnapshotSelector::AsOf(ms) => Some(snapshot_as_of(metadata, ms).ok_or_else(|| {
            let at = chrono::DateTime::from_timestamp_millis(ms)
                .map_or_else(|| ms.to_string(), |t| t.to_rfc3339());
            not_found(format!("as of {at} (before its first commit, or expired)"))
        })?),
    })
}
