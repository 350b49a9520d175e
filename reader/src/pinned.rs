//! A read pinned to exactly what it serves: one Iceberg snapshot, and for FRESH reads also the
//! changelog up to the high watermarks seen when the read started. SNAPSHOT, FRESH, STREAM's
//! snapshot phase and SQL all scan through [`Pinned::batches`], so every mode applies
//! projection, filters and the tail merge the same way.
//!
//! FRESH merge: the tail (records from the snapshot's anchored offsets up to the pinned heads)
//! is folded to the last change per key first; snapshot rows whose key the tail touches are
//! dropped while scanning; the tail's live rows follow the snapshot's. Deletes in the tail thus
//! remove rows, and upserts replace them, exactly as the committer will when it catches up.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{Field, SchemaRef};
use futures::{Stream, StreamExt, TryStreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::expr::Predicate;
use iceberg::spec::{PrimitiveType, SnapshotRef};
use iceberg::table::Table;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use unitable_core::commit::read::anchored_offsets;
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, PartitionOffsets};
use unitable_core::record::RecordCodec;
use unitable_core::scan::{ScanOptions, plan_scan, read_files, split_files};
use unitable_core::table::TableDef;

use crate::error::{ReadError, ReadResult};
use crate::filter::{BoundFilter, RowFilter, project_schema};
use crate::tail::{Tail, read_tail};
use crate::{Reader, freshness};

/// Rows per scanned batch (and so per streamed message): DataFusion's default, large enough
/// that per-message costs vanish, small enough to stream.
const SCAN_BATCH_ROWS: usize = 8192;

/// Which part of a pinned read to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of it.
    Whole,
    /// Group `index` of the pinned scan's data files split into `count` groups
    /// ([`unitable_core::scan::split_files`]); group 0 also carries the changelog tail's rows.
    /// The groups of one pinned read together are the whole read, each row in exactly one.
    Group {
        /// Which group, `0..count`.
        index: usize,
        /// How many groups the files were split into.
        count: usize,
    },
}

/// Batches of a read, as they are produced.
pub type BatchStream = Pin<Box<dyn Stream<Item = ReadResult<RecordBatch>> + Send>>;

/// What a pinned read serves besides its snapshot.
#[derive(Debug, Clone)]
pub(crate) enum Tip {
    /// The snapshot alone.
    Snapshot,
    /// The snapshot plus the changelog from its anchored offsets up to `to`.
    Fresh {
        /// Exclusive end per partition.
        to: PartitionOffsets,
    },
    /// The snapshot plus its changelog tail as a follower keeps it (`crate::followed`).
    Followed {
        /// Exclusive end per partition of what the tail covers.
        to: PartitionOffsets,
        tail: Arc<Tail>,
    },
}

/// A table read pinned to a snapshot (and a changelog position). Cheap to clone; every
/// [`Pinned::batches`] call reads the same data.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub(crate) name: TableName,
    pub(crate) table: Table,
    pub(crate) def: TableDef,
    pub(crate) codec: Arc<RecordCodec>,
    pub(crate) snapshot: Option<SnapshotRef>,
    /// Every column served, in table order: the snapshot's schema for SNAPSHOT reads, the
    /// current schema for FRESH ones.
    pub(crate) schema: SchemaRef,
    pub(crate) tip: Tip,
    /// What the read reflects.
    pub as_of: AsOf,
    reader: Reader,
}

impl Reader {
    /// Pins a read of `snapshot` (`None`: the table has no snapshot yet) of a loaded table.
    pub(crate) async fn pin(
        &self,
        name: &TableName,
        table: Table,
        snapshot: Option<SnapshotRef>,
        tip: Tip,
    ) -> ReadResult<Pinned> {
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(name.clone(), metadata)?;
        let codec = Arc::new(RecordCodec::of_table(&def, metadata)?);
        // A snapshot before the current one (time travel) reads with the schema it was
        // written with, as Iceberg engines do; everything else with the current schema (the
        // current snapshot may predate the latest column changes).
        let schema = match (&tip, &snapshot) {
            (Tip::Snapshot, Some(s)) if metadata.current_snapshot_id() != Some(s.snapshot_id()) => {
                s.schema(metadata)
                    .map_err(|e| ReadError::iceberg("the snapshot's schema", e))?
            }
            _ => metadata.current_schema().clone(),
        };
        let schema = Arc::new(
            schema_to_arrow_schema(&schema).map_err(|e| ReadError::iceberg("map the schema", e))?,
        );
        let offsets = match &tip {
            Tip::Snapshot => snapshot
                .as_ref()
                .map_or_else(PartitionOffsets::default, |s| {
                    anchored_offsets(metadata, s.snapshot_id())
                }),
            Tip::Fresh { to } | Tip::Followed { to, .. } => to.clone(),
        };
        let as_of = freshness::as_of(
            self.changelog.as_ref(),
            &def.changelog.topic,
            def.changelog.partitions,
            offsets,
            snapshot.as_ref(),
        )
        .await;
        Ok(Pinned {
            name: name.clone(),
            table,
            def,
            codec,
            snapshot,
            schema,
            tip,
            as_of,
            reader: self.clone(),
        })
    }
}

