//! `Read` in LOOKUP mode: wire request -> the reader's lookup -> one `LookupResult` message.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use tonic::Status;
use unitable_core::naming::TableName;
use unitable_proto::v1 as wire;
use unitable_reader::{LookupKeys, LookupRequest, Reader, SnapshotSelector};

use super::read::ipc_bytes;
use super::write::as_of_to_wire;
use crate::status::ApiError;

fn bad(field: &'static str, reason: impl Into<String>) -> Status {
    ApiError::BadRequest {
        field,
        reason: reason.into(),
    }
    .into()
}

/// Answers a LOOKUP read with one response message.
pub(crate) async fn lookup(
    reader: &Reader,
    table: TableName,
    request: wire::ReadRequest,
) -> Result<wire::ReadResponse, Status> {
    if !request.filter.trim().is_empty() {
        return Err(bad("filter", "LOOKUP takes keys, not a filter"));
    }
    if request.limit > 0 {
        return Err(bad(
            "limit",
            "LOOKUP returns one row per key; leave limit at 0",
        ));
    }
    let keys = match wire::RowFormat::try_from(request.keys_format) {
        Ok(wire::RowFormat::JsonLines) => LookupKeys::JsonLines(request.keys),
        Ok(wire::RowFormat::ArrowIpc) => {
            let reader = StreamReader::try_new(Cursor::new(request.keys), None)
                .map_err(|e| bad("keys", format!("not an Arrow IPC stream: {e}")))?;
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("keys", format!("not an Arrow IPC stream: {e}")))?;
            LookupKeys::Arrow(batches)
        }
        Ok(wire::RowFormat::Unspecified) | Err(_) => {
            return Err(bad(
                "keys_format",
                "must be ROW_FORMAT_ARROW_IPC or ROW_FORMAT_JSON_LINES",
            ));
        }
    };
    let snapshot = match (request.snapshot_id, request.as_of_timestamp_ms) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "snapshot_id",
                "give snapshot_id or as_of_timestamp_ms, not both",
            ));
        }
        (Some(id), None) => Some(SnapshotSelector::Id(id)),
        (None, Some(ms)) => Some(SnapshotSelector::AsOf(ms)),
        (None, None) => None,
    };
    let answer = reader
        .lookup(&LookupRequest {
            table,
            keys,
            columns: request.columns,
            snapshot,
        })
        .await
        .map_err(ApiError::from)?;
    let arrow_ipc = ipc_bytes(answer.rows.schema_ref(), Some(&answer.rows))?;
    Ok(wire::ReadResponse {
        body: Some(wire::read_response::Body::Lookup(wire::LookupResult {
            arrow_ipc,
            missing: answer.missing,
        })),
        as_of: Some(as_of_to_wire(&answer.as_of)),
    })
}
