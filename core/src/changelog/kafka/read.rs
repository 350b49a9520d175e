//! Reads: a pool of assign-only consumers, each reading one partition from an explicit
//! offset, reused by the next read that continues where the last one stopped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset as KafkaOffset, TopicPartitionList};
use tracing::debug;

use super::super::{ChangeRecord, ChangelogError, ChangelogResult, StoredRecord};
use super::context::LogContext;
use super::errors::{is_unknown_topic, unavailable};
use super::lookup::Lookup;
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId};

/// Idle readers kept per partition (a tailer and a catch-up reader may share one).
const IDLE_PER_PARTITION: usize = 2;

type Consumer_ = StreamConsumer<LogContext>;

/// A consumer assigned to one partition, positioned at `next`.
struct Reader {
    consumer: Consumer_,
    next: i64,
    idle_since: Instant,
}

pub(super) struct Readers {
    config: ClientConfig,
    context: LogContext,
    timeout: Duration,
    /// Idle readers kept in all; each is a librdkafka client with its own threads.
    max_idle: usize,
    idle: Mutex<HashMap<(TopicName, u32), Vec<Reader>>>,
}

/// Why a read stopped before the deadline.
enum Stop {
    /// The broker no longer has (or never had) the offset.
    OutOfRange,
    /// The topic or partition is gone.
    Missing,
    /// A non-recoverable consumer error.
    Failed(KafkaError),
}

impl Readers {
    pub(super) fn new(
        config: ClientConfig,
        context: LogContext,
        timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            config,
            context,
            timeout,
            max_idle,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Reads up to `max_records` from `from`; see [`super::super::Changelog::read`]. The
    /// partition is known to exist.
    pub(super) async fn read(
        &self,
        lookup: &Lookup,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
        max_records: usize,
        wait: Duration,
    ) -> ChangelogResult<Vec<StoredRecord>> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let mut reader = self.take(topic, partition, from);
        // A reader that stopped exactly here continues without a watermark round trip: its
        // position is valid (it is just past a record it read), and it may have the next
        // records prefetched. With nothing ready it waits as a tail read would; only if that
        // brings nothing are the watermarks asked, to tell "at the head" from "slow fetch".
        let mut waited = false;
        if let Some(r) = reader.as_mut().filter(|r| r.next == from.0) {
            let mut ready = r.drain_ready(from.0, max_records, &mut out);
            if ready.is_ok() && out.is_empty() && !wait.is_zero() {
                ready = r
                    .wait_for_records(from.0, max_records, wait, &mut out)
                    .await;
                waited = true;
            }
            if let Err(stop) = ready {
                if let Some(r) = reader.take() {
                    drop_quietly(r);
                }
                return Err(self.stopped(stop, lookup, topic, partition, from).await);
            }
        }
        if out.is_empty() {
            let marks = lookup.watermarks(topic, partition).await?;
            if from < marks.low || from > marks.high {
                self.give_back(topic, partition, reader);
                return Err(ChangelogError::OffsetOutOfRange {
                    topic: topic.clone(),
                    partition,
                    offset: from,
                    low: marks.low,
                    high: marks.high,
                });
            }
            // Below the high watermark records are there to fetch; at it, long-poll (unless
            // that was done above).
            let patience = if from < marks.high {
                self.timeout
            } else if waited {
                Duration::ZERO
            } else {
                wait
            };
            if patience.is_zero() {
                self.give_back(topic, partition, reader);
                return Ok(out);
            }
            let mut r = match reader {
                Some(mut r) => {
                    if r.next != from.0 {
                        r.seek(topic, partition, from)?;
                    }
                    r
                }
                None => self.create(topic, partition, from)?,
            };
            match r
                .wait_for_records(from.0, max_records, patience, &mut out)
                .await
            {
                Ok(()) => reader = Some(r),
                Err(stop) => {
                    drop_quietly(r);
                    return Err(self.stopped(stop, lookup, topic, partition, from).await);
                }
            }
        }
        if let (Some(r), Some(last)) = (reader.as_mut(), out.last()) {
            r.next = last.offset.0 + 1;
        }
        self.give_back(topic, partition, reader);
        Ok(out)
    }

    /// The error for a read that stopped.
    async fn stopped(
        &self,
        stop: Stop,
        lookup: &Lookup,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
    ) -> ChangelogError {
        match stop {
            Stop::OutOfRange => match lookup.watermarks(topic, partition).await {
                Ok(marks) => ChangelogError::OffsetOutOfRange {
                    topic: topic.clone(),
                    partition,
                    offset: from,
                    low: marks.low,
                    high: marks.high,
                },
                Err(err) => err,
            },
            Stop::Missing => {
                lookup.forget(topic);
                self.forget(topic);
                ChangelogError::TopicNotFound {
                    topic: topic.clone(),
                }
            }
            Stop::Failed(err) => unavailable(format!(
                "reading `{topic}` partition {partition} from offset {from} failed: {err}"
            )),
        }
    }

