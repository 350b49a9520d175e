//! The writer's errors.

use unitable_core::changelog::ChangelogError;
use unitable_core::commit::CommitError;
use unitable_core::naming::TableName;
use unitable_core::record::{DecodeError, EncodeError};

/// Result alias for the writer.
pub type WriteResult<T, E = WriteError> = std::result::Result<T, E>;

/// Writer failures.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The table or catalog failed (not found, unreachable, ...).
    #[error(transparent)]
    Table(#[from] unitable_core::Error),
    /// The changelog failed.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    /// An Iceberg commit failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The request as a whole cannot be written (not single rows: those are row errors).
    #[error("{reason}")]
    BadRequest {
        /// What is wrong, for the user.
        reason: String,
    },
    /// The batch does not fit the table (a column missing, unknown or of the wrong type).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Changelog records could not be read back as rows.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Iceberg metadata or file I/O failed.
    #[error("{operation} failed: {source}")]
    Iceberg {
        /// What we were doing.
        operation: String,
        /// The iceberg-rust error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The rows are durable in the changelog, but no snapshot covered them in time.
    #[error(
        "the write is durable in the changelog of `{table}` (offsets {offsets}), but no Iceberg \
         snapshot covered it within {waited_ms} ms; the committer may be behind or failing \
         (see its logs and the unitable_committer_* metrics)"
    )]
    SnapshotWaitTimedOut {
        /// The table.
        table: TableName,
        /// The written offsets (last per partition).
        offsets: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// Another process dropped the table and created a new one of the same name while the
    /// write was in flight: the rows went to the old table's changelog identity, which the new
    /// table's committer skips, so they are in no table.
    #[error(
        "table `{table}` was dropped and created again while this write was in flight; none of \
         its rows is part of the new table: retry the write"
    )]
    TableReplaced {
        /// The table.
        table: TableName,
    },
    /// The service is shutting down.
    #[error("unitable is shutting down; retry against a running instance")]
    ShuttingDown,
    /// A bug: an invariant of the writer does not hold.
    #[error("internal writer error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}

impl WriteError {
    pub(crate) fn iceberg(operation: impl Into<String>, source: iceberg::Error) -> Self {
        WriteError::Iceberg {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteError::Table(e) => e.is_retryable(),
            WriteError::Changelog(e) => e.is_retryable(),
            WriteError::Commit(e) => e.is_retryable(),
            WriteError::Iceberg { source, .. } => source.retryable(),
            WriteError::SnapshotWaitTimedOut { .. }
            | WriteError::ShuttingDown
            | WriteError::TableReplaced { .. } => true,
            WriteError::BadRequest { .. }
            | WriteError::Encode(_)
            | WriteError::Decode(_)
            | WriteError::Internal { .. } => false,
        }
    }

    /// The table does not exist (any more).
    pub fn is_table_not_found(&self) -> bool {
        matches!(
            self,
            WriteError::Table(unitable_core::Error::TableNotFound { .. })
                | WriteError::Commit(CommitError::Table(
                    unitable_core::Error::TableNotFound { .. }
                ))
        )
    }
}
