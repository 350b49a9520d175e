//! Two `unitable serve` processes on one catalog and one Kafka cluster, one of which drops and
//! recreates a table the other has cached. (How the two share the tables' committers, and the
//! fence that keeps an old owner from committing, is tested in committer_leases.rs.)

mod support;

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use support::{create_kv_table, kv_line, scan_kv, write_lines};
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
