//! Compaction settings: per table from `unitable.compaction.*` properties (with defaults), and
//! the scheduler's settings from the server's flags.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use unitable_core::naming::{TableName, props};

use crate::error::{CompactError, Result};

/// Default target size of compacted files when neither compaction nor write sets one.
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Default fraction of the target below which a file counts as small.
pub const DEFAULT_SMALL_FILE_FRACTION: f64 = 0.75;
/// Default number of small files of a partition that triggers bin-packing.
pub const DEFAULT_MIN_INPUT_FILES: usize = 5;
/// Default deleted-row fraction from which a file is rewritten.
pub const DEFAULT_DELETE_RATIO: f64 = 0.2;
/// Default snapshot retention: one hour.
pub const DEFAULT_SNAPSHOT_RETENTION_MS: i64 = 3_600_000;
/// Default number of newest snapshots always kept.
pub const DEFAULT_MIN_SNAPSHOTS: usize = 10;
/// Default safety age of orphan removal: three days.
pub const DEFAULT_ORPHAN_AGE_MS: i64 = 3 * 24 * 3_600_000;
/// Default interval between orphan scans of one table by the scheduler: one day.
pub const DEFAULT_ORPHAN_INTERVAL_MS: i64 = 24 * 3_600_000;
/// Default number of manifests the current snapshot may list before a run merges them.
pub const DEFAULT_MAX_MANIFESTS: usize = 16;

/// One table's compaction settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSettings {
    /// Background compaction runs for the table.
    pub enabled: bool,
    /// Size of the files compaction writes, in bytes.
    pub target_file_bytes: u64,
    /// Files smaller than `small_file_fraction * target_file_bytes` are small.
    pub small_file_fraction: f64,
    /// A partition is bin-packed once it has this many small files.
    pub min_input_files: usize,
    /// A file whose deleted rows are at least this fraction of its rows is rewritten.
    pub delete_ratio: f64,
    /// Snapshots committed longer ago than this expire (ms).
    pub snapshot_retention_ms: i64,
    /// The newest snapshots always kept (at least 1).
    pub min_snapshots: usize,
    /// Unreferenced files are removed only when older than this (ms).
    pub orphan_age_ms: i64,
    /// How often the scheduler looks for orphans in the table (ms).
    pub orphan_interval_ms: i64,
    /// Runs merge the current snapshot's manifests (after rewriting files, or when it lists
    /// more than `max_manifests`).
    pub merge_manifests: bool,
    /// Manifests the current snapshot may list before a run merges them (at least 1).
    pub max_manifests: usize,
}

impl Default for TableSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            small_file_fraction: DEFAULT_SMALL_FILE_FRACTION,
            min_input_files: DEFAULT_MIN_INPUT_FILES,
            delete_ratio: DEFAULT_DELETE_RATIO,
            snapshot_retention_ms: DEFAULT_SNAPSHOT_RETENTION_MS,
            min_snapshots: DEFAULT_MIN_SNAPSHOTS,
            orphan_age_ms: DEFAULT_ORPHAN_AGE_MS,
            orphan_interval_ms: DEFAULT_ORPHAN_INTERVAL_MS,
            merge_manifests: true,
            max_manifests: DEFAULT_MAX_MANIFESTS,
        }
    }
}

impl TableSettings {
    /// Reads the settings from a table's properties; unset keys take the defaults.
    pub fn from_properties(
        table: &TableName,
        properties: &HashMap<String, String>,
    ) -> Result<Self> {
        let get = |key: &str| properties.get(key).map(String::as_str);
        let mut s = TableSettings::default();
        if let Some(v) = get(props::WRITE_TARGET_FILE_SIZE) {
            s.target_file_bytes = parse(table, props::WRITE_TARGET_FILE_SIZE, v, |n: &u64| *n > 0)?;
        }
        if let Some(v) = get(props::COMPACTION_TARGET_FILE_SIZE) {
            s.target_file_bytes =
                parse(table, props::COMPACTION_TARGET_FILE_SIZE, v, |n: &u64| {
                    *n > 0
                })?;
        }
        if let Some(v) = get(props::COMPACTION_ENABLED) {
            s.enabled = parse(table, props::COMPACTION_ENABLED, v, |_: &bool| true)?;
        }
        if let Some(v) = get(props::COMPACTION_SMALL_FILE_FRACTION) {
            s.small_file_fraction = parse(
                table,
                props::COMPACTION_SMALL_FILE_FRACTION,
                v,
                |f: &f64| (0.0..=1.0).contains(f),
            )?;
        }
        if let Some(v) = get(props::COMPACTION_MIN_INPUT_FILES) {
            s.min_input_files = parse(table, props::COMPACTION_MIN_INPUT_FILES, v, |n: &usize| {
                *n >= 1
            })?;
        }
        if let Some(v) = get(props::COMPACTION_DELETE_RATIO) {
            s.delete_ratio = parse(table, props::COMPACTION_DELETE_RATIO, v, |f: &f64| {
                *f > 0.0 && *f <= 1.0
            })?;
        }
        if let Some(v) = get(props::COMPACTION_SNAPSHOT_RETENTION_MS) {
            s.snapshot_retention_ms = parse(
                table,
                props::COMPACTION_SNAPSHOT_RETENTION_MS,
                v,
                |n: &i64| *n >= 0,
            )?;
        }
        if let Some(v) = get(props::COMPACTION_MIN_SNAPSHOTS) {
            s.min_snapshots = parse(table, props::COMPACTION_MIN_SNAPSHOTS, v, |n: &usize| {
                *n >= 1
            })?;
        }
        if let Some(v) = get(props::COMPACTION_ORPHAN_AGE_MS) {
            // An hour at least: the age is what protects files of commits in flight.
            s.orphan_age_ms = parse(table, props::COMPACTION_ORPHAN_AGE_MS, v, |n: &i64| {
                *n >= 3_600_000
            })?;
        }
        if let Some(v) = get(props::COMPACTION_ORPHAN_INTERVAL_MS) {
            s.orphan_interval_ms =
                parse(table, props::COMPACTION_ORPHAN_INTERVAL_MS, v, |n: &i64| {
                    *n >= 0
                })?;
        }
        if let Some(v) = get(props::COMPACTION_MERGE_MANIFESTS) {
            s.merge_manifests =
                parse(table, props::COMPACTION_MERGE_MANIFESTS, v, |_: &bool| true)?;
        }
        if let Some(v) = get(props::COMPACTION_MAX_MANIFESTS) {
            s.max_manifests = parse(table, props::COMPACTION_MAX_MANIFESTS, v, |n: &usize| {
                *n >= 1
            })?;
        }
        Ok(s)
    }

    /// Files below this size (bytes) are small.
    pub fn small_file_bytes(&self) -> u64 {
        (self.target_file_bytes as f64 * self.small_file_fraction) as u64
    }
}

fn parse<T: FromStr>(
    table: &TableName,
    property: &str,
    value: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T> {
    let bad = |reason: &str| CompactError::BadProperty {
        table: table.clone(),
        property: property.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let parsed: T = value.trim().parse().map_err(|_| bad("cannot be parsed"))?;
    if valid(&parsed) {
        Ok(parsed)
    } else {
        Err(bad("out of range; see docs/compactor.md"))
    }
}

/// The background scheduler's settings (from `unitable serve` flags).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How often each table is looked at; zero turns the scheduler off.
    pub interval: Duration,
    /// Tables compacted at the same time.
    pub concurrency: usize,
    /// The longest a failing table waits before its next try (doubling from `interval`).
    pub max_backoff: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            concurrency: 1,
            max_backoff: Duration::from_secs(600),
        }
    }
}
