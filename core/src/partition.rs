//! Partition specs: the text form (`day(ts)`, `bucket[16](id)`) and the Iceberg mapping.

use std::fmt;

use iceberg::spec::Transform;

use crate::error::{Error, Result};
use crate::types::ColumnType;

/// A partition transform unitable can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionTransform {
    /// The value itself.
    Identity,
    /// Years since 1970 of a date or timestamp.
    Year,
    /// Months since 1970-01 of a date or timestamp.
    Month,
    /// Days since 1970-01-01 of a date or timestamp.
    Day,
    /// Hours since the epoch of a timestamp.
    Hour,
    /// Iceberg's murmur3 bucket of the value into N buckets.
    Bucket(u32),
    /// The value truncated to width W.
    Truncate(u32),
}

impl PartitionTransform {
    /// The Iceberg transform.
    pub fn to_iceberg(self) -> Transform {
        match self {
            PartitionTransform::Identity => Transform::Identity,
            PartitionTransform::Year => Transform::Year,
            PartitionTransform::Month => Transform::Month,
            PartitionTransform::Day => Transform::Day,
            PartitionTransform::Hour => Transform::Hour,
            PartitionTransform::Bucket(n) => Transform::Bucket(n),
            PartitionTransform::Truncate(w) => Transform::Truncate(w),
        }
    }

    /// The unitable transform of an Iceberg transform, if supported.
    pub fn from_iceberg(t: Transform) -> Option<Self> {
        Some(match t {
            Transform::Identity => PartitionTransform::Identity,
            Transform::Year => PartitionTransform::Year,
            Transform::Month => PartitionTransform::Month,
            Transform::Day => PartitionTransform::Day,
            Transform::Hour => PartitionTransform::Hour,
            Transform::Bucket(n) => PartitionTransform::Bucket(n),
            Transform::Truncate(w) => PartitionTransform::Truncate(w),
            _ => return None,
        })
    }

    /// Whether the transform applies to a source column of type `ty`.
    pub fn accepts(self, ty: ColumnType) -> bool {
        use ColumnType as C;
        match self {
            PartitionTransform::Identity => true,
            PartitionTransform::Year | PartitionTransform::Month | PartitionTransform::Day => {
                matches!(ty, C::Date | C::Timestamp | C::TimestampTz)
            }
            PartitionTransform::Hour => matches!(ty, C::Timestamp | C::TimestampTz),
            PartitionTransform::Bucket(_) => !matches!(ty, C::Bool | C::Float32 | C::Float64),
            PartitionTransform::Truncate(_) => matches!(
                ty,
                C::Int32 | C::Int64 | C::Decimal { .. } | C::String | C::Binary
            ),
        }
    }

    fn name_suffix(self) -> &'static str {
        match self {
            PartitionTransform::Identity => "",
            PartitionTransform::Year => "_year",
            PartitionTransform::Month => "_month",
            PartitionTransform::Day => "_day",
            PartitionTransform::Hour => "_hour",
            PartitionTransform::Bucket(_) => "_bucket",
            PartitionTransform::Truncate(_) => "_trunc",
        }
    }
}

/// One field of a table's partition spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionField {
    /// The source column.
    pub column: String,
    /// How the partition value is derived from it.
    pub transform: PartitionTransform,
}

impl PartitionField {
    /// The Iceberg partition field name (`ts_day`, `id_bucket`, or the column for identity).
    pub fn iceberg_name(&self) -> String {
        format!("{}{}", self.column, self.transform.name_suffix())
    }

    /// Parses one field: `col`, `identity(col)`, `year(col)`, `month(col)`, `day(col)`,
    /// `hour(col)`, `bucket[N](col)` or `truncate[W](col)`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidDefinition {
            table: String::new(),
            reason: format!(
                "partition field `{text}`: {reason}; expected col, identity(col), year(col), month(col), day(col), hour(col), bucket[N](col) or truncate[W](col)"
            ),
        };
        let t = text.trim();
        let Some(open) = t.find('(') else {
            if t.is_empty() || t.contains([')', '[', ']', ' ']) {
                return Err(bad("not a column name"));
            }
            return Ok(PartitionField {
                column: t.to_string(),
                transform: PartitionTransform::Identity,
            });
        };
        let column = t[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad("missing `)`"))?
            .trim();
        if column.is_empty() {
            return Err(bad("no source column"));
        }
        let head = t[..open].trim().to_ascii_lowercase();
        let (name, param) = match head.split_once('[') {
            Some((name, rest)) => {
                let n = rest
                    .strip_suffix(']')
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("the parameter in [] must be a positive integer"))?;
                (name.to_string(), Some(n))
            }
            None => (head, None),
        };
        let transform = match (name.as_str(), param) {
            ("identity", None) => PartitionTransform::Identity,
            ("year", None) => PartitionTransform::Year,
            ("month", None) => PartitionTransform::Month,
            ("day", None) => PartitionTransform::Day,
            ("hour", None) => PartitionTransform::Hour,
            ("bucket", Some(n)) => PartitionTransform::Bucket(n),
            ("truncate", Some(w)) => PartitionTransform::Truncate(w),
            ("bucket" | "truncate", None) => return Err(bad("needs a parameter in []")),
            _ => return Err(bad("unknown transform")),
        };
        Ok(PartitionField {
            column: column.to_string(),
            transform,
        })
    }
}

impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.column;
        match self.transform {
            PartitionTransform::Identity => write!(f, "identity({c})"),
            PartitionTransform::Year => write!(f, "year({c})"),
            PartitionTransform::Month => write!(f, "month({c})"),
            PartitionTransform::Day => write!(f, "day({c})"),
            PartitionTransform::Hour => write!(f, "hour({c})"),
            PartitionTransform::Bucket(n) => write!(f, "bucket[{n}]({c})"),
            PartitionTransform::Truncate(w) => write!(f, "truncate[{w}]({c})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_transform() {
        for (text, printed) in [
            ("region", "identity(region)"),
            ("identity(region)", "identity(region)"),
            ("year(ts)", "year(ts)"),
            ("month(ts)", "month(ts)"),
            ("DAY( ts )", "day(ts)"),
            ("hour(ts)", "hour(ts)"),
            ("bucket[16](id)", "bucket[16](id)"),
            ("truncate[4](name)", "truncate[4](name)"),
        ] {
            let field = PartitionField::parse(text).unwrap();
            assert_eq!(field.to_string(), printed);
            assert_eq!(PartitionField::parse(printed).unwrap(), field);
            assert_eq!(
                PartitionTransform::from_iceberg(field.transform.to_iceberg()),
                Some(field.transform)
            );
        }
        assert_eq!(
            PartitionField::parse("bucket[16](id)")
                .unwrap()
                .iceberg_name(),
            "id_bucket"
        );
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "",
            "day(ts",
            "day()",
            "bucket(id)",
            "bucket[0](id)",
            "bucket[x](id)",
            "week(ts)",
            "a b",
        ] {
            assert!(PartitionField::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transforms_check_source_types() {
        assert!(PartitionTransform::Day.accepts(ColumnType::TimestampTz));
        assert!(!PartitionTransform::Hour.accepts(ColumnType::Date));
        assert!(!PartitionTransform::Bucket(4).accepts(ColumnType::Float64));
        assert!(!PartitionTransform::Truncate(4).accepts(ColumnType::Date));
    }
}
