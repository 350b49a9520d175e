//! Row filters: a SQL boolean expression over a table's columns (`amount > 10 AND region =
//! 'eu'`), parsed and type-checked by DataFusion, evaluated exactly on Arrow batches, and, where
//! it can be, translated into an Iceberg predicate so that scans skip partitions and row groups.
//!
//! The pushed-down predicate only ever prunes: it keeps a superset of the matching rows, and the
//! exact filter runs on every batch afterwards. Parts of the expression Iceberg cannot express
//! (functions, floating-point and decimal comparisons, column-to-column comparisons) are left
//! out of the predicate, never approximated.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;

use crate::error::{ReadError, ReadResult};

/// A parsed, type-checked row filter.
#[derive(Debug, Clone)]
pub struct RowFilter {
    text: String,
    expr: Expr,
    columns: BTreeSet<String>,
}

/// A filter bound to one batch schema, ready to evaluate.
#[derive(Debug, Clone)]
pub struct BoundFilter {
    physical: Arc<dyn PhysicalExpr>,
}

fn bad(text: &str, reason: impl std::fmt::Display) -> ReadError {
    ReadError::BadRequest {
        reason: format!("filter `{text}` is not valid: {reason}"),
    }
}

impl RowFilter {
    /// Parses `text` against the table's columns (`schema`). Errors name what is wrong: an
    /// unknown column, a type mismatch, a syntax error, or an expression that is not boolean.
    pub fn parse(text: &str, schema: &SchemaRef) -> ReadResult<Self> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| bad(text, e))?;
        let ctx = SessionContext::new();
        let parsed = ctx
            .parse_sql_expr(text, &df_schema)
            .map_err(|e| bad(text, e))?;
        let simplifier = ExprSimplifier::new(
            SimplifyContext::default().with_schema(Arc::new(df_schema.clone())),
        );
        let expr = simplifier
            .coerce(parsed, &df_schema)
            .and_then(|e| simplifier.simplify(e))
            .map_err(|e| bad(text, e))?;
        let ty = expr.get_type(&df_schema).map_err(|e| bad(text, e))?;
        if ty != DataType::Boolean {
            return Err(bad(text, format!("it is of type {ty}, not a boolean")));
        }
        let columns = expr
            .column_refs()
            .into_iter()
            .map(|c| c.name.clone())
            .collect();
        let filter = Self {
            text: text.to_string(),
            expr,
            columns,
        };
        // Binding catches what parsing lets through (aggregates, unsupported functions).
        filter.bind(schema)?;
        Ok(filter)
    }

    /// The filter as the user wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The columns the filter reads.
    pub fn columns(&self) -> &BTreeSet<String> {
        &self.columns
    }

    /// The parsed, coerced and simplified expression (what pruning reasons about).
    pub(crate) fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The filter for batches of `schema`, which must have every column the filter reads.
    pub fn bind(&self, schema: &SchemaRef) -> ReadResult<BoundFilter> {
        let df_schema =
            DFSchema::try_from(schema.as_ref().clone()).map_err(|e| bad(&self.text, e))?;
        let physical = SessionContext::new()
            .create_physical_expr(self.expr.clone(), &df_schema)
            .map_err(|e| bad(&self.text, e))?;
        Ok(BoundFilter { physical })
    }

    /// The part of the filter Iceberg can prune with, if any. `column_type` gives the Iceberg
    /// type of a column by name (`None`: leave comparisons on it out).
    pub fn pushdown(
        &self,
        column_type: &dyn Fn(&str) -> Option<iceberg::spec::PrimitiveType>,
    ) -> Option<Predicate> {
        to_predicate(&self.expr, false, column_type)
    }
}

impl BoundFilter {
    /// Which rows of `batch` pass (null counts as not passing).
    pub fn mask(&self, batch: &RecordBatch) -> ReadResult<BooleanArray> {
        let fail = |e: &dyn std::fmt::Display| ReadError::BadRequest {
            reason: format!("the filter failed on a batch: {e}"),
        };
        let value = self.physical.evaluate(batch).map_err(|e| fail(&e))?;
        let array = value.into_array(batch.num_rows()).map_err(|e| fail(&e))?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| fail(&"the filter did not give booleans"))?;
        // Nulls do not pass.
        Ok(match mask.nulls() {
            None => mask.clone(),
            Some(_) => mask.iter().map(|v| Some(v == Some(true))).collect(),
        })
    }

    /// The rows of `batch` that pass.
    pub fn apply(&self, batch: &RecordBatch) -> ReadResult<RecordBatch> {
        let mask = self.mask(batch)?;
        filter_record_batch(batch, &mask).map_err(|e| ReadError::BadRequest {
            reason: format!("the filter failed on a batch: {e}"),
        })
    }
}

/// The conjunction of what translates of DataFusion filters pushed into a scan (each keeps a
/// superset of its rows, so their AND does too).
pub(crate) fn predicate_of(
    filters: &[Expr],
    column_type: &dyn Fn(&str) -> Option<iceberg::spec::PrimitiveType>,
) -> Option<Predicate> {
    filters
        .iter()
        .filter_map(|f| to_predicate(f, false, column_type))
        .reduce(Predicate::and)
}

