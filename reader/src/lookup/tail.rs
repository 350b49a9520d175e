//! The changelog tail of a lookup state: per partition, the latest record of every key at or
//! after the base snapshot's anchored offsets, kept current by one follower task per
//! partition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use iceberg::spec::{SnapshotRef, TableMetadata};
use tokio::sync::watch;
use unitable_core::changelog::{Changelog, ChangelogError, StoredRecord};
use unitable_core::commit::read::anchored_offsets;
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};

use super::FastMap;

/// Records a follower asks for per read.
const READ_BATCH: usize = 10_000;
/// How long a follower's read waits for an append (it returns as soon as one lands).
const READ_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed read.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A chunk with fewer rows than this is small: small chunks are merged once there are
/// [`MAX_SMALL_CHUNKS`] of them (a follower that reads one record at a time makes one-row
/// chunks).
const SMALL_CHUNK_ROWS: usize = 1024;
/// Small chunks kept before they are merged into one.
const MAX_SMALL_CHUNKS: usize = 32;
/// Rows held in chunks beyond twice the live rows plus this many are garbage worth a merge.
const GARBAGE_SLACK_ROWS: usize = 4096;
/// Memory counted per key besides its bytes and row (map slot, key handle).
const KEY_OVERHEAD: usize = 64;

/// The latest change of one key in the tail.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    /// The row (one row with the codec's decoded schema, a slice of the tail's columnar chunk);
    /// `None` for a delete.
    pub(crate) row: Option<RecordBatch>,
}

/// Where a key's latest change is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: Offset,
    /// Chunk number and row of an insert or upsert; `None` for a delete.
    row: Option<(u32, u32)>,
}

/// Decoded rows, as a follower read them (or as a merge gathered them), that live slots point
/// into.
#[derive(Debug)]
struct Chunk {
    batch: RecordBatch,
    /// Slots pointing into it; it is freed at 0.
    live: usize,
    bytes: usize,
}

/// One partition's entries: the latest change per key, rows kept in columnar chunks.
#[derive(Debug, Default)]
struct Entries {
    slots: FastMap<Bytes, Slot>,
    /// By chunk number; `None` once freed (the number is reused).
    chunks: Vec<Option<Chunk>>,
    free: Vec<u32>,
    /// Rows in chunks, and how many of them live slots point to.
    held_rows: usize,
    live_rows: usize,
    /// Memory of chunks and keys.
    bytes: usize,
}

impl Entries {
    fn chunk(&self, n: u32) -> &Chunk {
        self.chunks[n as usize]
            .as_ref()
            .expect("a live slot points into a freed chunk")
    }

    fn add_chunk(&mut self, batch: RecordBatch) -> u32 {
        let bytes = batch.get_array_memory_size();
        self.held_rows += batch.num_rows();
        self.bytes += bytes;
        let chunk = Some(Chunk {
            batch,
            live: 0,
            bytes,
        });
        match self.free.pop() {
            Some(n) => {
                self.chunks[n as usize] = chunk;
                n
            }
            None => {
                self.chunks.push(chunk);
                (self.chunks.len() - 1) as u32
            }
        }
    }

    fn link(&mut self, n: u32) {
        if let Some(c) = self.chunks[n as usize].as_mut() {
            c.live += 1;
            self.live_rows += 1;
        }
    }

    /// A slot no longer points at row `(n, _)`: frees the chunk when nothing else does.
    fn unlink(&mut self, n: u32) {
        let Some(c) = self.chunks[n as usize].as_mut() else {
            return;
        };
        c.live -= 1;
        self.live_rows -= 1;
        if c.live == 0 {
            self.release(n);
        }
    }

    fn release(&mut self, n: u32) {
        if let Some(c) = self.chunks[n as usize].take() {
            self.held_rows -= c.batch.num_rows();
            self.bytes -= c.bytes;
            self.free.push(n);
        }
    }

    fn set(&mut self, key: Bytes, slot: Slot) {
        if let Some(n) = slot.row.map(|(n, _)| n) {
            self.link(n);
        }
        let key_bytes = KEY_OVERHEAD + key.len();
        match self.slots.insert(key, slot) {
            Some(old) => {
                if let Some((n, _)) = old.row {
                    self.unlink(n);
                }
            }
            None => self.bytes += key_bytes,
        }
    }