impl Pinned {
    /// Every column served.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The schema of [`Pinned::batches`] for `columns` (empty: all).
    pub fn output_schema(&self, columns: &[String]) -> ReadResult<SchemaRef> {
        if columns.is_empty() {
            return Ok(self.schema.clone());
        }
        project_schema(&self.schema, columns).map_err(|e| self.name_error(e))
    }

    fn name_error(&self, e: ReadError) -> ReadError {
        match e {
            ReadError::BadRequest { reason } => ReadError::BadRequest {
                reason: format!("table `{}` has {reason}", self.name),
            },
            other => other,
        }
    }

    /// The Iceberg type of a column of the pinned snapshot, for filter push-down; `None` (no
    /// push-down) unless the current schema has the snapshot's column of that name under the
    /// same name and type (the pushed predicate names columns as the snapshot's schema does,
    /// so neither a column renamed since nor another that took its name may prune).
    pub(crate) fn column_type(&self, name: &str) -> Option<PrimitiveType> {
        let snapshot = self.snapshot.as_ref()?;
        let schema = snapshot.schema(self.table.metadata()).ok()?;
        let field = schema.field_by_name(name)?;
        // The same column, of the same type (a literal of a widened column may not fit the
        // narrower type of the snapshot's files).
        let current = self
            .table
            .metadata()
            .current_schema()
            .field_by_id(field.id)?;
        if current.name != name || current.field_type != field.field_type {
            return None;
        }
        field.field_type.as_primitive_type().cloned()
    }

    /// The part of `filter` Iceberg can prune with.
    pub(crate) fn pushdown(&self, filter: &RowFilter) -> Option<Predicate> {
        filter.pushdown(&|name| self.column_type(name))
    }

    /// The pinned rows: `columns` (empty: all) of the rows passing `filter`, with `predicate`
    /// (which must keep a superset of them) pushed into the scan.
    pub async fn batches(
        &self,
        columns: &[String],
        filter: Option<&RowFilter>,
        predicate: Option<Predicate>,
    ) -> ReadResult<BatchStream> {
        self.part_batches(columns, filter, predicate, Part::Whole)
            .await
    }

    /// The data files (with their deletes) a scan of the pinned snapshot reads with
    /// `predicate` pushed down; none when the table has no snapshot.
    pub async fn files(
        &self,
        predicate: Option<Predicate>,
    ) -> ReadResult<Vec<iceberg::scan::FileScanTask>> {
        let Some(snapshot) = &self.snapshot else {
            return Ok(Vec::new());
        };
        let mut scan = self
            .table
            .scan()
            .snapshot_id(snapshot.snapshot_id())
            .select_empty();
        if let Some(predicate) = predicate {
            scan = scan.with_filter(predicate);
        }
        let scan = scan
            .build()
            .map_err(|e| ReadError::iceberg("plan the scan", e))?;
        plan_scan(&scan)
            .await
            .map_err(|e| ReadError::iceberg("plan the scan", e))
    }

