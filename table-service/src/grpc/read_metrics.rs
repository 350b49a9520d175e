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

impl Drop for ReadMeter {
    fn drop(&mut self) {
        self.active.decrement(1.0);
        if self.bounded {
            metrics::histogram!("unitable_read_seconds", &self.labels)
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}
