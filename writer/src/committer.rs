//! The table committer: turns changelog ranges into Iceberg snapshots, exactly once.
//!
//! One task per table. On start it claims the table's committer epoch (a table property, set
//! by a compare-and-swap commit), so that a committer of another process that owned the table
//! before can never commit again: every row delta requires the epoch and owner it claimed.
//! Then it reads the offsets anchored in the newest snapshot and rebuilds the primary-key index
//! from the table.
//!
//! Each cycle (every commit interval): reload the table; if its anchored offsets are not the
//! ones this committer believes (a commit whose answer was lost did land), adopt them and
//! rebuild the index; read the changelog from those offsets; decode; keep the last change per
//! key; write the surviving rows as data files and the previous rows of every changed key as
//! position deletes; commit one row delta whose summary records the new offsets. Only after
//! the commit is the index updated. When the table moved on by compactions (`replace`
//! snapshots) since the committer's last commit, the index is re-pointed to the files they
//! added (reading only those files' keys); a commit that finds one of its delete targets
//! replaced does the same and recomputes its deletes. A full rebuild is the fallback (snapshots
//! of other engines, or a re-point that leaves the index pointing into a replaced file).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use bytes::Bytes;
use iceberg::spec::{DataFile, Operation, Struct, TableMetadata};
use iceberg::table::Table;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::routes::{self, ClosedGeneration};
use unitable_core::changelog::{Changelog, ChangelogError, StoredRecord};
use unitable_core::commit::CommitError;
use unitable_core::commit::files::PositionDelete;
use unitable_core::commit::read::ancestors_between;
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::{TableName, TopicName, props, summary};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, DecodedBatch, RecordCodec};
use unitable_core::table::TableDef;

use crate::checkpoint::{self, CheckpointDue, Unusable};
use crate::config::WriterConfig;
use crate::error::{WriteError, WriteResult};
use crate::files::{Layout, take_rows};
use crate::index::{KeyIndex, RowLocation};
use crate::metric_names as m;
use crate::recovery::{anchored_offsets, key_field_ids, rebuild_index, repoint_index};

/// What the committer has committed so far (watched by writes waiting for a snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitProgress {
    /// The newest snapshot this committer committed or found.
    pub snapshot_id: Option<i64>,
    /// The changelog offsets the table reflects (exclusive ends).
    pub offsets: PartitionOffsets,
    /// When that snapshot was committed (ms since the epoch).
    pub commit_time_ms: i64,
    /// The committer stopped: another process took the table over, or it was dropped.
    pub stopped: bool,
    /// Where the committer's primary-key index came from when it started.
    pub index_source: IndexSource,
    /// The committer made its final commit (of a graceful stop or a hand-over) and commits no
    /// more; it may still be writing its key-index checkpoint.
    pub final_commit_done: bool,
}

/// How a committer got its primary-key index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexSource {
    /// Not built yet (or the table is append-only and has none).
    #[default]
    None,
    /// Read from every live data file of the table.
    Rebuilt,
    /// Loaded from a key-index checkpoint and caught up to the table.
    Checkpoint,
}

/// How long a committer lets appends under way land after it sees a changelog move, before
/// it fixes the old topic's end.
const MOVE_GRACE: Duration = Duration::from_secs(2);

/// Everything committers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) catalog: TableCatalog,
    pub(crate) changelog: Arc<dyn Changelog>,
    pub(crate) committer: Committer,
    pub(crate) config: WriterConfig,
}

/// Per-table state, built on start and refreshed when the schema changes.
struct State {
    owner: String,
    epoch: String,
    topic: TopicName,
    partitions: u32,
    def: TableDef,
    uuid: String,
    codec: Arc<RecordCodec>,
    layout: Layout,
    key_field_ids: Vec<i32>,
    index: KeyIndex,
    /// Extra deletes for the next commit (duplicate keys found on rebuild).
    heal: Vec<(PositionDelete, Struct, i32)>,
    next: PartitionOffsets,
    snapshot_id: Option<i64>,
    interval: Duration,
    /// What changed since the index was last checkpointed (or loaded, or rebuilt).
    checkpoint_due: CheckpointDue,
    /// While the changelog moves to another cluster: the target and the positions the old
    /// generation ends at (its high watermarks when this committer first saw the move). The
    /// committer commits up to them, then switches the table to the new generation.
    moving: Option<(String, PartitionOffsets)>,
}

/// One table's committer task.
pub(crate) struct TableCommitter {
    name: TableName,
    shared: Arc<Shared>,
    progress: watch::Sender<CommitProgress>,
    state: Option<State>,
    /// Until the first cycle after a start: the table as the start loaded it after the claim
    /// (that cycle uses it rather than loading it again) and when the start began (that
    /// cycle's phases are logged: they are what a failover costs after the claim).
    just_started: Option<(Table, Instant)>,
}

/// Rows of one cycle, decoded and folded to the last change per key.
struct Folded {
    /// Every decoded row, in changelog order per partition.
    rows: RecordBatch,
    /// Canonical key of each row (empty for append-only tables).
    keys: Vec<Bytes>,
    /// Rows to write, ascending.
    write: Vec<u32>,
    /// Keys whose last change is a delete or an upsert (their old rows get position deletes).
    changed: Vec<(Bytes, ChangeOp)>,
    counts: [u64; 3],
    oldest_ms: Option<i64>,
}

/// Whether `after` (the table as read after the committer's claim) differs from `before` (as
/// read before it) in anything but the claim's properties: then what was loaded from `before`
/// does not describe the table the committer now owns.
fn moved_besides_claim(before: &TableMetadata, after: &TableMetadata) -> bool {
    let unclaimed = |m: &TableMetadata| {
        let mut props = m.properties().clone();
        props.remove(props::COMMITTER_EPOCH);
        props.remove(props::COMMITTER_OWNER);
        props.remove(props::PROPERTIES_COMMIT_ID);
        props
    };
    before.current_snapshot_id() != after.current_snapshot_id()
        || before.current_schema_id() != after.current_schema_id()
        || before.default_partition_spec_id() != after.default_partition_spec_id()
        || unclaimed(before) != unclaimed(after)
}

/// The phases of a committer's first cycle after its start, logged once it has run: with the
/// start's own log line they give what a failover costs after the lease was taken.
struct CyclePhases {
    /// The committer's start (`None` for any later cycle: nothing is measured).
    started: Option<Instant>,
    last: Instant,
    took: [Duration; 4],
}

