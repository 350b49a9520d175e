//! Debezium JSON change events -> the table's JSON rows.
//!
//! An event's value is the envelope `{"before", "after", "op", "source", "ts_ms"}`, either
//! alone (`value.converter.schemas.enable=false`) or as the `payload` beside a Kafka Connect
//! `schema`. `c` (create), `r` (snapshot read) and `u` (update) upsert `after`; `d` deletes the
//! key taken from `before` (or from the record key). Tombstones (a null value after a delete),
//! schema-change events (`ddl`/`tableChanges`), heartbeats and logical messages are skipped.
//!
//! Values are turned into unitable's JSON forms (docs/changelog-format.md). With a schema, the
//! Connect logical type of each field decides: `Decimal` (base64 big-endian unscaled bytes and
//! a `scale` parameter), `VariableScaleDecimal`, `Date` (days), `Timestamp` (ms),
//! `MicroTimestamp` (us), `NanoTimestamp` (ns), `ZonedTimestamp` (ISO text with a zone).
//! Without one, the table's column type decides, and an integer for a timestamp column needs
//! the table's `unitable.ingest.timestamp-unit`. Anything else is passed as it is, and the
//! write path checks it against the column like any written value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use unitable_core::ingest::{IngestConfig, TimeUnit, UnknownColumns};
use unitable_core::table::TableDef;
use unitable_core::types::ColumnType;

/// What one source record becomes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// Insert or replace this row (a JSON object of table columns).
    Upsert(Map<String, Value>),
    /// Delete the row with this key (a JSON object of the key columns).
    Delete(Map<String, Value>),
    /// Nothing to apply.
    Skip(Skip),
}

/// Why a record was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// A null value (Kafka log compaction's delete marker after a `d`).
    Tombstone,
    /// A DDL event (reported; the table's schema is not changed by it).
    SchemaChange,
    /// A heartbeat, a logical message, a transaction marker.
    Other,
}

impl Skip {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::SchemaChange => "schema_change",
            Skip::Other => "other",
        }
    }
}

/// A record that cannot be applied: the field (a table column, or an envelope member) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub(crate) field: Option<String>,
    pub(crate) reason: String,
    /// A short label for metrics.
    pub(crate) kind: &'static str,
}

/// A converted record, with the source columns the table does not have.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Converted {
    pub(crate) event: Event,
    pub(crate) unknown_columns: Vec<String>,
}

/// Converts one table's source records.
#[derive(Debug)]
pub(crate) struct Converter {
    columns: Vec<(String, ColumnType)>,
    key: Vec<usize>,
    /// Column index by exact name, and by lower-case name (sources such as MySQL compare
    /// column names without case).
    by_name: HashMap<String, usize>,
    by_lower: HashMap<String, usize>,
    timestamp_unit: Option<TimeUnit>,
    unknown_columns: UnknownColumns,
    /// Connect schemas already parsed, by their text.
    schemas: Mutex<HashMap<String, Arc<Value>>>,
}

/// A Connect field schema: its type, logical name and parameters.
#[derive(Debug, Clone, Copy)]
struct FieldSchema<'a> {
    name: Option<&'a str>,
    parameters: Option<&'a Map<String, Value>>,
}

fn reject(kind: &'static str, field: Option<&str>, reason: impl Into<String>) -> Rejected {
    Rejected {
        field: field.map(str::to_string),
        reason: reason.into(),
        kind,
    }
}

