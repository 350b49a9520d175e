use super::*;
use crate::table::TableSpec;
use crate::types::ColumnType;

fn def(name: &str) -> TableDef {
    TableDef::new(
        name.parse().unwrap(),
        TableSpec {
            columns: vec![
                Column::parse("id:int64!").unwrap(),
                Column::parse("v:string").unwrap(),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(3),
            ..TableSpec::default()
        },
    )
    .unwrap()
}

async fn open(dir: &Path) -> TableCatalog {
    TableCatalog::open(CatalogConfig::embedded(dir))
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_catalog_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let created = catalog.create(&def("shop.orders")).await.unwrap();
    assert_eq!(created.def, def("shop.orders"));
    assert!(created.current_snapshot_id.is_none());
    assert!(created.location.starts_with("file://"));
    catalog.create(&def("shop.users")).await.unwrap();
    catalog.create(&def("ops.events")).await.unwrap();
    assert!(matches!(
        catalog.create(&def("shop.orders")).await,
        Err(Error::TableAlreadyExists { .. })
    ));
    drop(catalog);

    let catalog = open(dir.path()).await;
    let names: Vec<String> = catalog
        .list(None)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["ops.events", "shop.orders", "shop.users"]);
    assert_eq!(catalog.list(Some("ops")).await.unwrap().len(), 1);
    assert!(catalog.list(Some("nope")).await.unwrap().is_empty());

    let state = catalog
        .add_column(
            &"shop.orders".parse().unwrap(),
            &Column::parse("note:string").unwrap(),
        )
        .await
        .unwrap();
    let note = state.def.column("note").unwrap();
    assert_eq!(
        (note.field_id, note.ty, note.required),
        (3, ColumnType::String, false)
    );
    assert!(matches!(
        catalog
            .add_column(
                &"shop.orders".parse().unwrap(),
                &Column::parse("note:int32").unwrap()
            )
            .await,
        Err(Error::InvalidDefinition { .. })
    ));
    assert!(matches!(
        catalog
            .add_column(
                &"shop.orders".parse().unwrap(),
                &Column::parse("x:int32!").unwrap()
            )
            .await,
        Err(Error::InvalidDefinition { .. })
    ));

    let name: TableName = "shop.orders".parse().unwrap();
    let location = catalog.describe(&name).await.unwrap().location;
    let local = location.strip_prefix("file://").unwrap();
    assert!(Path::new(local).join("metadata").exists());
    catalog.drop(&name, true).await.unwrap();
    assert!(matches!(
        catalog.describe(&name).await,
        Err(Error::TableNotFound { .. })
    ));
    assert!(matches!(
        catalog.drop(&name, true).await,
        Err(Error::TableNotFound { .. })
    ));
}

#[tokio::test]
async fn memory_warehouse_and_bad_uris() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CatalogConfig::embedded(dir.path());
    config.warehouse = "memory://catalog-test/wh".into();
    let catalog = TableCatalog::open(config).await.unwrap();
    let state = catalog.create(&def("a.b")).await.unwrap();
    assert!(
        state.location.starts_with("memory://catalog-test/wh/a/b"),
        "{}",
        state.location
    );

    for (uri, warehouse) in [
        ("mysql://x", "file:///tmp/x"),
        ("sqlite://", "file:///tmp/x"),
        ("sqlite:///tmp/x.db", "/tmp/relative-ish"),
        ("sqlite:///tmp/x.db", "gs://bucket"),
    ] {
        let err = TableCatalog::open(CatalogConfig {
            uri: uri.into(),
            warehouse: warehouse.into(),
            storage_props: HashMap::new(),
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidUri { .. }),
            "{uri} {warehouse}: {err}"
        );
    }
}

/// The embedded catalog's file is in WAL mode: a reader does not wait for a writer. Checked
/// through a plain SQLite connection that asks the file, and by reading while another
/// connection holds an open write transaction (in rollback-journal mode that read would wait
/// for the busy timeout and fail with "database is locked").
#[tokio::test]
async fn the_sqlite_catalog_reads_while_a_write_is_open() {
    use sqlx::{ConnectOptions, Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    catalog.create(&def("shop.orders")).await.unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("catalog.db"))
        .busy_timeout(std::time::Duration::from_millis(200));
    let mut probe = options.connect().await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut probe)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    let mut writer = options.connect().await.unwrap();
    // The strongest lock a writer takes: in rollback-journal mode it shuts out every reader.
    for statement in [
        "BEGIN EXCLUSIVE",
        "UPDATE iceberg_tables SET metadata_location = metadata_location",
    ] {
        sqlx::query(statement).execute(&mut writer).await.unwrap();
    }
    let names = catalog.list(None).await.unwrap();
    assert_eq!(names.len(), 1);
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    writer.close().await.unwrap();
    probe.close().await.unwrap();
}
