//! The write path: validate rows, append them to the changelog, acknowledge; and the registry
//! of per-table committers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use unitable_core::bucket::bucket_of;
use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::{
    AppendStatus, AppendedRange, ChangeRecord, Changelog, ChangelogError,
};
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::{TableName, props};
use unitable_core::offsets::{AsOf, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec, RowError, json_lines};
use unitable_core::requests::Claim;
use unitable_core::table::TableDef;

use crate::committer::{CommitProgress, IndexSource, Shared, TableCommitter};
use crate::config::WriterConfig;
use crate::error::{WriteError, WriteResult};
use crate::idempotent;
use crate::input::{Rows, read_rows};
use crate::metric_names as m;
use crate::recovery::anchored_offsets;

/// One write request.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The table.
    pub table: TableName,
    /// What the rows do.
    pub op: ChangeOp,
    /// The rows.
    pub rows: Rows,
    /// The index of the first row (for streams: rows before this request).
    pub first_row: usize,
    /// Answer only once a snapshot covering the write is committed.
    pub wait_for_snapshot: bool,
    /// The client's id for this request: a retry with the same id (on any node, after a
    /// restart) writes nothing twice. `None`: every attempt writes.
    pub request_id: Option<String>,
}

/// How many row errors a stream of writes reports at most (memory stays bounded however many
/// rows a long stream rejects; the count is exact).
pub const MAX_REPORTED_ERRORS: usize = 10_000;

/// What a write did.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// Rows appended to the changelog (durable).
    pub rows_written: u64,
    /// Rows not written, with the reason; in row order. A stream of writes keeps only the
    /// first [`MAX_REPORTED_ERRORS`] of them.
    pub errors: Vec<RowError>,
    /// Rows not written, all of them (may exceed `errors.len()`).
    pub rows_rejected: u64,
    /// Of `rows_rejected`, those not written because their changelog partition failed (not
    /// because of their values): a retry may write them (with a request id, a retry writes
    /// exactly these).
    pub rows_unwritten: u64,
    /// The last offset written per partition.
    pub last_offsets: PartitionOffsets,
    /// The table's state after the write.
    pub as_of: AsOf,
}

/// A table as the write path needs it, cached until the table changes.
#[derive(Debug)]
struct TableHandle {
    def: TableDef,
    /// The Iceberg table uuid the records are stamped with.
    uuid: String,
    schema_id: i32,
    /// The newest metadata location known to belong to this table (same uuid and schema):
    /// a write whose pointer still names it needs no reload.
    verified: Mutex<Option<String>>,
    /// Held while the table is reloaded to check a moved pointer.
    reload: tokio::sync::Mutex<()>,
    codec: Arc<RecordCodec>,
    dead_letter: bool,
    progress: watch::Receiver<CommitProgress>,
}

#[derive(Debug)]
pub(crate) struct CommitterHandle {
    uuid: String,
    pub(crate) progress: watch::Receiver<CommitProgress>,
    /// Asks for a graceful stop: commit what the changelog holds, then stop.
    pub(crate) cancel: CancellationToken,
    /// Stops at once, wherever the committer is (its lease is gone; another node commits).
    pub(crate) abort: CancellationToken,
    /// Cancelled once the committer task has ended.
    pub(crate) done: CancellationToken,
}

/// Whether a cached table handle still fits the catalog's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Current,
    /// Same table, newer schema: records written with the handle still decode.
    SchemaChanged,
    /// Dropped and created again: records stamped with the handle's uuid belong to no table.
    Replaced,
}

/// The writer role: the write path plus one committer per table.
#[derive(Debug, Clone)]
pub struct Writer {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    handles: Mutex<HashMap<TableName, Arc<TableHandle>>>,
    pub(crate) committers: Mutex<HashMap<TableName, CommitterHandle>>,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Asks the lease coordinator for a round now (a table without a committer was written).
    pub(crate) lease_round: tokio::sync::Notify,
    /// When old request ids were last expired (ms since the epoch).
    requests_expired_ms: AtomicI64,
}

