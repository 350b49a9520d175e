//! Fault injection on the local changelog (`fail` points; this binary has them to itself, since
//! fail points are process-wide).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use unitable_core::changelog::{ChangeRecord, Changelog};
use unitable_core::changelog::{LocalChangelog, LocalConfig};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};

fn rec(i: usize, value_len: usize) -> ChangeRecord {
    ChangeRecord {
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(vec![b'v'; value_len])),
        headers: vec![("unitable.op".into(), Bytes::from_static(b"upsert"))],
        timestamp_ms: i as i64,
    }
}

async fn read_all(log: &LocalChangelog, topic: &TopicName) -> Vec<ChangeRecord> {
    let mut out = Vec::new();
    loop {
        let got = log
            .read(
                topic,
                PartitionId(0),
                Offset(out.len() as i64),
                100_000,
                Duration::ZERO,
            )
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        for r in got {
            assert_eq!(r.offset, Offset(out.len() as i64), "offsets are dense");
            out.push(r.record);
        }
    }
}

/// Both tests share the process-wide fail-point registry, so they run one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_changelog_faults() {
    waiters_fail_after_a_failed_fsync().await;
    appends_larger_than_a_batch_read_back_after_restart().await;
}

/// Group commit: B's bytes are written while A's fsync is under way; A's fsync fails. B must
/// fail too (the old code fsynced again, succeeded, and made A's batch durable and visible
/// although A was told to retry), and nothing after the failure may be acknowledged.
async fn waiters_fail_after_a_failed_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        LocalChangelog::open(LocalConfig::new(dir.path()))
            .await
            .unwrap(),
    );
    let t = TopicName::new("unitable.f.fsync");
    log.create_topic(&t, 1).await.unwrap();
    log.append(&t, PartitionId(0), vec![rec(0, 10)])
        .await
        .unwrap();

    // A stops just before its fsync, holding the sync lock.
    fail::cfg("local-changelog-before-fsync", "pause").unwrap();
    let a = tokio::spawn({
        let (log, t) = (log.clone(), t.clone());
        async move { log.append(&t, PartitionId(0), vec![rec(1, 10)]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // B writes its batch and waits for the sync lock.
    let b = tokio::spawn({
        let (log, t) = (log.clone(), t.clone());
        async move { log.append(&t, PartitionId(0), vec![rec(2, 10)]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A's fsync fails; B's would succeed if B were allowed to try.
    fail::cfg("local-changelog-fsync", "1*return").unwrap();
    fail::remove("local-changelog-before-fsync");
    let a = a.await.unwrap();
    let b = b.await.unwrap();
    fail::remove("local-changelog-fsync");
    assert!(a.is_err(), "A's fsync failed, so A must fail: {a:?}");
    assert!(
        b.is_err(),
        "B's bytes follow a batch whose fsync failed, so B must fail: {b:?}"
    );
    let wm = log.watermarks(&t, PartitionId(0)).await.unwrap();
    assert_eq!(wm.high, Offset(1), "nothing past the failure is visible");
    let later = log.append(&t, PartitionId(0), vec![rec(3, 10)]).await;
    assert!(
        later.is_err(),
        "a failed partition refuses appends until reopened"
    );
    assert_eq!(read_all(&log, &t).await, vec![rec(0, 10)]);

    // Reopening recovers what is really on disk and takes appends again.
    drop(log);
    let log = LocalChangelog::open(LocalConfig::new(dir.path()))
        .await
        .unwrap();
    let range = log
        .append(&t, PartitionId(0), vec![rec(4, 10)])
        .await
        .unwrap();
    let all = read_all(&log, &t).await;
    assert_eq!(all.last(), Some(&rec(4, 10)));
    assert_eq!(range.last.0 as usize, all.len() - 1);
}

/// One append of more than the 256 MiB batch limit is split into batches that all read back,
/// also after a restart (the old code wrote one batch that every read refused as corrupt).
async fn appends_larger_than_a_batch_read_back_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = TopicName::new("unitable.f.large");
    let records: Vec<_> = (0..270).map(|i| rec(i, 1 << 20)).collect();
    {
        let log = LocalChangelog::open(LocalConfig::new(dir.path()))
            .await
            .unwrap();
        log.create_topic(&t, 1).await.unwrap();
        let range = log
            .append(&t, PartitionId(0), records.clone())
            .await
            .unwrap();
        assert_eq!((range.first, range.last), (Offset(0), Offset(269)));
        log.append(&t, PartitionId(0), vec![rec(999, 10)])
            .await
            .unwrap();
    }
    let log = LocalChangelog::open(LocalConfig::new(dir.path()))
        .await
        .unwrap();
    let back = read_all(&log, &t).await;
    assert_eq!(back.len(), 271);
    assert!(
        back[..270] == records[..],
        "the large append reads back whole"
    );
    assert_eq!(back[270], rec(999, 10));

    // A record that cannot fit a batch alone is refused and nothing of its append is written.
    let huge = vec![rec(1000, 10), rec(1001, 257 << 20)];
    let err = log.append(&t, PartitionId(0), huge).await.unwrap_err();
    assert!(err.to_string().contains("record 1"), "{err}");
    let wm = log.watermarks(&t, PartitionId(0)).await.unwrap();
    assert_eq!(wm.high, Offset(271));
}
