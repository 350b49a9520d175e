//! Crash points for the recovery tests: named places in the write path and the committer where
//! the process can be made to abort, as a kill -9 would, at exactly that moment.
//!
//! Off unless `UNITABLE_CRASH_POINT` names a point; then the process aborts the first time it
//! reaches that point while the file named by `UNITABLE_CRASH_FILE` exists (the file is removed
//! first, so the restarted process runs on). With `UNITABLE_CRASH_MODE=panic` the task that
//! reaches the point panics instead (a bug, not a crash: the process must survive it).
//! Production deployments never set these variables.

use std::path::PathBuf;
use std::sync::OnceLock;

/// After the changelog appends of a write are durable, before the answer is sent.
pub(crate) const AFTER_APPEND: &str = "after-append";
/// After a commit's data and delete files are written, before the metadata swap.
pub(crate) const BEFORE_SWAP: &str = "before-swap";
/// After the metadata swap, before the committer updates its index and progress.
pub(crate) const AFTER_SWAP: &str = "after-swap";
/// After the committer claimed the table, before it rebuilt its index.
pub(crate) const AFTER_CLAIM: &str = "after-claim";
/// In the committer, when a changelog move is about to switch to the new generation.
pub(crate) const BEFORE_MOVE_SWITCH: &str = "before-move-switch";

struct Armed {
    point: String,
    file: PathBuf,
    panic: bool,
}

fn armed() -> &'static Option<Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        Some(Armed {
            point: std::env::var("UNITABLE_CRASH_POINT").ok()?,
            file: PathBuf::from(std::env::var("UNITABLE_CRASH_FILE").ok()?),
            panic: std::env::var("UNITABLE_CRASH_MODE").is_ok_and(|m| m == "panic"),
        })
    })
}

/// Aborts the process (or panics, in panic mode) here if this point is armed and its trigger
/// file exists.
pub(crate) fn point(name: &str) {
    if let Some(armed) = armed()
        && armed.point == name
        && std::fs::remove_file(&armed.file).is_ok()
    {
        if armed.panic {
            panic!("crash point `{name}` reached in panic mode");
        }
        eprintln!("crash point `{name}` reached: aborting");
        std::process::abort();
    }
}
