//! Idempotent writes through `unitable serve`: a write retried with the same request id after
//! its answer was lost, after a crash between the append and the answer, after a restart, and
//! on another node, is in the Iceberg table once. The tables are append-only, so a duplicate
//! would stay a duplicate; iceberg-rust reads them back and any duplicate id fails the test.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use support::scan_kv_table;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    Column, CreateTableRequest, DataType, RowFormat, TableDefinition, WaitFor, WriteOp,
    WriteRequest, WriteResponse, data_type,
};
use unitable_tests::{Kafka, Service};

type Client = WriteServiceClient<tonic::transport::Channel>;

/// An append-only table of the kv shape (`id`, `v`, `n`).
async fn create_events(service: &Service, name: &str) -> Result<()> {
    let mut admin = TableAdminServiceClient::connect(service.grpc_url()).await?;
    let column = |name: &str, kind: data_type::Kind| Column {
        name: name.into(),
        r#type: Some(DataType {
            kind: kind as i32,
            ..DataType::default()
        }),
        required: name == "id",
        ..Column::default()
    };
    admin
        .create_table(CreateTableRequest {
            definition: Some(TableDefinition {
                table: name.into(),
                columns: vec![
                    column("id", data_type::Kind::Int64),
                    column("v", data_type::Kind::String),
                    column("n", data_type::Kind::Int64),
                ],
                buckets: 3,
                ..TableDefinition::default()
            }),
        })
        .await?;
    Ok(())
}

fn rows(ids: std::ops::Range<i64>) -> Vec<u8> {
    ids.map(|id| format!("{{\"id\":{id},\"v\":\"v{id}\",\"n\":{id}}}\n"))
        .collect::<String>()
        .into_bytes()
}

async fn write(
    client: &mut Client,
    table: &str,
    ids: std::ops::Range<i64>,
    request_id: &str,
    wait: bool,
) -> Result<WriteResponse, tonic::Status> {
    client
        .write(WriteRequest {
            table: table.into(),
            op: WriteOp::Insert as i32,
            format: RowFormat::JsonLines as i32,
            rows: rows(ids),
            wait_for: if wait {
                WaitFor::Snapshot
            } else {
                WaitFor::Changelog
            } as i32,
            request_id: request_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The rows ids `0..end` should read as.
fn model(end: i64) -> BTreeMap<i64, String> {
    (0..end).map(|id| (id, format!("v{id}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_after_a_lost_answer_a_crash_and_a_restart_write_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trigger = dir.path().join("crash-now");
    let trigger_env = trigger.display().to_string();
    let mut service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(
            &["--commit-interval", "100ms"],
            &[
                ("UNITABLE_CRASH_POINT", "after-append"),
                ("UNITABLE_CRASH_FILE", &trigger_env),
            ],
        )
    })
    .await??;
    let table = "idem.events";
    create_events(&service, table).await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;

    // A retry of an answered request (its answer was lost on the way): the first outcome.
    let first = write(&mut client, table, 0..30, "req-1", false).await?;
    ensure!(first.rows_written == 30, "{first:?}");
    let retry = write(&mut client, table, 0..30, "req-1", false).await?;
    ensure!(
        retry.rows_written == 30 && retry.last_offsets == first.last_offsets,
        "retry {retry:?}\nfirst {first:?}"
    );

    // A crash after the append, before the answer: the client sees a failure.
    std::fs::write(&trigger, b"")?;
    let crashed = write(&mut client, table, 30..60, "req-2", false).await;
    ensure!(
        crashed.is_err(),
        "the crash point did not fire: {crashed:?}"
    );
    service = tokio::task::spawn_blocking(move || service.restart().map(|()| service)).await??;
    ensure!(
        service.log().contains("crash point `after-append` reached"),
        "no crash:\n{}",
        service.log()
    );
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    // The retry finds the first attempt's records and appends nothing.
    let recovered = write(&mut client, table, 30..60, "req-2", false).await?;
    ensure!(recovered.rows_written == 30, "{recovered:?}");
    ensure!(
        service
            .log()
            .contains("retry of an unfinished write request"),
        "the retry did not recover the crashed attempt:\n{}",
        service.log()
    );

    // After a restart, an answered request is still remembered.
    service = tokio::task::spawn_blocking(move || service.restart().map(|()| service)).await??;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let again = write(&mut client, table, 0..30, "req-1", true).await?;
    ensure!(again.rows_written == 30, "{again:?}");
    let last = write(&mut client, table, 60..61, "req-3", true).await?;
    ensure!(last.rows_written == 1, "{last:?}");

    let rows = scan_kv_table(&service.data_dir(), table).await?;
    ensure!(
        rows == model(61),
        "the table has {} rows: {rows:?}",
        rows.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_on_another_node_writes_nothing_twice() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let brokers = kafka.bootstrap();
    let a = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || {
            Service::start(&["--kafka-brokers", &brokers, "--commit-interval", "100ms"])
        })
        .await??
    };
    let data = a.data_dir();
    let b = {
        let catalog = format!("sqlite://{}/catalog.db", data.display());
        let warehouse = format!("file://{}/warehouse", data.display());
        tokio::task::spawn_blocking(move || {
            Service::start(&[
                "--kafka-brokers",
                &brokers,
                "--commit-interval",
                "100ms",
                "--catalog",
                &catalog,
                "--warehouse",
                &warehouse,
            ])
        })
        .await??
    };
    let table = "idem.shared";
    create_events(&a, table).await?;
    let mut ca = WriteServiceClient::connect(a.grpc_url()).await?;
    let mut cb = WriteServiceClient::connect(b.grpc_url()).await?;
    let first = write(&mut ca, table, 0..25, "batch-7", false).await?;
    ensure!(first.rows_written == 25, "{first:?}");
    let on_b = write(&mut cb, table, 0..25, "batch-7", false).await?;
    ensure!(
        on_b.rows_written == 25 && on_b.last_offsets == first.last_offsets,
        "b {on_b:?}\na {first:?}"
    );
    let last = write(&mut cb, table, 25..26, "batch-8", true).await?;
    ensure!(last.rows_written == 1, "{last:?}");
    // Both nodes commit or watch: wait until the newest write is in the table.
    let mut rows = BTreeMap::new();
    for _ in 0..100 {
        rows = scan_kv_table(&data, table).await?;
        if rows.len() >= 26 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(rows == model(26), "the table: {rows:?}");
    drop((a, b, kafka));
    Ok(())
}
