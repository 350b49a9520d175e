//! `WriteService`: unary and client-streaming writes through the writer role.

use bytes::Bytes;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, PartitionOffsets};
use unitable_core::record::ChangeOp;
use unitable_proto::v1 as wire;
use unitable_proto::v1::write_service_server::WriteService;
use unitable_writer::{Rows, WriteOutcome, WriteRequest, Writer};

use super::table_name;
use crate::access::{Access, Principal, Privilege};
use crate::status::ApiError;

/// Writes through the writer role.
#[derive(Debug, Clone)]
pub(crate) struct WriteApi {
    writer: Writer,
    access: Access,
}

impl WriteApi {
    pub(crate) fn new(writer: Writer, access: Access) -> Self {
        Self { writer, access }
    }
}

/// The request fields every message of a write shares.
struct Target {
    table: TableName,
    op: ChangeOp,
    wait: bool,
}

fn target(request: &wire::WriteRequest) -> Result<Target, ApiError> {
    let table = table_name(&request.table)?;
    let op = match wire::WriteOp::try_from(request.op) {
        Ok(wire::WriteOp::Insert) => ChangeOp::Insert,
        Ok(wire::WriteOp::Upsert) => ChangeOp::Upsert,
        Ok(wire::WriteOp::Delete) => ChangeOp::Delete,
        Ok(wire::WriteOp::Unspecified) | Err(_) => {
            return Err(ApiError::BadRequest {
                field: "op",
                reason: "must be WRITE_OP_INSERT, WRITE_OP_UPSERT or WRITE_OP_DELETE".into(),
            });
        }
    };
    let wait = matches!(
        wire::WaitFor::try_from(request.wait_for),
        Ok(wire::WaitFor::Snapshot)
    );
    Ok(Target { table, op, wait })
}

fn rows(request: &wire::WriteRequest, rows: Bytes) -> Result<Rows, ApiError> {
    match wire::RowFormat::try_from(request.format) {
        Ok(wire::RowFormat::ArrowIpc) => Ok(Rows::ArrowIpc(rows)),
        Ok(wire::RowFormat::JsonLines) => Ok(Rows::JsonLines(rows)),
        Ok(wire::RowFormat::Unspecified) | Err(_) => Err(ApiError::BadRequest {
            field: "format",
            reason: "must be ROW_FORMAT_ARROW_IPC or ROW_FORMAT_JSON_LINES".into(),
        }),
    }
}

pub(crate) fn offsets_to_wire(offsets: &PartitionOffsets) -> Vec<wire::PartitionOffset> {
    offsets
        .0
        .iter()
        .map(|(p, o)| wire::PartitionOffset {
            partition: p.0,
            offset: o.0,
        })
        .collect()
}

pub(crate) fn as_of_to_wire(as_of: &AsOf) -> wire::AsOf {
    wire::AsOf {
        snapshot_id: as_of.snapshot_id,
        offsets: offsets_to_wire(&as_of.offsets),
        commit_time_ms: as_of.commit_time_ms,
        lag_records: as_of.lag_records,
        lag_ms: as_of.lag_ms,
    }
}

fn response(outcome: WriteOutcome) -> wire::WriteResponse {
    wire::WriteResponse {
        rows_written: outcome.rows_written,
        rows_rejected: outcome.rows_rejected,
        errors: outcome
            .errors
            .into_iter()
            .map(|e| wire::RowError {
                row_index: e.row as u64,
                field: e.field.unwrap_or_default(),
                reason: e.reason,
            })
            .collect(),
        last_offsets: offsets_to_wire(&outcome.last_offsets),
        as_of: Some(as_of_to_wire(&outcome.as_of)),
    }
}

fn count(method: &'static str) {
    metrics::counter!("unitable_grpc_requests_total", "method" => method).increment(1);
}

#[tonic::async_trait]
impl WriteService for WriteApi {
    async fn write(
        &self,
        request: Request<wire::WriteRequest>,
    ) -> Result<Response<wire::WriteResponse>, Status> {
        count("Write");
        let who = Principal::of(&request)?;
        let mut request = request.into_inner();
        let t = target(&request)?;
        self.access
            .check(&who, Privilege::Write, &t.table, "Write")?;
        let body = Bytes::from(std::mem::take(&mut request.rows));
        let rows = rows(&request, body)?;
        let table = t.table.to_string();
        let outcome = self
            .writer
            .write(WriteRequest {
                table: t.table,
                op: t.op,
                rows,
                first_row: 0,
                wait_for_snapshot: t.wait,
                request_id: request_id(&request.request_id),
            })
            .await;
        audit_write(&self.access, &who, "Write", &table, &outcome);
        Ok(Response::new(response(outcome.map_err(ApiError::from)?)))
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<wire::WriteRequest>>,
    ) -> Result<Response<wire::WriteResponse>, Status> {
        count("WriteStream");
        let who = Principal::of(&request)?;
        let mut stream = request.into_inner();
        let result = self.write_all(&who, &mut stream).await;
        if let Some(table) = &result.1 {
            audit_write(&self.access, &who, "WriteStream", table, &result.0);
        }
        Ok(Response::new(response(result.0?)))
    }
}

