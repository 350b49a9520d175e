//! Expire snapshots: drop old snapshots from the table metadata (one compare-and-swap commit),
//! then delete the files only they reached.
//!
//! **What is kept:** the newest ancestor recording changelog offsets (and every snapshot between
//! it and the head), the current snapshot and its `retain_last - 1` nearest ancestors (at least
//! the current one), every snapshot a ref (branch or tag) names, and every snapshot committed
//! at or after `older_than_ms`. Everything else is expired.
//!
//! **What is deleted**, only after the metadata commit succeeded: every manifest list, manifest
//! and data or delete file reachable from an expired snapshot (entries of any status) that no
//! retained snapshot reaches (manifest lists, manifests, and their live entries), computed
//! against the table as reloaded after the commit, so snapshots committed concurrently are
//! retained too. Old metadata files are left to orphan removal. A commit in flight cannot be
//! harmed: a new snapshot can only carry manifests over from the head, which is retained, and
//! the files it adds are not reachable from any expired snapshot.

use std::collections::{BTreeSet, HashSet};

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use tracing::warn;

use super::committer::{Attempt, Base, Committer, Staged};
use super::plan::{manifest_entries, manifests_of};
use super::read::ancestors;
use super::{CommitError, CommitResult};
use crate::naming::TableName;

/// Which snapshots to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireSnapshots {
    /// Snapshots committed before this time (ms since the epoch) may expire.
    pub older_than_ms: i64,
    /// The current snapshot and this many - 1 of its ancestors are always kept (at least 1).
    pub retain_last: usize,
    /// Report what would be expired and deleted without changing anything.
    pub dry_run: bool,
}

/// What an expiration did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// The expired snapshots.
    pub expired_snapshot_ids: Vec<i64>,
    /// Files deleted (manifest lists, manifests, data and delete files), sorted.
    pub deleted_files: Vec<String>,
    /// Files that should have been deleted but could not be (left for orphan removal).
    pub undeleted_files: Vec<String>,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
}

impl Committer {
    /// Expires snapshots of `table` per `request`, then deletes the files only they reached.
    pub async fn expire_snapshots(
        &self,
        table: &TableName,
        request: &ExpireSnapshots,
    ) -> CommitResult<ExpireReport> {
        let mut op = ExpireOp {
            request: request.clone(),
            attempted: None,
        };
        let outcome = self.run(table, &mut op).await?;
        let (expired_from, expired) = match outcome {
            Outcome::Report(report) => return Ok(report),
            Outcome::Expired { from, ids } => (from, ids),
        };
        let loaded = self.catalog().load(table).await?;
        let file_io = loaded.file_io();
        let files =
            unreachable_files(file_io, &expired_from, &expired, loaded.metadata(), &[]).await?;
        let mut report = ExpireReport {
            expired_snapshot_ids: expired,
            dry_run: false,
            ..ExpireReport::default()
        };
        for path in files {
            match file_io.delete(&path).await {
                Ok(()) => report.deleted_files.push(path),
                Err(e) => {
                    warn!(%table, %path, error = %e, "could not delete a file of an expired snapshot");
                    report.undeleted_files.push(path);
                }
            }
        }
        Ok(report)
    }
}

enum Outcome {
    /// Finished (dry run, or nothing to expire).
    Report(ExpireReport),
    /// `ids` were removed; `from` is metadata that still holds them.
    Expired {
        from: Box<TableMetadata>,
        ids: Vec<i64>,
    },
}

struct ExpireOp {
    request: ExpireSnapshots,
    /// The metadata of the last attempt and the snapshots it removes.
    attempted: Option<(Box<TableMetadata>, Vec<i64>)>,
}

#[async_trait]
impl Attempt for ExpireOp {
    type Output = Outcome;

