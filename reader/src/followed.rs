//! FRESH reads without re-reading the changelog: per keyed table, the changelog tail after a
//! recent snapshot, kept in memory by one follower per partition.
//!
//! A [`FollowedTail`] holds a *base* snapshot, its anchored offsets, and per partition the
//! latest record of every key at or after them (the same [`PartitionTail`]s LOOKUP uses, rows
//! in columnar chunks, without a key index). A task moves the base to each newer snapshot: it
//! waits until the followers have passed the new snapshot's offsets, then, under the base's
//! write lock, drops tail entries below them and swaps the base. A FRESH read waits until the
//! followers have applied everything below the heads it read, then copies the tail under the
//! base's read lock (or reuses the last copy when nothing moved since): the base snapshot's rows
//! minus the tail's keys, plus the tail's live rows, is every acknowledged write (the argument
//! of docs/reader.md "Why the answer is fresh").
//!
//! The first FRESH read of a table starts its followers at the current snapshot's offsets and
//! waits for them like any read. A tail over [`MAX_FOLLOWED_BYTES`], a table dropped or changed
//! in schema, a follower that cannot go on, or [`IDLE`] without a read ends the state; reads
//! then use [`crate::tail::read_tail`] (the changelog range, read and folded per request) until
//! a new state serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use iceberg::spec::SnapshotRef;
use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::Changelog;
use unitable_core::commit::read::anchored_offsets;
use unitable_core::naming::TableName;
use unitable_core::offsets::{PartitionId, PartitionOffsets};
use unitable_core::record::RecordCodec;
use unitable_core::table::TableDef;

use crate::error::{ReadError, ReadResult};
use crate::lookup::tail::{PartitionTail, Rebase, Tasks, next_base, spawn_followers, wait_all};
use crate::tail::{Tail, TailKeys};

