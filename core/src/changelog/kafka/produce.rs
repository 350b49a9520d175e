//! Appends: one idempotent producer, a batch's records enqueued back to back under a
//! per-partition lock, then every delivery report awaited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::{error, warn};

use super::super::{AppendedRange, ChangeRecord, ChangelogError, ChangelogResult};
use super::context::LogContext;
use super::errors::{is_unknown_topic, unavailable};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId};

type Kafka = FutureProducer<LogContext>;

/// Held while one batch of a partition is enqueued.
type BatchLock = Arc<tokio::sync::Mutex<()>>;

/// How long to wait before enqueueing again when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

pub(super) struct Appender {
    config: ClientConfig,
    context: LogContext,
    /// The producer and how many times it was rebuilt after a fatal error.
    producer: RwLock<(u64, Kafka)>,
    /// One lock per partition, held while a batch is enqueued so batches do not interleave.
    order: Mutex<HashMap<(TopicName, u32), BatchLock>>,
    timeout: Duration,
}

/// What went wrong with one append, before it becomes a [`ChangelogError`].
enum Failure {
    /// librdkafka refused or failed a record.
    Kafka(KafkaError),
    /// The producer was dropped with the record undelivered.
    Dropped,
}

impl Appender {
    pub(super) fn new(
        config: ClientConfig,
        context: LogContext,
        timeout: Duration,
    ) -> ChangelogResult<Self> {
        let producer = build(&config, &context)?;
        Ok(Self {
            config,
            context,
            producer: RwLock::new((0, producer)),
            order: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    fn current(&self) -> (u64, Kafka) {
        let guard = self.producer.read().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.clone())
    }

    fn order_lock(&self, topic: &TopicName, partition: PartitionId) -> BatchLock {
        let mut locks = self.order.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry((topic.clone(), partition.0))
            .or_default()
            .clone()
    }

    /// Forgets the partition locks of a deleted topic.
    pub(super) fn forget(&self, topic: &TopicName) {
        let mut locks = self.order.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|(t, _), _| t != topic);
    }

    /// Appends a non-empty batch to a partition known to exist; returns the batch's offsets
    /// once every record is acknowledged by all in-sync replicas.
    pub(super) async fn append(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        records: &[ChangeRecord],
    ) -> ChangelogResult<AppendedRange> {
        let (generation, producer) = self.current();
        let p = partition.0 as i32;
        let deadline = Instant::now() + self.timeout;
        let lock = self.order_lock(topic, partition);
        let mut deliveries = Vec::with_capacity(records.len());
        let mut refused = None;
        {
            // librdkafka keeps a partition's records in enqueue order, and the idempotent
            // producer keeps that order through retries. So a batch enqueued without another
            // batch of this process in between lands in order, and at consecutive offsets
            // unless another process produced into the partition meanwhile.
            let _batch = lock.lock().await;
            'records: for record in records {
                let mut message = to_message(topic.as_str(), p, record);
                loop {
                    match producer.send_result(message) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            continue 'records;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                            if Instant::now() < deadline =>
                        {
                            message = back;
                            tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                        }
                        Err((err, _)) => {
                            refused = Some(err);
                            break 'records;
                        }
                    }
                }
            }
        }
        // Awaited outside the lock, so the next batch is enqueued while this one is in flight.
        // message.timeout.ms bounds every delivery; the timeout here is only a backstop.
        let reports =
            tokio::time::timeout(self.timeout + Duration::from_secs(5), join_all(deliveries))
                .await
                .map_err(|_| {
                    unavailable(format!(
                        "append to `{topic}` partition {partition}: no delivery report within {:?}",
                        self.timeout
                    ))
                })?;
        let mut offsets = Vec::with_capacity(reports.len());
        let mut failure = refused.map(Failure::Kafka);
        for report in reports {
            match report {
                Ok(Ok(delivery)) => offsets.push((delivery.partition, delivery.offset)),
                Ok(Err((err, _))) => {
                    failure.get_or_insert(Failure::Kafka(err));
                }
                Err(_canceled) => {
                    failure.get_or_insert(Failure::Dropped);
                }
            }
        }
        if let Some(failure) = failure {
            self.recover_if_fatal(generation, &producer);
            return Err(self.describe(failure, topic, partition, records.len(), offsets.len()));
        }
        in_order(topic, partition, &offsets)
    }

    fn describe(
        &self,
        failure: Failure,
        topic: &TopicName,
        partition: PartitionId,
        total: usize,
        delivered: usize,
    ) -> ChangelogError {
        let partial = if delivered > 0 {
            format!(" ({delivered} of {total} records were written and will be read back)")
        } else {
            String::new()
        };
        match failure {
            Failure::Kafka(err) if is_unknown_topic(err.rdkafka_error_code()) => {
                ChangelogError::TopicNotFound {
                    topic: topic.clone(),
                }
            }
            Failure::Kafka(err) => unavailable(self.context.explain(
                format!(
                    "append of {total} records to `{topic}` partition {partition} failed: \
                     {err}{partial}"
                ),
                self.timeout,
            )),
            Failure::Dropped => unavailable(format!(
                "append to `{topic}` partition {partition}: the producer shut down{partial}"
            )),
        }
    }

    /// An idempotent producer that hit a fatal error (e.g. the broker lost its sequence state)
    /// refuses every later record: build a fresh one, once per failed generation.
    fn recover_if_fatal(&self, generation: u64, failed: &Kafka) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if slot.0 != generation {
            return;
        }
        error!(
            ?code,
            reason, "the Kafka producer failed fatally; building a new one"
        );
        match build(&self.config, &self.context) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *slot, (generation + 1, fresh));
                drop(slot);
                // Dropping a producer flushes for up to 500 ms: not on the async runtime.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(err) => warn!(%err, "could not build a new Kafka producer; will retry"),
        }
    }
}

