//! Reading planned Parquet data files straight through parquet's async reader.
//!
//! iceberg-rust's `ArrowReader` decodes every file of a stream on the task that polls it, and
//! runs each batch through its schema transformer; measured on `read-bench`'s files (4 files,
//! 2M rows, 2 cores) it read at the speed of one core: 213 ms, where parquet's own reader on
//! two threads takes 97 ms (docs/benchmarks.md, "SNAPSHOT scan at parquet's speed").
//!
//! This reader takes the files a plan made and, for the common case, does the work itself:
//! - a file is read by parquet's async reader over the table's `FileIO` (local or object
//!   storage), the projected columns matched to the file's columns by Iceberg field id;
//! - position deletes become a row selection, so deleted rows are never decoded; each delete
//!   file is loaded once per read (a `OnceCell` per file: whoever comes second waits on it);
//! - each lane of files runs on a task of its own, so lanes decode on different cores, and
//!   sends its batches through a small channel (back-pressure: a slow client stops the read).
//!
//! A file the fast path cannot read exactly as iceberg-rust would (a filter to apply, equality
//! deletes, a split file, a column missing from the file or of another type, nested columns)
//! is read by iceberg-rust's `ArrowReader` in the same lane, one file at a time (which also
//! keeps clear of its shared delete cache's lost wake-up, see the parent module).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use futures::{StreamExt, stream};
use iceberg::arrow::{ArrowFileReader, ArrowReaderBuilder, schema_to_arrow_schema};
use iceberg::io::{FileIO, FileMetadata};
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::{DataContentType, DataFileFormat, NestedFieldRef, Schema};
use iceberg::{Error, ErrorKind, Runtime};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use tokio::sync::{OnceCell, mpsc};

use crate::commit::CommitError;
use crate::commit::files::read_bytes;
use crate::commit::plan::decode_position_deletes;

/// Batches a lane may have decoded ahead of the consumer.
const LANE_QUEUE: usize = 4;

/// Rows per batch when the caller does not say (parquet's default is 1024).
const DEFAULT_BATCH_ROWS: usize = 8192;

/// Reads `lanes` (groups of planned files) on one task per lane, as the module docs say. The
/// tasks start when the stream is first polled, on the runtime that polls it: a server builds
/// the stream on its request runtime and drains it on its read runtime, where decoding belongs.
pub(super) fn read_lanes(
    file_io: FileIO,
    lanes: Vec<Vec<FileScanTask>>,
    batch_size: Option<usize>,
) -> ArrowRecordBatchStream {
    let start = async move {
        let runtime = Runtime::try_current()?;
        let deletes = Arc::new(DeleteCache::default());
        let (tx, rx) = mpsc::channel(LANE_QUEUE * lanes.len().max(1));
        let mut tasks = Vec::with_capacity(lanes.len());
        for files in lanes {
            let lane = Lane {
                file_io: file_io.clone(),
                runtime: runtime.clone(),
                deletes: deletes.clone(),
                batch_size: batch_size.unwrap_or(DEFAULT_BATCH_ROWS),
                tx: tx.clone(),
            };
            tasks.push(tokio::spawn(lane.run(files)));
        }
        Ok::<_, Error>((rx, AbortLanes(tasks)))
    };
    stream::once(start)
        .flat_map(|started| match started {
            Ok(lanes) => stream::unfold(lanes, |(mut rx, guard)| async move {
                let next = rx.recv().await?;
                Some((next, (rx, guard)))
            })
            .boxed(),
            Err(e) => stream::iter([Err(e)]).boxed(),
        })
        .boxed()
}

