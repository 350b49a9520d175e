//! `ReadService`: every read mode and SQL through the reader role. Results stream through a
//! bounded channel, so a slow client holds the read back instead of growing server memory.

use std::pin::Pin;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::StreamWriter;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1 as wire;
use unitable_proto::v1::read_service_server::ReadService;
use unitable_reader::{
    FreshRead, Query, QueryMode, ReadResult, Reader, SnapshotRead, SnapshotSelector, StreamRead,
    StreamStart,
};

use super::read_metrics::ReadMeter;
use super::table_name;
use super::write::{as_of_to_wire, offsets_to_wire};
use crate::access::{Access, Guard, Principal, Privilege};
use crate::status::ApiError;

/// Messages in flight per read: a slow client holds the read back instead of growing memory.
pub(crate) const IN_FLIGHT: usize = 4;

/// Reads through the reader role.
#[derive(Debug, Clone)]
pub(crate) struct ReadApi {
    reader: Reader,
    /// The runtime that drives result streams (CPU-heavy scans and SQL stay off the gRPC one).
    runtime: tokio::runtime::Handle,
    access: Access,
}

impl ReadApi {
    pub(crate) fn new(reader: Reader, runtime: tokio::runtime::Handle, access: Access) -> Self {
        Self {
            reader,
            runtime,
            access,
        }
    }
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> Status {
    ApiError::BadRequest {
        field,
        reason: reason.into(),
    }
    .into()
}

/// How often an idle result stream re-checks that its caller still holds the grant and token
/// it started with (every message is checked too).
const RECHECK: Duration = Duration::from_secs(1);

/// Sends `first` (if any), then one message per item of `items` through a bounded channel,
/// from a task on `runtime` that stops when the client goes away or after the first error.
/// `guard` is checked before every message and every [`RECHECK`] while waiting: a revoked
/// grant or token ends the stream with its error.
fn pump<T, M>(
    runtime: &tokio::runtime::Handle,
    first: Option<M>,
    items: Pin<Box<dyn Stream<Item = ReadResult<T>> + Send>>,
    guard: Guard,
    message: impl FnMut(T) -> Result<M, Status> + Send + 'static,
) -> BoxStream<M>
where
    T: Send + 'static,
    M: Send + 'static,
{
    let items = items.map(|item| item.map_err(|e| Status::from(ApiError::from(e))));
    pump_status(runtime, first, Box::pin(items), guard, message)
}

/// [`pump`] of items that fail with a status already.
pub(crate) fn pump_status<T, M>(
    runtime: &tokio::runtime::Handle,
    first: Option<M>,
    mut items: BoxStream<T>,
    guard: Guard,
    mut message: impl FnMut(T) -> Result<M, Status> + Send + 'static,
) -> BoxStream<M>
where
    T: Send + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<M, Status>>(IN_FLIGHT);
    runtime.spawn(async move {
        if let Some(first) = first
            && tx.send(Ok(first)).await.is_err()
        {
            return;
        }
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let item = tokio::select! {
                // `next` is cancel-safe: an item is never lost to the other branch.
                item = items.next() => item,
                // The client went away while nothing was coming: stop (and drop the read).
                () = tx.closed() => return,
                _ = recheck.tick() => match guard.check() {
                    Ok(()) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
            };
            let Some(item) = item else { return };
            let out = guard
                .check()
                .map_err(Status::from)
                .and(item)
                .and_then(&mut message);
            let failed = out.is_err();
            // A closed channel means the client went away: stop reading.
            if tx.send(out).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn snapshot_selector(request: &wire::ReadRequest) -> Result<SnapshotSelector, Status> {
    match (request.snapshot_id, request.as_of_timestamp_ms) {
        (Some(_), Some(_)) => Err(bad(
            "snapshot_id",
            "give snapshot_id or as_of_timestamp_ms, not both",
        )),
        (Some(id), None) => Ok(SnapshotSelector::Id(id)),
        (None, Some(ms)) => Ok(SnapshotSelector::AsOf(ms)),
        (None, None) => Ok(SnapshotSelector::Latest),
    }
}

fn stream_start(start: Option<&wire::StreamStart>) -> Result<StreamStart, Status> {
    use wire::stream_start::Kind;
    let Some(start) = start else {
        return Err(bad(
            "start",
            "a STREAM read needs a start (earliest, latest, offsets, timestamp or snapshot)",
        ));
    };
    Ok(match Kind::try_from(start.kind) {
        Ok(Kind::Earliest) => StreamStart::Earliest,
        Ok(Kind::Latest) => StreamStart::Latest,
        Ok(Kind::Offsets) => {
            let mut offsets = PartitionOffsets::default();
            for o in &start.offsets {
                if o.offset < 0 {
                    return Err(bad(
                        "start.offsets",
                        format!(
                            "offset {} of partition {} is negative",
                            o.offset, o.partition
                        ),
                    ));
                }
                offsets.set(PartitionId(o.partition), Offset(o.offset));
            }
            StreamStart::Offsets(offsets)
        }
        Ok(Kind::Timestamp) => StreamStart::Timestamp(start.timestamp_ms),
        Ok(Kind::Snapshot) => StreamStart::Snapshot(start.snapshot_id),
        Ok(Kind::Unspecified) | Err(_) => {
            return Err(bad(
                "start.kind",
                "must be KIND_EARLIEST, KIND_LATEST, KIND_OFFSETS, KIND_TIMESTAMP or KIND_SNAPSHOT",
            ));
        }
    })
}

fn filter_of(request: &wire::ReadRequest) -> Option<String> {
    Some(request.filter.clone()).filter(|f| !f.trim().is_empty())
}

impl ReadApi {
    async fn rows(
        &self,
        request: wire::ReadRequest,
        fresh: bool,
        guard: Guard,
    ) -> Result<BoxStream<wire::ReadResponse>, Status> {
        let started = Instant::now();
        let table = table_name(&request.table)?;
        let label = table.to_string();
        let limit = (request.limit > 0).then_some(request.limit);
        let read = if fresh {
            if request.snapshot_id.is_some() || request.as_of_timestamp_ms.is_some() {
                return Err(bad(
                    "snapshot_id",
                    "FRESH reads serve the latest data; use SNAPSHOT mode to time-travel",
                ));
            }
            self.reader
                .fresh(&FreshRead {
                    table,
                    columns: request.columns.clone(),
                    filter: filter_of(&request),
                    limit,
                    max_staleness: request.max_staleness_ms.map(Duration::from_millis),
                })
                .await
        } else {
            self.reader
                .snapshot(&SnapshotRead {
                    table,
                    columns: request.columns.clone(),
                    filter: filter_of(&request),
                    snapshot: snapshot_selector(&request)?,
                    limit,
                })
                .await
        }
        .map_err(ApiError::from)?;
        let schema = read.schema.clone();
        let as_of = as_of_to_wire(&read.as_of);
        // The first message carries `as_of` and the schema, so an empty result still has both.
        let first = wire::ReadResponse {
            body: Some(wire::read_response::Body::ArrowIpc(ipc_bytes(
                &schema, None,
            )?)),
            as_of: Some(as_of),
            group: None,
        };
        let meter = ReadMeter::opened(if fresh { "FRESH" } else { "SNAPSHOT" }, label, started);
        if let Some(wire::read_response::Body::ArrowIpc(bytes)) = &first.body {
            meter.sent(0, bytes.len());
        }
        Ok(pump(
            &self.runtime,
            Some(first),
            read.batches,
            guard,
            move |batch| {
                let bytes = ipc_bytes(&schema, Some(&batch))?;
                meter.sent(batch.num_rows(), bytes.len());
                Ok(wire::ReadResponse {
                    body: Some(wire::read_response::Body::ArrowIpc(bytes)),
                    as_of: None,
                    group: None,
                })
            },
        ))
    }

    async fn changes(
        &self,
        request: wire::ReadRequest,
        caller: &str,
        guard: Guard,
    ) -> Result<BoxStream<wire::ReadResponse>, Status> {
        let started = Instant::now();
        let table = table_name(&request.table)?;
        let label = table.to_string();
        let start = stream_start(request.start.as_ref())?;
        let read = StreamRead {
            table,
            columns: request.columns.clone(),
            filter: filter_of(&request),
            start,
            limit: (request.limit > 0).then_some(request.limit),
            partitions: request.partitions.clone(),
            resume: PartitionOffsets::default(),
            // Metrics name a group member's stream by its group, others by the caller.
            subscriber: if request.consumer_group.is_empty() {
                caller.to_string()
            } else {
                request.consumer_group.clone()
            },
        };
        let (stream, group) = if request.consumer_group.is_empty() {
            if !request.consumer_member.is_empty() || request.group_auto_commit {
                return Err(bad(
                    "consumer_member",
                    "consumer_member and group_auto_commit need a consumer_group",
                ));
            }
            let stream = self.reader.stream(&read).await.map_err(ApiError::from)?;
            (stream, None)
        } else {
            super::groups::stream(&self.reader, &read, &request).await?
        };
        let schema = stream.schema.clone();
        let first = wire::ReadResponse {
            body: Some(wire::read_response::Body::Changes(wire::ChangeBatch {
                arrow_ipc: ipc_bytes(&schema, None)?,
                next_offsets: offsets_to_wire(&stream.as_of.offsets),
            })),
            as_of: Some(as_of_to_wire(&stream.as_of)),
            group,
        };
        let meter = ReadMeter::opened("STREAM", label, started);
        if let Some(wire::read_response::Body::Changes(changes)) = &first.body {
            meter.sent(0, changes.arrow_ipc.len());
        }
        Ok(pump(
            &self.runtime,
            Some(first),
            stream.changes,
            guard,
            move |change| {
                let arrow_ipc = ipc_bytes(&schema, Some(&change.batch))?;
                meter.sent(change.batch.num_rows(), arrow_ipc.len());
                Ok(wire::ReadResponse {
                    body: Some(wire::read_response::Body::Changes(wire::ChangeBatch {
                        arrow_ipc,
                        next_offsets: offsets_to_wire(&change.next_offsets),
                    })),
                    as_of: None,
                    group: None,
                })
            },
        ))
    }
}

#[tonic::async_trait]
impl ReadService for ReadApi {
    type ReadStream = BoxStream<wire::ReadResponse>;
    type QueryStream = BoxStream<wire::QueryResponse>;
    type TrainingSetStream = BoxStream<wire::TrainingSetResponse>;

    async fn read(
        &self,
        request: Request<wire::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let table = table_name(&request.table)?;
        let mode = wire::ReadMode::try_from(request.mode);
        let mode_name = match mode {
            Ok(wire::ReadMode::Stream) => "STREAM",
            Ok(wire::ReadMode::Snapshot) => "SNAPSHOT",
            Ok(wire::ReadMode::Fresh) => "FRESH",
            Ok(wire::ReadMode::Lookup) => "LOOKUP",
            Ok(wire::ReadMode::Unspecified) | Err(_) => "UNSPECIFIED",
        };
        metrics::counter!("unitable_grpc_requests_total", "method" => "Read", "mode" => mode_name)
            .increment(1);
        // Every mode, LOOKUP included, needs `read` on the table before anything else.
        let action = match mode_name {
            "STREAM" => "Read(STREAM)",
            "SNAPSHOT" => "Read(SNAPSHOT)",
            "FRESH" => "Read(FRESH)",
            "LOOKUP" => "Read(LOOKUP)",
            _ => "Read",
        };
        self.access.check(&who, Privilege::Read, &table, action)?;
        let guard = self
            .access
            .guard(&who, Privilege::Read, vec![table.clone()], action);
        if !request.as_of_offsets.is_empty() && mode_name != "LOOKUP" {
            return Err(bad(
                "as_of_offsets",
                "only LOOKUP reads as of changelog offsets; STREAM from offsets with start",
            ));
        }
        let stream = match mode {
            Ok(wire::ReadMode::Snapshot) => self.rows(request, false, guard).await?,
            Ok(wire::ReadMode::Fresh) => self.rows(request, true, guard).await?,
            Ok(wire::ReadMode::Stream) => self.changes(request, who.name(), guard).await?,
            Ok(wire::ReadMode::Lookup) => {
                let response = metered_lookup(&self.reader, table, request).await?;
                Box::pin(futures::stream::once(async { Ok(response) }))
            }
            Ok(wire::ReadMode::Unspecified) | Err(_) => {
                return Err(bad(
                    "mode",
                    "must be READ_MODE_STREAM, READ_MODE_SNAPSHOT, READ_MODE_FRESH or \
                     READ_MODE_LOOKUP",
                ));
            }
        };
        Ok(Response::new(stream))
    }

    async fn lookup(
        &self,
        request: Request<wire::ReadRequest>,
    ) -> Result<Response<wire::ReadResponse>, Status> {
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let table = table_name(&request.table)?;
        lookup_mode(&request)?;
        metrics::counter!("unitable_grpc_requests_total", "method" => "Lookup", "mode" => "LOOKUP")
            .increment(1);
        self.access.check(&who, Privilege::Read, &table, "Lookup")?;
        let response = metered_lookup(&self.reader, table, request).await?;
        Ok(Response::new(response))
    }

    async fn training_set(
        &self,
        request: Request<Streaming<wire::TrainingSetRequest>>,
    ) -> Result<Response<Self::TrainingSetStream>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "TrainingSet").increment(1);
        let who = Principal::of(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| bad("entities", "the call sent no request message"))?;
        let tables = super::training::tables(&first)?;
        for table in &tables {
            self.access
                .check(&who, Privilege::Read, table, "TrainingSet")?;
        }
        let messages = super::training::training_set(&self.reader, first, inbound).await?;
        Ok(Response::new(messages))
    }

    async fn commit_group_offsets(
        &self,
        request: Request<wire::CommitGroupOffsetsRequest>,
    ) -> Result<Response<wire::CommitGroupOffsetsResponse>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "CommitGroupOffsets")
            .increment(1);
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let table = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Read, &table, "CommitGroupOffsets")?;
        super::groups::commit(&self.reader, table, request).await?;
        Ok(Response::new(wire::CommitGroupOffsetsResponse {}))
    }

    async fn describe_consumer_groups(
        &self,
        request: Request<wire::DescribeConsumerGroupsRequest>,
    ) -> Result<Response<wire::DescribeConsumerGroupsResponse>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "DescribeConsumerGroups")
            .increment(1);
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let table = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Read, &table, "DescribeConsumerGroups")?;
        let groups = super::groups::describe(&self.reader, &table, &request.group).await?;
        Ok(Response::new(wire::DescribeConsumerGroupsResponse {
            groups,
        }))
    }

    async fn query(
        &self,
        request: Request<wire::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "Query").increment(1);
        let started = Instant::now();
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let mode = match wire::ReadMode::try_from(request.mode) {
            Ok(wire::ReadMode::Unspecified | wire::ReadMode::Snapshot) => QueryMode::Snapshot,
            Ok(wire::ReadMode::Fresh) => QueryMode::Fresh,
            Ok(wire::ReadMode::Stream | wire::ReadMode::Lookup) | Err(_) => {
                return Err(bad(
                    "mode",
                    "SQL reads READ_MODE_SNAPSHOT (the default) or READ_MODE_FRESH",
                ));
            }
        };
        if request.sql.trim().is_empty() {
            return Err(bad("sql", "is empty"));
        }
        // Authorize every table the statement names (joins, subqueries, CTEs, unions) before
        // planning: an ungranted table and a missing one are refused alike, and nothing of
        // either reaches the planner.
        let tables = self
            .reader
            .tables_of(&request.sql)
            .map_err(ApiError::from)?;
        for table in &tables {
            self.access.check(&who, Privilege::Read, table, "Query")?;
        }
        let mut names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        names.sort();
        let guard = self.access.guard(&who, Privilege::Read, tables, "Query");
        let query = self
            .reader
            .query(&Query {
                sql: request.sql,
                mode,
            })
            .await
            .map_err(ApiError::from)?;
        let schema = query.schema.clone();
        let first = wire::QueryResponse {
            arrow_ipc: ipc_bytes(&schema, None)?,
            as_of: query
                .as_of
                .iter()
                .map(|(name, as_of)| (name.clone(), as_of_to_wire(as_of)))
                .collect(),
        };
        let meter = ReadMeter::opened("SQL", names.join(","), started);
        meter.sent(0, first.arrow_ipc.len());
        Ok(Response::new(pump(
            &self.runtime,
            Some(first),
            query.batches,
            guard,
            move |batch| {
                let arrow_ipc = ipc_bytes(&schema, Some(&batch))?;
                meter.sent(batch.num_rows(), arrow_ipc.len());
                Ok(wire::QueryResponse {
                    arrow_ipc,
                    as_of: Default::default(),
                })
            },
        )))
    }
}

