//! Request keys -> canonical key bytes (the changelog's key encoding), with errors naming the
//! key and the field.

use arrow::array::RecordBatch;
use bytes::Bytes;
use unitable_core::record::{ChangeOp, EncodeError, RecordCodec};
use unitable_core::table::TableDef;
use unitable_core::types::ColumnType;

use crate::error::{ReadError, ReadResult};

/// Most keys one lookup may ask for.
pub const MAX_KEYS: usize = 10_000;

/// The keys of a lookup: rows of the primary-key columns (other columns are ignored).
#[derive(Debug, Clone)]
pub enum LookupKeys {
    /// JSON objects, one per line, in the changelog's JSON mapping.
    JsonLines(Vec<u8>),
    /// Arrow batches whose columns are named after the key columns.
    Arrow(Vec<RecordBatch>),
    /// One text per key, as a key-value protocol names a key: with a one-column key, the
    /// column's value as text (`42`, `alice`; numbers and booleans as JSON writes them, other
    /// types as their JSON string without quotes); with a composite key, a JSON object of the
    /// key columns.
    Text(Vec<String>),
}

impl LookupKeys {
    /// How many keys the request holds (lines with content, or rows).
    pub fn count(&self) -> usize {
        match self {
            LookupKeys::JsonLines(lines) => lines
                .split(|b| *b == b'\n')
                .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                .count(),
            LookupKeys::Arrow(batches) => batches.iter().map(RecordBatch::num_rows).sum(),
            LookupKeys::Text(texts) => texts.len(),
        }
    }
}

