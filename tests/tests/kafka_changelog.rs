//! `KafkaChangelog` against a real broker: tansu 0.6.0 with SQLite storage, started per test.
//!
//! Runs the changelog conformance suite check by check, except `topic_admin`'s deletion of an
//! existing topic: tansu's DeleteTopics deletes every topic (shared/NOTES.md), so no test here
//! deletes a topic that exists. Deleting a missing one is safe, because `KafkaChangelog` looks
//! the topic up first and sends no DeleteTopics for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use unitable_core::changelog::{
    Changelog, ChangelogError, KafkaChangelog, KafkaConfig, conformance,
};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};
use unitable_tests::Tansu;

async fn start_tansu() -> Result<Tansu> {
    tokio::task::spawn_blocking(Tansu::start)
        .await
        .context("joining the tansu start-up")?
}

fn config(tansu: &Tansu) -> KafkaConfig {
    let mut config = KafkaConfig::new(tansu.bootstrap());
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
            Err(err) => return Err(err).context("connecting to tansu"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite_on_tansu() -> Result<()> {
    let tansu = start_tansu().await?;
    let log: Arc<dyn Changelog> = Arc::new(connect(config(&tansu)).await?);
    let prefix = "conformance";
    topic_admin_without_deleting(log.as_ref(), prefix).await?;
    conformance::append_and_read_in_order(log.as_ref(), prefix).await;
    conformance::timestamps_and_watermarks(log.as_ref(), prefix).await;
    conformance::tail_wakes_up(log.clone(), prefix).await;
    conformance::concurrent_appenders(log.clone(), prefix).await;
    conformance::errors_name_what_is_wrong(log.as_ref(), prefix).await;
    Ok(())
}

/// `conformance::topic_admin` up to (not including) the deletion of an existing topic.
async fn topic_admin_without_deleting(log: &dyn Changelog, prefix: &str) -> Result<()> {
    let t = TopicName::new(format!("{prefix}.admin"));
    log.create_topic(&t, 3).await.context("create")?;
    log.create_topic(&t, 3)
        .await
        .context("create again with the same count")?;
    assert_eq!(log.partition_count(&t).await?, 3);
    match log.create_topic(&t, 5).await {
        Err(ChangelogError::TopicExists { partitions: 3, .. }) => {}
        other => panic!("re-creating with another count must fail with TopicExists(3): {other:?}"),
    }
    let missing = TopicName::new(format!("{prefix}.never-created"));
    log.delete_topic(&missing)
        .await
        .context("deleting a missing topic")?;
    assert!(matches!(
        log.partition_count(&missing).await,
        Err(ChangelogError::TopicNotFound { .. })
    ));
    // The topics of the other checks still exist: nothing was deleted by accident.
    assert_eq!(log.partition_count(&t).await?, 3);
    Ok(())
}

/// Records acknowledged before tansu is killed (SIGKILL) are all there after it restarts on the
/// same storage, read through a new `KafkaChangelog`; offsets continue. The instance that was
/// connected through the crash recovers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_broker_crash() -> Result<()> {
    let mut tansu = start_tansu().await?;
    let config = config(&tansu);
    let before = connect(config.clone()).await?;
    let written = conformance::write_for_restart(&before, "crash").await;

    let tansu = tokio::task::spawn_blocking(move || -> Result<Tansu> {
        tansu.kill()?;
        tansu.restart()?;
        Ok(tansu)
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
    drop(tansu);
    Ok(())
}

/// With the broker gone, an append fails within the request timeout with a retryable error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_retryably_while_the_broker_is_down() -> Result<()> {
    let mut tansu = start_tansu().await?;
    let mut config = config(&tansu);
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
    let mut tansu = tokio::task::spawn_blocking(move || -> Result<Tansu> {
        tansu.kill()?;
        Ok(tansu)
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
    tokio::task::spawn_blocking(move || tansu.restart()).await??;
    Ok(())
}
