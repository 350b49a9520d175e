//! Writing manifests of entries a snapshot carries over: shared by rewrites (which turn the
//! manifests holding replaced files into fewer ones) and manifest merges.
//!
//! Every entry written here already belongs to the table, so it keeps what the spec says it must
//! keep: an `EXISTING` entry keeps the snapshot id that added the file and both sequence numbers;
//! a `DELETED` entry takes the snapshot that deletes the file and keeps both sequence numbers.
//! iceberg-rust's `ManifestWriter` computes the manifest's counts, its minimum sequence number
//! (over live entries) and its partition summaries from the entries; the manifest list assigns
//! the new snapshot's sequence number to the manifest.

use iceberg::io::FileIO;
use iceberg::spec::{ManifestContentType, ManifestFile, ManifestWriterBuilder, TableMetadata};

use super::plan::TrackedFile;
use super::{CommitError, CommitResult};

/// How a carried entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Still part of the table: `EXISTING`, with its snapshot id and sequence numbers.
    Existing,
    /// Removed by the snapshot being written: `DELETED`, with its sequence numbers.
    Deleted,
}

/// The manifests of one content type and partition spec (what may share a manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ManifestGroup {
    /// True for delete manifests.
    pub(crate) deletes: bool,
    /// The partition spec id.
    pub(crate) spec_id: i32,
}

impl ManifestGroup {
    pub(crate) fn of(manifest: &ManifestFile) -> Self {
        Self {
            deletes: manifest.content == ManifestContentType::Deletes,
            spec_id: manifest.partition_spec_id,
        }
    }
}

/// Writes one manifest of `group` for snapshot `snapshot_id` holding `entries`, each written as
/// its [`Carry`] says. `tag` ends the file name (`<uuid>-<tag>.avro`), so a listing shows what
/// wrote the manifest.
pub(crate) async fn write_carried_manifest<'a>(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot_id: i64,
    group: ManifestGroup,
    entries: impl IntoIterator<Item = (&'a TrackedFile, Carry)>,
    tag: &str,
) -> CommitResult<ManifestFile> {
    let spec = metadata
        .partition_spec_by_id(group.spec_id)
        .ok_or_else(|| CommitError::Invalid {
            reason: format!(
                "manifest entries use unknown partition spec {}",
                group.spec_id
            ),
        })?;
    let path = format!(
        "{}/metadata/{}-{tag}{}.avro",
        metadata.location(),
        uuid::Uuid::now_v7(),
        u8::from(group.deletes)
    );
    let output = file_io
        .new_output(&path)
        .map_err(|e| CommitError::iceberg(format!("open {path}"), e))?;
    let builder = ManifestWriterBuilder::new(
        output,
        Some(snapshot_id),
        metadata.current_schema().clone(),
        spec.as_ref().clone(),
    );
    let mut writer = if group.deletes {
        builder.build_v2_deletes()
    } else {
        builder.build_v2_data()
    };
    let err = |e| CommitError::iceberg("add a manifest entry", e);
    for (f, carry) in entries {
        if f.spec_id != group.spec_id {
            return Err(CommitError::Invalid {
                reason: format!(
                    "{} has partition spec {}, not the manifest's {}",
                    f.data_file.file_path(),
                    f.spec_id,
                    group.spec_id
                ),
            });
        }
        match carry {
            Carry::Existing => writer
                .add_existing_file(
                    f.data_file.clone(),
                    f.snapshot_id,
                    f.data_sequence_number,
                    Some(f.file_sequence_number),
                )
                .map_err(err)?,
            Carry::Deleted => writer
                .add_delete_file(
                    f.data_file.clone(),
                    f.data_sequence_number,
                    Some(f.file_sequence_number),
                )
                .map_err(err)?,
        }
    }
    writer
        .write_manifest_file()
        .await
        .map_err(|e| CommitError::iceberg(format!("write manifest {path}"), e))
}
