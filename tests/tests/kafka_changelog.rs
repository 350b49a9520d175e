//! `KafkaChangelog` against real Apache Kafka (4.4, KRaft), started per test: the changelog
//! conformance suite, topic settings (replication, `min.insync.replicas`, cleanup policy) and
//! how existing topics with other settings are reported, crashes of a single broker, and a
//! three-node cluster losing the leader of the partitions it is written to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use unitable_core::changelog::{
    Changelog, ChangelogError, KafkaChangelog, KafkaConfig, TopicInfo, TopicSettings, conformance,
};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};
use unitable_tests::Kafka;

async fn start_kafka(nodes: usize) -> Result<Kafka> {
    tokio::task::spawn_blocking(move || Kafka::cluster(nodes))
        .await
        .context("joining the Kafka start-up")?
}

fn config(kafka: &Kafka) -> KafkaConfig {
    let mut config = KafkaConfig::new(kafka.bootstrap());
    config.request_timeout = Duration::from_secs(10);
    config
}

/// Connects, retrying while the broker finishes starting.
async fn connect(config: KafkaConfig) -> Result<KafkaChangelog> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match KafkaChangelog::connect(config.clone()).await {
            Ok(log) => return Ok(log),
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err).context("connecting to Kafka"),
        }
    }
}

/// `describe_topic` once the brokers describe the topic's settings (they learn them a moment
/// after the topic is created).
async fn described(
    log: &KafkaChangelog,
    t: &TopicName,
    settings: &TopicSettings,
) -> Result<TopicInfo> {
    let mut info = None;
    for _ in 0..50 {
        info = log.describe_topic(t, settings).await?;
        if info.as_ref().is_some_and(|i| !i.configs.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    info.context("the topic exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite_on_kafka() -> Result<()> {
    let kafka = start_kafka(1).await?;
    let log: Arc<dyn Changelog> = Arc::new(connect(config(&kafka)).await?);
    conformance::run_all(log, "conformance").await;
    Ok(())
}

/// Topics are created with the table's settings over the server's, defaults filled in
/// (replication min(3, brokers), `min.insync.replicas`), shown by `describe_topic`; an existing
/// topic with other settings is refused, naming each difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_get_their_settings_and_misconfigured_ones_are_reported() -> Result<()> {
    let kafka = start_kafka(1).await?;
    let mut server = config(&kafka);
    server.topic_config = vec![("retention.ms".into(), "86400000".into())];
    let log = connect(server).await?;
    let keyed = TopicSettings {
        replication_factor: None,
        configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
    };
    let t = TopicName::new("settings.keyed");
    log.create_topic_with(&t, 2, &keyed).await?;
    let info = described(&log, &t, &keyed).await?;
    assert_eq!(info.partitions, 2);
    assert_eq!(info.replication_factor, Some(1), "min(3, 1 broker)");
    assert_eq!(info.configs["cleanup.policy"], "compact");
    assert_eq!(info.configs["min.insync.replicas"], "1");
    assert_eq!(
        info.configs["retention.ms"], "86400000",
        "the server's setting"
    );
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    // Creating it again with the same settings is fine.
    log.create_topic_with(&t, 2, &keyed).await?;

    // A topic made outside unitable with other settings: refused, each difference named.
    let other = TopicName::new("settings.foreign");
    log.create_topic_with(
        &other,
        2,
        &TopicSettings {
            replication_factor: None,
            configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
        },
    )
    .await?;
    let wanted = TopicSettings {
        replication_factor: Some(1),
        configs: BTreeMap::from([
            ("cleanup.policy".into(), "compact".into()),
            ("retention.ms".into(), "3600000".into()),
        ]),
    };
    described(&log, &other, &wanted).await?;
    match log.create_topic_with(&other, 2, &wanted).await {
        Err(ChangelogError::TopicMisconfigured { problems, .. }) => {
            assert!(
                problems.contains("cleanup.policy=delete instead of cleanup.policy=compact"),
                "{problems}"
            );
            assert!(
                problems.contains("retention.ms=86400000 instead of retention.ms=3600000"),
                "{problems}"
            );
        }
        other => panic!("a topic with other settings must be refused: {other:?}"),
    }
    let info = described(&log, &other, &wanted).await?;
    assert_eq!(info.problems.len(), 2, "{:?}", info.problems);

    // More replicas than brokers: a clear error naming the cure.
    let err = log
        .create_topic_with(
            &TopicName::new("settings.too-many"),
            1,
            &TopicSettings {
                replication_factor: Some(3),
                configs: BTreeMap::new(),
            },
        )
        .await
        .expect_err("3 replicas on 1 broker");
    assert!(err.to_string().contains("replication-factor"), "{err}");
    Ok(())
}

/// Records acknowledged before the broker is killed (SIGKILL) are all there after it restarts
/// on the same storage, read through a new `KafkaChangelog`; offsets continue. The instance that was
/// connected through the crash recovers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_broker_crash() -> Result<()> {
    let mut kafka = start_kafka(1).await?;
    let config = config(&kafka);
    let before = connect(config.clone()).await?;
    let written = conformance::write_for_restart(&before, "crash").await;

    let kafka = tokio::task::spawn_blocking(move || -> Result<Kafka> {
        kafka.kill(0)?;
        kafka.restart(0)?;
        Ok(kafka)
    })
    .await??;

    let after = connect(config).await?;
    conformance::check_after_restart(&after, "crash", &written).await;

    // The old instance reconnects on its own and appends after what the new one wrote.
    let t = TopicName::new("crash.restart");
    let p = PartitionId(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let range = loop {
        match before
            .append(&t, p, vec![conformance::record("old", Some("v"), 2)])
            .await
        {
            Ok(range) => break range,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err).context("append through the pre-crash instance"),
        }
    };
    assert!(range.first >= Offset(written.len() as i64 + 1), "{range:?}");
    let high = after.watermarks(&t, p).await?.high;
    assert_eq!(range.last.next(), high);
    drop(kafka);
    Ok(())
}

/// With the broker gone, an append fails within the request timeout with a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_retryably_while_the_broker_is_down() -> Result<()> {
    let mut kafka = start_kafka(1).await?;
    let mut config = config(&kafka);
    config.request_timeout = Duration::from_secs(3);
    let log = connect(config).await?;
    let t = TopicName::new("down.t");
    log.create_topic(&t, 1).await?;
    log.append(
        &t,
        PartitionId(0),
        vec![conformance::record("a", Some("v"), 1)],
    )
    .await?;
    let mut kafka = tokio::task::spawn_blocking(move || -> Result<Kafka> {
        kafka.kill(0)?;
        Ok(kafka)
    })
    .await??;
    let started = Instant::now();
    let err = log
        .append(
            &t,
            PartitionId(0),
            vec![conformance::record("b", Some("v"), 2)],
        )
        .await
        .expect_err("append with the broker down");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    tokio::task::spawn_blocking(move || kafka.restart(0)).await??;
    Ok(())
}

