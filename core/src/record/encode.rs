//! Arrow rows -> change records.
//!
//! Each batch is checked against the table once (column names and types), then every row is
//! written straight from the typed Arrow arrays into two growing buffers, one for keys and
//! one for values. A row that fails validation is cut back out of the buffers and reported;
//! at the end each record's key and value are cheap slices of the two shared buffers.

use std::ops::Range;
use std::sync::atomic::Ordering;

use arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, LargeBinaryArray, StringArray, TimestampMicrosecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use super::avro;
use super::convert::decimal_bound;
use super::json_write as w;
use super::{
    ChangeOp, ColumnInfo, EncodeError, EncodedKey, EncodedRow, OP_HEADER, RecordCodec, RowError,
    SCHEMA_ID_HEADER, TABLE_UUID_HEADER,
};
use crate::changelog::ChangeRecord;
use crate::offsets::PartitionId;
use crate::table::RecordFormat;
use crate::types::ColumnType;

/// A batch column, downcast to its concrete array type.
enum Values<'a> {
    Bool(&'a BooleanArray),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    Decimal {
        array: &'a Decimal128Array,
        scale: u32,
        /// 10^precision: the smallest magnitude that does not fit.
        bound: i128,
    },
    Utf8(&'a StringArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    Date(&'a Date32Array),
    Timestamp {
        array: &'a TimestampMicrosecondArray,
        utc: bool,
    },
}

/// A table column bound to its batch column.
struct Bound<'a> {
    info: &'a ColumnInfo,
    values: Values<'a>,
    nulls: Option<&'a NullBuffer>,
}

impl<'a> Bound<'a> {
    fn new(info: &'a ColumnInfo, array: &'a dyn Array) -> Option<Self> {
        let values = match info.ty {
            ColumnType::Bool => Values::Bool(array.as_boolean_opt()?),
            ColumnType::Int32 => Values::Int32(array.as_primitive_opt::<Int32Type>()?),
            ColumnType::Int64 => Values::Int64(array.as_primitive_opt::<Int64Type>()?),
            ColumnType::Float32 => Values::Float32(array.as_primitive_opt::<Float32Type>()?),
            ColumnType::Float64 => Values::Float64(array.as_primitive_opt::<Float64Type>()?),
            ColumnType::Decimal { precision, scale } => Values::Decimal {
                array: array.as_primitive_opt::<Decimal128Type>()?,
                scale,
                bound: decimal_bound(precision),
            },
            ColumnType::String => Values::Utf8(array.as_string_opt::<i32>()?),
            ColumnType::Binary => match array.as_binary_opt::<i64>() {
                Some(large) => Values::LargeBinary(large),
                None => Values::Binary(array.as_binary_opt::<i32>()?),
            },
            ColumnType::Date => Values::Date(array.as_primitive_opt::<Date32Type>()?),
            ColumnType::Timestamp | ColumnType::TimestampTz => Values::Timestamp {
                array: array.as_primitive_opt::<TimestampMicrosecondType>()?,
                utc: info.ty == ColumnType::TimestampTz,
            },
        };
        Some(Bound {
            info,
            values,
            nulls: array.nulls(),
        })
    }

    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|n| n.is_null(row))
    }

    /// Writes the (non-null) value at `row` as JSON.
    fn write(&self, row: usize, buf: &mut Vec<u8>) -> Result<(), String> {
        match self.values {
            Values::Bool(a) => buf.extend_from_slice(if a.value(row) { b"true" } else { b"false" }),
            Values::Int32(a) => w::write_i64(buf, i64::from(a.value(row))),
            Values::Int64(a) => w::write_i64(buf, a.value(row)),
            Values::Float32(a) => w::write_f32(buf, a.value(row)),
            Values::Float64(a) => w::write_f64(buf, a.value(row)),
            Values::Decimal {
                array,
                scale,
                bound,
            } => {
                let v = array.value(row);
                if v >= bound || v <= -bound {
                    return Err(format!(
                        "decimal value {v} (unscaled) has more digits than the column's precision"
                    ));
                }
                w::write_decimal(buf, v, scale);
            }
            Values::Utf8(a) => w::write_str(buf, a.value(row)),
            Values::Binary(a) => w::write_base64(buf, a.value(row)),
            Values::LargeBinary(a) => w::write_base64(buf, a.value(row)),
            Values::Date(a) => w::write_date(buf, a.value(row)),
            Values::Timestamp { array, utc } => w::write_timestamp(buf, array.value(row), utc),
        }
        Ok(())
    }
}

