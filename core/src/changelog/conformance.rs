//! The conformance suite every [`Changelog`] backend must pass.
//!
//! Each backend's tests call [`run_all`] with a fresh topic prefix (and, for durable backends,
//! [`durable_across_restart`] with a reopened instance). The suite checks behaviour only through
//! the trait, so the in-memory, local and Kafka backends are held to the same contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ChangeRecord, Changelog, ChangelogError};
use crate::naming::TopicName;
use crate::offsets::{Offset, PartitionId, PartitionOffsets};

/// A record with a recognisable key, value, header and timestamp.
pub fn record(key: &str, value: Option<&str>, timestamp_ms: i64) -> ChangeRecord {
    ChangeRecord {
        key: Some(Bytes::from(key.to_string())),
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: vec![
            ("unitable.op".into(), Bytes::from_static(b"upsert")),
            ("x-trace".into(), Bytes::from(format!("t-{key}"))),
        ],
        timestamp_ms,
    }
}

fn topic(prefix: &str, name: &str) -> TopicName {
    TopicName::new(format!("{prefix}.{name}"))
}

async fn read_all(
    log: &dyn Changelog,
    topic: &TopicName,
    partition: PartitionId,
    from: Offset,
    expected: usize,
) -> Vec<super::StoredRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut next = from;
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "timed out reading {expected} records of {topic}/{partition}, got {}",
            out.len()
        );
        let got = log
            .read(topic, partition, next, 1000, Duration::from_millis(500))
            .await
            .expect("read");
        if let Some(last) = got.last() {
            next = last.offset.next();
        }
        out.extend(got);
    }
    out
}

/// Runs every check of the suite; `prefix` must be unique per run (topics are created under it).
pub async fn run_all(log: Arc<dyn Changelog>, prefix: &str) {
    topic_admin(log.as_ref(), prefix).await;
    append_and_read_in_order(log.as_ref(), prefix).await;
    timestamps_and_watermarks(log.as_ref(), prefix).await;
    tail_wakes_up(log.clone(), prefix).await;
    concurrent_appenders(log.clone(), prefix).await;
    errors_name_what_is_wrong(log.as_ref(), prefix).await;
}

/// Topics are created with their partition count, idempotently, and deleted.
pub async fn topic_admin(log: &dyn Changelog, prefix: &str) {
    let t = topic(prefix, "admin");
    log.create_topic(&t, 3).await.expect("create");
    log.create_topic(&t, 3)
        .await
        .expect("create again with the same count");
    assert_eq!(log.partition_count(&t).await.expect("count"), 3);
    match log.create_topic(&t, 5).await {
        Err(ChangelogError::TopicExists { partitions: 3, .. }) => {}
        other => panic!("re-creating with another count must fail with TopicExists(3): {other:?}"),
    }
    log.delete_topic(&t).await.expect("delete");
    log.delete_topic(&t).await.expect("delete a missing topic");
}

