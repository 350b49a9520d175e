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
//! twice. On start the index is loaded from the newest key-index checkpoint ([`checkpoint`], a
//! file in the table's location that names the snapshot it describes) and caught up to the
//! table's current snapshot by reading only the data and delete files added since; without a
//! usable checkpoint it is rebuilt from the table. Either way it describes the committed table,
//! never state held only in a crashed process's memory.
//!
//! **What can still lose or strand an acknowledged write**, and how each is seen:
//! - *Retention before commit.* Kafka deletes records by its own retention whether or not the
//!   committer has read them; if a committer is stopped for longer than the topic's
//!   `retention.ms`, acknowledged records vanish before they reach Iceberg. The committer
//!   detects the gap (the anchored offset is below the partition's low watermark), logs an
//!   error naming the lost range and counts it in `unitable_committer_lost_records_total`,
//!   then resumes from the low watermark. The local changelog never removes a segment holding
//!   uncommitted records.
//! - *A dead committer owner.* One node at a time commits each table, by a lease in the
//!   catalog database ([`ownership`]); writes acknowledged by any node stay in the changelog
//!   and reach Iceberg once the table's owner commits them. When the owner dies, its leases
//!   run out and live nodes take its tables over (within about 1.3 lease periods, plus the
//!   new owner's index load: a checkpoint caught up, or a rebuild); until then FRESH and
//!   STREAM reads still serve the writes, and
//!   the lag is visible as `unitable_committer_lag_records` and in `table describe`. A paused
//!   owner that wakes up after losing its lease is fenced by the committer epoch.
//! - *A request that failed.* A write answered with an error may still have reached the
//!   changelog in part (Kafka produce timeouts, a failed fsync whose bytes did reach the disk):
//!   a retry without a request id can duplicate rows of an append-only table. With a request
//!   id ([`idempotent`]) the retry finds which of the first attempt's records landed and writes
//!   only the rest, on any node and after restarts, for 24 hours.
//!
//! Flow: [`Writer::write`] -> [`input`] (rows to Arrow) -> record codec -> changelog append;
//! [`committer::TableCommitter`] -> [`files`] (data and delete files) -> the core commit layer.

mod checkpoint;
mod committer;
pub mod config;
mod crash;
pub mod error;
mod files;
mod idempotent;
pub mod index;
mod ingest;
pub mod input;
pub mod metric_names;
mod ownership;
mod recovery;
mod writer;

pub use committer::{CommitProgress, IndexSource};
pub use config::{CheckpointPolicy, LeaseConfig, WriterConfig};
pub use error::{WriteError, WriteResult};
pub use input::Rows;
pub use writer::{MAX_REPORTED_ERRORS, WriteOutcome, WriteRequest, Writer};