/// A LOOKUP answered and metered: its latency to the answer, and the rows found and their
/// bytes.
/// Fails unless `request` is a LOOKUP (or leaves the mode unset), as the unary `Lookup` call
/// (and its RESP twin, `UT.LOOKUP`) takes.
pub(crate) fn lookup_mode(request: &wire::ReadRequest) -> Result<(), Status> {
    match wire::ReadMode::try_from(request.mode) {
        Ok(wire::ReadMode::Lookup | wire::ReadMode::Unspecified) => Ok(()),
        Ok(wire::ReadMode::Stream | wire::ReadMode::Snapshot | wire::ReadMode::Fresh) | Err(_) => {
            Err(bad(
                "mode",
                "Lookup serves READ_MODE_LOOKUP only (or leave mode unset); use Read for the \
                 other modes",
            ))
        }
    }
}

pub(crate) async fn metered_lookup(
    reader: &Reader,
    table: unitable_core::naming::TableName,
    request: wire::ReadRequest,
) -> Result<wire::ReadResponse, Status> {
    let started = Instant::now();
    let label = table.to_string();
    let (response, rows) = super::lookup::lookup(reader, table, request).await?;
    let meter = ReadMeter::opened("LOOKUP", label, started);
    if let Some(wire::read_response::Body::Lookup(result)) = &response.body {
        meter.sent(rows, result.arrow_ipc.len() + result.json_rows.len());
    }
    Ok(response)
}
