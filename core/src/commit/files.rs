//! Writing the files a commit adds: Parquet data files and Parquet position-delete files, with
//! the column metrics (value counts, null counts, lower and upper bounds) that every Iceberg
//! engine uses for pruning; and reading a data file back.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, DataFile, NestedField, PrimitiveType, Schema, Struct, Type};
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

use super::{CommitError, CommitResult};

/// Field id of `file_path` in position-delete files (reserved by the Iceberg spec).
pub const DELETE_FILE_PATH_FIELD_ID: i32 = 2_147_483_546;
/// Field id of `pos` in position-delete files (reserved by the Iceberg spec).
pub const DELETE_POS_FIELD_ID: i32 = 2_147_483_545;

/// One deleted row: the data file and the row's 0-based position in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PositionDelete {
    /// The data file's full path, exactly as in its manifest entry.
    pub file_path: String,
    /// The row position in that file.
    pub pos: i64,
}

/// The Iceberg schema of position-delete files: `file_path: string`, `pos: long`.
pub fn position_delete_schema() -> CommitResult<Schema> {
    Schema::builder()
        .with_fields([
            Arc::new(NestedField::required(
                DELETE_FILE_PATH_FIELD_ID,
                "file_path",
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                DELETE_POS_FIELD_ID,
                "pos",
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
        .map_err(|e| CommitError::iceberg("build the position-delete schema", e))
}

fn field_with_id(name: &str, ty: DataType, id: i32) -> Field {
    Field::new(name, ty, false).with_metadata(HashMap::from([(
        PARQUET_FIELD_ID_META_KEY.to_string(),
        id.to_string(),
    )]))
}

/// Writes a position-delete file at `location` for `deletes` (sorted by path, then position,
/// as the spec requires; duplicates removed) in partition `partition` of spec `spec_id`.
/// `referenced_data_file` is set when every delete targets one data file.
pub async fn write_position_deletes(
    file_io: &FileIO,
    location: &str,
    mut deletes: Vec<PositionDelete>,
    partition: Struct,
    spec_id: i32,
) -> CommitResult<DataFile> {
    if deletes.is_empty() {
        return Err(CommitError::Invalid {
            reason: "a position-delete file needs at least one delete".into(),
        });
    }
    deletes.sort_unstable();
    deletes.dedup();
    let single_target = deletes
        .first()
        .filter(|first| deletes.iter().all(|d| d.file_path == first.file_path))
        .map(|d| d.file_path.clone());
    let arrow_schema = Arc::new(ArrowSchema::new(vec![
        field_with_id("file_path", DataType::Utf8, DELETE_FILE_PATH_FIELD_ID),
        field_with_id("pos", DataType::Int64, DELETE_POS_FIELD_ID),
    ]));
    let batch = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                deletes.iter().map(|d| d.file_path.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(deletes.iter().map(|d| d.pos))),
        ],
    )
    .map_err(|e| CommitError::Invalid {
        reason: format!("position-delete batch: {e}"),
    })?;
    // Delete files are read whole: default pages, and the dictionary that folds the repeated
    // `file_path` values.
    let props = zstd().build();
    let builder = write_parquet(
        file_io,
        location,
        Arc::new(position_delete_schema()?),
        &batch,
        props,
    )
    .await?;
    let mut builder = builder;
    builder
        .content(DataContentType::PositionDeletes)
        .partition(partition)
        .partition_spec_id(spec_id)
        .referenced_data_file(single_target);
    builder.build().map_err(|e| CommitError::Invalid {
        reason: format!("position-delete file metadata: {e}"),
    })
}

/// Writes `batch` (whose fields carry Iceberg field ids) as one Parquet data file at `location`
/// for table schema `schema`, in partition `partition` of spec `spec_id`, with
/// [`data_file_properties`].
pub async fn write_data_file(
    file_io: &FileIO,
    location: &str,
    schema: Arc<Schema>,
    batch: &RecordBatch,
    partition: Struct,
    spec_id: i32,
) -> CommitResult<DataFile> {
    write_data_file_with(
        file_io,
        location,
        schema,
        batch,
        partition,
        spec_id,
        data_file_properties(),
    )
    .await
}

/// The whole content of the file at `location`.
pub async fn read_bytes(file_io: &FileIO, location: &str) -> CommitResult<bytes::Bytes> {
    file_io
        .new_input(location)
        .map_err(|e| CommitError::iceberg(format!("open {location}"), e))?
        .read()
        .await
        .map_err(|e| CommitError::iceberg(format!("read {location}"), e))
}

/// Reads a Parquet data file back as Arrow batches, rows in file order (row positions are the
/// positions position deletes name).
pub async fn read_data_file(file_io: &FileIO, location: &str) -> CommitResult<Vec<RecordBatch>> {
    let bytes = read_bytes(file_io, location).await?;
    let bad = |e: &dyn std::fmt::Display| CommitError::Invalid {
        reason: format!("Parquet file {location}: {e}"),
    };
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(&e))?
        .map(|batch| batch.map_err(|e| bad(&e)))
        .collect()
}

/// Rows per data page of a data file.
pub const DATA_PAGE_ROWS: usize = 4096;

fn zstd() -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
}

