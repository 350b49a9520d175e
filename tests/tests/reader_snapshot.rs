//! SNAPSHOT reads over gRPC against a model: the latest snapshot, every earlier snapshot by id
//! and by time, projection, limit, an empty table, and clear errors; `as_of` names the snapshot
//! and the offsets it reflects.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use support::read::read;
use support::{TABLE, create_kv_table, kv_line, write_lines};
use tonic::Code;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{ReadMode, ReadRequest, WriteOp};
use unitable_tests::Service;

fn rows(batches: &[RecordBatch]) -> Result<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b
            .column_by_name("id")
            .context("id")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id type")?;
        let vs = b
            .column_by_name("v")
            .context("v")?
            .as_any()
            .downcast_ref::<StringArray>()
            .context("v type")?;
        for i in 0..b.num_rows() {
            ensure!(
                out.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "duplicate id"
            );
        }
    }
    Ok(out)
}

fn snapshot_request(snapshot_id: Option<i64>, as_of_ms: Option<i64>) -> ReadRequest {
    ReadRequest {
        table: TABLE.into(),
        mode: ReadMode::Snapshot as i32,
        snapshot_id,
        as_of_timestamp_ms: as_of_ms,
        ..ReadRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_reads_match_the_model_at_every_snapshot() -> Result<()> {
    let service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "50ms"])).await??;
    create_kv_table(&service, 3).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;

    // Before any commit: an empty result that still carries the schema.
    let (batches, as_of) = read(&mut reader, snapshot_request(None, None)).await?;
    ensure!(batches.iter().all(|b| b.num_rows() == 0), "empty table");
    ensure!(
        batches
            .first()
            .is_some_and(|b| b.schema().field_with_name("v").is_ok()),
        "schema sent"
    );
    ensure!(as_of.snapshot_id.is_none(), "{as_of:?}");

    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut model = BTreeMap::new();
    let mut history = Vec::new();
    for step in 0..6i64 {
        let mut lines = String::new();
        for k in 0..5 {
            let id = (step * 3 + k) % 11;
            let v = format!("s{step}k{k}");
            lines.push_str(&kv_line(id, &v, step));
            model.insert(id, v);
        }
        write_lines(&mut writer, WriteOp::Upsert, &lines, true).await?;
        if step % 2 == 1 {
            let id = step % 11;
            write_lines(
                &mut writer,
                WriteOp::Delete,
                &format!("{{\"id\":{id}}}\n"),
                true,
            )
            .await?;
            model.remove(&id);
        }
        let (batches, as_of) = read(&mut reader, snapshot_request(None, None)).await?;
        let id = as_of
            .snapshot_id
            .context("a snapshot after a waited write")?;
        ensure!(
            rows(&batches)? == model,
            "step {step}: latest snapshot differs from the model"
        );
        ensure!(
            !as_of.offsets.is_empty() && as_of.commit_time_ms > 0,
            "{as_of:?}"
        );
        history.push((id, as_of.commit_time_ms, model.clone()));
    }
    for (id, commit_ms, expected) in &history {
        let (batches, as_of) = read(&mut reader, snapshot_request(Some(*id), None)).await?;
        ensure!(rows(&batches)? == *expected, "snapshot {id} differs");
        ensure!(as_of.snapshot_id == Some(*id));
        let (batches, as_of) = read(&mut reader, snapshot_request(None, Some(*commit_ms))).await?;
        ensure!(
            as_of.snapshot_id == Some(*id),
            "as of {commit_ms}: {as_of:?}"
        );
        ensure!(
            rows(&batches)? == *expected,
            "as-of read at {commit_ms} differs"
        );
    }

    // The CLI: JSON lines of the latest snapshot, CSV of an older one, a clear error.
    let out = service.cli(&["scan", TABLE, "--columns", "id,v"])?.ok()?;
    let mut from_cli = BTreeMap::new();
    for line in out.lines() {
        let row: serde_json::Value = serde_json::from_str(line)?;
        let id = row["id"].as_i64().context("id")?;
        from_cli.insert(id, row["v"].as_str().context("v")?.to_string());
    }
    ensure!(from_cli == model, "unitable scan differs from the model");
    let (first_id, _, first_rows) = &history[0];
    let id_arg = first_id.to_string();
    let out = service
        .cli(&[
            "scan",
            TABLE,
            "--snapshot",
            &id_arg,
            "--columns",
            "id,v",
            "--format",
            "csv",
        ])?
        .ok()?;
    let csv_ids: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap_or(""))
        .collect();
    ensure!(csv_ids.len() == first_rows.len(), "csv rows: {out}");
    let out = service.cli(&["scan", TABLE, "--snapshot", "42"])?;
    ensure!(
        out.code() == Some(1) && out.stderr.contains("no snapshot"),
        "{out:?}"
    );

    // Projection and limit.
    let (batches, _) = read(
        &mut reader,
        ReadRequest {
            columns: vec!["v".into()],
            limit: 3,
            ..snapshot_request(None, None)
        },
    )
    .await?;
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    ensure!(total == 3, "limit 3 returned {total}");
    for b in &batches {
        ensure!(
            b.num_columns() == 1 && b.schema().field(0).name() == "v",
            "projection"
        );
        ensure!(b.column(0).null_count() == 0);
    }

    // Errors.
    let err = read(
        &mut reader,
        ReadRequest {
            columns: vec!["nope".into()],
            ..snapshot_request(None, None)
        },
    )
    .await
    .unwrap_err();
    ensure!(
        err.code() == Code::InvalidArgument && err.message().contains("nope"),
        "{err:?}"
    );
    let err = read(&mut reader, snapshot_request(Some(42), None))
        .await
        .unwrap_err();
    ensure!(err.code() == Code::NotFound, "{err:?}");
    let err = read(&mut reader, snapshot_request(None, Some(1)))
        .await
        .unwrap_err();
    ensure!(err.code() == Code::NotFound, "{err:?}");
    let err = read(
        &mut reader,
        ReadRequest {
            table: "crash.none".into(),
            ..snapshot_request(None, None)
        },
    )
    .await
    .unwrap_err();
    ensure!(err.code() == Code::NotFound, "{err:?}");
    Ok(())
}
