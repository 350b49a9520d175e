//! Records written under an earlier schema of the table.
//!
//! Columns can be renamed, dropped, widened, made optional and moved (see
//! [`crate::table::ColumnChange`]); field ids never change. A record names the schema it was
//! written with (the `unitable.schema-id` header; for `avro-v1` values also the framing's id),
//! so a codec that knows the table's earlier schemas decodes it with that schema's names,
//! types and order, and maps each field by id to the current column: a renamed column's old
//! member fills the new column, a dropped column is skipped, a widened column's value is read
//! as the narrower type and then widened exactly (as Iceberg widens values in old data files).
//! Records of schemas the codec does not know fall back to the current schema (by name for
//! `json-v1`, as a prefix for `avro-v1`), which is right for every schema that only added
//! columns.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::TableMetadata;

use super::avro::{self, AvroReader};
use super::json_read::{ObjectReader, Raw};
use super::scalar::{Scalar, parse};
use super::{RecordCodec, avro_frame};
use crate::table::{Column, TableDef, schema_history};
use crate::types::ColumnType;

/// One column of an earlier schema.
#[derive(Debug)]
struct WriterColumn {
    name: String,
    ty: ColumnType,
    required: bool,
    /// The current column with the same field id; `None` if it was dropped.
    current: Option<usize>,
}

/// An earlier schema, as a decoder needs it.
#[derive(Debug)]
pub(super) struct WriterSchema {
    columns: Vec<WriterColumn>,
    by_name: HashMap<String, usize>,
}

/// The earlier schemas a codec knows, by Iceberg schema id and by `avro-v1` framing.
#[derive(Debug, Default)]
pub(super) struct History {
    by_id: HashMap<i32, Arc<WriterSchema>>,
    by_frame: HashMap<[u8; avro::FRAME_LEN], Arc<WriterSchema>>,
}

