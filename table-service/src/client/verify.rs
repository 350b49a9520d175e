//! `unitable verify NS.TABLE [--snapshot ID]`: checks that a snapshot holds exactly what its
//! changelog says it should.
//!
//! It reads the snapshot (the current one, or `--snapshot`) with a SNAPSHOT read, whose `as_of`
//! carries the changelog offsets the snapshot is anchored at; then replays the changelog with a
//! STREAM from the earliest offsets up to those anchored offsets (records at or past them are
//! ignored), keeping the last change per primary key (every row, counted, for an append-only
//! table). The two sides are compared by key: rows the replay has and the snapshot lacks
//! (missing), rows the snapshot has and the replay lacks (extra), and rows whose values differ
//! (wrong). It prints the counts and the first examples of each; exit code 1 on any difference.
//!
//! The replay needs the changelog from its first record: a partition whose earliest offset is
//! past 0 (retention removed records) cannot be verified, and verify says so. Both sides are
//! held in client memory as JSON rows. A STREAM sends no message for records that decode to
//! no rows, so a partition ending in records that are not rows of the table (before the
//! anchored offset) never reports reaching it: verify then waits (a known limit).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use clap::Args;
use serde_json::{Map, Value};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{
    GetTableRequest, ReadMode, ReadRequest, StreamStart, read_response, stream_start,
};

use super::rows::decode_ipc;
use super::{ClientError, Conn, Connection};

/// `unitable verify` arguments.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// Verify this snapshot (default: the current one).
    #[arg(long)]
    pub snapshot: Option<i64>,
    /// How many examples of each kind of difference to print.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
}

/// Runs `unitable verify`.
pub(crate) async fn run(conn: &Connection, args: VerifyArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => e.exit(),
    }
}

/// One side of the comparison: key (JSON) -> row (JSON object without nulls), or for an
/// append-only table row (JSON) -> how many times it occurs.
type Rows = BTreeMap<String, Value>;

/// The number of metadata columns (`_op`, `_partition`, `_offset`, `_timestamp`) in front of a
/// STREAM batch's table columns.
const CHANGE_COLUMNS: usize = 4;

