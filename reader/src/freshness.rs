//! How fresh served data is: an `AsOf` (snapshot, covered offsets, commit time) with its lag
//! behind the changelog head.

use std::time::Duration;

use iceberg::spec::SnapshotRef;
use unitable_core::changelog::{Changelog, Watermarks};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{AsOf, PartitionId, PartitionOffsets};

use crate::error::ReadResult;

/// The `AsOf` of serving `snapshot` (`None`: an empty table) plus every changelog record below
/// `offsets`, for a table whose changelog is `topic` with `partitions` partitions. The lag is
/// measured against the changelog head now; a partition whose head cannot be read counts as
/// caught up (the read itself does not fail over a freshness report).
pub async fn as_of(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partitions: u32,
    offsets: PartitionOffsets,
    snapshot: Option<&SnapshotRef>,
) -> AsOf {
    as_of_in(
        changelog,
        topic,
        (0..partitions).map(PartitionId),
        offsets,
        snapshot,
    )
    .await
}

/// [`as_of`] with the lag measured over `partitions` only (a read that reflects some
/// partitions of the table, such as a LOOKUP as of an instant, which reads only the
/// partitions its keys live in).
pub(crate) async fn as_of_in(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partitions: impl IntoIterator<Item = PartitionId>,
    offsets: PartitionOffsets,
    snapshot: Option<&SnapshotRef>,
) -> AsOf {
    let now = chrono::Utc::now().timestamp_millis();
    let mut lag_records = 0;
    let mut oldest: Option<i64> = None;
    for partition in partitions {
        let Ok(w) = changelog.watermarks(topic, partition).await else {
            continue;
        };
        let from = offsets.get(partition).max(w.low);
        let behind = from.records_until(w.high);
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

/// The watermarks of every partition of `topic`.
pub(crate) async fn watermarks(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partitions: u32,
) -> ReadResult<Vec<Watermarks>> {
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        out.push(changelog.watermarks(topic, PartitionId(p)).await?);
    }
    Ok(out)
}

/// The high watermark of every partition: the offsets a read "at this moment" covers.
pub(crate) async fn heads(
    changelog: &dyn Changelog,
    topic: &TopicName,
    partitions: u32,
) -> ReadResult<PartitionOffsets> {
    let mut out = PartitionOffsets::default();
    for (p, w) in watermarks(changelog, topic, partitions)
        .await?
        .into_iter()
        .enumerate()
    {
        out.set(PartitionId(p as u32), w.high);
    }
    Ok(out)
}
