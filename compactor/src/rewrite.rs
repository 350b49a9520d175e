//! Running one rewrite task: read the input files, drop the rows their deletes remove, keep the
//! table's sort order (identity fields) if it has one, write files of the target size, and
//! commit the `replace` snapshot through the commit layer with a position map, so position
//! deletes committed meanwhile are carried over onto the new files.
//!
//! A lost race is retried by the commit layer (which rebases, re-validates and carries new
//! deletes, claiming the table's turn after two losses); if it still gives up, the same rewrite
//! (same files, same commit id) is committed again for a few rounds before the task fails. On
//! failure the task's new files are deleted, but only after checking that its commit id is in
//! no snapshot (an unknown outcome must not delete live data).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{SortColumn, SortOptions, cast, concat_batches, lexsort_to_indices, take};
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, NullOrder, SortDirection, Transform};
use iceberg::table::Table;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};
use unitable_core::catalog::TableCatalog;
use unitable_core::commit::files::{
    data_file_properties, data_file_properties_of, read_bytes, write_data_file_with,
};
use unitable_core::commit::rewrite::{PositionMap, RewriteFiles};
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::{TableName, paths, summary};

use crate::config::TableSettings;
use crate::error::{CompactError, Result};
use crate::plan::RewriteTask;

/// Rounds of `commit_rewrite` (each with the commit layer's own attempts) before giving up.
pub(crate) const COMMIT_ROUNDS: u32 = 4;

/// Summary-property key naming the compaction task behind a `replace` snapshot.
pub const TASK_SUMMARY_KEY: &str = "unitable.compaction.task";

/// What a rewrite did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteOutcome {
    /// Input files replaced.
    pub files_rewritten: u64,
    /// Their bytes.
    pub bytes_rewritten: u64,
    /// Files written.
    pub files_written: u64,
    /// Their bytes.
    pub bytes_written: u64,
    /// Deleted rows dropped.
    pub deletes_applied: u64,
    /// The `replace` snapshot.
    pub snapshot_id: i64,
}

/// Rows of the inputs that survive, with where each came from.
struct Survivors {
    batch: RecordBatch,
    /// (input index, old position) per row of `batch`.
    origin: Vec<(u32, i64)>,
}