impl WriteOutcome {
    /// Adds the outcome of the next write of a stream: counts add up, the first
    /// [`MAX_REPORTED_ERRORS`] row errors are kept, the last offsets and state are the newest.
    pub fn merge(&mut self, next: WriteOutcome) {
        self.rows_written += next.rows_written;
        self.rows_rejected += next.rows_rejected;
        self.rows_unwritten += next.rows_unwritten;
        let room = MAX_REPORTED_ERRORS.saturating_sub(self.errors.len());
        self.errors.extend(next.errors.into_iter().take(room));
        for (p, o) in next.last_offsets.0 {
            self.last_offsets.set(p, o);
        }
        self.as_of = next.as_of;
    }
}

impl Writer {
    /// A writer over a catalog and a changelog, committing through `committer`.
    pub fn new(
        catalog: TableCatalog,
        changelog: Arc<dyn Changelog>,
        committer: Committer,
        config: WriterConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    catalog,
                    changelog,
                    committer,
                    config,
                }),
                handles: Mutex::new(HashMap::new()),
                committers: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
                lease_round: tokio::sync::Notify::new(),
                requests_expired_ms: AtomicI64::new(0),
            }),
        }
    }

    /// Starts the committer of every existing table, so that writes acknowledged before a
    /// restart reach the Iceberg table without waiting for a new write. Returns the count.
    ///
    /// With [`LeaseConfig`](crate::LeaseConfig)s, it instead joins the nodes sharing the
    /// committers: one lease round at once (taking this node's share of the tables that are
    /// free), then a round every renewal period until [`Writer::shutdown`]. Returns how many
    /// committers the first round started.
    pub async fn start_committers(&self) -> WriteResult<usize> {
        if let Some(leases) = self.inner.shared.config.leases.clone() {
            return crate::ownership::start(self.clone(), leases).await;
        }
        let tables = self.inner.shared.catalog.list(None).await?;
        let mut started = 0;
        for name in tables {
            match self.inner.shared.catalog.describe(&name).await {
                Ok(state) => {
                    self.ensure_committer(&name, &state.uuid);
                    started += 1;
                }
                Err(e) => warn!(table = %name, error = %e, "cannot start the committer of a table"),
            }
        }
        Ok(started)
    }

    /// Stops taking over new tables, lets every committer commit what the changelog holds, and
    /// waits for them.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Forgets what the write path cached about `table` (after a schema change).
    pub fn table_changed(&self, table: &TableName) {
        lock(&self.inner.handles).remove(table);
    }

    /// Stops the committer of a dropped table.
    pub fn table_dropped(&self, table: &TableName) {
        lock(&self.inner.handles).remove(table);
        if let Some(c) = lock(&self.inner.committers).remove(table) {
            c.cancel.cancel();
        }
    }

    /// Whether this process commits `table`: always without leases; with leases, while this
    /// node runs the table's committer.
    pub fn commits(&self, table: &TableName) -> bool {
        self.inner.shared.config.leases.is_none()
            || lock(&self.inner.committers)
                .get(table)
                .is_some_and(|c| !c.done.is_cancelled() && !c.cancel.is_cancelled())
    }

    /// The committer's progress for `table`, if this process runs its committer.
    pub fn progress(&self, table: &TableName) -> Option<CommitProgress> {
        lock(&self.inner.committers)
            .get(table)
            .map(|c| c.progress.borrow().clone())
    }

    /// The tables whose committer runs on this node now.
    pub(crate) fn committed_here(&self) -> Vec<TableName> {
        lock(&self.inner.committers)
            .iter()
            .filter(|(_, c)| !c.done.is_cancelled() && !c.cancel.is_cancelled())
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(crate) fn ensure_committer(
        &self,
        name: &TableName,
        uuid: &str,
    ) -> watch::Receiver<CommitProgress> {
        let mut committers = lock(&self.inner.committers);
        if let Some(c) = committers.get(name) {
            let stale = c.uuid != uuid
                || (c.progress.borrow().stopped && c.cancel.is_cancelled())
                || c.done.is_cancelled();
            if !stale {
                return c.progress.clone();
            }
            c.cancel.cancel();
        }
        let (tx, rx) = watch::channel(CommitProgress::default());
        let cancel = self.inner.stop.child_token();
        let abort = CancellationToken::new();
        let done = CancellationToken::new();
        let supervised = supervise(
            name.clone(),
            uuid.to_string(),
            self.inner.shared.clone(),
            tx,
            cancel.clone(),
        );
        let run = {
            let (abort, done, inner) = (abort.clone(), done.clone(), self.inner.clone());
            let mut final_commit = rx.clone();
            async move {
                // Wakes the lease round as soon as a hand-over's final commit is made, so the
                // lease is released without waiting for the checkpoint or the next round.
                let woken = async {
                    while final_commit.changed().await.is_ok() {
                        if final_commit.borrow().final_commit_done {
                            inner.lease_round.notify_one();
                            break;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    () = supervised => {}
                    () = abort.cancelled() => {}
                    () = woken => {}
                }
                done.cancel();
                // A finished hand-over releases its lease at once.
                inner.lease_round.notify_one();
            }
        };
        match &self.inner.shared.config.committer_runtime {
            Some(runtime) => self.inner.tasks.spawn_on(run, runtime),
            None => self.inner.tasks.spawn(run),
        };
        committers.insert(
            name.clone(),
            CommitterHandle {
                uuid: uuid.to_string(),
                progress: rx.clone(),
                cancel,
                abort,
                done,
            },
        );
        rx
    }

    /// Where the write path learns of `name`'s commits: this process's committer of the table,
    /// started if needed; with leases, only a committer this node already runs (otherwise a
    /// channel that says so, and writes waiting for a snapshot watch the catalog).
    fn progress_of(&self, name: &TableName, uuid: &str) -> watch::Receiver<CommitProgress> {
        if self.inner.shared.config.leases.is_none() {
            return self.ensure_committer(name, uuid);
        }
        if let Some(c) = lock(&self.inner.committers).get(name)
            && c.uuid == uuid
            && !c.done.is_cancelled()
        {
            return c.progress.clone();
        }
        // A new table (or one whose owner died) may be this node's to commit: look now rather
        // than at the next renewal.
        self.inner.lease_round.notify_one();
        watch::channel(CommitProgress {
            stopped: true,
            ..CommitProgress::default()
        })
        .1
    }

    async fn handle(&self, name: &TableName) -> WriteResult<Arc<TableHandle>> {
        if let Some(h) = lock(&self.inner.handles).get(name) {
            return Ok(h.clone());
        }
        if self.inner.stop.is_cancelled() {
            return Err(WriteError::ShuttingDown);
        }
        let state = self.inner.shared.catalog.describe(name).await?;
        let codec = Arc::new(RecordCodec::new(&state.def, &state.uuid, state.schema_id)?);
        let progress = self.progress_of(name, &state.uuid);
        let handle = Arc::new(TableHandle {
            uuid: state.uuid.clone(),
            schema_id: state.schema_id,
            verified: Mutex::new(state.metadata_location.clone()),
            reload: tokio::sync::Mutex::new(()),
            dead_letter: state
                .def
                .properties
                .get(props::WRITE_DEAD_LETTER)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            def: state.def,
            codec,
            progress,
        });
        // The table's error counters exist from the first write on (at 0), so alerts on their
        // increase see the first rejected row.
        let table = name.to_string();
        for reason in ["invalid", "changelog"] {
            metrics::counter!(m::ROWS_REJECTED, "table" => table.clone(), "reason" => reason)
                .increment(0);
        }
        if handle.dead_letter {
            for outcome in ["sent", "failed"] {
                metrics::counter!(m::DEAD_LETTER_ROWS, "table" => table.clone(), "outcome" => outcome)
                    .increment(0);
            }
        }
        lock(&self.inner.handles).insert(name.clone(), handle.clone());
        Ok(handle)
    }

    /// Drops the cached handle of `name` if it is still `handle`.
    fn forget(&self, name: &TableName, handle: &TableHandle) {
        let mut handles = lock(&self.inner.handles);
        if handles
            .get(name)
            .is_some_and(|h| std::ptr::eq(&**h, handle))
        {
            handles.remove(name);
        }
    }

    /// Checks that `handle` still describes the catalog's table: one pointer read, plus a load
    /// when the pointer moved (a commit, a schema change, a recreation). A handle that no longer
    /// fits is dropped from the cache; a dropped table is an error.
    async fn check_current(&self, name: &TableName, handle: &TableHandle) -> WriteResult<Check> {
        let committer = &self.inner.shared.committer;
        let location = committer.current_metadata_location(name).await?;
        let known =
            |location: &Option<String>| location.is_some() && *lock(&handle.verified) == *location;
        if known(&location) {
            return Ok(Check::Current);
        }
        // One reload at a time per handle; those that waited may find it done.
        let _reload = handle.reload.lock().await;
        if known(&location) {
            return Ok(Check::Current);
        }
        let state = match location {
            None => None,
            Some(_) => match self.inner.shared.catalog.describe(name).await {
                Ok(state) => Some(state),
                Err(unitable_core::Error::TableNotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let Some(state) = state else {
            self.forget(name, handle);
            return Err(unitable_core::Error::TableNotFound {
                table: name.clone(),
            }
            .into());
        };
        let check = if state.uuid != handle.uuid {
            Check::Replaced
        } else if state.schema_id != handle.schema_id {
            Check::SchemaChanged
        } else {
            *lock(&handle.verified) = state.metadata_location;
            return Ok(Check::Current);
        };
        self.forget(name, handle);
        Ok(check)
    }

    /// Validates and appends the rows of `request`; answers once they are durable in the
    /// changelog (or, when asked, once a snapshot covers them). With a request id, the write
    /// happens at most once: a retry returns the first attempt's outcome, or finishes what a
    /// failed attempt left undone (see [`crate::idempotent`]).
    pub async fn write(&self, request: WriteRequest) -> WriteResult<WriteOutcome> {
        self.write_as(request, true).await
    }

    /// [`Writer::write`], with the table's dead-letter topic used for rejected rows only when
    /// `dead_letter` (the CDC ingester sends them there itself, with their source positions).
    pub(crate) async fn write_as(
        &self,
        request: WriteRequest,
        dead_letter: bool,
    ) -> WriteResult<WriteOutcome> {
        let mut handle = self.handle(&request.table).await?;
        // Another process may have changed, dropped or recreated the table: refresh first.
        if self.check_current(&request.table, &handle).await? != Check::Current {
            handle = self.handle(&request.table).await?;
        }
        let Some(id) = request.request_id.as_deref() else {
            let (outcome, _) = self.append(&request, &handle, None, dead_letter).await?;
            return self.answer(&request, &handle, outcome).await;
        };
        idempotent::validate(id)?;
        let log = self.request_log()?;
        let node = self.node_id();
        let claim = log
            .claim(&handle.uuid, id, node, idempotent::IN_FLIGHT)
            .await?;
        let recover = match claim {
            Claim::Done(recorded) => {
                metrics::counter!(m::REQUESTS_DEDUPLICATED, "table" => request.table.to_string())
                    .increment(1);
                let outcome = idempotent::decode_outcome(&recorded)?;
                return self.answer(&request, &handle, outcome).await;
            }
            Claim::InProgress { owner, age_ms } => {
                return Err(WriteError::RequestInProgress {
                    table: request.table.clone(),
                    request_id: id.to_string(),
                    owner,
                    age_ms,
                });
            }
            Claim::New | Claim::Recover(None) => None,
            Claim::Recover(Some(start)) => Some(start.parse::<PartitionOffsets>().map_err(
                |_| WriteError::Internal {
                    reason: format!("the request log holds unreadable offsets `{start}`"),
                },
            )?),
        };
        match self
            .append(&request, &handle, Some((id, recover)), dead_letter)
            .await
        {
            Ok((outcome, true)) => {
                log.finish(&handle.uuid, id, &idempotent::encode_outcome(&outcome))
                    .await?;
                self.expire_requests();
                self.answer(&request, &handle, outcome).await
            }
            Ok((outcome, false)) => {
                // Some partition failed: what it wrote is unknown, so a retry with the same id
                // finds out and writes the rest.
                log.abandon(&handle.uuid, id).await?;
                self.answer(&request, &handle, outcome).await
            }
            Err(e) => {
                if let Err(abandon) = log.abandon(&handle.uuid, id).await {
                    warn!(table = %request.table, request_id = id, error = %abandon, "cannot give up a failed write request; a retry waits for it");
                }
                Err(e)
            }
        }
    }

    /// The request log of idempotent writes (in the catalog database).
    pub(crate) fn request_log(&self) -> WriteResult<&unitable_core::requests::RequestLog> {
        self.inner
            .shared
            .config
            .requests
            .as_ref()
            .ok_or(WriteError::NoRequestLog)
    }

    /// The id this node claims write requests under.
    pub(crate) fn node_id(&self) -> &str {
        let config = &self.inner.shared.config;
        config
            .leases
            .as_ref()
            .map_or(config.instance.as_str(), |l| l.node.as_str())
    }

    /// Forgets old request ids now and then (at most every ten minutes, in the background).
    fn expire_requests(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        let last = self.inner.requests_expired_ms.load(Ordering::Relaxed);
        if now - last < 600_000
            || self
                .inner
                .requests_expired_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let config = &self.inner.shared.config;
        let (Some(log), window) = (config.requests.clone(), config.request_window) else {
            return;
        };
        tokio::spawn(async move {
            match log.expire(window).await {
                Ok(n) => tracing::debug!(forgotten = n, "expired old write request ids"),
                Err(e) => warn!(error = %e, "cannot expire old write request ids"),
            }
        });
    }

    /// Encodes and appends the rows; returns the outcome and whether every partition's append
    /// succeeded. With a request id, records carry it; with recovery offsets, records an
    /// earlier attempt already appended (found from those offsets on) are not appended again.
    async fn append(
        &self,
        request: &WriteRequest,
        handle: &TableHandle,
        idempotent: Option<(&str, Option<PartitionOffsets>)>,
        dead_letter: bool,
    ) -> WriteResult<(WriteOutcome, bool)> {
        let codec = handle.codec.clone();
        let op = request.op;
        let rows = request.rows.clone();
        let first_row = request.first_row;
        // Parsing and encoding are CPU work: keep them off the request threads.
        let (encoded, mut errors) = tokio::task::spawn_blocking(move || {
            let (parsed, mut errors) = read_rows(&codec, op, &rows, first_row)?;
            let now = chrono::Utc::now().timestamp_millis();
            let (encoded, bad) = codec.encode(op, &parsed.batch, now)?;
            errors.extend(bad.into_iter().map(|e| RowError {
                row: parsed.rows[e.row],
                ..e
            }));
            let encoded: Vec<_> = encoded
                .into_iter()
                .map(|e| (parsed.rows[e.row], e.partition, e.record))
                .collect();
            Ok::<_, WriteError>((encoded, errors))
        })
        .await
        .map_err(|e| WriteError::Internal {
            reason: format!("the encoding task failed: {e}"),
        })??;
        let table = request.table.to_string();
        if !errors.is_empty() {
            metrics::counter!(m::ROWS_REJECTED, "table" => table.clone(), "reason" => "invalid")
                .increment(errors.len() as u64);
        }

        // An append-only table puts a request's rows on one partition of its choosing; for a
        // request id the choice must be the same on every attempt, so a retry looks for the
        // first attempt's records where they are.
        let sticky = match &idempotent {
            Some((id, _)) if handle.codec.is_append_only() => Some(PartitionId(bucket_of(
                id.as_bytes(),
                handle.def.changelog.partitions.max(1),
            ))),
            _ => None,
        };
        let mut groups: BTreeMap<PartitionId, (Vec<ChangeRecord>, Vec<usize>)> = BTreeMap::new();
        let mut bytes = 0u64;
        for (row, partition, record) in encoded {
            let partition = sticky.unwrap_or(partition);
            bytes += record.key.as_ref().map_or(0, Bytes::len) as u64
                + record.value.as_ref().map_or(0, Bytes::len) as u64;
            let group = groups.entry(partition).or_default();
            group.0.push(record);
            group.1.push(row);
        }
        let topic = &handle.def.changelog.topic;
        let log = &self.inner.shared.changelog;
        let mut outcome = WriteOutcome::default();
        if let Some((id, recover)) = idempotent {
            for (records, _) in groups.values_mut() {
                idempotent::tag(records, id);
            }
            match recover {
                Some(start) => {
                    // An earlier attempt may have appended a prefix of each partition's records.
                    for (partition, (records, rows)) in &mut groups {
                        let Some(&from) = start.0.get(partition) else {
                            continue;
                        };
                        let (landed, last) =
                            idempotent::landed(log.as_ref(), topic, *partition, from, id).await?;
                        let landed = landed.min(records.len());
                        if let (true, Some(last)) = (landed > 0, last) {
                            records.drain(..landed);
                            rows.drain(..landed);
                            outcome.rows_written += landed as u64;
                            outcome.last_offsets.set(*partition, last);
                        }
                    }
                    groups.retain(|_, (records, _)| !records.is_empty());
                    info!(
                        table,
                        request_id = id,
                        already_written = outcome.rows_written,
                        "retry of an unfinished write request: appending what the earlier attempt did not"
                    );
                }
                None => {
                    let mut start = PartitionOffsets::default();
                    for partition in groups.keys() {
                        start.set(*partition, log.watermarks(topic, *partition).await?.high);
                    }
                    if let Some(requests) = &self.inner.shared.config.requests {
                        requests
                            .record_start(&handle.uuid, id, &start.to_string())
                            .await?;
                    }
                }
            }
        }

        let started = Instant::now();
        let appends = groups
            .into_iter()
            .map(|(partition, (records, rows))| async move {
                (partition, rows, log.append(topic, partition, records).await)
            });
        let results = futures::future::join_all(appends).await;
        crate::crash::point(crate::crash::AFTER_APPEND);
        metrics::histogram!(m::APPEND_SECONDS, "table" => table.clone())
            .record(started.elapsed().as_secs_f64());

        let mut failures = 0usize;
        let mut first_failure = None;
        let total = results.len();
        let mut appended = Vec::with_capacity(total);
        let mut fail = |partition: PartitionId,
                        rows: Vec<usize>,
                        e: ChangelogError,
                        outcome: &mut WriteOutcome| {
            failures += 1;
            outcome.rows_unwritten += rows.len() as u64;
            metrics::counter!(m::ROWS_REJECTED, "table" => table.clone(), "reason" => "changelog")
                .increment(rows.len() as u64);
            let reason = format!(
                "not written: changelog partition {partition} failed ({e}); retry this row"
            );
            errors.extend(rows.into_iter().map(|row| RowError {
                row,
                field: None,
                reason: reason.clone(),
            }));
            first_failure.get_or_insert(e);
        };
        for (partition, rows, result) in results {
            match result {
                Ok(range) => appended.push((partition, rows, range)),
                Err(e) => fail(partition, rows, e, &mut outcome),
            }
        }
        // Before acknowledging: the records carry this handle's table uuid, so they count only
        // if the catalog still names that table (another process may have dropped and
        // recreated it since the check above; its committer would skip them as foreign). The
        // same look at the catalog tells whether the changelog moved to another cluster while
        // the records were appended (their topic may have been closed before them).
        if !appended.is_empty() {
            if self.check_current(&request.table, handle).await? == Check::Replaced {
                return Err(WriteError::TableReplaced {
                    table: request.table.clone(),
                });
            }
            let statuses = self.settle(&request.table, handle, &appended).await?;
            for ((partition, rows, range), status) in appended.into_iter().zip(statuses) {
                match status {
                    AppendStatus::Durable => {
                        outcome.rows_written += rows.len() as u64;
                        outcome.last_offsets.set(partition, range.last);
                    }
                    AppendStatus::Pending | AppendStatus::Lost { .. } => {
                        let reason = match status {
                            AppendStatus::Lost { reason } => reason,
                            _ => "the changelog's move to another cluster did not finish within \
                                  60 s"
                                .to_string(),
                        };
                        fail(
                            partition,
                            rows,
                            ChangelogError::Unavailable {
                                backend: "routed",
                                reason,
                            },
                            &mut outcome,
                        );
                    }
                }
            }
        }
        if total > 0
            && failures == total
            && outcome.rows_written == 0
            && let Some(e) = first_failure
        {
            // Nothing was written: the request as a whole failed.
            return Err(e.into());
        }
        metrics::counter!(m::ROWS_WRITTEN, "table" => table.clone(), "op" => op.as_str())
            .increment(outcome.rows_written);
        metrics::counter!(m::BYTES_WRITTEN, "table" => table).increment(bytes);
        errors.sort_by_key(|e| e.row);
        if dead_letter && handle.dead_letter && !errors.is_empty() {
            self.dead_letter(handle, request, &errors).await;
        }
        outcome.rows_rejected = errors.len() as u64;
        outcome.errors = errors;
        Ok((outcome, failures == 0))
    }

    /// Whether each append's records count, once any move of the table's changelog that was
    /// under way when they were appended is over (looking at the catalog every 100 ms, for at
    /// most 60 s).
    async fn settle(
        &self,
        name: &TableName,
        handle: &TableHandle,
        appended: &[(PartitionId, Vec<usize>, AppendedRange)],
    ) -> WriteResult<Vec<AppendStatus>> {
        let log = &self.inner.shared.changelog;
        let topic = &handle.def.changelog.topic;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let statuses: Vec<AppendStatus> = appended
                .iter()
                .map(|(p, _, range)| log.append_status(topic, *p, *range))
                .collect();
            if !statuses.contains(&AppendStatus::Pending) || Instant::now() >= deadline {
                return Ok(statuses);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.check_current(name, handle).await?;
        }
    }

    /// Completes an outcome for the client: waits for a covering snapshot when asked, and
    /// says which state of the table it reflects.
    async fn answer(
        &self,
        request: &WriteRequest,
        handle: &TableHandle,
        mut outcome: WriteOutcome,
    ) -> WriteResult<WriteOutcome> {
        let progress = if request.wait_for_snapshot && outcome.rows_written > 0 {
            self.wait_for_snapshot(&request.table, handle, &outcome.last_offsets)
                .await?
        } else {
            handle.progress.borrow().clone()
        };
        outcome.as_of = as_of(&progress, &outcome.last_offsets);
        Ok(outcome)
    }

    /// Waits until a snapshot covers `last` (the last offset written per partition of
    /// `table`) and returns the table's state then.
    pub async fn wait_for_snapshot_covering(
        &self,
        table: &TableName,
        last: &PartitionOffsets,
    ) -> WriteResult<AsOf> {
        let handle = self.handle(table).await?;
        let progress = self.wait_for_snapshot(table, &handle, last).await?;
        Ok(as_of(&progress, last))
    }

    /// Waits until a snapshot covers `last` (the last offset written per partition).
    async fn wait_for_snapshot(
        &self,
        name: &TableName,
        handle: &TableHandle,
        last: &PartitionOffsets,
    ) -> WriteResult<CommitProgress> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.inner.shared.config.snapshot_wait;
        let mut rx = handle.progress.clone();
        let mut local = true;
        loop {
            let current = rx.borrow_and_update().clone();
            if covers(&current.offsets, last) {
                return Ok(current);
            }
            // A committer of this process wakes us; another process's is seen in the catalog.
            local &= !current.stopped;
            let poll = tokio::time::sleep(Duration::from_millis(if local { 500 } else { 100 }));
            tokio::select! {
                changed = rx.changed(), if local => {
                    if changed.is_err() {
                        local = false;
                    }
                    continue;
                }
                () = poll => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(WriteError::SnapshotWaitTimedOut {
                        table: name.clone(),
                        offsets: last.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
            let table = self.inner.shared.catalog.load(name).await?;
            let metadata = table.metadata();
            let offsets = anchored_offsets(metadata);
            if covers(&offsets, last) {
                return Ok(CommitProgress {
                    snapshot_id: metadata.current_snapshot_id(),
                    offsets,
                    commit_time_ms: metadata.current_snapshot().map_or(0, |s| s.timestamp_ms()),
                    stopped: false,
                    index_source: IndexSource::None,
                    final_commit_done: false,
                });
            }
        }
    }

    /// Sends rejected rows with their reasons to the table's dead-letter topic. Failing to do
    /// so is logged; the response still lists every rejected row.
    async fn dead_letter(&self, handle: &TableHandle, request: &WriteRequest, errors: &[RowError]) {
        let topic = handle.def.changelog.topic.dead_letter();
        let log = &self.inner.shared.changelog;
        let lines: Vec<&[u8]> = match &request.rows {
            Rows::JsonLines(bytes) => json_lines(bytes),
            Rows::ArrowIpc(_) => Vec::new(),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let records: Vec<ChangeRecord> = errors
            .iter()
            .map(|e| {
                let input = e
                    .row
                    .checked_sub(request.first_row)
                    .and_then(|i| lines.get(i))
                    .map(|l| String::from_utf8_lossy(l).into_owned());
                let value = dead_letter_value(e, request.op, input.as_deref());
                ChangeRecord {
                    key: None,
                    value: Some(Bytes::from(value)),
                    headers: vec![("unitable.error".into(), Bytes::from(e.reason.clone()))],
                    timestamp_ms: now,
                }
            })
            .collect();
        let result = async {
            log.create_topic(&topic, 1).await?;
            log.append(&topic, PartitionId(0), records).await
        }
        .await;
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        metrics::counter!(m::DEAD_LETTER_ROWS, "table" => request.table.to_string(), "outcome" => outcome)
            .increment(errors.len() as u64);
        if let Err(e) = result {
            warn!(%topic, error = %e, "could not write rejected rows to the dead-letter topic");
        } else {
            info!(%topic, rows = errors.len(), "rejected rows sent to the dead-letter topic");
        }
    }
}

/// A dead-letter record's value: `{"row":N,"op":"...","field":"..."|null,"reason":"...",
/// "input":"<the original line>"|null}`.
fn dead_letter_value(e: &RowError, op: ChangeOp, input: Option<&str>) -> String {
    serde_json::json!({
        "row": e.row,
        "op": op.as_str(),
        "field": e.field,
        "reason": e.reason,
        "input": input,
    })
    .to_string()
}

/// Whether `committed` (exclusive ends) includes every offset in `last` (inclusive).
fn covers(committed: &PartitionOffsets, last: &PartitionOffsets) -> bool {
    last.0.iter().all(|(p, o)| committed.get(*p) > *o)
}

fn as_of(progress: &CommitProgress, last: &PartitionOffsets) -> AsOf {
    let lag_records: i64 = last
        .0
        .iter()
        .map(|(p, o)| (o.0 + 1 - progress.offsets.get(*p).0).max(0))
        .sum();
    let now = chrono::Utc::now().timestamp_millis();
    AsOf {
        snapshot_id: progress.snapshot_id,
        offsets: progress.offsets.clone(),
        commit_time_ms: progress.commit_time_ms,
        lag_records,
        lag_ms: if lag_records > 0 && progress.commit_time_ms > 0 {
            (now - progress.commit_time_ms).max(0)
        } else {
            0
        },
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the committer of `name` until it returns, restarting it after a panic (a bug must not
/// silently stop a table's commits while its writes keep being acknowledged). The restarted
/// committer claims the table again and resumes from the anchored offsets, so nothing is
/// committed twice. Restarts back off from 1 s to 1 min. The table's index spill directory is
/// emptied before the first start and removed at the end.
async fn supervise(
    name: TableName,
    uuid: String,
    shared: Arc<Shared>,
    progress: watch::Sender<CommitProgress>,
    cancel: CancellationToken,
) {
    let spill_dir = shared.config.index_spill_dir_of(&uuid);
    remove_spill_dir(&name, &spill_dir);
    supervise_runs(&name, &shared, &progress, &cancel).await;
    remove_spill_dir(&name, &spill_dir);
}

/// Removes what a committer of `name` left in its spill directory (the index unlinks its spill
/// file once created, so only a crash at that moment leaves one behind).
fn remove_spill_dir(name: &TableName, dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(table = %name, dir = %dir.display(), error = %e, "cannot remove the index spill directory");
        }
    }
}

async fn supervise_runs(
    name: &TableName,
    shared: &Arc<Shared>,
    progress: &watch::Sender<CommitProgress>,
    cancel: &CancellationToken,
) {
    use futures::FutureExt;
    let mut backoff = Duration::from_secs(1);
    loop {
        let committer = TableCommitter::new(name.clone(), shared.clone(), progress.clone());
        let run = std::panic::AssertUnwindSafe(committer.run(cancel.clone())).catch_unwind();
        let Err(panic) = run.await else { return };
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".into());
        metrics::counter!(m::COMMITTER_PANICS, "table" => name.to_string()).increment(1);
        tracing::error!(
            table = %name, panic = %what, restart_in_ms = backoff.as_millis() as u64,
            "the committer panicked (a bug: please report it with this log); restarting it"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
