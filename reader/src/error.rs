//! The reader's errors.

use unitable_core::changelog::ChangelogError;
use unitable_core::naming::TableName;

/// Result alias for the reader.
pub type ReadResult<T, E = ReadError> = std::result::Result<T, E>;

/// Reader failures.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The table or catalog failed (not found, unreachable, ...).
    #[error(transparent)]
    Table(#[from] unitable_core::Error),
    /// The changelog failed.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    /// The request cannot be served as asked.
    #[error("{reason}")]
    BadRequest {
        /// What is wrong, for the user.
        reason: String,
    },
    /// The snapshot asked for does not exist (expired, never committed, or before the first
    /// commit).
    #[error(
        "table `{table}` has no snapshot {what}; see `unitable table describe {table}` for the current one"
    )]
    SnapshotNotFound {
        /// The table.
        table: TableName,
        /// Which snapshot was asked for.
        what: String,
    },
    /// A FRESH read would merge more changelog records than it may hold.
    #[error(
        "the changelog tail after the latest snapshot is over {max} records ({records} read): the \
         committer is far behind; read in SNAPSHOT mode, or FRESH with max_staleness, and check \
         the committer (unitable_committer_lag_records)"
    )]
    TailTooLong {
        /// Records read before giving up.
        records: u64,
        /// The limit.
        max: u64,
    },
    /// A stream was asked to start (or continue) at changelog offsets retention removed.
    #[error(
        "offset {offset} of partition {partition} of `{table}`'s changelog was removed by \
         retention (the earliest kept is {earliest}); start from a snapshot instead \
         (`--from snapshot`, StreamStart KIND_SNAPSHOT)"
    )]
    OffsetsRemoved {
        /// The table.
        table: TableName,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: i64,
        /// The low watermark.
        earliest: i64,
    },
    /// A record-exact as-of read needs changelog records that retention removed, and no
    /// retained snapshot covers them.
    #[error(
        "table `{table}` cannot be read as of {at}: changelog partition {partition} {reason}; \
         read an earlier-kept instant, or a snapshot (snapshot_id) alone"
    )]
    AsOfUnavailable {
        /// The table.
        table: TableName,
        /// The instant asked for, as the request gave it.
        at: String,
        /// The partition whose records are gone.
        partition: u32,
        /// What is missing.
        reason: String,
    },
    /// A SQL statement cannot be planned or run (DataFusion's message).
    #[error("{reason}")]
    Sql {
        /// DataFusion's message.
        reason: String,
    },
    /// A SQL query needed more operator memory than the reader's limit allows.
    #[error(
        "the query needs more memory than the server's SQL memory limit allows \
         (--sql-memory-limit, shared by concurrent queries): {reason}; filter or aggregate \
         more, select fewer columns, or retry when fewer queries run"
    )]
    QueryMemory {
        /// DataFusion's message (names the largest consumers).
        reason: String,
    },
    /// Something that should not happen did (a bug, not bad input).
    #[error("internal reader error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
    /// A lookup key is malformed or does not fit the table's primary key.
    #[error("key {index}{}: {reason}", .field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    InvalidKey {
        /// The key's index in the request.
        index: usize,
        /// The key column at fault, when there is one.
        field: Option<String>,
        /// What is wrong, for the user.
        reason: String,
    },
    /// A data file could not be read (removed by snapshot expiry, unreachable, or damaged).
    #[error("reading data file `{path}` failed: {reason}")]
    DataFile {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The lookup state of a table does not match the table (it is rebuilt on the next
    /// lookup).
    #[error("the lookup state of table `{table}` is out of date: {reason}; retry the lookup")]
    LookupState {
        /// The table.
        table: TableName,
        /// What is off.
        reason: String,
    },
    /// A table's lookup state (key index plus changelog tail) does not fit the server's
    /// lookup memory limit even after evicting every other table's.
    #[error(
        "the lookup state of table `{table}` needs {bytes} bytes ({tail_keys} keys in the \
         changelog tail after snapshot), more than the server's lookup memory limit of {limit} \
         bytes (--lookup-memory-limit); raise the limit, or check that the table's committer \
         is not behind (unitable_committer_lag_records), which makes the tail grow"
    )]
    LookupMemory {
        /// The table.
        table: TableName,
        /// What its state holds.
        bytes: usize,
        /// Keys in its tail.
        tail_keys: usize,
        /// The limit.
        limit: usize,
    },
    /// A lookup's changelog follower did not catch up with the partition in time.
    #[error(
        "the lookup of table `{table}` waited {waited_ms} ms for changelog partition \
         {partition} to be applied up to offset {needed} (applied up to {applied}); the \
         follower is behind a burst of writes: retry shortly"
    )]
    LookupBehind {
        /// The table.
        table: TableName,
        /// The partition.
        partition: u32,
        /// The high watermark the lookup must reflect.
        needed: i64,
        /// What the follower has applied.
        applied: i64,
        /// How long the lookup waited.
        waited_ms: u64,
    },
    /// The server keeps consumer groups in the catalog database, which a REST catalog lacks.
    #[error(
        "this server has no consumer groups: they live in the catalog database, and a REST \
         catalog has none; read with explicit partitions and keep positions yourself"
    )]
    NoGroupStore,
    /// The consumer group moved to a new generation: the member's stream ends (after every
    /// batch already sent) and the member reconnects to get its new partitions.
    #[error(
        "consumer group `{group}` rebalanced (generation {generation}): member `{member}` must \
         reconnect with the same member id to get its new partitions; commit what was \
         processed first"
    )]
    GroupRebalanced {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The group's new generation.
        generation: i64,
    },
    /// The member's row is gone (expired while its node could not renew it, or a newer
    /// connection with the same member id took it over).
    #[error(
        "member `{member}` of consumer group `{group}` is no longer in the group (expired, or \
         taken over by a newer connection with the same member id); reconnect"
    )]
    GroupMemberGone {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// A commit by a member that no longer owns the partition at that generation.
    #[error(
        "commit refused: member `{member}` of consumer group `{group}` is fenced for partition \
         {partition} at generation {generation}: {reason}"
    )]
    GroupFenced {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The generation the commit named.
        generation: i64,
        /// The partition refused.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// No such consumer group of the table.
    #[error("table `{table}` has no consumer group `{group}`")]
    GroupNotFound {
        /// The table.
        table: TableName,
        /// The group.
        group: String,
    },
    /// A read planned earlier (a part of a split read, a planned query) no longer matches its
    /// table: the table was dropped and created again, or its schema changed.
    #[error("the read of table `{table}` was planned before {reason}; plan the read again")]
    PlanStale {
        /// The table.
        table: TableName,
        /// What changed.
        reason: String,
    },
    /// Planning a snapshot's files or reading its delete files failed.
    #[error(transparent)]
    Commit(#[from] unitable_core::commit::CommitError),
    /// Iceberg metadata, planning or file I/O failed.
    #[error("{operation} failed: {source}")]
    Iceberg {
        /// What we were doing.
        operation: String,
        /// The iceberg-rust error.
        #[source]
        source: Box<iceberg::Error>,
    },
}

impl ReadError {
    pub(crate) fn iceberg(operation: impl Into<String>, source: iceberg::Error) -> Self {
        ReadError::Iceberg {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadError::Table(e) => e.is_retryable(),
            ReadError::Changelog(e) => e.is_retryable(),
            ReadError::Iceberg { source, .. } => source.retryable(),
            ReadError::TailTooLong { .. }
            | ReadError::QueryMemory { .. }
            | ReadError::LookupMemory { .. }
            | ReadError::LookupBehind { .. } => true,
            ReadError::BadRequest { .. }
            | ReadError::SnapshotNotFound { .. }
            | ReadError::PlanStale { .. }
            | ReadError::OffsetsRemoved { .. }
            | ReadError::AsOfUnavailable { .. }
            | ReadError::Sql { .. }
            | ReadError::Internal { .. }
            | ReadError::InvalidKey { .. }
            | ReadError::NoGroupStore
            | ReadError::GroupFenced { .. }
            | ReadError::GroupNotFound { .. } => false,
            ReadError::GroupRebalanced { .. } | ReadError::GroupMemberGone { .. } => true,
            ReadError::Commit(e) => e.is_retryable(),
            ReadError::DataFile { .. } | ReadError::LookupState { .. } => true,
        }
    }
}
