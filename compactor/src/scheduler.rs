//! [`Compactor`]: one table's compaction run, its status, and the background scheduler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use unitable_core::catalog::TableCatalog;
use unitable_core::clock::Clock;
use unitable_core::commit::expire::ExpireSnapshots;
use unitable_core::commit::merge::{DEFAULT_TARGET_MANIFEST_BYTES, MergeManifests};
use unitable_core::commit::orphans::{RemoveOrphanFiles, remove_orphan_files};
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::TableName;

use crate::config::{SchedulerConfig, TableSettings};
use crate::error::{CompactError, Result};
use crate::metric_names as m;
use crate::plan::{Backlog, TablePlan, TaskKind, plan_table};
use crate::rewrite::run_rewrite;

/// What a run should do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactOptions {
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Also remove orphan files (older than the table's safety age).
    pub orphans: bool,
}

/// One planned task, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    /// What kind of work.
    pub kind: TaskKind,
    /// A one-line description.
    pub description: String,
    /// Input files (snapshots for expiration).
    pub input_files: u64,
    /// Input bytes.
    pub input_bytes: u64,
}

/// What a run planned and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactionReport {
    /// The plan.
    pub plan: Vec<TaskSummary>,
    /// False for a dry run.
    pub executed: bool,
    /// Data files replaced.
    pub files_rewritten: u64,
    /// Their bytes.
    pub bytes_rewritten: u64,
    /// Data files written.
    pub files_written: u64,
    /// Their bytes.
    pub bytes_written: u64,
    /// Deleted rows dropped.
    pub deletes_applied: u64,
    /// Snapshots expired.
    pub snapshots_expired: u64,
    /// Files deleted (expired snapshots' files and orphans).
    pub files_removed: u64,
    /// How many fewer manifests the current snapshot lists after the run's merge.
    pub manifests_removed: u64,
    /// Manifests the current snapshot lists after the run's merge.
    pub manifests_after_merge: u64,
    /// How long the run took.
    pub duration: Duration,
    /// The newest `replace` snapshot committed.
    pub snapshot_id: Option<i64>,
    /// The backlog before the run.
    pub backlog: Backlog,
}

/// The last run of a table in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    /// When it finished (ms since the epoch).
    pub finished_ms: i64,
    /// Its report (on success).
    pub report: Option<CompactionReport>,
    /// Its error (on failure).
    pub error: Option<String>,
}

/// How far a running compaction is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks finished.
    pub tasks_done: u64,
    /// Tasks planned.
    pub tasks_total: u64,
    /// Input bytes of the finished tasks.
    pub bytes_done: u64,
    /// Input bytes of all tasks.
    pub bytes_total: u64,
}

/// A table's compaction status.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStatus {
    /// The settings in force.
    pub settings: TableSettings,
    /// The backlog now.
    pub backlog: Backlog,
    /// Tasks a run would do now.
    pub pending_tasks: u64,
    /// The last run in this process.
    pub last_run: Option<LastRun>,
    /// Runs failed in a row.
    pub consecutive_failures: u32,
    /// The run in progress, if any.
    pub running: Option<Progress>,
}

#[derive(Debug, Default)]
struct TableEntry {
    lock: Arc<tokio::sync::Mutex<()>>,
    last_run: Option<LastRun>,
    failures: u32,
    running: Option<Progress>,
    next_due_ms: i64,
    last_orphans_ms: Option<i64>,
}

/// The compactor of one catalog. Clones share state.
#[derive(Debug, Clone)]
pub struct Compactor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: TableCatalog,
    committer: Committer,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    tables: Mutex<HashMap<TableName, TableEntry>>,
}

