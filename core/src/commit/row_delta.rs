//! The row-delta commit: one snapshot that adds data files and position-delete files, carries
//! every manifest of the parent over, and records caller properties (the changelog offsets it
//! covers) in its summary, all in one compare-and-swap of the metadata pointer.
//!
//! Retries: on a conflict the commit reloads the table and rebases: the manifests it wrote stay
//! valid (their entries inherit the snapshot's sequence number from the manifest list), so only
//! the manifest list and the table metadata are written again. Every commit carries a commit id
//! in its summary (`unitable.commit-id`); before each attempt the table's snapshots are searched
//! for it, so a commit whose swap succeeded but whose answer was lost is never applied twice.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use iceberg::MetadataLocation;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, MAIN_BRANCH, ManifestFile, ManifestList, ManifestListWriter,
    ManifestWriterBuilder, Operation, Snapshot, Summary, TableMetadata, TableMetadataBuilder,
};
use tracing::{debug, warn};

use super::pointer::{MetadataPointer, SwapOutcome};
use super::{CommitError, CommitResult};
use crate::catalog::TableCatalog;
use crate::naming::{TableName, summary};

/// What a row delta adds.
#[derive(Debug, Clone, Default)]
pub struct RowDelta {
    /// New data files.
    pub data_files: Vec<DataFile>,
    /// New position-delete files.
    pub delete_files: Vec<DataFile>,
    /// Extra snapshot-summary properties (e.g. `unitable.changelog-offsets`).
    pub properties: BTreeMap<String, String>,
    /// A unique id of this commit; a retry with the same id never commits twice.
    pub commit_id: String,
}

/// The snapshot a commit produced (or found already committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The snapshot id.
    pub snapshot_id: i64,
    /// Its sequence number.
    pub sequence_number: i64,
    /// True when an earlier attempt with the same commit id had already landed.
    pub already_committed: bool,
}

/// Commits snapshots to tables of one catalog.
#[derive(Debug, Clone)]
pub struct Committer {
    catalog: TableCatalog,
    pointer: Arc<dyn MetadataPointer>,
    max_attempts: u32,
}

/// Totals kept in every unitable snapshot summary (the spec's optional fields).
const TOTALS: [&str; 6] = [
    "total-records",
    "total-data-files",
    "total-delete-files",
    "total-position-deletes",
    "total-equality-deletes",
    "total-files-size",
];

impl Committer {
    /// A committer over `catalog`, swapping pointers through `pointer`.
    pub fn new(catalog: TableCatalog, pointer: Arc<dyn MetadataPointer>) -> Self {
        Self {
            catalog,
            pointer,
            max_attempts: 20,
        }
    }

