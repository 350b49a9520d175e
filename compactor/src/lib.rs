//! The compactor role: keeps a table as fast to read as a freshly written one while its
//! committer keeps committing, without losing, resurrecting or duplicating a row.
//!
//! Data flow of one run of a table ([`Compactor::compact`]): load the table, read its
//! `unitable.compaction.*` settings ([`config`]), plan from the current snapshot ([`plan`]):
//! rewrite tasks per partition (apply position deletes of heavily deleted files, bin-pack small
//! files), snapshots to expire, and whether to remove orphans. Each rewrite task reads its input
//! files, drops their deleted rows and writes target-size files ([`rewrite`]), then commits one
//! `replace` snapshot through the commit layer, which validates it against everything committed
//! since the planned snapshot and carries concurrent position deletes over through the position
//! map. Then expiration and orphan removal run through the commit layer too.
//!
//! The scheduler ([`Compactor::run`]) looks at every table each interval, at most
//! `concurrency` at a time; a failing table is logged, counted and retried after a growing
//! back-off, the others go on. Work runs on whatever runtime calls it: `unitable serve` gives
//! the compactor its own runtime so Parquet work stays off the gRPC threads.
//!
//! See docs/compactor.md for the safety argument.

pub mod config;
pub mod error;
mod metric_names;
pub mod plan;
pub mod rewrite;
mod scheduler;
#[cfg(test)]
mod tests;

pub use config::{SchedulerConfig, TableSettings};
pub use error::{CompactError, Result};
pub use plan::{Backlog, TaskKind};
pub use scheduler::{
    CompactOptions, CompactionReport, Compactor, LastRun, TableStatus, TaskSummary,
};