impl Converter {
    pub(crate) fn new(def: &TableDef, config: &IngestConfig) -> Self {
        let columns: Vec<(String, ColumnType)> =
            def.columns.iter().map(|c| (c.name.clone(), c.ty)).collect();
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let by_lower = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.to_lowercase(), i))
            .collect();
        let key = def
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|(n, _)| n == k))
            .collect();
        Self {
            columns,
            key,
            by_name,
            by_lower,
            timestamp_unit: config.timestamp_unit,
            unknown_columns: config.unknown_columns,
            schemas: Mutex::new(HashMap::new()),
        }
    }

    /// The key columns' values of a converted row, as one text (which changes are to the same
    /// row).
    pub(crate) fn key_text(&self, row: &Map<String, Value>) -> String {
        let values: Vec<&Value> = self
            .key
            .iter()
            .map(|&i| row.get(&self.columns[i].0).unwrap_or(&Value::Null))
            .collect();
        serde_json::to_string(&values).unwrap_or_default()
    }

    fn column(&self, source: &str) -> Option<usize> {
        self.by_name
            .get(source)
            .or_else(|| self.by_lower.get(&source.to_lowercase()))
            .copied()
    }

    /// Converts one source record (its key and value bytes).
    pub(crate) fn convert(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Converted, Rejected> {
        let skip = |s| {
            Ok(Converted {
                event: Event::Skip(s),
                unknown_columns: Vec::new(),
            })
        };
        let Some(value) = value else {
            return skip(Skip::Tombstone);
        };
        let not_json =
            |e: serde_json::Error| reject("malformed", None, format!("the value is not JSON: {e}"));
        let (payload, schema) = match self.split_envelope(value).map_err(not_json)? {
            Envelope::Tombstone => return skip(Skip::Tombstone),
            Envelope::Wrapped { payload, schema } => (payload, schema),
            Envelope::Bare => (serde_json::from_slice(value).map_err(not_json)?, None),
        };
        let schema = schema.as_deref();
        let Some(payload) = payload.as_object() else {
            return Err(reject(
                "malformed",
                None,
                "the value is not a JSON object (a Debezium change event)",
            ));
        };
        if payload.contains_key("ddl") || payload.contains_key("tableChanges") {
            return skip(Skip::SchemaChange);
        }
        let op = match payload.get("op") {
            Some(Value::String(op)) => op.as_str(),
            None if payload.contains_key("ts_ms") && !payload.contains_key("after") => {
                // A heartbeat or transaction metadata record.
                return skip(Skip::Other);
            }
            _ => {
                return Err(reject(
                    "malformed",
                    Some("op"),
                    "the event has no `op` (expected c, r, u or d)",
                ));
            }
        };
        match op {
            "c" | "r" | "u" => {
                let (row, unknown) = self.row(payload, schema, "after")?;
                Ok(Converted {
                    event: Event::Upsert(row),
                    unknown_columns: unknown,
                })
            }
            "d" => self.delete(payload, schema, key),
            "m" => skip(Skip::Other),
            "t" => Err(reject(
                "truncate",
                Some("op"),
                "a truncate event is not applied (it has no keys); truncate the table with a \
                 delete of every key if that is wanted",
            )),
            other => Err(reject(
                "malformed",
                Some("op"),
                format!("unknown op `{other}` (expected c, r, u or d)"),
            )),
        }
    }

    /// The table row in `payload[member]`.
    fn row(
        &self,
        payload: &Map<String, Value>,
        schema: Option<&Value>,
        member: &str,
    ) -> Result<(Map<String, Value>, Vec<String>), Rejected> {
        let Some(Value::Object(source)) = payload.get(member) else {
            return Err(reject(
                "malformed",
                Some(member),
                format!("the event's `{member}` is not a row object"),
            ));
        };
        let fields = field_schemas(schema, member);
        let (row, unknown) = self.columns_of(source, fields.as_ref())?;
        if !unknown.is_empty() && self.unknown_columns == UnknownColumns::Reject {
            return Err(reject(
                "unknown_column",
                Some(&unknown[0]),
                format!(
                    "the table has no column `{}` (the source added it?); add it with `unitable \
                     table add-column`, or set unitable.ingest.unknown-columns=ignore",
                    unknown[0]
                ),
            ));
        }
        Ok((row, unknown))
    }

    fn delete(
        &self,
        payload: &Map<String, Value>,
        schema: Option<&Value>,
        key: Option<&[u8]>,
    ) -> Result<Converted, Rejected> {
        let from_before = match payload.get("before") {
            Some(Value::Object(_)) => Some(self.row(payload, schema, "before")?.0),
            _ => None,
        };
        let source = match from_before {
            Some(row) => row,
            None => self.key_row(key)?,
        };
        let mut out = Map::new();
        for &i in &self.key {
            let name = &self.columns[i].0;
            match source.get(name) {
                Some(v) if !v.is_null() => {
                    out.insert(name.clone(), v.clone());
                }
                _ => {
                    return Err(reject(
                        "missing_key",
                        Some(name),
                        format!("the delete event carries no value for key column `{name}`"),
                    ));
                }
            }
        }
        Ok(Converted {
            event: Event::Delete(out),
            unknown_columns: Vec::new(),
        })
    }

    /// The key columns from the record key (a JSON object, possibly in a schema envelope).
    fn key_row(&self, key: Option<&[u8]>) -> Result<Map<String, Value>, Rejected> {
        let missing = || {
            reject(
                "missing_key",
                Some("before"),
                "the delete event has neither `before` nor a JSON object key",
            )
        };
        let parsed: Value =
            serde_json::from_slice(key.ok_or_else(missing)?).map_err(|_| missing())?;
        let (payload, schema) = unwrap_envelope(&parsed);
        let Some(Value::Object(source)) = payload else {
            return Err(missing());
        };
        let fields = schema.and_then(|s| s.get("fields")).map(fields_by_name);
        Ok(self.columns_of(source, fields.as_ref())?.0)
    }

    /// The table columns among a source row's members, converted (by their field schemas,
    /// when given), and the names of the members the table has no column for.
    fn columns_of(
        &self,
        source: &Map<String, Value>,
        fields: Option<&HashMap<&str, FieldSchema<'_>>>,
    ) -> Result<(Map<String, Value>, Vec<String>), Rejected> {
        let mut row = Map::new();
        let mut unknown = Vec::new();
        for (name, value) in source {
            let Some(i) = self.column(name) else {
                unknown.push(name.clone());
                continue;
            };
            let field = fields.and_then(|f| f.get(name.as_str()).copied());
            let (column, ty) = &self.columns[i];
            row.insert(column.clone(), self.value(column, *ty, value, field)?);
        }
        Ok((row, unknown))
    }

    /// One value in unitable's JSON form for a column of type `ty`.
    fn value(
        &self,
        column: &str,
        ty: ColumnType,
        value: &Value,
        field: Option<FieldSchema<'_>>,
    ) -> Result<Value, Rejected> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        let bad = |reason: String| reject("invalid", Some(column), reason);
        let logical = field.and_then(|f| f.name);
        match logical {
            Some("org.apache.kafka.connect.data.Decimal") => {
                let scale = field
                    .and_then(|f| f.parameters)
                    .and_then(|p| p.get("scale"))
                    .and_then(|s| match s {
                        Value::String(s) => s.parse::<u32>().ok(),
                        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                        _ => None,
                    })
                    .ok_or_else(|| bad("a Decimal field without a `scale` parameter".into()))?;
                let Value::String(text) = value else {
                    return Err(bad("a Decimal value that is not base64 text".into()));
                };
                return decimal_from_base64(text, scale)
                    .map(Value::String)
                    .map_err(bad);
            }
            Some("io.debezium.data.VariableScaleDecimal") => {
                let (Some(Value::String(text)), Some(scale)) = (
                    value.get("value"),
                    value.get("scale").and_then(Value::as_u64),
                ) else {
                    return Err(bad(
                        "a VariableScaleDecimal that is not {\"scale\": N, \"value\": base64}"
                            .into(),
                    ));
                };
                let scale = u32::try_from(scale).map_err(|_| bad("scale too large".into()))?;
                return decimal_from_base64(text, scale)
                    .map(Value::String)
                    .map_err(bad);
            }
            Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => {
                return date_from_days(value).map(Value::String).map_err(bad);
            }
            Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp") => {
                return timestamp(ty, value, TimeUnit::Millis).map_err(bad);
            }
            Some("io.debezium.time.MicroTimestamp") => {
                return timestamp(ty, value, TimeUnit::Micros).map_err(bad);
            }
            Some("io.debezium.time.NanoTimestamp") => {
                return timestamp(ty, value, TimeUnit::Nanos).map_err(bad);
            }
            _ => {}
        }
        match (ty, value) {
            (ColumnType::Timestamp | ColumnType::TimestampTz, Value::Number(_)) => {
                let Some(unit) = self.timestamp_unit else {
                    return Err(bad(
                        "an integer for a timestamp column, without a schema saying its unit; \
                         set unitable.ingest.timestamp-unit (ms, us or ns) on the table, or \
                         enable the source's schemas"
                            .into(),
                    ));
                };
                timestamp(ty, value, unit).map_err(bad)
            }
            (ColumnType::Timestamp, Value::String(text)) => Ok(Value::String(
                // A zoned text (ZonedTimestamp) for a timestamp without zone: its UTC time.
                DateTime::parse_from_rfc3339(text).map_or_else(
                    |_| text.clone(),
                    |t| format_naive_micros(t.with_timezone(&Utc).timestamp_micros()),
                ),
            )),
            (ColumnType::Date, Value::Number(_)) => {
                date_from_days(value).map(Value::String).map_err(bad)
            }
            _ => Ok(value.clone()),
        }
    }
}

