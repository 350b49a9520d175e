//! The changelog record formats `json-v1` and `avro-v1`: rows as Kafka-shaped records and back.
//!
//! A [`RecordCodec`] is built from a table definition, its Iceberg table uuid and schema id.
//! [`RecordCodec::encode`] turns an Arrow batch of rows into one [`ChangeRecord`] per row:
//!
//! - key: the primary-key columns as a compact JSON object in key order,
//!   `{"region":"eu","id":42}`; `None` for append-only tables. These bytes pick the partition
//!   ([`crate::bucket::bucket_of`]), so they are canonical: the same key values always give the
//!   same bytes, forever.
//! - value: the whole row as a JSON object in schema order (nulls as `null`) for inserts and
//!   upserts; `None` (a Kafka tombstone) for deletes.
//! - headers: `unitable.op` (`insert|upsert|delete`), `unitable.schema-id`,
//!   `unitable.table-uuid`.
//!
//! Rows that break the table's rules (a null in a required column, a decimal wider than its
//! precision) come back as [`RowError`]s while the other rows are encoded.
//! [`RecordCodec::decode`] is the exact inverse and also reads records from other writers
//! where their meaning is unambiguous. The byte-level specification, with the JSON form of
//! every type, is docs/changelog-format.md; this module is its reference implementation.
//!
//! A table whose changelog format is `avro-v1` writes the value as an Avro record in the
//! Confluent wire framing instead ([`avro`]); keys and headers are the same. Decoding reads
//! both forms whatever the table's format (an Avro value starts with the byte 0, which no JSON
//! text does).
//!
//! Inside: `encode` (Arrow columns -> JSON through the small writer in `json_write`),
//! `decode` (the pull reader in `json_read` -> typed values in `scalar` -> Arrow builders),
//! `convert` (calendar and decimal text forms).

pub mod avro;
mod convert;
mod decode;
mod encode;
mod history;
mod json_read;
mod json_write;
mod rows;
mod scalar;

pub use rows::{ParsedRows, json_lines};

#[cfg(test)]
mod avro_tests;
#[cfg(test)]
mod bench;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

use crate::bucket::bucket_of;
use crate::changelog::ChangeRecord;
use crate::error::{Error, Result};
use crate::offsets::{Offset, PartitionId};
use crate::table::{RecordFormat, TableDef};
use crate::types::ColumnType;

/// Header carrying the change operation: `insert`, `upsert` or `delete`.
pub const OP_HEADER: &str = "unitable.op";
/// Header carrying the Iceberg schema id the value was written with, in decimal.
pub const SCHEMA_ID_HEADER: &str = "unitable.schema-id";
/// Header carrying the Iceberg table uuid, so records of a dropped and re-created table with
/// the same name are never mistaken for the new table's.
pub const TABLE_UUID_HEADER: &str = "unitable.table-uuid";
/// Header carrying the client's request id, on records of writes that gave one (idempotent
/// writes): a retry finds out from it which records of an earlier attempt landed.
pub const REQUEST_ID_HEADER: &str = "unitable.request-id";

/// What a change record does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// A new row (the only operation of append-only tables).
    Insert,
    /// Insert or replace the row with this key.
    Upsert,
    /// Delete the row with this key (the value is a tombstone).
    Delete,
}

impl ChangeOp {
    /// The header value: `insert`, `upsert` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
        }
    }

    /// The operation named by a header value (exactly as [`ChangeOp::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "insert" => Some(ChangeOp::Insert),
            "upsert" => Some(ChangeOp::Upsert),
            "delete" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One encoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The row's index in the input batch.
    pub row: usize,
    /// The changelog partition it belongs in.
    pub partition: PartitionId,
    /// The record.
    pub record: ChangeRecord,
}

/// An encoded key (see [`RecordCodec::encode_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedKey {
    /// The row's index in the input batch.
    pub row: usize,
    /// The partition the key's records live in.
    pub partition: PartitionId,
    /// The canonical key bytes.
    pub key: Bytes,
}

