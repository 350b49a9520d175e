//! JSON values -> typed column values -> Arrow builders.
//!
//! [`parse`] states, per column type, which JSON forms a reader accepts: always the form
//! unitable writes, plus other writers' forms whose meaning is unambiguous (numbers as
//! strings, decimals as JSON numbers, fewer fraction digits, zone offsets other than `Z`).
//! Anything that would need rounding, truncation or a guessed zone is an error.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::convert::{parse_date, parse_decimal, parse_timestamp};
use super::json_read::Raw;
use crate::types::ColumnType;

/// Standard base64; padding optional on input.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One typed column value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar<'a> {
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Unscaled, at the column's scale.
    Decimal(i128),
    Utf8(Cow<'a, str>),
    Binary(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch.
    Timestamp(i64),
}

fn expected(what: &str, raw: &Raw<'_>) -> String {
    format!("expected {what}, found {}", raw.kind())
}

/// The string inside `raw` with escapes resolved, or an error naming what was expected.
fn string<'a>(raw: &Raw<'a>, what: &str) -> Result<Cow<'a, str>, String> {
    match raw.as_str() {
        Some(s) => s.map_err(|e| e.to_string()),
        None => Err(expected(what, raw)),
    }
}

/// An integer from a JSON number or a string holding one (`42`, `"-7"`); no fraction or
/// exponent.
fn integer<T: std::str::FromStr>(raw: &Raw<'_>, type_name: &str) -> Result<T, String> {
    let text = match raw {
        Raw::Number(n) => Cow::Borrowed(*n),
        Raw::Str { .. } => string(raw, "an integer")?,
        _ => return Err(expected(&format!("an integer ({type_name})"), raw)),
    };
    let digits = text.strip_prefix('-').unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not an integer"));
    }
    text.parse()
        .map_err(|_| format!("{text} is out of range for {type_name}"))
}

/// A float from a JSON number, the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, or a string
/// holding a JSON number. Parsed from the digits as written, so `f32` values are exact.
fn float<T: std::str::FromStr>(raw: &Raw<'_>, nan: T, inf: T, neg_inf: T) -> Result<T, String> {
    let text = match raw {
        Raw::Number(n) => Cow::Borrowed(*n),
        Raw::Str { .. } => {
            let s = string(raw, "a number")?;
            match s.as_ref() {
                "NaN" => return Ok(nan),
                "Infinity" => return Ok(inf),
                "-Infinity" => return Ok(neg_inf),
                _ => {}
            }
            // Only number syntax: Rust's parser would also take `inf` or `nan`.
            let numeric = s
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
            if s.is_empty() || !numeric {
                return Err(format!("`{s}` is not a number"));
            }
            s
        }
        _ => return Err(expected("a number", raw)),
    };
    text.parse()
        .map_err(|_| format!("`{text}` is not a number"))
}

/// The value of `raw` for a column of type `ty`; `None` for JSON null.
pub(super) fn parse<'a>(ty: ColumnType, raw: &Raw<'a>) -> Result<Option<Scalar<'a>>, String> {
    if matches!(raw, Raw::Null) {
        return Ok(None);
    }
    let value = match ty {
        ColumnType::Bool => Scalar::Bool(match raw {
            Raw::Bool(b) => *b,
            Raw::Str { .. } => match string(raw, "a boolean")?.as_ref() {
                "true" => true,
                "false" => false,
                other => return Err(format!("`{other}` is not a boolean")),
            },
            _ => return Err(expected("a boolean", raw)),
        }),
        ColumnType::Int32 => Scalar::Int32(integer(raw, "int32")?),
        ColumnType::Int64 => Scalar::Int64(integer(raw, "int64")?),
        ColumnType::Float32 => {
            Scalar::Float32(float(raw, f32::NAN, f32::INFINITY, f32::NEG_INFINITY)?)
        }
        ColumnType::Float64 => {
            Scalar::Float64(float(raw, f64::NAN, f64::INFINITY, f64::NEG_INFINITY)?)
        }
        ColumnType::Decimal { precision, scale } => {
            let text = match raw {
                Raw::Number(n) => Cow::Borrowed(*n),
                _ => string(raw, "a decimal string")?,
            };
            Scalar::Decimal(parse_decimal(&text, precision, scale)?)
        }
        ColumnType::String => Scalar::Utf8(string(raw, "a string")?),
        ColumnType::Binary => {
            let text = string(raw, "a base64 string")?;
            Scalar::Binary(
                BASE64_LENIENT
                    .decode(text.as_bytes())
                    .map_err(|e| format!("invalid base64: {e}"))?,
            )
        }
        ColumnType::Date => Scalar::Date(parse_date(&string(raw, "a date string")?)?),
        ColumnType::Timestamp => {
            Scalar::Timestamp(parse_timestamp(&string(raw, "a timestamp string")?, false)?)
        }
        ColumnType::TimestampTz => {
            Scalar::Timestamp(parse_timestamp(&string(raw, "a timestamp string")?, true)?)
        }
    };
    Ok(Some(value))
}