/// Offsets are dense from 0 per partition; reads return records intact and in order.
pub async fn append_and_read_in_order(log: &dyn Changelog, prefix: &str) {
    let t = topic(prefix, "order");
    log.create_topic(&t, 2).await.expect("create");
    let batch1: Vec<_> = (0..5)
        .map(|i| record(&format!("a{i}"), Some(&format!("v{i}")), 1000 + i))
        .collect();
    let r = log
        .append(&t, PartitionId(0), batch1.clone())
        .await
        .expect("append");
    assert_eq!((r.first, r.last), (Offset(0), Offset(4)));
    let tomb = record("a1", None, 2000);
    let r = log
        .append(&t, PartitionId(0), vec![tomb.clone()])
        .await
        .expect("append tombstone");
    assert_eq!((r.first, r.last), (Offset(5), Offset(5)));
    let r = log
        .append(&t, PartitionId(1), vec![record("b0", Some("w"), 3000)])
        .await
        .expect("append p1");
    assert_eq!((r.first, r.last), (Offset(0), Offset(0)));

    let got = read_all(log, &t, PartitionId(0), Offset(0), 6).await;
    let offsets: Vec<i64> = got.iter().map(|r| r.offset.0).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4, 5]);
    for (i, stored) in got.iter().take(5).enumerate() {
        assert_eq!(stored.record, batch1[i], "record {i} changed on the way");
    }
    assert_eq!(got[5].record, tomb);
    let mid = read_all(log, &t, PartitionId(0), Offset(3), 3).await;
    assert_eq!(mid[0].offset, Offset(3));
    assert_eq!(mid[0].record, batch1[3]);
    let p1 = read_all(log, &t, PartitionId(1), Offset(0), 1).await;
    assert_eq!(p1[0].record.value.as_deref(), Some(&b"w"[..]));
    let limited = log
        .read(&t, PartitionId(0), Offset(0), 2, Duration::ZERO)
        .await
        .expect("read");
    assert!(
        !limited.is_empty() && limited.len() <= 2,
        "max_records not honoured: {}",
        limited.len()
    );
}

/// Offset-for-timestamp finds the first record at or after a time; watermarks track appends.
pub async fn timestamps_and_watermarks(log: &dyn Changelog, prefix: &str) {
    let t = topic(prefix, "time");
    log.create_topic(&t, 1).await.expect("create");
    let p = PartitionId(0);
    let w = log.watermarks(&t, p).await.expect("watermarks");
    assert_eq!((w.low, w.high), (Offset(0), Offset(0)));
    let records: Vec<_> = [1_000, 2_000, 3_000, 4_000]
        .iter()
        .enumerate()
        .map(|(i, ts)| record(&format!("k{i}"), Some("v"), *ts))
        .collect();
    log.append(&t, p, records).await.expect("append");
    let w = log.watermarks(&t, p).await.expect("watermarks");
    assert_eq!((w.low, w.high), (Offset(0), Offset(4)));
    for (ts, expected) in [
        (0, Some(0)),
        (1_000, Some(0)),
        (1_500, Some(1)),
        (4_000, Some(3)),
        (4_001, None),
    ] {
        let got = log
            .offset_for_timestamp(&t, p, ts)
            .await
            .expect("offset for time");
        assert_eq!(got, expected.map(Offset), "offset for timestamp {ts}");
    }
    let committed = PartitionOffsets([(p, Offset(2))].into_iter().collect());
    log.publish_committed(&t, &committed)
        .await
        .expect("publish committed");
}