/// A table's followed tail may hold this much before it is dropped (reads fall back to reading
/// the changelog range).
pub const MAX_FOLLOWED_BYTES: usize = 512 << 20;
/// A state no FRESH read used for this long stops its followers.
const IDLE: Duration = Duration::from_secs(300);
/// How often the base moves to the newest snapshot.
const REBASE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a read waits for the followers to reach the heads (then it reads the range
/// itself), and a re-base for them to reach a new snapshot (then it tries again later).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches of live rows a patched copy may hold before they are merged into one (each patch
/// adds one per partition that changed).
const MAX_LIVE_BATCHES: usize = 64;

/// After a table's state is dropped for memory, no new one starts for this long (the tail is
/// long; reads fold the changelog range instead of paying a follower that would be dropped
/// again).
const COOLDOWN: Duration = Duration::from_secs(60);

/// The states by table.
#[derive(Debug, Default)]
pub(crate) struct FollowedTails {
    tables: Mutex<HashMap<TableName, Arc<FollowedTail>>>,
    /// Tables whose state was dropped for memory, and until when none starts again.
    cooling: Mutex<HashMap<TableName, Instant>>,
}

/// What a FRESH read serves from a followed tail.
#[derive(Debug, Clone)]
pub(crate) struct Followed {
    /// The base snapshot (`None`: the table had none when the state started).
    pub(crate) snapshot: Option<SnapshotRef>,
    /// The changelog after it: keys changed and live rows.
    pub(crate) tail: Arc<Tail>,
    /// Exclusive end per partition of what the tail covers (at or past the heads asked for).
    pub(crate) to: PartitionOffsets,
}

/// One table's followed tail.
#[derive(Debug)]
pub(crate) struct FollowedTail {
    name: TableName,
    uuid: String,
    schema_id: i32,
    base: RwLock<(Option<SnapshotRef>, PartitionOffsets)>,
    tails: Vec<Arc<PartitionTail>>,
    tasks: Tasks,
    invalid: AtomicBool,
    /// Set when the state ended for memory.
    too_big: AtomicBool,
    /// When a read last used the state, in ms since `epoch`.
    used_ms: AtomicU64,
    epoch: Instant,
    /// The last copy a read took: the next read reuses it while the base is the same and the
    /// followers have applied nothing since (reads between writes cost no copy), and patches
    /// it with what they applied since while the base is the same.
    last: Mutex<Option<Followed>>,
    /// The primary-key columns in the decoded schema (the tail's live rows).
    key_columns: Vec<usize>,
}

impl FollowedTails {
    /// What a FRESH read of `table` (loaded, current schema `codec`) serves from the followed
    /// tail: `None` when the table has no primary key or the state cannot serve (the caller
    /// reads the changelog range instead).
    pub(crate) async fn read(
        &self,
        table: &iceberg::table::Table,
        def: &TableDef,
        codec: &Arc<RecordCodec>,
        heads: &PartitionOffsets,
        catalog: &TableCatalog,
        changelog: &Arc<dyn Changelog>,
    ) -> ReadResult<Option<Followed>> {
        if def.is_append_only() {
            return Ok(None);
        }
        let metadata = table.metadata();
        let state = {
            let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            let mut cooling = self.cooling.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            cooling.retain(|_, until| *until > now);
            tables.retain(|name, s| {
                if s.too_big.load(Ordering::Relaxed) {
                    cooling.insert(name.clone(), now + COOLDOWN);
                }
                s.is_valid()
            });
            if cooling.contains_key(&def.name) {
                return Ok(None);
            }
            drop(cooling);
            match tables.get(&def.name) {
                Some(s)
                    if s.uuid == metadata.uuid().to_string()
                        && s.schema_id == metadata.current_schema_id() =>
                {
                    s.clone()
                }
                _ => {
                    let s = FollowedTail::start(table, def, codec, catalog, changelog);
                    tables.insert(def.name.clone(), s.clone());
                    s
                }
            }
        };
        state
            .used_ms
            .store(state.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let started = Instant::now();
        for (&p, &high) in &heads.0 {
            let Some(tail) = state.tails.get(p.0 as usize) else {
                return Ok(None);
            };
            let left = FOLLOW_TIMEOUT.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, tail.wait_for(high)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    state.invalidate(&reason);
                    return Ok(None);
                }
                // Far behind (a state just started on a long tail): this read folds the range
                // itself; the followers go on for later reads.
                Err(_) => {
                    tracing::info!(table = %def.name, partition = p.0, needed = high.0,
                        applied = tail.consumed().0, "followed FRESH tail is behind; reading the changelog range");
                    return Ok(None);
                }
            }
        }
        let followed = state.copy(codec)?;
        if state.bytes() > MAX_FOLLOWED_BYTES {
            state.drop_for_memory();
        }
        // A base expired from the table's metadata cannot be scanned: read the range instead.
        if let Some(s) = &followed.snapshot
            && metadata.snapshot_by_id(s.snapshot_id()).is_none()
        {
            return Ok(None);
        }
        Ok(Some(followed))
    }
}

impl FollowedTail {
    fn start(
        table: &iceberg::table::Table,
        def: &TableDef,
        codec: &Arc<RecordCodec>,
        catalog: &TableCatalog,
        changelog: &Arc<dyn Changelog>,
    ) -> Arc<Self> {
        let metadata = table.metadata();
        let snapshot = metadata.current_snapshot().cloned();
        let offsets = snapshot
            .as_ref()
            .map_or_else(PartitionOffsets::default, |s| {
                anchored_offsets(metadata, s.snapshot_id())
            });
        let tails: Vec<Arc<PartitionTail>> = (0..def.changelog.partitions)
            .map(|p| Arc::new(PartitionTail::new(offsets.get(PartitionId(p)))))
            .collect();
        let state = Arc::new(Self {
            name: def.name.clone(),
            uuid: metadata.uuid().to_string(),
            schema_id: metadata.current_schema_id(),
            base: RwLock::new((snapshot, offsets)),
            tails: tails.clone(),
            tasks: Tasks::default(),
            invalid: AtomicBool::new(false),
            too_big: AtomicBool::new(false),
            used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            last: Mutex::new(None),
            key_columns: def
                .primary_key
                .iter()
                .filter_map(|k| codec.decoded_schema().index_of(k).ok())
                .collect(),
        });
        let mut tasks = spawn_followers(
            changelog,
            &def.changelog.topic,
            codec,
            &tails,
            &def.name.to_string(),
        );
        tasks.push(tokio::spawn(maintain(
            Arc::downgrade(&state),
            catalog.clone(),
        )));
        state.tasks.set(tasks);
        tracing::info!(table = %def.name, "FRESH reads follow the changelog tail in memory");
        state
    }

