//! Remove orphan files: files under a table's location that no metadata references, left by
//! failed or lost commit attempts, crashed writers, or metadata files that fell out of the
//! metadata log.
//!
//! Referenced (never removed): the current metadata file and every file of the metadata log;
//! statistics files; for every snapshot in the metadata, its manifest list, its manifests and
//! every file any of their entries names (including `DELETED` entries); `version-hint.text`;
//! and everything under `<location>/unitable/`, where unitable keeps files of its own that are
//! not part of the Iceberg table (key-index checkpoints, which the writer prunes itself).
//!
//! **Safety age.** A commit writes its files (data, deletes, manifests, manifest list, metadata)
//! before the pointer swap makes them referenced, and a compaction writes its files long before
//! it commits. Such files look orphaned while that commit is in flight, so only files last
//! modified more than `older_than` ago are removed; `older_than` (3 days by default) must exceed
//! the longest time from a file's write to the commit that references it (including retries and
//! compaction runs). The listing is taken *before* the metadata is loaded, so every commit that
//! landed before the load protects its files regardless of their age.

use std::collections::HashSet;
use std::time::Duration;

use tracing::warn;

use super::plan::{manifest_entries, manifests_of};
use super::{CommitError, CommitResult};
use crate::catalog::TableCatalog;
use crate::clock::Clock;
use crate::naming::{TableName, paths};
use crate::storage::list_files;

/// The default safety age of orphan removal.
pub const DEFAULT_ORPHAN_AGE: Duration = Duration::from_secs(3 * 24 * 3600);

/// What to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveOrphanFiles {
    /// Only files last modified longer ago than this are removed (see the module docs).
    pub older_than: Duration,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

impl Default for RemoveOrphanFiles {
    fn default() -> Self {
        Self {
            older_than: DEFAULT_ORPHAN_AGE,
            dry_run: false,
        }
    }
}

/// What orphan removal did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Orphans removed (or, for a dry run, that would be), sorted.
    pub removed: Vec<String>,
    /// Unreferenced files younger than the safety age, kept (possibly a commit in flight).
    pub kept_young: Vec<String>,
    /// Orphans whose removal failed.
    pub undeleted: Vec<String>,
    /// True for a dry run.
    pub dry_run: bool,
}

/// Removes the orphan files of `table` per `request`, judging age by `clock`.
pub async fn remove_orphan_files(
    catalog: &TableCatalog,
    table: &TableName,
    request: &RemoveOrphanFiles,
    clock: &dyn Clock,
) -> CommitResult<OrphanReport> {
    let location = catalog.load(table).await?.metadata().location().to_string();
    // List first, then load the metadata that decides what is referenced (see module docs).
    let listed = list_files(&catalog.config().storage_props, &format!("{location}/"))
        .await
        .map_err(|e| CommitError::iceberg(format!("list {location}"), e))?;
    let loaded = catalog.load(table).await?;
    let referenced = referenced_files(&loaded).await?;
    let age_ms = i64::try_from(request.older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff = clock.now_ms().saturating_sub(age_ms);
    let mut report = OrphanReport {
        dry_run: request.dry_run,
        ..OrphanReport::default()
    };
    // A location the listing spells differently from the metadata (e.g. percent-encoded
    // characters) could make a referenced file look orphaned: refuse rather than guess.
    let prefix = format!("{}/", canonical(&location));
    if let Some(odd) = listed
        .iter()
        .find(|f| !canonical(&f.location).starts_with(&prefix))
    {
        return Err(CommitError::Invalid {
            reason: format!(
                "listing of {location} returned {}, which does not match the table location; not removing anything",
                odd.location
            ),
        });
    }
    let service_dir = format!("{}/", canonical(&paths::service_dir(&location)));
    for file in listed {
        let canonical = canonical(&file.location);
        if referenced.contains(&canonical)
            || canonical.ends_with("/metadata/version-hint.text")
            || canonical.starts_with(&service_dir)
        {
            continue;
        }
        if file.last_modified_ms >= cutoff {
            report.kept_young.push(file.location);
            continue;
        }
        if request.dry_run {
            report.removed.push(file.location);
            continue;
        }
        match loaded.file_io().delete(&file.location).await {
            Ok(()) => report.removed.push(file.location),
            Err(e) => {
                warn!(%table, path = %file.location, error = %e, "could not remove an orphan file");
                report.undeleted.push(file.location);
            }
        }
    }
    Ok(report)
}

/// Every file the table's metadata references, in [`canonical`] form.
async fn referenced_files(table: &iceberg::table::Table) -> CommitResult<HashSet<String>> {
    let metadata = table.metadata();
    let io = table.file_io();
    let mut out = HashSet::new();
    let mut add = |p: &str| {
        out.insert(canonical(p));
    };
    if let Some(current) = table.metadata_location() {
        add(current);
    }
    for entry in metadata.metadata_log() {
        add(&entry.metadata_file);
    }
    for path in statistics_paths(metadata)? {
        add(&path);
    }
    let mut seen = HashSet::new();
    for snapshot in metadata.snapshots() {
        add(snapshot.manifest_list());
        for manifest in manifests_of(io, metadata, snapshot).await? {
            if seen.insert(manifest.manifest_path.clone()) {
                for entry in manifest_entries(io, &manifest).await? {
                    add(entry.data_file.file_path());
                }
                add(&manifest.manifest_path);
            }
        }
    }
    Ok(out)
}

/// Statistics and partition-statistics files (exposed by iceberg-rust only in the serialized
/// metadata).
fn statistics_paths(metadata: &iceberg::spec::TableMetadata) -> CommitResult<Vec<String>> {
    let json = serde_json::to_value(metadata).map_err(|e| CommitError::Invalid {
        reason: format!("serialize table metadata: {e}"),
    })?;
    let mut out = Vec::new();
    for key in ["statistics", "partition-statistics"] {
        if let Some(list) = json.get(key).and_then(|v| v.as_array()) {
            out.extend(
                list.iter()
                    .filter_map(|s| s.get("statistics-path").and_then(|p| p.as_str()))
                    .map(String::from),
            );
        }
    }
    Ok(out)
}

/// One spelling per file: local paths without their `file:` scheme, `s3a://` as `s3://`.
pub fn canonical(location: &str) -> String {
    if let Some(rest) = location.strip_prefix("file://") {
        rest.to_string()
    } else if let Some(rest) = location.strip_prefix("file:") {
        rest.to_string()
    } else if let Some(rest) = location.strip_prefix("s3a://") {
        format!("s3://{rest}")
    } else {
        location.to_string()
    }
}

#[cfg(test)]
#[path = "orphans_tests.rs"]
mod tests;
