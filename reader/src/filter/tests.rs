use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use iceberg::spec::PrimitiveType;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

fn types(name: &str) -> Option<PrimitiveType> {
    match name {
        "id" => Some(PrimitiveType::Long),
        "region" => Some(PrimitiveType::String),
        "amount" => Some(PrimitiveType::Double),
        _ => None,
    }
}

fn pushdown(text: &str) -> Option<String> {
    RowFilter::parse(text, &schema())
        .unwrap()
        .pushdown(&types)
        .map(|p| p.to_string())
}

#[test]
fn evaluates_exactly_with_nulls_as_false() {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec![
                Some("eu"),
                None,
                Some("us"),
                Some("eu"),
            ])),
            Arc::new(arrow::array::Float64Array::from(vec![
                Some(5.0),
                Some(50.0),
                None,
                Some(f64::NAN),
            ])),
        ],
    )
    .unwrap();
    let filter = RowFilter::parse("region = 'eu' OR amount > 10", &schema()).unwrap();
    assert_eq!(
        filter.columns().iter().cloned().collect::<Vec<_>>(),
        vec!["amount".to_string(), "region".to_string()]
    );
    let out = filter.bind(&schema()).unwrap().apply(&batch).unwrap();
    let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(ids.values().to_vec(), vec![1, 2, 4]);
    // Null region and null amount: the comparison is null, the row does not pass.
    let out = RowFilter::parse("region <> 'us'", &schema())
        .unwrap()
        .bind(&schema())
        .unwrap()
        .apply(&batch)
        .unwrap();
    let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(ids.values().to_vec(), vec![1, 4]);
}

#[test]
fn errors_name_the_problem() {
    let message = |text: &str| RowFilter::parse(text, &schema()).unwrap_err().to_string();
    assert!(
        message("colour = 'red'").contains("colour"),
        "{}",
        message("colour = 'red'")
    );
    assert!(
        message("id + 1").contains("not a boolean"),
        "{}",
        message("id + 1")
    );
    assert!(message("id = = 1").contains("id = = 1"));
    assert!(message("region > 1 AND").contains("not valid"));
}

#[test]
fn binds_to_a_narrower_batch_schema() {
    let narrow: SchemaRef = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let filter = RowFilter::parse("id >= 2", &schema()).unwrap();
    let batch = RecordBatch::try_new(
        narrow.clone(),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    )
    .unwrap();
    assert_eq!(
        filter
            .bind(&narrow)
            .unwrap()
            .apply(&batch)
            .unwrap()
            .num_rows(),
        2
    );
}

#[test]
fn pushdown_keeps_a_superset() {
    assert_eq!(pushdown("id > 5").as_deref(), Some("id > 5"));
    assert_eq!(pushdown("5 < id").as_deref(), Some("id > 5"));
    assert_eq!(
        pushdown("id IN (1, 2) AND region = 'eu'").as_deref(),
        Some("((id = 1) OR (id = 2)) AND (region = \"eu\")")
    );
    // The float comparison is left out of an AND, which still prunes by id.
    assert_eq!(
        pushdown("id = 3 AND amount > 1.5").as_deref(),
        Some("id = 3")
    );
    // ...but an OR with an untranslatable side cannot prune at all.
    assert_eq!(pushdown("id = 3 OR amount > 1.5"), None);
    // Under NOT a dropped conjunct would turn the superset into a subset: nothing is pushed.
    assert_eq!(pushdown("NOT (id = 3 AND amount > 1.5)"), None);
    assert!(pushdown("NOT (id = 3 AND region = 'eu')").is_some());
    assert_eq!(pushdown("upper(region) = 'EU'"), None);
    assert!(pushdown("region IS NULL").is_some());
    assert!(pushdown("id BETWEEN 2 AND 4").is_some());
}
