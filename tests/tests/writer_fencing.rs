//! Two `unitable serve` processes on one catalog and one Kafka cluster: only one committer per
//! table may commit. The second process to start the table's committer claims it; the first is
//! fenced and stops committing that table, while both keep acknowledging writes, and every
//! acknowledged write reaches the table exactly once.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, ensure};
use support::{create_kv_table, kv_line, scan_kv, write_lines};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::naming::{props, summary};
use unitable_proto::v1::DropTableRequest;
use unitable_proto::v1::WriteOp;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::{Kafka, Service};

/// A server on `kafka` with a 100 ms commit interval and its own catalog.
async fn first_server(kafka: &Kafka) -> Result<Service> {
    let brokers = kafka.bootstrap();
    tokio::task::spawn_blocking(move || {
        Service::start(&["--kafka-brokers", &brokers, "--commit-interval", "100ms"])
    })
    .await?
}

/// A second server on `kafka` sharing `first`'s catalog and warehouse.
async fn second_server(kafka: &Kafka, first: &Service) -> Result<Service> {
    let brokers = kafka.bootstrap();
    let data = first.data_dir();
    let catalog_uri = format!("sqlite://{}/catalog.db", data.display());
    let warehouse = format!("file://{}/warehouse", data.display());
    tokio::task::spawn_blocking(move || {
        Service::start(&[
            "--kafka-brokers",
            &brokers,
            "--commit-interval",
            "100ms",
            "--catalog",
            &catalog_uri,
            "--warehouse",
            &warehouse,
        ])
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_fences_the_first_committer() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let first = first_server(&kafka).await?;
    create_kv_table(&first, 3).await?;
    let data = first.data_dir();
    let mut a = WriteServiceClient::connect(first.grpc_url()).await?;
    write_lines(&mut a, WriteOp::Upsert, &kv_line(1, "a1", 1), true).await?;
    let second = second_server(&kafka, &first).await?;
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
    let before_takeover: BTreeSet<i64> = catalog
        .load(&support::TABLE.parse()?)
        .await?
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();

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
    // The fence itself: every snapshot committed after the takeover was committed under the
    // second process's epoch (the summary names the epoch each commit was made under).
    let table = catalog.load(&support::TABLE.parse()?).await?;
    let mut after = 0;
    for snapshot in table.metadata().snapshots() {
        if before_takeover.contains(&snapshot.snapshot_id()) {
            continue;
        }
        after += 1;
        let epoch = snapshot
            .summary()
            .additional_properties
            .get(summary::COMMITTER_EPOCH);
        ensure!(
            epoch.map(String::as_str) == Some("2"),
            "snapshot {} was committed after the takeover under epoch {epoch:?}",
            snapshot.snapshot_id()
        );
    }
    ensure!(after > 0, "no snapshot was committed after the takeover");
    ensure!(
        first.log().contains("committer stopped"),
        "the first process's committer must have been fenced:\n{}",
        first.log()
    );
    drop(second);
    drop(first);
    drop(kafka);
    Ok(())
}

/// Another process drops the table and creates it again while this one has it cached: a write
/// through this process must never be acknowledged for the old table (its records would carry
/// the old table's uuid and the new table's committer would skip them). It fails with a
/// retryable error, the retry lands in the new table, and a write to a dropped table fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_recreated_by_another_process_gets_no_silently_lost_writes() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let first = first_server(&kafka).await?;
    create_kv_table(&first, 1).await?;
    let data = first.data_dir();
    let mut a = WriteServiceClient::connect(first.grpc_url()).await?;
    write_lines(&mut a, WriteOp::Upsert, &kv_line(1, "old", 1), true).await?;
    let second = second_server(&kafka, &first).await?;
    let mut admin = TableAdminServiceClient::connect(second.grpc_url()).await?;
    let drop_table = DropTableRequest {
        table: support::TABLE.into(),
        keep_data: false,
    };
    admin.drop_table(drop_table.clone()).await?;

    // Dropped: the first process still has the table cached, but the write fails.
    let err = write_lines(&mut a, WriteOp::Upsert, &kv_line(2, "x", 2), false)
        .await
        .expect_err("a write to a dropped table must fail");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");

    create_kv_table(&second, 1).await?;
    let mut b = WriteServiceClient::connect(second.grpc_url()).await?;
    // Every write through the first process that is acknowledged must reach the new table.
    let mut replaced = 0;
    let mut acknowledged = BTreeMap::new();
    for i in 10..20 {
        loop {
            match write_lines(&mut a, WriteOp::Upsert, &kv_line(i, "new", i), false).await {
                Ok(r) => {
                    ensure!(r.rows_written == 1, "{r:?}");
                    acknowledged.insert(i, "new".to_string());
                    break;
                }
                Err(e) if e.code() == tonic::Code::Aborted => {
                    ensure!(e.message().contains("created again"), "{e:?}");
                    replaced += 1;
                    ensure!(replaced < 5, "the first process never refreshed: {e:?}");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    write_lines(&mut b, WriteOp::Upsert, &kv_line(99, "last", 0), true).await?;
    acknowledged.insert(99, "last".into());
    let rows = scan_kv(&data).await?;
    ensure!(
        rows == acknowledged,
        "the new table {rows:?}\nacknowledged {acknowledged:?}"
    );

    admin.drop_table(drop_table).await?;
    let err = write_lines(&mut a, WriteOp::Upsert, &kv_line(3, "x", 3), false)
        .await
        .expect_err("a write to a dropped table must fail");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    drop(second);
    drop(first);
    drop(kafka);
    Ok(())
}