/// Widens a value read as an earlier, narrower type to the current column type.
fn widen(value: Scalar<'_>, to: ColumnType) -> Scalar<'_> {
    match (value, to) {
        (Scalar::Int32(v), ColumnType::Int64) => Scalar::Int64(i64::from(v)),
        (Scalar::Float32(v), ColumnType::Float64) => Scalar::Float64(f64::from(v)),
        (v, _) => v,
    }
}

impl RecordCodec {
    /// The codec of a table as its Iceberg metadata has it now: the current schema, and every
    /// earlier one for the records written under them.
    pub fn of_table(def: &TableDef, metadata: &TableMetadata) -> crate::Result<Self> {
        Ok(Self::new(
            def,
            &metadata.uuid().to_string(),
            metadata.current_schema_id(),
        )?
        .with_history(schema_history(metadata)))
    }

    /// This codec, also knowing the table's earlier schemas (Iceberg schema id and columns,
    /// e.g. from [`crate::table::schema_history`]) so that records written under them decode
    /// through field ids. The codec's own schema among them is ignored.
    pub fn with_history(mut self, schemas: impl IntoIterator<Item = (i32, Vec<Column>)>) -> Self {
        let uuid = String::from_utf8_lossy(&self.table_uuid_header).into_owned();
        for (schema_id, columns) in schemas {
            if schema_id == self.schema_id {
                continue;
            }
            let writer_columns: Vec<WriterColumn> = columns
                .iter()
                .map(|c| WriterColumn {
                    name: c.name.clone(),
                    ty: c.ty,
                    required: c.required,
                    current: self
                        .columns
                        .iter()
                        .position(|cur| cur.field_id == c.field_id),
                })
                .collect();
            let by_name = writer_columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
            let writer = Arc::new(WriterSchema {
                columns: writer_columns,
                by_name,
            });
            self.history.by_frame.insert(
                avro_frame(avro::schema_id(&uuid, schema_id)),
                writer.clone(),
            );
            self.history.by_id.insert(schema_id, writer);
        }
        self
    }

    /// The earlier schema a JSON value was written with, by its schema-id header.
    /// Every record is asked, so the common cases (no earlier schema, the codec's own
    /// schema) return before any parsing.
    pub(super) fn json_writer(&self, schema_id: Option<&[u8]>) -> Option<&WriterSchema> {
        let header = schema_id?;
        if self.history.by_id.is_empty() || header == self.schema_id_header.as_ref() {
            return None;
        }
        let id: i32 = std::str::from_utf8(header).ok()?.parse().ok()?;
        self.history.by_id.get(&id).map(Arc::as_ref)
    }

    /// The earlier schema an Avro value was written with, by its framing.
    pub(super) fn avro_writer(&self, value: &[u8]) -> Option<&WriterSchema> {
        let frame: [u8; avro::FRAME_LEN] = value.get(..avro::FRAME_LEN)?.try_into().ok()?;
        if self.history.by_frame.is_empty() || frame == self.avro_frame {
            return None;
        }
        self.history.by_frame.get(&frame).map(Arc::as_ref)
    }

    /// Fills `values` (current columns) from a JSON value written with `writer`.
    pub(super) fn read_json_as<'a>(
        &self,
        writer: &WriterSchema,
        bytes: &'a [u8],
        values: &mut [Option<Scalar<'a>>],
    ) -> Result<(), (Option<String>, String)> {
        let mut raw: Vec<Option<Raw<'a>>> = vec![None; writer.columns.len()];
        let json_error = |e| (None, format!("the value is not a JSON object: {e}"));
        let mut reader = ObjectReader::new(bytes).map_err(json_error)?;
        while let Some((name, value)) = reader.next_field().map_err(json_error)? {
            let Some(&j) = writer.by_name.get(name.as_ref()) else {
                continue;
            };
            if raw[j].replace(value).is_some() {
                return Err((Some(name.into_owned()), "appears twice in the value".into()));
            }
        }
        for (column, slot) in writer.columns.iter().zip(&raw) {
            let Some(i) = column.current else { continue };
            let value = parse(column.ty, &slot.unwrap_or(Raw::Null)).map_err(|e| {
                (
                    Some(self.columns[i].name.clone()),
                    format!("{e} in the value (written as `{}`)", column.name),
                )
            })?;
            values[i] = value.map(|v| widen(v, self.columns[i].ty));
        }
        Ok(())
    }

    /// Fills `values` (current columns) from an Avro value written with `writer`.
    pub(super) fn read_avro_as<'a>(
        &self,
        writer: &WriterSchema,
        value: &'a [u8],
        values: &mut [Option<Scalar<'a>>],
    ) -> Result<(), (Option<String>, String)> {
        let mut reader = AvroReader::new(&value[avro::FRAME_LEN..]);
        for column in &writer.columns {
            let read = reader
                .column(column.ty, !column.required)
                .map_err(|e| (Some(column.name.clone()), format!("{e} in the Avro value")))?;
            if let Some(i) = column.current {
                values[i] = read.map(|v| widen(v, self.columns[i].ty));
            }
        }
        if !reader.at_end() {
            return Err((
                None,
                format!(
                    "{} bytes follow the last column of the Avro value",
                    reader.remaining()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        Array, ArrayRef, AsArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    };
    use arrow::datatypes::{Float64Type, Int64Type};

    use super::super::tests::{UUID, stored, table};
    use super::super::{ChangeOp, RecordCodec};
    use crate::table::{ColumnChange, RecordFormat, TableDef};
    use crate::types::ColumnType;

    fn with_format(mut def: TableDef, format: RecordFormat) -> TableDef {
        def.changelog.format = format;
        def
    }

    /// Records of the old schema decode into the new columns by field id: the renamed column
    /// filled, the dropped one skipped, widened values exact, in either format.
    #[test]
    fn old_records_decode_through_field_ids() {
        for format in [RecordFormat::JsonV1, RecordFormat::AvroV1] {
            let old_def = with_format(
                table(
                    &[
                        "id:int64!",
                        "qty:int32!",
                        "price:float32",
                        "note:string",
                        "extra:string",
                    ],
                    &["id"],
                ),
                format,
            );
            let new_def = old_def
                .evolved(&[
                    ColumnChange::Rename {
                        column: "note".into(),
                        to: "memo".into(),
                    },
                    ColumnChange::Widen {
                        column: "qty".into(),
                        to: ColumnType::Int64,
                    },
                    ColumnChange::Widen {
                        column: "price".into(),
                        to: ColumnType::Float64,
                    },
                    ColumnChange::MakeOptional {
                        column: "qty".into(),
                    },
                    ColumnChange::Move {
                        column: "memo".into(),
                        after: None,
                    },
                    ColumnChange::Drop {
                        column: "extra".into(),
                    },
                ])
                .unwrap();
            let names: Vec<&str> = new_def.columns.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["memo", "id", "qty", "price"]);
            let old = RecordCodec::new(&old_def, UUID, 0).unwrap();
            let batch = RecordBatch::try_new(
                old.arrow_schema(),
                vec![
                    Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
                    Arc::new(Int32Array::from(vec![7, -3])),
                    Arc::new(Float32Array::from(vec![Some(0.1), None])),
                    Arc::new(StringArray::from(vec![Some("a"), None])),
                    Arc::new(StringArray::from(vec![Some("x"), Some("y")])),
                ],
            )
            .unwrap();
            let (rows, errors) = old.encode(ChangeOp::Upsert, &batch, 0).unwrap();
            assert!(errors.is_empty());

            let history = vec![(0, old_def.columns.clone()), (1, new_def.columns.clone())];
            let new = RecordCodec::new(&new_def, UUID, 1)
                .unwrap()
                .with_history(history);
            let decoded = new.decode(&stored(&rows)).unwrap().batch;
            let memo = decoded.column(0).as_string::<i32>();
            assert_eq!((memo.value(0), memo.is_null(1)), ("a", true), "{format:?}");
            let qty = decoded.column(2).as_primitive::<Int64Type>();
            assert_eq!((qty.value(0), qty.value(1)), (7, -3));
            let price = decoded.column(3).as_primitive::<Float64Type>();
            assert_eq!(price.value(0), f64::from(0.1f32));
            assert!(price.is_null(1));

            // New records still decode, and the old codec (no history of the new schema)
            // reads them by its own rules without failing.
            let new_batch = RecordBatch::try_new(
                new.arrow_schema(),
                vec![
                    Arc::new(StringArray::from(vec![Some("b")])) as ArrayRef,
                    Arc::new(Int64Array::from(vec![3])),
                    Arc::new(Int64Array::from(vec![Some(5_000_000_000)])),
                    Arc::new(arrow::array::Float64Array::from(vec![Some(0.1)])),
                ],
            )
            .unwrap();
            let (new_rows, _) = new.encode(ChangeOp::Upsert, &new_batch, 0).unwrap();
            let decoded = new.decode(&stored(&new_rows)).unwrap().batch;
            assert_eq!(
                decoded.column(2).as_primitive::<Int64Type>().value(0),
                5_000_000_000
            );
        }
    }
}
