//! The server's log filter, changeable at run time for a while.
//!
//! `serve` installs the filter behind a reload handle. An override (from the `SetLogLevel`
//! RPC, `unitable admin log-level`) replaces it and arms an expiry; when the expiry passes the
//! start-up filter (`UNITABLE_LOG`, default `info`) comes back. Every override carries a
//! generation number: an expiry only reverts the override that armed it, so a later override
//! (or a reset) is never undone by an earlier one's timer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::info;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Registry};

/// The shortest override.
pub(crate) const MIN_DURATION: Duration = Duration::from_secs(1);
/// The longest override.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Why an override was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogLevelError {
    #[error(
        "`{directives}` is not a log filter ({reason}); write e.g. `info,unitable_writer=debug`"
    )]
    InvalidDirectives { directives: String, reason: String },
    #[error("the override must last from 1s to 24h, not {given_ms} ms")]
    InvalidDuration { given_ms: u128 },
    #[error("the log filter cannot be replaced: {reason}")]
    Reload { reason: String },
}

/// The filter in force and the one the process started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLevelState {
    /// The directives in force.
    pub(crate) directives: String,
    /// The start-up directives.
    pub(crate) startup: String,
    /// When the override in force expires (Unix milliseconds), if one is.
    pub(crate) expires_at_ms: Option<i64>,
}

/// Changes the process's log filter; cheap to clone.
#[derive(Clone)]
pub(crate) struct LogLevel {
    inner: Arc<Inner>,
}

struct Inner {
    handle: reload::Handle<EnvFilter, Registry>,
    startup: String,
    current: Mutex<Current>,
}

struct Current {
    directives: String,
    expires_at_ms: Option<i64>,
    generation: u64,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("state", &self.state())
            .finish()
    }
}

/// Installs the global subscriber: `startup` directives (already validated by the caller or
/// falling back to `info`), formatted to stderr, behind a reload handle.
pub(crate) fn init(startup: &str) -> LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (startup, filter) = match EnvFilter::try_new(startup) {
        Ok(filter) => (startup.to_string(), filter),
        Err(_) => ("info".to_string(), EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .init();
    LogLevel {
        inner: Arc::new(Inner {
            handle,
            current: Mutex::new(Current {
                directives: startup.clone(),
                expires_at_ms: None,
                generation: 0,
            }),
            startup,
        }),
    }
}

impl LogLevel {
    fn current(&self) -> MutexGuard<'_, Current> {
        match self.inner.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The filter in force.
    pub(crate) fn state(&self) -> LogLevelState {
        let current = self.current();
        LogLevelState {
            directives: current.directives.clone(),
            startup: self.inner.startup.clone(),
            expires_at_ms: current.expires_at_ms,
        }
    }

    /// Puts `directives` in force for `duration`, then the start-up filter back. Needs a Tokio
    /// runtime (the expiry is a task on it).
    pub(crate) fn set_for(
        &self,
        directives: &str,
        duration: Duration,
    ) -> Result<LogLevelState, LogLevelError> {
        if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
            return Err(LogLevelError::InvalidDuration {
                given_ms: duration.as_millis(),
            });
        }
        let directives = directives.trim();
        let filter =
            EnvFilter::try_new(directives).map_err(|e| LogLevelError::InvalidDirectives {
                directives: directives.to_string(),
                reason: e.to_string(),
            })?;
        let expires_at_ms = chrono::Utc::now().timestamp_millis()
            + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        info!(
            directives,
            expires_at_ms,
            startup = %self.inner.startup,
            "overriding the log filter until the override expires"
        );
        let generation = {
            let mut current = self.current();
            self.reload(filter)?;
            current.generation += 1;
            current.directives = directives.to_string();
            current.expires_at_ms = Some(expires_at_ms);
            current.generation
        };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            this.expire(generation);
        });
        Ok(self.state())
    }

    /// Restores the start-up filter now.
    pub(crate) fn reset(&self) -> Result<LogLevelState, LogLevelError> {
        {
            let mut current = self.current();
            self.restore(&mut current)?;
        }
        info!(directives = %self.inner.startup, "log filter reset to the start-up filter");
        Ok(self.state())
    }

    /// The expiry of override `generation`: restores the start-up filter unless a later
    /// override or a reset came since.
    fn expire(&self, generation: u64) {
        let restored = {
            let mut current = self.current();
            if current.generation != generation {
                return;
            }
            self.restore(&mut current)
        };
        match restored {
            Ok(()) => info!(
                directives = %self.inner.startup,
                "log filter override expired; the start-up filter is back"
            ),
            Err(e) => tracing::error!("{e}; the override stays in force"),
        }
    }

    fn restore(&self, current: &mut Current) -> Result<(), LogLevelError> {
        // The start-up directives parsed when the process started.
        let filter =
            EnvFilter::try_new(&self.inner.startup).unwrap_or_else(|_| EnvFilter::new("info"));
        self.reload(filter)?;
        current.generation += 1;
        current.directives = self.inner.startup.clone();
        current.expires_at_ms = None;
        Ok(())
    }

    fn reload(&self, filter: EnvFilter) -> Result<(), LogLevelError> {
        self.inner
            .handle
            .reload(filter)
            .map_err(|e| LogLevelError::Reload {
                reason: e.to_string(),
            })
    }
}
