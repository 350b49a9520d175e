//! Two `unitable serve` processes on one catalog and one Kafka cluster: only one committer per
//! table may commit. The second process to start the table's committer claims it; the first is
//! fenced and stops committing that table, while both keep acknowledging writes, and every
//! acknowledged write reaches the table exactly once.

mod support;

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use support::{create_kv_table, kv_line, scan_kv, write_lines};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::naming::props;
use unitable_proto::v1::WriteOp;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::{Service, Tansu};

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_fences_the_first_committer() -> Result<()> {
    let tansu = tokio::task::spawn_blocking(Tansu::start).await??;
    let brokers = tansu.bootstrap();
    let b1 = brokers.clone();
    let first = tokio::task::spawn_blocking(move || {
        Service::start(&["--kafka-brokers", &b1, "--commit-interval", "100ms"])
    })
    .await??;
    create_kv_table(&first, 3).await?;
    let data = first.data_dir();
    let mut a = WriteServiceClient::connect(first.grpc_url()).await?;
    write_lines(&mut a, WriteOp::Upsert, &kv_line(1, "a1", 1), true).await?;

    let catalog_uri = format!("sqlite://{}/catalog.db", data.display());
    let warehouse = format!("file://{}/warehouse", data.display());
    let b2 = brokers.clone();
    let second = tokio::task::spawn_blocking(move || {
        Service::start(&[
            "--kafka-brokers",
            &b2,
            "--commit-interval",
            "100ms",
            "--catalog",
            &catalog_uri,
            "--warehouse",
            &warehouse,
        ])
    })
    .await??;
    let mut b = WriteServiceClient::connect(second.grpc_url()).await?;
    // The second process starts a committer for the table at start-up, which claims it in the
    // background: epoch 2 becomes its (the claim may land just after the health check).
    let catalog = TableCatalog::open(CatalogConfig::embedded(&data)).await?;
    let mut epoch = None;
    for _ in 0..300 {
        let table = catalog.load(&support::TABLE.parse()?).await?;
        epoch = table
            .metadata()
            .properties()
            .get(props::COMMITTER_EPOCH)
            .cloned();
        if epoch.as_deref() == Some("2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(
        epoch.as_deref() == Some("2"),
        "epoch 30 s after the second start: {epoch:?}"
    );

    // Writes through either process are acknowledged and committed (by the second's
    // committer); waiting through the first works by watching the table.
    let mut expected = BTreeMap::from([(1, "a1".to_string())]);
    for i in 0..30 {
        let (client, who) = if i % 2 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        let v = format!("{who}{i}");
        let r = write_lines(client, WriteOp::Upsert, &kv_line(i % 7, &v, i), i % 10 == 9).await?;
        ensure!(r.rows_written == 1, "{r:?}");
        expected.insert(i % 7, v);
    }
    write_lines(&mut a, WriteOp::Upsert, &kv_line(100, "last", 0), true).await?;
    expected.insert(100, "last".into());
    let rows = scan_kv(&data).await?;
    ensure!(rows == expected, "table {rows:?}\nexpected {expected:?}");
    ensure!(
        first.log().contains("committer stopped"),
        "the first process's committer must have been fenced:\n{}",
        first.log()
    );
    drop(second);
    drop(first);
    drop(tansu);
    Ok(())
}
