//! LOOKUP reads: the latest rows of up to [`MAX_KEYS`] primary keys, with FRESH semantics
//! (every write acknowledged before the request is reflected), served from memory and single
//! Parquet pages without any separate online store.
//!
//! Per table, a [`state::TableLookup`] (cached in the [`Reader`], built on the first lookup):
//!
//! - `index`: canonical key bytes -> (data file, row position) of every live row of a *base*
//!   snapshot (16 bytes of slot + the key bytes + a control byte per key);
//! - `tail`: per changelog partition, the latest record of every key at or after the base's
//!   anchored offsets, kept current by one follower task per partition;
//! - a re-base task that moves the base to newer snapshots: the keys of data files new in the
//!   newer snapshot are added (rows deleted in it skipped), keys whose latest tail record below
//!   the newer offsets is a delete are removed, and tail records below them are dropped. A
//!   chain with a snapshot not written by unitable rebuilds the index instead.
//!
//! A lookup reads the high watermark of each partition its keys live in, waits until the
//! followers have applied everything below it, then answers each key from the tail (a delete
//! is missing) or else from the index, reading the row from Parquet with a row selection (the
//! file's footer and page index are cached). A lookup as of an instant (a time or changelog
//! offsets) is exact to the record: the newest snapshot at or before the instant, read with the
//! keys pushed down, plus the keys' changelog records between it and the instant (`asof.rs`).
//! Training sets (`training.rs`) join entity rows with feature columns as of each row's time
//! by the same rule.
//! The design and its freshness argument are in docs/reader.md.

mod asof;
mod heads;
mod index;
mod keys;
mod rows;
mod state;
pub(crate) mod tail;
mod training;

pub use asof::LookupAsOf;
pub use keys::{LookupKeys, MAX_KEYS};
pub use rows::DEFAULT_BLOCK_CACHE_BYTES;
pub use training::{DEFAULT_TRAINING_SET_MEMORY, TrainingSet, TrainingSetSpec};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use tokio::sync::Mutex;
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, Offset, PartitionId, PartitionOffsets};
use unitable_core::record::RecordCodec;

use crate::Reader;
use crate::error::{ReadError, ReadResult};
use state::{Found, TableLookup};

/// Maps and sets keyed by encoded keys or row places on the lookup and training-set paths,
/// which hash every key of a request several times (foldhash: a few times faster than SipHash
/// on short byte strings; its seeds are random per process).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A LOOKUP read.
#[derive(Debug, Clone)]
pub struct LookupRequest {
    /// The table.
    pub table: TableName,
    /// The keys.
    pub keys: LookupKeys,
    /// Columns to return, in this order; empty = all.
    pub columns: Vec<String>,
    /// `None`: fresh (every acknowledged write). Otherwise the instant to answer as of: a
    /// time or changelog offsets (exact to the record), or one snapshot alone.
    pub as_of: Option<LookupAsOf>,
    /// Fresh lookups only: how old an answer may be. Zero: every write acknowledged before
    /// the request is reflected (each partition's high watermark is read for the lookup; with
    /// Kafka a round trip to the partition's leader). More: every write acknowledged at least
    /// this long before the request is reflected (the last high watermark read is used while
    /// it is this recent; `AsOf::lag_ms` says how old it was). `None`: the reader's default
    /// ([`Reader::with_lookup_max_staleness`], zero unless set).
    pub max_staleness: Option<Duration>,
}

/// The answer to a LOOKUP.
#[derive(Debug, Clone)]
pub struct LookupResponse {
    /// Which data is served.
    pub as_of: AsOf,
    /// The found rows, in request key order (a key asked for twice is there twice).
    pub rows: RecordBatch,
    /// Indexes (into the request's keys) of keys with no live row, ascending.
    pub missing: Vec<u32>,
}

/// Memory all tables' lookup states may hold together by default.
pub const DEFAULT_MEMORY_LIMIT: usize = 2 << 30;
/// How long a lookup waits for its partitions' followers to apply what is acknowledged.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);
/// Counter of lookup states dropped to stay within the memory limit, by table.
const LOOKUP_EVICTIONS: &str = "unitable_lookup_evictions_total";
/// Histogram of LOOKUP latency in seconds, by table.
const LOOKUP_SECONDS: &str = "unitable_lookup_seconds";
/// Histogram of keys per LOOKUP request, by table.
const LOOKUP_KEYS: &str = "unitable_lookup_keys";
/// Gauge of the memory a table's lookup state holds (key index plus changelog tail).
const LOOKUP_STATE_BYTES: &str = "unitable_lookup_state_bytes";

