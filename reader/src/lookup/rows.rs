//! Reading single rows out of Parquet data files, through a cache of decoded row blocks.
//!
//! A *block* is an aligned run of rows of one data file: as many rows as decode to about
//! [`BLOCK_TARGET_BYTES`], at most [`MAX_BLOCK_ROWS`] (the writer's data-page row limit, so a
//! block of a file unitable wrote is one data page per column). A lookup takes each row from its
//! block; a block not in the [`BlockCache`] is decoded with all the file's columns, once, and
//! kept within the cache's memory budget (shared by all tables). Decoding a block costs about
//! what decoding one row did, because Parquet decompresses whole pages either way.
//!
//! Each file's footer and page index are read once and kept, so a block read fetches only the
//! pages holding it. Local files are read with positioned reads on the calling thread (one
//! block) or in one blocking task per file (several); other storage goes through iceberg's
//! `FileIO`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{RecordBatch, RecordBatchReader};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use iceberg::io::{FileIO, FileRead};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use unitable_core::commit::files::roots_with_field_ids;
use unitable_core::storage::local_path;

use crate::error::{ReadError, ReadResult};

/// Files whose metadata stays cached; beyond this the cache is cleared (footers of a
/// compacted table are few; a table of many small files pays a re-read).
const MAX_OPEN_FILES: usize = 4096;
/// Most rows in a block (the writer's data-page row limit).
const MAX_BLOCK_ROWS: usize = 4096;
/// Fewest rows in a block, however wide the rows.
const MIN_BLOCK_ROWS: usize = 64;
/// About how much decoded memory a block holds.
const BLOCK_TARGET_BYTES: usize = 256 << 10;
/// Blocks a lookup decodes on its own task; more go to blocking tasks, one per file.
const INLINE_BLOCKS: usize = 2;
/// Default memory of the block cache.
pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 512 << 20;

const CACHE_HITS: &str = "unitable_lookup_cache_hits_total";
const CACHE_MISSES: &str = "unitable_lookup_cache_misses_total";
const CACHE_BYTES: &str = "unitable_lookup_cache_bytes";