    fn is_valid(&self) -> bool {
        !self.invalid.load(Ordering::Acquire) && self.tails.iter().all(|t| t.broken().is_none())
    }

    fn invalidate(&self, reason: &str) {
        if !self.invalid.swap(true, Ordering::AcqRel) {
            tracing::info!(table = %self.name, "followed FRESH tail dropped: {reason}");
        }
    }

    /// Ends the state because its tail is too big (no new state starts for [`COOLDOWN`]).
    fn drop_for_memory(&self) {
        self.too_big.store(true, Ordering::Relaxed);
        self.invalidate("its changelog tail is over the followed-tail memory limit");
    }

    fn bytes(&self) -> usize {
        self.tails.iter().map(|t| t.bytes()).sum()
    }

    /// The base and a copy of the tail, consistent with each other (the base cannot move
    /// meanwhile).
    fn copy(&self, codec: &RecordCodec) -> ReadResult<Followed> {
        let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
        let base_id = base.0.as_ref().map(|s| s.snapshot_id());
        // Entries change only when a follower applies records (and moves its consumed offset
        // under the same lock) or when a re-base prunes them (under the base's write lock,
        // moving the base): with the same base, the tail is the last copy's plus what the
        // followers applied since, and with the same offsets too, it is the last copy.
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|last| last.snapshot.as_ref().map(|s| s.snapshot_id()) == base_id);
        if let Some(last) = last {
            if self
                .tails
                .iter()
                .enumerate()
                .all(|(p, t)| last.to.get(PartitionId(p as u32)) == t.consumed())
            {
                return Ok(last);
            }
            let patched = self.patch(codec, &last)?;
            drop(base);
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(patched.clone());
            return Ok(patched);
        }
        let mut keys = TailKeys::new(codec);
        let mut rows = Vec::new();
        let mut to = PartitionOffsets::default();
        let combine = |e: arrow::error::ArrowError| ReadError::Internal {
            reason: format!("combine followed tail rows: {e}"),
        };
        for (p, tail) in self.tails.iter().enumerate() {
            let covered = tail
                .copy_into(|k| keys.insert(codec, k), &mut rows)
                .map_err(combine)?;
            to.set(PartitionId(p as u32), covered);
        }
        let snapshot = base.0.clone();
        drop(base);
        // One batch per partition.
        let live = rows;
        let followed = Followed {
            snapshot,
            tail: Arc::new(Tail { keys, live }),
            to,
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(followed.clone());
        Ok(followed)
    }

