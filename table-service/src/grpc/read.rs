//! `ReadService`: SNAPSHOT reads through the reader role; the other modes and Query answer
//! UNIMPLEMENTED until they are built.

use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::StreamWriter;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use unitable_proto::v1 as wire;
use unitable_proto::v1::read_service_server::ReadService;
use unitable_reader::{Reader, SnapshotRead, SnapshotSelector};

use super::pending::missing;
use super::table_name;
use super::write::as_of_to_wire;
use crate::status::ApiError;

/// Batches in flight per read: a slow client holds the scan back instead of growing memory.
const IN_FLIGHT: usize = 4;

/// Reads through the reader role.
#[derive(Debug, Clone)]
pub(crate) struct ReadApi {
    reader: Reader,
}

impl ReadApi {
    pub(crate) fn new(reader: Reader) -> Self {
        Self { reader }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One Arrow IPC stream (schema, the batch if any, end marker).
pub(crate) fn ipc_bytes(schema: &Schema, batch: Option<&RecordBatch>) -> Result<Vec<u8>, Status> {
    let fail = |e: arrow::error::ArrowError| Status::internal(format!("encode Arrow IPC: {e}"));
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema).map_err(fail)?;
    if let Some(batch) = batch {
        writer.write(batch).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    drop(writer);
    Ok(out)
}

#[tonic::async_trait]
impl ReadService for ReadApi {
    type ReadStream = BoxStream<wire::ReadResponse>;
    type QueryStream = BoxStream<wire::QueryResponse>;

    async fn read(
        &self,
        request: Request<wire::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "Read").increment(1);
        let request = request.into_inner();
        let table = table_name(&request.table)?;
        match wire::ReadMode::try_from(request.mode) {
            Ok(wire::ReadMode::Snapshot) => {}
            Ok(wire::ReadMode::Lookup) => {
                let response = super::lookup::lookup(&self.reader, table, request).await?;
                return Ok(Response::new(Box::pin(futures::stream::once(async {
                    Ok(response)
                }))));
            }
            Ok(wire::ReadMode::Stream | wire::ReadMode::Fresh) => {
                return Err(missing("Read in STREAM and FRESH modes (the reader role)"));
            }
            Ok(wire::ReadMode::Unspecified) | Err(_) => {
                return Err(ApiError::BadRequest {
                    field: "mode",
                    reason: "must be READ_MODE_STREAM, READ_MODE_SNAPSHOT, READ_MODE_FRESH or \
                             READ_MODE_LOOKUP"
                        .into(),
                }
                .into());
            }
        }
        if !request.filter.trim().is_empty() {
            return Err(missing("`filter` on SNAPSHOT reads"));
        }
        let snapshot = match (request.snapshot_id, request.as_of_timestamp_ms) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest {
                    field: "snapshot_id",
                    reason: "give snapshot_id or as_of_timestamp_ms, not both".into(),
                }
                .into());
            }
            (Some(id), None) => SnapshotSelector::Id(id),
            (None, Some(ms)) => SnapshotSelector::AsOf(ms),
            (None, None) => SnapshotSelector::Latest,
        };
        let read = self
            .reader
            .snapshot(&SnapshotRead {
                table,
                columns: request.columns,
                snapshot,
                limit: (request.limit > 0).then_some(request.limit),
            })
            .await
            .map_err(ApiError::from)?;
        let (tx, rx) = mpsc::channel::<Result<wire::ReadResponse, Status>>(IN_FLIGHT);
        tokio::spawn(async move {
            let mut batches = read.batches;
            let mut as_of = Some(as_of_to_wire(&read.as_of));
            let mut sent = false;
            loop {
                let next = batches.next().await;
                // An empty result still tells the client its schema.
                let (message, last) = match next {
                    Some(Ok(batch)) => (ipc_bytes(&read.schema, Some(&batch)), false),
                    Some(Err(e)) => (Err(Status::from(ApiError::from(e))), true),
                    None if !sent => (ipc_bytes(&read.schema, None), true),
                    None => break,
                };
                let done = last || message.is_err();
                let response = message.map(|bytes| wire::ReadResponse {
                    body: Some(wire::read_response::Body::ArrowIpc(bytes)),
                    as_of: as_of.take(),
                });
                sent = true;
                // A closed channel means the client went away: stop scanning.
                if tx.send(response).await.is_err() || done {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn query(
        &self,
        _request: Request<wire::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(missing("Query (SQL through DataFusion, the reader role)"))
    }
}
