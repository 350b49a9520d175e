//! Wire <-> domain conversions for table definitions.

use std::collections::BTreeMap;

use unitable_core::naming::TableName;
use unitable_core::partition::{PartitionField, PartitionTransform};
use unitable_core::table::{Column, ColumnChange, RecordFormat, TableDef, TableSpec, TableState};
use unitable_core::types::ColumnType;

use crate::v1;

/// A wire message that cannot become a domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    /// A field is missing or has a value the API does not allow.
    #[error("field `{field}`: {reason}")]
    InvalidField {
        /// The field path, e.g. `definition.columns[2].type`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The domain rules rejected the value (bad name, primary key, ...).
    #[error(transparent)]
    Domain(#[from] unitable_core::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConversionError {
    ConversionError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

impl TryFrom<&v1::DataType> for ColumnType {
    type Error = ConversionError;

    fn try_from(t: &v1::DataType) -> Result<Self, Self::Error> {
        use v1::data_type::Kind;
        Ok(match t.kind() {
            Kind::Unspecified => return Err(invalid("type.kind", "is unspecified")),
            Kind::Bool => ColumnType::Bool,
            Kind::Int32 => ColumnType::Int32,
            Kind::Int64 => ColumnType::Int64,
            Kind::Float32 => ColumnType::Float32,
            Kind::Float64 => ColumnType::Float64,
            Kind::Decimal => {
                let text = format!("decimal({},{})", t.precision, t.scale);
                ColumnType::parse("", &text)?
            }
            Kind::String => ColumnType::String,
            Kind::Binary => ColumnType::Binary,
            Kind::Date => ColumnType::Date,
            Kind::Timestamp => ColumnType::Timestamp,
            Kind::Timestamptz => ColumnType::TimestampTz,
        })
    }
}

impl From<ColumnType> for v1::DataType {
    fn from(t: ColumnType) -> Self {
        use v1::data_type::Kind;
        let (kind, precision, scale) = match t {
            ColumnType::Bool => (Kind::Bool, 0, 0),
            ColumnType::Int32 => (Kind::Int32, 0, 0),
            ColumnType::Int64 => (Kind::Int64, 0, 0),
            ColumnType::Float32 => (Kind::Float32, 0, 0),
            ColumnType::Float64 => (Kind::Float64, 0, 0),
            ColumnType::Decimal { precision, scale } => (Kind::Decimal, precision, scale),
            ColumnType::String => (Kind::String, 0, 0),
            ColumnType::Binary => (Kind::Binary, 0, 0),
            ColumnType::Date => (Kind::Date, 0, 0),
            ColumnType::Timestamp => (Kind::Timestamp, 0, 0),
            ColumnType::TimestampTz => (Kind::Timestamptz, 0, 0),
        };
        v1::DataType {
            kind: kind as i32,
            precision,
            scale,
        }
    }
}

impl TryFrom<&v1::Column> for Column {
    type Error = ConversionError;

    fn try_from(c: &v1::Column) -> Result<Self, Self::Error> {
        let ty = c
            .r#type
            .as_ref()
            .ok_or_else(|| invalid(format!("column `{}`.type", c.name), "is missing"))?;
        let ty = ColumnType::try_from(ty).map_err(|e| match e {
            ConversionError::InvalidField { reason, .. } => {
                invalid(format!("column `{}`.type", c.name), reason)
            }
            other => other,
        })?;
        let mut column = Column::new(c.name.clone(), ty, c.required);
        column.doc = (!c.doc.is_empty()).then(|| c.doc.clone());
        Ok(column)
    }
}

impl From<&Column> for v1::Column {
    fn from(c: &Column) -> Self {
        v1::Column {
            name: c.name.clone(),
            r#type: Some(c.ty.into()),
            required: c.required,
            field_id: c.field_id,
            doc: c.doc.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<&v1::PartitionField> for PartitionField {
    type Error = ConversionError;

    fn try_from(p: &v1::PartitionField) -> Result<Self, Self::Error> {
        use v1::partition_field::Transform as T;
        let field = || format!("partition_by `{}`", p.column);
        let param = || {
            if p.parameter == 0 {
                Err(invalid(field(), "needs a positive parameter"))
            } else {
                Ok(p.parameter)
            }
        };
        let transform = match p.transform() {
            T::Unspecified => return Err(invalid(field(), "transform is unspecified")),
            T::Identity => PartitionTransform::Identity,
            T::Year => PartitionTransform::Year,
            T::Month => PartitionTransform::Month,
            T::Day => PartitionTransform::Day,
            T::Hour => PartitionTransform::Hour,
            T::Bucket => PartitionTransform::Bucket(param()?),
            T::Truncate => PartitionTransform::Truncate(param()?),
        };
        Ok(PartitionField {
            column: p.column.clone(),
            transform,
        })
    }
}

impl From<&PartitionField> for v1::PartitionField {
    fn from(p: &PartitionField) -> Self {
        use v1::partition_field::Transform as T;
        let (transform, parameter) = match p.transform {
            PartitionTransform::Identity => (T::Identity, 0),
            PartitionTransform::Year => (T::Year, 0),
            PartitionTransform::Month => (T::Month, 0),
            PartitionTransform::Day => (T::Day, 0),
            PartitionTransform::Hour => (T::Hour, 0),
            PartitionTransform::Bucket(n) => (T::Bucket, n),
            PartitionTransform::Truncate(w) => (T::Truncate, w),
        };
        v1::PartitionField {
            column: p.column.clone(),
            transform: transform as i32,
            parameter,
        }
    }
}

impl TryFrom<&v1::ColumnChange> for ColumnChange {
    type Error = ConversionError;

    fn try_from(c: &v1::ColumnChange) -> Result<Self, Self::Error> {
        use v1::column_change::Change;
        let named = |column: &str, what: &str| {
            if column.trim().is_empty() {
                Err(invalid(format!("column_changes.{what}.column"), "is empty"))
            } else {
                Ok(column.trim().to_string())
            }
        };
        Ok(match &c.change {
            None => return Err(invalid("column_changes", "a change names no operation")),
            Some(Change::Rename(r)) => ColumnChange::Rename {
                column: named(&r.column, "rename")?,
                to: r.to.trim().to_string(),
            },
            Some(Change::Drop(column)) => ColumnChange::Drop {
                column: named(column, "drop")?,
            },
            Some(Change::Widen(w)) => ColumnChange::Widen {
                column: named(&w.column, "widen")?,
                to: w
                    .to
                    .as_ref()
                    .ok_or_else(|| invalid("column_changes.widen.to", "is missing"))
                    .and_then(ColumnType::try_from)?,
            },
            Some(Change::MakeOptional(column)) => ColumnChange::MakeOptional {
                column: named(column, "make_optional")?,
            },
            Some(Change::Move(m)) => ColumnChange::Move {
                column: named(&m.column, "move")?,
                after: m.after.as_ref().map(|a| a.trim().to_string()),
            },
        })
    }
}

impl From<&ColumnChange> for v1::ColumnChange {
    fn from(c: &ColumnChange) -> Self {
        use v1::column_change::Change;
        let change = match c {
            ColumnChange::Rename { column, to } => Change::Rename(v1::RenameColumn {
                column: column.clone(),
                to: to.clone(),
            }),
            ColumnChange::Drop { column } => Change::Drop(column.clone()),
            ColumnChange::Widen { column, to } => Change::Widen(v1::WidenColumn {
                column: column.clone(),
                to: Some((*to).into()),
            }),
            ColumnChange::MakeOptional { column } => Change::MakeOptional(column.clone()),
            ColumnChange::Move { column, after } => Change::Move(v1::MoveColumn {
                column: column.clone(),
                after: after.clone(),
            }),
        };
        v1::ColumnChange {
            change: Some(change),
        }
    }
}

/// Builds and validates a domain table definition from a create request's definition.
pub fn table_def_from_wire(d: &v1::TableDefinition) -> Result<TableDef, ConversionError> {
    let name: TableName = d.table.parse()?;
    let columns = d
        .columns
        .iter()
        .map(Column::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let partition_by = d
        .partition_by
        .iter()
        .map(PartitionField::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let changelog_format = match d.changelog.as_ref().map(|c| c.format.as_str()) {
        None | Some("") => RecordFormat::default(),
        Some(name) => RecordFormat::parse(name).ok_or_else(|| {
            invalid(
                "changelog.format",
                format!("unknown changelog format `{name}`; use json-v1 or avro-v1"),
            )
        })?,
    };
    let spec = TableSpec {
        changelog_format,
        columns,
        primary_key: d.primary_key.clone(),
        buckets: (d.buckets != 0).then_some(d.buckets),
        partition_by,
        properties: d
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    Ok(TableDef::new(name, spec)?)
}

fn table_def_to_wire(def: &TableDef) -> v1::TableDefinition {
    v1::TableDefinition {
        table: def.name.to_string(),
        columns: def.columns.iter().map(v1::Column::from).collect(),
        primary_key: def.primary_key.clone(),
        buckets: def.buckets,
        partition_by: def
            .partition_by
            .iter()
            .map(v1::PartitionField::from)
            .collect(),
        properties: def
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        changelog: Some(v1::ChangelogBinding {
            topic: def.changelog.topic.to_string(),
            partitions: def.changelog.partitions,
            format: def.changelog.format.as_str().to_string(),
            cluster: def.changelog.cluster.clone().unwrap_or_default(),
            generation: def.changelog.generation,
            current_topic: def.changelog.current_topic().to_string(),
            history: def
                .changelog
                .history
                .iter()
                .map(|g| v1::ChangelogGeneration {
                    generation: g.generation,
                    cluster: g.cluster.clone().unwrap_or_default(),
                    topic: unitable_core::changelog::routes::physical_topic(
                        &def.changelog.topic,
                        g.generation,
                    )
                    .to_string(),
                    end: g
                        .end
                        .0
                        .iter()
                        .map(|(p, o)| v1::PartitionOffset {
                            partition: p.0,
                            offset: o.0,
                        })
                        .collect(),
                })
                .collect(),
            moving: def.changelog.moving.clone().unwrap_or_default(),
        }),
    }
}

/// The wire form of a table's state.
pub fn table_info_to_wire(state: &TableState) -> v1::TableInfo {
    v1::TableInfo {
        definition: Some(table_def_to_wire(&state.def)),
        table_uuid: state.uuid.clone(),
        location: state.location.clone(),
        schema_id: state.schema_id,
        current_snapshot_id: state.current_snapshot_id,
        metadata_location: state.metadata_location.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_round_trip_through_the_wire() {
        let mut spec = TableSpec {
            columns: [
                "id:int64!",
                "amt:decimal(10,3)",
                "ts:timestamptz!",
                "b:binary",
            ]
            .iter()
            .map(|c| Column::parse(c).unwrap())
            .collect(),
            primary_key: vec!["id".into()],
            buckets: Some(7),
            ..TableSpec::default()
        };
        spec.partition_by = vec![
            PartitionField::parse("hour(ts)").unwrap(),
            PartitionField::parse("truncate[3](id)").unwrap(),
        ];
        spec.properties.insert("k".into(), "v".into());
        let def = TableDef::new("a.b".parse().unwrap(), spec).unwrap();
        let wire = table_def_to_wire(&def);
        assert_eq!(table_def_from_wire(&wire).unwrap(), def);
    }

    #[test]
    fn rejects_unspecified_enums_and_missing_types() {
        let mut d = v1::TableDefinition {
            table: "a.b".into(),
            columns: vec![v1::Column {
                name: "x".into(),
                r#type: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = table_def_from_wire(&d).unwrap_err().to_string();
        assert!(err.contains("column `x`.type"), "{err}");
        d.columns[0].r#type = Some(v1::DataType::default());
        let err = table_def_from_wire(&d).unwrap_err().to_string();
        assert!(err.contains("unspecified"), "{err}");
        d.table = "bad".into();
        assert!(table_def_from_wire(&d).is_err());
    }
}
