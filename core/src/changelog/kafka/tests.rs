//! Tests on librdkafka's in-process mock cluster (`rdkafka::mocking::MockCluster`).
//!
//! The mock has no CreateTopics, DeleteTopics or offsets-for-times, so topics are created
//! through its own API before the conformance checks run, and of the suite only the checks
//! that need none of those run here: `topic_admin` (deletes topics) and
//! `timestamps_and_watermarks` (offsets for times) are replaced by the mock-specific tests
//! below; both run in full against Apache Kafka in `tests/tests/kafka_changelog.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::*;
use crate::changelog::conformance::{self, record};

type Mock = MockCluster<'static, DefaultProducerContext>;

fn mock(brokers: i32) -> Mock {
    MockCluster::new(brokers).expect("mock cluster")
}

fn config(cluster: &Mock) -> KafkaConfig {
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.request_timeout = Duration::from_secs(5);
    // The mock has no CreateTopics: topics are made beforehand, with one replica (below).
    config.replication_factor = Some(1);
    config
}

async fn connect(cluster: &Mock) -> KafkaChangelog {
    KafkaChangelog::connect(config(cluster))
        .await
        .expect("connect to the mock cluster")
}

fn create(cluster: &Mock, topic: &str, partitions: i32) {
    cluster
        .create_topic(topic, partitions, 1)
        .expect("create a topic in the mock cluster");
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_checks_the_mock_supports() {
    let cluster = mock(3);
    for (name, partitions) in [
        ("mock.order", 2),
        ("mock.tail", 1),
        ("mock.concurrent", 1),
        ("mock.errors", 2),
    ] {
        create(&cluster, name, partitions);
    }
    let log: Arc<dyn Changelog> = Arc::new(connect(&cluster).await);
    conformance::append_and_read_in_order(log.as_ref(), "mock").await;
    conformance::tail_wakes_up(log.clone(), "mock").await;
    conformance::concurrent_appenders(log.clone(), "mock").await;
    conformance::errors_name_what_is_wrong(log.as_ref(), "mock").await;
}

/// `topic_admin` as far as the mock goes: it has topics but no admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_without_the_admin_api() {
    let cluster = mock(1);
    create(&cluster, "admin.made", 3);
    let mut config = config(&cluster);
    // Creating a topic waits this long for a broker that offers CreateTopics.
    config.request_timeout = Duration::from_secs(2);
    let log = KafkaChangelog::connect(config).await.expect("connect");
    let t = topic("admin.made");
    log.create_topic(&t, 3)
        .await
        .expect("an existing topic with the same count");
    assert_eq!(log.partition_count(&t).await.expect("count"), 3);
    match log.create_topic(&t, 5).await {
        Err(ChangelogError::TopicExists { partitions: 3, .. }) => {}
        other => panic!("another count must fail with TopicExists(3): {other:?}"),
    }
    log.delete_topic(&topic("admin.never-made"))
        .await
        .expect("deleting a missing topic succeeds without the admin API");
    let started = Instant::now();
    let err = log
        .create_topic(&topic("admin.new"), 2)
        .await
        .expect_err("the mock cannot create topics");
    assert!(
        matches!(&err, ChangelogError::Unavailable { reason, .. } if reason.contains("CreateTopics")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        log.partition_count(&topic("admin.new")).await,
        Err(ChangelogError::TopicNotFound { .. })
    ));
    let err = log
        .delete_topic(&t)
        .await
        .expect_err("the mock cannot delete topics");
    assert!(
        matches!(&err, ChangelogError::Unavailable { reason, .. } if reason.contains("DeleteTopics")),
        "{err:?}"
    );
    assert_eq!(log.partition_count(&t).await.expect("still there"), 3);
}