/// An Arrow builder for one column.
pub(super) enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Utf8(StringBuilder),
    Binary(LargeBinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    /// A builder producing arrays of `ty.to_arrow()`.
    pub(super) fn new(ty: ColumnType, capacity: usize) -> Self {
        match ty {
            ColumnType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            ColumnType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Decimal { .. } => Self::Decimal(
                Decimal128Builder::with_capacity(capacity).with_data_type(ty.to_arrow()),
            ),
            ColumnType::String => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 8)),
            ColumnType::Binary => {
                Self::Binary(LargeBinaryBuilder::with_capacity(capacity, capacity * 8))
            }
            ColumnType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp | ColumnType::TimestampTz => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_data_type(ty.to_arrow()),
            ),
        }
    }

    /// Appends a value (or null). The value's type comes from [`parse`] with this column's
    /// type; anything else is refused rather than mis-stored.
    pub(super) fn append(&mut self, value: Option<&Scalar<'_>>) -> Result<(), String> {
        match (self, value) {
            (b, None) => b.append_null(),
            (Self::Bool(b), Some(Scalar::Bool(v))) => b.append_value(*v),
            (Self::Int32(b), Some(Scalar::Int32(v))) => b.append_value(*v),
            (Self::Int64(b), Some(Scalar::Int64(v))) => b.append_value(*v),
            (Self::Float32(b), Some(Scalar::Float32(v))) => b.append_value(*v),
            (Self::Float64(b), Some(Scalar::Float64(v))) => b.append_value(*v),
            (Self::Decimal(b), Some(Scalar::Decimal(v))) => b.append_value(*v),
            (Self::Utf8(b), Some(Scalar::Utf8(v))) => b.append_value(v),
            (Self::Binary(b), Some(Scalar::Binary(v))) => b.append_value(v),
            (Self::Date(b), Some(Scalar::Date(v))) => b.append_value(*v),
            (Self::Timestamp(b), Some(Scalar::Timestamp(v))) => b.append_value(*v),
            (_, Some(other)) => return Err(format!("internal: value {other:?} for another type")),
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    /// The built array.
    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Raw<'_> {
        Raw::Number(text)
    }

    fn s(text: &str) -> Raw<'_> {
        Raw::Str {
            raw: text,
            escaped: false,
        }
    }

    #[test]
    fn accepts_unambiguous_forms_from_other_writers() {
        let dec = ColumnType::Decimal {
            precision: 5,
            scale: 2,
        };
        assert_eq!(
            parse(ColumnType::Int64, &s("-7")),
            Ok(Some(Scalar::Int64(-7)))
        );
        assert_eq!(
            parse(ColumnType::Int32, &num("42")),
            Ok(Some(Scalar::Int32(42)))
        );
        assert_eq!(
            parse(ColumnType::Bool, &s("true")),
            Ok(Some(Scalar::Bool(true)))
        );
        assert_eq!(parse(dec, &num("12.3")), Ok(Some(Scalar::Decimal(1230))));
        assert_eq!(parse(dec, &num("1E2")), Ok(Some(Scalar::Decimal(10000))));
        assert_eq!(
            parse(ColumnType::Float64, &s("1.5")),
            Ok(Some(Scalar::Float64(1.5)))
        );
        assert_eq!(
            parse(ColumnType::Float32, &num("7")),
            Ok(Some(Scalar::Float32(7.0)))
        );
        assert_eq!(
            parse(ColumnType::Binary, &s("Zg")),
            Ok(Some(Scalar::Binary(b"f".to_vec())))
        );
        assert_eq!(
            parse(ColumnType::TimestampTz, &s("1970-01-01 01:00:00+01:00")),
            Ok(Some(Scalar::Timestamp(0)))
        );
        let escaped = Raw::Str {
            raw: r"\u0041",
            escaped: true,
        };
        assert_eq!(
            parse(ColumnType::String, &escaped),
            Ok(Some(Scalar::Utf8("A".into())))
        );
        assert_eq!(parse(ColumnType::Date, &Raw::Null), Ok(None));
        match parse(ColumnType::Float64, &s("NaN")) {
            Ok(Some(Scalar::Float64(v))) => assert!(v.is_nan()),
            other => panic!("{other:?}"),
        }
        // f32 digits are parsed as f32 directly, not rounded twice through f64.
        assert_eq!(
            parse(ColumnType::Float32, &num("1.00000017881393432617187499")),
            Ok(Some(Scalar::Float32(1.000_000_1)))
        );
    }

    #[test]
    fn rejects_what_would_need_a_guess() {
        let dec = ColumnType::Decimal {
            precision: 5,
            scale: 2,
        };
        let cases = [
            (ColumnType::Int32, num("1.0"), "not an integer"),
            (ColumnType::Int32, num("1e3"), "not an integer"),
            (
                ColumnType::Int32,
                num("2147483648"),
                "out of range for int32",
            ),
            (ColumnType::Int64, s(""), "not an integer"),
            (
                ColumnType::Int64,
                Raw::Bool(true),
                "expected an integer (int64), found a boolean",
            ),
            (ColumnType::Bool, num("1"), "expected a boolean"),
            (ColumnType::Float64, s("inf"), "not a number"),
            (ColumnType::Float64, s("nan"), "not a number"),
            (dec, num("1.234"), "more than 2 fraction digits"),
            (dec, s("1000"), "does not fit decimal(5,2)"),
            (
                ColumnType::String,
                num("1"),
                "expected a string, found a number",
            ),
            (ColumnType::Binary, s("Zg=x"), "invalid base64"),
            (ColumnType::Date, num("0"), "expected a date string"),
            (
                ColumnType::Timestamp,
                s("1970-01-01T00:00:00Z"),
                "has no zone",
            ),
            (
                ColumnType::TimestampTz,
                s("1970-01-01T00:00:00"),
                "needs a zone",
            ),
            (ColumnType::String, Raw::Nested, "found an object or array"),
        ];
        for (ty, raw, want) in cases {
            let err = parse(ty, &raw).unwrap_err();
            assert!(err.contains(want), "{ty} {raw:?}: {err}");
        }
    }
}
