//! Turning librdkafka failures into [`ChangelogError`]s.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::super::ChangelogError;
use crate::naming::TopicName;

/// The backend name in errors and logs.
pub(super) const BACKEND: &str = "kafka";

/// A retryable failure: the cluster could not be reached or refused the request for now.
pub(super) fn unavailable(reason: impl Into<String>) -> ChangelogError {
    ChangelogError::Unavailable {
        backend: BACKEND,
        reason: reason.into(),
    }
}

/// Whether `code` says the topic (or its partition) does not exist.
pub(super) fn is_unknown_topic(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// Maps a failed operation on `topic`: a missing topic is [`ChangelogError::TopicNotFound`],
/// anything else is retryable [`ChangelogError::Unavailable`] naming `what` failed.
pub(super) fn on_topic(err: &KafkaError, topic: &TopicName, what: &str) -> ChangelogError {
    if is_unknown_topic(err.rdkafka_error_code()) {
        ChangelogError::TopicNotFound {
            topic: topic.clone(),
        }
    } else {
        unavailable(format!("{what} on `{topic}` failed: {err}"))
    }
}

/// Runs a blocking librdkafka call (metadata, watermarks, offset look-ups, commits) on tokio's
/// blocking pool so it never stalls the async runtime. `limit` is a backstop above the timeout
/// the call itself was given: if the call overruns it, the caller gets an error and the thread
/// finishes on its own.
pub(super) async fn blocking<T, F>(
    what: &str,
    limit: Duration,
    call: F,
) -> Result<T, ChangelogError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let task = tokio::task::spawn_blocking(call);
    match tokio::time::timeout(limit + Duration::from_secs(5), task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(unavailable(format!("{what} failed: {join}"))),
        Err(_) => Err(unavailable(format!(
            "{what} did not finish within {limit:?}"
        ))),
    }
}
