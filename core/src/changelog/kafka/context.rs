//! Routes librdkafka's logs and client errors to `tracing`, and remembers the latest client
//! error so that a timed-out operation can say what librdkafka saw (refused connections,
//! failed authentication) instead of only "timed out".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{debug, error, info, warn};

/// The context of every librdkafka client of one [`super::KafkaChangelog`]; clones share the
/// remembered error.
#[derive(Debug, Clone, Default)]
pub(super) struct LogContext {
    last_error: Arc<Mutex<Option<(Instant, String)>>>,
}

impl LogContext {
    /// The latest client error, if it happened within `recent`.
    pub(super) fn recent_error(&self, recent: Duration) -> Option<String> {
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() <= recent)
            .map(|(_, what)| what.clone())
    }

    /// `reason`, followed by the latest client error if it happened within `recent`.
    pub(super) fn explain(&self, reason: String, recent: Duration) -> String {
        match self.recent_error(recent) {
            Some(cause) => format!("{reason} (latest client error: {cause})"),
            None => reason,
        }
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, err: KafkaError, reason: &str) {
        // librdkafka reconnects by itself; an unreachable broker reaches callers through the
        // operations that time out, so here it is only a warning.
        match err.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve,
            ) => warn!(target: "librdkafka", "{err}: {reason}"),
            _ => error!(target: "librdkafka", "{err}: {reason}"),
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), reason.to_string()));
    }
}

impl ConsumerContext for LogContext {}