#[derive(Clone, Copy)]
enum Phase {
    /// Reloading the table, checking the claim, catching the index up.
    Prepare = 0,
    /// Reading the changelog.
    Drain = 1,
    /// Folding and writing the data files.
    Write = 2,
    /// Writing the deletes and committing.
    Commit = 3,
}

impl CyclePhases {
    fn new(started: Option<Instant>) -> Self {
        Self {
            started,
            last: Instant::now(),
            took: [Duration::ZERO; 4],
        }
    }

    fn mark(&mut self, phase: Phase) {
        if self.started.is_some() {
            let now = Instant::now();
            self.took[phase as usize] = now - self.last;
            self.last = now;
        }
    }

    fn log(&self, table: &TableName, rows: usize) {
        let Some(started) = self.started else {
            return;
        };
        let ms = |p: Phase| self.took[p as usize].as_millis() as u64;
        info!(
            %table, rows,
            prepare_ms = ms(Phase::Prepare), drain_ms = ms(Phase::Drain),
            write_ms = ms(Phase::Write), commit_ms = ms(Phase::Commit),
            since_start_ms = started.elapsed().as_millis() as u64,
            "committer's first cycle done"
        );
    }
}

/// Whether a cycle left records in the changelog for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backlog {
    /// The batch limit cut the cycle short (or it was the start): commit again at once.
    Pending,
    /// The cycle read everything the changelog held when it looked.
    CaughtUp,
}

impl TableCommitter {
    pub(crate) fn new(
        name: TableName,
        shared: Arc<Shared>,
        progress: watch::Sender<CommitProgress>,
    ) -> Self {
        Self {
            name,
            shared,
            progress,
            state: None,
            just_started: None,
        }
    }