/// How data files are written by default: ZSTD, pages of at most [`DATA_PAGE_ROWS`] rows, no
/// dictionary, page indexes on (the parquet default). Small plain pages let LOOKUP read one row
/// by decoding one page of each column instead of a dictionary page plus a 20k-row page
/// (one-row reads 4.6 ms -> 0.22 ms in `reader/examples/page-bench.rs`); scans cost the same
/// and the files are no larger (docs/benchmarks.md).
pub fn data_file_properties() -> WriterProperties {
    zstd()
        .set_data_page_row_count_limit(DATA_PAGE_ROWS)
        .set_write_batch_size(DATA_PAGE_ROWS)
        .set_dictionary_enabled(false)
        .build()
}

/// Iceberg's table property naming the Parquet codec of data files.
pub const COMPRESSION_CODEC: &str = "write.parquet.compression-codec";
/// Iceberg's table property for the codec's level (zstd, gzip).
pub const COMPRESSION_LEVEL: &str = "write.parquet.compression-level";
/// Iceberg's table property capping rows per data page.
pub const PAGE_ROW_LIMIT: &str = "write.parquet.page-row-limit";

/// How data files of a table with `properties` are written: [`data_file_properties`], with
/// Iceberg's standard `write.parquet.compression-codec` (`zstd`, `snappy`, `lz4` (LZ4_RAW),
/// `gzip`, `uncompressed`), `write.parquet.compression-level` and
/// `write.parquet.page-row-limit` honoured. An invalid value is an error naming the property.
pub fn data_file_properties_of(
    properties: &std::collections::HashMap<String, String>,
) -> Result<WriterProperties, String> {
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    let bad = |key: &str, value: &str, want: &str| {
        format!("table property {key} = `{value}` is invalid: {want}")
    };
    let level = match properties.get(COMPRESSION_LEVEL) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<i32>()
                .map_err(|_| bad(COMPRESSION_LEVEL, v, "want an integer"))?,
        ),
    };
    let codec = properties
        .get(COMPRESSION_CODEC)
        .map_or("zstd".to_string(), |v| v.trim().to_ascii_lowercase());
    let compression = match codec.as_str() {
        "zstd" => Compression::ZSTD(match level {
            None => ZstdLevel::default(),
            Some(l) => ZstdLevel::try_new(l)
                .map_err(|e| bad(COMPRESSION_LEVEL, &l.to_string(), &e.to_string()))?,
        }),
        "gzip" => Compression::GZIP(match level {
            None => GzipLevel::default(),
            Some(l) => GzipLevel::try_new(u32::try_from(l).unwrap_or(u32::MAX))
                .map_err(|e| bad(COMPRESSION_LEVEL, &l.to_string(), &e.to_string()))?,
        }),
        "snappy" => Compression::SNAPPY,
        "lz4" | "lz4_raw" => Compression::LZ4_RAW,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => {
            return Err(bad(
                COMPRESSION_CODEC,
                other,
                "want zstd, snappy, lz4, gzip or uncompressed",
            ));
        }
    };
    let page_rows = match properties.get(PAGE_ROW_LIMIT) {
        None => DATA_PAGE_ROWS,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(PAGE_ROW_LIMIT, v, "want a positive integer"))?,
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(page_rows.min(8192))
        .set_dictionary_enabled(false)
        .build())
}