    /// An attempt whose swap outcome was unknown landed if its snapshots are all gone.
    fn landed(&self, metadata: &TableMetadata) -> Option<Outcome> {
        let (from, ids) = self.attempted.as_ref()?;
        ids.iter()
            .all(|id| metadata.snapshot_by_id(*id).is_none())
            .then(|| Outcome::Expired {
                from: from.clone(),
                ids: ids.clone(),
            })
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<Outcome>> {
        let expired = expired_ids(base.metadata, &self.request)?;
        if expired.is_empty() || self.request.dry_run {
            let deleted_files = if expired.is_empty() {
                Vec::new()
            } else {
                unreachable_files(
                    base.file_io,
                    base.metadata,
                    &expired,
                    base.metadata,
                    &expired,
                )
                .await?
            };
            return Ok(Staged::Done(Outcome::Report(ExpireReport {
                expired_snapshot_ids: expired,
                deleted_files,
                undeleted_files: Vec::new(),
                dry_run: self.request.dry_run,
            })));
        }
        let metadata = TableMetadataBuilder::new_from_metadata(
            base.metadata.clone(),
            Some(base.location.to_string()),
        )
        .remove_snapshots(&expired)
        .build()
        .map_err(|e| CommitError::iceberg("remove expired snapshots", e))?
        .metadata;
        let from = Box::new(base.metadata.clone());
        self.attempted = Some((from.clone(), expired.clone()));
        Ok(Staged::Commit {
            metadata: Box::new(metadata),
            output: Outcome::Expired { from, ids: expired },
        })
    }
}

/// The snapshots of `metadata` that `request` expires, sorted.
pub fn expired_ids(metadata: &TableMetadata, request: &ExpireSnapshots) -> CommitResult<Vec<i64>> {
    let mut keep: HashSet<i64> = ref_snapshot_ids(metadata)?;
    if let Some(current) = metadata.current_snapshot_id() {
        let chain = ancestors(metadata, current);
        keep.extend(
            chain
                .iter()
                .take(request.retain_last.max(1))
                .map(|s| s.snapshot_id()),
        );
        // The committer resumes from the newest ancestor that records changelog offsets; keep
        // it and every snapshot between it and the head, or the walk to it breaks.
        // A table without any such snapshot (not written by unitable) keeps nothing extra.
        if let Some(anchor) = chain
            .iter()
            .position(|s| crate::commit::read::changelog_offsets(s).is_some())
        {
            keep.extend(chain[..=anchor].iter().map(|s| s.snapshot_id()));
        }
    }
    let mut out: Vec<i64> = metadata
        .snapshots()
        .filter(|s| s.timestamp_ms() < request.older_than_ms && !keep.contains(&s.snapshot_id()))
        .map(|s| s.snapshot_id())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Snapshot ids named by the table's refs (iceberg-rust exposes refs only through the
/// metadata's serialized form).
fn ref_snapshot_ids(metadata: &TableMetadata) -> CommitResult<HashSet<i64>> {
    let json = serde_json::to_value(metadata).map_err(|e| CommitError::Invalid {
        reason: format!("serialize table metadata: {e}"),
    })?;
    Ok(json
        .get("refs")
        .and_then(|r| r.as_object())
        .map(|refs| {
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(|id| id.as_i64()))
                .collect()
        })
        .unwrap_or_default())
}

/// Files reachable from snapshots `expired` of `expired_from` that no snapshot of `retained_from`
/// (other than those in `not_retained`) reaches; sorted.
pub async fn unreachable_files(
    file_io: &FileIO,
    expired_from: &TableMetadata,
    expired: &[i64],
    retained_from: &TableMetadata,
    not_retained: &[i64],
) -> CommitResult<Vec<String>> {
    let mut reachable: HashSet<String> = HashSet::new();
    let mut seen_manifests: HashSet<String> = HashSet::new();
    for snapshot in retained_from
        .snapshots()
        .filter(|s| !not_retained.contains(&s.snapshot_id()))
    {
        reachable.insert(snapshot.manifest_list().to_string());
        for m in manifests_of(file_io, retained_from, snapshot).await? {
            if seen_manifests.insert(m.manifest_path.clone()) {
                for f in manifest_entries(file_io, &m).await? {
                    if f.is_live() {
                        reachable.insert(f.data_file.file_path().to_string());
                    }
                }
                reachable.insert(m.manifest_path);
            }
        }
    }
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    for id in expired {
        let Some(snapshot) = expired_from.snapshot_by_id(*id) else {
            continue;
        };
        candidates.insert(snapshot.manifest_list().to_string());
        for m in manifests_of(file_io, expired_from, snapshot).await? {
            if reachable.contains(&m.manifest_path)
                || !seen_manifests.insert(m.manifest_path.clone())
            {
                continue; // Retained (its entries stay reachable), or already looked at.
            }
            for f in manifest_entries(file_io, &m).await? {
                candidates.insert(f.data_file.file_path().to_string());
            }
            candidates.insert(m.manifest_path);
        }
    }
    Ok(candidates
        .into_iter()
        .filter(|p| !reachable.contains(p))
        .collect())
}
