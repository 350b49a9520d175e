//! The core crate's error type.

use crate::naming::TableName;

/// Result alias used throughout `unitable-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core crate, named for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table name is not `namespace.table` with valid parts.
    #[error("invalid table name `{name}`: {reason}")]
    InvalidTableName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A column type string could not be parsed.
    #[error(
        "column `{column}`: unknown type `{type_name}` (expected one of bool, int32, int64, float32, float64, decimal(P,S), string, binary, date, timestamp, timestamptz)"
    )]
    UnknownType {
        /// The column being defined.
        column: String,
        /// The type as given.
        type_name: String,
    },
    /// A table definition breaks a rule (duplicate column, bad primary key, ...).
    #[error("invalid table definition for `{table}`: {reason}")]
    InvalidDefinition {
        /// The table being defined.
        table: String,
        /// The rule that was broken.
        reason: String,
    },
    /// The table does not exist in the catalog.
    #[error("table `{table}` does not exist")]
    TableNotFound {
        /// The missing table.
        table: TableName,
    },
    /// The table already exists in the catalog.
    #[error("table `{table}` already exists")]
    TableAlreadyExists {
        /// The existing table.
        table: TableName,
    },
    /// An Iceberg table in the catalog was not created by unitable or is damaged.
    #[error("table `{table}` is not a valid unitable table: {reason}")]
    NotAUnitableTable {
        /// The table.
        table: TableName,
        /// What is missing or wrong.
        reason: String,
    },
    /// A catalog or storage URI could not be used.
    #[error("invalid {what} URI `{uri}`: {reason}")]
    InvalidUri {
        /// Which URI (catalog, warehouse).
        what: &'static str,
        /// The URI as given.
        uri: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The Iceberg catalog or table metadata failed.
    #[error("catalog operation `{operation}` failed: {source}")]
    Catalog {
        /// What we were doing.
        operation: String,
        /// The underlying Iceberg error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// A schema change could not be committed.
    #[error("cannot change the schema of `{table}`: {reason}")]
    SchemaCommit {
        /// The table.
        table: String,
        /// Why (the commit layer's error, for the user).
        reason: String,
        /// Whether trying again later may succeed (lost races, storage hiccups).
        retryable: bool,
        /// Whether another change to the schema got there first (describe and try again).
        conflict: bool,
    },
    /// A change of table properties (e.g. starting a changelog move) could not be committed.
    #[error("cannot change the properties of `{table}`: {reason}")]
    PropertiesCommit {
        /// The table.
        table: String,
        /// Why (the commit layer's error, for the user).
        reason: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
    /// Object storage failed.
    #[error("storage operation on `{path}` failed: {source}")]
    Storage {
        /// The object path.
        path: String,
        /// The underlying object_store error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Changelog errors (topics, partitions, offsets, broker availability).
    #[error(transparent)]
    Changelog(#[from] crate::changelog::ChangelogError),
    /// The committer-lease tables in the catalog database failed.
    #[error("committer leases: cannot {operation}: {reason}")]
    LeaseDatabase {
        /// What we were doing.
        operation: &'static str,
        /// The database's error.
        reason: String,
    },
    /// The ingest position table in the catalog database failed.
    #[error("ingest positions: cannot {operation}: {reason}")]
    IngestDatabase {
        /// What we were doing.
        operation: &'static str,
        /// The database's error.
        reason: String,
    },
    /// The consumer-group tables in the catalog database failed.
    #[error("consumer groups: cannot {operation}: {reason}")]
    GroupDatabase {
        /// What we were doing.
        operation: &'static str,
        /// The database's error.
        reason: String,
    },
    /// A newer connection of the same consumer-group member took its place.
    #[error(
        "member `{member}` of consumer group `{group}` was taken over by a newer connection \
         with the same member id; give each consumer its own member id"
    )]
    GroupMemberReplaced {
        /// The group.
        group: String,
        /// The member id.
        member: String,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidTableName { .. }
            | Error::UnknownType { .. }
            | Error::InvalidDefinition { .. }
            | Error::TableNotFound { .. }
            | Error::TableAlreadyExists { .. }
            | Error::NotAUnitableTable { .. }
            | Error::InvalidUri { .. } => false,
            Error::Catalog { source, .. } => source.retryable(),
            Error::SchemaCommit { retryable, .. } | Error::PropertiesCommit { retryable, .. } => {
                *retryable
            }
            Error::Storage { source, .. } => !matches!(
                **source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Error::Changelog(e) => e.is_retryable(),
            Error::LeaseDatabase { .. }
            | Error::GroupDatabase { .. }
            | Error::IngestDatabase { .. } => true,
            Error::GroupMemberReplaced { .. } => false,
        }
    }

    pub(crate) fn catalog(operation: impl Into<String>, source: iceberg::Error) -> Self {
        Error::Catalog {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn invalid_definition(table: impl ToString, reason: impl Into<String>) -> Self {
        Error::InvalidDefinition {
            table: table.to_string(),
            reason: reason.into(),
        }
    }
}