/// A row that could not be encoded; the rest of its batch still is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}{}: {reason}", InField(.field.as_deref()))]
pub struct RowError {
    /// The row's index in the input batch.
    pub row: usize,
    /// The column at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong, for the user.
    pub reason: String,
}

/// A batch that does not fit the table at all (as opposed to single bad rows).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A batch column is missing, unknown, duplicated or of the wrong type.
    #[error("table `{table}`: batch column `{column}`: {reason}")]
    BatchMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What does not fit.
        reason: String,
    },
    /// Upserts and deletes need a primary key.
    #[error("table `{table}` has no primary key: it takes inserts only, not {op}")]
    NeedsPrimaryKey {
        /// The table.
        table: String,
        /// The operation asked for.
        op: ChangeOp,
    },
}

/// Records that cannot be decoded as this table's rows.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A record is malformed or does not fit the table.
    #[error("table `{table}`: changelog record at offset {offset}{}: {reason}", InField(.field.as_deref()))]
    Record {
        /// The table.
        table: String,
        /// The record's offset in its partition.
        offset: Offset,
        /// The column or header at fault, when there is one.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The decoded columns could not be assembled into a batch (a bug, never bad input).
    #[error("table `{table}`: assembling the decoded batch failed: {source}")]
    Batch {
        /// The table.
        table: String,
        /// Arrow's error.
        #[source]
        source: ArrowError,
    },
}

/// Formats ` (field `x`)` for error messages.
struct InField<'a>(Option<&'a str>);

impl fmt::Display for InField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, ", field `{field}`"),
            None => Ok(()),
        }
    }
}

/// Decoded records: one row per record, in input order.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    /// Each row's operation.
    pub ops: Vec<ChangeOp>,
    /// Each row's record offset.
    pub offsets: Vec<Offset>,
    /// Each row's record timestamp (milliseconds since the epoch).
    pub timestamps_ms: Vec<i64>,
    /// The rows, with [`RecordCodec::decoded_schema`]: a delete row has its key columns set
    /// and every other column null.
    pub batch: RecordBatch,
}

/// One column as the codec sees it.
#[derive(Debug)]
struct ColumnInfo {
    name: String,
    field_id: i32,
    ty: ColumnType,
    required: bool,
    /// `"name":`, ready to copy into a JSON object.
    json_name: Vec<u8>,
}

/// Encodes and decodes one table's changelog records (`json-v1`, or `avro-v1` values).
///
/// Built once per table schema and shared (it is `Send + Sync`); encoding and decoding take
/// `&self`.
#[derive(Debug)]
pub struct RecordCodec {
    table: String,
    columns: Vec<ColumnInfo>,
    /// Indices into `columns` of the primary key, in key order.
    key: Vec<usize>,
    /// Column index by name.
    by_name: HashMap<String, usize>,
    buckets: u32,
    schema: SchemaRef,
    decoded_schema: SchemaRef,
    schema_id: i32,
    schema_id_header: Bytes,
    table_uuid_header: Bytes,
    /// How values are written (decoding reads both forms).
    format: RecordFormat,
    /// The framing that starts every `avro-v1` value: magic byte and schema id.
    avro_frame: [u8; avro::FRAME_LEN],
    /// Earlier schemas of the table, for records written under them ([`RecordCodec::with_history`]).
    history: history::History,
    /// Append-only tables put each encoded batch into the next partition in turn.
    next_partition: AtomicU32,
}