    /// Applies one decoded run: its rows become a chunk, its changes the keys' latest.
    fn apply(&mut self, run: Run) {
        let n = run
            .changes
            .iter()
            .any(|c| c.live)
            .then(|| self.add_chunk(run.batch));
        // Held while the run applies: a change superseding an earlier one of the same run must
        // not free the chunk under the changes still to come.
        if let Some(c) = n.and_then(|n| self.chunks[n as usize].as_mut()) {
            c.live += 1;
        }
        for c in run.changes {
            let row = match n {
                Some(n) if c.live => Some((n, c.row as u32)),
                _ => None,
            };
            self.set(
                c.key,
                Slot {
                    offset: c.offset,
                    row,
                },
            );
        }
        if let Some(n) = n
            && let Some(c) = self.chunks[n as usize].as_mut()
        {
            c.live -= 1;
            // Rows all superseded within the run itself: no slot uses the chunk.
            if c.live == 0 {
                self.release(n);
            }
        }
        self.merge_if_worth_it();
    }

    /// Merges chunks when garbage or small chunks have piled up: live rows are gathered into
    /// one new chunk (all chunks when garbage is the reason, else only the small ones).
    fn merge_if_worth_it(&mut self) {
        let garbage = self.held_rows > 2 * self.live_rows + GARBAGE_SLACK_ROWS;
        let small: Vec<u32> = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(n, c)| {
                c.as_ref()
                    .filter(|c| garbage || c.batch.num_rows() < SMALL_CHUNK_ROWS)
                    .map(|_| n as u32)
            })
            .collect();
        if !garbage && small.len() <= MAX_SMALL_CHUNKS {
            return;
        }
        if let Err(e) = self.merge(&small) {
            // Arrow refused to gather rows of one schema: keep the chunks as they are.
            tracing::error!("merging changelog tail chunks failed: {e}");
        }
    }

    fn merge(&mut self, chunks: &[u32]) -> Result<(), arrow::error::ArrowError> {
        let position: HashMap<u32, usize> =
            chunks.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut moved: Vec<(usize, usize, Bytes)> = Vec::new();
        for (key, slot) in &self.slots {
            if let Some((n, r)) = slot.row
                && let Some(&i) = position.get(&n)
            {
                moved.push((i, r as usize, key.clone()));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        moved.sort_unstable_by_key(|(i, r, _)| (*i, *r));
        let batches: Vec<&RecordBatch> = chunks.iter().map(|&n| &self.chunk(n).batch).collect();
        let picks: Vec<(usize, usize)> = moved.iter().map(|(i, r, _)| (*i, *r)).collect();
        let merged = arrow::compute::interleave_record_batch(&batches, &picks)?;
        let n = self.add_chunk(merged);
        for (row, (_, _, key)) in moved.into_iter().enumerate() {
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.row = Some((n, row as u32));
            }
        }
        let count = picks.len();
        if let Some(c) = self.chunks[n as usize].as_mut() {
            c.live = count;
        }
        for &old in chunks {
            if let Some(c) = self.chunks[old as usize].as_mut() {
                // Their slots now point into the merged chunk.
                c.live = 0;
            }
            self.release(old);
        }
        Ok(())
    }

    fn entry(&self, slot: &Slot) -> TailEntry {
        TailEntry {
            row: slot
                .row
                .map(|(n, r)| self.chunk(n).batch.slice(r as usize, 1)),
        }
    }
}

/// One partition's tail.
#[derive(Debug)]
pub(crate) struct PartitionTail {
    entries: Mutex<Entries>,
    /// Memory of the entries (kept with every change to them).
    bytes: AtomicUsize,
    /// The next offset the follower will read: every record below it is applied.
    consumed: watch::Sender<Offset>,
    /// Set when the follower cannot go on (records it needs are gone, the topic vanished):
    /// the state must be rebuilt.
    broken: watch::Sender<Option<String>>,
}

impl PartitionTail {
    pub(crate) fn new(from: Offset) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            bytes: AtomicUsize::new(0),
            consumed: watch::Sender::new(from),
            broken: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest change of `key` in the tail.
    pub(crate) fn get(&self, key: &[u8]) -> Option<TailEntry> {
        let entries = self.lock();
        entries.slots.get(key).map(|slot| entries.entry(slot))
    }

    /// Memory held by the tail's entries.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keys in the tail.
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub(crate) fn consumed(&self) -> Offset {
        *self.consumed.borrow()
    }

    /// Why the follower stopped, if it did.
    pub(crate) fn broken(&self) -> Option<String> {
        self.broken.borrow().clone()
    }

    /// Waits until every record below `offset` is applied; `Err` with the reason if the
    /// follower stopped first.
    pub(crate) async fn wait_for(&self, offset: Offset) -> Result<(), String> {
        let mut consumed = self.consumed.subscribe();
        let mut broken = self.broken.subscribe();
        loop {
            if let Some(reason) = broken.borrow_and_update().clone() {
                return Err(reason);
            }
            if *consumed.borrow_and_update() >= offset {
                return Ok(());
            }
            tokio::select! {
                r = consumed.changed() => if r.is_err() { return Err("the follower ended".into()) },
                r = broken.changed() => if r.is_err() { return Err("the follower ended".into()) },
            }
        }
    }

