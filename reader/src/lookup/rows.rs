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

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchReader};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
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

/// Share of the cache's memory that warming fills at most, all tables together (the rest is
/// left to the blocks lookups decode on their own).
const WARM_SHARE: f64 = 0.8;
/// Blocks decoded ahead of the cache while a file is warmed.
const WARM_AHEAD: usize = 4;

const CACHE_HITS: &str = "unitable_lookup_cache_hits_total";
const CACHE_WARMED: &str = "unitable_lookup_cache_warmed_blocks_total";
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
    /// The memory budget, in bytes.
    capacity: u64,
    /// Whether lookup states warm the cache with their tables' data files.
    warm: bool,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl BlockCache {
    /// A cache holding up to `bytes` of decoded rows (0 keeps nothing), warmed by lookup
    /// states when `warm` is set.
    pub(crate) fn new(bytes: u64, warm: bool) -> Self {
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
            capacity: bytes,
            warm,
        }
    }

    /// Whether lookup states should warm the cache with their tables' files.
    pub(crate) fn warms(&self) -> bool {
        self.warm && self.blocks.is_some()
    }

    /// The warming setting as given (kept when the cache is rebuilt with another size).
    pub(crate) fn warm_asked(&self) -> bool {
        self.warm
    }

    /// The memory budget, in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `more` bytes of warmed blocks fit in the warming share of the budget.
    async fn warm_room(&self, more: u64) -> bool {
        let Some(blocks) = &self.blocks else {
            return false;
        };
        blocks.run_pending_tasks().await;
        (blocks.weighted_size() + more) as f64 <= self.capacity as f64 * WARM_SHARE
    }

    fn cached(&self, key: (u64, u32)) -> bool {
        self.blocks.as_ref().is_some_and(|b| b.contains_key(&key))
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
    /// The Iceberg field id of each of the file's top-level columns (`None`: it has none).
    field_ids: Vec<Option<i32>>,
}

impl OpenFile {
    /// How many blocks the file has.
    fn blocks(&self) -> u32 {
        self.rows.div_ceil(self.block_rows.max(1)) as u32
    }

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