    /// [`Pinned::batches`] of one part of the read.
    pub async fn part_batches(
        &self,
        columns: &[String],
        filter: Option<&RowFilter>,
        predicate: Option<Predicate>,
        part: Part,
    ) -> ReadResult<BatchStream> {
        let out_schema = self.output_schema(columns)?;
        let tail: Option<Arc<Tail>> = match &self.tip {
            Tip::Snapshot => None,
            Tip::Followed { tail, .. } => Some(tail.clone()),
            Tip::Fresh { to } => {
                let from = self
                    .snapshot
                    .as_ref()
                    .map_or_else(PartitionOffsets::default, |s| {
                        anchored_offsets(self.table.metadata(), s.snapshot_id())
                    });
                Some(Arc::new(
                    read_tail(
                        self.reader.changelog.as_ref(),
                        &self.codec,
                        &self.def.changelog.topic,
                        &from,
                        to,
                    )
                    .await?,
                ))
            }
        };
        // Columns to read: the output, what the filter reads, and the key for the tail merge.
        let mut needed: Vec<String> = Vec::new();
        for field in self.schema.fields() {
            let name = field.name();
            let wanted = out_schema.field_with_name(name).is_ok()
                || filter.is_some_and(|f| f.columns().contains(name))
                || (tail.is_some() && self.def.primary_key.contains(name));
            if wanted {
                needed.push(name.clone());
            }
        }
        let scan_schema = project_schema(&self.schema, &needed)?;
        let step = Arc::new(Step {
            scan_schema: scan_schema.clone(),
            out_schema: out_schema.clone(),
            filter: filter.map(|f| f.bind(&scan_schema)).transpose()?,
            keys: tail.clone().filter(|t| !t.keys.is_empty()),
            key_columns: self
                .def
                .primary_key
                .iter()
                .filter_map(|k| scan_schema.index_of(k).ok())
                .collect(),
            codec: self.codec.clone(),
        });
        let snapshot_rows: BatchStream = match &self.snapshot {
            None => Box::pin(futures::stream::empty()),
            Some(snapshot) => {
                // The needed columns by field id, named as the snapshot's schema names them
                // (a column renamed since has its old name there; one added since is absent).
                let in_snapshot: Vec<String> = match snapshot.schema(self.table.metadata()) {
                    Ok(s) => needed
                        .iter()
                        .filter_map(|n| {
                            let field = self.schema.field_with_name(n).ok()?;
                            match field_id(field) {
                                Some(id) => s.field_by_id(id).map(|f| f.name.clone()),
                                None => s.field_by_name(n).map(|f| f.name.clone()),
                            }
                        })
                        .collect(),
                    Err(e) => return Err(ReadError::iceberg("the snapshot's schema", e)),
                };
                let mut scan = self
                    .table
                    .scan()
                    .snapshot_id(snapshot.snapshot_id())
                    .select(in_snapshot);
                if let Some(predicate) = predicate {
                    scan = scan.with_filter(predicate);
                }
                let scan = scan
                    .build()
                    .map_err(|e| ReadError::iceberg("plan the scan", e))?;
                let step = step.clone();
                let options = ScanOptions {
                    batch_size: Some(SCAN_BATCH_ROWS),
                    ..ScanOptions::default()
                };
                let files = plan_scan(&scan)
                    .await
                    .map_err(|e| ReadError::iceberg("plan the scan", e))?;
                let files = match part {
                    Part::Whole => files,
                    Part::Group { index, count } => {
                        let planned = files.len();
                        let mut groups = split_files(files, count);
                        // The groups were counted on the same snapshot and predicate, so the
                        // plan has at least as many files as groups (or none at all).
                        if index >= count || (planned > 0 && groups.len() != count) {
                            return Err(ReadError::BadRequest {
                                reason: format!(
                                    "part {index} of {count} does not exist: the scan of \
                                     table `{}` has {planned} data files",
                                    self.name
                                ),
                            });
                        }
                        if index < groups.len() {
                            groups.swap_remove(index)
                        } else {
                            Vec::new()
                        }
                    }
                };
                Box::pin(
                    read_files(&self.table, files, options)
                        .map_err(|e| ReadError::iceberg("start the scan", e))?
                        .map_err(|e| ReadError::iceberg("read data files", e))
                        .and_then(move |batch| {
                            let step = step.clone();
                            async move { step.snapshot_batch(&batch) }
                        }),
                )
            }
        };
        let with_tail = matches!(part, Part::Whole | Part::Group { index: 0, .. });
        // The tail's rows in scan-sized slices, so sending them overlaps converting the next.
        let live = tail
            .as_ref()
            .filter(|_| with_tail)
            .map(|t| t.live.clone())
            .unwrap_or_default();
        let slices = live.into_iter().flat_map(|live| {
            (0..live.num_rows())
                .step_by(SCAN_BATCH_ROWS)
                .map(move |at| live.slice(at, SCAN_BATCH_ROWS.min(live.num_rows() - at)))
        });
        let tail_rows = futures::stream::iter(slices).then(move |slice| {
            let step = step.clone();
            async move { step.tail_batch(&slice) }
        });
        Ok(Box::pin(
            snapshot_rows
                .chain(tail_rows)
                .try_filter(|b| futures::future::ready(b.num_rows() > 0)),
        ))
    }
}