/// Aborts the lanes when the stream of their batches is dropped.
struct AbortLanes(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortLanes {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One lane: its files read one after the other, batches sent to the shared channel.
struct Lane {
    file_io: FileIO,
    runtime: Runtime,
    deletes: Arc<DeleteCache>,
    batch_size: usize,
    tx: mpsc::Sender<iceberg::Result<RecordBatch>>,
}

impl Lane {
    async fn run(self, files: Vec<FileScanTask>) {
        for file in files {
            let mut batches = match self.open(file).await {
                Ok(batches) => batches,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = batches.next().await {
                let failed = batch.is_err();
                // A closed channel: the reader is gone, stop reading.
                if self.tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        }
    }

    /// The batches of one file: through parquet directly when the file allows it, else
    /// through iceberg-rust's reader.
    async fn open(&self, file: FileScanTask) -> iceberg::Result<ArrowRecordBatchStream> {
        if let Some((builder, columns)) = direct(&self.file_io, &file).await? {
            let deleted = self.deleted_positions(&file).await?;
            let total: usize = builder
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows() as usize)
                .sum();
            let mask = ProjectionMask::leaves(builder.parquet_schema(), columns.leaves.clone());
            let mut builder = builder
                .with_projection(mask)
                .with_batch_size(self.batch_size);
            if !deleted.is_empty() {
                builder = builder.with_row_selection(selection(&deleted, total));
            }
            let path = file.data_file_path.clone();
            let stream = builder
                .build()
                .map_err(|e| parquet_error(&path, e))?
                .map(move |batch| {
                    let batch = batch.map_err(|e| parquet_error(&path, e))?;
                    columns.arrange(&batch)
                });
            return Ok(stream.boxed());
        }
        let reader = ArrowReaderBuilder::new(self.file_io.clone(), self.runtime.clone())
            .with_data_file_concurrency_limit(1)
            .with_batch_size(self.batch_size)
            .build();
        Ok(reader.read(stream::iter([Ok(file)]).boxed())?.stream())
    }

    /// The sorted positions deleted from `file` by its position delete files.
    async fn deleted_positions(&self, file: &FileScanTask) -> iceberg::Result<Vec<u64>> {
        let mut out = Vec::new();
        for delete in &file.deletes {
            let positions = self.deletes.load(&self.file_io, &delete.file_path).await?;
            for &pos in positions.get(&file.data_file_path).into_iter().flatten() {
                out.push(u64::try_from(pos).map_err(|_| {
                    Error::new(
                        ErrorKind::DataInvalid,
                        format!("{} deletes position {pos} of a file", delete.file_path),
                    )
                })?);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// A reader of `file` and where its columns are, when the fast path may read it.
async fn direct(
    file_io: &FileIO,
    file: &FileScanTask,
) -> iceberg::Result<Option<(ParquetRecordBatchStreamBuilder<ArrowFileReader>, Columns)>> {
    let Some(target) = fast_target(file)? else {
        return Ok(None);
    };
    let input = file_io.new_input(&file.data_file_path)?;
    let meta = FileMetadata {
        size: file.file_size_in_bytes,
    };
    let reader = ArrowFileReader::new(meta, input.reader().await?);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| parquet_error(&file.data_file_path, e))?;
    Ok(match_columns(&builder, &target)?.map(|columns| (builder, columns)))
}

/// Whether [`read_lanes`] reads `file` through parquet directly (for tests).
#[cfg(test)]
pub(super) async fn reads_directly(file_io: &FileIO, file: &FileScanTask) -> bool {
    direct(file_io, file).await.unwrap().is_some()
}

/// The Arrow schema iceberg-rust gives `file`'s batches, when the fast path may read it: a
/// whole Parquet file, no filter, position deletes only, top-level primitive columns.
fn fast_target(file: &FileScanTask) -> iceberg::Result<Option<ArrowSchemaRef>> {
    let whole = file.start == 0 && (file.length == 0 || file.length >= file.file_size_in_bytes);
    let plain_deletes = file
        .deletes
        .iter()
        .all(|d| d.file_type == DataContentType::PositionDeletes);
    if file.data_file_format != DataFileFormat::Parquet
        || file.predicate.is_some()
        || !whole
        || !plain_deletes
    {
        return Ok(None);
    }
    let mut fields: Vec<NestedFieldRef> = Vec::with_capacity(file.project_field_ids.len());
    for id in &file.project_field_ids {
        match file.schema.field_by_id(*id) {
            Some(field) if field.field_type.is_primitive() => fields.push(field.clone()),
            _ => return Ok(None),
        }
    }
    let schema = Schema::builder().with_fields(fields).build()?;
    Ok(Some(Arc::new(schema_to_arrow_schema(&schema)?)))
}

/// Where each output column is in a file: the file's leaf columns to read (in file order) and,
/// for each output column, its place among them.
struct Columns {
    leaves: Vec<usize>,
    place: Vec<usize>,
    target: ArrowSchemaRef,
}

impl Columns {
    /// A decoded batch (columns in file order) as the target schema orders and names them.
    fn arrange(&self, batch: &RecordBatch) -> iceberg::Result<RecordBatch> {
        let columns = self
            .place
            .iter()
            .map(|at| batch.column(*at).clone())
            .collect();
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.target.clone(), columns, &options)
            .map_err(|e| Error::new(ErrorKind::DataInvalid, "a data file's batch").with_source(e))
    }
}

/// Matches `target`'s columns (by Iceberg field id) to `builder`'s file; `None` when one is
/// missing, nested in the file, or of another Arrow type there.
fn match_columns<T>(
    builder: &parquet::arrow::arrow_reader::ArrowReaderBuilder<T>,
    target: &ArrowSchemaRef,
) -> iceberg::Result<Option<Columns>> {
    let parquet = builder.parquet_schema();
    let file_schema: &ArrowSchema = builder.schema();
    let mut by_id: HashMap<i32, usize> = HashMap::new();
    for (leaf, column) in parquet.columns().iter().enumerate() {
        let info = column.self_type().get_basic_info();
        if column.path().parts().len() == 1 && info.has_id() {
            by_id.insert(info.id(), leaf);
        }
    }
    let mut wanted: Vec<(usize, usize)> = Vec::with_capacity(target.fields().len());
    for (out, field) in target.fields().iter().enumerate() {
        let Some(id) = field
            .metadata()
            .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return Ok(None);
        };
        let Some(&leaf) = by_id.get(&id) else {
            return Ok(None);
        };
        // A top-level leaf is the top-level Arrow field of the same name.
        let name = parquet.column(leaf).name().to_string();
        match file_schema.field_with_name(&name) {
            Ok(in_file) if in_file.data_type() == field.data_type() => {}
            _ => return Ok(None),
        }
        wanted.push((leaf, out));
    }
    let mut leaves: Vec<usize> = wanted.iter().map(|(leaf, _)| *leaf).collect();
    leaves.sort_unstable();
    leaves.dedup();
    if leaves.len() != wanted.len() {
        return Ok(None);
    }
    let mut place = vec![0; wanted.len()];
    for (leaf, out) in wanted {
        place[out] = leaves.binary_search(&leaf).unwrap_or_default();
    }
    Ok(Some(Columns {
        leaves,
        place,
        target: target.clone(),
    }))
}

/// Every row of a `total`-row file but the `deleted` positions (sorted, distinct).
pub(super) fn selection(deleted: &[u64], total: usize) -> RowSelection {
    let mut selectors = Vec::new();
    let mut at = 0usize;
    for &pos in deleted {
        let pos = pos as usize;
        if pos >= total {
            break;
        }
        if pos > at {
            selectors.push(RowSelector::select(pos - at));
        }
        selectors.push(RowSelector::skip(1));
        at = pos + 1;
    }
    if at < total {
        selectors.push(RowSelector::select(total - at));
    }
    RowSelection::from(selectors)
}

/// Position delete files loaded during one read: data file path -> deleted positions.
#[derive(Default)]
struct DeleteCache {
    files: Mutex<HashMap<String, Arc<OnceCell<Arc<Positions>>>>>,
}

type Positions = HashMap<String, BTreeSet<i64>>;

impl DeleteCache {
    async fn load(&self, file_io: &FileIO, path: &str) -> iceberg::Result<Arc<Positions>> {
        let cell = {
            let mut files = self
                .files
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            files.entry(path.to_string()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let invalid = |e: CommitError| Error::new(ErrorKind::DataInvalid, e.to_string());
            let bytes = read_bytes(file_io, path).await.map_err(invalid)?;
            let mut positions = Positions::new();
            decode_position_deletes(path, bytes, &mut positions).map_err(invalid)?;
            Ok(Arc::new(positions))
        })
        .await
        .cloned()
    }
}

fn parquet_error(path: &str, e: parquet::errors::ParquetError) -> Error {
    Error::new(ErrorKind::Unexpected, format!("reading {path}")).with_source(e)
}
