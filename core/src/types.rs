//! Column types unitable supports, their text form (`decimal(12,2)`) and their Iceberg mapping.

use std::fmt;

use arrow::datatypes::{DataType, TimeUnit};
use iceberg::arrow::UTC_TIME_ZONE;
use iceberg::spec::{PrimitiveType, Type};

use crate::error::{Error, Result};

/// The largest decimal precision Iceberg allows.
pub const MAX_DECIMAL_PRECISION: u32 = 38;

/// A column type. Each maps to exactly one Iceberg primitive type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// Iceberg `boolean`.
    Bool,
    /// Iceberg `int`.
    Int32,
    /// Iceberg `long`.
    Int64,
    /// Iceberg `float`.
    Float32,
    /// Iceberg `double`.
    Float64,
    /// Iceberg `decimal(P,S)`.
    Decimal {
        /// Total digits, 1..=38.
        precision: u32,
        /// Digits after the point, 0..=precision.
        scale: u32,
    },
    /// Iceberg `string` (UTF-8).
    String,
    /// Iceberg `binary`.
    Binary,
    /// Iceberg `date` (days since 1970-01-01).
    Date,
    /// Iceberg `timestamp` (microseconds, no time zone).
    Timestamp,
    /// Iceberg `timestamptz` (microseconds, UTC).
    TimestampTz,
}