impl Compactor {
    /// A compactor committing through `committer` (share the writer's committer so rewrites
    /// and row deltas take turns in this process).
    pub fn new(
        catalog: TableCatalog,
        committer: Committer,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                committer,
                clock,
                config,
                tables: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn with_entry<T>(&self, table: &TableName, f: impl FnOnce(&mut TableEntry) -> T) -> T {
        let mut tables = self.inner.tables.lock().unwrap_or_else(|e| e.into_inner());
        f(tables.entry(table.clone()).or_default())
    }

    /// The settings of `table` as loaded now.
    pub async fn settings(&self, table: &TableName) -> Result<TableSettings> {
        let loaded = self.inner.catalog.load(table).await?;
        TableSettings::from_properties(table, loaded.metadata().properties())
    }

    /// Plans and (unless a dry run) runs compaction of `table` now. Runs of one table never
    /// overlap (a second waits for the first).
    pub async fn compact(
        &self,
        table: &TableName,
        options: CompactOptions,
    ) -> Result<CompactionReport> {
        let lock = self.with_entry(table, |e| e.lock.clone());
        let _guard = lock.lock().await;
        let started = Instant::now();
        let result = self.compact_locked(table, options, started).await;
        let now = self.inner.clock.now_ms();
        let name = table.to_string();
        if !options.dry_run {
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            metrics::counter!(m::RUNS, "table" => name.clone(), "outcome" => outcome).increment(1);
            // Both outcomes exist from the first run on, so an alert on the increase of failed
            // runs sees the first failure.
            metrics::counter!(m::RUNS, "table" => name.clone(), "outcome" => "failed").increment(0);
            metrics::histogram!(m::RUN_SECONDS, "table" => name.clone())
                .record(started.elapsed().as_secs_f64());
            self.with_entry(table, |e| {
                e.last_run = Some(LastRun {
                    finished_ms: now,
                    report: result.as_ref().ok().cloned(),
                    error: result.as_ref().err().map(ToString::to_string),
                });
                if result.is_ok() {
                    e.failures = 0;
                    if options.orphans {
                        e.last_orphans_ms = Some(now);
                    }
                } else {
                    e.failures += 1;
                }
            });
        }
        result
    }

    async fn compact_locked(
        &self,
        name: &TableName,
        options: CompactOptions,
        started: Instant,
    ) -> Result<CompactionReport> {
        let catalog = &self.inner.catalog;
        let table = catalog.load(name).await?;
        let settings = TableSettings::from_properties(name, table.metadata().properties())?;
        let now = self.inner.clock.now_ms();
        let plan = plan_table(&table, &settings, now, options.orphans).await?;
        self.report_backlog(name, &plan.backlog);
        let mut report = CompactionReport {
            plan: summarize(&plan, &settings),
            executed: !options.dry_run,
            backlog: plan.backlog.clone(),
            ..CompactionReport::default()
        };
        if options.dry_run {
            report.duration = started.elapsed();
            return Ok(report);
        }
        self.with_entry(name, |e| {
            e.running = Some(Progress {
                tasks_done: 0,
                tasks_total: report.plan.len() as u64,
                bytes_done: 0,
                bytes_total: report.plan.iter().map(|t| t.input_bytes).sum(),
            });
        });
        let result = self
            .execute(name, &table, &plan, &settings, now, options, &mut report)
            .await;
        self.with_entry(name, |e| e.running = None);
        result?;
        report.duration = started.elapsed();
        Ok(report)
    }

    fn advance(&self, name: &TableName, bytes: u64) {
        self.with_entry(name, |e| {
            if let Some(p) = e.running.as_mut() {
                p.tasks_done += 1;
                p.bytes_done += bytes;
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        name: &TableName,
        table: &iceberg::table::Table,
        plan: &TablePlan,
        settings: &TableSettings,
        now: i64,
        options: CompactOptions,
        report: &mut CompactionReport,
    ) -> Result<()> {
        let catalog = &self.inner.catalog;
        let label = name.to_string();
        if let Some(start) = plan.starting_snapshot_id {
            for task in &plan.rewrites {
                let done = run_rewrite(
                    catalog,
                    &self.inner.committer,
                    name,
                    table,
                    start,
                    task,
                    settings,
                )
                .await?;
                self.advance(name, task.input_bytes());
                info!(
                    table = %name, kind = task.kind.as_str(), files = done.files_rewritten,
                    written = done.files_written, deletes = done.deletes_applied,
                    snapshot_id = done.snapshot_id, "rewrite committed"
                );
                report.files_rewritten += done.files_rewritten;
                report.bytes_rewritten += done.bytes_rewritten;
                report.files_written += done.files_written;
                report.bytes_written += done.bytes_written;
                report.deletes_applied += done.deletes_applied;
                report.snapshot_id = Some(done.snapshot_id);
                metrics::counter!(m::FILES_REWRITTEN, "table" => label.clone())
                    .increment(done.files_rewritten);
                metrics::counter!(m::BYTES_REWRITTEN, "table" => label.clone())
                    .increment(done.bytes_rewritten);
                metrics::counter!(m::FILES_WRITTEN, "table" => label.clone())
                    .increment(done.files_written);
                metrics::counter!(m::DELETES_APPLIED, "table" => label.clone())
                    .increment(done.deletes_applied);
            }
        }
        // Merge manifests after the rewrites: they leave the manifests of the replaced files
        // behind (as manifests of DELETED entries) and untouched files' manifests as many as
        // there were commits. Before expiration, so the replaced manifests go with the
        // snapshots that list them.
        if plan.merge_manifests {
            let merged = self
                .inner
                .committer
                .merge_manifests(
                    name,
                    &MergeManifests {
                        max_manifests: 0,
                        target_manifest_bytes: DEFAULT_TARGET_MANIFEST_BYTES,
                        properties: Default::default(),
                        commit_id: format!("compact-merge-{}", uuid::Uuid::now_v7()),
                    },
                )
                .await?;
            if let Some(merged) = merged {
                info!(
                    table = %name, before = merged.manifests_before, after = merged.manifests_after,
                    snapshot_id = merged.committed.snapshot_id, "manifests merged"
                );
                let fewer = merged
                    .manifests_before
                    .saturating_sub(merged.manifests_after) as u64;
                report.manifests_removed += fewer;
                report.manifests_after_merge = merged.manifests_after as u64;
                report.snapshot_id = Some(merged.committed.snapshot_id);
                metrics::counter!(m::MANIFESTS_MERGED, "table" => label.clone()).increment(fewer);
            }
            self.advance(name, 0);
        }
        // Expire after the rewrites, against the table as it is now (the rewrites added
        // snapshots; the retention counts from the clock, so the plan's list still holds).
        if !plan.expire.is_empty() {
            let expired = self
                .inner
                .committer
                .expire_snapshots(
                    name,
                    &ExpireSnapshots {
                        older_than_ms: now - settings.snapshot_retention_ms,
                        retain_last: settings.min_snapshots,
                        dry_run: false,
                    },
                )
                .await?;
            report.snapshots_expired += expired.expired_snapshot_ids.len() as u64;
            report.files_removed += expired.deleted_files.len() as u64;
            metrics::counter!(m::SNAPSHOTS_EXPIRED, "table" => label.clone())
                .increment(expired.expired_snapshot_ids.len() as u64);
            metrics::counter!(m::FILES_REMOVED, "table" => label.clone())
                .increment(expired.deleted_files.len() as u64);
            self.advance(name, 0);
        }
        if options.orphans {
            let removed = remove_orphan_files(
                catalog,
                name,
                &RemoveOrphanFiles {
                    older_than: Duration::from_millis(settings.orphan_age_ms.max(0) as u64),
                    dry_run: false,
                },
                self.inner.clock.as_ref(),
            )
            .await?;
            report.files_removed += removed.removed.len() as u64;
            metrics::counter!(m::FILES_REMOVED, "table" => label.clone())
                .increment(removed.removed.len() as u64);
            self.advance(name, 0);
        }
        // The backlog after the run, for the gauges.
        if report.files_rewritten > 0 {
            let table = catalog.load(name).await?;
            let after = plan_table(&table, settings, now, false).await?;
            self.report_backlog(name, &after.backlog);
        }
        Ok(())
    }

    fn report_backlog(&self, name: &TableName, backlog: &Backlog) {
        let label = name.to_string();
        metrics::gauge!(m::BACKLOG_SMALL_FILES, "table" => label.clone())
            .set(backlog.small_files as f64);
        metrics::gauge!(m::BACKLOG_DATA_FILES, "table" => label.clone())
            .set(backlog.data_files as f64);
        metrics::gauge!(m::BACKLOG_DELETE_RATIO, "table" => label).set(backlog.delete_ratio());
    }

    /// The table's backlog now and its last run in this process.
    pub async fn status(&self, table: &TableName) -> Result<TableStatus> {
        let loaded = self.inner.catalog.load(table).await?;
        let settings = TableSettings::from_properties(table, loaded.metadata().properties())?;
        let plan = plan_table(&loaded, &settings, self.inner.clock.now_ms(), false).await?;
        let (last_run, consecutive_failures, running) = self.with_entry(table, |e| {
            (e.last_run.clone(), e.failures, e.running.clone())
        });
        Ok(TableStatus {
            pending_tasks: plan.rewrites.len() as u64
                + u64::from(!plan.expire.is_empty())
                + u64::from(plan.merge_manifests),
            settings,
            backlog: plan.backlog,
            last_run,
            consecutive_failures,
            running,
        })
    }

    /// The background scheduler: every interval, each due table with compaction enabled is
    /// compacted (at most `concurrency` at a time) until `shutdown`. A failing table waits
    /// `interval * 2^failures` (at most `max_backoff`) before its next try.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_where(shutdown, |_| true).await;
    }

    /// [`Compactor::run`] for the tables `owned` accepts only (serve nodes sharing a catalog
    /// compact the tables whose commits they own, so two nodes never rewrite one table).
    pub async fn run_where(
        self,
        shutdown: CancellationToken,
        owned: impl Fn(&TableName) -> bool + Send,
    ) {
        let config = self.inner.config.clone();
        if config.interval.is_zero() {
            info!("background compaction is off");
            return;
        }
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        info!(
            interval_ms = config.interval.as_millis() as u64,
            concurrency = config.concurrency,
            "compaction scheduler started"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(config.interval) => {}
                () = shutdown.cancelled() => break,
            }
            let tables = match self.inner.catalog.list(None).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "compaction scheduler cannot list the tables; trying again next interval");
                    continue;
                }
            };
            let mut round = tokio::task::JoinSet::new();
            for table in tables {
                if !owned(&table) {
                    continue;
                }
                let now = self.inner.clock.now_ms();
                if self.with_entry(&table, |e| e.next_due_ms > now) {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = self.clone();
                let stop = shutdown.clone();
                round.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = this.run_table(&table) => {}
                        () = stop.cancelled() => {}
                    }
                });
                if shutdown.is_cancelled() {
                    break;
                }
            }
            while round.join_next().await.is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
        }
        info!("compaction scheduler stopped");
    }

    async fn run_table(&self, table: &TableName) {
        let config = &self.inner.config;
        let settings = match self.settings(table).await {
            Ok(s) => s,
            Err(e) if e.is_table_not_found() => return,
            Err(e) => {
                self.failed(table, &e, config);
                return;
            }
        };
        if !settings.enabled {
            debug!(%table, "compaction disabled by table property");
            return;
        }
        let now = self.inner.clock.now_ms();
        let orphans = self.with_entry(table, |e| {
            e.last_orphans_ms
                .is_none_or(|at| now - at >= settings.orphan_interval_ms)
        });
        match self
            .compact(
                table,
                CompactOptions {
                    dry_run: false,
                    orphans,
                },
            )
            .await
        {
            Ok(report) => {
                if report.files_rewritten + report.snapshots_expired + report.files_removed > 0 {
                    info!(
                        %table, files_rewritten = report.files_rewritten,
                        deletes_applied = report.deletes_applied,
                        snapshots_expired = report.snapshots_expired,
                        files_removed = report.files_removed,
                        took_ms = report.duration.as_millis() as u64, "compacted"
                    );
                }
                self.with_entry(table, |e| e.next_due_ms = 0);
            }
            Err(e) if e.is_table_not_found() => {}
            Err(e) => self.failed(table, &e, config),
        }
    }

    fn failed(&self, table: &TableName, e: &CompactError, config: &SchedulerConfig) {
        let now = self.inner.clock.now_ms();
        let wait = self.with_entry(table, |entry| {
            let failures = entry.failures.max(1);
            let wait = config
                .interval
                .saturating_mul(1u32 << failures.min(16))
                .min(config.max_backoff);
            entry.next_due_ms = now + wait.as_millis() as i64;
            wait
        });
        error!(
            %table, error = %e, retry_in_ms = wait.as_millis() as u64,
            "compaction failed; other tables go on, this one is retried later"
        );
    }
}

