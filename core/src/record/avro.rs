//! The `avro-v1` value form: a row as an Avro binary record in the Confluent wire framing.
//!
//! A value is `0x00`, the 4-byte big-endian schema id, then the row encoded with the Avro
//! schema [`value_schema`] derives from the table's columns as of the record's Iceberg schema.
//! Keys stay the canonical JSON of `json-v1`, so a table's partitioning is the same in both
//! formats and key lookups never depend on the value format.
//!
//! The schema id is not handed out by a registry: it is [`schema_id`] of the table uuid and the
//! Iceberg schema id, so every node computes the same id with no coordination, and the
//! service's HTTP port answers `GET /schemas/ids/{id}` as a schema registry would.
//!
//! A value is decoded with the schema of its framing's id when the codec knows it
//! (`super::history`); otherwise with the codec's own columns in order, a value that ends
//! early leaving the rest null and columns after the last known one skipped, which is right
//! for schemas that only added columns.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::convert::decimal_bound;
use super::scalar::Scalar;
use crate::bucket::murmur2;
use crate::naming::TableName;
use crate::table::Column;
use crate::types::ColumnType;

/// The first byte of an `avro-v1` value (the Confluent framing's magic byte).
pub const MAGIC: u8 = 0;
/// Bytes before the Avro body: the magic byte and the schema id.
pub const FRAME_LEN: usize = 5;

/// The schema id in the framing of values written by table `table_uuid` under Iceberg schema
/// `iceberg_schema_id`: `murmur2("<table uuid>/<schema id>") & 0x7fffffff`, with 0 read as 1
/// (a registry never hands out 0). Ids of different tables can collide (about one chance in
/// 2^31 per pair of schemas); the registry endpoint then names both tables instead of guessing.
pub fn schema_id(table_uuid: &str, iceberg_schema_id: i32) -> u32 {
    let text = format!("{table_uuid}/{iceberg_schema_id}");
    let id = (murmur2(text.as_bytes()) as u32) & 0x7fff_ffff;
    id.max(1)
}

/// The Avro type of one column type (without nullability).
fn avro_type(ty: ColumnType) -> Value {
    match ty {
        ColumnType::Bool => json!("boolean"),
        ColumnType::Int32 => json!("int"),
        ColumnType::Int64 => json!("long"),
        ColumnType::Float32 => json!("float"),
        ColumnType::Float64 => json!("double"),
        ColumnType::Decimal { precision, scale } => json!({
            "type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale
        }),
        ColumnType::String => json!("string"),
        ColumnType::Binary => json!("bytes"),
        ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
        ColumnType::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        ColumnType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
    }
}

/// The Avro schema of a table's values with these columns (in schema order): a record named
/// after the table (namespace = the table's namespace) with one field per column, a nullable
/// column as the union `["null", T]` with default null, and the Iceberg field id as the field's
/// `field-id` property.
pub fn value_schema(table: &TableName, columns: &[Column]) -> Value {
    let fields: Vec<Value> = columns
        .iter()
        .map(|c| {
            let mut field = Map::new();
            field.insert("name".into(), json!(c.name));
            if c.required {
                field.insert("type".into(), avro_type(c.ty));
            } else {
                field.insert("type".into(), json!(["null", avro_type(c.ty)]));
                field.insert("default".into(), Value::Null);
            }
            if let Some(doc) = &c.doc {
                field.insert("doc".into(), json!(doc));
            }
            field.insert("field-id".into(), json!(c.field_id));
            Value::Object(field)
        })
        .collect();
    json!({
        "type": "record",
        "name": table.table(),
        "namespace": table.namespace(),
        "fields": fields,
    })
}

/// Appends a zig-zag varint (Avro `int` and `long`).
pub(super) fn put_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Appends Avro `bytes` (or `string`): the length, then the bytes.
pub(super) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_long(buf, bytes.len() as i64);
    buf.extend_from_slice(bytes);
}

/// Appends an Avro decimal: the unscaled value as big-endian two's complement in as few bytes
/// as keep its sign.
pub(super) fn put_decimal(buf: &mut Vec<u8>, unscaled: i128) {
    let be = unscaled.to_be_bytes();
    let mut start = 0;
    while start < be.len() - 1 {
        let (b, next) = (be[start], be[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    put_bytes(buf, &be[start..]);
}

/// Reads Avro binary data from a byte slice.
pub(super) struct AvroReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> AvroReader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Whether every byte has been read.
    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("the value ends {} bytes early", n - self.remaining().min(n)))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn long(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = self.take(1)?[0];
            if shift == 63 && byte > 1 {
                return Err("a varint is longer than 64 bits".into());
            }
            z |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err("a varint is longer than 64 bits".into());
            }
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} is out of range for an Avro int"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
        self.take(len)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The value of one column of type `ty`, written as `["null", T]` when `nullable`.
    pub(super) fn column(
        &mut self,
        ty: ColumnType,
        nullable: bool,
    ) -> Result<Option<Scalar<'a>>, String> {
        if nullable {
            match self.long()? {
                0 => return Ok(None),
                1 => {}
                branch => {
                    return Err(format!(
                        "union branch {branch} (a nullable column is [\"null\", T])"
                    ));
                }
            }
        }
        Ok(Some(match ty {
            ColumnType::Bool => match self.take(1)?[0] {
                0 => Scalar::Bool(false),
                1 => Scalar::Bool(true),
                b => return Err(format!("boolean byte {b} (expected 0 or 1)")),
            },
            ColumnType::Int32 => Scalar::Int32(self.int()?),
            ColumnType::Int64 => Scalar::Int64(self.long()?),
            ColumnType::Float32 => Scalar::Float32(f32::from_le_bytes(self.fixed()?)),
            ColumnType::Float64 => Scalar::Float64(f64::from_le_bytes(self.fixed()?)),
            ColumnType::Decimal { precision, scale } => {
                Scalar::Decimal(decimal(self.bytes()?, precision, scale)?)
            }
            ColumnType::String => Scalar::Utf8(Cow::Borrowed(
                std::str::from_utf8(self.bytes()?).map_err(|_| "a string is not UTF-8")?,
            )),
            ColumnType::Binary => Scalar::Binary(self.bytes()?.to_vec()),
            ColumnType::Date => Scalar::Date(self.int()?),
            ColumnType::Timestamp | ColumnType::TimestampTz => Scalar::Timestamp(self.long()?),
        }))
    }
}

