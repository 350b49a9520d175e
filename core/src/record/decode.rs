//! Change records -> Arrow rows.
//!
//! Per record: read the headers, settle the operation, read the value (or, for a delete, the
//! key) member by member into per-column slots, convert each slot to a typed value, check the
//! key against the value, then append the row to the column builders. Any failure stops the
//! batch with an error naming the record's offset and the field.

use arrow::array::new_null_array;
use arrow::record_batch::RecordBatch;

use super::avro;
use super::json_read::{ObjectReader, Raw};
use super::scalar::{ColumnBuilder, Scalar, parse};
use super::{
    ChangeOp, DecodeError, DecodedBatch, OP_HEADER, RecordCodec, SCHEMA_ID_HEADER,
    TABLE_UUID_HEADER,
};
use crate::changelog::{ChangeRecord, StoredRecord};

/// Why a record failed, before its offset is attached.
struct Failure {
    field: Option<String>,
    reason: String,
}

fn fail(field: Option<&str>, reason: impl Into<String>) -> Failure {
    Failure {
        field: field.map(str::to_string),
        reason: reason.into(),
    }
}

/// Which part of a record is being read, for messages.
#[derive(Clone, Copy)]
enum Part {
    Key,
    Value,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Key => "key",
            Part::Value => "value",
        }
    }
}

impl RecordCodec {
    /// Decodes records of this table into one row each, in order (see [`DecodedBatch`]).
    ///
    /// The operation comes from the `unitable.op` header; without it a null value is a
    /// delete and anything else an upsert (insert for append-only tables). A record whose
    /// `unitable.table-uuid` header names another table is an error. Members the table does
    /// not have are ignored (records of a newer schema); columns missing from a value are
    /// null (records of an older schema), unless the column is required.
    pub fn decode(&self, records: &[StoredRecord]) -> Result<DecodedBatch, DecodeError> {
        self.decode_with(records, None)
    }

    /// Like [`RecordCodec::decode`], but only the columns marked in `wanted` (one flag per
    /// column of [`RecordCodec::decoded_schema`]) and the key columns are converted; the others
    /// come back all null and their values are neither converted nor checked (a malformed value
    /// in a column nobody reads does not fail the record). The JSON is still scanned whole:
    /// what is saved is the conversion and the Arrow building of the skipped columns.
    pub fn decode_projected(
        &self,
        records: &[StoredRecord],
        wanted: &[bool],
    ) -> Result<DecodedBatch, DecodeError> {
        self.decode_with(records, Some(wanted))
    }

