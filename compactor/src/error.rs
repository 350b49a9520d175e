//! The compactor's errors.

use unitable_core::commit::CommitError;
use unitable_core::naming::TableName;

/// Result alias for the compactor.
pub type Result<T, E = CompactError> = std::result::Result<T, E>;

/// What can go wrong while planning or running a compaction.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// A commit (rewrite, expiration) or a read through the commit layer failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The catalog or the table failed.
    #[error(transparent)]
    Table(#[from] unitable_core::Error),
    /// A `unitable.compaction.*` table property cannot be used.
    #[error(
        "`{table}`: table property `{property}` = `{value}` is not valid ({reason}); fix it with \
         the table's properties or remove it to use the default"
    )]
    BadProperty {
        /// The table.
        table: TableName,
        /// The property key.
        property: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A data file could not be decoded or its rows not reshaped.
    #[error("`{table}`: data file {path}: {reason}")]
    DataFile {
        /// The table.
        table: TableName,
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Concurrent commits kept winning for every round of retries.
    #[error(
        "`{table}`: the rewrite lost {rounds} rounds of commit races to concurrent commits; it is \
         retried at the next compaction"
    )]
    Starved {
        /// The table.
        table: TableName,
        /// Rounds made.
        rounds: u32,
    },
    /// A blocking task (Parquet decoding) failed to finish.
    #[error("a compaction worker task failed: {reason}")]
    Worker {
        /// Why.
        reason: String,
    },
}

impl CompactError {
    /// Whether running the compaction again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CompactError::Commit(e) => e.is_retryable(),
            CompactError::Table(e) => e.is_retryable(),
            CompactError::Starved { .. } | CompactError::Worker { .. } => true,
            CompactError::BadProperty { .. } | CompactError::DataFile { .. } => false,
        }
    }

    /// Whether the table does not exist (any more).
    pub fn is_table_not_found(&self) -> bool {
        matches!(
            self,
            CompactError::Table(unitable_core::Error::TableNotFound { .. })
                | CompactError::Commit(CommitError::Table(
                    unitable_core::Error::TableNotFound { .. }
                ))
        )
    }
}