/// `timestamps_and_watermarks` without offsets-for-times (the mock always answers -1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_timestamps_and_committed_offsets() {
    let cluster = mock(1);
    create(&cluster, "time.t", 1);
    let log = connect(&cluster).await;
    let t = topic("time.t");
    let p = PartitionId(0);
    let w = log.watermarks(&t, p).await.expect("watermarks");
    assert_eq!((w.low, w.high), (Offset(0), Offset(0)));
    let empty = log.append(&t, p, Vec::new()).await.expect("empty append");
    assert_eq!((empty.first, empty.last), (Offset(0), Offset(0)));
    let records: Vec<_> = [1_000, 2_000, 3_000, 4_000]
        .iter()
        .enumerate()
        .map(|(i, ts)| record(&format!("k{i}"), Some("v"), *ts))
        .collect();
    let r = log.append(&t, p, records.clone()).await.expect("append");
    assert_eq!((r.first, r.last), (Offset(0), Offset(3)));
    let w = log.watermarks(&t, p).await.expect("watermarks");
    assert_eq!((w.low, w.high), (Offset(0), Offset(4)));
    // Record timestamps survive the round trip (CreateTime).
    let got = log
        .read(&t, p, Offset(0), 10, Duration::ZERO)
        .await
        .expect("read");
    let times: Vec<i64> = got.iter().map(|s| s.record.timestamp_ms).collect();
    assert_eq!(times[..], [1_000, 2_000, 3_000, 4_000][..got.len()]);
    // The mock lacks offsets-for-times: it answers "none" for every time.
    assert_eq!(
        log.offset_for_timestamp(&t, p, 0).await.expect("lookup"),
        None
    );
    assert!(matches!(
        log.offset_for_timestamp(&t, PartitionId(1), 0).await,
        Err(ChangelogError::PartitionNotFound { partitions: 1, .. })
    ));

    let mut committed = PartitionOffsets::default();
    committed.set(p, Offset(3));
    log.publish_committed(&t, &committed)
        .await
        .expect("publish");
    committed.set(p, Offset(2));
    log.publish_committed(&t, &committed)
        .await
        .expect("publish an older one");
    assert_eq!(log.committed_offsets(&t).map(|o| o.get(p)), Some(Offset(3)));
    // Mirrored into the committer group, where Kafka tools look for lag.
    let group = config::committer_group("time.t");
    let offsets = {
        let bootstrap = cluster.bootstrap_servers();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .create()
                .expect("consumer");
            let mut list = rdkafka::TopicPartitionList::new();
            list.add_partition("time.t", 0);
            consumer
                .committed_offsets(list, Duration::from_secs(5))
                .expect("committed offsets")
        })
        .await
        .expect("join")
    };
    let element = offsets.find_partition("time.t", 0).expect("partition 0");
    assert_eq!(element.offset(), rdkafka::Offset::Offset(3));
    assert!(matches!(
        log.publish_committed(&topic("time.missing"), &committed)
            .await,
        Err(ChangelogError::TopicNotFound { .. })
    ));
}

/// A read continuing where the last stopped reuses its reader; jumping around re-seeks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_continue_and_seek() {
    let cluster = mock(1);
    create(&cluster, "seek.t", 1);
    let log = connect(&cluster).await;
    let t = topic("seek.t");
    let p = PartitionId(0);
    let records: Vec<_> = (0..100)
        .map(|i| record(&format!("k{i}"), Some("v"), 1_000 + i))
        .collect();
    log.append(&t, p, records.clone()).await.expect("append");
    let mut next = Offset(0);
    let mut seen = 0;
    while seen < 100 {
        let got = log
            .read(&t, p, next, 7, Duration::from_millis(100))
            .await
            .expect("read");
        assert!(!got.is_empty() && got.len() <= 7);
        for stored in &got {
            assert_eq!(stored.offset, Offset(seen));
            assert_eq!(stored.record, records[seen as usize]);
            seen += 1;
        }
        next = got.last().map_or(next, |s| s.offset.next());
    }
    for from in [42, 3, 99, 0] {
        let got = log
            .read(&t, p, Offset(from), 1, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(got[0].offset, Offset(from));
        assert_eq!(got[0].record, records[from as usize]);
    }
    let at_head = log
        .read(&t, p, Offset(100), 10, Duration::ZERO)
        .await
        .expect("read at the head");
    assert!(at_head.is_empty());
    match log.read(&t, p, Offset(101), 10, Duration::ZERO).await {
        Err(ChangelogError::OffsetOutOfRange {
            low: Offset(0),
            high: Offset(100),
            ..
        }) => {}
        other => panic!("past the head: {other:?}"),
    }
    assert!(matches!(
        log.read(&t, p, Offset(-1), 10, Duration::ZERO).await,
        Err(ChangelogError::OffsetOutOfRange { .. })
    ));
}

/// Keys and values may be null; headers may be absent or repeat a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_keys_values_and_headers_round_trip() {
    let cluster = mock(1);
    create(&cluster, "shapes.t", 1);
    let log = connect(&cluster).await;
    let t = topic("shapes.t");
    let records = vec![
        ChangeRecord {
            key: None,
            value: Some(bytes::Bytes::from_static(b"append-only")),
            headers: Vec::new(),
            timestamp_ms: 5,
        },
        ChangeRecord {
            key: Some(bytes::Bytes::from_static(b"k")),
            value: None,
            headers: vec![
                ("a".into(), bytes::Bytes::from_static(b"1")),
                ("a".into(), bytes::Bytes::new()),
            ],
            timestamp_ms: 6,
        },
        ChangeRecord {
            key: Some(bytes::Bytes::new()),
            value: Some(bytes::Bytes::new()),
            headers: Vec::new(),
            timestamp_ms: 7,
        },
    ];
    log.append(&t, PartitionId(0), records.clone())
        .await
        .expect("append");
    let got = log
        .read(&t, PartitionId(0), Offset(0), 10, Duration::from_secs(1))
        .await
        .expect("read");
    let back: Vec<_> = got.into_iter().map(|s| s.record).collect();
    // Kafka does not tell an empty key or value from a null one in every path; check what
    // unitable relies on: null stays null, bytes stay bytes.
    assert_eq!(back[0], records[0]);
    assert_eq!(back[1], records[1]);
    assert_eq!(back[2].timestamp_ms, 7);
}

