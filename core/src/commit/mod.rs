//! unitable's Iceberg commit layer, on iceberg-rust's public spec types.
//!
//! iceberg-rust 0.10.1 can only fast-append data files; unitable needs one atomic snapshot that
//! adds data files and position-delete files together with the changelog offsets it covers. This
//! module writes the manifests, the manifest list, the snapshot and the new table metadata
//! itself, then swaps the catalog's metadata pointer with a compare-and-swap
//! ([`pointer::MetadataPointer`]).
//!
//! - [`committer`]: the committer's attempt loop (load, check landed, validate and stage, CAS,
//!   back off) shared by every operation, and metadata-only property commits (fencing).
//! - [`files`]: Parquet data files and position-delete files with column metrics.
//! - [`row_delta`]: the row-delta commit with conflict retry and idempotent retries.
//! - [`plan`]: the live files of a snapshot with the deletes that apply, and reading deletes.
//! - [`pointer`]: the compare-and-swap of the metadata pointer (SQL catalogs).
//! - [`rewrite`]: rewrite files (`replace`), carrying concurrent position deletes over.
//! - [`merge`]: merge manifests (`replace`, no data change) so a snapshot lists few of them.
//! - [`expire`]: expire snapshots, then delete the files only they reached.
//! - [`orphans`]: remove files no metadata references, older than a safety age.
//! - [`read`]: a snapshot's changelog offsets, ancestry, and the snapshot current at a time.
//!
//! See docs/iceberg-commits.md for the snapshot layout and the retry rules.

mod cache;
pub mod committer;
pub mod expire;
#[cfg(test)]
mod expire_tests;
pub mod files;
mod manifests;
pub mod merge;
#[cfg(test)]
mod merge_tests;
pub mod orphans;
pub mod plan;
pub mod pointer;
pub mod read;
pub mod rewrite;
#[cfg(test)]
mod rewrite_tests;
pub mod row_delta;
mod schema;
mod summary;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod validation_tests;

use crate::naming::TableName;

/// Result alias for the commit layer.
pub type CommitResult<T> = std::result::Result<T, CommitError>;

/// Commit-layer failures.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The request itself is wrong (e.g. an empty delete file).
    #[error("invalid commit: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Iceberg metadata or file I/O failed.
    #[error("{operation} failed: {source}")]
    Iceberg {
        /// What we were doing.
        operation: String,
        /// The iceberg-rust error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The catalog database failed.
    #[error("catalog database operation `{operation}` failed: {reason}")]
    CatalogDatabase {
        /// What we were doing.
        operation: String,
        /// The database error.
        reason: String,
    },
    /// Another writer kept winning; the commit gave up after its retries.
    #[error("commit to `{table}` lost {attempts} races to concurrent commits; retry later")]
    CommitConflict {
        /// The table.
        table: TableName,
        /// Attempts made.
        attempts: u32,
    },
    /// A snapshot named by the caller is not (or no longer) in the table metadata.
    #[error("snapshot {snapshot_id} does not exist (expired or never committed)")]
    SnapshotNotFound {
        /// The snapshot id.
        snapshot_id: i64,
    },
    /// A row delta deletes rows of a data file that is no longer live (a rewrite replaced it):
    /// the caller must rebuild its key index and recompute its deletes.
    #[error(
        "`{table}`: data file {path} targeted by the commit's position deletes is no longer live"
    )]
    DataFileRemoved {
        /// The table.
        table: TableName,
        /// The data file path.
        path: String,
    },
    /// A table property required by the commit (e.g. the committer epoch) has another value:
    /// another committer took over.
    #[error(
        "`{table}`: commit fenced, table property `{property}` is {found:?}, expected `{expected}`"
    )]
    Fenced {
        /// The table.
        table: TableName,
        /// The property.
        property: String,
        /// The value the commit requires.
        expected: String,
        /// The value found (`None`: unset).
        found: Option<String>,
    },
    /// A rewrite conflicts with commits that landed after it started.
    #[error("`{table}`: rewrite conflicts with a concurrent commit: {reason}")]
    RewriteConflict {
        /// The table.
        table: TableName,
        /// What conflicts.
        reason: String,
    },
    /// The catalog or table is not usable for commits.
    #[error(transparent)]
    Table(#[from] crate::Error),
}

impl CommitError {
    pub(crate) fn iceberg(operation: impl Into<String>, source: iceberg::Error) -> Self {
        CommitError::Iceberg {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// Whether retrying the commit later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CommitError::Invalid { .. }
            | CommitError::SnapshotNotFound { .. }
            | CommitError::DataFileRemoved { .. }
            | CommitError::Fenced { .. }
            | CommitError::RewriteConflict { .. } => false,
            CommitError::Iceberg { source, .. } => source.retryable(),
            CommitError::CatalogDatabase { .. } | CommitError::CommitConflict { .. } => true,
            CommitError::Table(e) => e.is_retryable(),
        }
    }
}
