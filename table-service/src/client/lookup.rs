//! `unitable lookup NS.TABLE --key JSON [--key JSON ...] [--keys-file PATH] [--columns a,b]
//! [--snapshot ID | --as-of TIME | --as-of-offsets P:O,...] [--format jsonl]`: the latest rows of
//! the given keys, or their rows as of a snapshot, a time or changelog offsets.

use std::io::{Cursor, Read, Write};
use std::process::ExitCode;

use arrow::ipc::reader::StreamReader;
use unitable_core::offsets::PartitionOffsets;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{PartitionOffset, ReadMode, ReadRequest, RowFormat, read_response};

use super::{ClientError, Connection};
use crate::cli::{LookupArgs, LookupFormat};

/// Runs `unitable lookup`.
pub(crate) async fn run(conn: &Connection, args: LookupArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

/// The keys as JSON lines, in order: `--key` values, then the lines of `--keys-file`.
fn key_lines(args: &LookupArgs) -> Result<Vec<String>, ClientError> {
    let mut lines: Vec<String> = Vec::new();
    for key in &args.key {
        if key.contains('\n') {
            return Err(ClientError::new(format!(
                "--key `{key}` spans lines; give one JSON object per --key"
            )));
        }
        lines.push(key.trim().to_string());
    }
    if let Some(path) = &args.keys_file {
        let mut text = String::new();
        let read = if path == "-" {
            std::io::stdin().read_to_string(&mut text)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
        };
        read.map_err(|e| ClientError::new(format!("cannot read keys from {path}: {e}")))?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    if lines.is_empty() {
        return Err(ClientError::new(
            "no keys: give --key '{\"id\":1}' (repeatable) or --keys-file PATH (JSON lines)",
        ));
    }
    Ok(lines)
}

async fn run_inner(conn: &Connection, args: LookupArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let given = usize::from(args.snapshot.is_some())
        + usize::from(args.as_of.is_some())
        + usize::from(args.as_of_offsets.is_some());
    if given > 1 {
        return Err(ClientError::new(
            "give at most one of --snapshot, --as-of and --as-of-offsets",
        ));
    }
    let as_of_ms = args.as_of.as_deref().map(parse_time).transpose()?;
    let as_of_offsets = match &args.as_of_offsets {
        None => Vec::new(),
        Some(text) => {
            let offsets: PartitionOffsets = text
                .parse()
                .map_err(|e| ClientError::new(format!("--as-of-offsets: {e}")))?;
            offsets
                .0
                .iter()
                .map(|(p, o)| PartitionOffset {
                    partition: p.0,
                    offset: o.0,
                })
                .collect()
        }
    };
    let lines = key_lines(&args)?;
    let mut client =
        ReadServiceClient::new(conn.channel()?).max_decoding_message_size(256 * 1024 * 1024);
    let response = client
        .lookup(ReadRequest {
            table: args.table.clone(),
            mode: ReadMode::Lookup as i32,
            columns: args.columns.clone(),
            snapshot_id: args.snapshot,
            as_of_timestamp_ms: as_of_ms,
            as_of_offsets,
            max_staleness_ms: args.max_staleness.map(|d| d.as_millis() as u64),
            keys: lines.join("\n").into_bytes(),
            keys_format: RowFormat::JsonLines as i32,
            ..ReadRequest::default()
        })
        .await
        .map_err(|s| lookup_error(server, &s, &lines))?
        .into_inner();
    let LookupFormat::Jsonl = args.format;
    let mut out = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
    let unreadable = |e: &dyn std::fmt::Display| {
        ClientError::new(format!("the server sent unreadable rows: {e}"))
    };
    if let Some(read_response::Body::Lookup(result)) = response.body {
        let reader = StreamReader::try_new(Cursor::new(result.arrow_ipc), None)
            .map_err(|e| unreadable(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| unreadable(&e))?;
            out.write(&batch)
                .map_err(|e| ClientError::new(format!("cannot write rows: {e}")))?;
        }
        let mut stderr = std::io::stderr().lock();
        if given > 0
            && let Some(as_of) = &response.as_of
        {
            let offsets: Vec<String> = as_of
                .offsets
                .iter()
                .map(|o| format!("{}:{}", o.partition, o.offset))
                .collect();
            let snapshot = as_of
                .snapshot_id
                .map_or_else(|| "none".to_string(), |s| s.to_string());
            // A closed stderr loses only the notice.
            let _ = writeln!(
                stderr,
                "as of: snapshot {snapshot}, offsets {}",
                offsets.join(",")
            );
        }
        for i in &result.missing {
            let key = lines.get(*i as usize).map_or("?", String::as_str);
            // A closed stderr loses only the notice.
            let _ = writeln!(stderr, "not found: {key}");
        }
    }
    out.finish()
        .map_err(|e| ClientError::new(format!("cannot write rows: {e}")))?;
    Ok(())
}

/// A failed lookup; a bad key is named by its text, not only its index.
fn lookup_error(server: &str, status: &tonic::Status, lines: &[String]) -> ClientError {
    let base = ClientError::from_status(server, status);
    if status.code() != tonic::Code::InvalidArgument {
        return base;
    }
    let index = status
        .message()
        .strip_prefix("key ")
        .and_then(|rest| rest.split([',', ':']).next())
        .and_then(|n| n.trim().parse::<usize>().ok());
    match index.and_then(|i| lines.get(i)) {
        Some(key) => ClientError::new(format!(
            "{} (the key was `{key}`; give each key as a JSON object of the primary-key columns)",
            base.message()
        )),
        None => base,
    }
}

/// `--as-of`: an RFC 3339 time or milliseconds since the epoch.
fn parse_time(text: &str) -> Result<i64, ClientError> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ClientError::new(format!(
                "--as-of `{text}` is neither an RFC 3339 time ({e}; e.g. 2024-05-01T09:30:00Z) \
                 nor milliseconds since the epoch"
            ))
        })
}