impl Bound<'_> {
    /// Writes the (non-null) value at `row` as Avro binary (see [`avro`]).
    fn write_avro(&self, row: usize, buf: &mut Vec<u8>) -> Result<(), String> {
        match self.values {
            Values::Bool(a) => buf.push(u8::from(a.value(row))),
            Values::Int32(a) => avro::put_long(buf, i64::from(a.value(row))),
            Values::Int64(a) => avro::put_long(buf, a.value(row)),
            Values::Float32(a) => buf.extend_from_slice(&a.value(row).to_le_bytes()),
            Values::Float64(a) => buf.extend_from_slice(&a.value(row).to_le_bytes()),
            Values::Decimal { array, bound, .. } => {
                let v = array.value(row);
                if v >= bound || v <= -bound {
                    return Err(format!(
                        "decimal value {v} (unscaled) has more digits than the column's precision"
                    ));
                }
                avro::put_decimal(buf, v);
            }
            Values::Utf8(a) => avro::put_bytes(buf, a.value(row).as_bytes()),
            Values::Binary(a) => avro::put_bytes(buf, a.value(row)),
            Values::LargeBinary(a) => avro::put_bytes(buf, a.value(row)),
            Values::Date(a) => avro::put_long(buf, i64::from(a.value(row))),
            Values::Timestamp { array, .. } => avro::put_long(buf, array.value(row)),
        }
        Ok(())
    }
}

/// Where one row's key and value landed in the shared buffers.
struct Span {
    row: usize,
    key: Range<usize>,
    value: Range<usize>,
}