/// Runs `task`, planned at `start` of `table`.
pub(crate) async fn run_rewrite(
    catalog: &TableCatalog,
    committer: &Committer,
    name: &TableName,
    table: &Table,
    start: i64,
    task: &RewriteTask,
    settings: &TableSettings,
) -> Result<RewriteOutcome> {
    let metadata = table.metadata();
    let file_io = table.file_io();
    let schema = metadata.current_schema().clone();
    let arrow_schema: ArrowSchemaRef =
        Arc::new(
            schema_to_arrow_schema(&schema).map_err(|e| CompactError::DataFile {
                table: name.clone(),
                path: metadata.location().to_string(),
                reason: format!("map the table schema to Arrow: {e}"),
            })?,
        );

    // Read and filter each input (decoding off the async threads).
    let mut batches = Vec::new();
    let mut origin = Vec::new();
    for (i, input) in task.inputs.iter().enumerate() {
        let path = input.planned.data_file.file_path().to_string();
        let bytes = read_bytes(file_io, &path).await?;
        let deleted = input.deleted.clone();
        let target = arrow_schema.clone();
        let table_name = name.clone();
        let (batch, positions) = tokio::task::spawn_blocking(move || {
            read_live_rows(&table_name, &path, bytes, &deleted, &target)
        })
        .await
        .map_err(|e| CompactError::Worker {
            reason: e.to_string(),
        })??;
        origin.extend(positions.into_iter().map(|p| (i as u32, p)));
        batches.push(batch);
    }
    let batch = concat_batches(&arrow_schema, &batches).map_err(|e| bad(name, "concat", &e))?;
    let survivors = sort_rows(name, metadata, Survivors { batch, origin })?;

    // Rows per output file from the inputs' bytes per row.
    let input_bytes = task.input_bytes();
    let input_rows = task.input_rows().max(1);
    let bytes_per_row = (input_bytes as f64 / input_rows as f64).max(1.0);
    // As few files as the target allows, with the rows spread evenly over them (equal files
    // scan in parallel best).
    let total = survivors.batch.num_rows();
    let live_bytes = total as f64 * bytes_per_row;
    let files = ((live_bytes / settings.target_file_bytes as f64).ceil() as usize).max(1);
    let rows_per_file = total.div_ceil(files).max(1);
    let spec =
        metadata
            .partition_spec_by_id(task.spec_id)
            .ok_or_else(|| CompactError::DataFile {
                table: name.clone(),
                path: metadata.location().to_string(),
                reason: format!("unknown partition spec {}", task.spec_id),
            })?;
    let partition_path = if spec.is_unpartitioned() {
        String::new()
    } else {
        spec.partition_to_path(&task.partition, schema.clone())
    };

    let parquet = data_file_properties_of(metadata.properties()).unwrap_or_else(|e| {
        tracing::warn!(table = %name, "{e}; rewriting with the defaults");
        data_file_properties()
    });
    let mut added: Vec<DataFile> = Vec::new();
    let mut map = PositionMap::new();
    let mut offset = 0;
    let written = async {
        while offset < total {
            let len = rows_per_file.min(total - offset);
            let chunk = survivors.batch.slice(offset, len);
            let path = paths::data_file(metadata.location(), &partition_path);
            let file = write_data_file_with(
                file_io,
                &path,
                schema.clone(),
                &chunk,
                task.partition.clone(),
                task.spec_id,
                parquet.clone(),
            )
            .await?;
            added.push(file);
            let new_path: Arc<str> = Arc::from(path.as_str());
            for (new_pos, &(input, old_pos)) in
                survivors.origin[offset..offset + len].iter().enumerate()
            {
                let old = task.inputs[input as usize].planned.data_file.file_path();
                map.insert(old, old_pos, new_path.clone(), new_pos as i64);
            }
            offset += len;
        }
        Ok::<(), CompactError>(())
    }
    .await;
    if let Err(e) = written {
        delete_files(table, &added).await;
        return Err(e);
    }

    let rewrite = RewriteFiles {
        removed_data_files: task
            .inputs
            .iter()
            .map(|f| f.planned.data_file.clone())
            .collect(),
        added_data_files: added.clone(),
        removed_delete_files: Vec::new(),
        starting_snapshot_id: Some(start),
        position_map: Some(Arc::new(map)),
        properties: BTreeMap::from([(
            TASK_SUMMARY_KEY.to_string(),
            task.kind.as_str().to_string(),
        )]),
        commit_id: format!("{}:compact:{}", metadata.uuid(), uuid::Uuid::now_v7()),
    };
    match commit(committer, name, &rewrite).await {
        Ok(snapshot_id) => Ok(RewriteOutcome {
            files_rewritten: task.inputs.len() as u64,
            bytes_rewritten: input_bytes,
            files_written: added.len() as u64,
            bytes_written: added.iter().map(DataFile::file_size_in_bytes).sum(),
            deletes_applied: task.deletes(),
            snapshot_id,
        }),
        Err(e) => {
            // Delete the new files only if the commit is certainly not in the table.
            match catalog.load(name).await {
                Ok(now) => {
                    let landed = now.metadata().snapshots().find(|s| {
                        s.summary().additional_properties.get(summary::COMMIT_ID)
                            == Some(&rewrite.commit_id)
                    });
                    if let Some(s) = landed {
                        info!(table = %name, snapshot_id = s.snapshot_id(), "the rewrite landed despite the error");
                        return Ok(RewriteOutcome {
                            files_rewritten: task.inputs.len() as u64,
                            bytes_rewritten: input_bytes,
                            files_written: added.len() as u64,
                            bytes_written: added.iter().map(DataFile::file_size_in_bytes).sum(),
                            deletes_applied: task.deletes(),
                            snapshot_id: s.snapshot_id(),
                        });
                    }
                    delete_files(&now, &added).await;
                }
                Err(load) => {
                    warn!(table = %name, error = %load, "cannot check whether the failed rewrite landed; its files are left to orphan removal");
                }
            }
            Err(e)
        }
    }
}