/// Three brokers, topics with three replicas and `min.insync.replicas=2` by default: while
/// appends run, the broker leading partition 0 is killed and later restarted. Appends fail
/// only retryably meanwhile, and every acknowledged record is read back exactly once, in
/// order, at the offsets its append returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow: starts a three-broker cluster and kills its partition leader"]
async fn acknowledged_appends_survive_losing_the_partition_leader() -> Result<()> {
    let mut kafka = start_kafka(3).await?;
    let log = Arc::new(connect(config(&kafka)).await?);
    let t = TopicName::new("failover.t");
    log.create_topic_with(&t, 2, &TopicSettings::default())
        .await?;
    let info = described(&log, &t, &TopicSettings::default()).await?;
    assert_eq!(info.replication_factor, Some(3));
    assert_eq!(info.configs["min.insync.replicas"], "2");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (log, t, stop) = (log.clone(), t.clone(), stop.clone());
        async move {
            let mut acked: Vec<(PartitionId, Offset, String)> = Vec::new();
            let mut failures = 0u32;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let p = PartitionId((i % 2) as u32);
                let value = format!("v{i}");
                match log
                    .append(
                        &t,
                        p,
                        vec![conformance::record(
                            &format!("k{i}"),
                            Some(&value),
                            1_700_000_000_000 + i as i64,
                        )],
                    )
                    .await
                {
                    Ok(range) => acked.push((p, range.first, value)),
                    Err(err) => {
                        assert!(err.is_retryable(), "only retryable errors: {err:?}");
                        failures += 1;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failures)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill every broker in turn (one down at a time): whichever led a partition, it lost it.
    for node in 0..3 {
        kafka = tokio::task::spawn_blocking(move || -> Result<Kafka> {
            kafka.kill(node)?;
            std::thread::sleep(Duration::from_secs(3));
            kafka.restart(node)?;
            Ok(kafka)
        })
        .await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, failures) = writer.await?;
    assert!(acked.len() > 100, "{} appends acknowledged", acked.len());
    eprintln!(
        "{} appends acknowledged, {failures} failed retryably",
        acked.len()
    );

    // After the restarts the client's metadata may still name an old leader for a moment:
    // such errors are retryable, and retried here as the committer and readers do.
    async fn retry<T, F: std::future::Future<Output = Result<T, ChangelogError>>>(
        mut call: impl FnMut() -> F,
    ) -> Result<T> {
        for _ in 0..60 {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(call().await?)
    }
    for p in [PartitionId(0), PartitionId(1)] {
        let high = retry(|| log.watermarks(&t, p)).await?.high;
        let mut stored = BTreeMap::new();
        let mut from = Offset(0);
        while from < high {
            let batch = retry(|| log.read(&t, p, from, 10_000, Duration::from_secs(1))).await?;
            for r in &batch {
                stored.insert(r.offset, r.record.value.clone());
            }
            from = batch.last().map_or(high, |r| r.offset.next());
        }
        let mut seen = std::collections::HashSet::new();
        for value in stored.values().flatten() {
            assert!(seen.insert(value.clone()), "{value:?} stored twice in {p}");
        }
        for (_, offset, value) in acked.iter().filter(|(q, _, _)| *q == p) {
            let got = stored.get(offset).cloned().flatten();
            assert_eq!(
                got.as_deref(),
                Some(value.as_bytes()),
                "acknowledged {value} at {p}:{offset}"
            );
        }
    }
    Ok(())
}