/// Decoded row blocks of every table's data files, within one memory budget.
pub(crate) struct BlockCache {
    /// `None` when the cache is off (no memory for it).
    blocks: Option<moka::future::Cache<(u64, u32), Arc<RecordBatch>>>,
    /// Numbers open files: a block's key is (file number, block number).
    next_file: AtomicU64,
    /// Blocks decoded so far.
    decoded: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl BlockCache {
    /// A cache holding up to `bytes` of decoded rows (0 keeps nothing).
    pub(crate) fn new(bytes: u64) -> Self {
        let blocks = (bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_: &(u64, u32), block: &Arc<RecordBatch>| {
                    u32::try_from(block.get_array_memory_size()).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self {
            blocks,
            next_file: AtomicU64::new(0),
            decoded: AtomicU64::new(0),
        }
    }

    /// Memory the cached blocks hold (as last accounted).
    fn bytes(&self) -> u64 {
        self.blocks.as_ref().map_or(0, |b| b.weighted_size())
    }

    async fn get(&self, key: (u64, u32)) -> Option<Arc<RecordBatch>> {
        self.blocks.as_ref()?.get(&key).await
    }

    async fn insert(&self, key: (u64, u32), block: Arc<RecordBatch>) {
        if let Some(blocks) = &self.blocks {
            blocks.insert(key, block).await;
        }
    }
}

/// Where an open file's bytes come from.
#[derive(Clone)]
enum Source {
    /// A local file: positioned reads.
    Local(Arc<File>),
    /// Anything else: iceberg's `FileIO`.
    Remote(Arc<dyn FileRead>),
}

/// An open data file: its bytes, its parsed footer with the page index, its block size.
struct OpenFile {
    number: u64,
    source: Source,
    metadata: ArrowReaderMetadata,
    /// Bytes in the file.
    size: u64,
    rows: usize,
    block_rows: usize,
}

impl OpenFile {
    /// The rows of block `block`.
    fn block_range(&self, block: u32) -> Range<usize> {
        let start = block as usize * self.block_rows;
        start..(start + self.block_rows).min(self.rows)
    }

    /// The row groups holding block `block` and the selection of its rows within them.
    fn selection(&self, block: u32) -> (Vec<usize>, RowSelection) {
        let range = self.block_range(block);
        let (mut groups, mut first) = (Vec::new(), None);
        let mut at = 0usize;
        for (i, group) in self.metadata.metadata().row_groups().iter().enumerate() {
            let end = at + group.num_rows().max(0) as usize;
            if end > range.start && at < range.end {
                groups.push(i);
                first.get_or_insert(at);
            }
            at = end;
        }
        let skip = range.start - first.unwrap_or(0);
        let selection = RowSelection::from(vec![
            RowSelector::skip(skip),
            RowSelector::select(range.len()),
        ]);
        (groups, selection)
    }

    /// Decodes block `block` with positioned reads of a local file.
    fn decode_local(&self, file: &Arc<File>, block: u32) -> Result<RecordBatch, String> {
        let chunks = LocalChunks {
            file: file.clone(),
            len: self.size,
        };
        let (groups, selection) = self.selection(block);
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, self.metadata.clone())
                .with_row_groups(groups)
                .with_row_selection(selection)
                .with_batch_size(self.block_rows)
                .build()
                .map_err(|e| e.to_string())?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
    }

    /// Decodes block `block` through iceberg's `FileIO`.
    async fn decode_remote(
        &self,
        reader: &Arc<dyn FileRead>,
        block: u32,
    ) -> Result<RecordBatch, String> {
        let fetch = Fetch {
            reader: reader.clone(),
            metadata: Some(self.metadata.metadata().clone()),
        };
        let (groups, selection) = self.selection(block);
        let stream =
            ParquetRecordBatchStreamBuilder::new_with_metadata(fetch, self.metadata.clone())
                .with_row_groups(groups)
                .with_row_selection(selection)
                .with_batch_size(self.block_rows)
                .build()
                .map_err(|e| e.to_string())?;
        let schema = stream.schema().clone();
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
    }
}

/// Positioned reads of a local file for Parquet's synchronous reader.
struct LocalChunks {
    file: Arc<File>,
    len: u64,
}

impl Length for LocalChunks {
    fn len(&self) -> u64 {
        self.len
    }
}

/// A `Read` from an offset of a shared file, by positioned reads (no shared cursor).
struct ReadAt {
    file: Arc<File>,
    at: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl ChunkReader for LocalChunks {
    type T = ReadAt;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ReadAt> {
        Ok(ReadAt {
            file: self.file.clone(),
            at: start,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buf = vec![0; length];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(buf.into())
    }
}

/// Data files of one table, opened on first use, their blocks in a shared [`BlockCache`].
pub(crate) struct DataFiles {
    file_io: FileIO,
    open: Mutex<HashMap<Arc<str>, Arc<OpenFile>>>,
    cache: Arc<BlockCache>,
    /// The table, for metric labels.
    table: String,
}

impl std::fmt::Debug for DataFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFiles").finish_non_exhaustive()
    }
}

/// `AsyncFileReader` over an iceberg `FileRead` with the footer already known.
struct Fetch {
    reader: Arc<dyn FileRead>,
    metadata: Option<Arc<ParquetMetaData>>,
}

fn parquet_io(e: iceberg::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for Fetch {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let reader = self.reader.clone();
        async move { reader.read(range).await.map_err(parquet_io) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let reader = self.reader.clone();
        async move {
            futures::future::try_join_all(ranges.into_iter().map(|r| reader.read(r)))
                .await
                .map_err(parquet_io)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let metadata = self.metadata.clone();
        async move {
            metadata.ok_or_else(|| ParquetError::General("the footer is not loaded yet".into()))
        }
        .boxed()
    }
}

/// Rows per block of a file: about [`BLOCK_TARGET_BYTES`] decoded, a power of two within
/// [`MIN_BLOCK_ROWS`]..=[`MAX_BLOCK_ROWS`] (so blocks stay aligned with 4,096-row pages).
fn block_rows(metadata: &ParquetMetaData) -> usize {
    let (bytes, rows) = metadata
        .row_groups()
        .iter()
        .fold((0i64, 0i64), |(b, r), g| {
            (b + g.total_byte_size(), r + g.num_rows())
        });
    if rows <= 0 || bytes <= 0 {
        return MAX_BLOCK_ROWS;
    }
    let per_row = (bytes / rows).max(1) as usize;
    let fit = (BLOCK_TARGET_BYTES / per_row).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS);
    // The largest power of two not above `fit`.
    1 << (usize::BITS - 1 - fit.leading_zeros())
}

impl DataFiles {
    pub(crate) fn new(file_io: FileIO, cache: Arc<BlockCache>, table: String) -> Self {
        Self {
            file_io,
            open: Mutex::new(HashMap::new()),
            cache,
            table,
        }
    }

    async fn open(&self, path: &Arc<str>) -> ReadResult<Arc<OpenFile>> {
        if let Some(f) = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
        {
            return Ok(f.clone());
        }
        let fail = |e: String| ReadError::DataFile {
            path: path.to_string(),
            reason: e,
        };
        let input = self
            .file_io
            .new_input(path.as_ref())
            .map_err(|e| fail(e.to_string()))?;
        let size = input
            .metadata()
            .await
            .map_err(|e| fail(e.to_string()))?
            .size;
        let remote: Arc<dyn FileRead> =
            Arc::from(input.reader().await.map_err(|e| fail(e.to_string()))?);
        let mut fetch = Fetch {
            reader: remote.clone(),
            metadata: None,
        };
        let footer = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .load_and_finish(&mut fetch, size)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let metadata = ArrowReaderMetadata::try_new(
            Arc::new(footer),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .map_err(|e| fail(e.to_string()))?;
        let source = match local_path(path) {
            Some(local) => Source::Local(Arc::new(
                File::open(&local).map_err(|e| fail(format!("open {}: {e}", local.display())))?,
            )),
            None => Source::Remote(remote),
        };
        let rows = metadata.metadata().file_metadata().num_rows().max(0) as usize;
        let file = Arc::new(OpenFile {
            number: self.cache.next_file.fetch_add(1, Ordering::Relaxed),
            block_rows: block_rows(metadata.metadata()),
            source,
            metadata,
            size,
            rows,
        });
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_OPEN_FILES {
            open.clear();
        }
        // Another lookup may have opened it meanwhile: keep one, so blocks are cached once.
        Ok(open.entry(path.clone()).or_insert(file).clone())
    }

    /// Forgets a file (it was removed from the table); its cached blocks age out.
    pub(crate) fn forget(&self, path: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(path);
    }

    /// The blocks `wanted` (ascending, distinct) of `file`, decoded and cached if missing.
    async fn blocks(
        &self,
        path: &Arc<str>,
        file: &Arc<OpenFile>,
        wanted: &[u32],
    ) -> ReadResult<HashMap<u32, Arc<RecordBatch>>> {
        let mut got = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for &block in wanted {
            match self.cache.get((file.number, block)).await {
                Some(b) => {
                    got.insert(block, b);
                }
                None => missing.push(block),
            }
        }
        let table = self.table.clone();
        metrics::counter!(CACHE_HITS, "table" => table.clone()).increment(got.len() as u64);
        if missing.is_empty() {
            return Ok(got);
        }
        metrics::counter!(CACHE_MISSES, "table" => table).increment(missing.len() as u64);
        let fail = |reason: String| ReadError::DataFile {
            path: path.to_string(),
            reason,
        };
        let decoded: Vec<(u32, RecordBatch)> = match &file.source {
            Source::Local(local) if missing.len() <= INLINE_BLOCKS => missing
                .iter()
                .map(|&b| file.decode_local(local, b).map(|batch| (b, batch)))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            Source::Local(local) => {
                let (file, local, todo) = (file.clone(), local.clone(), missing.clone());
                tokio::task::spawn_blocking(move || {
                    todo.iter()
                        .map(|&b| file.decode_local(&local, b).map(|batch| (b, batch)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| fail(format!("block reader task failed: {e}")))?
                .map_err(fail)?
            }
            Source::Remote(remote) => {
                let reads = missing.iter().map(|&b| async move {
                    file.decode_remote(remote, b).await.map(|batch| (b, batch))
                });
                futures::future::try_join_all(reads).await.map_err(fail)?
            }
        };
        self.cache
            .decoded
            .fetch_add(decoded.len() as u64, Ordering::Relaxed);
        for (block, batch) in decoded {
            let want = file.block_range(block).len();
            if batch.num_rows() != want {
                return Err(fail(format!(
                    "block {block} should hold {want} rows, read {}",
                    batch.num_rows()
                )));
            }
            let batch = Arc::new(batch);
            self.cache.insert((file.number, block), batch.clone()).await;
            got.insert(block, batch);
        }
        metrics::gauge!(CACHE_BYTES).set(self.cache.bytes() as f64);
        Ok(got)
    }

    /// The rows at `positions` (ascending, distinct) of the file at `path`, with the columns
    /// whose Iceberg field ids are `field_ids` (those the file has; older files may lack
    /// newer columns), in position order.
    pub(crate) async fn read_rows(
        &self,
        path: &Arc<str>,
        positions: &[u32],
        field_ids: &[i32],
    ) -> ReadResult<RecordBatch> {
        let file = self.open(path).await?;
        let fail = |e: String| ReadError::DataFile {
            path: path.to_string(),
            reason: e,
        };
        let mut wanted: Vec<u32> = Vec::with_capacity(positions.len());
        let mut last = None;
        for &pos in positions {
            if pos as usize >= file.rows || last.is_some_and(|l| pos <= l) {
                return Err(fail(format!(
                    "row position {pos} is outside the file's {} rows or out of order",
                    file.rows
                )));
            }
            last = Some(pos);
            let block = (pos as usize / file.block_rows) as u32;
            if wanted.last() != Some(&block) {
                wanted.push(block);
            }
        }
        let blocks = self.blocks(path, &file, &wanted).await?;
        // The asked-for columns of each block, then the rows picked out of them.
        let columns = roots_with_field_ids(file.metadata.schema(), field_ids);
        let mut sources = Vec::with_capacity(wanted.len());
        let mut slot = HashMap::with_capacity(wanted.len());
        for block in &wanted {
            let batch = blocks[block]
                .project(&columns)
                .map_err(|e| fail(e.to_string()))?;
            slot.insert(*block, sources.len());
            sources.push(batch);
        }
        let picks: Vec<(usize, usize)> = positions
            .iter()
            .map(|&pos| {
                let block = (pos as usize / file.block_rows) as u32;
                (slot[&block], pos as usize % file.block_rows)
            })
            .collect();
        let refs: Vec<&RecordBatch> = sources.iter().collect();
        arrow::compute::interleave_record_batch(&refs, &picks).map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
