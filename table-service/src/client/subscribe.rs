//! `unitable subscribe NS.TABLE [--from earliest|latest|snapshot[:ID]|time:RFC3339|offsets:P=O,...]
//! [--columns a,b] [--where PREDICATE] [--limit N] [--format jsonl]`: follows a table's changes,
//! one JSON line per change:
//! `{"op":..., "key":{...}, "row":{...}|null, "partition":P, "offset":O, "timestamp":"..."}`.

use std::io::Write;
use std::process::ExitCode;

use arrow::array::{
    Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use serde_json::{Map, Value, json};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{
    GetTableRequest, PartitionOffset, ReadMode, ReadRequest, StreamStart, read_response,
};

use super::rows::decode_ipc;
use super::scan::parse_time;
use super::{ClientError, Connection};
use crate::cli::SubscribeArgs;

/// Runs `unitable subscribe`.
pub(crate) async fn run(conn: &Connection, args: SubscribeArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

/// Parses `--from`.
fn parse_start(text: &str) -> Result<StreamStart, ClientError> {
    let usage = "use earliest, latest, snapshot, snapshot:ID, time:RFC3339 or offsets:P=O,P=O";
    let start = |kind: Kind| StreamStart {
        kind: kind as i32,
        ..StreamStart::default()
    };
    Ok(match text.split_once(':') {
        None => match text {
            "earliest" => start(Kind::Earliest),
            "latest" => start(Kind::Latest),
            "snapshot" => start(Kind::Snapshot),
            _ => {
                return Err(ClientError::new(format!(
                    "--from `{text}` is not a start; {usage}"
                )));
            }
        },
        Some(("snapshot", id)) => StreamStart {
            snapshot_id: Some(id.parse().map_err(|_| {
                ClientError::new(format!("--from snapshot:{id}: `{id}` is not a snapshot id"))
            })?),
            ..start(Kind::Snapshot)
        },
        Some(("time", t)) => StreamStart {
            timestamp_ms: parse_time("--from time:", t)?,
            ..start(Kind::Timestamp)
        },
        Some(("offsets", list)) => {
            let mut offsets = Vec::new();
            for part in list.split(',').filter(|p| !p.is_empty()) {
                let parsed = part
                    .split_once('=')
                    .and_then(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)));
                let Some((partition, offset)) = parsed else {
                    return Err(ClientError::new(format!(
                        "--from offsets: `{part}` is not PARTITION=OFFSET (e.g. offsets:0=120,1=98)"
                    )));
                };
                offsets.push(PartitionOffset { partition, offset });
            }
            StreamStart {
                offsets,
                ..start(Kind::Offsets)
            }
        }
        Some(_) => {
            return Err(ClientError::new(format!(
                "--from `{text}` is not a start; {usage}"
            )));
        }
    })
}

async fn run_inner(conn: &Connection, args: SubscribeArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let start = parse_start(&args.from)?;
    let table = TableAdminServiceClient::new(conn.channel()?)
        .get_table(GetTableRequest {
            table: args.table.clone(),
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    let key: Vec<String> = table
        .table
        .and_then(|t| t.definition)
        .map(|d| d.primary_key)
        .unwrap_or_default();
    let mut client =
        ReadServiceClient::new(conn.channel()?).max_decoding_message_size(256 * 1024 * 1024);
    let mut stream = client
        .read(ReadRequest {
            table: args.table.clone(),
            mode: ReadMode::Stream as i32,
            columns: args.columns.clone(),
            filter: args.filter.clone().unwrap_or_default(),
            start: Some(start),
            limit: args.limit.unwrap_or(0),
            partitions: args.partitions.clone(),
            ..ReadRequest::default()
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut changes = 0u64;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
    {
        if let Some(as_of) = &message.as_of {
            let offsets: Vec<String> = as_of
                .offsets
                .iter()
                .map(|o| format!("{}:{}", o.partition, o.offset))
                .collect();
            match as_of.snapshot_id {
                Some(id) => eprintln!(
                    "following {} from snapshot {id}, then the changelog from offsets {}",
                    args.table,
                    offsets.join(",")
                ),
                None => eprintln!(
                    "following {} from offsets {}",
                    args.table,
                    offsets.join(",")
                ),
            }
        }
        let Some(read_response::Body::Changes(batch)) = message.body else {
            continue;
        };
        let (_, batches) = decode_ipc(batch.arrow_ipc)?;
        for batch in batches {
            for line in change_lines(&batch, &key)? {
                writeln!(out, "{line}").map_err(|e| {
                    ClientError::new(format!("cannot write to standard output: {e}"))
                })?;
                changes += 1;
            }
        }
        out.flush()
            .map_err(|e| ClientError::new(format!("cannot write to standard output: {e}")))?;
    }
    eprintln!("{changes} changes");
    Ok(())
}

/// One JSON line per change of a change batch (`_op`, `_partition`, `_offset`, `_timestamp`,
/// then table columns).
fn change_lines(batch: &RecordBatch, key: &[String]) -> Result<Vec<String>, ClientError> {
    let bad =
        |what: &str| ClientError::new(format!("the server sent a malformed change batch ({what})"));
    let ops = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| bad("_op"))?;
    let partitions = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| bad("_partition"))?;
    let offsets = batch
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| bad("_offset"))?;
    let times = batch
        .column(3)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| bad("_timestamp"))?;
    let columns: Vec<usize> = (4..batch.num_columns()).collect();
    let table_rows = batch.project(&columns).map_err(|_| bad("columns"))?;
    let mut json = Vec::new();
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut json);
        writer.write(&table_rows).map_err(|e| bad(&e.to_string()))?;
        writer.finish().map_err(|e| bad(&e.to_string()))?;
    }
    let mut lines = Vec::with_capacity(batch.num_rows());
    for (i, text) in json
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let row: Map<String, Value> =
            serde_json::from_slice(text).map_err(|e| bad(&e.to_string()))?;
        let op = ops.value(i);
        let key_object: Map<String, Value> = key
            .iter()
            .map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null)))
            .collect();
        let timestamp = chrono::DateTime::from_timestamp_millis(times.value(i))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let line = json!({
            "op": op,
            "key": if key.is_empty() { Value::Null } else { Value::Object(key_object) },
            "row": if op == "delete" { Value::Null } else { Value::Object(row) },
            "partition": if partitions.is_null(i) { Value::Null } else { json!(partitions.value(i)) },
            "offset": if offsets.is_null(i) { Value::Null } else { json!(offsets.value(i)) },
            "timestamp": timestamp,
        });
        lines.push(line.to_string());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_parse() {
        assert_eq!(parse_start("earliest").unwrap().kind, Kind::Earliest as i32);
        assert_eq!(parse_start("snapshot:42").unwrap().snapshot_id, Some(42));
        let offsets = parse_start("offsets:0=5,2=7").unwrap();
        assert_eq!(offsets.offsets.len(), 2);
        assert_eq!(offsets.offsets[1].offset, 7);
        assert!(
            parse_start("time:2024-05-01T00:00:00Z")
                .unwrap()
                .timestamp_ms
                > 0
        );
        for bad in [
            "nope",
            "snapshot:x",
            "offsets:0-5",
            "time:yesterday",
            "when:1",
        ] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
    }
}
