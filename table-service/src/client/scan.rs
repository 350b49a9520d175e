//! `unitable scan NS.TABLE [--mode snapshot|fresh] [--snapshot ID | --as-of RFC3339]
//! [--columns a,b] [--where PREDICATE] [--limit N] [--format jsonl|csv|table|parquet]
//! [--output PATH]`: a SNAPSHOT or FRESH read written as it streams.

use std::process::ExitCode;

use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{ReadMode, ReadRequest, read_response};

use super::rows::{Sink, decode_ipc};
use super::{ClientError, Connection};
use crate::cli::{ScanArgs, ScanMode};

/// Runs `unitable scan`.
pub(crate) async fn run(conn: &Connection, args: ScanArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time given as `flag`.
pub(crate) fn parse_time(flag: &str, text: &str) -> Result<i64, ClientError> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            ClientError::new(format!(
                "{flag} `{text}` is not an RFC 3339 time ({e}); e.g. 2024-05-01T09:30:00Z"
            ))
        })?
        .timestamp_millis())
}

async fn run_inner(conn: &Connection, args: ScanArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    if args.snapshot.is_some() && args.as_of.is_some() {
        return Err(ClientError::new("give --snapshot or --as-of, not both"));
    }
    let fresh = args.mode == ScanMode::Fresh;
    if fresh && (args.snapshot.is_some() || args.as_of.is_some()) {
        return Err(ClientError::new(
            "--mode fresh reads the latest data; drop --snapshot/--as-of, or use --mode snapshot to time-travel",
        ));
    }
    if !fresh && args.max_staleness.is_some() {
        return Err(ClientError::new(
            "--max-staleness applies to --mode fresh only",
        ));
    }
    let as_of_ms = args
        .as_of
        .as_deref()
        .map(|t| parse_time("--as-of", t))
        .transpose()?;
    let mut sink = Sink::open(args.format, args.output.as_deref())?;
    let mut client =
        ReadServiceClient::new(conn.channel()?).max_decoding_message_size(256 * 1024 * 1024);
    let mut stream = client
        .read(ReadRequest {
            table: args.table.clone(),
            mode: if fresh {
                ReadMode::Fresh
            } else {
                ReadMode::Snapshot
            } as i32,
            columns: args.columns.clone(),
            filter: args.filter.clone().unwrap_or_default(),
            snapshot_id: args.snapshot,
            as_of_timestamp_ms: as_of_ms,
            limit: args.limit.unwrap_or(0),
            max_staleness_ms: args.max_staleness.map(|d| d.as_millis() as u64),
            ..ReadRequest::default()
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    let mut rows = 0u64;
    let mut as_of = None;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
    {
        if message.as_of.is_some() {
            as_of = message.as_of;
        }
        let Some(read_response::Body::ArrowIpc(bytes)) = message.body else {
            continue;
        };
        let (schema, batches) = decode_ipc(bytes)?;
        sink.schema(&schema);
        for batch in batches {
            rows += batch.num_rows() as u64;
            sink.write(&schema, &batch)?;
        }
    }
    sink.finish()?;
    let snapshot = as_of
        .as_ref()
        .and_then(|a| a.snapshot_id)
        .map_or("none (the table has no commit yet)".to_string(), |s| {
            s.to_string()
        });
    if fresh {
        let offsets: Vec<String> = as_of
            .iter()
            .flat_map(|a| &a.offsets)
            .map(|o| format!("{}:{}", o.partition, o.offset))
            .collect();
        eprintln!(
            "{rows} rows, fresh: snapshot {snapshot} plus the changelog up to offsets {}",
            offsets.join(",")
        );
    } else {
        eprintln!("{rows} rows from snapshot {snapshot}");
    }
    Ok(())
}
