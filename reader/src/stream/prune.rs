//! Partition pruning for STREAM reads: which changelog partitions can hold a row that passes
//! the filter.
//!
//! A row's partition is a hash of its canonical key bytes, so only a filter that pins every
//! primary-key column to a finite set of values can rule partitions out: `id = 5`,
//! `id IN (1, 2)`, `region = 'eu' AND id IN (1, 2)`, ORs of such, ANDed with anything else.
//! The key tuples such a filter allows are encoded with the table's [`RecordCodec`] (exactly the
//! bytes the writer hashes) and their partitions are the ones to read. Everything else —
//! ranges, non-key columns, functions, NOT, a key compared with another column, a literal whose
//! type is not the column's own — leaves the filter unconstrained and every partition is read.
//!
//! The derivation only ever keeps a superset: a row that passes the filter has a key among
//! the tuples found. `=` and `IN` are false for NULL, so null values drop out; a filter that is
//! constant false or NULL allows no key at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use unitable_core::record::RecordCodec;

use crate::filter::RowFilter;

/// Most key tuples a filter may expand to before pruning gives up (and reads everything).
const MAX_TUPLES: usize = 10_000;

/// Alternatives (ORed), each pinning some key columns (by key position) to a set of values.
type Alternatives = Vec<BTreeMap<usize, Vec<ScalarValue>>>;

/// The partitions that can hold rows passing `filter`, or `None` when the filter does not pin
/// the whole primary key to finitely many values (read every partition). `decoded` is the
/// schema the filter was parsed against (the codec's decoded schema).
pub(crate) fn partitions_for(
    filter: &RowFilter,
    codec: &RecordCodec,
    key: &[String],
    decoded: &SchemaRef,
) -> Option<BTreeSet<u32>> {
    if key.is_empty() {
        return None;
    }
    let key_fields = key
        .iter()
        .map(|k| decoded.field_with_name(k).ok().cloned())
        .collect::<Option<Vec<_>>>()?;
    let alternatives = allowed(filter.expr(), key, &key_fields)?;
    let mut partitions = BTreeSet::new();
    let mut tuples = 0usize;
    for alternative in &alternatives {
        if alternative.len() < key.len() {
            return None;
        }
        let count = alternative
            .values()
            .try_fold(1usize, |n, v| n.checked_mul(v.len()))?;
        tuples = tuples.checked_add(count)?;
        if tuples > MAX_TUPLES {
            return None;
        }
        if count == 0 {
            continue;
        }
        // The cartesian product of the value sets, column by column.
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(count); key.len()];
        let mut stride = count;
        for (k, values) in alternative.values().enumerate() {
            stride /= values.len();
            for row in 0..count {
                columns[k].push(values[(row / stride) % values.len()].clone());
            }
        }
        let arrays = columns
            .into_iter()
            .zip(&key_fields)
            .map(|(values, field)| {
                let array = ScalarValue::iter_to_array(values).ok()?;
                if array.data_type() == field.data_type() {
                    Some(array)
                } else {
                    // Only a timestamp's zone name differs (see `same_type`).
                    arrow::compute::cast(&array, field.data_type()).ok()
                }
            })
            .collect::<Option<Vec<ArrayRef>>>()?;
        let schema = Arc::new(Schema::new(
            key_fields
                .iter()
                .map(|f| f.clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema, arrays).ok()?;
        let (encoded, errors) = codec.encode_keys(&batch).ok()?;
        if !errors.is_empty() {
            return None;
        }
        partitions.extend(encoded.iter().map(|k| k.partition.0));
    }
    Some(partitions)
}

/// The key values `expr` allows, or `None` when it does not restrict the key to finitely many
/// values (the caller then treats the expression as "any row").
fn allowed(expr: &Expr, key: &[String], fields: &[Field]) -> Option<Alternatives> {
    match expr {
        Expr::Literal(ScalarValue::Boolean(None | Some(false)), _) => Some(Vec::new()),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (allowed(left, key, fields), allowed(right, key, fields)) {
                (Some(l), Some(r)) => both(l, r),
                (Some(one), None) | (None, Some(one)) => Some(one),
                (None, None) => None,
            },
            Operator::Or => {
                let mut l = allowed(left, key, fields)?;
                l.extend(allowed(right, key, fields)?);
                (l.len() <= MAX_TUPLES).then_some(l)
            }
            Operator::Eq => {
                let (column, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _))
                    | (Expr::Literal(v, _), Expr::Column(c)) => (c.name.as_str(), v),
                    _ => return None,
                };
                pin(key, fields, column, std::slice::from_ref(value))
            }
            _ => None,
        },
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) => {
            let Expr::Column(c) = expr.as_ref() else {
                return None;
            };
            let values = list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            pin(key, fields, c.name.as_str(), &values)
        }
        _ => None,
    }
}

/// One alternative pinning key column `column` to `values` (nulls dropped: `=` and `IN` are
/// never true for them); `None` if `column` is not a key column or a value is not of the
/// column's exact type.
fn pin(
    key: &[String],
    fields: &[Field],
    column: &str,
    values: &[ScalarValue],
) -> Option<Alternatives> {
    let k = key.iter().position(|name| name == column)?;
    let ty = fields[k].data_type();
    let mut kept: Vec<ScalarValue> = Vec::with_capacity(values.len());
    for v in values {
        if v.is_null() {
            continue;
        }
        if !same_type(&v.data_type(), ty) {
            return None;
        }
        if !kept.contains(v) {
            kept.push(v.clone());
        }
    }
    if kept.is_empty() {
        return Some(Vec::new());
    }
    Some(vec![BTreeMap::from([(k, kept)])])
}

/// Whether a literal of type `value` encodes like the column type `column`. Zone names of
/// timestamps with a zone do not matter (both hold UTC instants).
fn same_type(value: &DataType, column: &DataType) -> bool {
    match (value, column) {
        (DataType::Timestamp(a, Some(_)), DataType::Timestamp(b, Some(_))) => a == b,
        _ => value == column,
    }
}

/// The AND of two sets of alternatives: every pair merged (value sets of a column both pin
/// intersected; pairs that leave a column no value drop out).
fn both(left: Alternatives, right: Alternatives) -> Option<Alternatives> {
    if left.len().checked_mul(right.len())? > MAX_TUPLES {
        return None;
    }
    let mut out = Vec::new();
    for l in &left {
        'pairs: for r in &right {
            let mut merged = l.clone();
            for (k, values) in r {
                match merged.get_mut(k) {
                    Some(have) => {
                        have.retain(|v| values.contains(v));
                        if have.is_empty() {
                            continue 'pairs;
                        }
                    }
                    None => {
                        merged.insert(*k, values.clone());
                    }
                }
            }
            out.push(merged);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
