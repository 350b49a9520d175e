//! The one place errors become gRPC statuses: each arm picks the code and the log level.

use tonic::{Code, Status};
use tracing::{debug, error, warn};
use unitable_compactor::CompactError;
use unitable_core::Error as CoreError;
use unitable_core::changelog::ChangelogError;
use unitable_core::commit::CommitError;
use unitable_proto::ConversionError;
use unitable_reader::ReadError;
use unitable_writer::WriteError;

use crate::access::Privilege;

/// Errors a gRPC handler can return.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Conversion(#[from] ConversionError),
    #[error("field `{field}`: {reason}")]
    BadRequest { field: &'static str, reason: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Compact(Box<CompactError>),
    #[error("a background task failed: {0}")]
    Worker(String),
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    #[error(
        "permission denied: `{principal}` lacks `{privilege}` on {object}; an admin can grant it \
         with `unitable grant {grant_hint}`"
    )]
    PermissionDenied {
        principal: String,
        privilege: Privilege,
        object: String,
        grant_hint: String,
    },
    #[error("{what} does not exist")]
    AccessNotFound { what: String },
    #[error("not implemented: {what}")]
    Unimplemented { what: String },
    #[error("encoding Arrow Flight data failed: {reason}")]
    FlightEncode { reason: String },
    #[error("the access tables in the catalog database failed to {operation}: {reason}")]
    AccessStore {
        operation: &'static str,
        reason: String,
    },
    #[error(transparent)]
    LogLevel(#[from] crate::telemetry::log_level::LogLevelError),
}

impl From<CompactError> for ApiError {
    fn from(e: CompactError) -> Self {
        ApiError::Compact(Box::new(e))
    }
}

fn classify_compact(e: &CompactError) -> (Code, Level) {
    match e {
        CompactError::Commit(c) => classify_commit(c),
        CompactError::Table(core) => classify_core(core),
        CompactError::BadProperty { .. } => (Code::FailedPrecondition, Level::Warn),
        CompactError::DataFile { .. } => (Code::Internal, Level::Error),
        CompactError::Starved { .. } => (Code::Aborted, Level::Warn),
        CompactError::Worker { .. } => (Code::Internal, Level::Error),
    }
}

fn classify_read(e: &ReadError) -> (Code, Level) {
    match e {
        ReadError::Table(core) => classify_core(core),
        ReadError::Changelog(c) => classify_changelog(c),
        ReadError::BadRequest { .. } | ReadError::InvalidKey { .. } => {
            (Code::InvalidArgument, Level::Debug)
        }
        ReadError::SnapshotNotFound { .. } => (Code::NotFound, Level::Debug),
        ReadError::PlanStale { .. } => (Code::FailedPrecondition, Level::Debug),
        ReadError::Sql { .. } => (Code::InvalidArgument, Level::Debug),
        ReadError::OffsetsRemoved { .. } | ReadError::AsOfUnavailable { .. } => {
            (Code::OutOfRange, Level::Debug)
        }
        ReadError::TailTooLong { .. }
        | ReadError::QueryMemory { .. }
        | ReadError::LookupMemory { .. } => (Code::ResourceExhausted, Level::Warn),
        ReadError::LookupBehind { .. } => (Code::Unavailable, Level::Warn),
        ReadError::Internal { .. } => (Code::Internal, Level::Error),
        ReadError::NoGroupStore => (Code::FailedPrecondition, Level::Debug),
        // A rebalance ends member streams on purpose; the client reconnects.
        ReadError::GroupRebalanced { .. } | ReadError::GroupMemberGone { .. } => {
            (Code::Aborted, Level::Debug)
        }
        ReadError::GroupFenced { .. } => (Code::FailedPrecondition, Level::Debug),
        ReadError::GroupNotFound { .. } => (Code::NotFound, Level::Debug),
        ReadError::Commit(c) => classify_commit(c),
        ReadError::DataFile { .. } | ReadError::LookupState { .. } => {
            (Code::Unavailable, Level::Warn)
        }
        ReadError::Iceberg { .. } => {
            if e.is_retryable() {
                (Code::Unavailable, Level::Warn)
            } else {
                (Code::Internal, Level::Error)
            }
        }
    }
}

fn classify_changelog(c: &ChangelogError) -> (Code, Level) {
    match c {
        ChangelogError::TopicNotFound { .. } | ChangelogError::PartitionNotFound { .. } => {
            (Code::FailedPrecondition, Level::Error)
        }
        ChangelogError::TopicExists { .. }
        | ChangelogError::TopicMisconfigured { .. }
        | ChangelogError::TopicInUse { .. } => (Code::AlreadyExists, Level::Warn),
        ChangelogError::OffsetOutOfRange { .. } => (Code::OutOfRange, Level::Debug),
        ChangelogError::Unavailable { .. } | ChangelogError::Io { .. } => {
            (Code::Unavailable, Level::Warn)
        }
        ChangelogError::Corrupt { .. } => (Code::DataLoss, Level::Error),
        ChangelogError::RecordTooLarge { .. } => (Code::InvalidArgument, Level::Debug),
    }
}

fn classify_commit(e: &CommitError) -> (Code, Level) {
    match e {
        CommitError::Table(core) => classify_core(core),
        CommitError::Fenced { .. } => (Code::Aborted, Level::Warn),
        CommitError::CommitConflict { .. } => (Code::Aborted, Level::Warn),
        CommitError::DataFileRemoved { .. } | CommitError::RewriteConflict { .. } => {
            (Code::Aborted, Level::Warn)
        }
        CommitError::SnapshotNotFound { .. } => (Code::NotFound, Level::Debug),
        CommitError::Invalid { .. } => (Code::Internal, Level::Error),
        CommitError::Iceberg { .. } | CommitError::CatalogDatabase { .. } => {
            if e.is_retryable() {
                (Code::Unavailable, Level::Warn)
            } else {
                (Code::Internal, Level::Error)
            }
        }
    }
}