/// Lookup states by table, within one memory limit.
///
/// Each table has a slot of its own: building a cold table's index holds only that slot, so
/// lookups on other tables go on meanwhile.
#[derive(Debug)]
pub(crate) struct LookupCache {
    tables: std::sync::Mutex<FastMap<TableName, Arc<Slot>>>,
    limit: usize,
    /// Decoded row blocks of every table's data files.
    blocks: Arc<rows::BlockCache>,
    /// The clock of [`Slot::used_ms`].
    epoch: std::time::Instant,
}

/// One table's state, built at most once at a time.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<Option<Arc<TableLookup>>>,
    /// When a lookup last used the slot (for eviction), in ms since the cache started.
    used_ms: AtomicU64,
    /// The state's memory when last measured.
    bytes: AtomicUsize,
    /// The table's lookup metrics, registered at its first lookup: a registry lookup per
    /// request (label strings built and hashed) costs more than the rest of the bookkeeping.
    meters: std::sync::OnceLock<Meters>,
}

/// Handles of one table's lookup metrics.
struct Meters {
    seconds: metrics::Histogram,
    keys: metrics::Histogram,
    state_bytes: metrics::Gauge,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meters")
    }
}

impl Slot {
    fn meters(&self, table: &TableName) -> &Meters {
        self.meters.get_or_init(|| {
            let table = table.to_string();
            Meters {
                seconds: metrics::histogram!(LOOKUP_SECONDS, "table" => table.clone()),
                keys: metrics::histogram!(LOOKUP_KEYS, "table" => table.clone()),
                state_bytes: metrics::gauge!(LOOKUP_STATE_BYTES, "table" => table),
            }
        })
    }
}

impl Default for LookupCache {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_LIMIT, DEFAULT_BLOCK_CACHE_BYTES, true)
    }
}

impl LookupCache {
    /// States within `limit` bytes; decoded rows within `blocks_bytes` more, warmed with the
    /// tables' data files when `warm` is set.
    pub(crate) fn new(limit: usize, blocks_bytes: u64, warm: bool) -> Self {
        Self {
            tables: std::sync::Mutex::default(),
            limit: limit.max(1),
            blocks: Arc::new(rows::BlockCache::new(blocks_bytes, warm)),
            epoch: std::time::Instant::now(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn blocks_bytes(&self) -> u64 {
        self.blocks.capacity()
    }

    /// Whether warming was asked for (whether it happens also needs a cache: see
    /// [`rows::BlockCache::warms`]).
    pub(crate) fn warms(&self) -> bool {
        self.blocks.warm_asked()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, FastMap<TableName, Arc<Slot>>> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, table: &TableName) -> Arc<Slot> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(table) {
            return slot.clone();
        }
        slots.entry(table.clone()).or_default().clone()
    }

    /// Records `table`'s memory and use, then drops the least recently used other states
    /// until all fit the limit. Fails when `table`'s state alone does not fit (and drops it,
    /// so it is rebuilt from a newer snapshot, with a shorter tail, next time).
    fn account(&self, table: &TableName, slot: &Slot, state: &TableLookup) -> ReadResult<()> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let bytes = state.memory_bytes();
        slot.bytes.store(bytes, Ordering::Relaxed);
        slot.used_ms.store(now_ms, Ordering::Relaxed);
        let gauge = &slot.meters(table).state_bytes;
        gauge.set(bytes as f64);
        if bytes > self.limit {
            state.invalidate("its memory exceeds the lookup memory limit");
            gauge.set(0.0);
            return Err(ReadError::LookupMemory {
                table: table.clone(),
                bytes,
                tail_keys: state.tail_keys(),
                limit: self.limit,
            });
        }
        let mut slots = self.slots();
        let mut total: usize = slots
            .values()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum();
        if total <= self.limit {
            return Ok(());
        }
        let mut others: Vec<(u64, TableName)> = slots
            .iter()
            .filter(|(name, _)| *name != table)
            .map(|(name, s)| (s.used_ms.load(Ordering::Relaxed), name.clone()))
            .collect();
        others.sort();
        for (_, name) in others {
            if total <= self.limit {
                break;
            }
            // A slot being built is locked: leave it (its builder accounts for it after).
            let Some(victim) = slots.get(&name).cloned() else {
                continue;
            };
            let Ok(mut held) = victim.state.try_lock() else {
                continue;
            };
            if let Some(dropped) = held.take() {
                tracing::info!(table = %name, bytes = victim.bytes.load(Ordering::Relaxed), "lookup state evicted to stay within the lookup memory limit");
                metrics::counter!(LOOKUP_EVICTIONS, "table" => name.to_string()).increment(1);
                victim.meters(&name).state_bytes.set(0.0);
                drop(dropped);
            }
            total -= victim.bytes.swap(0, Ordering::Relaxed);
            drop(held);
            slots.remove(&name);
        }
        Ok(())
    }
}

impl Reader {
    /// Answers a LOOKUP.
    pub async fn lookup(&self, request: &LookupRequest) -> ReadResult<LookupResponse> {
        let started = std::time::Instant::now();
        let answer = if let Some(at) = &request.as_of {
            if request.max_staleness.is_some_and(|d| !d.is_zero()) {
                return Err(ReadError::BadRequest {
                    reason: "max_staleness applies to fresh lookups, not to lookups as of an \
                             instant (which are exact)"
                        .into(),
                });
            }
            self.lookup_as_of(request, at).await
        } else {
            self.lookup_fresh(request).await
        };
        let seconds = started.elapsed().as_secs_f64();
        let keys = request.keys.count() as f64;
        // A table with a slot has its metrics registered; others (as-of lookups only, failed
        // lookups of tables that do not exist) are recorded without keeping anything.
        let slot = self.lookups.slots().get(&request.table).cloned();
        match slot {
            Some(slot) => {
                let meters = slot.meters(&request.table);
                meters.seconds.record(seconds);
                meters.keys.record(keys);
            }
            None => {
                let table = request.table.to_string();
                metrics::histogram!(LOOKUP_SECONDS, "table" => table.clone()).record(seconds);
                metrics::histogram!(LOOKUP_KEYS, "table" => table).record(keys);
            }
        }
        answer
    }

