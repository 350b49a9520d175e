//! `unitable sql "QUERY" [--mode snapshot|fresh] [--format table|jsonl|csv|parquet]
//! [--output PATH]`: runs SQL over tables named `namespace.table`.

use std::process::ExitCode;

use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{QueryRequest, ReadMode};

use super::rows::{Sink, decode_ipc};
use super::{ClientError, Connection};
use crate::cli::{ScanMode, SqlArgs};

/// Runs `unitable sql`.
pub(crate) async fn run(conn: &Connection, args: SqlArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn run_inner(conn: &Connection, args: SqlArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut sink = Sink::open(args.format, args.output.as_deref())?;
    let mut client =
        ReadServiceClient::new(conn.channel()?).max_decoding_message_size(256 * 1024 * 1024);
    let mode = match args.mode {
        ScanMode::Snapshot => ReadMode::Snapshot,
        ScanMode::Fresh => ReadMode::Fresh,
    };
    let mut stream = client
        .query(QueryRequest {
            sql: args.query.clone(),
            mode: mode as i32,
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    let mut rows = 0u64;
    let mut read = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
    {
        for (table, as_of) in &message.as_of {
            let snapshot = as_of
                .snapshot_id
                .map_or("no snapshot".to_string(), |s| format!("snapshot {s}"));
            read.push(format!("{table} at {snapshot}"));
        }
        let (schema, batches) = decode_ipc(message.arrow_ipc)?;
        sink.schema(&schema);
        for batch in batches {
            rows += batch.num_rows() as u64;
            sink.write(&schema, &batch)?;
        }
    }
    sink.finish()?;
    eprintln!("{rows} rows; read {}", read.join(", "));
    Ok(())
}