    /// Sets how many conflicting attempts are made before giving up.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &TableCatalog {
        &self.catalog
    }

    /// Commits `delta` to `table` as one snapshot on the main branch.
    pub async fn commit_row_delta(
        &self,
        table: &TableName,
        delta: &RowDelta,
    ) -> CommitResult<Committed> {
        if delta.commit_id.is_empty() {
            return Err(CommitError::Invalid {
                reason: "a row delta needs a commit id".into(),
            });
        }
        for file in &delta.data_files {
            if file.content_type() != DataContentType::Data {
                return Err(CommitError::Invalid {
                    reason: format!("{} is not a data file", file.file_path()),
                });
            }
        }
        for file in &delta.delete_files {
            if file.content_type() != DataContentType::PositionDeletes {
                return Err(CommitError::Invalid {
                    reason: format!("{} is not a position-delete file", file.file_path()),
                });
            }
        }
        let snapshot_id = new_snapshot_id();
        let mut manifests: Option<Vec<ManifestFile>> = None;
        let mut backoff = Duration::from_millis(5);
        for attempt in 1..=self.max_attempts {
            let loaded = self.catalog.load(table).await?;
            let metadata = loaded.metadata();
            if let Some(found) = find_commit(metadata, &delta.commit_id) {
                return Ok(Committed {
                    already_committed: true,
                    ..found
                });
            }
            let base_location = loaded
                .metadata_location()
                .ok_or_else(|| CommitError::Invalid {
                    reason: format!("{table} has no metadata location"),
                })?
                .to_string();
            let file_io = loaded.file_io();
            let new_manifests = match &manifests {
                Some(m) => m.clone(),
                None => {
                    let written = write_manifests(file_io, metadata, snapshot_id, delta).await?;
                    manifests = Some(written.clone());
                    written
                }
            };
            let (new_metadata, new_location, sequence_number) = stage_snapshot(
                file_io,
                metadata,
                &base_location,
                snapshot_id,
                attempt,
                new_manifests,
                delta,
            )
            .await?;
            new_metadata
                .write_to(file_io, &new_location)
                .await
                .map_err(|e| CommitError::iceberg("write table metadata", e))?;
            match self
                .pointer
                .swap(table, &base_location, &new_location.to_string())
                .await
            {
                Ok(SwapOutcome::Swapped) => {
                    debug!(%table, snapshot_id, sequence_number, attempt, "committed row delta");
                    return Ok(Committed {
                        snapshot_id,
                        sequence_number,
                        already_committed: false,
                    });
                }
                Ok(SwapOutcome::Conflict) => {
                    debug!(%table, attempt, "commit conflict; rebasing on the new head");
                }
                Err(e) => {
                    // Unknown outcome: the next attempt reloads and looks for our commit id.
                    warn!(%table, attempt, error = %e, "metadata swap failed with an unknown outcome; checking before retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(CommitError::CommitConflict {
            table: table.clone(),
            attempts: self.max_attempts,
        })
    }
}

fn new_snapshot_id() -> i64 {
    let id = uuid::Uuid::new_v4().as_u64_pair().0 & (i64::MAX as u64);
    (id as i64).max(1)
}

/// A snapshot of the table carrying `commit_id`, if any.
fn find_commit(metadata: &TableMetadata, commit_id: &str) -> Option<Committed> {
    metadata
        .snapshots()
        .find(|s| {
            s.summary()
                .additional_properties
                .get(summary::COMMIT_ID)
                .is_some_and(|id| id == commit_id)
        })
        .map(|s| Committed {
            snapshot_id: s.snapshot_id(),
            sequence_number: s.sequence_number(),
            already_committed: true,
        })
}

async fn write_manifests(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: i64,
    delta: &RowDelta,
) -> CommitResult<Vec<ManifestFile>> {
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().as_ref().clone();
    let mut out = Vec::new();
    for (files, deletes) in [(&delta.data_files, false), (&delta.delete_files, true)] {
        if files.is_empty() {
            continue;
        }
        let path = format!(
            "{}/metadata/{}-m{}.avro",
            metadata.location(),
            uuid::Uuid::now_v7(),
            u8::from(deletes)
        );
        let output = file_io
            .new_output(&path)
            .map_err(|e| CommitError::iceberg(format!("open {path}"), e))?;
        let builder =
            ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), spec.clone());
        let mut writer = if deletes {
            builder.build_v2_deletes()
        } else {
            builder.build_v2_data()
        };
        for file in files {
            // A negative sequence number leaves it unassigned: the entry inherits the
            // snapshot's, assigned in the manifest list, so a rebase needs no rewrite.
            writer
                .add_file(file.clone(), -1)
                .map_err(|e| CommitError::iceberg("add a manifest entry", e))?;
        }
        out.push(
            writer
                .write_manifest_file()
                .await
                .map_err(|e| CommitError::iceberg(format!("write manifest {path}"), e))?,
        );
    }
    Ok(out)
}

/// Loads the manifests of the current snapshot (empty without one).
pub(crate) async fn current_manifests(
    file_io: &FileIO,
    metadata: &TableMetadata,
) -> CommitResult<Vec<ManifestFile>> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let bytes = file_io
        .new_input(snapshot.manifest_list())
        .map_err(|e| CommitError::iceberg("open the manifest list", e))?
        .read()
        .await
        .map_err(|e| CommitError::iceberg(format!("read {}", snapshot.manifest_list()), e))?;
    let list = ManifestList::parse_with_version(&bytes, metadata.format_version())
        .map_err(|e| CommitError::iceberg("parse the manifest list", e))?;
    Ok(list.consume_entries().into_iter().collect())
}

