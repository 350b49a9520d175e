//! Writer settings (from `unitable serve` flags; tables may override some by property).

use std::path::PathBuf;
use std::time::Duration;

pub use crate::checkpoint::CheckpointPolicy;
use unitable_core::lease::LeaseStore;
use unitable_core::naming::TableName;
use unitable_core::requests::RequestLog;

use crate::index::SpillConfig;

/// How the writer and its committers behave.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// How often each table's committer commits (table property `unitable.commit.interval-ms`
    /// overrides it).
    pub commit_interval: Duration,
    /// At most this many changelog records go into one commit.
    pub max_batch_records: usize,
    /// The data file size committers aim for, in bytes (table property
    /// `unitable.write.target-file-size-bytes` overrides it). Files are cut by the rows'
    /// in-memory size, so compressed files come out smaller.
    pub target_file_bytes: u64,
    /// How long a write with `wait_for = SNAPSHOT` waits for a covering snapshot.
    pub snapshot_wait: Duration,
    /// Names this process in the committer-owner table property (host and process id).
    pub instance: String,
    /// The runtime committers run on (they decode records and encode Parquet: CPU work that
    /// must not run on the threads serving requests). `None`: the runtime of the caller that
    /// first touches a table, which only tests should rely on.
    pub committer_runtime: Option<tokio::runtime::Handle>,
    /// Committer ownership by leases shared with other serve nodes (see [`LeaseConfig`]).
    /// `None`: this process runs the committer of every table it touches, and the newest
    /// process to start one fences the others (one node, or tests of fencing itself).
    pub leases: Option<LeaseConfig>,
    /// The log of idempotent write requests (the catalog database). `None`: writes with a
    /// request id are refused.
    pub requests: Option<RequestLog>,
    /// How long a request id is remembered: a retry later than this writes again.
    pub request_window: Duration,
    /// When committers checkpoint their primary-key index (see [`CheckpointPolicy`]).
    pub index_checkpoints: CheckpointPolicy,
    /// Most memory each table's primary-key index keeps, in bytes (a limit per table, not
    /// shared by the tables). Past it the index spills to [`Self::index_spill_dir`] (see
    /// [`crate::index`]). `None`: the index stays in memory whole.
    pub index_memory_limit: Option<u64>,
    /// Where indexes spill: a directory per table (by table uuid) under it, emptied when the
    /// table's committer starts and removed when it stops.
    pub index_spill_dir: PathBuf,
}

/// How serve nodes share the tables' committers: each node renews its membership and the
/// leases of the tables it commits; tables are spread evenly over the live nodes and taken
/// over when a holder's lease runs out.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Where leases live (the catalog database).
    pub store: LeaseStore,
    /// This node's id, unique among live nodes and stable across restarts (so a restarted
    /// node takes its tables back at once): by default `host:grpc-port`.
    pub node: String,
    /// How long a lease lasts without renewal; it is renewed every fifth of that. A dead
    /// owner's tables are taken over after at most this long plus one renewal period.
    pub ttl: Duration,
}

impl LeaseConfig {
    /// How often leases and membership are renewed.
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_millis(50))
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_secs(1),
            max_batch_records: 500_000,
            target_file_bytes: 128 * 1024 * 1024,
            snapshot_wait: Duration::from_secs(60),
            instance: default_instance(),
            committer_runtime: None,
            leases: None,
            requests: None,
            request_window: Duration::from_secs(24 * 3600),
            index_checkpoints: CheckpointPolicy::default(),
            index_memory_limit: None,
            index_spill_dir: std::env::temp_dir().join("unitable-index-spill"),
        }
    }
}

impl WriterConfig {
    /// The spill directory of the table with uuid `uuid`.
    pub(crate) fn index_spill_dir_of(&self, uuid: &str) -> PathBuf {
        self.index_spill_dir.join(uuid)
    }

    /// How the index of `table` (uuid `uuid`) spills; `None` without a memory limit.
    pub(crate) fn index_spill(&self, table: &TableName, uuid: &str) -> Option<SpillConfig> {
        self.index_memory_limit.map(|memory_limit| SpillConfig {
            memory_limit,
            dir: self.index_spill_dir_of(uuid),
            table: table.to_string(),
        })
    }
}

/// `host:pid`.
pub fn default_instance() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This machine's host name (`HOSTNAME`, else /etc/hostname, else `localhost`).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