/// An event value, split.
enum Envelope {
    /// `{"schema": ..., "payload": null}` or `null`.
    Tombstone,
    /// `{"schema": ..., "payload": ...}`: the payload parsed, the schema shared.
    Wrapped {
        payload: Value,
        schema: Option<Arc<Value>>,
    },
    /// The payload alone (no Connect schema): parse the whole value.
    Bare,
}

/// The top level of a value in the Connect envelope, without parsing its members.
#[derive(serde::Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// How many distinct Connect schemas a converter keeps parsed (a table's schema changes
/// rarely; the cache is emptied when full).
const SCHEMA_CACHE: usize = 32;

impl Converter {
    /// Splits a value into its payload and its Connect schema. The schema, the same text in
    /// every event of a table until the source changes, is parsed once and shared; with
    /// `schemas.enable=false` there is none and the value is the payload.
    fn split_envelope(&self, value: &[u8]) -> Result<Envelope, serde_json::Error> {
        // A value without the member name `"payload"` is not wrapped: parse it once, whole.
        // Nor is a value that is not an object (serde would read an array as a struct).
        let object = value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !object || !value.windows(9).any(|w| w == b"\"payload\"") {
            return Ok(Envelope::Bare);
        }
        let wrapped: Wrapped<'_> = match serde_json::from_slice(value) {
            Ok(w) => w,
            // Not an object at the top (an array, a string...): the caller reports it.
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Ok(Envelope::Bare);
            }
            Err(e) => return Err(e),
        };
        let raw_payload = match (wrapped.schema, wrapped.payload) {
            (None, None) => return Ok(Envelope::Bare),
            // `"payload": null` reads as None.
            (Some(_), None) => return Ok(Envelope::Tombstone),
            (_, Some(payload)) => payload,
        };
        let schema = match wrapped.schema {
            None => None,
            Some(raw_schema) => {
                let text = raw_schema.get();
                let mut cache = crate::writer::lock(&self.schemas);
                match cache.get(text) {
                    Some(parsed) => Some(parsed.clone()),
                    None => {
                        let parsed: Arc<Value> = Arc::new(serde_json::from_str(text)?);
                        if cache.len() >= SCHEMA_CACHE {
                            cache.clear();
                        }
                        cache.insert(text.to_string(), parsed.clone());
                        Some(parsed)
                    }
                }
            }
        };
        Ok(Envelope::Wrapped {
            payload: serde_json::from_str(raw_payload.get())?,
            schema,
        })
    }
}

