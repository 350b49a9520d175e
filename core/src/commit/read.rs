//! Read helpers over committed snapshots: the changelog offsets a snapshot covers, a snapshot's
//! ancestry on the main branch, and the snapshot current at a point in time.

use iceberg::spec::{SnapshotRef, TableMetadata};

use crate::naming::summary;
use crate::offsets::PartitionOffsets;

/// The changelog offsets (exclusive ends) recorded in a snapshot's summary; `None` when the
/// snapshot was not written by unitable's committer (or the value is malformed).
pub fn changelog_offsets(snapshot: &SnapshotRef) -> Option<PartitionOffsets> {
    snapshot
        .summary()
        .additional_properties
        .get(summary::CHANGELOG_OFFSETS)
        .and_then(|s| s.parse().ok())
}

/// The changelog offsets snapshot `snapshot_id` reflects: its own
/// `unitable.changelog-offsets`, or those of its newest ancestor that has them (snapshots by
/// other engines carry none); empty when none has them. Committers resume from these offsets;
/// readers switch from the snapshot to the changelog at them.
pub fn anchored_offsets(metadata: &TableMetadata, snapshot_id: i64) -> PartitionOffsets {
    ancestors(metadata, snapshot_id)
        .iter()
        .find_map(changelog_offsets)
        .unwrap_or_default()
}

/// `snapshot_id` and its ancestors, newest first, following parent links while the parents are
/// still in the metadata (expired ones end the walk).
pub fn ancestors(metadata: &TableMetadata, snapshot_id: i64) -> Vec<SnapshotRef> {
    let mut out = Vec::new();
    let mut next = metadata.snapshot_by_id(snapshot_id).cloned();
    while let Some(snapshot) = next {
        next = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
        out.push(snapshot);
    }
    out
}

/// The snapshots after `oldest_exclusive` up to and including `newest`, oldest first. `None`
/// when `oldest_exclusive` is not an ancestor of `newest` (or was expired).
pub fn ancestors_between(
    metadata: &TableMetadata,
    newest: i64,
    oldest_exclusive: Option<i64>,
) -> Option<Vec<SnapshotRef>> {
    let mut chain = ancestors(metadata, newest);
    if let Some(oldest) = oldest_exclusive {
        let at = chain.iter().position(|s| s.snapshot_id() == oldest)?;
        chain.truncate(at);
    }
    chain.reverse();
    Some(chain)
}

/// The main-branch snapshot that was current at `timestamp_ms`: the newest ancestor of the
/// current snapshot committed at or before that time. `None` before the first commit.
pub fn snapshot_as_of(metadata: &TableMetadata, timestamp_ms: i64) -> Option<SnapshotRef> {
    let current = metadata.current_snapshot_id()?;
    ancestors(metadata, current)
        .into_iter()
        .find(|s| s.timestamp_ms() <= timestamp_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::tests::{committed_fixture, expect_offsets};

    #[tokio::test]
    async fn offsets_ancestry_and_time_travel_follow_the_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, name, snapshots) = committed_fixture(dir.path(), 4).await;
        let table = catalog.load(&name).await.unwrap();
        let m = table.metadata();
        let chain = ancestors(m, snapshots[3]);
        let ids: Vec<i64> = chain.iter().map(|s| s.snapshot_id()).collect();
        assert_eq!(
            ids,
            [snapshots[3], snapshots[2], snapshots[1], snapshots[0]]
        );
        for (i, snapshot) in chain.iter().rev().enumerate() {
            assert_eq!(changelog_offsets(snapshot), Some(expect_offsets(i)));
        }
        let between: Vec<i64> = ancestors_between(m, snapshots[3], Some(snapshots[1]))
            .unwrap()
            .iter()
            .map(|s| s.snapshot_id())
            .collect();
        assert_eq!(between, [snapshots[2], snapshots[3]]);
        assert_eq!(ancestors_between(m, snapshots[3], None).unwrap().len(), 4);
        assert!(ancestors_between(m, snapshots[1], Some(snapshots[3])).is_none());

        let at = |id: i64| m.snapshot_by_id(id).unwrap().timestamp_ms();
        assert_eq!(
            snapshot_as_of(m, at(snapshots[2])).unwrap().snapshot_id(),
            snapshots[2]
        );
        assert_eq!(
            snapshot_as_of(m, at(snapshots[3]) + 60_000)
                .unwrap()
                .snapshot_id(),
            snapshots[3]
        );
        assert!(snapshot_as_of(m, at(snapshots[0]) - 1).is_none());
    }
}
