//! The audit log: one JSON object per line for every write, admin action, grant or token change
//! and denial. Lines go to `--audit-log PATH` (appended, flushed per line) or, without it, to
//! the server log under the tracing target `unitable::audit`.
//!
//! Fields: `time` (RFC 3339, UTC), `principal`, `action` (the RPC), `table` (absent when the
//! action names none), `outcome` (`ok`, `failed`, `denied`, `unauthenticated`), `detail`
//! (absent or a short text: the grant, the token id, the error). Secrets never appear.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::json;

use super::Principal;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Denied,
    Unauthenticated,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Denied => "denied",
            Outcome::Unauthenticated => "unauthenticated",
        }
    }
}

/// Where audit lines go.
#[derive(Debug)]
pub(crate) struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    /// Audit lines in the server log (target `unitable::audit`).
    pub(crate) fn to_log() -> Self {
        Self { file: None }
    }

    /// Audit lines appended to `path`.
    pub(crate) fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Some(Mutex::new(file)),
        })
    }

    /// Writes one line.
    pub(crate) fn record(
        &self,
        who: &str,
        action: &str,
        table: Option<&str>,
        outcome: Outcome,
        detail: Option<&str>,
    ) {
        let mut line = json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "principal": who,
            "action": action,
            "outcome": outcome.as_str(),
        });
        if let Some(table) = table {
            line["table"] = json!(table);
        }
        if let Some(detail) = detail {
            line["detail"] = json!(detail);
        }
        metrics::counter!("unitable_audit_events_total", "outcome" => outcome.as_str())
            .increment(1);
        match &self.file {
            None => tracing::info!(target: "unitable::audit", "{line}"),
            Some(file) => {
                let mut file = match file.lock() {
                    Ok(f) => f,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if let Err(e) = writeln!(file, "{line}").and_then(|()| file.flush()) {
                    tracing::error!(
                        "cannot write the audit log ({e}); the line was: {line}; check the \
                         file given to --audit-log"
                    );
                }
            }
        }
    }

    /// Writes the line for an action that ran: `ok`, or `failed` with the error.
    pub(crate) fn result<T, E: std::fmt::Display>(
        &self,
        who: &Principal,
        action: &str,
        table: Option<&str>,
        result: &Result<T, E>,
    ) {
        match result {
            Ok(_) => self.record(who.name(), action, table, Outcome::Ok, None),
            Err(e) => self.record(
                who.name(),
                action,
                table,
                Outcome::Failed,
                Some(&e.to_string()),
            ),
        }
    }
}
