//! Bad input never loses good rows and never takes the server down: per-row errors name the
//! row and the field, request-level problems are one clear status, and the rows that were
//! acknowledged are exactly the ones in the table afterwards.

mod support;

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::ipc::writer::StreamWriter;
use support::{TABLE, create_kv_table, kv_line, scan_kv, write_lines};
use tonic::Code;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{RowFormat, WaitFor, WriteOp, WriteRequest};
use unitable_tests::Service;

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, batch.schema_ref())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rows_are_reported_and_good_rows_are_written() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--max-request-bytes", "4096"])).await??;
    create_kv_table(&service, 4).await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;

    let lines = [
        kv_line(1, "one", 1),
        "{\"id\":\"two\",\"v\":\"x\"}\n".to_string(),
        "{\"v\":\"no key\"}\n".to_string(),
        "{\"id\":4,\"v\":\"four\",\"extra\":true}\n".to_string(),
        "{\"id\":5,\"v\":\"five\"\n".to_string(),
        "[1,2,3]\n".to_string(),
        "{\"id\":7,\"v\":7}\n".to_string(),
        "{\"id\":8,\"n\":9223372036854775808}\n".to_string(),
        kv_line(9, "nine", 9),
    ]
    .concat();
    let r = write_lines(&mut client, WriteOp::Upsert, &lines, true).await?;
    assert_eq!(r.rows_written, 2, "{r:?}");
    let rejected: Vec<(u64, &str)> = r
        .errors
        .iter()
        .map(|e| (e.row_index, e.field.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (1, "id"),
            (2, "id"),
            (3, "extra"),
            (4, ""),
            (5, ""),
            (6, "v"),
            (7, "n")
        ],
        "{r:?}"
    );
    for e in &r.errors {
        ensure!(!e.reason.is_empty(), "row {} has no reason", e.row_index);
    }
    assert!(r.errors[0].reason.contains("not an integer"), "{r:?}");
    assert!(r.errors[2].reason.contains("no such column"), "{r:?}");
    assert!(r.errors[6].reason.contains("out of range"), "{r:?}");

    // Arrow IPC: a truncated stream is refused as a whole; a good one with a bad row writes
    // the rest.
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(20), None, Some(22)])) as ArrayRef,
        ),
        (
            "v",
            Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
        ),
    ])?;
    let bytes = ipc(&batch)?;
    let arrow = |rows: Vec<u8>| WriteRequest {
        table: TABLE.into(),
        op: WriteOp::Upsert as i32,
        format: RowFormat::ArrowIpc as i32,
        rows,
        wait_for: WaitFor::Snapshot as i32,
        request_id: String::new(),
    };
    let err = client
        .write(arrow(bytes[..bytes.len() - 8].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Arrow IPC"), "{}", err.message());
    let r = client.write(arrow(bytes)).await?.into_inner();
    assert_eq!(r.rows_written, 2, "{r:?}");
    assert_eq!(r.errors.len(), 1);
    assert_eq!(
        (r.errors[0].row_index, r.errors[0].field.as_str()),
        (1, "id")
    );

    // Request-level problems.
    let err = write_lines(
        &mut client,
        WriteOp::Upsert,
        &kv_line(1, &"x".repeat(5000), 1),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("4096"), "{}", err.message());
    let err = client
        .write(WriteRequest {
            table: "crash.missing".into(),
            op: WriteOp::Upsert as i32,
            format: RowFormat::JsonLines as i32,
            rows: kv_line(1, "x", 1).into_bytes(),
            wait_for: 0,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .write(WriteRequest {
            table: TABLE.into(),
            op: 0,
            format: RowFormat::JsonLines as i32,
            rows: kv_line(1, "x", 1).into_bytes(),
            wait_for: 0,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("op"), "{}", err.message());

    // The table holds exactly the acknowledged rows; the server is still up.
    let rows = scan_kv(&service.data_dir()).await?;
    let ids: Vec<i64> = rows.keys().copied().collect();
    assert_eq!(ids, [1, 9, 20, 22]);
    assert_eq!(service.http_get("/healthz")?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_write_reports_rejections_and_waits_for_a_snapshot() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 2).await?;
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "id,v,n\n1,one,10\n2,two,x\n3,,30\n")?;
    let csv = csv.to_string_lossy().into_owned();
    let out = service.cli(&["write", TABLE, "--file", &csv, "--wait", "snapshot"])?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("wrote 2 rows"), "{}", out.stdout);
    assert!(
        out.stdout.contains("committed in snapshot"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("row 1, field `n`"),
        "the rejected row is named: {}",
        out.stderr
    );
    let jsonl = dir.path().join("del.jsonl");
    std::fs::write(&jsonl, "{\"id\":1}\n")?;
    let jsonl = jsonl.to_string_lossy().into_owned();
    service
        .cli(&[
            "write", TABLE, "--file", &jsonl, "--op", "delete", "--wait", "snapshot",
        ])?
        .ok()?;
    let rows = scan_kv(&service.data_dir()).await?;
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), [3]);
    let out = service.cli(&["write", TABLE, "--file", "/nonexistent.jsonl"])?;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("cannot open"), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn write_stream_counts_rows_across_messages_and_waits_once() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 4).await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let first = WriteRequest {
        table: TABLE.into(),
        op: WriteOp::Upsert as i32,
        format: RowFormat::JsonLines as i32,
        rows: [kv_line(1, "a", 1), kv_line(2, "b", 2)]
            .concat()
            .into_bytes(),
        wait_for: WaitFor::Snapshot as i32,
        request_id: String::new(),
    };
    let second = WriteRequest {
        rows: [kv_line(3, "c", 3), "{\"id\":\"bad\"}\n".into()]
            .concat()
            .into_bytes(),
        ..WriteRequest::default()
    };
    let third = WriteRequest {
        rows: kv_line(1, "a2", 4).into_bytes(),
        ..WriteRequest::default()
    };
    let r = client
        .write_stream(tokio_stream::iter([first, second, third]))
        .await?
        .into_inner();
    assert_eq!(r.rows_written, 4, "{r:?}");
    let rejected: Vec<(u64, &str)> = r
        .errors
        .iter()
        .map(|e| (e.row_index, e.field.as_str()))
        .collect();
    assert_eq!(rejected, [(3, "id")], "indexes count across the stream");
    let as_of = r.as_of.unwrap_or_default();
    ensure!(
        as_of.snapshot_id.is_some(),
        "waited for a snapshot: {as_of:?}"
    );
    // The snapshot covers every message, not only the last.
    let rows = scan_kv(&service.data_dir()).await?;
    assert_eq!(
        rows.into_iter().collect::<Vec<_>>(),
        [(1, "a2".to_string()), (2, "b".into()), (3, "c".into())]
    );

    // A stream may not switch tables.
    let switch = WriteRequest {
        table: "other.table".into(),
        rows: kv_line(9, "x", 9).into_bytes(),
        ..WriteRequest::default()
    };
    let head = WriteRequest {
        table: TABLE.into(),
        op: WriteOp::Upsert as i32,
        format: RowFormat::JsonLines as i32,
        rows: kv_line(8, "y", 8).into_bytes(),
        wait_for: 0,
        request_id: String::new(),
    };
    let err = client
        .write_stream(tokio_stream::iter([head, switch]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    Ok(())
}

/// Iceberg's `write.parquet.compression-codec` and `write.parquet.page-row-limit` table
/// properties decide how data files are written (read back from the files themselves), and
/// PyIceberg reads such a table.
#[tokio::test(flavor = "multi_thread")]
async fn data_files_follow_the_tables_parquet_properties() -> Result<()> {
    use futures::TryStreamExt;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    support::create_kv_table_as(
        &service,
        TABLE,
        1,
        &[
            ("write.parquet.compression-codec", "lz4"),
            ("write.parquet.page-row-limit", "1000"),
        ],
        Vec::new(),
    )
    .await?;
    let mut client = WriteServiceClient::connect(service.grpc_url()).await?;
    let lines: String = (0..5000)
        .map(|id| kv_line(id, &format!("v{id}"), id))
        .collect();
    write_lines(&mut client, WriteOp::Upsert, &lines, true).await?;

    let catalog = unitable_core::catalog::TableCatalog::open(
        unitable_core::catalog::CatalogConfig::embedded(&service.data_dir()),
    )
    .await?;
    let table = catalog.load(&TABLE.parse()?).await?;
    let paths: Vec<String> = table
        .scan()
        .build()?
        .plan_files()
        .await?
        .map_ok(|task| task.data_file_path().to_string())
        .try_collect()
        .await?;
    ensure!(!paths.is_empty(), "no data file");
    let mut rows = 0;
    for path in paths {
        let bytes = unitable_core::commit::files::read_bytes(table.file_io(), &path).await?;
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&bytes)?;
        for group in metadata.row_groups() {
            rows += group.num_rows();
            for column in group.columns() {
                ensure!(
                    column.compression() == parquet::basic::Compression::LZ4_RAW,
                    "{path}: column {} is {:?}",
                    column.column_path(),
                    column.compression()
                );
            }
        }
        let offsets = metadata.offset_index().context("an offset index")?;
        for column in &offsets[0] {
            let pages = column.page_locations();
            let rows_in = metadata.row_group(0).num_rows();
            ensure!(
                pages.len() as i64 >= (rows_in + 999) / 1000,
                "{path}: {} pages for {rows_in} rows with a 1,000-row limit",
                pages.len()
            );
        }
    }
    ensure!(rows == 5000, "{rows} rows in the data files");
    let via_pyiceberg = tokio::task::spawn_blocking({
        let dir = service.data_dir();
        move || support::scan_kv_pyiceberg(&dir)
    })
    .await??;
    ensure!(
        via_pyiceberg.len() == 5000,
        "PyIceberg read {} rows",
        via_pyiceberg.len()
    );
    Ok(())
}
