use iceberg::spec::TableMetadataBuilder;

use super::*;

fn name() -> TableName {
    "shop.orders".parse().unwrap()
}

fn spec(columns: &[&str], pk: &[&str]) -> TableSpec {
    TableSpec {
        columns: columns.iter().map(|c| Column::parse(c).unwrap()).collect(),
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
        ..TableSpec::default()
    }
}

fn reason(spec: TableSpec) -> String {
    TableDef::new(name(), spec).unwrap_err().to_string()
}

#[test]
fn assigns_field_ids_and_binding() {
    let def = TableDef::new(name(), spec(&["id:int64!", "v:string"], &["id"])).unwrap();
    assert_eq!(
        def.columns.iter().map(|c| c.field_id).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(def.buckets, DEFAULT_BUCKETS);
    assert_eq!(def.changelog.topic.as_str(), "unitable.shop.orders");
    assert_eq!(def.changelog.partitions, DEFAULT_BUCKETS);
    assert!(!def.is_append_only());
}

#[test]
fn a_primary_key_implies_not_null() {
    let name: TableName = "shop.orders".parse().unwrap();
    let def = TableDef::new(
        name,
        spec(&["a:int64", "b:string", "c:string"], &["b", "a"]),
    )
    .unwrap();
    let required: Vec<bool> = def.columns.iter().map(|c| c.required).collect();
    assert_eq!(required, [true, true, false]);
    assert_eq!(def.primary_key, ["b", "a"]);
}

#[test]
fn rejects_broken_definitions_with_the_reason() {
    assert!(reason(spec(&[], &[])).contains("at least one column"));
    assert!(reason(spec(&["a:int64!", "A:string"], &[])).contains("declared twice"));
    assert!(reason(spec(&["a:float64!"], &["a"])).contains("floating-point"));
    assert!(reason(spec(&["a:int64!"], &["b"])).contains("not a column"));
    assert!(reason(spec(&["a:int64!"], &["a", "a"])).contains("listed twice"));
    assert!(reason(spec(&["_a:int64"], &[])).contains("reserved"));
    assert!(reason(spec(&["1a:int64"], &[])).contains("must start with a letter"));
    let mut s = spec(&["a:int64!"], &[]);
    s.buckets = Some(0);
    assert!(reason(s).contains("buckets"));
    let mut s = spec(&["a:int64!", "d:date"], &[]);
    s.partition_by = vec![PartitionField::parse("hour(d)").unwrap()];
    assert!(reason(s).contains("cannot apply"));
    let mut s = spec(&["a:int64!"], &[]);
    s.partition_by = vec![PartitionField::parse("day(x)").unwrap()];
    assert!(reason(s).contains("not a column"));
    let mut s = spec(&["a:int64!"], &[]);
    s.properties.insert(props::BUCKETS.into(), "9".into());
    assert!(reason(s).contains("managed by unitable"));
}

#[test]
fn round_trips_through_iceberg_metadata() {
    let mut s = spec(
        &[
            "id:int64!",
            "region:string!",
            "amount:decimal(12,2)",
            "ts:timestamptz!",
            "f:float64",
        ],
        &["region", "id"],
    );
    s.buckets = Some(8);
    s.partition_by = vec![
        PartitionField::parse("day(ts)").unwrap(),
        PartitionField::parse("bucket[16](id)").unwrap(),
    ];
    s.properties.insert("owner".into(), "growth".into());
    let def = TableDef::new(name(), s).unwrap();
    let creation = def
        .to_table_creation(Some("file:///tmp/wh/shop/orders".into()))
        .unwrap();
    let metadata = TableMetadataBuilder::from_table_creation(creation)
        .unwrap()
        .build()
        .unwrap()
        .metadata;
    let back = TableDef::from_iceberg(name(), &metadata).unwrap();
    assert_eq!(back, def);
    let mut ids: Vec<i32> = metadata.current_schema().identifier_field_ids().collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn rejects_foreign_iceberg_tables() {
    let def = TableDef::new(name(), spec(&["id:int64!"], &["id"])).unwrap();
    let mut creation = def.to_table_creation(Some("file:///tmp/x".into())).unwrap();
    creation.properties.remove(props::BUCKETS);
    let metadata = TableMetadataBuilder::from_table_creation(creation)
        .unwrap()
        .build()
        .unwrap()
        .metadata;
    let err = TableDef::from_iceberg(name(), &metadata).unwrap_err();
    assert!(err.to_string().contains("unitable.buckets"), "{err}");
}

mod evolve {
    use super::super::*;
    use crate::types::ColumnType;

    fn def() -> TableDef {
        TableDef::new(
            "s.t".parse().unwrap(),
            TableSpec {
                columns: ["id:int64!", "day:date", "qty:int32", "note:string"]
                    .iter()
                    .map(|c| Column::parse(c).unwrap())
                    .collect(),
                primary_key: vec!["id".into()],
                partition_by: vec![crate::partition::PartitionField::parse("day").unwrap()],
                ..TableSpec::default()
            },
        )
        .unwrap()
    }

    fn refused(change: ColumnChange, text: &str) {
        let err = def()
            .evolved(std::slice::from_ref(&change))
            .unwrap_err()
            .to_string();
        assert!(err.contains(text), "{change}: {err}");
    }

    #[test]
    fn changes_keep_field_ids() {
        let changed = def()
            .evolved(&[
                ColumnChange::Rename {
                    column: "day".into(),
                    to: "on_day".into(),
                },
                ColumnChange::Widen {
                    column: "qty".into(),
                    to: ColumnType::Int64,
                },
                ColumnChange::Move {
                    column: "note".into(),
                    after: Some("id".into()),
                },
            ])
            .unwrap();
        let got: Vec<(i32, &str)> = changed
            .columns
            .iter()
            .map(|c| (c.field_id, c.name.as_str()))
            .collect();
        assert_eq!(got, [(1, "id"), (4, "note"), (2, "on_day"), (3, "qty")]);
        assert_eq!(changed.partition_by[0].column, "on_day");
        assert_eq!(changed.columns[3].ty, ColumnType::Int64);
    }

    #[test]
    fn changes_that_break_keys_or_partitions_are_refused() {
        refused(
            ColumnChange::Rename {
                column: "id".into(),
                to: "ident".into(),
            },
            "primary-key column",
        );
        refused(
            ColumnChange::Drop {
                column: "id".into(),
            },
            "primary-key column",
        );
        refused(
            ColumnChange::MakeOptional {
                column: "id".into(),
            },
            "primary-key column",
        );
        refused(
            ColumnChange::Drop {
                column: "day".into(),
            },
            "partitioned by it",
        );
        refused(
            ColumnChange::Widen {
                column: "note".into(),
                to: ColumnType::Int64,
            },
            "string cannot be widened to int64",
        );
        refused(
            ColumnChange::Widen {
                column: "qty".into(),
                to: ColumnType::Int32,
            },
            "cannot be widened",
        );
        refused(
            ColumnChange::Rename {
                column: "qty".into(),
                to: "NOTE".into(),
            },
            "already exists",
        );
        refused(
            ColumnChange::Rename {
                column: "qty".into(),
                to: "9x".into(),
            },
            "must start with a letter",
        );
        refused(
            ColumnChange::MakeOptional {
                column: "qty".into(),
            },
            "already optional",
        );
        refused(
            ColumnChange::Move {
                column: "qty".into(),
                after: Some("nope".into()),
            },
            "no column `nope`",
        );
        refused(ColumnChange::Drop { column: "x".into() }, "no such column");
    }
}