    /// Drops entries below `offset`; calls `on_delete` for each dropped delete.
    pub(crate) fn prune_below(&self, offset: Offset, mut on_delete: impl FnMut(&[u8])) {
        let mut entries = self.lock();
        let mut dropped = Vec::new();
        entries.slots.retain(|key, slot| {
            if slot.offset >= offset {
                return true;
            }
            if slot.row.is_none() {
                on_delete(key);
            }
            dropped.push((KEY_OVERHEAD + key.len(), slot.row));
            false
        });
        for (key_bytes, row) in dropped {
            entries.bytes -= key_bytes;
            if let Some((n, _)) = row {
                entries.unlink(n);
            }
        }
        entries.merge_if_worth_it();
        self.bytes.store(entries.bytes, Ordering::Relaxed);
    }

    fn apply(&self, codec: &RecordCodec, records: &[StoredRecord], table: &str) {
        let mut runs = Vec::new();
        decode_into(codec, records, table, &mut runs);
        let next = records.last().map(|r| r.offset.next());
        let mut entries = self.lock();
        for run in runs {
            entries.apply(run);
        }
        self.bytes.store(entries.bytes, Ordering::Relaxed);
        // Under the lock, so a copy of the entries knows exactly which offsets it covers.
        if let Some(next) = next {
            self.consumed.send_replace(next);
        }
    }

    /// Gives every key of the tail to `keys` and adds its live rows, in changelog order, to `rows`
    /// (one batch); returns the offset the copy covers (every record below it, none at or above
    /// it).
    pub(crate) fn copy_into(
        &self,
        keys: impl FnMut(&Bytes),
        rows: &mut Vec<RecordBatch>,
    ) -> Result<Offset, arrow::error::ArrowError> {
        self.copy_since(Offset(i64::MIN), keys, rows)
    }

    /// [`Self::copy_into`] of the keys whose latest change is at or after `from` only: with
    /// `from` the offset an earlier copy covered, what changed since it (a key's slot holds its
    /// latest change, so a key changed since has its slot at or after `from`).
    pub(crate) fn copy_since(
        &self,
        from: Offset,
        mut keys: impl FnMut(&Bytes),
        rows: &mut Vec<RecordBatch>,
    ) -> Result<Offset, arrow::error::ArrowError> {
        let entries = self.lock();
        let mut live: Vec<(Offset, u32, u32)> = Vec::new();
        for (key, slot) in entries.slots.iter().filter(|(_, s)| s.offset >= from) {
            keys(key);
            if let Some((n, r)) = slot.row {
                live.push((slot.offset, n, r));
            }
        }
        let covered = *self.consumed.borrow();
        if live.is_empty() {
            return Ok(covered);
        }
        live.sort_unstable_by_key(|(offset, _, _)| *offset);
        // Gather from the chunks in use, numbered densely for interleave.
        let mut index: HashMap<u32, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let picks: Vec<(usize, usize)> = live
            .iter()
            .map(|&(_, n, r)| {
                let i = *index.entry(n).or_insert_with(|| {
                    batches.push(&entries.chunk(n).batch);
                    batches.len() - 1
                });
                (i, r as usize)
            })
            .collect();
        rows.push(arrow::compute::interleave_record_batch(&batches, &picks)?);
        Ok(covered)
    }
}

/// Decoded records of one read: the rows and, per record in order, its key and change.
#[derive(Debug)]
struct Run {
    batch: RecordBatch,
    changes: Vec<Change>,
}

#[derive(Debug)]
struct Change {
    key: Bytes,
    offset: Offset,
    /// Its row in the run's batch.
    row: usize,
    /// An insert or upsert (else a delete).
    live: bool,
}

