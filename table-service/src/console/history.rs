//! The freshness history the console charts: every table's freshness sampled at an interval by
//! a background task, the newest [`SAMPLES_KEPT`] per table kept in memory (lost on restart;
//! Prometheus keeps the long history through `unitable_committer_lag_records`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unitable_core::naming::TableName;
use unitable_reader::Reader;

/// Samples kept per table.
pub(crate) const SAMPLES_KEPT: usize = 360;

/// One sample of a table's freshness.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) time_ms: i64,
    pub(crate) snapshot_id: Option<i64>,
    pub(crate) lag_records: i64,
    pub(crate) lag_ms: i64,
}

/// The samples of every table.
#[derive(Debug, Clone)]
pub(crate) struct History {
    interval: Duration,
    tables: Arc<Mutex<HashMap<TableName, VecDeque<Sample>>>>,
}

impl History {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            tables: Arc::default(),
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// `table`'s samples, oldest first.
    pub(crate) fn of(&self, table: &TableName) -> Vec<Sample> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .get(table)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, table: &TableName, sample: Sample) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let samples = tables.entry(table.clone()).or_default();
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Forgets the tables not in `live` (dropped ones).
    fn retain(&self, live: &[TableName]) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.retain(|t, _| live.contains(t));
    }

    /// Samples every table of `reader` now and then every interval, until `stop`. A table
    /// whose state cannot be read this round is skipped (and logged at debug).
    pub(crate) async fn run(self, reader: Reader, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let tables = match reader.list_tables(None).await {
                Ok(tables) => tables,
                Err(e) => {
                    tracing::debug!(error = %e, "console history: cannot list the tables");
                    continue;
                }
            };
            self.retain(&tables);
            for table in &tables {
                match reader.overview(table).await {
                    Ok(o) => self.record(
                        table,
                        Sample {
                            time_ms: chrono::Utc::now().timestamp_millis(),
                            snapshot_id: o.freshness.snapshot_id,
                            lag_records: o.freshness.lag_records,
                            lag_ms: o.freshness.lag_ms,
                        },
                    ),
                    Err(e) => {
                        tracing::debug!(%table, error = %e, "console history: cannot sample");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: i64) -> Sample {
        Sample {
            time_ms: i,
            snapshot_id: Some(i),
            lag_records: i,
            lag_ms: 0,
        }
    }

    #[test]
    fn keeps_the_newest_samples_per_table_and_forgets_dropped_tables() {
        let history = History::new(Duration::from_secs(1));
        let a: TableName = "ns.a".parse().unwrap();
        let b: TableName = "ns.b".parse().unwrap();
        for i in 0..(SAMPLES_KEPT as i64 + 5) {
            history.record(&a, sample(i));
        }
        history.record(&b, sample(7));
        let kept = history.of(&a);
        assert_eq!(kept.len(), SAMPLES_KEPT);
        assert_eq!(kept.first(), Some(&sample(5)));
        assert_eq!(kept.last(), Some(&sample(SAMPLES_KEPT as i64 + 4)));
        history.retain(std::slice::from_ref(&b));
        assert!(history.of(&a).is_empty());
        assert_eq!(history.of(&b), [sample(7)]);
    }
}