#[allow(clippy::too_many_arguments)]
async fn stage_snapshot(
    file_io: &FileIO,
    metadata: &TableMetadata,
    base_location: &str,
    snapshot_id: i64,
    attempt: u32,
    new_manifests: Vec<ManifestFile>,
    delta: &RowDelta,
) -> CommitResult<(TableMetadata, MetadataLocation, i64)> {
    let parent = metadata.current_snapshot();
    let sequence_number = metadata.next_sequence_number();
    let carried = current_manifests(file_io, metadata).await?;
    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-{attempt}-{}.avro",
        metadata.location(),
        uuid::Uuid::now_v7()
    );
    let output = file_io
        .new_output(&list_path)
        .map_err(|e| CommitError::iceberg(format!("open {list_path}"), e))?;
    let writer = output
        .writer()
        .await
        .map_err(|e| CommitError::iceberg(format!("create {list_path}"), e))?;
    let mut list = ManifestListWriter::v2(
        writer,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        sequence_number,
    );
    list.add_manifests(new_manifests.into_iter().chain(carried))
        .map_err(|e| CommitError::iceberg("add manifests to the list", e))?;
    list.close()
        .await
        .map_err(|e| CommitError::iceberg(format!("write {list_path}"), e))?;

    let summary = summarize(parent.map(|p| p.summary()), delta);
    let timestamp_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(metadata.last_updated_ms() + 1);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .build();
    let new_metadata =
        TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(base_location.to_string()))
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .and_then(|b| b.build())
            .map_err(|e| CommitError::iceberg("build the new table metadata", e))?
            .metadata;
    let new_location = MetadataLocation::from_str(base_location)
        .map_err(|e| CommitError::iceberg("parse the metadata location", e))?
        // A new version with a fresh UUID: never overwrite the file the pointer names now.
        .with_next_version()
        .with_new_metadata(&new_metadata);
    Ok((new_metadata, new_location, sequence_number))
}

fn summarize(parent: Option<&Summary>, delta: &RowDelta) -> Summary {
    let added_records: u64 = delta.data_files.iter().map(DataFile::record_count).sum();
    let added_size: u64 = delta
        .data_files
        .iter()
        .chain(&delta.delete_files)
        .map(DataFile::file_size_in_bytes)
        .sum();
    let added_pos_deletes: u64 = delta.delete_files.iter().map(DataFile::record_count).sum();
    let mut props: HashMap<String, String> = delta
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.insert(summary::COMMIT_ID.into(), delta.commit_id.clone());
    let mut put = |k: &str, v: u64| {
        props.insert(k.to_string(), v.to_string());
    };
    put("added-data-files", delta.data_files.len() as u64);
    put("added-records", added_records);
    put("added-files-size", added_size);
    if !delta.delete_files.is_empty() {
        put("added-delete-files", delta.delete_files.len() as u64);
        put(
            "added-position-delete-files",
            delta.delete_files.len() as u64,
        );
        put("added-position-deletes", added_pos_deletes);
    }
    // Totals continue the parent's; without a parent they start at zero. A parent without
    // totals (written by a tool that omits them) leaves them out, as the spec allows.
    let parent_total = |k: &str| -> Option<u64> {
        match parent {
            None => Some(0),
            Some(s) => s.additional_properties.get(k).and_then(|v| v.parse().ok()),
        }
    };
    if TOTALS.iter().all(|k| parent_total(k).is_some()) {
        let t = |k: &str| parent_total(k).unwrap_or(0);
        put("total-records", t("total-records") + added_records);
        put(
            "total-data-files",
            t("total-data-files") + delta.data_files.len() as u64,
        );
        put(
            "total-delete-files",
            t("total-delete-files") + delta.delete_files.len() as u64,
        );
        put(
            "total-position-deletes",
            t("total-position-deletes") + added_pos_deletes,
        );
        put("total-equality-deletes", t("total-equality-deletes"));
        put("total-files-size", t("total-files-size") + added_size);
    }
    let operation = match (delta.data_files.is_empty(), delta.delete_files.is_empty()) {
        (false, true) | (true, true) => Operation::Append,
        (true, false) => Operation::Delete,
        (false, false) => Operation::Overwrite,
    };
    Summary {
        operation,
        additional_properties: props,
    }
}
