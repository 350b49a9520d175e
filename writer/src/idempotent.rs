//! Idempotent writes: a write with a client request id is done at most once per table, on any
//! node and across restarts, through the request log in the catalog database
//! ([`unitable_core::requests`]).
//!
//! The first attempt claims the id, records the offsets its partitions had, appends records
//! that carry the id in a header, and records the outcome; a retry of a finished request gets
//! that outcome back. An attempt that failed in the middle (a partition's append failed or
//! timed out, the process died) leaves the claim pending; the next retry takes it over, reads
//! each partition from the recorded offsets to find how many of the request's records landed
//! (a prefix: appends to one partition keep their order), and appends only the rest.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use unitable_core::changelog::{ChangeRecord, Changelog};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{REQUEST_ID_HEADER, RowError};
use unitable_core::requests::MAX_REQUEST_ID_LEN;

use crate::error::{WriteError, WriteResult};
use crate::writer::WriteOutcome;

/// How long a pending claim of a live node is waited for before a retry takes it over (an
/// append gives up long before: Kafka's delivery timeout is 30 s by default).
pub(crate) const IN_FLIGHT: Duration = Duration::from_secs(120);

/// Checks a client request id.
pub(crate) fn validate(id: &str) -> WriteResult<()> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN || id.chars().any(char::is_control) {
        return Err(WriteError::InvalidRequestId {
            request_id: id.chars().take(80).collect(),
            reason: format!(
                "a request id is 1 to {MAX_REQUEST_ID_LEN} bytes without control characters"
            ),
        });
    }
    Ok(())
}

/// Tags every record with the request id.
pub(crate) fn tag(records: &mut [ChangeRecord], id: &str) {
    let value = Bytes::copy_from_slice(id.as_bytes());
    for r in records {
        r.headers
            .push((REQUEST_ID_HEADER.to_string(), value.clone()));
    }
}

/// How many records carrying `id` partition `partition` holds from `from` on, and the offset
/// of the last of them.
pub(crate) async fn landed(
    log: &dyn Changelog,
    topic: &TopicName,
    partition: PartitionId,
    from: Offset,
    id: &str,
) -> WriteResult<(usize, Option<Offset>)> {
    let mut next = from.max(log.watermarks(topic, partition).await?.low);
    let mut count = 0;
    let mut last = None;
    loop {
        let batch = log
            .read(topic, partition, next, 10_000, Duration::ZERO)
            .await?;
        let Some(tail) = batch.last() else {
            return Ok((count, last));
        };
        next = tail.offset.next();
        for stored in &batch {
            let tagged = stored
                .record
                .headers
                .iter()
                .any(|(k, v)| k == REQUEST_ID_HEADER && v.as_ref() == id.as_bytes());
            if tagged {
                count += 1;
                last = Some(stored.offset);
            }
        }
    }
}

/// The outcome as the request log keeps it.
pub(crate) fn encode_outcome(outcome: &WriteOutcome) -> String {
    let errors: Vec<Value> = outcome
        .errors
        .iter()
        .map(|e| json!([e.row, e.field, e.reason]))
        .collect();
    json!({
        "rows_written": outcome.rows_written,
        "rows_rejected": outcome.rows_rejected,
        "last_offsets": outcome.last_offsets.to_string(),
        "errors": errors,
    })
    .to_string()
}

/// The outcome recorded by [`encode_outcome`].
pub(crate) fn decode_outcome(text: &str) -> WriteResult<WriteOutcome> {
    let bad = |why: &str| WriteError::Internal {
        reason: format!("the request log holds an unreadable outcome ({why}): {text}"),
    };
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let offsets = v["last_offsets"]
        .as_str()
        .ok_or_else(|| bad("last_offsets"))?;
    let last_offsets: PartitionOffsets = if offsets.is_empty() {
        PartitionOffsets::default()
    } else {
        offsets.parse().map_err(|_| bad("last_offsets"))?
    };
    let mut errors = Vec::new();
    for e in v["errors"].as_array().ok_or_else(|| bad("errors"))? {
        errors.push(RowError {
            row: e[0].as_u64().ok_or_else(|| bad("row"))? as usize,
            field: e[1].as_str().map(str::to_string),
            reason: e[2].as_str().ok_or_else(|| bad("reason"))?.to_string(),
        });
    }
    Ok(WriteOutcome {
        rows_written: v["rows_written"]
            .as_u64()
            .ok_or_else(|| bad("rows_written"))?,
        rows_rejected: v["rows_rejected"]
            .as_u64()
            .ok_or_else(|| bad("rows_rejected"))?,
        errors,
        last_offsets,
        ..WriteOutcome::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_log() {
        let mut outcome = WriteOutcome {
            rows_written: 7,
            rows_rejected: 2,
            errors: vec![
                RowError {
                    row: 3,
                    field: Some("n".into()),
                    reason: "not a number: \"x\"".into(),
                },
                RowError {
                    row: 5,
                    field: None,
                    reason: "not JSON".into(),
                },
            ],
            ..WriteOutcome::default()
        };
        outcome.last_offsets.set(PartitionId(0), Offset(4));
        outcome.last_offsets.set(PartitionId(2), Offset(9));
        let back = decode_outcome(&encode_outcome(&outcome)).unwrap();
        assert_eq!(back.rows_written, 7);
        assert_eq!(back.rows_rejected, 2);
        assert_eq!(back.errors, outcome.errors);
        assert_eq!(back.last_offsets, outcome.last_offsets);
        let empty = decode_outcome(&encode_outcome(&WriteOutcome::default())).unwrap();
        assert_eq!(empty.last_offsets, PartitionOffsets::default());
        assert!(validate("").is_err());
        assert!(validate(&"x".repeat(256)).is_err());
        assert!(validate("batch-1\n").is_err());
        assert!(validate("0190d7a4-5c3e-7b21-9a4f-3c2d1e0f9a8b:7").is_ok());
    }
}