    /// A FRESH lookup, from the table's lookup state.
    async fn lookup_fresh(&self, request: &LookupRequest) -> ReadResult<LookupResponse> {
        let (slot, state) = self.lookup_state(&request.table).await?;
        let max_staleness = request.max_staleness.unwrap_or(self.lookup_max_staleness);
        let answer = match fresh_lookup(&state, request, max_staleness).await {
            // A data file may have been expired under the base: start over from the table's
            // current snapshot once.
            Err(e @ (ReadError::DataFile { .. } | ReadError::LookupState { .. })) => {
                state.invalidate(&e.to_string());
                let (slot, state) = self.lookup_state(&request.table).await?;
                let answer = fresh_lookup(&state, request, max_staleness).await;
                self.lookups.account(&request.table, &slot, &state)?;
                return answer;
            }
            // Keys that do not fit the state's table may fit the table as it is now (dropped and
            // created again, or its schema changed, since the state was built and before its
            // re-base noticed): check the catalog on this error path only, and retry once.
            Err(e @ (ReadError::BadRequest { .. } | ReadError::InvalidKey { .. })) => {
                let loaded = self.catalog.load(&request.table).await?;
                let metadata = loaded.metadata();
                if metadata.uuid().to_string() == state.uuid
                    && metadata.current_schema_id() == state.schema_id
                {
                    return Err(e);
                }
                state.invalidate("the table changed (dropped and created again, or a new schema)");
                let (slot, state) = self.lookup_state(&request.table).await?;
                let answer = fresh_lookup(&state, request, max_staleness).await;
                self.lookups.account(&request.table, &slot, &state)?;
                return answer;
            }
            other => other,
        };
        // After the lookup: its followers have applied the tail it needed, so the state's
        // size is known (a state built for this lookup starts with an empty tail).
        self.lookups.account(&request.table, &slot, &state)?;
        answer
    }

    /// The lookup state of `table` and its cache slot, built if there is none (or the cached
    /// one is unusable).
    async fn lookup_state(&self, table: &TableName) -> ReadResult<(Arc<Slot>, Arc<TableLookup>)> {
        let slot = self.lookups.slot(table);
        let mut held = slot.state.lock().await;
        let state = match held.as_ref() {
            Some(state) if state.is_valid() => state.clone(),
            _ => {
                *held = None;
                let loaded = self.catalog.load(table).await?;
                let state = TableLookup::build(
                    table,
                    &loaded,
                    self.catalog.clone(),
                    self.changelog.clone(),
                    self.lookups.blocks.clone(),
                )
                .await?;
                *held = Some(state.clone());
                state
            }
        };
        drop(held);
        Ok((slot, state))
    }