/// Text keys as JSON lines of the key columns of `def`.
fn text_keys_to_json(def: &TableDef, texts: &[String]) -> ReadResult<Vec<u8>> {
    let bad = |index: usize, reason: String| ReadError::InvalidKey {
        index,
        field: None,
        reason,
    };
    let mut out = Vec::with_capacity(texts.len() * 24);
    let [column] = def.primary_key.as_slice() else {
        // A composite key: each text is a JSON object of its columns, read as a JSON key line.
        for (index, text) in texts.iter().enumerate() {
            if text.contains('\n') {
                return Err(bad(index, "a key holds no line break".into()));
            }
            let object = matches!(
                serde_json::from_str::<serde_json::Value>(text),
                Ok(serde_json::Value::Object(_))
            );
            if !object {
                return Err(bad(
                    index,
                    format!(
                        "the table's key has columns {}: give a JSON object of them, e.g. {{{}}}",
                        def.primary_key.join(", "),
                        def.primary_key
                            .iter()
                            .map(|c| format!("\"{c}\":..."))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ));
            }
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
        }
        return Ok(out);
    };
    // Numbers and booleans stand for themselves in JSON; anything else is a string (a text that
    // is not a number for a number column fails in the codec, naming it).
    let numeric = def
        .columns
        .iter()
        .find(|c| &c.name == column)
        .is_some_and(|c| {
            matches!(
                c.ty,
                ColumnType::Bool
                    | ColumnType::Int32
                    | ColumnType::Int64
                    | ColumnType::Float32
                    | ColumnType::Float64
                    | ColumnType::Decimal { .. }
            )
        });
    let prefix = format!("{{{}:", serde_json::Value::String(column.clone()));
    for (index, text) in texts.iter().enumerate() {
        if text.contains('\n') {
            return Err(bad(index, "a key holds no line break".into()));
        }
        let literal = numeric
            && matches!(
                serde_json::from_str::<serde_json::Value>(text),
                Ok(serde_json::Value::Number(_) | serde_json::Value::Bool(_))
            );
        out.extend_from_slice(prefix.as_bytes());
        if literal {
            out.extend_from_slice(text.as_bytes());
        } else {
            out.extend_from_slice(
                serde_json::Value::String(text.clone())
                    .to_string()
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b"}\n");
    }
    Ok(out)
}

fn too_many(n: usize) -> ReadError {
    ReadError::BadRequest {
        reason: format!("{n} keys asked for; a lookup takes at most {MAX_KEYS}: split the request"),
    }
}

fn mismatch(e: EncodeError) -> ReadError {
    match e {
        EncodeError::BatchMismatch { column, reason, .. } => ReadError::InvalidKey {
            index: 0,
            field: Some(column),
            reason,
        },
        e @ EncodeError::NeedsPrimaryKey { .. } => ReadError::BadRequest {
            reason: e.to_string(),
        },
    }
}

/// The canonical bytes of every key of a table defined by `def`, in request order.
pub(crate) fn canonical_keys(
    codec: &RecordCodec,
    def: &TableDef,
    keys: &LookupKeys,
) -> ReadResult<Vec<Bytes>> {
    match keys {
        LookupKeys::Text(texts) => {
            if texts.len() > MAX_KEYS {
                return Err(too_many(texts.len()));
            }
            // One-column integer and string keys need no JSON round trip (the common RESP GET).
            let direct: Option<Vec<Bytes>> = texts.iter().map(|t| codec.text_key(t)).collect();
            if let Some(keys) = direct {
                return Ok(keys);
            }
            let lines = text_keys_to_json(def, texts)?;
            canonical_keys(codec, def, &LookupKeys::JsonLines(lines))
        }
        LookupKeys::JsonLines(input) => {
            let lines = unitable_core::record::json_lines(input).len();
            if lines > MAX_KEYS {
                return Err(too_many(lines));
            }
            let (parsed, errors) = codec.parse_json_rows(ChangeOp::Delete, input, 0);
            if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                return Err(ReadError::InvalidKey {
                    index: e.row,
                    field: e.field,
                    reason: e.reason,
                });
            }
            let (encoded, errors) = codec.encode_keys(&parsed.batch).map_err(mismatch)?;
            if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                return Err(ReadError::InvalidKey {
                    index: parsed.rows[e.row],
                    field: e.field,
                    reason: e.reason,
                });
            }
            Ok(encoded.into_iter().map(|k| k.key).collect())
        }
        LookupKeys::Arrow(batches) => {
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if n > MAX_KEYS {
                return Err(too_many(n));
            }
            let mut out = Vec::with_capacity(n);
            for batch in batches {
                let first = out.len();
                let (encoded, errors) = codec.encode_keys(batch).map_err(mismatch)?;
                if let Some(e) = errors.into_iter().min_by_key(|e| e.row) {
                    return Err(ReadError::InvalidKey {
                        index: first + e.row,
                        field: e.field,
                        reason: e.reason,
                    });
                }
                out.extend(encoded.into_iter().map(|k| k.key));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use unitable_core::naming::TableName;
    use unitable_core::table::{Column, TableSpec};

    use super::*;

    fn table(columns: &[&str], key: &str) -> (TableDef, RecordCodec) {
        let def = TableDef::new(
            TableName::new("shop", "t").unwrap(),
            TableSpec {
                columns: columns.iter().map(|c| Column::parse(c).unwrap()).collect(),
                primary_key: vec![key.to_string()],
                buckets: Some(4),
                ..TableSpec::default()
            },
        )
        .unwrap();
        let codec = RecordCodec::new(&def, "0190d7a4-5c3e-7b21-9a4f-3c2d1e0f9a8b", 1).unwrap();
        (def, codec)
    }

    /// Text keys give the same canonical keys, or the same error, as the JSON key lines they
    /// stand for.
    #[test]
    fn text_keys_equal_their_json_lines() {
        let cases: [(&[&str], &[&str]); 3] = [
            (
                &["id:int64!", "v:string"],
                &[
                    "0",
                    "-1",
                    "42",
                    "9223372036854775807",
                    "+7",
                    "007",
                    "-0",
                    "x",
                    "1.5",
                ],
            ),
            (
                &["id:int32!", "v:string"],
                &["7", "2147483648", "-2147483648", "07"],
            ),
            (
                &["id:string!", "v:int64"],
                &["alice", "42", "", "a \"quoted\" \\ key", "tab\there", "π"],
            ),
        ];
        for (columns, texts) in cases {
            let (def, codec) = table(columns, "id");
            for text in texts {
                let keys = LookupKeys::Text(vec![text.to_string()]);
                let lines =
                    LookupKeys::JsonLines(text_keys_to_json(&def, &[text.to_string()]).unwrap());
                let fast = canonical_keys(&codec, &def, &keys).map_err(|e| e.to_string());
                let general = canonical_keys(&codec, &def, &lines).map_err(|e| e.to_string());
                assert_eq!(fast, general, "{columns:?} {text:?}");
            }
            let all = LookupKeys::Text(texts.iter().map(|t| t.to_string()).collect());
            let lines = LookupKeys::JsonLines(
                text_keys_to_json(
                    &def,
                    &texts.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                )
                .unwrap(),
            );
            assert_eq!(
                canonical_keys(&codec, &def, &all).map_err(|e| e.to_string()),
                canonical_keys(&codec, &def, &lines).map_err(|e| e.to_string()),
            );
        }
    }
}
