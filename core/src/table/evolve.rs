//! Schema changes beyond adding a column: rename, drop, widen, make optional, move.
//!
//! Every change keeps the Iceberg field ids, so data files written before it are read through
//! the ids (renames and moves cost nothing, dropped columns are skipped, narrower types are
//! widened on read), and changelog records written before it are decoded with the schema named
//! in their `unitable.schema-id` header (see [`crate::record::RecordCodec::with_history`]).
//!
//! Primary-key columns never change: their names and values are the changelog key's bytes,
//! which fix a key's partition forever. Partition source columns cannot be dropped.

use std::fmt;

use super::{Column, TableDef};
use crate::error::{Error, Result};
use crate::types::ColumnType;

/// One change to a table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnChange {
    /// Give a column a new name.
    Rename {
        /// The column.
        column: String,
        /// Its new name.
        to: String,
    },
    /// Remove a column (its values stay in old data files, unread).
    Drop {
        /// The column.
        column: String,
    },
    /// Change a column to a wider type: int32 -> int64, float32 -> float64, or decimal(P,S) ->
    /// decimal(P2,S) with P2 > P.
    Widen {
        /// The column.
        column: String,
        /// The new type.
        to: ColumnType,
    },
    /// Allow nulls in a required column.
    MakeOptional {
        /// The column.
        column: String,
    },
    /// Move a column to the front, or after another column.
    Move {
        /// The column.
        column: String,
        /// The column it goes after; `None` for the first place.
        after: Option<String>,
    },
}

impl ColumnChange {
    /// The column the change is about.
    pub fn column(&self) -> &str {
        match self {
            ColumnChange::Rename { column, .. }
            | ColumnChange::Drop { column }
            | ColumnChange::Widen { column, .. }
            | ColumnChange::MakeOptional { column }
            | ColumnChange::Move { column, .. } => column,
        }
    }
}

impl fmt::Display for ColumnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnChange::Rename { column, to } => write!(f, "rename `{column}` to `{to}`"),
            ColumnChange::Drop { column } => write!(f, "drop `{column}`"),
            ColumnChange::Widen { column, to } => write!(f, "widen `{column}` to {to}"),
            ColumnChange::MakeOptional { column } => write!(f, "make `{column}` optional"),
            ColumnChange::Move { column, after } => match after {
                Some(a) => write!(f, "move `{column}` after `{a}`"),
                None => write!(f, "move `{column}` first"),
            },
        }
    }
}

/// Whether a column of type `from` may become type `to` (Iceberg's type promotions).
pub fn widens(from: ColumnType, to: ColumnType) -> bool {
    match (from, to) {
        (ColumnType::Int32, ColumnType::Int64) | (ColumnType::Float32, ColumnType::Float64) => true,
        (
            ColumnType::Decimal {
                precision: p1,
                scale: s1,
            },
            ColumnType::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

impl TableDef {
    /// The definition after `changes`, applied in order. Field ids are kept; an error names the
    /// change and why it cannot be made, and nothing is applied.
    pub fn evolved(&self, changes: &[ColumnChange]) -> Result<TableDef> {
        if changes.is_empty() {
            return Err(Error::invalid_definition(
                &self.name,
                "no column change given",
            ));
        }
        let mut def = self.clone();
        for change in changes {
            def.apply(change).map_err(|reason| {
                Error::invalid_definition(&self.name, format!("cannot {change}: {reason}"))
            })?;
        }
        super::check_columns(&def)?;
        Ok(def)
    }

    fn apply(&mut self, change: &ColumnChange) -> std::result::Result<(), String> {
        let name = change.column();
        let at = self
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| "there is no such column".to_string())?;
        let is_key = self.primary_key.iter().any(|k| k == name);
        let key_rule = || {
            "it is a primary-key column; key columns keep their name, type and NOT NULL because \
             the changelog key's bytes, which fix a key's partition, are made of them"
                .to_string()
        };
        match change {
            ColumnChange::Rename { to, .. } => {
                if is_key {
                    return Err(key_rule());
                }
                if self
                    .columns
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(to) && c.name != *name)
                {
                    return Err(format!("column `{to}` already exists"));
                }
                for field in &mut self.partition_by {
                    if field.column == *name {
                        field.column = to.clone();
                    }
                }
                self.columns[at].name = to.clone();
            }
            ColumnChange::Drop { .. } => {
                if is_key {
                    return Err(key_rule());
                }
                if self.partition_by.iter().any(|p| p.column == *name) {
                    return Err("the table is partitioned by it".into());
                }
                if self.columns.len() == 1 {
                    return Err("it is the table's only column".into());
                }
                self.columns.remove(at);
            }
            ColumnChange::Widen { to, .. } => {
                if is_key {
                    return Err(key_rule());
                }
                let from = self.columns[at].ty;
                if !widens(from, *to) {
                    return Err(format!(
                        "{from} cannot be widened to {to} (allowed: int32 -> int64, float32 -> float64, decimal(P,S) -> decimal(P2,S) with P2 > P)"
                    ));
                }
                if self.partition_by.iter().any(|p| p.column == *name) {
                    return Err("the table is partitioned by it".into());
                }
                self.columns[at].ty = *to;
            }
            ColumnChange::MakeOptional { .. } => {
                if is_key {
                    return Err(key_rule());
                }
                if !self.columns[at].required {
                    return Err("it is already optional".into());
                }
                self.columns[at].required = false;
            }
            ColumnChange::Move { after, .. } => {
                let column: Column = self.columns.remove(at);
                let to = match after {
                    None => 0,
                    Some(a) if a == name => return Err("a column cannot go after itself".into()),
                    Some(a) => {
                        self.columns
                            .iter()
                            .position(|c| c.name == *a)
                            .ok_or_else(|| format!("there is no column `{a}` to put it after"))?
                            + 1
                    }
                };
                self.columns.insert(to, column);
            }
        }
        Ok(())
    }
}