    /// Runs until `shutdown` or until the table is dropped or taken over. A cycle that hit the
    /// batch limit is followed by the next one at once (a backlog is committed back to back,
    /// not one batch per interval), and so is the first cycle after start (what the changelog
    /// holds beyond the anchored offsets is committed at once). On `shutdown` it commits until
    /// it has caught up with the changelog as it was, then stops.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let table = self.name.to_string();
        // Whichever way this committer stops, this node no longer commits the table: its lag
        // gauge must not keep a stale backlog (another node's committer reports its own).
        let _lag = ClearLagOnExit(table.clone());
        let mut backoff = Duration::from_millis(200);
        let mut final_cycle = false;
        loop {
            let result = if self.state.is_none() {
                // Straight into a first cycle after a successful start.
                self.start().await.map(|()| Backlog::Pending)
            } else {
                self.cycle().await
            };
            let backlog = match result {
                Ok(backlog) => {
                    backoff = Duration::from_millis(200);
                    backlog
                }
                Err(e) if is_terminal(&e) => {
                    if matches!(e, WriteError::Commit(CommitError::Fenced { .. })) {
                        metrics::counter!(m::COMMITTER_FENCED, "table" => table.clone())
                            .increment(1);
                    }
                    warn!(%table, error = %e, "committer stopped");
                    self.progress.send_modify(|p| p.stopped = true);
                    return;
                }
                Err(e) => {
                    metrics::counter!(m::COMMITTER_ERRORS, "table" => table.clone()).increment(1);
                    error!(%table, error = %e, retry_in_ms = backoff.as_millis() as u64, "commit cycle failed");
                    if matches!(e, WriteError::Index(_)) {
                        // The index's spill file failed: start over (claim, rebuild the index).
                        self.state = None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if final_cycle {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = shutdown.cancelled() => { final_cycle = true; continue; }
                    }
                }
            };
            if backlog == Backlog::Pending {
                if final_cycle {
                    info!(%table, "committer: committing the backlog before stopping");
                }
                continue;
            }
            if final_cycle {
                info!(%table, "committer: final commit done");
                // A hand-over can release the lease now: the checkpoint below only speeds up
                // later starts, and the next owner must not wait for it.
                self.progress.send_modify(|p| p.final_commit_done = true);
                self.final_checkpoint().await;
                return;
            }
            let interval = self
                .state
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.interval);
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => final_cycle = true,
            }
        }
    }

    /// Claims the table, then loads the anchored offsets and rebuilds the key index.
    async fn start(&mut self) -> WriteResult<()> {
        let started = Instant::now();
        let catalog = &self.shared.catalog;
        let table = catalog.load(&self.name).await?;
        let current = table.metadata().properties();
        let epoch = current
            .get(props::COMMITTER_EPOCH)
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let owner = format!("{}/{}", self.shared.config.instance, uuid::Uuid::now_v7());
        let mut claim = BTreeMap::new();
        claim.insert(props::COMMITTER_EPOCH.to_string(), epoch.to_string());
        claim.insert(props::COMMITTER_OWNER.to_string(), owner.clone());
        let mut required = BTreeMap::new();
        if let Some(previous) = current.get(props::COMMITTER_EPOCH) {
            required.insert(props::COMMITTER_EPOCH.to_string(), previous.clone());
        }
        // The claim and the index load run at once: the claim changes only the committer's
        // properties, so the state loaded from the table as read before it holds unless the
        // table moved meanwhile (its old owner committed before it was fenced, or someone
        // altered it), which the comparison below catches.
        let claiming = async {
            self.shared
                .committer
                .commit_properties(&self.name, Some(&owner), claim, required)
                .await?;
            crate::crash::point(crate::crash::AFTER_CLAIM);
            let claimed = catalog.load(&self.name).await?;
            WriteResult::Ok((claimed, started.elapsed()))
        };
        let loading = self.load_state(&table, owner.clone(), epoch.to_string());
        let ((claimed_table, claimed), state) = tokio::try_join!(claiming, loading)?;
        let (table, state) = if moved_besides_claim(table.metadata(), claimed_table.metadata()) {
            info!(table = %self.name, "the table changed while the committer claimed it; loading it again");
            drop(state);
            let state = self
                .load_state(&claimed_table, owner, epoch.to_string())
                .await?;
            (claimed_table, state)
        } else {
            (claimed_table, state)
        };
        info!(
            table = %self.name, epoch, offsets = %state.next, keys = state.index.len(),
            claim_ms = claimed.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64, "committer started"
        );
        self.publish(
            &state,
            table
                .metadata()
                .current_snapshot()
                .map(|s| s.timestamp_ms()),
        );
        self.state = Some(state);
        self.just_started = Some((table, started));
        self.mark_commit_time();
        self.register_failure_counters();
        Ok(())
    }

    /// The table's committer failure counters at 0 (from the committer's start on), so alerts
    /// on their increase see the first failure.
    fn register_failure_counters(&self) {
        let table = self.name.to_string();
        for name in [
            m::COMMITTER_ERRORS,
            m::COMMITTER_PANICS,
            m::COMMITTER_FENCED,
            m::RECORDS_LOST,
        ] {
            metrics::counter!(name, "table" => table.clone()).increment(0);
        }
    }

    /// Sets the commit-age gauge to now (a commit, or the committer's start).
    fn mark_commit_time(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(m::LAST_COMMIT_TIMESTAMP, "table" => self.name.to_string()).set(now);
    }

    async fn load_state(&self, table: &Table, owner: String, epoch: String) -> WriteResult<State> {
        let metadata = table.metadata();
        let def = TableDef::from_iceberg(self.name.clone(), metadata)?;
        let uuid = metadata.uuid().to_string();
        let codec = Arc::new(RecordCodec::of_table(&def, metadata)?);
        let config = &self.shared.config;
        let target =
            property(&def, props::WRITE_TARGET_FILE_SIZE).unwrap_or(config.target_file_bytes);
        let interval = property(&def, props::COMMIT_INTERVAL_MS)
            .map_or(config.commit_interval, Duration::from_millis);
        let layout = Layout::of(metadata, target)?;
        let key_field_ids = key_field_ids(metadata, &def.primary_key)?;
        let mut state = State {
            owner,
            epoch,
            topic: def.changelog.topic.clone(),
            partitions: def.changelog.partitions,
            uuid,
            codec,
            layout,
            key_field_ids,
            index: KeyIndex::new(),
            heal: Vec::new(),
            next: anchored_offsets(metadata),
            snapshot_id: metadata.current_snapshot_id(),
            interval,
            def,
            checkpoint_due: CheckpointDue::fresh(),
            moving: None,
        };
        self.restore_or_rebuild(&mut state, table).await?;
        Ok(state)
    }

    /// Loads the index from the newest usable checkpoint, caught up to the table's current
    /// snapshot; rebuilds it from the table when there is none (see [`crate::checkpoint`]).
    async fn restore_or_rebuild(&self, state: &mut State, table: &Table) -> WriteResult<()> {
        if state.def.is_append_only() {
            return Ok(());
        }
        let policy = &self.shared.config.index_checkpoints;
        if !policy.enabled || table.metadata().current_snapshot_id().is_none() {
            return self.rebuild(state, table, "start").await;
        }
        let started = Instant::now();
        let name = self.name.to_string();
        match checkpoint::restore(
            &self.shared.committer,
            table.file_io(),
            &self.shared.catalog.config().storage_props,
            table.metadata(),
            &state.codec,
            &state.key_field_ids,
            || KeyIndex::with_spill(self.shared.config.index_spill(&self.name, &state.uuid)),
        )
        .await
        {
            Ok(restored) => {
                metrics::counter!(m::INDEX_CHECKPOINT_LOADS, "table" => name, "result" => "loaded")
                    .increment(1);
                info!(
                    table = %self.name, checkpoint = %restored.path,
                    checkpoint_snapshot = restored.snapshot_id,
                    checkpoint_keys = restored.checkpoint_keys, new_files = restored.new_files,
                    new_rows = restored.new_rows, keys = restored.rebuilt.index.len(),
                    list_and_plan_ms = restored.phases.list_and_plan.as_millis() as u64,
                    read_ms = restored.phases.read.as_millis() as u64,
                    load_ms = restored.phases.load.as_millis() as u64,
                    catch_up_ms = restored.phases.catch_up.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "loaded the primary-key index from a checkpoint"
                );
                state.heal = restored.rebuilt.duplicates;
                state.index = restored.rebuilt.index;
                state.checkpoint_due = if restored.new_files == 0 {
                    CheckpointDue::fresh()
                } else {
                    CheckpointDue::after(restored.new_files, restored.new_rows)
                };
                self.report_index(state);
                self.progress
                    .send_modify(|p| p.index_source = IndexSource::Checkpoint);
                Ok(())
            }
            Err(unusable) => {
                metrics::counter!(m::INDEX_CHECKPOINT_LOADS, "table" => name, "result" => unusable.label())
                    .increment(1);
                match &unusable {
                    Unusable::Missing => {
                        info!(table = %self.name, "no key-index checkpoint; rebuilding the index")
                    }
                    Unusable::Stale(reason) => {
                        warn!(table = %self.name, %reason, "no usable key-index checkpoint; rebuilding the index")
                    }
                }
                self.rebuild(state, table, "start").await
            }
        }
    }

    /// Writes a checkpoint of the index (in step with `state.snapshot_id`) when one is due, or
    /// whenever the index changed since the last one if `force`. Failures are logged and
    /// counted: the next start then catches up from an older checkpoint or rebuilds.
    async fn checkpoint(&self, state: &mut State, force: bool) {
        let policy = &self.shared.config.index_checkpoints;
        // Pending heals are duplicates only a rebuild finds: never checkpoint before they land.
        if state.def.is_append_only() || !policy.enabled || !state.heal.is_empty() {
            return;
        }
        let due = if force {
            state.checkpoint_due.changed
        } else {
            state.checkpoint_due.is_due(policy, state.index.len())
        };
        let Some(snapshot_id) = state.snapshot_id.filter(|_| due) else {
            return;
        };
        let started = Instant::now();
        let name = self.name.to_string();
        let table = match self.shared.catalog.load(&self.name).await {
            Ok(table) => table,
            Err(e) => {
                warn!(table = %self.name, error = %e, "cannot load the table to checkpoint its key index");
                return;
            }
        };
        match checkpoint::write(
            &self.shared.committer,
            table.file_io(),
            &self.shared.catalog.config().storage_props,
            table.metadata(),
            snapshot_id,
            &state.key_field_ids,
            &state.index,
        )
        .await
        {
            Ok(written) => {
                let took = started.elapsed();
                metrics::counter!(m::INDEX_CHECKPOINTS, "table" => name.clone()).increment(1);
                metrics::histogram!(m::INDEX_CHECKPOINT_SECONDS, "table" => name.clone())
                    .record(took.as_secs_f64());
                metrics::gauge!(m::INDEX_CHECKPOINT_BYTES, "table" => name)
                    .set(written.bytes as f64);
                info!(
                    table = %self.name, path = %written.path, snapshot_id, keys = written.keys,
                    bytes = written.bytes, took_ms = took.as_millis() as u64,
                    "wrote a key-index checkpoint"
                );
                state.checkpoint_due = CheckpointDue::fresh();
            }
            Err(e) => {
                metrics::counter!(m::INDEX_CHECKPOINT_ERRORS, "table" => name).increment(1);
                warn!(table = %self.name, error = %e, "could not write a key-index checkpoint");
                // Try again after the interval, not after every commit.
                state.checkpoint_due.since = Instant::now();
            }
        }
    }

    /// After the final commit of a stop or a hand-over: checkpoint what changed since the last
    /// one, so the next owner loads it instead of rebuilding.
    async fn final_checkpoint(&mut self) {
        let Some(mut state) = self.state.take() else {
            return;
        };
        self.checkpoint(&mut state, true).await;
        self.state = Some(state);
    }

    async fn rebuild(
        &self,
        state: &mut State,
        table: &Table,
        reason: &'static str,
    ) -> WriteResult<()> {
        if state.def.is_append_only() {
            return Ok(());
        }
        metrics::counter!(m::INDEX_REBUILDS, "table" => self.name.to_string(), "reason" => reason)
            .increment(1);
        let started = Instant::now();
        let rebuilt = rebuild_index(
            &self.shared.committer,
            table.file_io(),
            table.metadata(),
            &state.codec,
            &state.key_field_ids,
            KeyIndex::with_spill(self.shared.config.index_spill(&self.name, &state.uuid)),
        )
        .await?;
        state.heal = rebuilt.duplicates;
        state.index = rebuilt.index;
        state.checkpoint_due = CheckpointDue::after(rebuilt.files as u64, state.index.len() as u64);
        self.progress
            .send_modify(|p| p.index_source = IndexSource::Rebuilt);
        info!(
            table = %self.name, keys = state.index.len(), files = rebuilt.files,
            bytes = state.index.memory_bytes(), took_ms = started.elapsed().as_millis() as u64,
            "rebuilt the primary-key index"
        );
        self.report_index(state);
        Ok(())
    }

    /// Brings the index in step with `table` when snapshots landed since the committer's last
    /// commit without moving the anchored offsets: compactions are applied by re-pointing the
    /// keys of the files they added; anything else (or a failed re-point) rebuilds.
    async fn catch_up(&self, state: &mut State, table: &Table) -> WriteResult<()> {
        let metadata = table.metadata();
        let head = metadata.current_snapshot_id();
        if state.def.is_append_only() || head == state.snapshot_id {
            state.snapshot_id = head;
            return Ok(());
        }
        let Some(head_id) = head else {
            return Ok(());
        };
        let rewrites: Option<HashSet<i64>> =
            ancestors_between(metadata, head_id, state.snapshot_id)
                .filter(|chain| {
                    chain
                        .iter()
                        .all(|s| s.summary().operation == Operation::Replace)
                })
                .map(|chain| chain.iter().map(|s| s.snapshot_id()).collect());
        match rewrites {
            Some(rewrites) => {
                let started = Instant::now();
                match repoint_index(
                    &self.shared.committer,
                    table.file_io(),
                    metadata,
                    &state.codec,
                    &state.key_field_ids,
                    &mut state.index,
                    &rewrites,
                )
                .await
                {
                    Ok(keys) => {
                        metrics::counter!(m::INDEX_REPOINTS, "table" => self.name.to_string())
                            .increment(1);
                        state.checkpoint_due.add(0, keys as u64);
                        info!(
                            table = %self.name, snapshots = rewrites.len(), keys,
                            took_ms = started.elapsed().as_millis() as u64,
                            "applied compactions to the primary-key index"
                        );
                        self.report_index(state);
                    }
                    Err(e) => {
                        warn!(table = %self.name, error = %e, "could not apply compactions to the index; rebuilding it");
                        self.rebuild(state, table, "fallback").await?;
                    }
                }
            }
            None => {
                info!(table = %self.name, "snapshots of another writer landed; rebuilding the index");
                self.rebuild(state, table, "foreign-snapshot").await?;
            }
        }
        state.snapshot_id = head;
        Ok(())
    }

    /// The commit loop rebases a row delta on snapshots that landed after the cycle loaded the
    /// table (its deletes are checked against them). When those were compactions (`replace`:
    /// rewrites, manifest merges), the index, which reflected `reflected`, must follow the rows
    /// they moved, as [`Self::catch_up`] does before a cycle; the committed delta's own rows and
    /// deletes are already in the index and touch no file a rewrite replaced (the commit layer
    /// refuses deletes against replaced files).
    async fn apply_absorbed(
        &self,
        state: &mut State,
        reflected: Option<i64>,
        committed: i64,
    ) -> WriteResult<()> {
        if state.def.is_append_only() {
            return Ok(());
        }
        let table = self.shared.catalog.load(&self.name).await?;
        let metadata = table.metadata();
        let parent = metadata
            .snapshot_by_id(committed)
            .and_then(|s| s.parent_snapshot_id());
        if parent == reflected {
            return Ok(());
        }
        let absorbed: Option<HashSet<i64>> = parent
            .and_then(|p| ancestors_between(metadata, p, reflected))
            .filter(|chain| {
                chain
                    .iter()
                    .all(|s| s.summary().operation == Operation::Replace)
            })
            .map(|chain| chain.iter().map(|s| s.snapshot_id()).collect());
        let Some(absorbed) = absorbed else {
            info!(table = %self.name, "the commit landed on snapshots of another writer; rebuilding the index");
            self.rebuild(state, &table, "foreign-snapshot").await?;
            state.snapshot_id = metadata.current_snapshot_id();
            return Ok(());
        };
        match repoint_index(
            &self.shared.committer,
            table.file_io(),
            metadata,
            &state.codec,
            &state.key_field_ids,
            &mut state.index,
            &absorbed,
        )
        .await
        {
            Ok(keys) => {
                metrics::counter!(m::INDEX_REPOINTS, "table" => self.name.to_string()).increment(1);
                state.checkpoint_due.add(0, keys as u64);
                debug!(table = %self.name, snapshots = absorbed.len(), keys, "applied compactions the commit landed on");
                Ok(())
            }
            Err(e) => {
                warn!(table = %self.name, error = %e, "could not apply compactions the commit landed on; rebuilding the index");
                self.rebuild(state, &table, "fallback").await?;
                state.snapshot_id = metadata.current_snapshot_id();
                Ok(())
            }
        }
    }

    fn report_index(&self, state: &State) {
        let table = self.name.to_string();
        metrics::gauge!(m::INDEX_KEYS, "table" => table.clone()).set(state.index.len() as f64);
        metrics::gauge!(m::INDEX_BYTES, "table" => table.clone())
            .set(state.index.memory_bytes() as f64);
        metrics::gauge!(m::INDEX_SPILLED_BYTES, "table" => table)
            .set(state.index.spilled_bytes() as f64);
    }

    fn publish(&self, state: &State, commit_time_ms: Option<i64>) {
        self.progress.send_modify(|p| {
            p.snapshot_id = state.snapshot_id;
            p.offsets = state.next.clone();
            p.commit_time_ms = commit_time_ms.unwrap_or(p.commit_time_ms);
        });
    }

    /// One commit interval's work.
    async fn cycle(&mut self) -> WriteResult<Backlog> {
        let mut state = self.state.take().ok_or_else(|| WriteError::Internal {
            reason: "cycle without state".into(),
        })?;
        let result = self.cycle_with(&mut state).await;
        self.state = Some(state);
        result
    }

    async fn cycle_with(&mut self, state: &mut State) -> WriteResult<Backlog> {
        let (table, mut phases) = match self.just_started.take() {
            Some((table, started)) => (table, CyclePhases::new(Some(started))),
            None => (
                self.shared.catalog.load(&self.name).await?,
                CyclePhases::new(None),
            ),
        };
        let metadata = table.metadata();
        self.check_claim(state, metadata.properties())?;
        if metadata.current_schema_id() != state.codec.schema_id() {
            info!(table = %self.name, schema_id = metadata.current_schema_id(), "schema changed; reloading");
            let fresh = self
                .load_state(&table, state.owner.clone(), state.epoch.clone())
                .await?;
            *state = fresh;
        }
        if self.drive_move(state, metadata).await? {
            return Ok(Backlog::Pending);
        }
        let anchored = anchored_offsets(metadata);
        if let Some((&p, _)) = state
            .next
            .0
            .iter()
            .find(|(p, believed)| anchored.get(**p) < **believed)
        {
            let found = anchored.get(p);
            // Offsets never move backwards by themselves: the table was rolled back or its
            // anchored snapshot expired. Replaying would commit records twice; stop and say so.
            return Err(WriteError::Internal {
                reason: format!(
                    "the anchored changelog offsets of the table moved backwards (partition {p}: \
                     {found} < {}); was the table rolled back or its history expired? The \
                     committer will not replay; restart it after checking the table",
                    state.next.get(p)
                ),
            });
        }
        if anchored != state.next {
            warn!(
                table = %self.name, believed = %state.next, found = %anchored,
                "the table's anchored offsets differ from the committer's (a commit whose answer was lost landed); adopting them"
            );
            state.next = anchored;
            state.snapshot_id = metadata.current_snapshot_id();
            self.rebuild(state, &table, "lost-answer").await?;
        } else if metadata.current_snapshot_id() != state.snapshot_id {
            self.catch_up(state, &table).await?;
        }

        phases.mark(Phase::Prepare);
        let (records, until, mut backlog) = self.drain(state).await?;
        phases.mark(Phase::Drain);
        self.report_lag(state, &until).await;
        if state.moving.is_some() {
            // Commit up to the old generation's end, then switch at once.
            backlog = Backlog::Pending;
        }
        if records.iter().all(|(_, r)| r.is_empty()) {
            phases.log(&self.name, 0);
            return Ok(backlog);
        }
        let started = Instant::now();
        let folded = self.fold(state, records)?;
        let written_rows = take_rows(&folded.rows, &folded.write)?;
        let written = state
            .layout
            .write_rows(table.file_io(), &written_rows)
            .await?;
        phases.mark(Phase::Write);

        let mut table = table;
        let mut attempts = 0;
        let committed = loop {
            attempts += 1;
            let (delete_files, deleted_from) = self.write_deletes(state, &table, &folded).await?;
            let delta = RowDelta {
                data_files: written.iter().map(|w| w.data_file.clone()).collect(),
                delete_files,
                properties: BTreeMap::from([
                    (summary::CHANGELOG_OFFSETS.to_string(), until.to_string()),
                    (summary::COMMITTER_EPOCH.to_string(), state.epoch.clone()),
                    (
                        summary::CHANGELOG_POSITIONS.to_string(),
                        self.positions_text(state, &until),
                    ),
                ]),
                commit_id: format!("{}:{}->{}", state.uuid, state.next, until),
                deleted_from,
                required_properties: self.claim_of(state),
            };
            crate::crash::point(crate::crash::BEFORE_SWAP);
            match self
                .shared
                .committer
                .commit_row_delta(&self.name, &delta)
                .await
            {
                Ok(c) => {
                    crate::crash::point(crate::crash::AFTER_SWAP);
                    break c;
                }
                Err(CommitError::DataFileRemoved { path, .. }) if attempts < 4 => {
                    table = self.shared.catalog.load(&self.name).await?;
                    self.check_claim(state, table.metadata().properties())?;
                    if attempts == 1 {
                        info!(table = %self.name, %path, "a delete target was compacted away; applying the compaction to the index");
                        self.catch_up(state, &table).await?;
                    } else {
                        // Applying compactions did not help: the index points into a file
                        // that is gone although it claims to reflect the head. Never let that
                        // stop the table's commits: rebuild the index from the head.
                        warn!(table = %self.name, %path, "a delete target is still a removed file after applying compactions; rebuilding the index");
                        self.rebuild(state, &table, "fallback").await?;
                        state.snapshot_id = table.metadata().current_snapshot_id();
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };

        phases.mark(Phase::Commit);
        phases.log(&self.name, folded.write.len());
        // Committed: now the index may move on.
        let reflected = state.snapshot_id;
        // Snapshots landed between the table the index reflects and this commit (the commit
        // loop rebased on them) when the sequence numbers are not consecutive.
        let landed_on_others = committed.sequence_number != table.metadata().next_sequence_number();
        for (key, op) in &folded.changed {
            if *op == ChangeOp::Delete {
                state.index.remove(key)?;
            }
        }
        if !state.def.is_append_only() {
            for file in &written {
                let df = &file.data_file;
                let id =
                    state
                        .index
                        .file_id(df.file_path(), df.partition(), state.layout.spec_id());
                for (pos, &row) in file.rows.iter().enumerate() {
                    let key = &folded.keys[folded.write[row as usize] as usize];
                    state.index.insert(
                        key,
                        RowLocation {
                            file: id,
                            pos: pos as u64,
                        },
                    )?;
                }
            }
        }
        state.heal.clear();
        state.next = until;
        state.snapshot_id = Some(committed.snapshot_id);
        if landed_on_others {
            self.apply_absorbed(state, reflected, committed.snapshot_id)
                .await?;
        }
        state
            .checkpoint_due
            .add(written.len() as u64, folded.write.len() as u64);
        let now = chrono::Utc::now().timestamp_millis();
        self.publish(state, Some(now));
        self.report_index(state);
        let name = self.name.to_string();
        metrics::histogram!(m::COMMIT_SECONDS, "table" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::COMMITS, "table" => name.clone()).increment(1);
        self.mark_commit_time();
        for (kind, n) in ["insert", "upsert", "delete"].iter().zip(folded.counts) {
            metrics::counter!(m::COMMITTED_CHANGES, "table" => name.clone(), "op" => *kind)
                .increment(n);
        }
        if let Some(oldest) = folded.oldest_ms {
            metrics::gauge!(m::COMMITTER_LAG_SECONDS, "table" => name.clone())
                .set((now - oldest).max(0) as f64 / 1000.0);
        }
        debug!(
            table = %self.name, snapshot_id = committed.snapshot_id, offsets = %state.next,
            files = written.len(), rows = folded.write.len(), "committed"
        );
        if let Err(e) = self
            .shared
            .changelog
            .publish_committed(&state.topic, &state.next)
            .await
        {
            warn!(table = %self.name, error = %e, "could not publish committed offsets to the changelog");
        }
        self.checkpoint(state, false).await;
        Ok(backlog)
    }

    /// The positions `until` as Kafka positions per cluster and topic (summary property).
    fn positions_text(&self, state: &State, until: &PartitionOffsets) -> String {
        let binding = &state.def.changelog;
        binding
            .route(&state.uuid, 0)
            .describe_positions(&binding.topic, until)
    }

    /// Moves the changelog to another cluster when the table asks for it (property
    /// `unitable.changelog.moving`, set by `MoveChangelog`): creates the next generation's
    /// topic, fixes the old generation's end at its high watermarks, lets the cycles commit up
    /// to it, then switches the table to the new generation in one metadata commit (under this
    /// committer's claim). Writes are refused from the moment the property is seen; appends
    /// that land past the end are not acknowledged (see `Writer::settle`). A new owner after a
    /// crash finds the property and starts over from its own watermarks, which is as correct:
    /// the end is whatever the switch commit records. Returns whether the switch happened.
    async fn drive_move(&self, state: &mut State, metadata: &TableMetadata) -> WriteResult<bool> {
        // Deriving the definition also tells this process's changelog router the route.
        let fresh = TableDef::from_iceberg(self.name.clone(), metadata)?;
        state.def.changelog = fresh.changelog.clone();
        let binding = &fresh.changelog;
        let Some(target) = binding.moving.clone() else {
            state.moving = None;
            return Ok(false);
        };
        let log = &self.shared.changelog;
        if state.moving.as_ref().is_none_or(|(t, _)| *t != target) {
            // While moving, the router creates the next generation's topic, on the target.
            log.create_topic_with(&state.topic, state.partitions, &fresh.topic_settings()?)
                .await?;
            // Every node's router learns of the move within its route refresh (500 ms) and
            // then refuses appends; appends it let through before land meanwhile. Waiting
            // lets them land below the end read next, so that records past the end (which
            // readers may see before the switch) take an append slower than this.
            tokio::time::sleep(MOVE_GRACE).await;
            let mut end = PartitionOffsets::default();
            for p in 0..state.partitions {
                let partition = PartitionId(p);
                end.set(
                    partition,
                    log.watermarks(&state.topic, partition).await?.high,
                );
            }
            info!(table = %self.name, to = %target, generation = binding.generation + 1, end = %end, "moving the changelog: committing up to the old topic's end");
            state.moving = Some((target.clone(), end));
        }
        let Some((_, end)) = &state.moving else {
            return Ok(false);
        };
        for p in 0..state.partitions {
            let partition = PartitionId(p);
            let (next, end) = (state.next.get(partition), end.get(partition));
            if next >= end {
                continue;
            }
            // Below the end but nothing left to commit there (a compacted topic has gaps).
            let ahead = log
                .read(&state.topic, partition, next, 1, Duration::ZERO)
                .await?;
            if ahead.first().is_some_and(|r| r.offset < end) {
                return Ok(false);
            }
        }
        crate::crash::point(crate::crash::BEFORE_MOVE_SWITCH);
        let mut physical_end = PartitionOffsets::default();
        for (p, o) in &end.0 {
            physical_end.set(*p, Offset(o.physical()));
        }
        let mut history = binding.history.clone();
        history.push(ClosedGeneration {
            generation: binding.generation,
            cluster: binding.cluster.clone(),
            end: physical_end.clone(),
        });
        let next = binding.generation + 1;
        let updates = BTreeMap::from([
            (props::CHANGELOG_GENERATION.to_string(), next.to_string()),
            (props::CHANGELOG_CLUSTER.to_string(), target.clone()),
            (
                props::CHANGELOG_HISTORY.to_string(),
                routes::history_text(&history),
            ),
            (props::CHANGELOG_MOVING.to_string(), String::new()),
        ]);
        let mut required = self.claim_of(state);
        required.insert(props::CHANGELOG_MOVING.to_string(), target.clone());
        self.shared
            .committer
            .commit_properties(
                &self.name,
                Some(&format!("{}:move:{next}", state.uuid)),
                updates,
                required,
            )
            .await?;
        info!(table = %self.name, to = %target, generation = next, end = %physical_end, "changelog moved");
        metrics::counter!(m::CHANGELOG_MOVES, "table" => self.name.to_string()).increment(1);
        state.moving = None;
        // Tell this process's router before the next read.
        let table = self.shared.catalog.load(&self.name).await?;
        state.def.changelog =
            TableDef::from_iceberg(self.name.clone(), table.metadata())?.changelog;
        Ok(true)
    }

    fn claim_of(&self, state: &State) -> BTreeMap<String, String> {
        BTreeMap::from([
            (props::COMMITTER_EPOCH.to_string(), state.epoch.clone()),
            (props::COMMITTER_OWNER.to_string(), state.owner.clone()),
        ])
    }

    fn check_claim(&self, state: &State, properties: &HashMap<String, String>) -> WriteResult<()> {
        for (key, expected) in self.claim_of(state) {
            let found = properties.get(&key);
            if found != Some(&expected) {
                return Err(CommitError::Fenced {
                    table: self.name.clone(),
                    property: key,
                    expected,
                    found: found.cloned(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Reads every partition from the committer's offsets, up to the batch limit; returns the
    /// records per partition, the offsets after them, and whether the limit cut the read short.
    /// The limit is shared fairly: each partition may first take an equal share, then what the
    /// others left goes to those with more, in order. So a partition with a large backlog
    /// cannot starve the others' commits.
    async fn drain(
        &self,
        state: &State,
    ) -> WriteResult<(
        Vec<(PartitionId, Vec<StoredRecord>)>,
        PartitionOffsets,
        Backlog,
    )> {
        let n = state.partitions as usize;
        let mut budget = self.shared.config.max_batch_records;
        let share = (budget / n.max(1)).max(1);
        let mut from: Vec<Offset> = (0..state.partitions)
            .map(|p| state.next.get(PartitionId(p)))
            .collect();
        let mut records: Vec<Vec<StoredRecord>> = (0..n).map(|_| Vec::new()).collect();
        let mut drained = vec![false; n];
        // First every partition at once, each up to its share (a new owner's first reads each
        // open a reader: in turn they would add up).
        let first = share.min(budget);
        let reads = from
            .iter_mut()
            .zip(records.iter_mut())
            .enumerate()
            .map(|(p, (from, into))| {
                self.read_partition(state, PartitionId(p as u32), from, first, into)
            });
        for (p, (taken, done)) in futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .enumerate()
        {
            budget = budget.saturating_sub(taken);
            drained[p] = done;
        }
        // Then what the others left, in order, to those with more.
        for p in 0..n {
            if drained[p] || budget == 0 {
                continue;
            }
            let (taken, done) = self
                .read_partition(
                    state,
                    PartitionId(p as u32),
                    &mut from[p],
                    budget,
                    &mut records[p],
                )
                .await?;
            budget = budget.saturating_sub(taken);
            drained[p] = done;
        }
        let mut until = PartitionOffsets::default();
        let mut out = Vec::with_capacity(n);
        for (p, records) in records.into_iter().enumerate() {
            let partition = PartitionId(p as u32);
            until.set(partition, from[p]);
            out.push((partition, records));
        }
        let backlog = if drained.iter().all(|d| *d) {
            Backlog::CaughtUp
        } else {
            Backlog::Pending
        };
        Ok((out, until, backlog))
    }

    /// Reads at most `allowance` records of `partition` from `*from` into `into`, moving
    /// `*from` past them; returns how many it read and whether it reached the end.
    async fn read_partition(
        &self,
        state: &State,
        partition: PartitionId,
        from: &mut Offset,
        allowance: usize,
        into: &mut Vec<StoredRecord>,
    ) -> WriteResult<(usize, bool)> {
        let cap = state.moving.as_ref().map(|(_, end)| end.get(partition));
        let mut taken = 0;
        while taken < allowance {
            if cap.is_some_and(|cap| *from >= cap) {
                return Ok((taken, true));
            }
            let read = self
                .shared
                .changelog
                .read(
                    &state.topic,
                    partition,
                    *from,
                    (allowance - taken).min(10_000),
                    Duration::ZERO,
                )
                .await;
            let batch = match read {
                Ok(batch) => batch,
                Err(ChangelogError::OffsetOutOfRange { low, high, .. }) if *from < low => {
                    error!(
                        table = %self.name, %partition, from = %from, %low, %high,
                        "changelog records were removed before they were committed (retention); continuing from the oldest one left"
                    );
                    metrics::counter!(m::RECORDS_LOST, "table" => self.name.to_string())
                        .increment(from.records_until(low) as u64);
                    *from = low;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut batch = batch;
            let before = batch.len();
            if let Some(cap) = cap {
                // Records past the old generation's end are not part of the table (their
                // writers are told to write them again).
                batch.retain(|r| r.offset < cap);
            }
            let capped = batch.len() < before;
            let Some(last) = batch.last() else {
                return Ok((taken, true));
            };
            *from = last.offset.next();
            taken += batch.len();
            into.extend(batch);
            if capped {
                return Ok((taken, true));
            }
        }
        Ok((taken, false))
    }

    async fn report_lag(&self, state: &State, until: &PartitionOffsets) {
        // Asked of every partition at once: this sits between a cycle's read and its commit.
        let marks = (0..state.partitions).map(|p| async move {
            let partition = PartitionId(p);
            let w = self
                .shared
                .changelog
                .watermarks(&state.topic, partition)
                .await;
            w.map(|w| until.get(partition).records_until(w.high))
        });
        let behind: i64 = futures::future::join_all(marks)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .sum();
        let table = self.name.to_string();
        metrics::gauge!(m::COMMITTER_LAG_RECORDS, "table" => table.clone()).set(behind as f64);
        if behind == 0 && until == &state.next {
            metrics::gauge!(m::COMMITTER_LAG_SECONDS, "table" => table).set(0.0);
        }
    }

    /// Decodes the records and keeps the last change per key.
    fn fold(
        &self,
        state: &State,
        records: Vec<(PartitionId, Vec<StoredRecord>)>,
    ) -> WriteResult<Folded> {
        let codec = &state.codec;
        let mut decoded = Vec::new();
        for (partition, records) in &records {
            if records.is_empty() {
                continue;
            }
            decoded.push(self.decode_isolating(codec, *partition, records)?);
        }
        let batches: Vec<&RecordBatch> = decoded.iter().map(|d| &d.batch).collect();
        let rows =
            concat_batches(&codec.decoded_schema(), batches).map_err(|e| WriteError::Internal {
                reason: format!("combine decoded rows: {e}"),
            })?;
        let ops: Vec<ChangeOp> = decoded.iter().flat_map(|d| d.ops.iter().copied()).collect();
        let oldest_ms = decoded
            .iter()
            .flat_map(|d| d.timestamps_ms.iter().copied())
            .min();
        let mut counts = [0u64; 3];
        for op in &ops {
            counts[match op {
                ChangeOp::Insert => 0,
                ChangeOp::Upsert => 1,
                ChangeOp::Delete => 2,
            }] += 1;
        }
        if codec.is_append_only() {
            return Ok(Folded {
                write: (0..rows.num_rows() as u32).collect(),
                rows,
                keys: Vec::new(),
                changed: Vec::new(),
                counts,
                oldest_ms,
            });
        }
        let (encoded, errors) = codec.encode_keys(&rows)?;
        if let Some(e) = errors.first() {
            return Err(WriteError::Internal {
                reason: format!("a decoded row has no valid key: {e}"),
            });
        }
        let keys: Vec<Bytes> = encoded.into_iter().map(|k| k.key).collect();
        // Last change per key wins (a key's records all live in one partition, in order).
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        for (row, key) in keys.iter().enumerate() {
            last.insert(key, row);
        }
        let mut winners: Vec<usize> = last.into_values().collect();
        winners.sort_unstable();
        let write = winners
            .iter()
            .filter(|&&row| ops[row] != ChangeOp::Delete)
            .map(|&row| row as u32)
            .collect();
        let changed = winners
            .iter()
            .map(|&row| (keys[row].clone(), ops[row]))
            .collect();
        Ok(Folded {
            rows,
            keys,
            write,
            changed,
            counts,
            oldest_ms,
        })
    }

    /// Decodes a partition's records; a record that cannot be decoded (written by a foreign
    /// producer) is skipped with an error log and a metric, never silently.
    fn decode_isolating(
        &self,
        codec: &RecordCodec,
        partition: PartitionId,
        records: &[StoredRecord],
    ) -> WriteResult<DecodedBatch> {
        let (decoded, skipped) = codec.decode_skipping(records)?;
        for e in skipped {
            error!(table = %self.name, %partition, error = %e, "skipping a changelog record that is not a row of this table");
            metrics::counter!(m::RECORDS_SKIPPED, "table" => self.name.to_string()).increment(1);
        }
        Ok(decoded)
    }

    /// Position deletes for the previous rows of changed keys (plus healing deletes), one file
    /// per partition.
    async fn write_deletes(
        &self,
        state: &State,
        table: &Table,
        folded: &Folded,
    ) -> WriteResult<(Vec<DataFile>, BTreeSet<String>)> {
        let mut groups: HashMap<(i32, Struct), Vec<PositionDelete>> = HashMap::new();
        let mut targets = BTreeSet::new();
        for (key, _) in &folded.changed {
            let Some(location) = state.index.get(key)? else {
                continue;
            };
            let file = state
                .index
                .file(location.file)
                .ok_or_else(|| WriteError::Internal {
                    reason: format!("index entry points to unknown file id {}", location.file),
                })?;
            targets.insert(file.path.to_string());
            groups
                .entry((file.spec_id, file.partition.clone()))
                .or_default()
                .push(PositionDelete {
                    file_path: file.path.to_string(),
                    pos: location.pos as i64,
                });
        }
        for (delete, partition, spec_id) in &state.heal {
            targets.insert(delete.file_path.clone());
            groups
                .entry((*spec_id, partition.clone()))
                .or_default()
                .push(delete.clone());
        }
        let files = state.layout.write_deletes(table.file_io(), groups).await?;
        Ok((files, targets))
    }
}

/// Sets the table's `unitable_committer_lag_records` to 0 when its committer stops.
struct ClearLagOnExit(String);

impl Drop for ClearLagOnExit {
    fn drop(&mut self) {
        metrics::gauge!(m::COMMITTER_LAG_RECORDS, "table" => self.0.clone()).set(0.0);
    }
}

/// Errors after which the committer of this process must stop for the table.
fn is_terminal(e: &WriteError) -> bool {
    matches!(e, WriteError::Commit(CommitError::Fenced { .. })) || e.is_table_not_found()
}

fn property(def: &TableDef, key: &str) -> Option<u64> {
    def.properties.get(key).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iceberg::spec::{TableMetadata, TableMetadataBuilder};
    use unitable_core::naming::{TableName, props};
    use unitable_core::table::{Column, TableDef, TableSpec};

    use super::moved_besides_claim;

    fn metadata() -> TableMetadata {
        let name: TableName = "ns.t".parse().unwrap();
        let spec = TableSpec {
            columns: vec![
                Column::parse("id:int64!").unwrap(),
                Column::parse("v:string").unwrap(),
            ],
            primary_key: vec!["id".into()],
            ..TableSpec::default()
        };
        let creation = TableDef::new(name, spec)
            .unwrap()
            .to_table_creation(Some("file:///tmp/wh/ns/t".into()))
            .unwrap();
        TableMetadataBuilder::from_table_creation(creation)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    fn with(metadata: &TableMetadata, props: &[(&str, &str)]) -> TableMetadata {
        let updates: HashMap<String, String> = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TableMetadataBuilder::new_from_metadata(metadata.clone(), None)
            .set_properties(updates)
            .unwrap()
            .build()
            .unwrap()
            .metadata
    }

    #[test]
    fn a_claim_alone_does_not_count_as_the_table_moving() {
        let before = metadata();
        let claimed = with(
            &before,
            &[
                (props::COMMITTER_EPOCH, "7"),
                (props::COMMITTER_OWNER, "node-1/abc"),
                (props::PROPERTIES_COMMIT_ID, "node-1/abc"),
            ],
        );
        assert!(!moved_besides_claim(&before, &claimed));
        // Any other property changed meanwhile does (the commit interval, a changelog move...).
        let altered = with(&claimed, &[(props::COMMIT_INTERVAL_MS, "5000")]);
        assert!(moved_besides_claim(&before, &altered));
    }
}
