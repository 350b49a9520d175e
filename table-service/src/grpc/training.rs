//! `TrainingSet`: wire request -> the reader's point-in-time join -> Arrow IPC messages.

use std::io::Cursor;
use std::time::Duration;

use arrow::ipc::reader::StreamReader;
use tonic::Status;
use unitable_core::naming::TableName;
use unitable_proto::v1 as wire;
use unitable_reader::{Reader, TrainingSetRequest};

use super::read::ipc_bytes;
use crate::status::ApiError;

/// Rows per response message.
const ROWS_PER_MESSAGE: usize = 8192;

fn bad(field: &'static str, reason: impl Into<String>) -> Status {
    ApiError::BadRequest {
        field,
        reason: reason.into(),
    }
    .into()
}

/// The feature tables a request names (each needs `read`).
pub(crate) fn tables(request: &wire::TrainingSetRequest) -> Result<Vec<TableName>, Status> {
    let mut out: Vec<TableName> = Vec::new();
    for feature in &request.features {
        let table = feature
            .rsplit_once('.')
            .and_then(|(t, _)| t.parse::<TableName>().ok())
            .ok_or_else(|| {
                bad(
                    "features",
                    format!("`{feature}` is not `namespace.table.column`"),
                )
            })?;
        if !out.contains(&table) {
            out.push(table);
        }
    }
    if out.is_empty() {
        return Err(bad(
            "features",
            "name at least one `namespace.table.column`",
        ));
    }
    Ok(out)
}

/// Answers a training-set request with its rows in messages of [`ROWS_PER_MESSAGE`].
pub(crate) async fn training_set(
    reader: &Reader,
    request: wire::TrainingSetRequest,
) -> Result<Vec<wire::TrainingSetResponse>, Status> {
    if request.timestamp_column.trim().is_empty() {
        return Err(bad("timestamp_column", "name the entity rows' time column"));
    }
    let entities = StreamReader::try_new(Cursor::new(request.entities), None)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("entities", format!("not an Arrow IPC stream: {e}")))?;
    let answer = reader
        .training_set(&TrainingSetRequest {
            entities,
            timestamp_column: request.timestamp_column,
            features: request.features,
            ttl: request.ttl_ms.map(Duration::from_millis),
        })
        .await
        .map_err(ApiError::from)?;
    let rows = answer.rows;
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let len = ROWS_PER_MESSAGE.min(rows.num_rows() - at);
        let batch = rows.slice(at, len);
        out.push(wire::TrainingSetResponse {
            arrow_ipc: ipc_bytes(rows.schema_ref(), Some(&batch))?,
        });
        at += len;
        if at >= rows.num_rows() {
            return Ok(out);
        }
    }
}