/// With the broker down, an append fails within the request timeout with a retryable error,
/// and succeeds again once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_fails_appends_within_the_deadline() {
    let cluster = mock(1);
    create(&cluster, "down.t", 1);
    let mut config = config(&cluster);
    config.request_timeout = Duration::from_secs(2);
    let log = KafkaChangelog::connect(config).await.expect("connect");
    let t = topic("down.t");
    let p = PartitionId(0);
    log.append(&t, p, vec![record("a", Some("v"), 1)])
        .await
        .expect("append while up");

    cluster.broker_down(1).expect("broker down");
    let started = Instant::now();
    let err = log
        .append(&t, p, vec![record("b", Some("v"), 2)])
        .await
        .expect_err("append while the broker is down");
    let took = started.elapsed();
    assert!(
        matches!(err, ChangelogError::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let started = Instant::now();
    let err = log
        .read(&t, p, Offset(0), 10, Duration::ZERO)
        .await
        .expect_err("read while the broker is down");
    assert!(err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    cluster.broker_up(1).expect("broker up");
    let deadline = Instant::now() + Duration::from_secs(30);
    let range = loop {
        match log.append(&t, p, vec![record("c", Some("v"), 3)]).await {
            Ok(range) => break range,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("append after the broker came back: {err:?}"),
        }
    };
    // The timed-out record may or may not have been written; the next one follows the log.
    // (Each client reconnects on its own backoff, so reads may need a moment longer.)
    let high = loop {
        match log.watermarks(&t, p).await {
            Ok(w) => break w.high,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {}
            Err(err) => panic!("watermarks after the broker came back: {err:?}"),
        }
    };
    assert_eq!(range.last.next(), high);
    let got = loop {
        match log.read(&t, p, Offset(0), 10, Duration::from_secs(1)).await {
            Ok(got) if !got.is_empty() => break got,
            Ok(_) => {}
            Err(err) if err.is_retryable() && Instant::now() < deadline => {}
            Err(err) => panic!("read after the broker came back: {err:?}"),
        }
    };
    assert_eq!(got[0].record, record("a", Some("v"), 1));
}

/// Request errors injected by the mock: retried by librdkafka within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_produce_errors_are_retried() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = mock(1);
    create(&cluster, "retry.t", 1);
    let log = connect(&cluster).await;
    let t = topic("retry.t");
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let batch: Vec<_> = (0..10)
        .map(|i| record(&format!("k{i}"), Some("v"), 1 + i))
        .collect();
    let r = log.append(&t, PartitionId(0), batch).await.expect("append");
    assert_eq!(r.last.0 - r.first.0, 9);
    let high = log
        .watermarks(&t, PartitionId(0))
        .await
        .expect("watermarks")
        .high;
    assert_eq!(high, r.last.next(), "a retry must not duplicate records");
}

#[tokio::test]
async fn connect_to_a_dead_address_fails_fast() {
    let started = Instant::now();
    let err = KafkaChangelog::connect(KafkaConfig::new("127.0.0.1:1"))
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    match &err {
        ChangelogError::Unavailable { backend, reason } => {
            assert_eq!(*backend, "kafka");
            assert!(reason.contains("127.0.0.1:1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
}

/// A listener that accepts connections but never answers: connect gives up at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_silent_broker_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let mut config = KafkaConfig::new(address.to_string());
    config.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = KafkaChangelog::connect(config)
        .await
        .expect_err("a silent broker");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, ChangelogError::Unavailable { reason, .. } if reason.contains("metadata")),
        "{err:?}"
    );
    drop(listener);
}

#[test]
fn config_debug_hides_secrets() {
    let config = KafkaConfig::new("b:9092")
        .with_option("sasl.username", "alice")
        .with_option("sasl.password", "hunter2");
    let shown = format!("{config:?}");
    assert!(
        shown.contains("alice") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[test]
fn guarantees_cannot_be_configured_away() {
    let config = KafkaConfig::new("b:9092")
        .with_option("acks", "1")
        .with_option("enable.idempotence", "false")
        .with_option("enable.auto.commit", "true")
        .with_option("linger.ms", "50");
    let producer = config.producer();
    assert_eq!(producer.get("acks"), Some("all"));
    assert_eq!(producer.get("enable.idempotence"), Some("true"));
    assert_eq!(
        producer.get("linger.ms"),
        Some("50"),
        "tuning may be overridden"
    );
    assert_eq!(producer.get("allow.auto.create.topics"), Some("false"));
    let reader = config.reader();
    assert_eq!(reader.get("enable.auto.commit"), Some("false"));
    assert_eq!(reader.get("auto.offset.reset"), Some("error"));
}