/// Audits a write that ran: rows written and rejected, or the error.
fn audit_write<E: std::fmt::Display>(
    access: &Access,
    who: &Principal,
    action: &str,
    table: &str,
    outcome: &Result<WriteOutcome, E>,
) {
    use crate::access::audit::Outcome;
    match outcome {
        Ok(o) => access.audit().record(
            who.name(),
            action,
            Some(table),
            Outcome::Ok,
            Some(&format!(
                "{} rows written, {} rejected",
                o.rows_written, o.rows_rejected
            )),
        ),
        Err(e) => access.audit().record(
            who.name(),
            action,
            Some(table),
            Outcome::Failed,
            Some(&e.to_string()),
        ),
    }
}

impl WriteApi {
    /// Runs a write stream. Returns the outcome and, once the first message named an
    /// authorized table, that table (for the audit line).
    async fn write_all(
        &self,
        who: &Principal,
        stream: &mut Streaming<wire::WriteRequest>,
    ) -> (Result<WriteOutcome, Status>, Option<String>) {
        let mut table = None;
        let outcome = self.write_stream_inner(who, stream, &mut table).await;
        (outcome, table)
    }

    async fn write_stream_inner(
        &self,
        who: &Principal,
        stream: &mut Streaming<wire::WriteRequest>,
        audited: &mut Option<String>,
    ) -> Result<WriteOutcome, Status> {
        let mut total = WriteOutcome::default();
        let mut first: Option<(Target, wire::WriteRequest)> = None;
        let mut next_row = 0usize;
        while let Some(message) = stream.next().await {
            let mut message = message?;
            let body = std::mem::take(&mut message.rows);
            // Each message is its own request (never the first message's id).
            let message_id = request_id(&message.request_id);
            let shape = match &first {
                None => {
                    let t = target(&message)?;
                    self.access
                        .check(who, Privilege::Write, &t.table, "WriteStream")?;
                    *audited = Some(t.table.to_string());
                    first = Some((t, message.clone()));
                    message
                }
                Some((t, m0)) => {
                    // A long stream stops at the first message after its grant or token is
                    // revoked; the rows of earlier messages are in the changelog already.
                    if let Err(e) = self.access.recheck(
                        who,
                        Privilege::Write,
                        std::slice::from_ref(&t.table),
                        "WriteStream",
                    ) {
                        let status = Status::from(e);
                        return Err(Status::new(
                            status.code(),
                            format!(
                                "{}; the {} rows of this stream's earlier messages were written \
                                 and are durable, later ones were not",
                                status.message(),
                                total.rows_written
                            ),
                        ));
                    }
                    // Later messages may repeat the table and op, never change them.
                    if (!message.table.is_empty() && message.table != m0.table)
                        || (message.op != 0 && message.op != m0.op)
                    {
                        return Err(ApiError::BadRequest {
                            field: "table",
                            reason: "a write stream writes one table with one op; start another \
                                     stream for another"
                                .into(),
                        }
                        .into());
                    }
                    wire::WriteRequest {
                        format: if message.format != 0 {
                            message.format
                        } else {
                            m0.format
                        },
                        ..m0.clone()
                    }
                }
            };
            let Some((t, _)) = &first else {
                continue;
            };
            let rows = rows(&shape, Bytes::from(body))?;
            let outcome = self
                .writer
                .write(WriteRequest {
                    table: t.table.clone(),
                    op: t.op,
                    rows,
                    first_row: next_row,
                    wait_for_snapshot: false,
                    request_id: message_id,
                })
                .await
                .map_err(ApiError::from)?;
            next_row += outcome.rows_written as usize + outcome.rows_rejected as usize;
            total.merge(outcome);
        }
        let Some((t, _)) = first else {
            return Err(ApiError::BadRequest {
                field: "rows",
                reason: "the write stream carried no message".into(),
            }
            .into());
        };
        if t.wait && total.rows_written > 0 {
            // One wait for the whole stream: its last offsets cover every message.
            total.as_of = self
                .writer
                .wait_for_snapshot_covering(&t.table, &total.last_offsets)
                .await
                .map_err(ApiError::from)?;
        }
        Ok(total)
    }
}

/// The request id of a wire request (empty: none).
fn request_id(wire: &str) -> Option<String> {
    (!wire.is_empty()).then(|| wire.to_string())
}