/// Commits `rewrite`, repeating the whole commit (same id) a few rounds when it lost every race.
async fn commit(committer: &Committer, name: &TableName, rewrite: &RewriteFiles) -> Result<i64> {
    let mut round = 0;
    loop {
        round += 1;
        match committer.commit_rewrite(name, rewrite).await {
            Ok(c) => return Ok(c.snapshot_id),
            Err(e) if e.is_retryable() && round < COMMIT_ROUNDS => {
                warn!(table = %name, round, error = %e, "rewrite commit lost its races; trying again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(round))).await;
            }
            Err(unitable_core::commit::CommitError::CommitConflict { .. }) => {
                return Err(CompactError::Starved {
                    table: name.clone(),
                    rounds: round,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn delete_files(table: &Table, files: &[DataFile]) {
    for f in files {
        if let Err(e) = table.file_io().delete(f.file_path()).await {
            warn!(path = f.file_path(), error = %e, "cannot delete an uncommitted compaction output; orphan removal will");
        }
    }
}

fn bad(name: &TableName, path: &str, e: &dyn std::fmt::Display) -> CompactError {
    CompactError::DataFile {
        table: name.clone(),
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// Decodes a data file, keeps the rows not in `deleted`, and reshapes them to the table's
/// current schema (columns matched by field id; columns the file predates are null).
fn read_live_rows(
    name: &TableName,
    path: &str,
    bytes: bytes::Bytes,
    deleted: &std::collections::BTreeSet<i64>,
    target: &ArrowSchemaRef,
) -> Result<(RecordBatch, Vec<i64>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| bad(name, path, &e))?;
    let mut out = Vec::new();
    let mut positions = Vec::new();
    let mut pos: i64 = 0;
    for batch in reader {
        let batch = batch.map_err(|e| bad(name, path, &e))?;
        let keep: Vec<u32> = (0..batch.num_rows() as u32)
            .filter(|i| !deleted.contains(&(pos + i64::from(*i))))
            .collect();
        positions.extend(keep.iter().map(|i| pos + i64::from(*i)));
        pos += batch.num_rows() as i64;
        let batch = if keep.len() == batch.num_rows() {
            batch
        } else {
            let indices = UInt32Array::from(keep);
            let columns = batch
                .columns()
                .iter()
                .map(|c| take(c, &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(name, path, &e))?;
            RecordBatch::try_new(batch.schema(), columns).map_err(|e| bad(name, path, &e))?
        };
        out.push(reshape(name, path, &batch, target)?);
    }
    let batch = concat_batches(target, &out).map_err(|e| bad(name, path, &e))?;
    Ok((batch, positions))
}

fn field_id(field: &arrow::datatypes::Field) -> Option<&str> {
    field
        .metadata()
        .get(PARQUET_FIELD_ID_META_KEY)
        .map(String::as_str)
}

fn reshape(
    name: &TableName,
    path: &str,
    batch: &RecordBatch,
    target: &ArrowSchemaRef,
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let found = field_id(field)
            .and_then(|id| schema.fields().iter().position(|f| field_id(f) == Some(id)));
        let column = match found {
            Some(i) => {
                let c = batch.column(i);
                if c.data_type() == field.data_type() {
                    c.clone()
                } else {
                    cast(c, field.data_type()).map_err(|e| bad(name, path, &e))?
                }
            }
            None => new_null_array(field.data_type(), batch.num_rows()),
        };
        columns.push(column);
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| bad(name, path, &e))
}

/// Sorts rows by the table's default sort order (its identity fields); unsorted tables keep the
/// input order.
fn sort_rows(
    name: &TableName,
    metadata: &iceberg::spec::TableMetadata,
    survivors: Survivors,
) -> Result<Survivors> {
    let order = metadata.default_sort_order();
    let schema = survivors.batch.schema();
    let mut columns = Vec::new();
    let mut seen = HashSet::new();
    for field in &order.fields {
        if field.transform != Transform::Identity || !seen.insert(field.source_id) {
            continue;
        }
        let id = field.source_id.to_string();
        let Some(i) = schema
            .fields()
            .iter()
            .position(|f| field_id(f) == Some(id.as_str()))
        else {
            continue;
        };
        columns.push(SortColumn {
            values: survivors.batch.column(i).clone(),
            options: Some(SortOptions {
                descending: field.direction == SortDirection::Descending,
                nulls_first: field.null_order == NullOrder::First,
            }),
        });
    }
    if columns.is_empty() || survivors.batch.num_rows() < 2 {
        return Ok(survivors);
    }
    let location = metadata.location();
    let indices = lexsort_to_indices(&columns, None).map_err(|e| bad(name, location, &e))?;
    let sorted = survivors
        .batch
        .columns()
        .iter()
        .map(|c| take(c, &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(name, location, &e))?;
    let batch = RecordBatch::try_new(schema, sorted).map_err(|e| bad(name, location, &e))?;
    let origin = indices
        .values()
        .iter()
        .map(|&i| survivors.origin[i as usize])
        .collect();
    Ok(Survivors { batch, origin })
}
