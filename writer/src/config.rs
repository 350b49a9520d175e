//! Writer settings (from `unitable serve` flags; tables may override some by property).

use std::time::Duration;

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
        }
    }
}

/// `host:pid`.
pub fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}