impl RecordCodec {
    /// A codec for `def` as of Iceberg schema `schema_id`, stamping records with `table_uuid`.
    ///
    /// Fails only for a definition [`TableDef::new`] would not have built (a primary-key
    /// column that is not a column).
    pub fn new(def: &TableDef, table_uuid: &str, schema_id: i32) -> Result<Self> {
        let mut columns = Vec::with_capacity(def.columns.len());
        let mut by_name = HashMap::with_capacity(def.columns.len());
        let mut fields = Vec::with_capacity(def.columns.len());
        let mut decoded_fields = Vec::with_capacity(def.columns.len());
        for (i, column) in def.columns.iter().enumerate() {
            if by_name.insert(column.name.clone(), i).is_some() {
                return Err(Error::invalid_definition(
                    &def.name,
                    format!("column `{}` is declared twice", column.name),
                ));
            }
            let is_key = def.primary_key.contains(&column.name);
            let mut json_name = Vec::with_capacity(column.name.len() + 3);
            json_write::write_str(&mut json_name, &column.name);
            json_name.push(b':');
            let field = Field::new(&column.name, column.ty.to_arrow(), !column.required)
                .with_metadata(HashMap::from([(
                    PARQUET_FIELD_ID_META_KEY.to_string(),
                    column.field_id.to_string(),
                )]));
            decoded_fields.push(field.clone().with_nullable(!is_key || !column.required));
            fields.push(field);
            columns.push(ColumnInfo {
                name: column.name.clone(),
                field_id: column.field_id,
                ty: column.ty,
                required: column.required,
                json_name,
            });
        }
        let key = def
            .primary_key
            .iter()
            .map(|name| {
                by_name.get(name).copied().ok_or_else(|| {
                    Error::invalid_definition(
                        &def.name,
                        format!("primary-key column `{name}` is not a column"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordCodec {
            table: def.name.to_string(),
            columns,
            key,
            by_name,
            buckets: def.buckets.max(1),
            schema: Arc::new(Schema::new(fields)),
            decoded_schema: Arc::new(Schema::new(decoded_fields)),
            schema_id,
            schema_id_header: Bytes::from(schema_id.to_string()),
            table_uuid_header: Bytes::copy_from_slice(table_uuid.as_bytes()),
            format: def.changelog.format,
            avro_frame: avro_frame(avro::schema_id(table_uuid, schema_id)),
            history: history::History::default(),
            next_partition: AtomicU32::new(0),
        })
    }

    /// The table's columns as Arrow fields: types from [`ColumnType::to_arrow`], nullable
    /// unless required, field id in the `PARQUET:field_id` metadata (iceberg-rust's
    /// convention). Batches given to [`RecordCodec::encode`] have these columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The table (`namespace.table`) whose records this codec encodes and decodes.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema of [`DecodedBatch::batch`]: [`RecordCodec::arrow_schema`] with every
    /// non-key column nullable, since a delete row carries only its key.
    pub fn decoded_schema(&self) -> SchemaRef {
        self.decoded_schema.clone()
    }

    /// The schema id stamped on encoded records.
    pub fn schema_id(&self) -> i32 {
        self.schema_id
    }

    /// The format values are written in.
    pub fn format(&self) -> RecordFormat {
        self.format
    }

    /// The schema id in the framing of `avro-v1` values this codec writes
    /// ([`avro::schema_id`]).
    pub fn avro_schema_id(&self) -> u32 {
        u32::from_be_bytes([
            self.avro_frame[1],
            self.avro_frame[2],
            self.avro_frame[3],
            self.avro_frame[4],
        ])
    }

    /// Whether the table has no primary key (records have no key and are only inserts).
    pub fn is_append_only(&self) -> bool {
        self.key.is_empty()
    }

    /// The partition of a record with these key bytes ([`bucket_of`] over the table's
    /// buckets).
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        PartitionId(bucket_of(key, self.buckets))
    }

    fn mismatch(&self, column: &str, reason: impl Into<String>) -> EncodeError {
        EncodeError::BatchMismatch {
            table: self.table.clone(),
            column: column.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether a batch column of type `found` can be read as column type `ty`: its own Arrow
    /// type, `Binary` as well as `LargeBinary`, and timestamps with any zone name for
    /// timestamptz (Arrow timestamps with a zone hold UTC instants).
    fn accepts(ty: ColumnType, found: &DataType) -> bool {
        match (ty, found) {
            (ColumnType::Binary, DataType::Binary) => true,
            (ColumnType::TimestampTz, DataType::Timestamp(TimeUnit::Microsecond, Some(_))) => true,
            _ => ty.to_arrow() == *found,
        }
    }
}

fn avro_frame(id: u32) -> [u8; avro::FRAME_LEN] {
    let id = id.to_be_bytes();
    [avro::MAGIC, id[0], id[1], id[2], id[3]]
}
