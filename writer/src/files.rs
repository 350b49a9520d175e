//! Turning a batch of rows into data files, and position deletes into delete files, following
//! the table's partition spec and target file size.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal, schema_to_arrow_schema};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, Literal, PartitionSpecRef, SchemaRef, Struct, StructType, TableMetadata,
};
use parquet::file::properties::WriterProperties;
use unitable_core::commit::files::{
    PositionDelete, data_file_properties, data_file_properties_of, write_data_file_with,
    write_position_deletes,
};
use unitable_core::naming::paths;

use crate::error::{WriteError, WriteResult};

/// What the committer needs to know about a table's current layout.
pub(crate) struct Layout {
    location: String,
    schema: SchemaRef,
    arrow_schema: ArrowSchemaRef,
    spec: PartitionSpecRef,
    partitioning: Option<(PartitionValueCalculator, StructType)>,
    target_file_bytes: u64,
    /// Parquet settings from the table's `write.parquet.*` properties.
    parquet: WriterProperties,
}

/// A written data file and, for each of its row positions, the row of the input batch.
pub(crate) struct WrittenFile {
    pub(crate) data_file: DataFile,
    pub(crate) rows: Vec<u32>,
}

impl Layout {
    /// The layout of `metadata`'s current schema and default partition spec.
    pub(crate) fn of(metadata: &TableMetadata, target_file_bytes: u64) -> WriteResult<Self> {
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().clone();
        let arrow_schema = Arc::new(
            schema_to_arrow_schema(&schema).map_err(|e| WriteError::iceberg("map schema", e))?,
        );
        let partitioning = if spec.is_unpartitioned() {
            None
        } else {
            let calculator = PartitionValueCalculator::try_new(&spec, &schema)
                .map_err(|e| WriteError::iceberg("prepare partitioning", e))?;
            let ty = spec
                .partition_type(&schema)
                .map_err(|e| WriteError::iceberg("partition type", e))?;
            Some((calculator, ty))
        };
        let parquet = data_file_properties_of(metadata.properties()).unwrap_or_else(|e| {
            tracing::warn!(location = %metadata.location(), "{e}; writing with the defaults");
            data_file_properties()
        });
        Ok(Self {
            location: metadata.location().to_string(),
            schema,
            arrow_schema,
            spec,
            partitioning,
            target_file_bytes: target_file_bytes.max(1),
            parquet,
        })
    }

    /// The partition spec id of the files this layout writes.
    pub(crate) fn spec_id(&self) -> i32 {
        self.spec.spec_id()
    }

    /// Writes `batch` (columns in table order) as data files: one group per partition, each
    /// cut into files of about the target size.
    pub(crate) async fn write_rows(
        &self,
        file_io: &FileIO,
        batch: &RecordBatch,
    ) -> WriteResult<Vec<WrittenFile>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let batch = RecordBatch::try_new(self.arrow_schema.clone(), batch.columns().to_vec())
            .map_err(|e| WriteError::Internal {
                reason: format!("rows do not fit the table schema: {e}"),
            })?;
        let mut out = Vec::new();
        for (partition, rows) in self.split(&batch)? {
            let part_batch = take_rows(&batch, &rows)?;
            let row_bytes = (part_batch.get_array_memory_size() / rows.len().max(1)).max(1) as u64;
            let per_file = (self.target_file_bytes / row_bytes).max(1) as usize;
            let partition_path = self.spec.partition_to_path(&partition, self.schema.clone());
            for start in (0..rows.len()).step_by(per_file) {
                let end = (start + per_file).min(rows.len());
                let chunk = part_batch.slice(start, end - start);
                let path = paths::data_file(&self.location, &partition_path);
                let data_file = write_data_file_with(
                    file_io,
                    &path,
                    self.schema.clone(),
                    &chunk,
                    partition.clone(),
                    self.spec.spec_id(),
                    self.parquet.clone(),
                )
                .await?;
                out.push(WrittenFile {
                    data_file,
                    rows: rows[start..end].to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Row indexes of `batch` per partition value, in row order within each.
    fn split(&self, batch: &RecordBatch) -> WriteResult<Vec<(Struct, Vec<u32>)>> {
        let all: Vec<u32> = (0..batch.num_rows() as u32).collect();
        let Some((calculator, ty)) = &self.partitioning else {
            return Ok(vec![(Struct::empty(), all)]);
        };
        let values = calculator
            .calculate(batch)
            .map_err(|e| WriteError::iceberg("compute partition values", e))?;
        let literals = arrow_struct_to_literal(&values, ty)
            .map_err(|e| WriteError::iceberg("read partition values", e))?;
        let mut groups: Vec<(Struct, Vec<u32>)> = Vec::new();
        let mut by_value: HashMap<Struct, usize> = HashMap::new();
        for (row, literal) in literals.into_iter().enumerate() {
            let value = match literal {
                Some(Literal::Struct(s)) => s,
                other => {
                    return Err(WriteError::Internal {
                        reason: format!("row {row} has no partition struct: {other:?}"),
                    });
                }
            };
            let at = *by_value.entry(value.clone()).or_insert_with(|| {
                groups.push((value, Vec::new()));
                groups.len() - 1
            });
            groups[at].1.push(row as u32);
        }
        Ok(groups)
    }

    /// Writes position deletes, one delete file per partition (deletes live in the partition
    /// of the data file they target).
    pub(crate) async fn write_deletes(
        &self,
        file_io: &FileIO,
        deletes: HashMap<(i32, Struct), Vec<PositionDelete>>,
    ) -> WriteResult<Vec<DataFile>> {
        let mut out = Vec::with_capacity(deletes.len());
        for ((spec_id, partition), deletes) in deletes {
            // The directory is cosmetic (readers go by the manifest); delete files of every
            // partition sit beside the unpartitioned data files.
            let path = paths::delete_file(&self.location, "");
            out.push(write_position_deletes(file_io, &path, deletes, partition, spec_id).await?);
        }
        Ok(out)
    }
}

/// The rows `rows` of `batch`, in that order (the batch itself when that is all of it).
pub(crate) fn take_rows(batch: &RecordBatch, rows: &[u32]) -> WriteResult<RecordBatch> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, &r)| i as u32 == r) {
        return Ok(batch.clone());
    }
    take_record_batch(batch, &UInt32Array::from(rows.to_vec())).map_err(|e| WriteError::Internal {
        reason: format!("select rows: {e}"),
    })
}
