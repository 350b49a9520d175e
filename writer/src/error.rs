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
    /// The primary-key index's spill file failed.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
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
    /// The client request id is unusable.
    #[error("request id `{request_id}` is invalid: {reason}")]
    InvalidRequestId {
        /// The id (its first 80 characters).
        request_id: String,
        /// What is wrong.
        reason: String,
    },
    /// An earlier attempt of the same request (same request id) is still being written by a
    /// live node.
    #[error(
        "a write of `{table}` with request id `{request_id}` is still in progress on node \
         {owner} (started {age_ms} ms ago); retry the same request later (it will return that \
         write's outcome, or finish it)"
    )]
    RequestInProgress {
        /// The table.
        table: TableName,
        /// The request id.
        request_id: String,
        /// The node writing it.
        owner: String,
        /// How long ago it started.
        age_ms: i64,
    },
    /// Idempotent writes need the request log in the catalog database, which this writer has not.
    #[error(
        "this writer has no request log (idempotent writes need a SQL catalog); retry without a request id"
    )]
    NoRequestLog,
    /// The service is shutting down.
    #[error("unitable is shutting down; retry against a running instance")]
    ShuttingDown,
    /// A key-index checkpoint could not be written or read (the committer logs it and goes on:
    /// without a checkpoint the next start rebuilds the index from the table).
    #[error("key-index checkpoint {path}: {reason}")]
    IndexCheckpoint {
        /// The checkpoint file.
        path: String,
        /// What failed.
        reason: String,
    },
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
            | WriteError::Index(_)
            | WriteError::ShuttingDown
            | WriteError::RequestInProgress { .. }
            | WriteError::TableReplaced { .. } => true,
            WriteError::BadRequest { .. }
            | WriteError::InvalidRequestId { .. }
            | WriteError::NoRequestLog
            | WriteError::Encode(_)
            | WriteError::Decode(_)
            | WriteError::IndexCheckpoint { .. }
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
