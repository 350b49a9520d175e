//! Metric names of the writer (Prometheus, through the `metrics` facade). Every metric has a
//! `table` label.

/// Rows acknowledged by writes (counter; label `op`).
pub const ROWS_WRITTEN: &str = "unitable_writer_rows_total";
/// Bytes of acknowledged changelog records, keys plus values (counter).
pub const BYTES_WRITTEN: &str = "unitable_writer_bytes_total";
/// Rows rejected (counter; label `reason`: `invalid`, `changelog`).
pub const ROWS_REJECTED: &str = "unitable_writer_rejected_rows_total";
/// Changelog append latency per write request, in seconds (histogram).
pub const APPEND_SECONDS: &str = "unitable_writer_append_seconds";
/// Commit latency (read, write files, commit), in seconds (histogram).
pub const COMMIT_SECONDS: &str = "unitable_committer_commit_seconds";
/// Snapshots committed (counter).
pub const COMMITS: &str = "unitable_committer_commits_total";
/// Changes committed (counter; label `op`).
pub const COMMITTED_CHANGES: &str = "unitable_committer_changes_total";
/// Changelog moves to another cluster this node's committer finished (counter).
pub const CHANGELOG_MOVES: &str = "unitable_committer_changelog_moves_total";
/// Failed commit cycles (counter).
pub const COMMITTER_ERRORS: &str = "unitable_committer_errors_total";
/// Committer panics, each followed by a restart of that table's committer (counter).
pub const COMMITTER_PANICS: &str = "unitable_committer_panics_total";
/// Changelog records not yet committed (gauge; set to 0 when this node's committer of the
/// table stops: a hand-over, a fenced or dropped table, shutdown).
pub const COMMITTER_LAG_RECORDS: &str = "unitable_committer_lag_records";
/// Age of the oldest record in the last commit when it committed, in seconds (gauge; 0 when
/// the committer is caught up).
pub const COMMITTER_LAG_SECONDS: &str = "unitable_committer_lag_seconds";
/// Changelog records skipped because they are not rows of the table (counter).
pub const RECORDS_SKIPPED: &str = "unitable_committer_skipped_records_total";
/// Changelog records removed by retention before they were committed (counter).
pub const RECORDS_LOST: &str = "unitable_committer_lost_records_total";
/// Keys in the primary-key index (gauge).
pub const INDEX_KEYS: &str = "unitable_writer_index_keys";
/// Memory of the primary-key index, in bytes (gauge).
pub const INDEX_BYTES: &str = "unitable_writer_index_bytes";
/// Full primary-key index rebuilds, by `reason` (`start`, `lost-answer`, `schema`, `fallback`,
/// `foreign-snapshot`).
pub const INDEX_REBUILDS: &str = "unitable_committer_index_rebuilds_total";
/// Compactions applied to the index without a rebuild (one per catch-up).
pub const INDEX_REPOINTS: &str = "unitable_committer_index_repoints_total";
/// Committer leases this node holds (gauge; no `table` label).
pub const LEASES_HELD: &str = "unitable_committer_leases_held";
/// Leases this node took (counter): at start, from a node that left, or after an expiry.
pub const LEASES_ACQUIRED: &str = "unitable_committer_leases_acquired_total";
/// Leases this node lost without giving them up (counter): it could not renew them in time.
pub const LEASES_LOST: &str = "unitable_committer_leases_lost_total";
/// Tables this node handed to another live node after committing its backlog (counter).
pub const LEASE_HANDOVERS: &str = "unitable_committer_lease_handovers_total";
/// Failed lease rounds (the catalog database did not answer; counter; no `table` label).
pub const LEASE_ERRORS: &str = "unitable_committer_lease_errors_total";
/// Live serve nodes sharing the committers, as this node last saw them (gauge).
pub const LEASE_NODES: &str = "unitable_committer_nodes";
/// Writes answered from the request log: a retry of a request id that was already written
/// (counter).
pub const REQUESTS_DEDUPLICATED: &str = "unitable_writer_deduplicated_requests_total";
/// Key-index checkpoints written (counter, per table).
pub const INDEX_CHECKPOINTS: &str = "unitable_committer_index_checkpoints_total";
/// Key-index checkpoints that could not be written (counter, per table).
pub const INDEX_CHECKPOINT_ERRORS: &str = "unitable_committer_index_checkpoint_errors_total";
/// Time to write a key-index checkpoint (histogram, seconds, per table).
pub const INDEX_CHECKPOINT_SECONDS: &str = "unitable_committer_index_checkpoint_seconds";
/// Size of the newest key-index checkpoint (gauge, bytes, per table).
pub const INDEX_CHECKPOINT_BYTES: &str = "unitable_committer_index_checkpoint_bytes";
/// Committer starts by how the index was found (counter, per table; `result` = `loaded`,
/// `missing`, `stale`).
pub const INDEX_CHECKPOINT_LOADS: &str = "unitable_committer_index_checkpoint_loads_total";
/// Bytes of the primary-key index's spill file on disk (gauge; 0 when nothing spilled).
pub const INDEX_SPILLED_BYTES: &str = "unitable_writer_index_spilled_bytes";
/// Shards of the primary-key index written to its spill file: first spills and merges of
/// their in-memory changes into new runs (counter).
pub const INDEX_SPILLS: &str = "unitable_writer_index_spills_total";
/// When this node's committer of the table last committed a snapshot, or started (it claims
/// the table then), as Unix seconds (gauge). `time() - this` is the commit age; with
/// `unitable_committer_lag_records > 0` a growing age means the commits have stalled.
pub const LAST_COMMIT_TIMESTAMP: &str = "unitable_committer_last_commit_timestamp_seconds";
/// Committers stopped because another claimed the table (its committer epoch moved on while
/// this one still committed): a node that paused past its lease (counter).
pub const COMMITTER_FENCED: &str = "unitable_committer_fenced_total";
/// Rejected rows sent to the table's dead-letter topic, by `outcome` (`sent`, `failed`: the
/// dead-letter append failed and only the response lists them) (counter).
pub const DEAD_LETTER_ROWS: &str = "unitable_writer_dead_letter_rows_total";

/// CDC ingest: source events by outcome (counter; label `outcome`: `upsert`, `delete`,
/// `rejected`, `tombstone`, `schema_change`, `other`).
pub const INGEST_EVENTS: &str = "unitable_ingest_events_total";
/// CDC ingest: events sent to the dead-letter topic (counter; label `reason`: `malformed`,
/// `invalid`, `missing_key`, `unknown_column`, `truncate`).
pub const INGEST_REJECTED: &str = "unitable_ingest_rejected_total";
/// CDC ingest: values of source columns the table does not have, left out (counter; label
/// `column`).
pub const INGEST_UNKNOWN_COLUMNS: &str = "unitable_ingest_unknown_columns_total";
/// CDC ingest: source records not yet ingested (gauge; label `partition`, the source's; 0
/// once this node's ingester of the table stops).
pub const INGEST_LAG_RECORDS: &str = "unitable_ingest_lag_records";
/// CDC ingest: 1 while this node ingests the table (gauge).
pub const INGEST_RUNNING: &str = "unitable_ingest_running";
/// CDC ingest: times a table's ingest stopped on an error and was restarted (counter).
pub const INGEST_FAILURES: &str = "unitable_ingest_failures_total";