/// An Avro decimal's unscaled value, checked against the column's precision.
fn decimal(bytes: &[u8], precision: u32, scale: u32) -> Result<i128, String> {
    let Some(&first) = bytes.first() else {
        return Err("a decimal has no bytes".into());
    };
    let fill = if first & 0x80 != 0 { 0xff } else { 0 };
    // Longer than 16 bytes is fine only when the extra leading bytes just repeat the sign.
    let cut = bytes.len().saturating_sub(16);
    if bytes[..cut].iter().any(|&b| b != fill) {
        return Err(format!(
            "a decimal of {} bytes does not fit decimal({precision},{scale})",
            bytes.len()
        ));
    }
    let mut be = [fill; 16];
    be[16 - (bytes.len() - cut)..].copy_from_slice(&bytes[cut..]);
    let v = i128::from_be_bytes(be);
    let bound = decimal_bound(precision);
    if v >= bound || v <= -bound {
        return Err(format!(
            "decimal value {v} (unscaled) does not fit decimal({precision},{scale})"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_avro_spec_examples() {
        // The Avro specification's zig-zag table.
        for (v, want) in [
            (0i64, vec![0x00u8]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (2, vec![0x04]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut buf = Vec::new();
            put_long(&mut buf, v);
            assert_eq!(buf, want, "{v}");
        }
        for v in [i64::MIN, i64::MAX, 0, -1, 1 << 40, -(1 << 40)] {
            let mut buf = Vec::new();
            put_long(&mut buf, v);
            assert_eq!(AvroReader::new(&buf).long(), Ok(v));
        }
    }

    #[test]
    fn decimals_use_the_fewest_bytes_and_read_back() {
        let cases = [
            (0i128, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x00, 0x80]),
            (-1, vec![0xff]),
            (-128, vec![0x80]),
            (-129, vec![0xff, 0x7f]),
        ];
        for (v, want) in cases {
            let mut buf = Vec::new();
            put_decimal(&mut buf, v);
            assert_eq!(&buf[1..], &want[..], "{v}");
            assert_eq!(buf[0] as usize, want.len() * 2, "length prefix of {v}");
            assert_eq!(decimal(&want, 38, 0), Ok(v));
        }
        let big = 10i128.pow(38) - 1;
        let mut buf = Vec::new();
        put_decimal(&mut buf, -big);
        assert_eq!(
            AvroReader::new(&buf).bytes().map(|b| decimal(b, 38, 2)),
            Ok(Ok(-big))
        );
        // Sign-extended past 16 bytes is still the same number; real extra digits are not.
        assert_eq!(decimal(&[0xff; 20], 38, 0), Ok(-1));
        assert!(decimal(&[1; 17], 38, 0).is_err());
        assert!(
            decimal(&[0x27, 0x10], 4, 0)
                .unwrap_err()
                .contains("does not fit")
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut r = AvroReader::new(&[0xff; 11]);
        assert!(r.long().unwrap_err().contains("longer than 64 bits"));
        let mut r = AvroReader::new(&[0x08, b'a']);
        assert!(r.bytes().unwrap_err().contains("ends 3 bytes early"));
        let mut r = AvroReader::new(&[0x01]);
        assert!(r.bytes().unwrap_err().contains("negative length"));
        let mut r = AvroReader::new(&[0x04]);
        assert!(
            r.column(ColumnType::Int32, true)
                .unwrap_err()
                .contains("union branch 2")
        );
        let mut r = AvroReader::new(&[0x02, 0xff, 0xff]);
        assert!(
            r.column(ColumnType::String, false)
                .unwrap_err()
                .contains("UTF-8")
        );
    }

    #[test]
    fn schema_ids_are_stable_and_positive() {
        let a = schema_id("00000000-0000-7000-8000-000000000001", 0);
        assert_eq!(a, schema_id("00000000-0000-7000-8000-000000000001", 0));
        assert_ne!(a, schema_id("00000000-0000-7000-8000-000000000001", 1));
        assert!(a > 0 && a <= i32::MAX as u32);
    }
}