async fn run_inner(conn: &Connection, args: VerifyArgs) -> Result<bool, ClientError> {
    let rpc = |s: tonic::Status| ClientError::from_status(&conn.server, &s);
    let info = TableAdminServiceClient::new(conn.channel()?)
        .get_table(GetTableRequest {
            table: args.table.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let key: Vec<String> = info
        .table
        .and_then(|t| t.definition)
        .map(|d| d.primary_key)
        .unwrap_or_default();
    let mut reader = ReadServiceClient::new(conn.channel_untimed()?);

    // The snapshot, and the offsets it is anchored at.
    let mut snapshot = reader
        .read(ReadRequest {
            table: args.table.clone(),
            mode: ReadMode::Snapshot as i32,
            snapshot_id: args.snapshot,
            ..ReadRequest::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut as_of = None;
    let mut snapshot_rows = Rows::new();
    let mut snapshot_count = 0u64;
    while let Some(message) = snapshot.message().await.map_err(rpc)? {
        if as_of.is_none() {
            as_of = message.as_of;
        }
        if let Some(read_response::Body::ArrowIpc(bytes)) = message.body {
            let (_, batches) = decode_ipc(bytes)?;
            for batch in &batches {
                for row in json_rows(batch)? {
                    snapshot_count += 1;
                    add(&mut snapshot_rows, &key, row);
                }
            }
        }
    }
    let as_of = as_of.unwrap_or_default();
    let Some(snapshot_id) = as_of.snapshot_id else {
        println!("{} has no snapshot yet: nothing to verify", args.table);
        return Ok(true);
    };
    let anchored: BTreeMap<i32, i64> = as_of
        .offsets
        .iter()
        .map(|o| (o.partition as i32, o.offset))
        .collect();

    // The changelog, replayed up to the anchored offsets.
    let (replayed, records) = replay(&mut reader, &args.table, &key, &anchored)
        .await
        .map_err(|e| match e {
            Replay::Rpc(s) => rpc(s),
            Replay::Client(c) => c,
        })?;
    let replayed_count = count(&replayed, &key);

    let diff = Diff::of(&replayed, &snapshot_rows, &key);
    let offsets: Vec<String> = anchored.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    println!(
        "{} snapshot {snapshot_id} (changelog offsets {}): {snapshot_count} rows in the snapshot, \
         {replayed_count} rows from replaying {records} changelog records",
        args.table,
        offsets.join(",")
    );
    if diff.is_empty() {
        println!("ok: the snapshot matches the changelog");
        return Ok(true);
    }
    println!(
        "DIFFERENT: {} missing (in the changelog, not in the snapshot), {} extra (in the \
         snapshot, not in the changelog), {} wrong (different values)",
        diff.missing.len(),
        diff.extra.len(),
        diff.wrong.len()
    );
    for (what, list) in [("missing", &diff.missing), ("extra", &diff.extra)] {
        for (k, row) in list.iter().take(args.examples) {
            println!("  {what} {k}: {row}");
        }
    }
    for (k, expected, found) in diff.wrong.iter().take(args.examples) {
        println!("  wrong {k}: changelog {expected}, snapshot {found}");
    }
    Ok(false)
}

/// Why a replay stopped.
enum Replay {
    Rpc(tonic::Status),
    Client(ClientError),
}

impl From<tonic::Status> for Replay {
    fn from(s: tonic::Status) -> Self {
        Replay::Rpc(s)
    }
}

impl From<ClientError> for Replay {
    fn from(e: ClientError) -> Self {
        Replay::Client(e)
    }
}

/// Replays the changelog from its earliest offsets up to `anchored` (exclusive) into rows by
/// key; returns them and the number of records replayed. Shows progress on a terminal.
async fn replay(
    reader: &mut ReadServiceClient<Conn>,
    table: &str,
    key: &[String],
    anchored: &BTreeMap<i32, i64>,
) -> Result<(Rows, u64), Replay> {
    let mut rows = Rows::new();
    if anchored.values().all(|o| *o == 0) {
        return Ok((rows, 0));
    }
    let mut stream = reader
        .read(ReadRequest {
            table: table.to_string(),
            mode: ReadMode::Stream as i32,
            start: Some(StreamStart {
                kind: stream_start::Kind::Earliest as i32,
                ..StreamStart::default()
            }),
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let total: i64 = anchored.values().sum();
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut position: BTreeMap<i32, i64> = BTreeMap::new();
    let mut records = 0u64;
    let mut first = true;
    loop {
        let done = anchored
            .iter()
            .all(|(p, end)| position.get(p).copied().unwrap_or(0) >= *end);
        if done && !first {
            break;
        }
        let Some(message) = stream.message().await? else {
            return Err(ClientError::new(
                "the changelog stream ended before the snapshot's offsets were reached",
            )
            .into());
        };
        let Some(read_response::Body::Changes(changes)) = message.body else {
            return Err(
                ClientError::new("the server sent a STREAM message without changes").into(),
            );
        };
        for o in &changes.next_offsets {
            position.insert(o.partition as i32, o.offset);
        }
        if first {
            first = false;
            // The stream starts at the earliest offsets: a partition past 0 lost records.
            for o in message.as_of.iter().flat_map(|a| &a.offsets) {
                let end = anchored.get(&(o.partition as i32)).copied().unwrap_or(0);
                if o.offset > 0 && end > 0 {
                    return Err(ClientError::new(format!(
                        "cannot verify: the changelog of partition {} starts at offset {} \
                         (retention removed the records before it), so it cannot be replayed \
                         up to the snapshot",
                        o.partition, o.offset
                    ))
                    .into());
                }
            }
            continue;
        }
        let (_, batches) = decode_ipc(changes.arrow_ipc)?;
        for batch in &batches {
            records += apply(&mut rows, key, batch, anchored)?;
        }
        if progress {
            eprint!("\r{}", bar(records, total, started));
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    Ok((rows, records))
}

/// Applies the changes of one STREAM batch that lie before the anchored offsets; returns how
/// many it applied.
fn apply(
    rows: &mut Rows,
    key: &[String],
    batch: &RecordBatch,
    anchored: &BTreeMap<i32, i64>,
) -> Result<u64, ClientError> {
    let malformed = || {
        ClientError::new(
            "the server sent a STREAM batch without its _op, _partition and _offset columns",
        )
    };
    let ops = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(malformed)?;
    let partitions = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(malformed)?;
    let offsets = batch
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(malformed)?;
    let table_columns: Vec<usize> = (CHANGE_COLUMNS..batch.num_columns()).collect();
    let values = batch
        .project(&table_columns)
        .map_err(|e| ClientError::new(format!("unreadable changes: {e}")))?;
    let mut applied = 0;
    for (i, row) in json_rows(&values)?.into_iter().enumerate() {
        if partitions.is_null(i) || offsets.is_null(i) {
            continue;
        }
        let end = anchored.get(&partitions.value(i)).copied().unwrap_or(0);
        if offsets.value(i) >= end {
            continue;
        }
        applied += 1;
        if ops.value(i) == "delete" {
            if !key.is_empty() {
                rows.remove(&key_of(key, &row));
            }
        } else {
            add(rows, key, row);
        }
    }
    Ok(applied)
}

/// The rows of a batch as JSON objects (nulls left out).
fn json_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, ClientError> {
    let mut out = Vec::new();
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
    writer
        .write(batch)
        .and_then(|()| writer.finish())
        .map_err(|e| ClientError::new(format!("cannot turn rows into JSON: {e}")))?;
    drop(writer);
    let mut rows = Vec::with_capacity(batch.num_rows());
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let row: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|e| ClientError::new(format!("cannot read a row back from JSON: {e}")))?;
        rows.push(row);
    }
    Ok(rows)
}

/// The key of a row: the JSON array of its key columns.
fn key_of(key: &[String], row: &Map<String, Value>) -> String {
    Value::Array(
        key.iter()
            .map(|k| row.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
    .to_string()
}

/// Adds a row: by key (the last one wins), or counted (append-only).
fn add(rows: &mut Rows, key: &[String], row: Map<String, Value>) {
    if key.is_empty() {
        let text = Value::Object(row).to_string();
        let n = rows.entry(text).or_insert(Value::from(0u64));
        *n = Value::from(n.as_u64().unwrap_or(0) + 1);
    } else {
        rows.insert(key_of(key, &row), Value::Object(row));
    }
}

/// How many rows `rows` holds.
fn count(rows: &Rows, key: &[String]) -> u64 {
    if key.is_empty() {
        rows.values().map(|n| n.as_u64().unwrap_or(0)).sum()
    } else {
        rows.len() as u64
    }
}

/// The differences between the replayed changelog and the snapshot.
#[derive(Debug, Default, PartialEq)]
struct Diff {
    /// In the changelog, not in the snapshot: key -> row.
    missing: Vec<(String, Value)>,
    /// In the snapshot, not in the changelog: key -> row.
    extra: Vec<(String, Value)>,
    /// In both, with different values: key, changelog row, snapshot row.
    wrong: Vec<(String, Value, Value)>,
}

impl Diff {
    fn of(replayed: &Rows, snapshot: &Rows, key: &[String]) -> Self {
        let mut diff = Diff::default();
        for (k, expected) in replayed {
            match snapshot.get(k) {
                None => diff.missing.push((k.clone(), expected.clone())),
                Some(found) if key.is_empty() => {
                    // An append-only row occurring a different number of times.
                    let (e, f) = (expected.as_u64().unwrap_or(0), found.as_u64().unwrap_or(0));
                    if e > f {
                        diff.missing.push((k.clone(), Value::from(e - f)));
                    } else if f > e {
                        diff.extra.push((k.clone(), Value::from(f - e)));
                    }
                }
                Some(found) if found != expected => {
                    diff.wrong
                        .push((k.clone(), expected.clone(), found.clone()));
                }
                Some(_) => {}
            }
        }
        for (k, found) in snapshot {
            if !replayed.contains_key(k) {
                diff.extra.push((k.clone(), found.clone()));
            }
        }
        diff
    }

    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.wrong.is_empty()
    }
}

fn bar(done: u64, total: i64, started: Instant) -> String {
    const WIDTH: usize = 30;
    let total = total.max(1) as u64;
    let filled = ((done.min(total) as f64 / total as f64) * WIDTH as f64) as usize;
    format!(
        "replaying [{}{}] {done}/{total} records, {:.1} s",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        started.elapsed().as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rows(key: &[String], list: &[Value]) -> Rows {
        let mut out = Rows::new();
        for row in list {
            let Value::Object(map) = row.clone() else {
                panic!("not an object");
            };
            add(&mut out, key, map);
        }
        out
    }

    #[test]
    fn differences_by_key() {
        let key = vec!["id".to_string()];
        let replayed = rows(
            &key,
            &[
                json!({"id": 1, "v": "a"}),
                json!({"id": 2, "v": "b"}),
                json!({"id": 3, "v": "c"}),
            ],
        );
        let snapshot = rows(
            &key,
            &[
                json!({"id": 1, "v": "a"}),
                json!({"id": 3, "v": "X"}),
                json!({"id": 4, "v": "d"}),
            ],
        );
        let diff = Diff::of(&replayed, &snapshot, &key);
        assert_eq!(
            diff.missing,
            vec![("[2]".to_string(), json!({"id": 2, "v": "b"}))]
        );
        assert_eq!(
            diff.extra,
            vec![("[4]".to_string(), json!({"id": 4, "v": "d"}))]
        );
        assert_eq!(
            diff.wrong,
            vec![(
                "[3]".to_string(),
                json!({"id": 3, "v": "c"}),
                json!({"id": 3, "v": "X"})
            )]
        );
        assert!(Diff::of(&replayed, &replayed, &key).is_empty());
    }

    #[test]
    fn append_only_rows_are_counted() {
        let replayed = rows(&[], &[json!({"v": 1}), json!({"v": 1}), json!({"v": 2})]);
        let snapshot = rows(&[], &[json!({"v": 1}), json!({"v": 2}), json!({"v": 2})]);
        let diff = Diff::of(&replayed, &snapshot, &[]);
        assert_eq!(diff.missing, vec![("{\"v\":1}".to_string(), json!(1))]);
        assert_eq!(diff.extra, vec![("{\"v\":2}".to_string(), json!(1))]);
        assert_eq!(count(&replayed, &[]), 3);
    }
}
