//! unitable-core: the domain model and the seams every role is built on.
//!
//! - [`table`]: a table definition (columns with Iceberg field ids, primary key, buckets,
//!   partition spec, changelog binding, properties) and its mapping to Iceberg metadata. The
//!   Iceberg catalog is the only store of table definitions.
//! - [`catalog`]: opening the Iceberg catalog (SQLite, Postgres, REST) and table operations.
//! - [`storage`]: Iceberg file I/O over `object_store` (local files, memory, S3).
//! - [`changelog`]: the changelog trait (append, read/tail, offsets by time, watermarks) and its
//!   backends: in-memory, `LocalChangelog` (segment files) and `KafkaChangelog` (rdkafka).
//! - [`record`]: the changelog record format `json-v1` (Arrow rows <-> Kafka-shaped records).
//! - [`commit`]: unitable's Iceberg commit layer (row deltas with position deletes, compare-and-
//!   swap of the metadata pointer, idempotent retries).
//! - [`admin`]: table create/drop keeping the Iceberg table and its topic together.
//! - [`requests`]: the log of idempotent write requests (what a request id did).
//! - [`ingest`]: CDC ingest settings (table properties) and source positions (catalog database).
//! - [`scan`]: reading an iceberg-rust table scan to Arrow (one reader per data file, which
//!   avoids a hang in iceberg-rust 0.10.1's shared delete-file cache).
//! - [`lease`]: committer leases and node membership in the catalog database, and which node
//!   should commit which table.
//! - [`groups`]: consumer groups in the catalog database (members, generations, partition
//!   assignment, committed positions, fencing).
//! - [`bucket`], [`offsets`], [`naming`]: how keys map to partitions, changelog positions, and
//!   every name unitable gives to things outside the process.
//!
//! Data flow: the writer appends change records to a table's changelog topic (partition =
//! bucket of the key); the committer turns offset ranges into Iceberg snapshots; readers pick
//! the changelog, the snapshots or both.
#![warn(missing_docs)]

pub mod admin;
pub mod bucket;
pub mod catalog;
pub mod changelog;
pub mod clock;
pub mod commit;
pub mod error;
pub mod groups;
pub mod ingest;
pub mod lease;
pub mod naming;
pub mod offsets;
pub mod partition;
pub mod record;
pub mod requests;
pub mod scan;
pub mod storage;
pub mod table;
pub mod types;

pub use error::{Error, Result};
