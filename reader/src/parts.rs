//! Reads in parts: a SNAPSHOT or FRESH read planned once, then served as separate parts that
//! clients fetch in parallel, on any connection, at any time while the data is kept.
//!
//! Planning pins the read (snapshot id, and for FRESH the changelog heads) and splits the
//! pinned scan's data files into groups of about equal bytes ([`split_files`]). Each
//! [`ReadPart`] names everything needed to serve it again: the table (and its uuid, so a table
//! dropped and created again is noticed), the pinned snapshot and changelog end, projection,
//! filter, and which group of how many. Serving a part re-pins exactly that data
//! ([`Reader::repin`]), plans the same scan again (the same snapshot and predicate give the
//! same files, so the same groups) and reads its group. For FRESH every part reads the
//! changelog tail (from the snapshot's anchored offsets to the pinned end) to drop the
//! snapshot rows it supersedes, and part 0 also returns the tail's live rows: the parts
//! together are exactly one FRESH read, each row in one part.
//!
//! [`split_files`]: unitable_core::scan::split_files

use arrow::datatypes::SchemaRef;
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, PartitionOffsets};

use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::pinned::{Part, Pinned, Tip};
use crate::snapshot::{FreshRead, ReadStream, SnapshotRead, parse_filter, stream};

/// Exactly which data a pinned read serves, enough to pin it again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSpec {
    /// The table.
    pub table: TableName,
    /// The table's uuid when the read was pinned.
    pub table_uuid: String,
    /// The table's current schema id when the read was pinned (FRESH reads use it).
    pub schema_id: i32,
    /// The snapshot read; `None` when the table had none.
    pub snapshot_id: Option<i64>,
    /// FRESH: the changelog's exclusive end per partition merged onto the snapshot; `None`
    /// for the snapshot alone.
    pub fresh_to: Option<PartitionOffsets>,
}

/// One part of a planned read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPart {
    /// What the read is pinned to.
    pub pin: PinSpec,
    /// Columns to return, in this order; empty = all.
    pub columns: Vec<String>,
    /// Row filter, a SQL boolean expression over the table's columns.
    pub filter: Option<String>,
    /// Stop after this many rows (a read with a limit is planned as one part).
    pub limit: Option<u64>,
    /// Which group of data files, `0..groups`.
    pub group: u32,
    /// How many groups the read's files were split into.
    pub groups: u32,
}

/// A read planned in parts.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// Which data the parts together serve.
    pub as_of: AsOf,
    /// The schema of every part's batches.
    pub schema: SchemaRef,
    /// The parts; together they are the whole read.
    pub parts: Vec<ReadPart>,
}

impl Pinned {
    /// What this read is pinned to, to pin it again with [`Reader::repin`]. A FRESH read
    /// served from a followed tail is pinned again by reading the same changelog range.
    pub fn spec(&self) -> PinSpec {
        let metadata = self.table.metadata();
        PinSpec {
            table: self.name.clone(),
            table_uuid: metadata.uuid().to_string(),
            schema_id: metadata.current_schema_id(),
            snapshot_id: self.snapshot.as_ref().map(|s| s.snapshot_id()),
            fresh_to: match &self.tip {
                Tip::Snapshot => None,
                Tip::Fresh { to } | Tip::Followed { to, .. } => Some(to.clone()),
            },
        }
    }
}

impl Reader {
    /// Plans a SNAPSHOT read in at most `max_parts` parts (one per group of data files).
    pub async fn plan_snapshot(
        &self,
        request: &SnapshotRead,
        max_parts: usize,
    ) -> ReadResult<ReadPlan> {
        let pinned = self.pin_snapshot(&request.table, request.snapshot).await?;
        plan(
            pinned,
            &request.columns,
            request.filter.as_deref(),
            request.limit,
            max_parts,
        )
        .await
    }

    /// Plans a FRESH read in at most `max_parts` parts.
    pub async fn plan_fresh(&self, request: &FreshRead, max_parts: usize) -> ReadResult<ReadPlan> {
        let pinned = self
            .pin_fresh(&request.table, request.max_staleness)
            .await?;
        plan(
            pinned,
            &request.columns,
            request.filter.as_deref(),
            request.limit,
            max_parts,
        )
        .await
    }

    /// Starts reading one part of a planned read.
    pub async fn read_part(&self, part: &ReadPart) -> ReadResult<ReadStream> {
        if part.groups == 0 || part.group >= part.groups {
            return Err(ReadError::BadRequest {
                reason: format!("part {} of {} does not exist", part.group, part.groups),
            });
        }
        let pinned = self.repin(&part.pin).await?;
        stream(
            pinned,
            &part.columns,
            part.filter.as_deref(),
            part.limit,
            Part::Group {
                index: part.group as usize,
                count: part.groups as usize,
            },
        )
        .await
    }

    /// Pins exactly what `spec` names again: the same snapshot, and for FRESH the changelog
    /// from its anchored offsets up to the same end. Fails with [`ReadError::PlanStale`] when
    /// the table was dropped and created again (or, for FRESH, its schema changed), with
    /// [`ReadError::SnapshotNotFound`] when the snapshot was expired.
    pub async fn repin(&self, spec: &PinSpec) -> ReadResult<Pinned> {
        let table = &spec.table;
        let loaded = self.catalog.load(table).await?;
        let metadata = loaded.metadata();
        let stale = |reason: &str| ReadError::PlanStale {
            table: table.clone(),
            reason: reason.into(),
        };
        if metadata.uuid().to_string() != spec.table_uuid {
            return Err(stale("the table was dropped and created again"));
        }
        let snapshot = match spec.snapshot_id {
            None => None,
            Some(id) => Some(metadata.snapshot_by_id(id).cloned().ok_or_else(|| {
                ReadError::SnapshotNotFound {
                    table: table.clone(),
                    what: format!("with id {id} (expired since the read was planned)"),
                }
            })?),
        };
        let tip = match &spec.fresh_to {
            None => Tip::Snapshot,
            Some(to) => {
                if metadata.current_schema_id() != spec.schema_id {
                    return Err(stale("the table's schema changed"));
                }
                Tip::Fresh { to: to.clone() }
            }
        };
        self.pin(table, loaded, snapshot, tip).await
    }
}

async fn plan(
    pinned: Pinned,
    columns: &[String],
    filter: Option<&str>,
    limit: Option<u64>,
    max_parts: usize,
) -> ReadResult<ReadPlan> {
    // Check the projection and the filter now: a bad request fails when planned.
    let schema = pinned.output_schema(columns)?;
    let (_, predicate) = parse_filter(&pinned, filter)?;
    let files = pinned.files(predicate).await?;
    // A limit spans the whole read, so a limited read is one part.
    let groups = match limit {
        Some(_) => 1,
        None => max_parts.clamp(1, files.len().max(1)),
    };
    let spec = pinned.spec();
    let parts = (0..groups as u32)
        .map(|group| ReadPart {
            pin: spec.clone(),
            columns: columns.to_vec(),
            filter: filter.map(str::to_string),
            limit,
            group,
            groups: groups as u32,
        })
        .collect();
    Ok(ReadPlan {
        as_of: pinned.as_of.clone(),
        schema,
        parts,
    })
}
