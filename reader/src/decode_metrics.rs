//! Metrics of decoding changelog records into rows, shared by the read paths that decode:
//! STREAM (`path="stream"`) and the changelog tail of FRESH reads (`path="fresh"`).
//!
//! - `unitable_changelog_decode_seconds{table,path}` (histogram): time to decode one chunk of
//!   records (up to a few thousand) into an Arrow batch.
//! - `unitable_changelog_decoded_records_total{table,path}`: records decoded into rows.
//! - `unitable_changelog_decode_errors_total{table,path}`: records skipped because they are
//!   not rows of the table (another table's uuid, a schema the table never had, bad JSON).

use std::time::Instant;

/// Records one decode that started at `started`: `decoded` records became rows, `skipped`
/// did not decode.
pub(crate) fn observe(
    table: &str,
    path: &'static str,
    started: Instant,
    decoded: usize,
    skipped: usize,
) {
    let labels = [("table", table.to_string()), ("path", path.to_string())];
    metrics::histogram!("unitable_changelog_decode_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("unitable_changelog_decoded_records_total", &labels)
        .increment(decoded as u64);
    // Incremented by 0 too: the series exists from the first decode on.
    metrics::counter!("unitable_changelog_decode_errors_total", &labels).increment(skipped as u64);
}
