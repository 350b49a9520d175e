//! `unitable training-set (--entities FILE | --entities-table NS.T) --timestamp-column C
//! --feature NS.T.COL ... [--ttl D] [--format F] [--output PATH]`: entity rows joined with
//! feature columns as of each row's time.

use std::fs::File;
use std::io::Cursor;
use std::process::ExitCode;

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileReader, StreamReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{ReadMode, ReadRequest, TrainingSetRequest, read_response};

use super::rows::Sink;
use super::{ClientError, Connection};
use crate::cli::TrainingSetArgs;

/// Runs `unitable training-set`.
pub(crate) async fn run(conn: &Connection, args: TrainingSetArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

fn unreadable(path: &str, e: &dyn std::fmt::Display) -> ClientError {
    ClientError::new(format!("cannot read entity rows from {path}: {e}"))
}

/// The entity rows of a file, by its extension.
fn read_file(path: &str) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
    let file = File::open(path).map_err(|e| unreadable(path, &e))?;
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".parquet") {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| unreadable(path, &e))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(path, &e))?;
        return Ok((schema, batches));
    }
    if lower.ends_with(".csv") {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(&file, None)
            .map_err(|e| unreadable(path, &e))?;
        let file = File::open(path).map_err(|e| unreadable(path, &e))?;
        let schema = std::sync::Arc::new(schema);
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_format(format)
            .build(file)
            .map_err(|e| unreadable(path, &e))?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(path, &e))?;
        return Ok((schema, batches));
    }
    if lower.ends_with(".arrow") || lower.ends_with(".ipc") {
        // The IPC file format, else the stream format.
        if let Ok(reader) = FileReader::try_new(file, None) {
            let schema = reader.schema();
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(path, &e))?;
            return Ok((schema, batches));
        }
        let file = File::open(path).map_err(|e| unreadable(path, &e))?;
        let reader = StreamReader::try_new(file, None).map_err(|e| unreadable(path, &e))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(path, &e))?;
        return Ok((schema, batches));
    }
    Err(ClientError::new(format!(
        "--entities {path}: give a .parquet, .csv, .arrow or .ipc file"
    )))
}

/// Entity bytes per request (the server takes messages up to 4 MiB).
const ENTITY_BYTES: usize = 3 << 20;

/// The rows in slices of at most about [`ENTITY_BYTES`] each, in order (at least one slice).
fn slices(batches: &[RecordBatch]) -> Vec<Vec<RecordBatch>> {
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut bytes = 0;
    for batch in batches {
        let per_row = batch.get_array_memory_size() / batch.num_rows().max(1) + 1;
        let rows_per_slice = (ENTITY_BYTES / per_row).max(1);
        let mut at = 0;
        while at < batch.num_rows() {
            let room = (ENTITY_BYTES.saturating_sub(bytes) / per_row).max(1);
            let take = room.min(rows_per_slice).min(batch.num_rows() - at);
            if let Some(last) = out.last_mut() {
                last.push(batch.slice(at, take));
            }
            bytes += take * per_row;
            at += take;
            if bytes >= ENTITY_BYTES {
                out.push(Vec::new());
                bytes = 0;
            }
        }
    }
    if out.len() > 1 && out.last().is_some_and(Vec::is_empty) {
        out.pop();
    }
    out
}

fn ipc_bytes(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ClientError> {
    let fail = |e: arrow::error::ArrowError| ClientError::new(format!("encode entity rows: {e}"));
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema).map_err(fail)?;
    for batch in batches {
        writer.write(batch).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    drop(writer);
    Ok(out)
}

fn decode(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        ClientError::new(format!("the server sent unreadable rows: {e}"))
    };
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| unreadable(&e))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    Ok((schema, batches))
}

async fn run_inner(conn: &Connection, args: TrainingSetArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut client = ReadServiceClient::new(conn.channel_untimed()?)
        .max_decoding_message_size(256 * 1024 * 1024);
    let (schema, batches) = match (&args.entities, &args.entities_table) {
        (Some(path), None) => read_file(path)?,
        (None, Some(table)) => {
            let mut stream = client
                .read(ReadRequest {
                    table: table.clone(),
                    mode: ReadMode::Fresh as i32,
                    ..ReadRequest::default()
                })
                .await
                .map_err(|s| ClientError::from_status(server, &s))?
                .into_inner();
            let mut schema = None;
            let mut batches = Vec::new();
            while let Some(message) = stream
                .message()
                .await
                .map_err(|s| ClientError::from_status(server, &s))?
            {
                if let Some(read_response::Body::ArrowIpc(bytes)) = message.body {
                    let (s, b) = decode(bytes)?;
                    schema.get_or_insert(s);
                    batches.extend(b);
                }
            }
            let schema = schema.ok_or_else(|| {
                ClientError::new(format!("--entities-table {table}: the read sent no rows"))
            })?;
            (schema, batches)
        }
        _ => {
            return Err(ClientError::new(
                "give the entity rows with --entities FILE or --entities-table NS.TABLE (one)",
            ));
        }
    };
    let mut sink = Sink::open(args.format, args.output.as_deref())?;
    // Requests stay under the server's 4 MiB message limit: the rows go in slices, each joined
    // on its own (every row carries what served it), the results in order.
    for slice in slices(&batches) {
        let mut stream = client
            .training_set(TrainingSetRequest {
                entities: ipc_bytes(&schema, &slice)?,
                timestamp_column: args.timestamp_column.clone(),
                features: args.features.clone(),
                ttl_ms: args.ttl.map(|d| d.as_millis() as u64),
            })
            .await
            .map_err(|s| ClientError::from_status(server, &s))?
            .into_inner();
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| ClientError::from_status(server, &s))?
        {
            let (schema, batches) = decode(message.arrow_ipc)?;
            sink.schema(&schema);
            for batch in &batches {
                sink.write(&schema, batch)?;
            }
        }
    }
    sink.finish()
}