    fn decode_with(
        &self,
        records: &[StoredRecord],
        wanted: Option<&[bool]>,
    ) -> Result<DecodedBatch, DecodeError> {
        // Key columns are always decoded: deletes and the key check need them.
        let wanted: Option<Vec<bool>> = wanted.map(|w| {
            (0..self.columns.len())
                .map(|i| w.get(i).copied().unwrap_or(false) || self.key.contains(&i))
                .collect()
        });
        let wanted = wanted.as_deref();
        let n = records.len();
        let mut builders: Vec<ColumnBuilder> = self
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.ty, n))
            .collect();
        let mut raw: Vec<Option<Raw<'_>>> = vec![None; self.columns.len()];
        let mut values: Vec<Option<Scalar<'_>>> = vec![None; self.columns.len()];
        let mut ops = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n);
        let mut timestamps_ms = Vec::with_capacity(n);
        for stored in records {
            let op = self
                .decode_record(&stored.record, wanted, &mut raw, &mut values)
                .and_then(|op| {
                    for (i, ((builder, value), info)) in builders
                        .iter_mut()
                        .zip(&values)
                        .zip(&self.columns)
                        .enumerate()
                    {
                        if wanted.is_some_and(|w| !w[i]) {
                            continue;
                        }
                        builder
                            .append(value.as_ref())
                            .map_err(|e| fail(Some(&info.name), e))?;
                    }
                    Ok(op)
                })
                .map_err(|f| DecodeError::Record {
                    table: self.table.clone(),
                    offset: stored.offset,
                    field: f.field,
                    reason: f.reason,
                })?;
            ops.push(op);
            offsets.push(stored.offset);
            timestamps_ms.push(stored.record.timestamp_ms);
        }
        let arrays = builders
            .iter_mut()
            .enumerate()
            .map(|(i, builder)| match wanted {
                Some(w) if !w[i] => new_null_array(self.decoded_schema.field(i).data_type(), n),
                _ => builder.finish(),
            })
            .collect();
        let batch =
            RecordBatch::try_new(self.decoded_schema.clone(), arrays).map_err(|source| {
                DecodeError::Batch {
                    table: self.table.clone(),
                    source,
                }
            })?;
        Ok(DecodedBatch {
            ops,
            offsets,
            timestamps_ms,
            batch,
        })
    }

    /// Like [`RecordCodec::decode`], but a record that cannot be decoded (written by a foreign
    /// producer, or for another table) is left out of the batch and reported instead of failing
    /// the others. Callers must log or count what comes back: skipping is never silent.
    pub fn decode_skipping(
        &self,
        records: &[StoredRecord],
    ) -> Result<(DecodedBatch, Vec<DecodeError>), DecodeError> {
        self.decode_skipping_with(records, None)
    }

    /// [`RecordCodec::decode_skipping`] of the columns in `wanted` (see
    /// [`RecordCodec::decode_projected`]).
    pub fn decode_skipping_projected(
        &self,
        records: &[StoredRecord],
        wanted: &[bool],
    ) -> Result<(DecodedBatch, Vec<DecodeError>), DecodeError> {
        self.decode_skipping_with(records, Some(wanted))
    }

    fn decode_skipping_with(
        &self,
        records: &[StoredRecord],
        wanted: Option<&[bool]>,
    ) -> Result<(DecodedBatch, Vec<DecodeError>), DecodeError> {
        let first = match self.decode_with(records, wanted) {
            Ok(decoded) => return Ok((decoded, Vec::new())),
            Err(e) => e,
        };
        if let DecodeError::Batch { .. } = first {
            return Err(first);
        }
        let mut good = Vec::with_capacity(records.len());
        let mut skipped = Vec::new();
        for record in records {
            match self.decode_with(std::slice::from_ref(record), wanted) {
                Ok(_) => good.push(record.clone()),
                Err(e) => skipped.push(e),
            }
        }
        Ok((self.decode_with(&good, wanted)?, skipped))
    }

    /// The operation named by the headers, checking the table uuid on the way.
    fn read_headers(&self, record: &ChangeRecord) -> Result<Option<ChangeOp>, Failure> {
        let mut op = None;
        for (name, value) in &record.headers {
            match name.as_str() {
                OP_HEADER => {
                    let parsed = std::str::from_utf8(value).ok().and_then(ChangeOp::parse);
                    op = Some(parsed.ok_or_else(|| {
                        fail(
                            Some(OP_HEADER),
                            format!(
                                "unknown operation `{}` (expected insert, upsert or delete)",
                                String::from_utf8_lossy(value)
                            ),
                        )
                    })?);
                }
                TABLE_UUID_HEADER if *value != self.table_uuid_header => {
                    return Err(fail(
                        Some(TABLE_UUID_HEADER),
                        format!(
                            "the record belongs to table uuid `{}`, not to this table (`{}`)",
                            String::from_utf8_lossy(value),
                            String::from_utf8_lossy(&self.table_uuid_header)
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(op)
    }

    /// Fills `raw` (by column index) from the members of a JSON object. `order` is where the
    /// columns are expected (schema order when `None`); members of unknown names are skipped.
    fn read_object<'a>(
        &self,
        bytes: &'a [u8],
        part: Part,
        order: Option<&[usize]>,
        raw: &mut [Option<Raw<'a>>],
    ) -> Result<(), Failure> {
        raw.fill(None);
        let json_error = |e| {
            fail(
                None,
                format!("the {} is not a JSON object: {e}", part.name()),
            )
        };
        let mut reader = ObjectReader::new(bytes).map_err(json_error)?;
        let mut position = 0;
        while let Some((name, value)) = reader.next_field().map_err(json_error)? {
            let hint = match order {
                Some(order) => order.get(position).copied(),
                None => Some(position),
            };
            position += 1;
            let index = match hint {
                Some(i) if self.columns.get(i).is_some_and(|c| c.name == name) => i,
                _ => match self.by_name.get(name.as_ref()) {
                    Some(&i) => i,
                    None => continue,
                },
            };
            if raw[index].replace(value).is_some() {
                return Err(fail(
                    Some(&name),
                    format!("appears twice in the {}", part.name()),
                ));
            }
        }
        Ok(())
    }

    /// Fills `values` (by column index) from a framed Avro value (see [`avro`]). The columns
    /// are read in schema order; a value that ends before the last column was written under an
    /// older schema (the rest are null), bytes after the last column are columns of a newer
    /// schema (skipped), unless the value claims this codec's own schema id.
    fn read_avro<'a>(
        &self,
        value: &'a [u8],
        values: &mut [Option<Scalar<'a>>],
    ) -> Result<(), Failure> {
        if value.len() < avro::FRAME_LEN {
            return Err(fail(
                None,
                format!(
                    "the value starts with the Avro magic byte but has only {} bytes (the framing takes {})",
                    value.len(),
                    avro::FRAME_LEN
                ),
            ));
        }
        let own = value[..avro::FRAME_LEN] == self.avro_frame;
        let mut reader = avro::AvroReader::new(&value[avro::FRAME_LEN..]);
        for (i, info) in self.columns.iter().enumerate() {
            if reader.at_end() && !own {
                break;
            }
            values[i] = reader
                .column(info.ty, !info.required)
                .map_err(|e| fail(Some(&info.name), format!("{e} in the Avro value")))?;
        }
        if own && !reader.at_end() {
            return Err(fail(
                None,
                format!(
                    "{} bytes follow the last column of the Avro value",
                    reader.remaining()
                ),
            ));
        }
        Ok(())
    }

    /// The typed value of column `i` from its slot.
    fn column_value<'a>(
        &self,
        i: usize,
        raw: &[Option<Raw<'a>>],
        part: Part,
    ) -> Result<Option<Scalar<'a>>, Failure> {
        let info = &self.columns[i];
        let slot = raw[i].unwrap_or(Raw::Null);
        parse(info.ty, &slot)
            .map_err(|e| fail(Some(&info.name), format!("{} in the {}", e, part.name())))
    }

    /// Decodes one record into `values` (one per column) and returns its operation.
    fn decode_record<'a>(
        &self,
        record: &'a ChangeRecord,
        wanted: Option<&[bool]>,
        raw: &mut [Option<Raw<'a>>],
        values: &mut [Option<Scalar<'a>>],
    ) -> Result<ChangeOp, Failure> {
        let header_op = self.read_headers(record)?;
        let op = match (&record.value, header_op) {
            (None, None | Some(ChangeOp::Delete)) => ChangeOp::Delete,
            (None, Some(op)) => {
                return Err(fail(
                    Some(OP_HEADER),
                    format!("the operation is {op} but the value is null (a tombstone)"),
                ));
            }
            (Some(_), Some(ChangeOp::Delete)) => {
                return Err(fail(
                    Some(OP_HEADER),
                    "the operation is delete but the record has a value",
                ));
            }
            (Some(_), Some(op)) => op,
            (Some(_), None) if self.is_append_only() => ChangeOp::Insert,
            (Some(_), None) => ChangeOp::Upsert,
        };
        if self.is_append_only() && op != ChangeOp::Insert {
            return Err(fail(
                Some(OP_HEADER),
                format!("the table has no primary key, so it has no {op} records"),
            ));
        }
        values.fill(None);

        let Some(value) = &record.value else {
            // A delete: the key columns come from the key, every other column is null.
            let key = record
                .key
                .as_deref()
                .ok_or_else(|| fail(None, "a delete record has no key"))?;
            self.read_object(key, Part::Key, Some(&self.key), raw)?;
            for &i in &self.key {
                values[i] = self.column_value(i, raw, Part::Key)?;
                if values[i].is_none() {
                    return Err(fail(
                        Some(&self.columns[i].name),
                        "primary-key column missing or null in the key",
                    ));
                }
            }
            return Ok(op);
        };

        let is_avro = value.first() == Some(&avro::MAGIC);
        // A value written under an earlier schema the codec knows is read with that schema.
        let writer = if is_avro {
            self.avro_writer(value)
        } else {
            let schema_id = record
                .headers
                .iter()
                .find(|(name, _)| name == SCHEMA_ID_HEADER)
                .map(|(_, v)| v.as_ref());
            self.json_writer(schema_id)
        };
        let by_name = writer.is_none() && !is_avro;
        match writer {
            Some(w) if is_avro => self.read_avro_as(w, value, values),
            Some(w) => self.read_json_as(w, value, values),
            None if is_avro => self
                .read_avro(value, values)
                .map_err(|f| (f.field, f.reason)),
            None => self
                .read_object(value, Part::Value, None, raw)
                .map_err(|f| (f.field, f.reason)),
        }
        .map_err(|(field, reason)| fail(field.as_deref(), reason))?;
        for (i, info) in self.columns.iter().enumerate() {
            if wanted.is_some_and(|w| !w[i]) {
                values[i] = None;
                continue;
            }
            if by_name {
                values[i] = self.column_value(i, raw, Part::Value)?;
            }
            if values[i].is_none() && info.required {
                return Err(fail(
                    Some(&info.name),
                    "missing or null in the value, but the column is required",
                ));
            }
        }
        if !self.is_append_only() {
            let key = record.key.as_deref().ok_or_else(|| {
                fail(
                    None,
                    "the record has no key, but the table has a primary key",
                )
            })?;
            self.read_object(key, Part::Key, Some(&self.key), raw)?;
            for &i in &self.key {
                let in_key = self.column_value(i, raw, Part::Key)?;
                if in_key != values[i] {
                    return Err(fail(
                        Some(&self.columns[i].name),
                        format!(
                            "the key holds {} but the value holds {}",
                            describe(&in_key),
                            describe(&values[i])
                        ),
                    ));
                }
            }
        }
        Ok(op)
    }
}

fn describe(value: &Option<Scalar<'_>>) -> String {
    match value {
        None => "no value".to_string(),
        Some(v) => format!("{v:?}"),
    }
}
