//! Metrics of the read API, by read mode (`STREAM`, `SNAPSHOT`, `FRESH`, `LOOKUP`, `SQL`) and
//! table (for SQL: the tables the statement names, comma-separated, sorted):
//!
//! - `unitable_read_open_seconds` (histogram): request to the first message ready (the read
//!   planned and positioned: schema and `as_of` known).
//! - `unitable_read_seconds` (histogram): request to the last message sent, for the reads that
//!   end by themselves (every mode but STREAM); a client that leaves early ends it too.
//! - `unitable_read_rows_total`, `unitable_read_bytes_total`: rows and Arrow IPC bytes sent
//!   (the first message's schema included).
//! - `unitable_read_active` (gauge): reads whose results are being sent (open STREAMs
//!   included).
//!
//! A read that fails before it opens (a missing table, a bad request) is not metered here:
//! `unitable_grpc_errors_total` counts it, and bad requests add no series.

use std::time::Instant;

use metrics::{Counter, Gauge};

/// One read's meter; ends the read's share of the gauge and records its duration when dropped.
#[derive(Debug)]
pub(crate) struct ReadMeter {
    labels: [(&'static str, String); 2],
    started: Instant,
    bounded: bool,
    rows: Counter,
    bytes: Counter,
    active: Gauge,
}

impl ReadMeter {
    /// Meters a read of `mode` on `table` that was asked for at `started` and is now open
    /// (its first message ready): records the open latency and counts it as active. Reads
    /// that fail before they open are not metered here (`unitable_grpc_errors_total` counts
    /// them), so bad requests add no series.
    pub(crate) fn opened(mode: &'static str, table: String, started: Instant) -> Self {
        let labels = [("mode", mode.to_string()), ("table", table)];
        metrics::histogram!("unitable_read_open_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        let active = metrics::gauge!("unitable_read_active", &labels);
        active.increment(1.0);
        Self {
            rows: metrics::counter!("unitable_read_rows_total", &labels),
            bytes: metrics::counter!("unitable_read_bytes_total", &labels),
            active,
            started,
            bounded: mode != "STREAM",
            labels,
        }
    }

    /// A message with `rows` rows in `bytes` bytes of Arrow IPC is sent.
    pub(crate) fn sent(&self, rows: usize, bytes: usize) {
        self.rows.increment(rows as u64);
        self.bytes.increment(bytes as u64);
    }
}

/// The rows of the record batches in an Arrow IPC stream, read from the messages' headers
/// (nothing is decoded); 0 for bytes that are not an IPC stream.
pub(crate) fn ipc_rows(bytes: &[u8]) -> usize {
    let mut rows = 0usize;
    let mut at = 0usize;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    while let Some(mut len) = word(at) {
        at += 4;
        if len == 0xFFFF_FFFF {
            // The continuation marker, then the metadata length.
            let Some(l) = word(at) else { break };
            len = l;
            at += 4;
        }
        if len == 0 {
            break; // end of stream
        }
        let Some(meta) = bytes.get(at..at + len as usize) else {
            break;
        };
        let Ok(message) = arrow::ipc::root_as_message(meta) else {
            break;
        };
        if let Some(batch) = message.header_as_record_batch() {
            rows += usize::try_from(batch.length()).unwrap_or(0);
        }
        at += len as usize + usize::try_from(message.bodyLength()).unwrap_or(0);
    }
    rows
}

impl Drop for ReadMeter {
    fn drop(&mut self) {
        self.active.decrement(1.0);
        if self.bounded {
            metrics::histogram!("unitable_read_seconds", &self.labels)
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::ipc_rows;
    use crate::grpc::read::ipc_bytes;

    #[test]
    fn rows_are_counted_from_the_ipc_headers() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..37))],
        )
        .unwrap();
        assert_eq!(ipc_rows(&ipc_bytes(&schema, Some(&batch)).unwrap()), 37);
        assert_eq!(ipc_rows(&ipc_bytes(&schema, None).unwrap()), 0);
        let empty = batch.slice(0, 0);
        assert_eq!(ipc_rows(&ipc_bytes(&schema, Some(&empty)).unwrap()), 0);
        assert_eq!(ipc_rows(b"not arrow"), 0);
        assert_eq!(ipc_rows(&[]), 0);
    }
}