/// A reader waiting at the high watermark is woken by an append, well before its deadline.
pub async fn tail_wakes_up(log: Arc<dyn Changelog>, prefix: &str) {
    let t = topic(prefix, "tail");
    log.create_topic(&t, 1).await.expect("create");
    let p = PartitionId(0);
    let reader = {
        let log = log.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut got = Vec::new();
            while got.is_empty() && start.elapsed() < Duration::from_secs(25) {
                got = log
                    .read(&t, p, Offset(0), 10, Duration::from_secs(20))
                    .await
                    .expect("tail read");
            }
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.append(&t, p, vec![record("x", Some("y"), 1)])
        .await
        .expect("append");
    let (got, waited) = reader.await.expect("reader task");
    assert_eq!(got.len(), 1, "tailer saw nothing");
    assert!(
        waited < Duration::from_secs(10),
        "tailer was not woken by the append (waited {waited:?})"
    );
    // An empty wait at the head returns an empty batch, not an error.
    let none = log
        .read(&t, p, Offset(1), 10, Duration::from_millis(50))
        .await
        .expect("read at head");
    assert!(none.is_empty());
}

/// Concurrent appenders to one partition each get a contiguous range, and nothing is lost.
pub async fn concurrent_appenders(log: Arc<dyn Changelog>, prefix: &str) {
    let t = topic(prefix, "concurrent");
    log.create_topic(&t, 1).await.expect("create");
    let p = PartitionId(0);
    let writers = 8;
    let batches = 10;
    let per_batch = 5;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for b in 0..batches {
                let recs: Vec<_> = (0..per_batch)
                    .map(|i| record(&format!("w{w}-b{b}-{i}"), Some("v"), 1))
                    .collect();
                let r = log.append(&t, p, recs).await.expect("concurrent append");
                assert_eq!(
                    r.last.0 - r.first.0 + 1,
                    per_batch as i64,
                    "a batch must get a contiguous range"
                );
                ranges.push((w, b, r.first));
            }
            ranges
        }));
    }
    let mut ranges = Vec::new();
    for task in tasks {
        ranges.extend(task.await.expect("writer task"));
    }
    let total = writers * batches * per_batch;
    let got = read_all(log.as_ref(), &t, p, Offset(0), total).await;
    assert_eq!(got.len(), total);
    for (w, b, first) in ranges {
        for i in 0..per_batch {
            let stored = &got[(first.0 as usize) + i];
            assert_eq!(
                stored.record.key.as_deref(),
                Some(format!("w{w}-b{b}-{i}").as_bytes()),
                "batch interleaved or lost"
            );
        }
    }
    let w = log.watermarks(&t, p).await.expect("watermarks");
    assert_eq!(w.high, Offset(total as i64));
}

/// Missing topics and partitions and out-of-range offsets are typed errors.
pub async fn errors_name_what_is_wrong(log: &dyn Changelog, prefix: &str) {
    let missing = topic(prefix, "missing");
    let err = log
        .append(&missing, PartitionId(0), vec![record("k", Some("v"), 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChangelogError::TopicNotFound { .. }),
        "append to a missing topic: {err:?}"
    );
    let t = topic(prefix, "errors");
    log.create_topic(&t, 2).await.expect("create");
    let err = log
        .append(&t, PartitionId(2), vec![record("k", Some("v"), 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChangelogError::PartitionNotFound { partitions: 2, .. }),
        "append to partition 2 of 2: {err:?}"
    );
    log.append(&t, PartitionId(0), vec![record("k", Some("v"), 1)])
        .await
        .expect("append");
    let err = log
        .read(&t, PartitionId(0), Offset(5), 10, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChangelogError::OffsetOutOfRange { .. }),
        "read past the end: {err:?}"
    );
    assert!(!err.is_retryable());
}

/// Records appended through `before` are all readable, intact, through `after` (a reopened
/// instance over the same storage). Call `write_for_restart` first, restart, then `check_after_restart`.
pub async fn write_for_restart(log: &dyn Changelog, prefix: &str) -> Vec<ChangeRecord> {
    let t = topic(prefix, "restart");
    log.create_topic(&t, 2).await.expect("create");
    let records: Vec<_> = (0..50)
        .map(|i| {
            record(
                &format!("r{i}"),
                if i % 7 == 0 { None } else { Some("value") },
                10_000 + i,
            )
        })
        .collect();
    log.append(&t, PartitionId(1), records.clone())
        .await
        .expect("append");
    records
}

/// See [`write_for_restart`].
pub async fn check_after_restart(log: &dyn Changelog, prefix: &str, written: &[ChangeRecord]) {
    let t = topic(prefix, "restart");
    assert_eq!(
        log.partition_count(&t)
            .await
            .expect("topic survives restart"),
        2
    );
    let got = read_all(log, &t, PartitionId(1), Offset(0), written.len()).await;
    let records: Vec<_> = got.into_iter().map(|s| s.record).collect();
    assert_eq!(records, written, "records changed across a restart");
    let next = log
        .append(&t, PartitionId(1), vec![record("after", Some("v"), 1)])
        .await
        .expect("append after restart");
    assert_eq!(
        next.first,
        Offset(written.len() as i64),
        "offsets must continue after a restart"
    );
}
