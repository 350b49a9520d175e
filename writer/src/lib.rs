//! unitable's writer role: the dual write.
//!
//! **Durability order.** A write request's rows are validated (bad rows are reported by index
//! and field, good rows go on), encoded as changelog records, and appended to the table's
//! changelog partitions. Before answering, the writer checks that the catalog still names the
//! table the records were stamped for (another process may have dropped and recreated it; the
//! write then fails and is retried, never silently dropped). The request is acknowledged only
//! when every append it reports as written is durable in the changelog (fsynced by the local
//! log, which fails every waiter once an fsync failed; `acks=all` on Kafka): from then on the
//! changelog is the source of truth. The Iceberg table follows within the commit interval:
//! each table's committer ([`committer`]) reads the changelog from the offsets anchored in the
//! table's newest snapshot, keeps the last change per key, writes data files and position
//! deletes (found through the primary-key index, [`index`]) and commits one snapshot whose
//! summary records the new offsets, in the same atomic compare-and-swap. **Recovery** replays
//! from those anchored offsets: a crash before the append leaves the write unacknowledged
//! (absent, or present if the append completed), a crash after it loses nothing (the
//! committer picks the records up), and a crash during or after a commit is resolved by the
//! anchored offsets, which say exactly which records the table holds, so nothing is committed
//! twice. The index is rebuilt from the table on start, never trusted across a crash.
//!
//! **What can still lose or strand an acknowledged write**, and how each is seen:
//! - *Retention before commit.* Kafka deletes records by its own retention whether or not the
//!   committer has read them; if a committer is stopped for longer than the topic's
//!   `retention.ms`, acknowledged records vanish before they reach Iceberg. The committer
//!   detects the gap (the anchored offset is below the partition's low watermark), logs an
//!   error naming the lost range and counts it in `unitable_committer_lost_records_total`,
//!   then resumes from the low watermark. The local changelog never removes a segment holding
//!   uncommitted records.
//! - *A fenced or dead committer owner.* One process owns each table's commits (a fencing
//!   property in the table metadata). Writes acknowledged by any process stay in the
//!   changelog, but they reach Iceberg only while the owner runs: if the owner dies and no
//!   other process takes the table over, they wait (FRESH and STREAM reads still serve them).
//!   A fenced process logs the takeover and stops committing; the lag is visible as
//!   `unitable_committer_lag_records` and in `table describe`. Committer leases with
//!   failover (issue 15) remove this exception.
//! - *A request that failed.* A write answered with an error may still have reached the
//!   changelog in part (Kafka produce timeouts, a failed fsync whose bytes did reach the disk):
//!   a retry can duplicate rows of an append-only table. Idempotent request ids (issue 15)
//!   remove this.
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
pub use writer::{MAX_REPORTED_ERRORS, WriteOutcome, WriteRequest, Writer};