impl RecordCodec {
    /// Binds the table's columns to `batch`'s columns by name. Every table column must be
    /// present unless `keys_only`, in which case only the key columns must be (other
    /// columns present are checked and ignored).
    fn bind<'a>(
        &'a self,
        batch: &'a RecordBatch,
        keys_only: bool,
    ) -> Result<Vec<Option<Bound<'a>>>, EncodeError> {
        let mut bound: Vec<Option<Bound<'a>>> = self.columns.iter().map(|_| None).collect();
        for (field, array) in batch.schema_ref().fields().iter().zip(batch.columns()) {
            let name = field.name();
            let Some(&i) = self.by_name.get(name.as_str()) else {
                return Err(self.mismatch(name, "the table has no such column"));
            };
            let info = &self.columns[i];
            if bound[i].is_some() {
                return Err(self.mismatch(name, "appears twice in the batch"));
            }
            let found = array.data_type();
            let Some(b) = Self::accepts(info.ty, found)
                .then(|| Bound::new(info, array.as_ref()))
                .flatten()
            else {
                return Err(self.mismatch(
                    name,
                    format!(
                        "has Arrow type {found}, but the column is {} ({})",
                        info.ty,
                        info.ty.to_arrow()
                    ),
                ));
            };
            bound[i] = Some(b);
        }
        for (i, (b, info)) in bound.iter().zip(&self.columns).enumerate() {
            if b.is_none() && (!keys_only || self.key.contains(&i)) {
                return Err(self.mismatch(&info.name, "missing from the batch"));
            }
        }
        Ok(bound)
    }

    /// Writes row `row`'s key object; the key columns are bound.
    fn write_key(
        &self,
        cols: &[Option<Bound<'_>>],
        row: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        buf.push(b'{');
        for (n, &i) in self.key.iter().enumerate() {
            let Some(b) = &cols[i] else {
                return Err(row_error(row, &self.columns[i], "missing from the batch"));
            };
            if n > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(&b.info.json_name);
            if b.is_null(row) {
                return Err(row_error(row, b.info, "primary-key column is null"));
            }
            b.write(row, buf).map_err(|e| row_error(row, b.info, e))?;
        }
        buf.push(b'}');
        Ok(())
    }

    /// Writes row `row`'s value object; every column is bound.
    fn write_value(
        &self,
        cols: &[Option<Bound<'_>>],
        row: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        buf.push(b'{');
        for (i, (b, info)) in cols.iter().zip(&self.columns).enumerate() {
            let Some(b) = b else {
                return Err(row_error(row, info, "missing from the batch"));
            };
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(&info.json_name);
            if b.is_null(row) {
                if info.required {
                    return Err(row_error(row, info, "null in a required (not null) column"));
                }
                buf.extend_from_slice(b"null");
            } else {
                b.write(row, buf).map_err(|e| row_error(row, info, e))?;
            }
        }
        buf.push(b'}');
        Ok(())
    }

    /// Writes row `row`'s value as a framed Avro record; every column is bound.
    fn write_avro_value(
        &self,
        cols: &[Option<Bound<'_>>],
        row: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        buf.extend_from_slice(&self.avro_frame);
        for (b, info) in cols.iter().zip(&self.columns) {
            let Some(b) = b else {
                return Err(row_error(row, info, "missing from the batch"));
            };
            let null = b.is_null(row);
            if info.required {
                if null {
                    return Err(row_error(row, info, "null in a required (not null) column"));
                }
            } else {
                // The union ["null", T]: branch 0 or 1.
                avro::put_long(buf, i64::from(!null));
                if null {
                    continue;
                }
            }
            b.write_avro(row, buf)
                .map_err(|e| row_error(row, info, e))?;
        }
        Ok(())
    }

    /// Encodes every row of `batch` as a change record of `op`, stamped `timestamp_ms`.
    ///
    /// For inserts and upserts `batch` has every table column (matched by name, any order,
    /// types as in [`RecordCodec::arrow_schema`]; nullability is checked per row, not from
    /// the schema). For deletes it needs only the key columns. Rows that cannot be encoded
    /// come back as [`RowError`]s and the others are still encoded; a batch that does not
    /// fit the table, or an upsert or delete on an append-only table, is an [`EncodeError`].
    ///
    /// Keyed rows go to the partition of their key. Append-only tables put the whole batch
    /// in one partition, the next one in turn for each call.
    pub fn encode(
        &self,
        op: ChangeOp,
        batch: &RecordBatch,
        timestamp_ms: i64,
    ) -> Result<(Vec<EncodedRow>, Vec<RowError>), EncodeError> {
        if self.is_append_only() && op != ChangeOp::Insert {
            return Err(EncodeError::NeedsPrimaryKey {
                table: self.table.clone(),
                op,
            });
        }
        let delete = op == ChangeOp::Delete;
        let cols = self.bind(batch, delete)?;
        let rows = batch.num_rows();
        let mut keys = Vec::with_capacity(if self.is_append_only() { 0 } else { rows * 16 });
        let mut values = Vec::with_capacity(if delete { 0 } else { rows * 32 * cols.len() });
        let mut spans = Vec::with_capacity(rows);
        let mut errors = Vec::new();
        for row in 0..rows {
            let (key_start, value_start) = (keys.len(), values.len());
            let mut result = Ok(());
            if !self.is_append_only() {
                result = self.write_key(&cols, row, &mut keys);
            }
            if result.is_ok() && !delete {
                result = match self.format {
                    RecordFormat::JsonV1 => self.write_value(&cols, row, &mut values),
                    RecordFormat::AvroV1 => self.write_avro_value(&cols, row, &mut values),
                };
            }
            match result {
                Ok(()) => spans.push(Span {
                    row,
                    key: key_start..keys.len(),
                    value: value_start..values.len(),
                }),
                Err(e) => {
                    keys.truncate(key_start);
                    values.truncate(value_start);
                    errors.push(e);
                }
            }
        }

        let keys = Bytes::from(keys);
        let values = Bytes::from(values);
        let sticky = if self.is_append_only() && !spans.is_empty() {
            PartitionId(self.next_partition.fetch_add(1, Ordering::Relaxed) % self.buckets)
        } else {
            PartitionId(0)
        };
        let op_header = Bytes::from_static(op.as_str().as_bytes());
        let encoded = spans
            .into_iter()
            .map(|span| {
                let key = (!self.is_append_only()).then(|| keys.slice(span.key));
                EncodedRow {
                    row: span.row,
                    partition: key.as_deref().map_or(sticky, |k| self.partition_of(k)),
                    record: ChangeRecord {
                        key,
                        value: (!delete).then(|| values.slice(span.value)),
                        headers: vec![
                            (OP_HEADER.to_string(), op_header.clone()),
                            (SCHEMA_ID_HEADER.to_string(), self.schema_id_header.clone()),
                            (
                                TABLE_UUID_HEADER.to_string(),
                                self.table_uuid_header.clone(),
                            ),
                        ],
                        timestamp_ms,
                    },
                }
            })
            .collect();
        Ok((encoded, errors))
    }

    /// The canonical key bytes and partition of every row of `batch`, which needs the key
    /// columns (others are checked and ignored), e.g. to find the partition to read for a key
    /// lookup. Rows with a null key column come back as errors.
    pub fn encode_keys(
        &self,
        batch: &RecordBatch,
    ) -> Result<(Vec<EncodedKey>, Vec<RowError>), EncodeError> {
        if self.is_append_only() {
            return Err(EncodeError::NeedsPrimaryKey {
                table: self.table.clone(),
                op: ChangeOp::Delete,
            });
        }
        let cols = self.bind(batch, true)?;
        let mut buf = Vec::with_capacity(64);
        let mut keys = Vec::with_capacity(batch.num_rows());
        let mut errors = Vec::new();
        for row in 0..batch.num_rows() {
            buf.clear();
            match self.write_key(&cols, row, &mut buf) {
                Ok(()) => keys.push(EncodedKey {
                    row,
                    partition: self.partition_of(&buf),
                    key: Bytes::copy_from_slice(&buf),
                }),
                Err(e) => errors.push(e),
            }
        }
        Ok((keys, errors))
    }
}

impl RecordCodec {
    /// Calls `f` with each row's canonical key bytes (as [`RecordCodec::encode_keys`] gives
    /// them), written into one reused buffer: for probing key sets without an allocation and a
    /// partition hash per row. Rows whose key cannot be encoded are returned as errors.
    pub fn for_each_key(
        &self,
        batch: &RecordBatch,
        mut f: impl FnMut(usize, &[u8]),
    ) -> Result<Vec<RowError>, EncodeError> {
        if self.is_append_only() {
            return Err(EncodeError::NeedsPrimaryKey {
                table: self.table.clone(),
                op: ChangeOp::Delete,
            });
        }
        let cols = self.bind(batch, true)?;
        let mut buf = Vec::with_capacity(64);
        let mut errors = Vec::new();
        for row in 0..batch.num_rows() {
            buf.clear();
            match self.write_key(&cols, row, &mut buf) {
                Ok(()) => f(row, &buf),
                Err(e) => errors.push(e),
            }
        }
        Ok(errors)
    }
}

impl RecordCodec {
    /// Whether the primary key is one `int32` or `int64` column: then every canonical key this
    /// codec writes is `{"<name>":<integer>}` and [`RecordCodec::integer_key`] reads it.
    pub fn has_integer_key(&self) -> bool {
        matches!(self.key[..], [k] if matches!(self.columns[k].ty, ColumnType::Int32 | ColumnType::Int64))
    }

    /// The value of a one-integer-column primary key in a canonical key (as
    /// [`RecordCodec::encode_keys`] writes it), without parsing JSON; `None` when the key is not
    /// one integer column or `key` is not such a canonical key.
    pub fn integer_key(&self, key: &[u8]) -> Option<i64> {
        if !self.has_integer_key() {
            return None;
        }
        let info = &self.columns[self.key[0]];
        let digits = key
            .strip_prefix(b"{")?
            .strip_prefix(info.json_name.as_slice())?
            .strip_suffix(b"}")?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

impl RecordCodec {
    /// The canonical key (as [`RecordCodec::encode_keys`] writes it) of a one-column primary
    /// key named by text, the way a key-value protocol names it (`42`, `alice`), without
    /// building a batch: for an integer column when the text is the integer's canonical
    /// decimal form, for a string column when it holds no line break. `None` otherwise (a
    /// composite key, another type, a text that is not canonical): the caller then goes the
    /// general way, which also gives the errors.
    pub fn text_key(&self, text: &str) -> Option<Bytes> {
        let [k] = self.key[..] else {
            return None;
        };
        let info = &self.columns[k];
        let mut buf = Vec::with_capacity(info.json_name.len() + text.len() + 4);
        buf.push(b'{');
        buf.extend_from_slice(&info.json_name);
        let start = buf.len();
        match info.ty {
            ColumnType::Int64 => w::write_i64(&mut buf, text.parse::<i64>().ok()?),
            ColumnType::Int32 => w::write_i64(&mut buf, i64::from(text.parse::<i32>().ok()?)),
            ColumnType::String if !text.contains('\n') => w::write_str(&mut buf, text),
            _ => return None,
        }
        // `+5` and `007` parse as integers but are not JSON numbers: the general way decides.
        if matches!(info.ty, ColumnType::Int64 | ColumnType::Int32)
            && &buf[start..] != text.as_bytes()
        {
            return None;
        }
        buf.push(b'}');
        Some(Bytes::from(buf))
    }
}

fn row_error(row: usize, info: &ColumnInfo, reason: impl Into<String>) -> RowError {
    RowError {
        row,
        field: Some(info.name.clone()),
        reason: reason.into(),
    }
}