fn classify_write(e: &WriteError) -> (Code, Level) {
    match e {
        WriteError::Table(core) => classify_core(core),
        WriteError::Changelog(c) => classify_changelog(c),
        WriteError::Commit(c) => classify_commit(c),
        WriteError::BadRequest { .. }
        | WriteError::Encode(_)
        | WriteError::InvalidRequestId { .. } => (Code::InvalidArgument, Level::Debug),
        WriteError::RequestInProgress { .. } => (Code::Aborted, Level::Debug),
        WriteError::NoRequestLog => (Code::FailedPrecondition, Level::Warn),
        WriteError::SnapshotWaitTimedOut { .. } => (Code::DeadlineExceeded, Level::Warn),
        WriteError::ShuttingDown => (Code::Unavailable, Level::Debug),
        // The committer's index spill file failed (only committers see it; they retry).
        WriteError::Index(_) => (Code::Unavailable, Level::Error),
        WriteError::TableReplaced { .. } => (Code::Aborted, Level::Warn),
        WriteError::Decode(_)
        | WriteError::IndexCheckpoint { .. }
        | WriteError::Internal { .. } => (Code::Internal, Level::Error),
        WriteError::Iceberg { .. } => {
            if e.is_retryable() {
                (Code::Unavailable, Level::Warn)
            } else {
                (Code::Internal, Level::Error)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Level {
    Debug,
    Warn,
    Error,
}

fn classify_core(e: &CoreError) -> (Code, Level) {
    match e {
        CoreError::InvalidTableName { .. }
        | CoreError::UnknownType { .. }
        | CoreError::InvalidDefinition { .. } => (Code::InvalidArgument, Level::Debug),
        CoreError::TableNotFound { .. } => (Code::NotFound, Level::Debug),
        CoreError::TableAlreadyExists { .. } => (Code::AlreadyExists, Level::Debug),
        CoreError::NotAUnitableTable { .. } => (Code::FailedPrecondition, Level::Warn),
        CoreError::SchemaCommit { conflict: true, .. } => (Code::Aborted, Level::Debug),
        CoreError::SchemaCommit { retryable, .. }
        | CoreError::PropertiesCommit { retryable, .. } => {
            if *retryable {
                (Code::Unavailable, Level::Warn)
            } else {
                (Code::Internal, Level::Error)
            }
        }
        CoreError::InvalidUri { .. } => (Code::InvalidArgument, Level::Warn),
        CoreError::Catalog { .. } | CoreError::Storage { .. } => {
            if e.is_retryable() {
                (Code::Unavailable, Level::Warn)
            } else {
                (Code::Internal, Level::Error)
            }
        }
        CoreError::Changelog(c) => classify_changelog(c),
        CoreError::LeaseDatabase { .. }
        | CoreError::GroupDatabase { .. }
        | CoreError::IngestDatabase { .. } => (Code::Unavailable, Level::Warn),
        CoreError::GroupMemberReplaced { .. } => (Code::Aborted, Level::Debug),
    }
}

fn classify_log_level(e: &crate::telemetry::log_level::LogLevelError) -> (Code, Level) {
    use crate::telemetry::log_level::LogLevelError;
    match e {
        LogLevelError::InvalidDirectives { .. } | LogLevelError::InvalidDuration { .. } => {
            (Code::InvalidArgument, Level::Debug)
        }
        LogLevelError::Reload { .. } => (Code::Internal, Level::Error),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let (code, level) = match &e {
            ApiError::Core(core) => classify_core(core),
            ApiError::Conversion(ConversionError::Domain(core)) => classify_core(core),
            ApiError::Conversion(ConversionError::InvalidField { .. }) => {
                (Code::InvalidArgument, Level::Debug)
            }
            ApiError::BadRequest { .. } => (Code::InvalidArgument, Level::Debug),
            ApiError::Write(w) => classify_write(w),
            ApiError::Read(r) => classify_read(r),
            ApiError::Compact(c) => classify_compact(c),
            ApiError::Worker(_) => (Code::Internal, Level::Error),
            ApiError::Unauthenticated { .. } => (Code::Unauthenticated, Level::Debug),
            ApiError::PermissionDenied { .. } => (Code::PermissionDenied, Level::Debug),
            ApiError::AccessNotFound { .. } => (Code::NotFound, Level::Debug),
            ApiError::AccessStore { .. } => (Code::Unavailable, Level::Error),
            ApiError::LogLevel(l) => classify_log_level(l),
            ApiError::Unimplemented { .. } => (Code::Unimplemented, Level::Debug),
            ApiError::FlightEncode { .. } => (Code::Internal, Level::Error),
        };
        let message = e.to_string();
        match level {
            Level::Debug => debug!(?code, "{message}"),
            Level::Warn => warn!(?code, "{message}"),
            Level::Error => error!(?code, "{message}"),
        }
        metrics::counter!("unitable_grpc_errors_total", "code" => format!("{code:?}")).increment(1);
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_client_codes() {
        let name = "a.b".parse().unwrap();
        let s: Status = ApiError::from(CoreError::TableNotFound { table: name }).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("a.b"));
        let s: Status = ApiError::from(CoreError::UnknownType {
            column: "c".into(),
            type_name: "x".into(),
        })
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = ApiError::BadRequest {
            field: "table",
            reason: "missing".into(),
        }
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
