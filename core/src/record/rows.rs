//! User rows given as JSON lines -> an Arrow batch of the table's columns.
//!
//! The write path accepts rows as JSON objects, one per line, in the JSON mapping of
//! docs/changelog-format.md (and the other unambiguous forms [`super::scalar::parse`] reads).
//! Each line is checked on its own: a malformed line, an unknown column, a value of the wrong
//! type or a missing required column rejects that row with a [`RowError`] naming it and the
//! field, and the other rows still make the batch.

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

use super::json_read::{ObjectReader, Raw};
use super::scalar::{ColumnBuilder, Scalar, parse};
use super::{ChangeOp, RecordCodec, RowError};

/// Rows parsed from JSON lines.
#[derive(Debug, Clone)]
pub struct ParsedRows {
    /// The accepted rows: every table column for inserts and upserts, the key columns for
    /// deletes ([`RecordCodec::input_schema`]).
    pub batch: RecordBatch,
    /// For each batch row, its index in the input (counting from `first_row`).
    pub rows: Vec<usize>,
}

/// The rows of a JSON-lines input: lines without their `\r\n` / `\n`, blank lines skipped.
/// Row `i` of [`RecordCodec::parse_json_rows`] is line `i` of this.
pub fn json_lines(input: &[u8]) -> Vec<&[u8]> {
    input
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

impl RecordCodec {
    /// The columns a write of `op` carries: all of them, or only the key for deletes.
    pub fn input_schema(&self, op: ChangeOp) -> SchemaRef {
        if op != ChangeOp::Delete {
            return self.schema.clone();
        }
        let fields: Vec<_> = self
            .key
            .iter()
            .map(|&i| self.schema.field(i).clone())
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Parses JSON lines (blank lines are skipped and not counted) into rows for a write of
    /// `op`. Row indexes in the result and in errors count from `first_row`.
    ///
    /// Deletes read only the key columns (other members are ignored); inserts and upserts
    /// need every required column, and a member that is not a column rejects the row.
    pub fn parse_json_rows(
        &self,
        op: ChangeOp,
        input: &[u8],
        first_row: usize,
    ) -> (ParsedRows, Vec<RowError>) {
        let delete = op == ChangeOp::Delete;
        let wanted: Vec<usize> = if delete {
            self.key.clone()
        } else {
            (0..self.columns.len()).collect()
        };
        let lines = json_lines(input);
        let mut builders: Vec<ColumnBuilder> = wanted
            .iter()
            .map(|&i| ColumnBuilder::new(self.columns[i].ty, lines.len()))
            .collect();
        let mut raw: Vec<Option<Raw<'_>>> = vec![None; self.columns.len()];
        let mut values: Vec<Option<Scalar<'_>>> = vec![None; wanted.len()];
        let mut rows = Vec::with_capacity(lines.len());
        let mut errors = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let row = first_row + n;
            match self.read_row(line, delete, &wanted, &mut raw, &mut values) {
                Ok(()) => {
                    // Every value was parsed for its column's type, so appending cannot fail;
                    // should it ever, the row is refused before any builder moved on.
                    for (builder, value) in builders.iter_mut().zip(&values) {
                        if let Err(reason) = builder.append(value.as_ref()) {
                            errors.push(RowError {
                                row,
                                field: None,
                                reason,
                            });
                            return self.abandon(first_row, lines.len(), errors);
                        }
                    }
                    rows.push(row);
                }
                Err((field, reason)) => errors.push(RowError { row, field, reason }),
            }
        }
        let arrays = builders.iter_mut().map(ColumnBuilder::finish).collect();
        match RecordBatch::try_new(self.input_schema(op), arrays) {
            Ok(batch) => (ParsedRows { batch, rows }, errors),
            Err(e) => {
                errors.push(RowError {
                    row: first_row,
                    field: None,
                    reason: format!("internal: assembling the rows failed: {e}"),
                });
                self.abandon(first_row, lines.len(), errors)
            }
        }
    }

    /// Gives up on a whole input after an internal failure: every row is reported.
    fn abandon(
        &self,
        first_row: usize,
        count: usize,
        mut errors: Vec<RowError>,
    ) -> (ParsedRows, Vec<RowError>) {
        let reported: std::collections::HashSet<usize> = errors.iter().map(|e| e.row).collect();
        errors.extend(
            (first_row..first_row + count)
                .filter(|r| !reported.contains(r))
                .map(|row| RowError {
                    row,
                    field: None,
                    reason: "not written: an internal error stopped this request".into(),
                }),
        );
        errors.sort_by_key(|e| e.row);
        let empty = RecordBatch::new_empty(self.schema.clone());
        (
            ParsedRows {
                batch: empty,
                rows: Vec::new(),
            },
            errors,
        )
    }

    /// Reads one line into `values` (one per wanted column).
    fn read_row<'a>(
        &self,
        line: &'a [u8],
        delete: bool,
        wanted: &[usize],
        raw: &mut [Option<Raw<'a>>],
        values: &mut [Option<Scalar<'a>>],
    ) -> Result<(), (Option<String>, String)> {
        raw.fill(None);
        let malformed = |e: super::json_read::JsonError| (None, format!("not a JSON object: {e}"));
        let mut reader = ObjectReader::new(line).map_err(malformed)?;
        while let Some((name, value)) = reader.next_field().map_err(malformed)? {
            let Some(&i) = self.by_name.get(name.as_ref()) else {
                if delete {
                    continue;
                }
                return Err((
                    Some(name.into_owned()),
                    "the table has no such column".into(),
                ));
            };
            if raw[i].replace(value).is_some() {
                return Err((Some(name.into_owned()), "appears twice in the row".into()));
            }
        }
        for (slot, &i) in values.iter_mut().zip(wanted) {
            let info = &self.columns[i];
            let given = raw[i].unwrap_or(Raw::Null);
            *slot = parse(info.ty, &given).map_err(|e| (Some(info.name.clone()), e))?;
            let required = info.required || self.key.contains(&i);
            if slot.is_none() && required {
                let what = if raw[i].is_some() { "null" } else { "missing" };
                return Err((
                    Some(info.name.clone()),
                    format!("{what}, but the column is required"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::table::{Column, TableDef, TableSpec};

    fn codec() -> RecordCodec {
        let def = TableDef::new(
            "t.rows".parse().unwrap(),
            TableSpec {
                columns: vec![
                    Column::parse("id:int64!").unwrap(),
                    Column::parse("name:string").unwrap(),
                    Column::parse("price:decimal(10,2)").unwrap(),
                ],
                primary_key: vec!["id".into()],
                ..TableSpec::default()
            },
        )
        .unwrap();
        RecordCodec::new(&def, "uuid", 0).unwrap()
    }

    #[test]
    fn good_rows_survive_bad_neighbours() {
        let input = br#"{"id":1,"name":"a","price":"1.50"}
{"id":"x","name":"b"}

{"id":3,"nmae":"typo"}
{"id":4,"name":null,"price":2}
not json
{"name":"no key"}
{"id":7,"id":8}
{"id":9,"price":"1.234"}
"#;
        let (parsed, errors) = codec().parse_json_rows(ChangeOp::Upsert, input, 100);
        assert_eq!(parsed.rows, [100, 103]);
        let ids = parsed.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![1, 4]));
        let summary: Vec<(usize, Option<&str>)> =
            errors.iter().map(|e| (e.row, e.field.as_deref())).collect();
        assert_eq!(
            summary,
            [
                (101, Some("id")),
                (102, Some("nmae")),
                (104, None),
                (105, Some("id")),
                (106, Some("id")),
                (107, Some("price")),
            ]
        );
        assert!(errors[2].reason.contains("not a JSON object"), "{errors:?}");
        assert!(errors[3].reason.contains("missing"), "{errors:?}");
    }

    #[test]
    fn deletes_read_only_the_key() {
        let input = b"{\"id\":5,\"whatever\":[1,2]}\n{\"id\":6}\n{\"name\":\"x\"}";
        let (parsed, errors) = codec().parse_json_rows(ChangeOp::Delete, input, 0);
        assert_eq!(parsed.batch.num_columns(), 1);
        assert_eq!(parsed.rows, [0, 1]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].row, 2);
    }
}
