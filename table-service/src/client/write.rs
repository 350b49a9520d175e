//! `unitable write NS.TABLE --file PATH|- [--format jsonl|csv|parquet] [--op ...]`.
//!
//! Rows are sent in batches of `--batch-size`, one `Write` call each, so every batch is
//! acknowledged on its own and a failure names the rows that were not written. Each batch
//! carries a request id, and a batch whose call failed in a way that may pass is sent again
//! with it, so retries never write a batch twice. JSON lines go
//! as they are; CSV rows become JSON objects whose values are the cells as strings (an empty
//! cell is null), so the server validates and coerces each row; Parquet goes as Arrow IPC.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write as _};
use std::process::ExitCode;
use std::time::Instant;

use arrow::ipc::writer::StreamWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{RowFormat, WaitFor, WriteOp, WriteRequest, WriteResponse};

use super::{ClientError, Conn, Connection};
use crate::cli::{InputFormat, WriteArgs, WriteOpArg};

/// Runs `unitable write`.
pub(crate) async fn run(conn: &Connection, args: WriteArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => e.exit(),
    }
}

/// One batch to send: the payload, its format and how many rows it holds.
struct Batch {
    rows: Vec<u8>,
    format: RowFormat,
    count: usize,
}

/// Totals over all batches.
#[derive(Default)]
struct Summary {
    written: u64,
    rejected: Vec<(u64, String, String)>,
    last_offsets: BTreeMap<u32, i64>,
    snapshot_id: Option<i64>,
}

async fn run_inner(conn: &Connection, args: WriteArgs) -> Result<bool, ClientError> {
    let server = conn.server.as_str();
    let mut client = WriteServiceClient::new(conn.channel()?)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(64 * 1024 * 1024);
    let batches = read_batches(&args)?;
    let op = match args.op {
        WriteOpArg::Insert => WriteOp::Insert,
        WriteOpArg::Upsert => WriteOp::Upsert,
        WriteOpArg::Delete => WriteOp::Delete,
    };
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut first_row = 0u64;
    let mut batches = batches.peekable();
    let run_id = uuid::Uuid::now_v7();
    let mut batch_index = 0u64;
    while let Some(batch) = batches.next() {
        let batch = batch?;
        let last = batches.peek().is_none();
        let wait = args.wait.is_some() && last;
        let request = WriteRequest {
            table: args.table.clone(),
            op: op as i32,
            format: batch.format as i32,
            rows: batch.rows,
            wait_for: if wait {
                WaitFor::Snapshot
            } else {
                WaitFor::Changelog
            } as i32,
            // One id per batch: a retry below (or a rerun of a failed batch by the server's
            // request log) writes nothing twice.
            request_id: format!("{run_id}:{batch_index}"),
        };
        batch_index += 1;
        let response = send_with_retries(&mut client, request, first_row)
            .await
            .map_err(|s| {
                let note = if summary.written > 0 {
                    format!(
                        " ({} rows before row {first_row} were written and acknowledged)",
                        summary.written
                    )
                } else {
                    String::new()
                };
                let e = ClientError::from_status(server, &s);
                ClientError::new(format!("rows from {first_row} on: {}{note}", e.message()))
            })?;
        absorb(&mut summary, &response, first_row, wait);
        first_row += batch.count as u64;
        if progress {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\r{} rows sent, {} written, {} rejected ({:.0} rows/s)   ",
                first_row,
                summary.written,
                summary.rejected.len(),
                first_row as f64 / secs
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    print_summary(&args.table, &summary, started);
    Ok(summary.rejected.is_empty())
}

/// Sends one batch; a failure that may pass (the server unreachable or restarting, the
/// request still in progress elsewhere) is retried with the same request id, so the batch is
/// written once however often it is sent. Up to 6 attempts over about 30 s.
async fn send_with_retries(
    client: &mut WriteServiceClient<Conn>,
    request: WriteRequest,
    first_row: u64,
) -> Result<WriteResponse, tonic::Status> {
    let mut delay = std::time::Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match client.write(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(s) if attempt < 6 && retryable(s.code()) => {
                eprintln!(
                    "rows from {first_row} on: {} ({:?}); retrying the same batch in {:.1} s (attempt {} of 6)",
                    s.message(),
                    s.code(),
                    delay.as_secs_f64(),
                    attempt + 1
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(8));
                attempt += 1;
            }
            Err(s) => return Err(s),
        }
    }
}

fn retryable(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unavailable | tonic::Code::Aborted)
}

fn absorb(summary: &mut Summary, response: &WriteResponse, first_row: u64, waited: bool) {
    summary.written += response.rows_written;
    for e in &response.errors {
        summary
            .rejected
            .push((first_row + e.row_index, e.field.clone(), e.reason.clone()));
    }
    for o in &response.last_offsets {
        summary.last_offsets.insert(o.partition, o.offset);
    }
    if waited {
        summary.snapshot_id = response.as_of.as_ref().and_then(|a| a.snapshot_id);
    }
}

