//! `TrainingSet`: a stream of entity messages -> the reader's point-in-time join -> Arrow IPC
//! messages in request order.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use futures::StreamExt;
use tonic::{Status, Streaming};
use unitable_core::naming::TableName;
use unitable_proto::v1 as wire;
use unitable_reader::{ReadError, Reader, TrainingSetSpec};

use super::read::{BoxStream, bad, ipc_bytes};
use crate::status::ApiError;

/// Rows per response message.
const ROWS_PER_MESSAGE: usize = 8192;

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

/// The entity rows of request message `index` (a schema with no rows gives one empty batch,
/// so the first message alone fixes the schema; a message without entity bytes gives none).
fn entity_batches(index: usize, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, ReadError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let unreadable = |e: arrow::error::ArrowError| ReadError::BadRequest {
        reason: format!(
            "field `entities` of request message {index}: not an Arrow IPC stream: {e}"
        ),
    };
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(unreadable)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(unreadable)?;
    if batches.is_empty() {
        return Ok(vec![RecordBatch::new_empty(schema)]);
    }
    Ok(batches)
}

/// Checks that a later message repeats the first one's settings or leaves them unset.
fn same_settings(
    index: usize,
    first: &wire::TrainingSetRequest,
    later: &wire::TrainingSetRequest,
) -> Result<(), ReadError> {
    let differs = |field: &str| ReadError::BadRequest {
        reason: format!(
            "field `{field}` of request message {index} differs from the first message's: set it \
             in the first message only"
        ),
    };
    if !later.timestamp_column.is_empty() && later.timestamp_column != first.timestamp_column {
        return Err(differs("timestamp_column"));
    }
    if !later.features.is_empty() && later.features != first.features {
        return Err(differs("features"));
    }
    if later.ttl_ms.is_some() && later.ttl_ms != first.ttl_ms {
        return Err(differs("ttl_ms"));
    }
    Ok(())
}

/// Answers a training-set call whose first message is `first` and whose later messages come
/// from `rest`: the joined rows in messages of [`ROWS_PER_MESSAGE`] (at least one, which
/// carries the schema when no row comes).
pub(crate) async fn training_set(
    reader: &Reader,
    mut first: wire::TrainingSetRequest,
    rest: Streaming<wire::TrainingSetRequest>,
) -> Result<BoxStream<wire::TrainingSetResponse>, Status> {
    if first.timestamp_column.trim().is_empty() {
        return Err(bad("timestamp_column", "name the entity rows' time column"));
    }
    let spec = TrainingSetSpec {
        timestamp_column: first.timestamp_column.clone(),
        features: first.features.clone(),
        ttl: first.ttl_ms.map(Duration::from_millis),
    };
    let first_rows = entity_batches(0, std::mem::take(&mut first.entities));
    let header = Arc::new(first);
    let later = rest.enumerate().map(move |(i, message)| {
        let index = i + 1;
        let message = message.map_err(|s| ReadError::BadRequest {
            reason: format!("request message {index} did not arrive: {}", s.message()),
        })?;
        same_settings(index, &header, &message)?;
        entity_batches(index, message.entities)
    });
    let entities = futures::stream::once(async move { first_rows })
        .chain(later)
        .flat_map(|batches| match batches {
            Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .boxed();
    let answer = reader
        .training_set(spec, entities)
        .await
        .map_err(ApiError::from)?;
    let schema = answer.schema;
    let sent = Arc::new(AtomicBool::new(false));
    let (any, empty_schema) = (sent.clone(), schema.clone());
    let messages = answer
        .rows
        .flat_map(move |batch| {
            let messages: Vec<Result<wire::TrainingSetResponse, Status>> = match batch {
                Ok(batch) => (0..batch.num_rows())
                    .step_by(ROWS_PER_MESSAGE)
                    .map(|at| {
                        let len = ROWS_PER_MESSAGE.min(batch.num_rows() - at);
                        sent.store(true, Ordering::Relaxed);
                        Ok(wire::TrainingSetResponse {
                            arrow_ipc: ipc_bytes(&schema, Some(&batch.slice(at, len)))?,
                        })
                    })
                    .collect(),
                Err(e) => vec![Err(ApiError::from(e).into())],
            };
            futures::stream::iter(messages)
        })
        .chain(
            futures::stream::once(async move {
                (!any.load(Ordering::Relaxed)).then(|| {
                    Ok(wire::TrainingSetResponse {
                        arrow_ipc: ipc_bytes(&empty_schema, None)?,
                    })
                })
            })
            .filter_map(|m| async move { m }),
        );
    Ok(Box::pin(messages))
}
