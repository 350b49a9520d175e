//! SNAPSHOT reads: one Iceberg snapshot, deletes applied, streamed batch by batch.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use futures::{Stream, StreamExt, TryStreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use unitable_core::commit::read::snapshot_as_of;
use unitable_core::naming::TableName;
use unitable_core::offsets::AsOf;
use unitable_core::table::TableDef;

use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::freshness::as_of;

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
    /// Which snapshot.
    pub snapshot: SnapshotSelector,
    /// Stop after this many rows.
    pub limit: Option<u64>,
}

/// Batches of a read, as they are produced.
pub type BatchStream = Pin<Box<dyn Stream<Item = ReadResult<RecordBatch>> + Send>>;

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

impl Reader {
    /// Starts a SNAPSHOT read.
    pub async fn snapshot(&self, request: &SnapshotRead) -> ReadResult<ReadStream> {
        let table = self.catalog.load(&request.table).await?;
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(request.table.clone(), metadata)?;
        let not_found = |what: String| ReadError::SnapshotNotFound {
            table: request.table.clone(),
            what,
        };
        let snapshot = match request.snapshot {
            SnapshotSelector::Latest => metadata.current_snapshot().cloned(),
            SnapshotSelector::Id(id) => {
                Some(metadata.snapshot_by_id(id).cloned().ok_or_else(|| {
                    not_found(format!("with id {id} (expired or never committed)"))
                })?)
            }
            SnapshotSelector::AsOf(ms) => Some(snapshot_as_of(metadata, ms).ok_or_else(|| {
                let at = chrono::DateTime::from_timestamp_millis(ms)
                    .map_or_else(|| ms.to_string(), |t| t.to_rfc3339());
                not_found(format!("as of {at} (before its first commit, or expired)"))
            })?),
        };
        let schema = match &snapshot {
            Some(s) => s
                .schema(metadata)
                .map_err(|e| ReadError::iceberg("the snapshot's schema", e))?,
            None => metadata.current_schema().clone(),
        };
        let full =
            schema_to_arrow_schema(&schema).map_err(|e| ReadError::iceberg("map the schema", e))?;
        let columns: Vec<String> = if request.columns.is_empty() {
            full.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            request.columns.clone()
        };
        let mut fields = Vec::with_capacity(columns.len());
        for name in &columns {
            let field = full
                .field_with_name(name)
                .map_err(|_| ReadError::BadRequest {
                    reason: format!(
                        "table `{}` has no column `{name}` (columns: {})",
                        request.table,
                        full.fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            fields.push(field.clone());
        }
        let out_schema: SchemaRef = Arc::new(Schema::new(fields));
        let as_of = as_of(
            self.changelog.as_ref(),
            &def.changelog.topic,
            def.changelog.partitions,
            metadata,
            snapshot.as_ref(),
        )
        .await;
        let Some(snapshot) = snapshot else {
            return Ok(ReadStream {
                as_of,
                schema: out_schema,
                batches: Box::pin(futures::stream::empty()),
            });
        };
        let scan = table
            .scan()
            .snapshot_id(snapshot.snapshot_id())
            .select(columns.iter().map(String::as_str))
            .build()
            .map_err(|e| ReadError::iceberg("plan the scan", e))?;
        let stream = scan
            .to_arrow()
            .await
            .map_err(|e| ReadError::iceberg("start the scan", e))?
            .map_err(|e| ReadError::iceberg("read data files", e));
        let batches: BatchStream = match request.limit {
            None => Box::pin(stream),
            Some(limit) => limited(Box::pin(stream), limit),
        };
        Ok(ReadStream {
            as_of,
            schema: out_schema,
            batches,
        })
    }
}

/// The first `limit` rows of `stream` (the last batch cut), then the end: the scan is dropped,
/// so no more files are read.
fn limited(stream: BatchStream, limit: u64) -> BatchStream {
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