/// The producer of `config`.
fn build(config: &ClientConfig, context: &LogContext) -> ChangelogResult<Kafka> {
    Kafka::from_config_and_context(config, context.clone())
        .map_err(|err| unavailable(format!("cannot create the Kafka producer: {err}")))
}

/// One record for librdkafka: explicit partition, CreateTime timestamp, null key or value
/// when absent. librdkafka copies the bytes when it enqueues.
fn to_message<'a>(
    topic: &'a str,
    partition: i32,
    record: &'a ChangeRecord,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut message = FutureRecord::to(topic)
        .partition(partition)
        .timestamp(record.timestamp_ms);
    if let Some(key) = record.key.as_deref() {
        message = message.key(key);
    }
    if let Some(value) = record.value.as_deref() {
        message = message.payload(value);
    }
    if !record.headers.is_empty() {
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_ref()),
                })
            },
        );
        message = message.headers(headers);
    }
    message
}

/// The batch's range: the offsets of its first and last record. Records of other producers
/// (other serve nodes writing the same table) may lie between them: every node accepts writes
/// for every table, so a partition has as many producers as nodes. What must hold is what one
/// idempotent producer guarantees: every record in `partition`, at increasing offsets, in the
/// order sent. Anything else is reported as damage rather than given a false range.
fn in_order(
    topic: &TopicName,
    partition: PartitionId,
    delivered: &[(i32, i64)],
) -> ChangelogResult<AppendedRange> {
    let (Some(&(_, first)), Some(&(_, last))) = (delivered.first(), delivered.last()) else {
        return Err(unavailable(format!(
            "append to `{topic}` partition {partition}: no delivery reports"
        )));
    };
    let wrong_partition = delivered.iter().any(|(p, _)| *p != partition.0 as i32);
    let out_of_order = delivered.windows(2).any(|w| w[1].1 <= w[0].1);
    if wrong_partition || out_of_order {
        return Err(ChangelogError::Corrupt {
            location: format!("{topic}/{partition}"),
            reason: format!(
                "a batch of {} records was delivered {}: {:?}",
                delivered.len(),
                if wrong_partition {
                    "to another partition"
                } else {
                    "out of order"
                },
                delivered
            ),
        });
    }
    Ok(AppendedRange {
        first: Offset(first),
        last: Offset(last),
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use rdkafka::mocking::MockCluster;

    use super::super::KafkaConfig;
    use super::*;
    use crate::changelog::conformance::record;

    #[test]
    fn delivery_order_is_checked() {
        let t = TopicName::new("t");
        let p = PartitionId(2);
        let r = in_order(&t, p, &[(2, 7), (2, 8), (2, 9)]).expect("in order");
        assert_eq!((r.first, r.last), (Offset(7), Offset(9)));
        // Another node's records between ours: the range spans them.
        let r = in_order(&t, p, &[(2, 7), (2, 11), (2, 12)]).expect("interleaved");
        assert_eq!((r.first, r.last), (Offset(7), Offset(12)));
        for bad in [
            &[(2, 7), (2, 7)][..],
            &[(2, 9), (2, 8)],
            &[(2, 7), (1, 8)],
            &[],
        ] {
            assert!(in_order(&t, p, bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            in_order(&t, p, &[(2, 9), (2, 8)]),
            Err(ChangelogError::Corrupt { .. })
        ));
    }

    /// After a fatal producer error (here injected; in life e.g. the broker losing the
    /// producer's sequence state) the append fails retryably and the next one gets a new
    /// producer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_producer_error_is_recovered_from() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("fatal.t", 1, 1).expect("topic");
        let config = KafkaConfig::new(cluster.bootstrap_servers());
        let appender = Appender::new(
            config.producer(),
            LogContext::default(),
            Duration::from_secs(5),
        )
        .expect("appender");
        let t = TopicName::new("fatal.t");
        let p = PartitionId(0);
        let first = appender
            .append(&t, p, &[record("a", Some("v"), 1)])
            .await
            .expect("append");
        assert_eq!(first.first, Offset(0));

        let (_, producer) = appender.current();
        let reason = CString::new("injected by a test").expect("no NUL");
        // SAFETY: the client pointer is live (we hold the producer) and `reason` outlives the
        // call, which copies it.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
        let err = appender
            .append(&t, p, &[record("b", Some("v"), 2)])
            .await
            .expect_err("the producer is dead");
        assert!(err.is_retryable(), "{err:?}");
        let next = appender
            .append(&t, p, &[record("c", Some("v"), 3)])
            .await
            .expect("a new producer takes over");
        assert_eq!(next.first, Offset(1));
        assert_eq!(appender.current().0, 1, "one rebuild");
    }
}