    /// The last copy with what the followers applied since it: the keys changed since are
    /// added to its key set, its live rows of those keys are dropped, and their latest live rows
    /// are added. Costs the keys and rows that changed plus one pass over the copy's live rows,
    /// instead of copying the whole tail again. Called under the base's read lock, with `last`
    /// taken from the same base.
    fn patch(&self, codec: &RecordCodec, last: &Followed) -> ReadResult<Followed> {
        let fail = |what: &str, e: arrow::error::ArrowError| ReadError::Internal {
            reason: format!("{what} of the followed tail: {e}"),
        };
        let mut keys = last.tail.keys.clone();
        let mut changed = TailKeys::new(codec);
        let mut rows = Vec::new();
        let mut to = PartitionOffsets::default();
        for (p, tail) in self.tails.iter().enumerate() {
            let p = PartitionId(p as u32);
            let covered = tail
                .copy_since(
                    last.to.get(p),
                    |k| {
                        keys.insert(codec, k);
                        changed.insert(codec, k);
                    },
                    &mut rows,
                )
                .map_err(|e| fail("copy the changes", e))?;
            to.set(p, covered);
        }
        // The last copy's rows, less those of keys changed since, then the changed rows:
        // batches are shared, filtered only where a row left, and merged when they get many.
        let mut live = Vec::with_capacity(last.tail.live.len() + rows.len());
        for old in &last.tail.live {
            let key_batch = old
                .project(&self.key_columns)
                .map_err(|e| fail("project the key columns", e))?;
            let mut keep = vec![true; old.num_rows()];
            if changed.supersede(codec, &key_batch, &mut keep)? == 0 {
                live.push(old.clone());
            } else {
                live.push(
                    arrow::compute::filter_record_batch(old, &keep.into())
                        .map_err(|e| fail("drop superseded rows", e))?,
                );
            }
        }
        live.extend(rows);
        live.retain(|b| b.num_rows() > 0);
        if live.len() > MAX_LIVE_BATCHES {
            live = vec![
                arrow::compute::concat_batches(&codec.decoded_schema(), &live)
                    .map_err(|e| fail("combine rows", e))?,
            ];
        }
        Ok(Followed {
            snapshot: last.snapshot.clone(),
            tail: Arc::new(Tail { keys, live }),
            to,
        })
    }

    /// Moves the base to the table's newest snapshot.
    async fn refresh(&self, catalog: &TableCatalog) -> ReadResult<()> {
        let table = catalog.load(&self.name).await?;
        let (old, old_offsets) = {
            let base = self.base.read().unwrap_or_else(PoisonError::into_inner);
            (base.0.as_ref().map(|s| s.snapshot_id()), base.1.clone())
        };
        let (newest, offsets) = match next_base(
            table.metadata(),
            &self.uuid,
            self.schema_id,
            old,
            &old_offsets,
        ) {
            Rebase::Stay => return Ok(()),
            Rebase::Invalid(reason) => {
                self.invalidate(reason);
                return Ok(());
            }
            Rebase::To(newest, offsets) => (newest, offsets),
        };
        match wait_all(&self.tails, &offsets, FOLLOW_TIMEOUT).await {
            Ok(true) => {}
            // Behind: try again at the next interval.
            Ok(false) => return Ok(()),
            Err(reason) => {
                self.invalidate(&reason);
                return Ok(());
            }
        }
        let mut base = self.base.write().unwrap_or_else(PoisonError::into_inner);
        for (p, tail) in self.tails.iter().enumerate() {
            tail.prune_below(offsets.get(PartitionId(p as u32)), |_| {});
        }
        *base = (Some(newest), offsets);
        Ok(())
    }
}

/// Re-bases the state every [`REBASE_INTERVAL`] until it is dropped, invalid or idle.
async fn maintain(state: Weak<FollowedTail>, catalog: TableCatalog) {
    loop {
        tokio::time::sleep(REBASE_INTERVAL).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if !state.is_valid() {
            return;
        }
        let idle_ms = (state.epoch.elapsed().as_millis() as u64)
            .saturating_sub(state.used_ms.load(Ordering::Relaxed));
        if idle_ms > IDLE.as_millis() as u64 {
            state.invalidate("no FRESH read used it for 5 minutes");
            return;
        }
        if state.bytes() > MAX_FOLLOWED_BYTES {
            state.drop_for_memory();
            return;
        }
        if let Err(e) = state.refresh(&catalog).await {
            if e.is_retryable() {
                tracing::warn!(table = %state.name, "followed FRESH tail re-base failed, retrying: {e}");
            } else {
                state.invalidate(&e.to_string());
                return;
            }
        }
    }
}