fn summarize(plan: &TablePlan, settings: &TableSettings) -> Vec<TaskSummary> {
    let mut out: Vec<TaskSummary> = plan
        .rewrites
        .iter()
        .map(|t| {
            let description = match t.kind {
                TaskKind::RewriteDeletes => format!(
                    "rewrite {} files of partition {:?} applying {} deleted rows of {}",
                    t.inputs.len(),
                    t.partition,
                    t.deletes(),
                    t.input_rows()
                ),
                _ => format!(
                    "merge {} small files of partition {:?} into files of about {} bytes",
                    t.inputs.len(),
                    t.partition,
                    settings.target_file_bytes
                ),
            };
            TaskSummary {
                kind: t.kind,
                description,
                input_files: t.inputs.len() as u64,
                input_bytes: t.input_bytes(),
            }
        })
        .collect();
    if plan.merge_manifests {
        out.push(TaskSummary {
            kind: TaskKind::MergeManifests,
            description: format!(
                "merge the manifests of the current snapshot ({} now; more than {} or rewrites planned)",
                plan.manifests, settings.max_manifests
            ),
            input_files: plan.manifests as u64,
            input_bytes: 0,
        });
    }
    if !plan.expire.is_empty() {
        out.push(TaskSummary {
            kind: TaskKind::ExpireSnapshots,
            description: format!(
                "expire {} snapshots older than {} ms, keeping at least {}",
                plan.expire.len(),
                settings.snapshot_retention_ms,
                settings.min_snapshots
            ),
            input_files: plan.expire.len() as u64,
            input_bytes: 0,
        });
    }
    if plan.orphans {
        out.push(TaskSummary {
            kind: TaskKind::RemoveOrphans,
            description: format!(
                "remove unreferenced files older than {} ms",
                settings.orphan_age_ms
            ),
            input_files: 0,
            input_bytes: 0,
        });
    }
    out
}
