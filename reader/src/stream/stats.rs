//! What one STREAM read costs: changelog records and bytes read, rows decoded, rows delivered,
//! partitions read and pruned. Kept per stream (for the caller and tests) and added to the
//! Prometheus counters labelled by table and subscriber.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use metrics::{Counter, Gauge};

/// Counters of one stream, updated as it runs.
#[derive(Debug)]
pub struct StreamStats {
    partitions: Vec<u32>,
    pruned: Vec<u32>,
    records_read: AtomicU64,
    bytes_read: AtomicU64,
    rows_decoded: AtomicU64,
    rows_delivered: AtomicU64,
    /// Records behind the head, per entry of `partitions` (as last measured).
    lag: Vec<AtomicI64>,
    meters: Meters,
}

/// The Prometheus side of the counters.
#[derive(Debug)]
struct Meters {
    records_read: Counter,
    bytes_read: Counter,
    rows_decoded: Counter,
    rows_delivered: Counter,
    /// `unitable_stream_lag_records`: the sum over the subscriber's open streams, each adding
    /// its own partitions' lag and taking it back when it ends.
    lag: Gauge,
}

impl StreamStats {
    /// Stats for a stream of `table` by `subscriber` reading `partitions` and skipping
    /// `pruned` (partitions the filter rules out); counts the partitions in the metrics.
    pub(crate) fn new(
        table: &str,
        subscriber: &str,
        partitions: Vec<u32>,
        pruned: Vec<u32>,
    ) -> Self {
        let labels = [
            ("table", table.to_string()),
            ("subscriber", subscriber.to_string()),
        ];
        metrics::counter!("unitable_stream_partitions_read_total", &labels)
            .increment(partitions.len() as u64);
        metrics::counter!("unitable_stream_partitions_pruned_total", &labels)
            .increment(pruned.len() as u64);
        Self {
            lag: partitions.iter().map(|_| AtomicI64::new(0)).collect(),
            partitions,
            pruned,
            records_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            rows_decoded: AtomicU64::new(0),
            rows_delivered: AtomicU64::new(0),
            meters: Meters {
                records_read: metrics::counter!("unitable_stream_records_read_total", &labels),
                bytes_read: metrics::counter!("unitable_stream_bytes_read_total", &labels),
                rows_decoded: metrics::counter!("unitable_stream_rows_decoded_total", &labels),
                rows_delivered: metrics::counter!("unitable_stream_rows_delivered_total", &labels),
                lag: metrics::gauge!("unitable_stream_lag_records", &labels),
            },
        }
    }

    /// The changelog partitions the stream reads, ascending.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// The partitions the stream would have read but its filter ruled out, ascending.
    pub fn pruned(&self) -> &[u32] {
        &self.pruned
    }

    /// Changelog records read so far.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    /// Bytes of changelog records (key, value and headers) read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Changelog records decoded into rows so far (snapshot rows are not decoded).
    pub fn rows_decoded(&self) -> u64 {
        self.rows_decoded.load(Ordering::Relaxed)
    }

    /// Rows handed to the client so far, snapshot rows included.
    pub fn rows_delivered(&self) -> u64 {
        self.rows_delivered.load(Ordering::Relaxed)
    }

    pub(super) fn read(&self, records: u64, bytes: u64) {
        self.records_read.fetch_add(records, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.meters.records_read.increment(records);
        self.meters.bytes_read.increment(bytes);
    }

    pub(super) fn decoded(&self, rows: u64) {
        self.rows_decoded.fetch_add(rows, Ordering::Relaxed);
        self.meters.rows_decoded.increment(rows);
    }

    /// Records the stream's partitions are behind their heads, as last measured.
    pub fn lag_records(&self) -> i64 {
        self.lag.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }

    /// Sets how many records `partition` is behind its head.
    pub(super) fn set_lag(&self, partition: u32, records: i64) {
        let Some(i) = self.partitions.iter().position(|p| *p == partition) else {
            return;
        };
        let old = self.lag[i].swap(records, Ordering::Relaxed);
        self.meters.lag.increment((records - old) as f64);
    }

    pub(super) fn delivered(&self, rows: u64) {
        self.rows_delivered.fetch_add(rows, Ordering::Relaxed);
        self.meters.rows_delivered.increment(rows);
    }
}

impl Drop for StreamStats {
    /// A stream that ends takes its lag out of the subscriber's gauge.
    fn drop(&mut self) {
        self.meters.lag.decrement(self.lag_records() as f64);
    }
}
