//! `unitable training-set (--entities FILE | --entities-table NS.T) --timestamp-column C
//! --feature NS.T.COL ... [--ttl D] [--format F] [--output PATH]`: entity rows joined with
//! feature columns as of each row's time.
//!
//! The entity rows stream to the server as they are read (one call, messages of about
//! [`ENTITY_BYTES`]) and the joined rows are written as they come back, so neither side holds
//! the whole set: the server sorts it on disk past its memory limit.

use std::fs::File;
use std::io::Cursor;
use std::process::ExitCode;

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
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

/// Entity rows read lazily.
type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// The entity rows of a file, by its extension, read as they are sent.
fn open_file(path: &str) -> Result<(SchemaRef, Batches), ClientError> {
    let file = File::open(path).map_err(|e| unreadable(path, &e))?;
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".parquet") {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| unreadable(path, &e))?;
        return Ok((reader.schema(), Box::new(reader)));
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
        return Ok((schema, Box::new(reader)));
    }
    if lower.ends_with(".arrow") || lower.ends_with(".ipc") {
        // The IPC file format, else the stream format.
        if let Ok(reader) = FileReader::try_new(file, None) {
            return Ok((reader.schema(), Box::new(reader)));
        }
        let file = File::open(path).map_err(|e| unreadable(path, &e))?;
        let reader = StreamReader::try_new(file, None).map_err(|e| unreadable(path, &e))?;
        return Ok((reader.schema(), Box::new(reader)));
    }
    Err(ClientError::new(format!(
        "--entities {path}: give a .parquet, .csv, .arrow or .ipc file"
    )))
}

/// Entity bytes per request message (the server takes messages up to 4 MiB).
const ENTITY_BYTES: usize = 3 << 20;

/// Cuts batches into request messages of about [`ENTITY_BYTES`] each.
struct Messages {
    header: Option<TrainingSetRequest>,
    schema: SchemaRef,
    held: Vec<RecordBatch>,
    bytes: usize,
}

impl Messages {
    fn new(header: TrainingSetRequest, schema: SchemaRef) -> Self {
        Self {
            header: Some(header),
            schema,
            held: Vec::new(),
            bytes: 0,
        }
    }

    /// Takes `batch`; returns the messages that are full.
    fn push(&mut self, batch: &RecordBatch) -> Result<Vec<TrainingSetRequest>, ClientError> {
        let mut out = Vec::new();
        let per_row = batch.get_array_memory_size() / batch.num_rows().max(1) + 1;
        let mut at = 0;
        while at < batch.num_rows() {
            let room = (ENTITY_BYTES.saturating_sub(self.bytes) / per_row).max(1);
            let take = room.min(batch.num_rows() - at);
            self.held.push(batch.slice(at, take));
            self.bytes += take * per_row;
            at += take;
            if self.bytes >= ENTITY_BYTES {
                out.push(self.flush()?);
            }
        }
        Ok(out)
    }

    /// The rows held so far as a message (the first message also carries the settings, and
    /// goes even without rows).
    fn flush(&mut self) -> Result<TrainingSetRequest, ClientError> {
        let mut message = self.header.take().unwrap_or_default();
        message.entities = ipc_bytes(&self.schema, &self.held)?;
        self.held.clear();
        self.bytes = 0;
        Ok(message)
    }

    /// The last message, if anything is left to send.
    fn last(mut self) -> Result<Option<TrainingSetRequest>, ClientError> {
        if self.held.is_empty() && self.header.is_none() {
            return Ok(None);
        }
        self.flush().map(Some)
    }
}

