//! The server's log filter, changeable at run time for a while.
//!
//! `serve` installs the filter behind a reload handle. An override (from the `SetLogLevel`
//! RPC, `unitable admin log-level`) replaces it and arms an expiry; when the expiry passes the
//! start-up filter (`UNITABLE_LOG`, default `info`) comes back. Every override carries a
//! generation number: an expiry only reverts the override that armed it, so a later override
//! (or a reset) is never undone by an earlier one's timer.

use std::future::Future;
use std::pin::Pin;
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

/// Waits out an override's duration: a Tokio sleep (tests pass a clock of their own).
type Sleep = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Inner {
    handle: reload::Handle<EnvFilter, Registry>,
    sleep: Sleep,
    startup: String,
    current: Mutex<Current>,
}

struct Current {
    directives: String,
    expires_at_ms: Option<i64>,
    generation: u64,
    /// The expiry task of the override in force: aborted when another override or a reset
    /// replaces it.
    timer: Option<tokio::task::AbortHandle>,
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
    LogLevel::new(handle, startup)
}

impl LogLevel {
    /// Controls the filter behind `handle`; `startup` is what it holds now.
    fn new(handle: reload::Handle<EnvFilter, Registry>, startup: String) -> Self {
        Self::with_sleep(
            handle,
            startup,
            Arc::new(|duration| Box::pin(tokio::time::sleep(duration))),
        )
    }

    /// Like [`LogLevel::new`], with overrides expiring after `sleep`.
    fn with_sleep(
        handle: reload::Handle<EnvFilter, Registry>,
        startup: String,
        sleep: Sleep,
    ) -> Self {
        LogLevel {
            inner: Arc::new(Inner {
                handle,
                sleep,
                current: Mutex::new(Current {
                    directives: startup.clone(),
                    expires_at_ms: None,
                    generation: 0,
                    timer: None,
                }),
                startup,
            }),
        }
    }

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
        let expired = (self.inner.sleep)(duration);
        let timer = tokio::spawn(async move {
            expired.await;
            this.expire(generation);
        })
        .abort_handle();
        {
            let mut current = self.current();
            if current.generation == generation {
                if let Some(old) = current.timer.replace(timer) {
                    old.abort();
                }
            } else {
                // Replaced already (a concurrent call): this expiry has nothing to do.
                timer.abort();
            }
        }
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
            // This task is the timer: nothing to abort.
            current.timer = None;
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
        if let Some(timer) = current.timer.take() {
            timer.abort();
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;
    use tracing_subscriber::{EnvFilter, Registry, reload};

    use super::{LogLevel, LogLevelError};

    /// A controller of a filter layer that is not installed (the layer is kept alive), whose
    /// overrides expire on a clock the test moves.
    struct Fixture {
        level: LogLevel,
        clock: watch::Sender<Duration>,
        _layer: reload::Layer<EnvFilter, Registry>,
    }

    impl Fixture {
        fn new() -> Self {
            let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
            let (clock, now) = watch::channel(Duration::ZERO);
            let sleep: super::Sleep = Arc::new(move |duration| {
                // The deadline is taken when the override is set, as a Tokio sleep's is.
                let mut now = now.clone();
                let until = *now.borrow() + duration;
                Box::pin(async move {
                    let _ = now.wait_for(|t| *t >= until).await;
                })
            });
            Self {
                level: LogLevel::with_sleep(handle, "info".into(), sleep),
                clock,
                _layer: layer,
            }
        }

        /// Moves the clock, then lets the expiry tasks that are due run.
        async fn advance(&self, by: Duration) {
            self.clock.send_modify(|t| *t += by);
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }

        fn directives(&self) -> String {
            self.level.state().directives
        }
    }

    #[tokio::test]
    async fn an_override_expires_back_to_the_startup_filter() {
        let f = Fixture::new();
        let state = f.level.set_for("debug", Duration::from_secs(60)).unwrap();
        assert_eq!(state.directives, "debug");
        assert_eq!(state.startup, "info");
        assert!(state.expires_at_ms.is_some());
        f.advance(Duration::from_secs(59)).await;
        assert_eq!(f.directives(), "debug");
        f.advance(Duration::from_secs(1)).await;
        let state = f.level.state();
        assert_eq!(state.directives, "info");
        assert_eq!(state.expires_at_ms, None);
    }

    #[tokio::test]
    async fn a_later_override_outlives_the_earlier_expiry_and_a_reset_ends_it() {
        let f = Fixture::new();
        f.level.set_for("debug", Duration::from_secs(10)).unwrap();
        f.level
            .set_for("warn,unitable_writer=trace", Duration::from_secs(3600))
            .unwrap();
        f.advance(Duration::from_secs(20)).await;
        assert_eq!(f.directives(), "warn,unitable_writer=trace");
        let state = f.level.reset().unwrap();
        assert_eq!(state.directives, "info");
        assert_eq!(state.expires_at_ms, None);
        // A reset override's expiry does nothing later either.
        f.level.set_for("trace", Duration::from_secs(5)).unwrap();
        f.level.reset().unwrap();
        f.level.set_for("debug", Duration::from_secs(100)).unwrap();
        f.advance(Duration::from_secs(50)).await;
        assert_eq!(f.directives(), "debug");
        f.advance(Duration::from_secs(50)).await;
        assert_eq!(f.directives(), "info");
    }

    #[tokio::test]
    async fn bad_directives_and_durations_change_nothing() {
        let f = Fixture::new();
        assert!(matches!(
            f.level.set_for("debug=x=y", Duration::from_secs(60)),
            Err(LogLevelError::InvalidDirectives { .. })
        ));
        assert!(matches!(
            f.level.set_for("debug", Duration::from_millis(999)),
            Err(LogLevelError::InvalidDuration { given_ms: 999 })
        ));
        assert!(matches!(
            f.level.set_for("debug", Duration::from_secs(24 * 3600 + 1)),
            Err(LogLevelError::InvalidDuration { .. })
        ));
        assert_eq!(f.directives(), "info");
    }
}