/// Decodes `records` into runs, in order. Records that are not rows of the table (another
/// producer's, another incarnation's) are skipped with an error log, as the committer skips
/// them.
fn decode_into(codec: &RecordCodec, records: &[StoredRecord], table: &str, out: &mut Vec<Run>) {
    match codec.decode(records) {
        Ok(decoded) => {
            let keys = match codec.encode_keys(&decoded.batch) {
                Ok((keys, errors)) => {
                    for e in errors {
                        tracing::error!(table, offset = %decoded.offsets[e.row], "changelog record with an invalid key skipped: {e}");
                    }
                    keys
                }
                Err(e) => {
                    tracing::error!(table, "changelog records skipped: {e}");
                    return;
                }
            };
            let changes = keys
                .into_iter()
                .map(|key| Change {
                    offset: decoded.offsets[key.row],
                    live: decoded.ops[key.row] != ChangeOp::Delete,
                    row: key.row,
                    key: key.key,
                })
                .collect();
            out.push(Run {
                batch: decoded.batch,
                changes,
            });
        }
        // One bad record fails the batch: decode one by one to skip only it.
        Err(_) if records.len() > 1 => {
            for record in records {
                decode_into(codec, std::slice::from_ref(record), table, out);
            }
        }
        Err(e) => tracing::error!(table, "changelog record skipped: {e}"),
    }
}

/// Follows one partition from its tail's consumed offset until aborted.
pub(crate) async fn follow(
    changelog: Arc<dyn Changelog>,
    topic: TopicName,
    partition: PartitionId,
    codec: Arc<RecordCodec>,
    tail: Arc<PartitionTail>,
    table: String,
) {
    loop {
        let from = tail.consumed();
        match changelog
            .read(&topic, partition, from, READ_BATCH, READ_WAIT)
            .await
        {
            Ok(records) if records.is_empty() => {}
            Ok(records) => {
                // Decoding is CPU work, but small per read; a big backlog is read in batches.
                tail.apply(&codec, &records, &table);
            }
            Err(
                e @ (ChangelogError::OffsetOutOfRange { .. }
                | ChangelogError::TopicNotFound { .. }
                | ChangelogError::PartitionNotFound { .. }
                | ChangelogError::Corrupt { .. }),
            ) => {
                tracing::warn!(%table, %partition, "lookup follower stopped: {e}");
                tail.broken.send_replace(Some(e.to_string()));
                return;
            }
            Err(e) => {
                tracing::warn!(%table, %partition, "lookup follower read failed, retrying: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// What a state following a table's changelog tail should do at a re-base.
#[derive(Debug)]
pub(crate) enum Rebase {
    /// Nothing: the table has no snapshot, or the base is its newest.
    Stay,
    /// The state cannot go on (the table was recreated, its schema changed, or its offsets
    /// went backwards): drop it.
    Invalid(&'static str),
    /// Move the base to this snapshot, whose anchored offsets are these.
    To(SnapshotRef, PartitionOffsets),
}

/// Where a state built on `uuid`/`schema_id` whose base is `old` (with `old_offsets`) goes
/// next, given the table's metadata now.
pub(crate) fn next_base(
    metadata: &TableMetadata,
    uuid: &str,
    schema_id: i32,
    old: Option<i64>,
    old_offsets: &PartitionOffsets,
) -> Rebase {
    if metadata.uuid().to_string() != uuid {
        return Rebase::Invalid("the table was dropped and created again");
    }
    if metadata.current_schema_id() != schema_id {
        return Rebase::Invalid("the table's schema changed");
    }
    let Some(newest) = metadata.current_snapshot().cloned() else {
        return Rebase::Stay;
    };
    if old == Some(newest.snapshot_id()) {
        return Rebase::Stay;
    }
    let offsets = anchored_offsets(metadata, newest.snapshot_id());
    if old_offsets.0.iter().any(|(p, o)| offsets.get(*p) < *o) {
        return Rebase::Invalid("the table's anchored offsets moved backwards (a rollback?)");
    }
    Rebase::To(newest, offsets)
}

/// Waits up to `timeout` for every tail to apply everything below `offsets`: `Ok(true)` when
/// they did, `Ok(false)` when one is still behind, `Err` with the reason when a follower stopped.
pub(crate) async fn wait_all(
    tails: &[Arc<PartitionTail>],
    offsets: &PartitionOffsets,
    timeout: Duration,
) -> Result<bool, String> {
    let started = tokio::time::Instant::now();
    for (p, tail) in tails.iter().enumerate() {
        let want = offsets.get(PartitionId(p as u32));
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tail.wait_for(want)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// Background tasks of a state, aborted when the state is dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Tasks {
    pub(crate) fn set(&self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Starts one follower per partition of `topic`, each applying its records to its tail.
pub(crate) fn spawn_followers(
    changelog: &Arc<dyn Changelog>,
    topic: &TopicName,
    codec: &Arc<RecordCodec>,
    tails: &[Arc<PartitionTail>],
    table: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    tails
        .iter()
        .enumerate()
        .map(|(p, tail)| {
            tokio::spawn(follow(
                changelog.clone(),
                topic.clone(),
                PartitionId(p as u32),
                codec.clone(),
                tail.clone(),
                table.to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
