use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::changelog::conformance;
use crate::clock::ManualClock;

fn rec(i: usize, ts: i64) -> ChangeRecord {
    ChangeRecord {
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(vec![b'v'; 100])),
        headers: vec![("unitable.op".into(), Bytes::from_static(b"upsert"))],
        timestamp_ms: ts,
    }
}

#[tokio::test]
async fn passes_the_conformance_suite_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        LocalChangelog::open(LocalConfig::new(dir.path()))
            .await
            .unwrap(),
    );
    conformance::run_all(log.clone(), "local").await;
    let written = conformance::write_for_restart(log.as_ref(), "local").await;
    drop(log);
    let log = LocalChangelog::open(LocalConfig::new(dir.path()))
        .await
        .unwrap();
    conformance::check_after_restart(&log, "local", &written).await;
}

#[tokio::test]
async fn segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path());
    config.segment_bytes = 2_000;
    let log = LocalChangelog::open(config.clone()).await.unwrap();
    let t = TopicName::new("unitable.a.roll");
    log.create_topic(&t, 1).await.unwrap();
    for i in 0..100 {
        log.append(&t, PartitionId(0), vec![rec(i, i as i64)])
            .await
            .unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("unitable.a.roll/0"))
        .unwrap()
        .count();
    assert!(segments > 3, "expected several segments, got {segments}");
    drop(log);
    let log = LocalChangelog::open(config).await.unwrap();
    let got = log
        .read(&t, PartitionId(0), Offset(0), 1000, Duration::ZERO)
        .await
        .unwrap();
    // A read stops at a segment end; keep reading until everything is seen.
    let mut all = got;
    while all.len() < 100 {
        let next = Offset(all.last().unwrap().offset.0 + 1);
        all.extend(
            log.read(&t, PartitionId(0), next, 1000, Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, Offset(i as i64));
        assert_eq!(r.record, rec(i, i as i64));
    }
    assert_eq!(
        log.offset_for_timestamp(&t, PartitionId(0), 57)
            .await
            .unwrap(),
        Some(Offset(57))
    );
}

#[tokio::test]
async fn torn_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig::new(dir.path());
    let t = TopicName::new("unitable.a.torn");
    {
        let log = LocalChangelog::open(config.clone()).await.unwrap();
        log.create_topic(&t, 1).await.unwrap();
        log.append(&t, PartitionId(0), (0..3).map(|i| rec(i, 1)).collect())
            .await
            .unwrap();
        log.append(&t, PartitionId(0), (3..5).map(|i| rec(i, 1)).collect())
            .await
            .unwrap();
    }
    let segment = dir
        .path()
        .join("unitable.a.torn/0/00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    // Cut the second batch in half: a crash in the middle of a write.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 100).unwrap();
    drop(file);
    let log = LocalChangelog::open(config.clone()).await.unwrap();
    let w = log.watermarks(&t, PartitionId(0)).await.unwrap();
    assert_eq!(w.high, Offset(3), "the torn batch must be dropped whole");
    let r = log
        .append(&t, PartitionId(0), vec![rec(9, 1)])
        .await
        .unwrap();
    assert_eq!(r.first, Offset(3));
    drop(log);

    // Garbage appended after valid data (a torn header) is also cut.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, b"ULB1garbage").unwrap();
    drop(file);
    let log = LocalChangelog::open(config).await.unwrap();
    let all = log
        .read(&t, PartitionId(0), Offset(0), 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].record, rec(9, 1));
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_is_an_error_not_a_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path());
    config.segment_bytes = 500;
    let t = TopicName::new("unitable.a.sealed");
    {
        let log = LocalChangelog::open(config.clone()).await.unwrap();
        log.create_topic(&t, 1).await.unwrap();
        for i in 0..20 {
            log.append(&t, PartitionId(0), vec![rec(i, 1)])
                .await
                .unwrap();
        }
    }
    let first = dir
        .path()
        .join("unitable.a.sealed/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let err = LocalChangelog::open(config).await.unwrap_err();
    assert!(matches!(err, ChangelogError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn retention_never_removes_uncommitted_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = LocalConfig::new(dir.path());
    config.segment_bytes = 1_000;
    config.retention = Some(Duration::from_secs(60));
    config.clock = Arc::new(clock.clone());
    let log = LocalChangelog::open(config).await.unwrap();
    let t = TopicName::new("unitable.a.ret");
    let p = PartitionId(0);
    log.create_topic(&t, 1).await.unwrap();
    for i in 0..50 {
        log.append(&t, p, vec![rec(i, 1_000_000)]).await.unwrap();
    }
    clock.advance(3_600_000);
    // Nothing committed: nothing may go, however old.
    log.publish_committed(&t, &PartitionOffsets::default())
        .await
        .unwrap();
    assert_eq!(log.watermarks(&t, p).await.unwrap().low, Offset(0));
    // Committed through 20: only whole segments ending at or before 20 may go.
    let committed = PartitionOffsets([(p, Offset(20))].into_iter().collect());
    log.publish_committed(&t, &committed).await.unwrap();
    let low = log.watermarks(&t, p).await.unwrap().low;
    assert!(low.0 > 0 && low.0 <= 20, "low watermark {low}");
    let err = log
        .read(&t, p, Offset(0), 10, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, ChangelogError::OffsetOutOfRange { .. }));
    let rest = log.read(&t, p, low, 100, Duration::ZERO).await.unwrap();
    assert_eq!(rest[0].offset, low);
    // Everything from the committed offset on is still there.
    let mut next = low;
    let mut seen = 0;
    while next.0 < 50 {
        let got = log.read(&t, p, next, 100, Duration::ZERO).await.unwrap();
        seen += got.len();
        next = Offset(got.last().unwrap().offset.0 + 1);
    }
    assert_eq!(seen as i64, 50 - low.0);
}