fn print_summary(table: &str, summary: &Summary, started: Instant) {
    let offsets: Vec<String> = summary
        .last_offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect();
    println!(
        "wrote {} rows to {table} in {:.1}s; {} rejected; last offsets {}",
        summary.written,
        started.elapsed().as_secs_f64(),
        summary.rejected.len(),
        if offsets.is_empty() {
            "-".to_string()
        } else {
            offsets.join(",")
        }
    );
    if let Some(id) = summary.snapshot_id {
        println!("committed in snapshot {id}");
    }
    for (row, field, reason) in summary.rejected.iter().take(10) {
        let field = if field.is_empty() {
            String::new()
        } else {
            format!(", field `{field}`")
        };
        eprintln!("rejected: row {row}{field}: {reason}");
    }
    if summary.rejected.len() > 10 {
        eprintln!("... and {} more rejected rows", summary.rejected.len() - 10);
    }
}

type Batches = Box<dyn Iterator<Item = Result<Batch, ClientError>>>;

fn open(path: &str) -> Result<Box<dyn Read>, ClientError> {
    if path == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    let file = File::open(path)
        .map_err(|e| ClientError::new(format!("cannot open {path}: {e}; check the --file path")))?;
    Ok(Box::new(file))
}

fn read_batches(args: &WriteArgs) -> Result<Batches, ClientError> {
    let size = args.batch_size.max(1);
    let format = args.format.unwrap_or_else(|| guess_format(&args.file));
    match format {
        InputFormat::Jsonl => {
            let reader = BufReader::new(open(&args.file)?);
            Ok(Box::new(LineBatches {
                lines: reader.lines(),
                size,
                file: args.file.clone(),
            }))
        }
        InputFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(open(&args.file)?);
            let header: Vec<String> = reader
                .headers()
                .map_err(|e| {
                    ClientError::new(format!("{}: cannot read the CSV header: {e}", args.file))
                })?
                .iter()
                .map(str::to_string)
                .collect();
            Ok(Box::new(CsvBatches {
                records: reader.into_records(),
                header,
                size,
                file: args.file.clone(),
            }))
        }
        InputFormat::Parquet => {
            if args.file == "-" {
                return Err(ClientError::new(
                    "Parquet input needs a file (--file PATH), not standard input",
                ));
            }
            let file = File::open(&args.file).map_err(|e| {
                ClientError::new(format!(
                    "cannot open {}: {e}; check the --file path",
                    args.file
                ))
            })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.with_batch_size(size).build())
                .map_err(|e| {
                    ClientError::new(format!("{} is not a readable Parquet file: {e}", args.file))
                })?;
            let file = args.file.clone();
            Ok(Box::new(reader.map(move |batch| {
                let batch = batch
                    .map_err(|e| ClientError::new(format!("{file}: cannot read rows: {e}")))?;
                let mut rows = Vec::new();
                let mut w = StreamWriter::try_new(&mut rows, batch.schema_ref())
                    .map_err(|e| ClientError::new(format!("encode rows: {e}")))?;
                w.write(&batch)
                    .and_then(|()| w.finish())
                    .map_err(|e| ClientError::new(format!("encode rows: {e}")))?;
                drop(w);
                Ok(Batch {
                    rows,
                    format: RowFormat::ArrowIpc,
                    count: batch.num_rows(),
                })
            })))
        }
    }
}

fn guess_format(path: &str) -> InputFormat {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        InputFormat::Csv
    } else if lower.ends_with(".parquet") {
        InputFormat::Parquet
    } else {
        InputFormat::Jsonl
    }
}

struct LineBatches<R: BufRead> {
    lines: std::io::Lines<R>,
    size: usize,
    file: String,
}

impl<R: BufRead> Iterator for LineBatches<R> {
    type Item = Result<Batch, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rows = Vec::new();
        let mut count = 0;
        while count < self.size {
            match self.lines.next() {
                None => break,
                Some(Err(e)) => {
                    return Some(Err(ClientError::new(format!(
                        "{}: cannot read: {e}",
                        self.file
                    ))));
                }
                Some(Ok(line)) if line.trim().is_empty() => {}
                Some(Ok(line)) => {
                    rows.extend_from_slice(line.as_bytes());
                    rows.push(b'\n');
                    count += 1;
                }
            }
        }
        (count > 0).then_some(Ok(Batch {
            rows,
            format: RowFormat::JsonLines,
            count,
        }))
    }
}

struct CsvBatches<R: Read> {
    records: csv::StringRecordsIntoIter<R>,
    header: Vec<String>,
    size: usize,
    file: String,
}

impl<R: Read> Iterator for CsvBatches<R> {
    type Item = Result<Batch, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rows = Vec::new();
        let mut count = 0;
        for record in self.records.by_ref() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    return Some(Err(ClientError::new(format!(
                        "{}: malformed CSV: {e}",
                        self.file
                    ))));
                }
            };
            let object: serde_json::Map<String, serde_json::Value> = self
                .header
                .iter()
                .zip(record.iter())
                .map(|(name, cell)| {
                    let value = if cell.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(cell.to_string())
                    };
                    (name.clone(), value)
                })
                .collect();
            rows.extend_from_slice(serde_json::Value::Object(object).to_string().as_bytes());
            rows.push(b'\n');
            count += 1;
            if count == self.size {
                break;
            }
        }
        (count > 0).then_some(Ok(Batch {
            rows,
            format: RowFormat::JsonLines,
            count,
        }))
    }
}
