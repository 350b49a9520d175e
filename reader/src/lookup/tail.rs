//! The changelog tail of a lookup state: per partition, the latest record of every key at or
//! after the base snapshot's anchored offsets, kept current by one follower task per
//! partition.

use std::collections::{HashMap, HashSet};
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

/// Records a follower asks for per read.
const READ_BATCH: usize = 10_000;
/// How long a follower's read waits for an append (it returns as soon as one lands).
const READ_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed read.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The latest change of one key in the tail.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    /// Its offset.
    pub(crate) offset: Offset,
    /// The row (one row with the codec's decoded schema, in buffers of its own so it does not
    /// pin the decoded batch it came from); `None` for a delete.
    pub(crate) row: Option<RecordBatch>,
}

impl TailEntry {
    /// Memory held by the entry and its key.
    fn bytes(&self, key: &Bytes) -> usize {
        64 + key.len()
            + self
                .row
                .as_ref()
                .map_or(0, RecordBatch::get_array_memory_size)
    }
}

/// One partition's tail.
#[derive(Debug)]
pub(crate) struct PartitionTail {
    entries: Mutex<HashMap<Bytes, TailEntry>>,
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
            entries: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            consumed: watch::Sender::new(from),
            broken: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, TailEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest change of `key` in the tail.
    pub(crate) fn get(&self, key: &[u8]) -> Option<TailEntry> {
        self.lock().get(key).cloned()
    }

    /// Memory held by the tail's entries.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keys in the tail.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
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
        let mut freed = 0;
        self.lock().retain(|key, entry| {
            if entry.offset >= offset {
                return true;
            }
            if entry.row.is_none() {
                on_delete(key);
            }
            freed += entry.bytes(key);
            false
        });
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    fn apply(&self, codec: &RecordCodec, records: &[StoredRecord], table: &str) {
        let mut changes = Vec::with_capacity(records.len());
        decode_into(codec, records, table, &mut changes);
        let next = records.last().map(|r| r.offset.next());
        let mut entries = self.lock();
        let (mut added, mut freed) = (0, 0);
        for (key, entry) in changes {
            added += entry.bytes(&key);
            if let Some(old) = entries.get(&key) {
                freed += old.bytes(&key);
            }
            entries.insert(key, entry);
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        // Under the lock, so a copy of the entries knows exactly which offsets it covers.
        if let Some(next) = next {
            self.consumed.send_replace(next);
        }
    }

    /// Adds every key of the tail to `keys` and every live row to `rows` (in changelog order);
    /// returns the offset the copy covers (every record below it, none at or above it).
    pub(crate) fn copy_into(
        &self,
        keys: &mut HashSet<Bytes>,
        rows: &mut Vec<RecordBatch>,
    ) -> Offset {
        let mut live = Vec::new();
        let covered = {
            let entries = self.lock();
            keys.reserve(entries.len());
            for (key, entry) in entries.iter() {
                keys.insert(key.clone());
                if let Some(row) = &entry.row {
                    live.push((entry.offset, row.clone()));
                }
            }
            *self.consumed.borrow()
        };
        live.sort_unstable_by_key(|(offset, _)| *offset);
        rows.extend(live.into_iter().map(|(_, row)| row));
        covered
    }
}

/// Decodes `records` into (canonical key, entry) in order. Records that are not rows of the
/// table (another producer's, another incarnation's) are skipped with an error log, as the
/// committer skips them.
fn decode_into(
    codec: &RecordCodec,
    records: &[StoredRecord],
    table: &str,
    out: &mut Vec<(Bytes, TailEntry)>,
) {
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
            for key in keys {
                let row = match decoded.ops[key.row] {
                    ChangeOp::Delete => None,
                    ChangeOp::Insert | ChangeOp::Upsert => {
                        // A copy of the one row: a slice would keep the whole decoded batch
                        // alive for as long as any of its rows is the latest of its key.
                        let at = arrow::array::UInt32Array::from(vec![key.row as u32]);
                        match arrow::compute::take_record_batch(&decoded.batch, &at) {
                            Ok(row) => Some(row),
                            Err(e) => {
                                tracing::error!(table, offset = %decoded.offsets[key.row], "changelog record skipped: {e}");
                                continue;
                            }
                        }
                    }
                };
                out.push((
                    key.key,
                    TailEntry {
                        offset: decoded.offsets[key.row],
                        row,
                    },
                ));
            }
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
