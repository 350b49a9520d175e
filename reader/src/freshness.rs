//! How fresh served data is: the `AsOf` of a snapshot against the changelog head.

use std::time::Duration;

use iceberg::spec::{SnapshotRef, TableMetadata};
use unitable_core::changelog::Changelog;
use unitable_core::commit::read::anchored_offsets;
use unitable_core::naming::TopicName;
use unitable_core::offsets::{AsOf, PartitionId, PartitionOffsets};

/// The `AsOf` of serving `snapshot` (`None`: an empty table) of a table whose changelog is
/// `topic` with `partitions` partitions. The lag is measured against the changelog head now;
/// a partition whose head cannot be read counts as caught up (the read itself does not fail).
pub async fn as_of(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partitions: u32,
    metadata: &TableMetadata,
    snapshot: Option<&SnapshotRef>,
) -> AsOf {
    let offsets = snapshot.map_or_else(PartitionOffsets::default, |s| {
        anchored_offsets(metadata, s.snapshot_id())
    });
    let now = chrono::Utc::now().timestamp_millis();
    let mut lag_records = 0;
    let mut oldest: Option<i64> = None;
    for p in 0..partitions {
        let partition = PartitionId(p);
        let Ok(w) = changelog.watermarks(topic, partition).await else {
            continue;
        };
        let from = offsets.get(partition).max(w.low);
        let behind = w.high.0 - from.0;
        if behind <= 0 {
            continue;
        }
        lag_records += behind;
        if let Ok(first) = changelog
            .read(topic, partition, from, 1, Duration::ZERO)
            .await
            && let Some(record) = first.first()
        {
            let ts = record.record.timestamp_ms;
            oldest = Some(oldest.map_or(ts, |o: i64| o.min(ts)));
        }
    }
    AsOf {
        snapshot_id: snapshot.map(|s| s.snapshot_id()),
        offsets,
        commit_time_ms: snapshot.map_or(0, |s| s.timestamp_ms()),
        lag_records,
        lag_ms: oldest.map_or(0, |o| (now - o).max(0)),
    }
}