    /// Tells the reader that `table`'s columns or settings changed (on this node): its LOOKUP
    /// state is dropped now and rebuilt by the next lookup. States on other nodes notice at
    /// their next re-base (at most [`state::REBASE_INTERVAL`] later).
    pub fn table_changed(&self, table: &TableName) {
        if let Some(slot) = self.lookups.slots().get(table).cloned()
            && let Ok(mut held) = slot.state.try_lock()
            && let Some(state) = held.take()
        {
            state.invalidate("the table's columns or settings changed");
        }
    }

    /// The lookup state of `table` if one is built, usable and not being built right now (none
    /// is built for the caller).
    fn existing_lookup_state(&self, table: &TableName) -> Option<Arc<TableLookup>> {
        let slot = self.lookups.slots().get(table).cloned()?;
        let held = slot.state.try_lock().ok()?;
        held.as_ref().filter(|s| s.is_valid()).cloned()
    }

    /// Keys and bytes of the lookup index of `table`, if one is built (for metrics and
    /// benchmarks).
    pub async fn lookup_index_size(&self, table: &TableName) -> Option<(usize, usize)> {
        let slot = self.lookups.slots().get(table).cloned()?;
        let held = slot.state.lock().await;
        held.as_ref().map(|s| s.index_size())
    }
}

/// The requested columns of the table, with their field ids (all for none).
fn output_schema(
    table: &TableName,
    codec: &RecordCodec,
    columns: &[String],
) -> ReadResult<SchemaRef> {
    let full = codec.arrow_schema();
    if columns.is_empty() {
        return Ok(full);
    }
    let mut fields: Vec<Field> = Vec::with_capacity(columns.len());
    for name in columns {
        let field = full
            .field_with_name(name)
            .map_err(|_| ReadError::BadRequest {
                reason: format!(
                    "table `{table}` has no column `{name}` (columns: {})",
                    full.fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        fields.push(field.clone());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `batch`'s columns rearranged to `schema`: by field id when the batch carries them (Parquet),
/// else by name; a column the batch lacks (a file older than the column) is null; types are
/// cast to the table's.
fn conform(table: &TableName, schema: &SchemaRef, batch: &RecordBatch) -> ReadResult<RecordBatch> {
    let fail = |reason: String| ReadError::LookupState {
        table: table.clone(),
        reason,
    };
    let field_id = |f: &Field| f.metadata().get(PARQUET_FIELD_ID_META_KEY).cloned();
    let source = batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let id = field_id(field);
        let at = source
            .fields()
            .iter()
            .position(|f| id.is_some() && field_id(f) == id)
            .or_else(|| source.index_of(field.name()).ok());
        let column = match at {
            Some(i) if batch.column(i).data_type() == field.data_type() => batch.column(i).clone(),
            Some(i) => arrow::compute::cast(batch.column(i), field.data_type())
                .map_err(|e| fail(format!("column `{}`: {e}", field.name())))?,
            None => new_null_array(field.data_type(), batch.num_rows()),
        };
        columns.push(column);
    }
    // The rows were valid rows of the table; nullability is the table's to enforce, not ours.
    RecordBatch::try_new(nullable(schema), columns).map_err(|e| fail(format!("assemble rows: {e}")))
}

/// The Iceberg field id of each field of `schema`.
fn field_ids_of(schema: &Schema) -> Vec<Option<i32>> {
    schema
        .fields()
        .iter()
        .map(|f| f.metadata().get(PARQUET_FIELD_ID_META_KEY)?.parse().ok())
        .collect()
}

/// `rows` rows of a data file as `schema`'s columns (one per field, `None` where the file has
/// no such column, which is then null), cast to the table's types.
fn conform_columns(
    table: &TableName,
    schema: &SchemaRef,
    columns: Vec<Option<ArrayRef>>,
    rows: usize,
) -> ReadResult<RecordBatch> {
    let fail = |reason: String| ReadError::LookupState {
        table: table.clone(),
        reason,
    };
    let columns = schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, column)| match column {
            Some(c) if c.data_type() == field.data_type() => Ok(c),
            Some(c) => arrow::compute::cast(&c, field.data_type())
                .map_err(|e| fail(format!("column `{}`: {e}", field.name()))),
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<ReadResult<Vec<_>>>()?;
    RecordBatch::try_new(nullable(schema), columns).map_err(|e| fail(format!("assemble rows: {e}")))
}

/// `schema` with every field nullable.
fn nullable(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return schema.clone();
    }
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// The found rows in key order and the indexes of the missing keys.
fn assemble(
    table: &TableName,
    schema: &SchemaRef,
    answers: Vec<Option<RecordBatch>>,
) -> ReadResult<(RecordBatch, Vec<u32>)> {
    let mut sources = Vec::new();
    let mut picks = Vec::new();
    let mut missing = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Some(row) => {
                sources.push(conform(table, schema, &row)?);
                picks.push((sources.len() - 1, 0));
            }
            None => missing.push(i as u32),
        }
    }
    let rows = finish(table, schema, &sources, &picks)?;
    Ok((rows, missing))
}

/// Interleaves `picks` (source batch, row) of `sources` into one batch.
fn finish(
    table: &TableName,
    schema: &SchemaRef,
    sources: &[RecordBatch],
    picks: &[(usize, usize)],
) -> ReadResult<RecordBatch> {
    if picks.is_empty() {
        return Ok(RecordBatch::new_empty(nullable(schema)));
    }
    // The sources are conformed to `schema` (all nullable): one source whose rows are picked
    // in order, each once (a one-key lookup, or keys all in one place), is the answer as it is.
    if let [only] = sources
        && only.num_rows() == picks.len()
        && picks
            .iter()
            .enumerate()
            .all(|(i, &(s, r))| s == 0 && r == i)
    {
        return Ok(only.clone());
    }
    let refs: Vec<&RecordBatch> = sources.iter().collect();
    arrow::compute::interleave_record_batch(&refs, picks).map_err(|e| ReadError::LookupState {
        table: table.clone(),
        reason: format!("assemble rows: {e}"),
    })
}

/// Rows of the base's data files at `locations` (all from one read of the base; repeats
/// allowed), conformed to `schema`, with one read per file: the batches read (a file's rows in
/// position order) and, for each location in order, its (batch, row) in them.
async fn read_located<'a>(
    state: &TableLookup,
    table: &TableName,
    schema: &SchemaRef,
    locations: impl Iterator<Item = &'a state::RowAt>,
) -> ReadResult<(Vec<RecordBatch>, Vec<(usize, usize)>)> {
    // Per file (by its number in the base): its path, and (position, index in `locations`) of
    // its rows.
    let mut group_of: FastMap<u32, usize> = FastMap::default();
    type Group = (Arc<str>, Vec<(u32, usize)>);
    let mut groups: Vec<Group> = Vec::new();
    let mut count = 0;
    for (i, row) in locations.enumerate() {
        let g = *group_of.entry(row.file).or_insert_with(|| {
            groups.push((row.path.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push((row.pos, i));
        count = i + 1;
    }
    // The columns' field ids (those of all the table's columns are kept with the state).
    let asked;
    let field_ids: &[Option<i32>] = if Arc::ptr_eq(schema, &state.all_columns) {
        &state.all_field_ids
    } else {
        asked = field_ids_of(schema);
        &asked
    };
    let reads = groups.into_iter().map(|(path, mut wanted)| async move {
        wanted.sort_unstable();
        let mut positions: Vec<u32> = wanted.iter().map(|(pos, _)| *pos).collect();
        positions.dedup();
        let rows = state.files.read_rows(&path, &positions, field_ids).await?;
        Ok::<_, ReadError>((wanted, positions, rows))
    });
    let read = futures::future::try_join_all(reads).await?;
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut at = vec![(0, 0); count];
    for (wanted, positions, rows) in read {
        let rows = conform_columns(table, schema, rows, positions.len())?;
        sources.push(rows);
        let source = sources.len() - 1;
        // `wanted` is sorted like `positions` (the rows' order), repeats included.
        let mut j = 0;
        for (pos, i) in wanted {
            while positions[j] != pos {
                j += 1;
            }
            at[i] = (source, j);
        }
    }
    Ok((sources, at))
}

/// Waits until the followers of `keys`' partitions have applied everything acknowledged
/// before now (everything below each partition's high watermark), or, with `max_staleness`,
/// everything below the last high watermark read if that read began at most `max_staleness`
/// ago (`heads.rs`). Gives the age of the oldest watermark used (zero when all were read now).
async fn wait_for_tail(
    state: &TableLookup,
    table: &TableName,
    keys: &[Bytes],
    max_staleness: Duration,
) -> ReadResult<Duration> {
    // The keys' partitions, each once (a request's keys are few partitions: a sorted vector).
    let mut partitions: Vec<PartitionId> =
        keys.iter().map(|k| state.codec.partition_of(k)).collect();
    partitions.sort_unstable_by_key(|p| p.0);
    partitions.dedup();
    let head = |p: PartitionId| async move {
        let (high, age) = state.heads.high(p, max_staleness).await?;
        Ok::<_, ReadError>((p, high, age))
    };
    let heads: Vec<(PartitionId, Offset, Duration)> = match partitions[..] {
        [] => return Ok(Duration::ZERO),
        [p] => vec![head(p).await?],
        _ => futures::future::try_join_all(partitions.iter().map(|&p| head(p))).await?,
    };
    // The wait's clock starts at the first follower behind: one caught up already (the usual
    // case) costs a comparison, no timer or subscription.
    let mut started = None;
    for (p, high, _) in &heads {
        let tail = &state.tails[p.0 as usize];
        if tail.consumed() >= *high && tail.broken().is_none() {
            continue;
        }
        let started = *started.get_or_insert_with(std::time::Instant::now);
        let left = FOLLOW_TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tail.wait_for(*high)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(ReadError::LookupState {
                    table: table.clone(),
                    reason: format!("changelog partition {p} cannot be followed: {reason}"),
                });
            }
            Err(_) => {
                return Err(ReadError::LookupBehind {
                    table: table.clone(),
                    partition: p.0,
                    needed: high.0,
                    applied: tail.consumed().0,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }
    Ok(heads
        .iter()
        .map(|(_, _, age)| *age)
        .max()
        .unwrap_or_default())
}

/// A FRESH lookup on `state`.
async fn fresh_lookup(
    state: &TableLookup,
    request: &LookupRequest,
    max_staleness: Duration,
) -> ReadResult<LookupResponse> {
    let keys = keys::canonical_keys(&state.codec, &state.def, &request.keys)?;
    // Relaxed once here, so conforming each source and the answer reuse it.
    let schema = if request.columns.is_empty() {
        state.all_columns.clone()
    } else {
        nullable(&output_schema(
            &request.table,
            &state.codec,
            &request.columns,
        )?)
    };
    let lag = wait_for_tail(state, &request.table, &keys, max_staleness).await?;
    let found = state.resolve(&keys)?;
    let snapshot = state.base_snapshot_ref();
    let mut offsets = PartitionOffsets::default();
    for (p, tail) in state.tails.iter().enumerate() {
        offsets.set(PartitionId(p as u32), tail.consumed());
    }

    // Rows from the base: one read per file.
    let located = found.iter().filter_map(|f| match f {
        Found::Row(row) => Some(row),
        Found::Tail(_) | Found::Missing => None,
    });
    let (mut sources, at) = read_located(state, &request.table, &schema, located).await?;
    let mut at = at.into_iter();
    let mut picks = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (i, f) in found.into_iter().enumerate() {
        match f {
            Found::Missing => missing.push(i as u32),
            Found::Tail(row) => {
                sources.push(conform(&request.table, &schema, &row)?);
                picks.push((sources.len() - 1, 0));
            }
            Found::Row(..) => picks.push(at.next().ok_or_else(|| ReadError::Internal {
                reason: "a base row of the lookup was not read".into(),
            })?),
        }
    }
    let rows = if picks.is_empty() && Arc::ptr_eq(&schema, &state.all_columns) {
        state.no_rows.clone()
    } else {
        finish(&request.table, &schema, &sources, &picks)?
    };
    Ok(LookupResponse {
        as_of: AsOf {
            snapshot_id: snapshot.as_ref().map(|s| s.snapshot_id()),
            offsets,
            commit_time_ms: snapshot.as_ref().map_or(0, |s| s.timestamp_ms()),
            lag_records: 0,
            // At most the age of the oldest high watermark waited for: a record not reflected
            // was acknowledged after that watermark was read (zero: read for this lookup).
            lag_ms: lag.as_millis() as i64,
        },
        rows,
        missing,
    })
}
