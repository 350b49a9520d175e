//! `Read` in LOOKUP mode: wire request -> the reader's lookup -> one `LookupResult` message.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use tonic::Status;
use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1 as wire;
use unitable_reader::{LookupAsOf, LookupKeys, LookupRequest, Reader, SnapshotSelector};

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

/// Answers a LOOKUP read with one response message; also gives how many rows it carries.
pub(crate) async fn lookup(
    reader: &Reader,
    table: TableName,
    request: wire::ReadRequest,
) -> Result<(wire::ReadResponse, usize), Status> {
    if !request.filter.trim().is_empty() {
        return Err(bad("filter", "LOOKUP takes keys, not a filter"));
    }
    if request.limit > 0 {
        return Err(bad(
            "limit",
            "LOOKUP returns one row per key; leave limit at 0",
        ));
    }
    let as_of = as_of_of(&request)?;
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
    let answer = reader
        .lookup(&LookupRequest {
            table,
            keys,
            columns: request.columns,
            as_of,
            max_staleness: request
                .max_staleness_ms
                .map(std::time::Duration::from_millis),
        })
        .await
        .map_err(ApiError::from)?;
    // As JSON arrays when asked and every value has an exact JSON form; the schema then goes
    // alone as Arrow IPC (it names the columns and their types).
    let json_rows = if request.json_rows {
        super::json_rows::encode(&answer.rows)
    } else {
        None
    };
    let rows = answer.rows.num_rows();
    let (arrow_ipc, json_rows) = match json_rows {
        Some(json) => (ipc_bytes(answer.rows.schema_ref(), None)?, json),
        None => (
            ipc_bytes(answer.rows.schema_ref(), Some(&answer.rows))?,
            Vec::new(),
        ),
    };
    Ok((
        wire::ReadResponse {
            body: Some(wire::read_response::Body::Lookup(wire::LookupResult {
                arrow_ipc,
                missing: answer.missing,
                json_rows,
            })),
            as_of: Some(as_of_to_wire(&answer.as_of)),
            group: None,
        },
        rows,
    ))
}

/// The instant a LOOKUP request asks for: `snapshot_id` (that snapshot alone),
/// `as_of_timestamp_ms` or `as_of_offsets` (exact to the record), at most one; none = fresh.
fn as_of_of(request: &wire::ReadRequest) -> Result<Option<LookupAsOf>, Status> {
    let given = usize::from(request.snapshot_id.is_some())
        + usize::from(request.as_of_timestamp_ms.is_some())
        + usize::from(!request.as_of_offsets.is_empty());
    if given > 1 {
        return Err(bad(
            "snapshot_id",
            "give at most one of snapshot_id, as_of_timestamp_ms and as_of_offsets",
        ));
    }
    if let Some(id) = request.snapshot_id {
        return Ok(Some(LookupAsOf::Snapshot(SnapshotSelector::Id(id))));
    }
    if let Some(ms) = request.as_of_timestamp_ms {
        return Ok(Some(LookupAsOf::Timestamp(ms)));
    }
    if request.as_of_offsets.is_empty() {
        return Ok(None);
    }
    let mut offsets = PartitionOffsets::default();
    for o in &request.as_of_offsets {
        if o.offset < 0 {
            return Err(bad(
                "as_of_offsets",
                format!(
                    "offset {} of partition {} is negative",
                    o.offset, o.partition
                ),
            ));
        }
        if offsets.0.contains_key(&PartitionId(o.partition)) {
            return Err(bad(
                "as_of_offsets",
                format!("partition {} is listed twice", o.partition),
            ));
        }
        offsets.set(PartitionId(o.partition), Offset(o.offset));
    }
    Ok(Some(LookupAsOf::Offsets(offsets)))
}