impl ColumnType {
    /// Parses the text form used by the CLI and the docs. `column` is only used in errors.
    pub fn parse(column: &str, text: &str) -> Result<Self> {
        let unknown = || Error::UnknownType {
            column: column.to_string(),
            type_name: text.to_string(),
        };
        let t = text.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "bool" | "boolean" => ColumnType::Bool,
            "int32" | "int" => ColumnType::Int32,
            "int64" | "long" | "bigint" => ColumnType::Int64,
            "float32" | "float" => ColumnType::Float32,
            "float64" | "double" => ColumnType::Float64,
            "string" | "utf8" => ColumnType::String,
            "binary" | "bytes" => ColumnType::Binary,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "timestamptz" => ColumnType::TimestampTz,
            other => {
                let inner = other
                    .strip_prefix("decimal(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(unknown)?;
                let (p, s) = inner.split_once(',').ok_or_else(unknown)?;
                let precision: u32 = p.trim().parse().map_err(|_| unknown())?;
                let scale: u32 = s.trim().parse().map_err(|_| unknown())?;
                if precision == 0 || precision > MAX_DECIMAL_PRECISION || scale > precision {
                    return Err(Error::InvalidDefinition {
                        table: String::new(),
                        reason: format!(
                            "column `{column}`: decimal({precision},{scale}) needs 1 <= precision <= {MAX_DECIMAL_PRECISION} and scale <= precision"
                        ),
                    });
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }

    /// Whether values of this type may not be part of a primary key (floating point).
    pub fn is_floating(&self) -> bool {
        matches!(self, ColumnType::Float32 | ColumnType::Float64)
    }

    /// The Iceberg type of this column type.
    pub fn to_iceberg(&self) -> Type {
        Type::Primitive(match *self {
            ColumnType::Bool => PrimitiveType::Boolean,
            ColumnType::Int32 => PrimitiveType::Int,
            ColumnType::Int64 => PrimitiveType::Long,
            ColumnType::Float32 => PrimitiveType::Float,
            ColumnType::Float64 => PrimitiveType::Double,
            ColumnType::Decimal { precision, scale } => PrimitiveType::Decimal { precision, scale },
            ColumnType::String => PrimitiveType::String,
            ColumnType::Binary => PrimitiveType::Binary,
            ColumnType::Date => PrimitiveType::Date,
            ColumnType::Timestamp => PrimitiveType::Timestamp,
            ColumnType::TimestampTz => PrimitiveType::Timestamptz,
        })
    }

    /// The Arrow type of this column type, the same as iceberg-rust's Iceberg-to-Arrow mapping
    /// (so batches from the changelog and from Iceberg scans have equal types): `decimal(P,S)`
    /// is `Decimal128(P,S)`, `binary` is `LargeBinary`, `timestamp` is
    /// `Timestamp(Microsecond, None)` and `timestamptz` is `Timestamp(Microsecond, "+00:00")`
    /// ([`iceberg::arrow::UTC_TIME_ZONE`]).
    pub fn to_arrow(&self) -> DataType {
        match *self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Decimal { precision, scale } => {
                // Both are at most MAX_DECIMAL_PRECISION (38) for a parsed type.
                let precision = precision.min(MAX_DECIMAL_PRECISION) as u8;
                let scale = scale.min(MAX_DECIMAL_PRECISION) as i8;
                DataType::Decimal128(precision, scale)
            }
            ColumnType::String => DataType::Utf8,
            ColumnType::Binary => DataType::LargeBinary,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC_TIME_ZONE.into()))
            }
        }
    }

    /// The column type of an Iceberg type, if unitable supports it.
    pub fn from_iceberg(ty: &Type) -> Option<Self> {
        let Type::Primitive(p) = ty else {
            return None;
        };
        Some(match *p {
            PrimitiveType::Boolean => ColumnType::Bool,
            PrimitiveType::Int => ColumnType::Int32,
            PrimitiveType::Long => ColumnType::Int64,
            PrimitiveType::Float => ColumnType::Float32,
            PrimitiveType::Double => ColumnType::Float64,
            PrimitiveType::Decimal { precision, scale } => ColumnType::Decimal { precision, scale },
            PrimitiveType::String => ColumnType::String,
            PrimitiveType::Binary => ColumnType::Binary,
            PrimitiveType::Date => ColumnType::Date,
            PrimitiveType::Timestamp => ColumnType::Timestamp,
            PrimitiveType::Timestamptz => ColumnType::TimestampTz,
            _ => return None,
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Int32 => f.write_str("int32"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float32 => f.write_str("float32"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::String => f.write_str("string"),
            ColumnType::Binary => f.write_str("binary"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TimestampTz => f.write_str("timestamptz"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_text_and_iceberg() {
        for text in [
            "bool",
            "int32",
            "int64",
            "float32",
            "float64",
            "decimal(12,2)",
            "decimal(38,0)",
            "string",
            "binary",
            "date",
            "timestamp",
            "timestamptz",
        ] {
            let ty = ColumnType::parse("c", text).unwrap();
            assert_eq!(ty.to_string(), text);
            assert_eq!(ColumnType::from_iceberg(&ty.to_iceberg()), Some(ty));
        }
        assert_eq!(
            ColumnType::parse("c", " Decimal( 5 , 1 ) ").unwrap(),
            ColumnType::Decimal {
                precision: 5,
                scale: 1
            }
        );
    }

    #[test]
    fn arrow_types_match_iceberg_rust() {
        for text in [
            "bool",
            "int32",
            "int64",
            "float32",
            "float64",
            "decimal(12,2)",
            "decimal(38,38)",
            "string",
            "binary",
            "date",
            "timestamp",
            "timestamptz",
        ] {
            let ty = ColumnType::parse("c", text).unwrap();
            let iceberg = iceberg::arrow::type_to_arrow_type(&ty.to_iceberg()).unwrap();
            assert_eq!(ty.to_arrow(), iceberg, "{text}");
        }
    }

    #[test]
    fn rejects_unknown_and_out_of_range_types() {
        for bad in ["uuid", "decimal(5)", "decimal(a,b)", "int33", ""] {
            let err = ColumnType::parse("price", bad).unwrap_err().to_string();
            assert!(err.contains("`price`"), "{err}");
        }
        for bad in ["decimal(0,0)", "decimal(39,2)", "decimal(5,6)"] {
            assert!(matches!(
                ColumnType::parse("price", bad),
                Err(Error::InvalidDefinition { .. })
            ));
        }
    }
}