    /// An idle reader of the partition, preferably one positioned at `from`.
    fn take(&self, topic: &TopicName, partition: PartitionId, from: Offset) -> Option<Reader> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic.clone(), partition.0);
        let readers = idle.get_mut(&key)?;
        let index = readers
            .iter()
            .position(|r| r.next == from.0)
            .unwrap_or(readers.len() - 1);
        let reader = readers.swap_remove(index);
        if readers.is_empty() {
            idle.remove(&key);
        }
        Some(reader)
    }

    /// Returns a reader to the pool, evicting the longest-idle ones beyond the limits.
    fn give_back(&self, topic: &TopicName, partition: PartitionId, reader: Option<Reader>) {
        let Some(mut reader) = reader else {
            return;
        };
        reader.idle_since = Instant::now();
        let mut evicted = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let readers = idle.entry((topic.clone(), partition.0)).or_default();
            readers.push(reader);
            if readers.len() > IDLE_PER_PARTITION {
                evicted.push(readers.remove(0));
            }
            while idle.values().map(Vec::len).sum::<usize>() > self.max_idle {
                let oldest = idle
                    .iter()
                    .filter_map(|(key, rs)| rs.first().map(|r| (r.idle_since, key.clone())))
                    .min_by_key(|(since, _)| *since)
                    .map(|(_, key)| key);
                let Some(key) = oldest else { break };
                if let Some(readers) = idle.get_mut(&key) {
                    evicted.push(readers.remove(0));
                    if readers.is_empty() {
                        idle.remove(&key);
                    }
                }
            }
        }
        evicted.into_iter().for_each(drop_quietly);
    }

    /// Closes the idle readers of a deleted topic.
    pub(super) fn forget(&self, topic: &TopicName) {
        let mut evicted = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|(t, _), readers| {
                if t == topic {
                    evicted.append(readers);
                    false
                } else {
                    true
                }
            });
        }
        evicted.into_iter().for_each(drop_quietly);
    }

    /// A new reader assigned to the partition at `from`.
    fn create(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
    ) -> ChangelogResult<Reader> {
        let consumer = Consumer_::from_config_and_context(&self.config, self.context.clone())
            .map_err(|err| unavailable(format!("cannot create a Kafka consumer: {err}")))?;
        let mut reader = Reader {
            consumer,
            next: from.0,
            idle_since: Instant::now(),
        };
        reader.seek(topic, partition, from)?;
        Ok(reader)
    }
}

impl Reader {
    /// (Re)assigns the partition at `from`. librdkafka discards what it prefetched for the old
    /// position; anything stale that still arrives is skipped by offset.
    fn seek(
        &mut self,
        topic: &TopicName,
        partition: PartitionId,
        from: Offset,
    ) -> ChangelogResult<()> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                topic.as_str(),
                partition.0 as i32,
                KafkaOffset::Offset(from.0),
            )
            .and_then(|()| self.consumer.assign(&assignment))
            .map_err(|err| {
                unavailable(format!(
                    "cannot assign `{topic}` partition {partition} at offset {from}: {err}"
                ))
            })?;
        self.next = from.0;
        Ok(())
    }

    /// Takes what the consumer has ready, without waiting.
    fn drain_ready(
        &mut self,
        from: i64,
        max: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<(), Stop> {
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                None => break,
                Some(message) => take(message, from, out)?,
            }
        }
        Ok(())
    }

    /// Waits up to `patience` for the first record, then takes what else is ready.
    async fn wait_for_records(
        &mut self,
        from: i64,
        max: usize,
        patience: Duration,
        out: &mut Vec<StoredRecord>,
    ) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + patience;
        while out.is_empty() {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => return Ok(()),
                Ok(message) => take(message, from, out)?,
            }
        }
        self.drain_ready(from, max, out)
    }
}

/// Adds a received message to `out`, or says why reading must stop. Transient consumer errors
/// (a broker reconnecting) are logged and waited out.
fn take(
    message: Result<BorrowedMessage<'_>, KafkaError>,
    from: i64,
    out: &mut Vec<StoredRecord>,
) -> Result<(), Stop> {
    match message {
        Ok(message) => {
            // Skip what was prefetched for an earlier position, and anything already taken.
            let floor = out.last().map_or(from, |r| r.offset.0 + 1);
            if message.offset() >= floor {
                out.push(stored(&message));
            }
            Ok(())
        }
        Err(err) => match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                Err(Stop::OutOfRange)
            }
            code if is_unknown_topic(code) => Err(Stop::Missing),
            _ if matches!(err, KafkaError::MessageConsumptionFatal(_)) => Err(Stop::Failed(err)),
            _ => {
                debug!(%err, "transient consumer error while reading");
                Ok(())
            }
        },
    }
}

/// A Kafka message as a changelog record. A header with a null value reads as empty bytes;
/// a record without a timestamp reads as -1.
fn stored(message: &BorrowedMessage<'_>) -> StoredRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    StoredRecord {
        offset: Offset(message.offset()),
        record: ChangeRecord {
            key: message.key().map(Bytes::copy_from_slice),
            value: message.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp_ms: message.timestamp().to_millis().unwrap_or(-1),
        },
    }
}

/// Closing a consumer waits for librdkafka's threads: not on the async runtime.
fn drop_quietly(reader: Reader) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(reader));
        }
        Err(_) => drop(reader),
    }
}