/// Like [`write_data_file`], with the writer properties to use
/// ([`data_file_properties_of`] the table's properties).
#[allow(clippy::too_many_arguments)]
pub async fn write_data_file_with(
    file_io: &FileIO,
    location: &str,
    schema: Arc<Schema>,
    batch: &RecordBatch,
    partition: Struct,
    spec_id: i32,
    properties: WriterProperties,
) -> CommitResult<DataFile> {
    let mut builder = write_parquet(file_io, location, schema, batch, properties).await?;
    builder
        .content(DataContentType::Data)
        .partition(partition)
        .partition_spec_id(spec_id);
    builder.build().map_err(|e| CommitError::Invalid {
        reason: format!("data file metadata: {e}"),
    })
}

async fn write_parquet(
    file_io: &FileIO,
    location: &str,
    schema: Arc<Schema>,
    batch: &RecordBatch,
    props: WriterProperties,
) -> CommitResult<iceberg::spec::DataFileBuilder> {
    let output = file_io
        .new_output(location)
        .map_err(|e| CommitError::iceberg(format!("open {location}"), e))?;
    let mut writer = ParquetWriterBuilder::new(props, schema)
        .build(output)
        .await
        .map_err(|e| CommitError::iceberg(format!("create {location}"), e))?;
    writer
        .write(batch)
        .await
        .map_err(|e| CommitError::iceberg(format!("write {location}"), e))?;
    let mut builders = writer
        .close()
        .await
        .map_err(|e| CommitError::iceberg(format!("close {location}"), e))?;
    match builders.len() {
        1 => Ok(builders.remove(0)),
        n => Err(CommitError::Invalid {
            reason: format!("expected one Parquet file at {location}, the writer produced {n}"),
        }),
    }
}

/// Indexes of the top-level fields of `schema` (an Arrow schema read from a Parquet file)
/// whose Iceberg field id (the `PARQUET:field_id` metadata) is in `field_ids`, in schema order:
/// the roots to project when reading those columns by id, whatever their names in the file.
pub fn roots_with_field_ids(schema: &ArrowSchema, field_ids: &[i32]) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.metadata()
                .get(PARQUET_FIELD_ID_META_KEY)
                .and_then(|id| id.parse::<i32>().ok())
                .is_some_and(|id| field_ids.contains(&id))
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod properties_tests {
    use std::collections::HashMap;

    use parquet::basic::Compression;
    use parquet::schema::types::ColumnPath;

    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Result<WriterProperties, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        data_file_properties_of(&map)
    }

    #[test]
    fn table_properties_choose_codec_and_pages() {
        let col = ColumnPath::from("v");
        let default = of(&[]).unwrap();
        assert!(matches!(default.compression(&col), Compression::ZSTD(_)));
        assert_eq!(default.data_page_row_count_limit(), DATA_PAGE_ROWS);
        assert!(!default.dictionary_enabled(&col));
        let lz4 = of(&[(COMPRESSION_CODEC, "LZ4"), (PAGE_ROW_LIMIT, "500")]).unwrap();
        assert_eq!(lz4.compression(&col), Compression::LZ4_RAW);
        assert_eq!(lz4.data_page_row_count_limit(), 500);
        let zstd9 = of(&[(COMPRESSION_LEVEL, "9")]).unwrap();
        assert_eq!(
            zstd9.compression(&col),
            Compression::ZSTD(parquet::basic::ZstdLevel::try_new(9).unwrap())
        );
        for (pairs, names) in [
            (vec![(COMPRESSION_CODEC, "brotli9")], COMPRESSION_CODEC),
            (vec![(PAGE_ROW_LIMIT, "0")], PAGE_ROW_LIMIT),
            (vec![(COMPRESSION_LEVEL, "high")], COMPRESSION_LEVEL),
            (vec![(COMPRESSION_LEVEL, "99")], COMPRESSION_LEVEL),
        ] {
            let err = of(&pairs).unwrap_err();
            assert!(err.contains(names), "{err}");
        }
    }
}
