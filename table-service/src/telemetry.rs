//! The process's telemetry: the Prometheus recorder (with the histogram buckets every
//! latency and size histogram shares) and, in [`log_level`], the log filter that an admin can
//! change at run time.

pub(crate) mod log_level;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `*_seconds` histogram: 0.5 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of the count histograms (keys per LOOKUP request).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// Installs the Prometheus recorder. Histograms are exported as Prometheus histograms
/// (`_bucket`, `_sum`, `_count`), so dashboards can aggregate them across nodes with
/// `histogram_quantile`.
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(Matcher::Full("unitable_lookup_keys".into()), COUNT_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}
