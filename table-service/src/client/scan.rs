//! `unitable scan NS.TABLE [--snapshot ID | --as-of RFC3339] [--columns a,b] [--limit N]
//! [--format jsonl|csv|parquet] [--output PATH]`: a SNAPSHOT read written as it streams.

use std::fs::File;
use std::io::{Cursor, Write};
use std::process::ExitCode;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use parquet::arrow::ArrowWriter;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{ReadMode, ReadRequest, read_response};

use super::{ClientError, channel};
use crate::cli::{ScanArgs, ScanFormat};

/// Runs `unitable scan`.
pub(crate) async fn run(server: &str, args: ScanArgs) -> ExitCode {
    match run_inner(server, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

/// Where rows go, in the chosen format.
enum Sink {
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write>>),
    Csv(arrow::csv::Writer<Box<dyn Write>>),
    Parquet(Option<ArrowWriter<File>>, Option<File>),
}

impl Sink {
    fn write(&mut self, schema: &SchemaRef, batch: &RecordBatch) -> Result<(), ClientError> {
        let fail = |e: &dyn std::fmt::Display| ClientError::new(format!("cannot write rows: {e}"));
        match self {
            Sink::Json(w) => w.write(batch).map_err(|e| fail(&e)),
            Sink::Csv(w) => w.write(batch).map_err(|e| fail(&e)),
            Sink::Parquet(writer, file) => {
                if writer.is_none() {
                    let file = file.take().ok_or_else(|| fail(&"the output is gone"))?;
                    *writer = Some(
                        ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| fail(&e))?,
                    );
                }
                match writer {
                    Some(w) => w.write(batch).map_err(|e| fail(&e)),
                    None => Err(fail(&"no Parquet writer")),
                }
            }
        }
    }

    fn finish(self) -> Result<(), ClientError> {
        let fail =
            |e: &dyn std::fmt::Display| ClientError::new(format!("cannot finish the output: {e}"));
        match self {
            Sink::Json(mut w) => w.finish().map_err(|e| fail(&e)),
            Sink::Csv(w) => {
                let mut inner = w.into_inner();
                inner.flush().map_err(|e| fail(&e))
            }
            Sink::Parquet(Some(w), _) => w.close().map(|_| ()).map_err(|e| fail(&e)),
            Sink::Parquet(None, _) => Ok(()),
        }
    }
}

async fn run_inner(server: &str, args: ScanArgs) -> Result<(), ClientError> {
    if args.snapshot.is_some() && args.as_of.is_some() {
        return Err(ClientError::new("give --snapshot or --as-of, not both"));
    }
    let as_of_ms = match &args.as_of {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    ClientError::new(format!(
                        "--as-of `{text}` is not an RFC 3339 time ({e}); e.g. 2024-05-01T09:30:00Z"
                    ))
                })?
                .timestamp_millis(),
        ),
    };
    let output: Box<dyn Write> = match &args.output {
        Some(path) if args.format != ScanFormat::Parquet => Box::new(
            File::create(path)
                .map_err(|e| ClientError::new(format!("cannot create {path}: {e}")))?,
        ),
        _ => Box::new(std::io::stdout().lock()),
    };
    let mut sink = match args.format {
        ScanFormat::Jsonl => Sink::Json(arrow::json::LineDelimitedWriter::new(output)),
        ScanFormat::Csv => Sink::Csv(
            arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(output),
        ),
        ScanFormat::Parquet => {
            let path = args
                .output
                .as_deref()
                .ok_or_else(|| ClientError::new("--format parquet needs --output PATH"))?;
            let file = File::create(path)
                .map_err(|e| ClientError::new(format!("cannot create {path}: {e}")))?;
            Sink::Parquet(None, Some(file))
        }
    };
    let mut client =
        ReadServiceClient::new(channel(server)?).max_decoding_message_size(256 * 1024 * 1024);
    let mut stream = client
        .read(ReadRequest {
            table: args.table.clone(),
            mode: ReadMode::Snapshot as i32,
            columns: args.columns.clone(),
            snapshot_id: args.snapshot,
            as_of_timestamp_ms: as_of_ms,
            limit: args.limit.unwrap_or(0),
            ..ReadRequest::default()
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    let mut rows = 0u64;
    let mut snapshot = None;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
    {
        if let Some(as_of) = &message.as_of {
            snapshot = as_of.snapshot_id;
        }
        let Some(read_response::Body::ArrowIpc(bytes)) = message.body else {
            continue;
        };
        let reader = StreamReader::try_new(Cursor::new(bytes), None)
            .map_err(|e| ClientError::new(format!("the server sent unreadable rows: {e}")))?;
        let schema = reader.schema();
        for batch in reader {
            let batch = batch
                .map_err(|e| ClientError::new(format!("the server sent unreadable rows: {e}")))?;
            rows += batch.num_rows() as u64;
            sink.write(&schema, &batch)?;
        }
    }
    sink.finish()?;
    let snapshot = snapshot.map_or("none (the table has no commit yet)".to_string(), |s| {
        s.to_string()
    });
    eprintln!("{rows} rows from snapshot {snapshot}");
    Ok(())
}
