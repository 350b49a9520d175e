//! Metric names of the compactor (all with a `table` label).

/// Compaction runs, by `outcome` (`ok`, `failed`).
pub(crate) const RUNS: &str = "unitable_compactor_runs_total";
/// Data files replaced by rewrites.
pub(crate) const FILES_REWRITTEN: &str = "unitable_compactor_files_rewritten_total";
/// Bytes of the data files replaced.
pub(crate) const BYTES_REWRITTEN: &str = "unitable_compactor_bytes_rewritten_total";
/// Data files written by rewrites.
pub(crate) const FILES_WRITTEN: &str = "unitable_compactor_files_written_total";
/// Deleted rows dropped by rewrites.
pub(crate) const DELETES_APPLIED: &str = "unitable_compactor_deletes_applied_total";
/// Snapshots expired.
pub(crate) const SNAPSHOTS_EXPIRED: &str = "unitable_compactor_snapshots_expired_total";
/// Files deleted by expiration and orphan removal.
pub(crate) const FILES_REMOVED: &str = "unitable_compactor_files_removed_total";
/// Duration of a run (histogram).
pub(crate) const RUN_SECONDS: &str = "unitable_compactor_run_seconds";
/// Small data files at the last plan.
pub(crate) const BACKLOG_SMALL_FILES: &str = "unitable_compactor_backlog_small_files";
/// Deleted rows / rows at the last plan.
pub(crate) const BACKLOG_DELETE_RATIO: &str = "unitable_compactor_backlog_delete_ratio";
/// Live data files at the last plan.
pub(crate) const BACKLOG_DATA_FILES: &str = "unitable_compactor_backlog_data_files";
/// Manifests removed from the current snapshot's list by merges (counter).
pub(crate) const MANIFESTS_MERGED: &str = "unitable_compactor_manifests_merged_total";