    /// Decodes the whole file in blocks, in order, into `out` (until it is closed).
    fn scan_local(
        &self,
        file: &Arc<File>,
        out: &tokio::sync::mpsc::Sender<Result<RecordBatch, String>>,
    ) {
        let chunks = LocalChunks {
            file: file.clone(),
            len: self.size,
        };
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, self.metadata.clone())
                .with_batch_size(self.block_rows)
                .build();
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = out.blocking_send(Err(e.to_string()));
                return;
            }
        };
        for batch in reader {
            let failed = batch.is_err();
            if out.blocking_send(batch.map_err(|e| e.to_string())).is_err() || failed {
                return;
            }
        }
    }

    /// [`Self::scan_local`] through iceberg's `FileIO`.
    async fn scan_remote(
        &self,
        reader: &Arc<dyn FileRead>,
        out: &tokio::sync::mpsc::Sender<Result<RecordBatch, String>>,
    ) {
        let fetch = Fetch {
            reader: reader.clone(),
            metadata: Some(self.metadata.metadata().clone()),
        };
        let stream =
            ParquetRecordBatchStreamBuilder::new_with_metadata(fetch, self.metadata.clone())
                .with_batch_size(self.block_rows)
                .build();
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                let _ = out.send(Err(e.to_string())).await;
                return;
            }
        };
        while let Some(batch) = stream.next().await {
            let failed = batch.is_err();
            if out.send(batch.map_err(|e| e.to_string())).await.is_err() || failed {
                return;
            }
        }
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
    /// The table's cache hit and miss counters (registered once, not per lookup).
    hits: metrics::Counter,
    misses: metrics::Counter,
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
            hits: metrics::counter!(CACHE_HITS, "table" => table.clone()),
            misses: metrics::counter!(CACHE_MISSES, "table" => table.clone()),
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
            field_ids: super::field_ids_of(metadata.schema()),
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

    /// Forgets a file (it was removed from the table) and drops its cached blocks, so their
    /// memory goes to the files that replaced it (a compaction's output, warmed next).
    pub(crate) async fn forget(&self, path: &str) {
        let file = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(path);
        if let (Some(file), Some(blocks)) = (file, &self.cache.blocks) {
            for block in 0..file.blocks() {
                blocks.invalidate(&(file.number, block)).await;
            }
        }
    }

    /// The blocks `wanted` (ascending, distinct) of `file`, in that order, decoded and cached
    /// if missing.
    async fn blocks(
        &self,
        path: &Arc<str>,
        file: &Arc<OpenFile>,
        wanted: &[u32],
    ) -> ReadResult<Vec<Arc<RecordBatch>>> {
        let mut got: Vec<Option<Arc<RecordBatch>>> = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for (i, &block) in wanted.iter().enumerate() {
            let cached = self.cache.get((file.number, block)).await;
            if cached.is_none() {
                missing.push((i, block));
            }
            got.push(cached);
        }
        self.hits.increment((wanted.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok(got.into_iter().flatten().collect());
        }
        self.misses.increment(missing.len() as u64);
        let fail = |reason: String| ReadError::DataFile {
            path: path.to_string(),
            reason,
        };
        let decoded: Vec<(usize, RecordBatch)> = match &file.source {
            Source::Local(local) if missing.len() <= INLINE_BLOCKS => missing
                .iter()
                .map(|&(i, b)| file.decode_local(local, b).map(|batch| (i, batch)))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            Source::Local(local) => {
                let (file, local, todo) = (file.clone(), local.clone(), missing.clone());
                tokio::task::spawn_blocking(move || {
                    todo.iter()
                        .map(|&(i, b)| file.decode_local(&local, b).map(|batch| (i, batch)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| fail(format!("block reader task failed: {e}")))?
                .map_err(fail)?
            }
            Source::Remote(remote) => {
                let reads = missing.iter().map(|&(i, b)| async move {
                    file.decode_remote(remote, b).await.map(|batch| (i, batch))
                });
                futures::future::try_join_all(reads).await.map_err(fail)?
            }
        };
        self.cache
            .decoded
            .fetch_add(decoded.len() as u64, Ordering::Relaxed);
        for (i, batch) in decoded {
            let block = wanted[i];
            let want = file.block_range(block).len();
            if batch.num_rows() != want {
                return Err(fail(format!(
                    "block {block} should hold {want} rows, read {}",
                    batch.num_rows()
                )));
            }
            let batch = Arc::new(batch);
            self.cache.insert((file.number, block), batch.clone()).await;
            got[i] = Some(batch);
        }
        metrics::gauge!(CACHE_BYTES).set(self.cache.bytes() as f64);
        got.into_iter()
            .zip(wanted)
            .map(|(b, block)| b.ok_or_else(|| fail(format!("block {block} was not read"))))
            .collect()
    }

    /// Decodes the blocks of the file at `path` that are not cached into the cache, in one
    /// pass over the file, if the file's decoded size (estimated from its footer) fits in the
    /// warming share of the cache; `go_on` is asked between blocks and stops the pass when it
    /// says no. Returns the blocks decoded, or `None` when the file does not fit now.
    pub(crate) async fn warm(
        &self,
        path: &Arc<str>,
        go_on: impl Fn() -> bool,
    ) -> ReadResult<Option<u64>> {
        let file = self.open(path).await?;
        let blocks = file.blocks();
        let cold = (0..blocks)
            .filter(|&b| !self.cache.cached((file.number, b)))
            .count() as u64;
        if cold == 0 {
            return Ok(Some(0));
        }
        let decoded_size: i64 = file
            .metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.total_byte_size())
            .sum();
        let estimate = decoded_size.max(0) as u64 * cold / u64::from(blocks);
        if !self.cache.warm_room(estimate).await {
            return Ok(None);
        }
        let fail = |reason: String| ReadError::DataFile {
            path: path.to_string(),
            reason,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, String>>(WARM_AHEAD);
        let reading = match &file.source {
            Source::Local(local) => {
                let (file, local) = (file.clone(), local.clone());
                tokio::task::spawn_blocking(move || file.scan_local(&local, &tx))
            }
            Source::Remote(remote) => {
                let (file, remote) = (file.clone(), remote.clone());
                tokio::spawn(async move { file.scan_remote(&remote, &tx).await })
            }
        };
        let mut warmed = 0u64;
        let mut block = 0u32;
        // Batches need not end at block ends (a row group's end does not need to be one):
        // pieces wait here until a block's rows are in.
        let mut pieces: Vec<RecordBatch> = Vec::new();
        let mut have = 0usize;
        'read: while let Some(batch) = rx.recv().await {
            let batch = batch.map_err(fail)?;
            let mut at = 0;
            while at < batch.num_rows() {
                let want = file.block_range(block).len() - have;
                if want == 0 {
                    return Err(fail(format!(
                        "the file holds more rows than its footer's {}",
                        file.rows
                    )));
                }
                let take = want.min(batch.num_rows() - at);
                let all = at == 0 && take == batch.num_rows();
                pieces.push(if all {
                    batch.clone()
                } else {
                    batch.slice(at, take)
                });
                (at, have) = (at + take, have + take);
                if take < want {
                    break;
                }
                // A block that is one whole batch of the reader is kept as it is; pieces are
                // copied into one (a slice would hold, and weigh, its whole batch).
                let whole = if all && pieces.len() == 1 {
                    pieces.remove(0)
                } else {
                    let joined = arrow::compute::concat_batches(&pieces[0].schema(), &pieces)
                        .map_err(|e| fail(e.to_string()))?;
                    pieces.clear();
                    joined
                };
                have = 0;
                if !self.cache.cached((file.number, block)) {
                    self.cache
                        .insert((file.number, block), Arc::new(whole))
                        .await;
                    warmed += 1;
                }
                block += 1;
                if !go_on() || (block.is_multiple_of(64) && !self.cache.warm_room(0).await) {
                    break 'read;
                }
            }
        }
        drop(rx);
        reading
            .await
            .map_err(|e| fail(format!("block reader task failed: {e}")))?;
        self.cache.decoded.fetch_add(warmed, Ordering::Relaxed);
        metrics::counter!(CACHE_WARMED, "table" => self.table.clone()).increment(warmed);
        metrics::gauge!(CACHE_BYTES).set(self.cache.bytes() as f64);
        Ok(Some(warmed))
    }

    /// The rows at `positions` (ascending, distinct) of the file at `path`, in position
    /// order, as one column per entry of `field_ids`: the file's column with that Iceberg field
    /// id, or `None` when there is none (no id asked, or an older file without the column).
    pub(crate) async fn read_rows(
        &self,
        path: &Arc<str>,
        positions: &[u32],
        field_ids: &[Option<i32>],
    ) -> ReadResult<Vec<Option<ArrayRef>>> {
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
        // Where each asked-for column is in the file (its ids were read once, at open).
        let columns: Vec<Option<usize>> = field_ids
            .iter()
            .map(|id| {
                let id = (*id)?;
                file.field_ids.iter().position(|f| *f == Some(id))
            })
            .collect();
        // Consecutive rows of one block (one key, above all) are a slice of it: no copy.
        if let ([rows], [first, ..]) = (&blocks[..], positions)
            && positions.windows(2).all(|w| w[1] == w[0] + 1)
        {
            let offset = *first as usize % file.block_rows;
            return Ok(columns
                .iter()
                .map(|c| c.map(|i| rows.column(i).slice(offset, positions.len())))
                .collect());
        }
        let sources: Vec<&RecordBatch> = blocks.iter().map(Arc::as_ref).collect();
        // Positions ascend, so their blocks are `wanted`'s in order.
        let mut source = 0;
        let picks: Vec<(usize, usize)> = positions
            .iter()
            .map(|&pos| {
                let block = (pos as usize / file.block_rows) as u32;
                while wanted[source] != block {
                    source += 1;
                }
                (source, pos as usize % file.block_rows)
            })
            .collect();
        columns
            .iter()
            .map(|c| {
                let Some(i) = *c else { return Ok(None) };
                let arrays: Vec<&dyn Array> =
                    sources.iter().map(|b| b.column(i).as_ref()).collect();
                arrow::compute::interleave(&arrays, &picks)
                    .map(Some)
                    .map_err(|e| fail(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