/// Per-batch work of a pinned read.
struct Step {
    scan_schema: SchemaRef,
    out_schema: SchemaRef,
    filter: Option<BoundFilter>,
    /// The tail, when it changed keys: their snapshot rows are superseded.
    keys: Option<Arc<Tail>>,
    /// Indexes of the key columns in `scan_schema`.
    key_columns: Vec<usize>,
    codec: Arc<RecordCodec>,
}

impl Step {
    fn snapshot_batch(&self, batch: &RecordBatch) -> ReadResult<RecordBatch> {
        let mut batch = conform(batch, &self.scan_schema)?;
        if let Some(keys) = self.keys.as_ref().map(|t| &t.keys) {
            let key_batch = batch
                .project(&self.key_columns)
                .map_err(|e| internal("project the key columns", e))?;
            let mut keep = vec![true; batch.num_rows()];
            let dropped = keys.supersede(&self.codec, &key_batch, &mut keep)?;
            // Most batches lose no row to a short tail: those are passed on without a copy.
            if dropped > 0 {
                batch = filter_record_batch(&batch, &keep.into())
                    .map_err(|e| internal("drop superseded rows", e))?;
            }
        }
        self.finish(batch)
    }

    fn tail_batch(&self, live: &RecordBatch) -> ReadResult<RecordBatch> {
        let batch = conform(live, &self.scan_schema)?;
        self.finish(batch)
    }

    fn finish(&self, batch: RecordBatch) -> ReadResult<RecordBatch> {
        let batch = match &self.filter {
            Some(f) => f.apply(&batch)?,
            None => batch,
        };
        conform(&batch, &self.out_schema)
    }
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ReadError {
    ReadError::Internal {
        reason: format!("{what}: {e}"),
    }
}

/// The Iceberg field id in an Arrow field's `PARQUET:field_id` metadata.
fn field_id(field: &Field) -> Option<i32> {
    field
        .metadata()
        .get(PARQUET_FIELD_ID_META_KEY)?
        .parse()
        .ok()
}

/// `batch` with exactly the fields of `schema`: columns by Iceberg field id (by name where
/// either side has none), so a column renamed since the data was written is found; cast where
/// the type differs (a decoded changelog row vs. a Parquet column, a widened column); all-null
/// where the column is newer than the data.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> ReadResult<RecordBatch> {
    let rows = batch.num_rows();
    let source = batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let by_id = field_id(field).and_then(|id| {
            source
                .fields()
                .iter()
                .position(|f| field_id(f) == Some(id))
                .map(|i| batch.column(i))
        });
        // Same name but another field id: another column (dropped and added again).
        let found = by_id.or_else(|| {
            let (i, f) = source.column_with_name(field.name())?;
            (field_id(f).is_none() || field_id(field).is_none()).then(|| batch.column(i))
        });
        let column = match found {
            Some(c) if c.data_type() == field.data_type() => c.clone(),
            Some(c) => cast(c, field.data_type())
                .map_err(|e| internal(&format!("convert column `{}`", field.name()), e))?,
            None => new_null_array(field.data_type(), rows),
        };
        columns.push(column);
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| internal("assemble a batch", e))
}

/// Keeps at most `limit` rows of `stream`, then ends it (dropping the scan).
pub(crate) fn limited(stream: BatchStream, limit: u64) -> BatchStream {
    Box::pin(futures::stream::unfold(
        (stream, limit),
        |(mut stream, left)| async move {
            if left == 0 {
                return None;
            }
            match stream.next().await? {
                Ok(b) if b.num_rows() as u64 > left => {
                    Some((Ok(b.slice(0, left as usize)), (stream, 0)))
                }
                Ok(b) => {
                    let rows = b.num_rows() as u64;
                    Some((Ok(b), (stream, left - rows)))
                }
                Err(e) => Some((Err(e), (stream, 0))),
            }
        },
    ))
}
