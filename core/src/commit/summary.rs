//! Snapshot summaries: the spec's optional count fields (what a snapshot added and removed, and
//! the table totals after it) plus caller properties.

use std::collections::HashMap;

use iceberg::spec::{DataContentType, DataFile, Operation, Summary};

/// Totals kept in every unitable snapshot summary (the spec's optional fields).
const TOTALS: [&str; 6] = [
    "total-records",
    "total-data-files",
    "total-delete-files",
    "total-position-deletes",
    "total-equality-deletes",
    "total-files-size",
];

/// Counts of a set of files, by content.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileCounts {
    pub(crate) data_files: u64,
    pub(crate) records: u64,
    pub(crate) position_delete_files: u64,
    pub(crate) position_deletes: u64,
    pub(crate) equality_delete_files: u64,
    pub(crate) equality_deletes: u64,
    pub(crate) size: u64,
}

impl FileCounts {
    pub(crate) fn of<'a>(files: impl IntoIterator<Item = &'a DataFile>) -> Self {
        let mut c = Self::default();
        for f in files {
            c.size += f.file_size_in_bytes();
            match f.content_type() {
                DataContentType::Data => {
                    c.data_files += 1;
                    c.records += f.record_count();
                }
                DataContentType::PositionDeletes => {
                    c.position_delete_files += 1;
                    c.position_deletes += f.record_count();
                }
                DataContentType::EqualityDeletes => {
                    c.equality_delete_files += 1;
                    c.equality_deletes += f.record_count();
                }
            }
        }
        c
    }

    fn delete_files(&self) -> u64 {
        self.position_delete_files + self.equality_delete_files
    }
}

/// The summary of a snapshot that adds `added` and removes `removed` on top of a parent with
/// summary `parent`, plus `props`.
///
/// Totals continue the parent's; without a parent they start at zero. A parent without totals
/// (written by a tool that omits them) leaves them out, as the spec allows.
pub(crate) fn summarize(
    parent: Option<&Summary>,
    operation: Operation,
    added: FileCounts,
    removed: FileCounts,
    mut props: HashMap<String, String>,
) -> Summary {
    let mut put = |k: &str, v: u64| {
        props.insert(k.to_string(), v.to_string());
    };
    put("added-data-files", added.data_files);
    put("added-records", added.records);
    put("added-files-size", added.size);
    if added.delete_files() > 0 {
        put("added-delete-files", added.delete_files());
        put("added-position-delete-files", added.position_delete_files);
        put("added-position-deletes", added.position_deletes);
    }
    if removed.data_files > 0 {
        put("deleted-data-files", removed.data_files);
        put("deleted-records", removed.records);
    }
    if removed.size > 0 {
        put("removed-files-size", removed.size);
    }
    if removed.delete_files() > 0 {
        put("removed-delete-files", removed.delete_files());
        put(
            "removed-position-delete-files",
            removed.position_delete_files,
        );
        put("removed-position-deletes", removed.position_deletes);
    }
    if removed.equality_delete_files > 0 {
        put(
            "removed-equality-delete-files",
            removed.equality_delete_files,
        );
        put("removed-equality-deletes", removed.equality_deletes);
    }
    let parent_total = |k: &str| -> Option<u64> {
        match parent {
            None => Some(0),
            Some(s) => s.additional_properties.get(k).and_then(|v| v.parse().ok()),
        }
    };
    if TOTALS.iter().all(|k| parent_total(k).is_some()) {
        let t = |k: &str, add: u64, remove: u64| {
            (parent_total(k).unwrap_or(0) + add).saturating_sub(remove)
        };
        put(
            "total-records",
            t("total-records", added.records, removed.records),
        );
        put(
            "total-data-files",
            t("total-data-files", added.data_files, removed.data_files),
        );
        put(
            "total-delete-files",
            t(
                "total-delete-files",
                added.delete_files(),
                removed.delete_files(),
            ),
        );
        put(
            "total-position-deletes",
            t(
                "total-position-deletes",
                added.position_deletes,
                removed.position_deletes,
            ),
        );
        put(
            "total-equality-deletes",
            t(
                "total-equality-deletes",
                added.equality_deletes,
                removed.equality_deletes,
            ),
        );
        put(
            "total-files-size",
            t("total-files-size", added.size, removed.size),
        );
    }
    Summary {
        operation,
        additional_properties: props,
    }
}