fn ipc_bytes(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ClientError> {
    let fail = |e: ArrowError| ClientError::new(format!("encode entity rows: {e}"));
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

/// Sends the rows of a file (read on a blocking thread) as request messages.
fn send_file(
    path: String,
    schema: SchemaRef,
    batches: Batches,
    header: TrainingSetRequest,
    tx: mpsc::Sender<TrainingSetRequest>,
) -> Result<(), ClientError> {
    let mut messages = Messages::new(header, schema);
    for batch in batches {
        let batch = batch.map_err(|e| unreadable(&path, &e))?;
        for message in messages.push(&batch)? {
            if tx.blocking_send(message).is_err() {
                return Ok(()); // The call ended; its error is reported there.
            }
        }
    }
    if let Some(message) = messages.last()? {
        let _ = tx.blocking_send(message);
    }
    Ok(())
}

/// Sends the rows of a FRESH read of `table` as request messages.
async fn send_table(
    mut client: ReadServiceClient<super::Conn>,
    server: String,
    table: String,
    header: TrainingSetRequest,
    tx: mpsc::Sender<TrainingSetRequest>,
) -> Result<(), ClientError> {
    let mut stream = client
        .read(ReadRequest {
            table: table.clone(),
            mode: ReadMode::Fresh as i32,
            ..ReadRequest::default()
        })
        .await
        .map_err(|s| ClientError::from_status(&server, &s))?
        .into_inner();
    let mut messages: Option<Messages> = None;
    let mut header = Some(header);
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| ClientError::from_status(&server, &s))?
    {
        let Some(read_response::Body::ArrowIpc(bytes)) = message.body else {
            continue;
        };
        let (schema, batches) = decode(bytes)?;
        let messages = match (&mut messages, header.take()) {
            (Some(m), _) => m,
            (None, Some(h)) => messages.insert(Messages::new(h, schema)),
            (None, None) => continue,
        };
        for batch in &batches {
            for message in messages.push(batch)? {
                if tx.send(message).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let messages = messages.ok_or_else(|| {
        ClientError::new(format!("--entities-table {table}: the read sent no rows"))
    })?;
    if let Some(message) = messages.last()? {
        let _ = tx.send(message).await;
    }
    Ok(())
}

async fn run_inner(conn: &Connection, args: TrainingSetArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut client = ReadServiceClient::new(conn.channel_untimed()?)
        .max_decoding_message_size(256 * 1024 * 1024);
    let header = TrainingSetRequest {
        entities: Vec::new(),
        timestamp_column: args.timestamp_column.clone(),
        features: args.features.clone(),
        ttl_ms: args.ttl.map(|d| d.as_millis() as u64),
    };
    let (tx, rx) = mpsc::channel::<TrainingSetRequest>(2);
    // A reader that fails says so here, then keeps the request open until the call is
    // dropped, so the server never answers a set cut short.
    let (failed_tx, failed) = oneshot::channel::<ClientError>();
    // Fused: once the reader has finished (sent its error or dropped the sender), the wait
    // stays pending instead of completing again.
    let mut failed = futures::FutureExt::fuse(failed);
    let hold = tx.clone();
    let report = move |result: Result<(), ClientError>| async move {
        if let Err(e) = result {
            let _ = failed_tx.send(e);
            hold.closed().await;
        }
    };
    match (&args.entities, &args.entities_table) {
        (Some(path), None) => {
            let (schema, batches) = open_file(path)?;
            let path = path.clone();
            let read =
                tokio::task::spawn_blocking(move || send_file(path, schema, batches, header, tx));
            tokio::spawn(async move {
                let result = read.await.unwrap_or_else(|e| {
                    Err(ClientError::new(format!(
                        "reading the entity rows failed: {e}"
                    )))
                });
                report(result).await;
            });
        }
        (None, Some(table)) => {
            let read = send_table(
                client.clone(),
                server.to_string(),
                table.clone(),
                header,
                tx,
            );
            tokio::spawn(async move { report(read.await).await });
        }
        _ => {
            return Err(ClientError::new(
                "give the entity rows with --entities FILE or --entities-table NS.TABLE (one)",
            ));
        }
    }
    let mut sink = Sink::open(args.format, args.output.as_deref())?;
    let call = client.training_set(ReceiverStream::new(rx));
    let mut stream = tokio::select! {
        biased;
        Ok(e) = &mut failed => return Err(e),
        response = call => response.map_err(|s| ClientError::from_status(server, &s))?.into_inner(),
    };
    loop {
        let message = tokio::select! {
            biased;
            Ok(e) = &mut failed => return Err(e),
            message = stream.message() => message.map_err(|s| ClientError::from_status(server, &s))?,
        };
        let Some(message) = message else { break };
        let (schema, batches) = decode(message.arrow_ipc)?;
        sink.schema(&schema);
        for batch in &batches {
            sink.write(&schema, batch)?;
        }
    }
    sink.finish()
}
