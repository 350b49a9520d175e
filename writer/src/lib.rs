//! unitable's writer role: the dual write.
//!
//! **Durability order.** A write request's rows are validated (bad rows are reported by index
//! and field, good rows go on), encoded as changelog records, and appended to the table's
//! changelog partitions. The request is acknowledged only when every append it reports as
//! written is durable in the changelog (fsynced by the local log; `acks=all` on Kafka): from
//! then on the changelog is the source of truth and nothing acknowledged can be lost. The
//! Iceberg table follows within the commit interval: each table's committer
//! ([`committer`]) reads the changelog from the offsets anchored in the table's newest
//! snapshot, keeps the last change per key, writes data files and position deletes (found
//! through the primary-key index, [`index`]) and commits one snapshot whose summary records the
//! new offsets, in the same atomic compare-and-swap. **Recovery** replays from those anchored
//! offsets: a crash before the append leaves the write unacknowledged (absent, or present if
//! the append completed), a crash after it loses nothing (the committer picks the records up),
//! and a crash during or after a commit is resolved by the anchored offsets, which say exactly
//! which records the table holds, so nothing is committed twice. The index is rebuilt from the
//! table on start, never trusted across a crash.
//!
//! Flow: [`Writer::write`] -> [`input`] (rows to Arrow) -> record codec -> changelog append;
//! [`committer::TableCommitter`] -> [`files`] (data and delete files) -> the core commit layer.

mod committer;
pub mod config;
mod crash;
pub mod error;
mod files;
pub mod index;
pub mod input;
pub mod metric_names;
mod recovery;
mod writer;

pub use committer::CommitProgress;
pub use config::WriterConfig;
pub use error::{WriteError, WriteResult};
pub use input::Rows;
pub use writer::{WriteOutcome, WriteRequest, Writer};