/// The payload and the schema of a value that may be wrapped as `{"schema", "payload"}`.
fn unwrap_envelope(value: &Value) -> (Option<&Value>, Option<&Value>) {
    match value {
        Value::Object(m) if m.contains_key("payload") && m.contains_key("schema") => {
            let payload = m.get("payload").filter(|p| !p.is_null());
            (payload, m.get("schema"))
        }
        Value::Null => (None, None),
        other => (Some(other), None),
    }
}

/// The field schemas of the struct member `member` of an envelope schema, by field name.
fn field_schemas<'a>(
    schema: Option<&'a Value>,
    member: &str,
) -> Option<HashMap<&'a str, FieldSchema<'a>>> {
    let fields = schema?.get("fields")?.as_array()?;
    let row = fields
        .iter()
        .find(|f| f.get("field").and_then(Value::as_str) == Some(member))?;
    row.get("fields").map(fields_by_name)
}

fn fields_by_name(fields: &Value) -> HashMap<&str, FieldSchema<'_>> {
    fields
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| {
                    let name = f.get("field")?.as_str()?;
                    Some((
                        name,
                        FieldSchema {
                            name: f.get("name").and_then(Value::as_str),
                            parameters: f.get("parameters").and_then(Value::as_object),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A decimal text from Connect's Decimal bytes: the unscaled value as big-endian two's
/// complement, base64-encoded.
fn decimal_from_base64(text: &str, scale: u32) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("a Decimal value that is not base64 ({e})"))?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!(
            "a Decimal of {} bytes (1 to 16 fit a decimal(38))",
            bytes.len()
        ));
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut unscaled: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(b);
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

fn date_from_days(value: &Value) -> Result<String, String> {
    let days = value
        .as_i64()
        .ok_or_else(|| format!("a date that is not a day count: {value}"))?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");
    let date = i32::try_from(days)
        .ok()
        .and_then(|d| epoch.checked_add_signed(chrono::Duration::days(i64::from(d))))
        .ok_or_else(|| format!("{days} days from 1970-01-01 is not a date"))?;
    Ok(date.format("%Y-%m-%d").to_string())
}

/// A timestamp column's value from an integer in `unit` since the epoch.
fn timestamp(ty: ColumnType, value: &Value, unit: TimeUnit) -> Result<Value, String> {
    let n = value
        .as_i64()
        .ok_or_else(|| format!("a timestamp that is not an integer: {value}"))?;
    let micros = match unit {
        TimeUnit::Millis => n.checked_mul(1000),
        TimeUnit::Micros => Some(n),
        TimeUnit::Nanos => {
            if n % 1000 != 0 {
                return Err(format!(
                    "{n} ns has digits below a microsecond, which a timestamp column cannot hold"
                ));
            }
            Some(n / 1000)
        }
    }
    .ok_or_else(|| format!("{n} is out of the timestamp range"))?;
    match ty {
        ColumnType::Timestamp => Ok(Value::String(format_naive_micros(micros))),
        ColumnType::TimestampTz => Ok(Value::String(format!("{}Z", format_naive_micros(micros)))),
        // A timestamp source field for an integer column: the number, in the source's unit.
        _ => Ok(value.clone()),
    }
}

fn format_naive_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros).map_or_else(
        || micros.to_string(),
        |t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
    )
}

#[cfg(test)]
mod tests;