/// `schema` restricted to `columns`, in the order given.
pub(crate) fn project_schema(schema: &Schema, columns: &[String]) -> ReadResult<SchemaRef> {
    let mut fields = Vec::with_capacity(columns.len());
    for name in columns {
        let field = schema
            .field_with_name(name)
            .map_err(|_| ReadError::BadRequest {
                reason: format!(
                    "no column `{name}` (columns: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        fields.push(field.clone());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Translates `expr`. Not `exact`: the result may keep more rows than `expr` (an AND keeps the
/// sides that translate). `exact`: the result keeps exactly the rows of `expr`, or is `None`;
/// needed under NOT, where a superset would turn into a subset.
fn to_predicate(
    expr: &Expr,
    exact: bool,
    column_type: &dyn Fn(&str) -> Option<iceberg::spec::PrimitiveType>,
) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => {
                match (
                    to_predicate(left, exact, column_type),
                    to_predicate(right, exact, column_type),
                ) {
                    (Some(l), Some(r)) => Some(l.and(r)),
                    (Some(p), None) | (None, Some(p)) if !exact => Some(p),
                    _ => None,
                }
            }
            Operator::Or => Some(to_predicate(left, exact, column_type)?.or(to_predicate(
                right,
                exact,
                column_type,
            )?)),
            _ => comparison(left, *op, right, column_type),
        },
        Expr::Not(inner) => Some(to_predicate(inner, true, column_type)?.negate()),
        Expr::IsNull(inner) => Some(Reference::new(column_of(inner)?).is_null()),
        Expr::IsNotNull(inner) => Some(Reference::new(column_of(inner)?).is_not_null()),
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            let name = column_of(expr)?;
            let ty = column_type(name)?;
            let values = list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => datum(v, &ty),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            let reference = Reference::new(name);
            Some(if *negated {
                reference.is_not_in(values)
            } else {
                reference.is_in(values)
            })
        }
        Expr::Between(between) => {
            let name = column_of(&between.expr)?;
            let ty = column_type(name)?;
            let (Expr::Literal(low, _), Expr::Literal(high, _)) =
                (between.low.as_ref(), between.high.as_ref())
            else {
                return None;
            };
            let (low, high) = (datum(low, &ty)?, datum(high, &ty)?);
            let inside = Reference::new(name)
                .greater_than_or_equal_to(low)
                .and(Reference::new(name).less_than_or_equal_to(high));
            Some(if between.negated {
                inside.negate()
            } else {
                inside
            })
        }
        _ => None,
    }
}

fn column_of(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

fn comparison(
    left: &Expr,
    op: Operator,
    right: &Expr,
    column_type: &dyn Fn(&str) -> Option<iceberg::spec::PrimitiveType>,
) -> Option<Predicate> {
    // Literal on the left: mirror the operator.
    let (name, value, op) = match (left, right) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c.name.as_str(), v, op),
        (Expr::Literal(v, _), Expr::Column(c)) => (c.name.as_str(), v, op.swap()?),
        _ => return None,
    };
    let ty = column_type(name)?;
    let value = datum(value, &ty)?;
    let r = Reference::new(name);
    Some(match op {
        Operator::Eq => r.equal_to(value),
        Operator::NotEq => r.not_equal_to(value),
        Operator::Lt => r.less_than(value),
        Operator::LtEq => r.less_than_or_equal_to(value),
        Operator::Gt => r.greater_than(value),
        Operator::GtEq => r.greater_than_or_equal_to(value),
        _ => return None,
    })
}

/// The Iceberg literal for `value` compared with a column of type `ty`, when it is exact.
/// Floating point and decimals are left out: NaN ordering and scale rules differ between
/// DataFusion and Iceberg's pruning, and pruning must never drop a matching row.
pub(crate) fn datum(value: &ScalarValue, ty: &iceberg::spec::PrimitiveType) -> Option<Datum> {
    use iceberg::spec::PrimitiveType as P;
    let int = |v: i64| -> Option<Datum> {
        match ty {
            P::Int => i32::try_from(v).ok().map(Datum::int),
            P::Long => Some(Datum::long(v)),
            _ => None,
        }
    };
    match value {
        ScalarValue::Boolean(Some(b)) if *ty == P::Boolean => Some(Datum::bool(*b)),
        ScalarValue::Int8(Some(v)) => int(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => int(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => int(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => int(*v),
        ScalarValue::UInt8(Some(v)) => int(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => int(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => int(i64::from(*v)),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
            if *ty == P::String =>
        {
            Some(Datum::string(s))
        }
        ScalarValue::Date32(Some(d)) if *ty == P::Date => Some(Datum::date(*d)),
        ScalarValue::TimestampMicrosecond(Some(v), tz) => match (ty, tz) {
            (P::Timestamp, None) => Some(Datum::timestamp_micros(*v)),
            (P::Timestamptz, Some(_)) => Some(Datum::timestamptz_micros(*v)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
