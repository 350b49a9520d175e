//! CDC ingest: tables whose `unitable.ingest.topic` names a Debezium topic are fed from it,
//! exactly once, by the node that commits the table (so one ingester per table in a cluster,
//! moving with the committer lease). See docs/rfcs/0003-cdc-ingest.md and docs/ingest.md.
//!
//! Each source partition is read in batches. Before a batch is written, its range is recorded
//! as pending in the catalog database ([`IngestPositions`]); the batch's changes are written
//! through the idempotent write path in runs of one operation ([`Plan`]), each under the
//! request id `ingest:<topic>:<partition>:<first>-<last>:<run>` (the batch's source offsets);
//! rejected events go to the table's dead-letter topic under one more request id; then the
//! position moves past the batch. After a crash the pending range is read again and written under the same ids: the
//! request log returns what landed and appends only what did not, so every source event is in
//! the table's changelog once. The committer's offset anchoring does the rest.

mod debezium;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use unitable_core::changelog::{ChangeRecord, ChangelogError, StoredRecord};
use unitable_core::ingest::{IngestConfig, IngestPositions, IngestStart};
use unitable_core::naming::{TableName, TopicName};
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::record::ChangeOp;
use unitable_core::requests::{Claim, MAX_REQUEST_ID_LEN};
use unitable_core::table::TableDef;

use self::debezium::{Converter, Event, Rejected};
use crate::error::{WriteError, WriteResult};
use crate::input::Rows;
use crate::metric_names as m;
use crate::writer::{WriteRequest, Writer};

/// How many source records one batch reads at most.
const BATCH_RECORDS: usize = 2_000;
/// How long a read waits for new source records.
const POLL_WAIT: Duration = Duration::from_millis(500);
/// How often the ingest loop looks for tables to start or stop ingesting.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a failed table ingester waits before it starts again.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// One table's running ingester.
struct Running {
    key: IngesterKey,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What an ingester was started for: a change of any part restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IngesterKey {
    uuid: String,
    schema_id: i32,
    config: IngestConfig,
}

/// What the loop knows of a table's definition, by metadata location.
struct Known {
    location: Option<String>,
    wanted: Option<(IngesterKey, TableDef)>,
}

impl Writer {
    /// Runs the CDC ingesters of the tables this node commits, until `shutdown`: starts one
    /// when a table this node commits names a source topic, restarts it when the table's
    /// schema or ingest settings change, stops it when the table moves to another node or
    /// stops naming a source. The ingest writes through the writer's request log.
    pub async fn run_ingest(&self, positions: IngestPositions, shutdown: CancellationToken) {
        let mut running: HashMap<TableName, Running> = HashMap::new();
        let mut known: HashMap<TableName, Known> = HashMap::new();
        let mut failed: HashMap<TableName, Instant> = HashMap::new();
        loop {
            let here = self.committed_here();
            let mut wanted: HashMap<TableName, (IngesterKey, TableDef)> = HashMap::new();
            for name in &here {
                match self.ingest_wanted(name, &mut known).await {
                    Ok(Some(w)) => {
                        wanted.insert(name.clone(), w);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(table = %name, error = %e, "cannot read the table's ingest settings")
                    }
                }
            }
            known.retain(|name, _| here.contains(name));
            // Stop what is no longer wanted as it runs (or ended).
            let names: Vec<TableName> = running.keys().cloned().collect();
            for name in names {
                let keep = running.get(&name).is_some_and(|r| {
                    !r.task.is_finished() && wanted.get(&name).is_some_and(|(k, _)| *k == r.key)
                });
                if keep {
                    continue;
                }
                let r = running.remove(&name).expect("listed above");
                if r.task.is_finished() && wanted.get(&name).is_some_and(|(k, _)| *k == r.key) {
                    // It ended by itself (an error it logged): start again after a pause.
                    failed.insert(name.clone(), Instant::now());
                }
                r.stop.cancel();
                let _ = r.task.await;
                metrics::gauge!(m::INGEST_RUNNING, "table" => name.to_string()).set(0.0);
            }
            for (name, (key, def)) in wanted {
                if running.contains_key(&name)
                    || failed
                        .get(&name)
                        .is_some_and(|t| t.elapsed() < RESTART_AFTER)
                {
                    continue;
                }
                failed.remove(&name);
                let stop = shutdown.child_token();
                key.config.route_source();
                let ingester = TableIngester {
                    writer: self.clone(),
                    positions: positions.clone(),
                    table: name.clone(),
                    uuid: key.uuid.clone(),
                    topic: TopicName::new(key.config.topic.clone()),
                    config: key.config.clone(),
                    converter: Arc::new(Converter::new(&def, &key.config)),
                    schema_id: key.schema_id,
                    checked: Arc::default(),
                    dead_letter: def.changelog.topic.dead_letter(),
                    stop: stop.clone(),
                };
                info!(table = %name, source = %key.config.topic, format = key.config.format.as_str(), "starting CDC ingest");
                metrics::gauge!(m::INGEST_RUNNING, "table" => name.to_string()).set(1.0);
                let task = tokio::spawn(ingester.run());
                running.insert(name, Running { key, stop, task });
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
        for (name, r) in running {
            r.stop.cancel();
            let _ = r.task.await;
            metrics::gauge!(m::INGEST_RUNNING, "table" => name.to_string()).set(0.0);
        }
    }

    /// The ingester `name` should run, if any: read from the table's definition when its
    /// metadata pointer moved since the last look.
    async fn ingest_wanted(
        &self,
        name: &TableName,
        known: &mut HashMap<TableName, Known>,
    ) -> WriteResult<Option<(IngesterKey, TableDef)>> {
        let shared = &self.inner.shared;
        let location = shared.committer.current_metadata_location(name).await?;
        if let Some(k) = known.get(name)
            && k.location == location
        {
            return Ok(k.wanted.clone());
        }
        let state = shared.catalog.describe(name).await?;
        let wanted = match IngestConfig::from_properties(
            &state.def.properties,
            !state.def.primary_key.is_empty(),
        ) {
            Ok(Some(config)) => Some((
                IngesterKey {
                    uuid: state.uuid.clone(),
                    schema_id: state.schema_id,
                    config,
                },
                state.def.clone(),
            )),
            Ok(None) => None,
            Err(reason) => {
                warn!(table = %name, %reason, "the table's ingest settings are invalid; not ingesting");
                None
            }
        };
        known.insert(
            name.clone(),
            Known {
                location,
                wanted: wanted.clone(),
            },
        );
        Ok(wanted)
    }
}

/// Ingests one table's source topic.
#[derive(Clone)]
struct TableIngester {
    writer: Writer,
    positions: IngestPositions,
    table: TableName,
    uuid: String,
    topic: TopicName,
    config: IngestConfig,
    converter: Arc<Converter>,
    /// The table schema the converter was built for.
    schema_id: i32,
    /// The newest metadata location found to still have `schema_id`.
    checked: Arc<std::sync::Mutex<Option<String>>>,
    dead_letter: TopicName,
    stop: CancellationToken,
}

/// Why a partition's ingest stopped.
#[derive(Debug)]
enum Stopped {
    /// Asked to.
    Cancelled,
    /// The table's schema changed: the ingest starts again with it (the batch at hand is
    /// still pending, so it is converted again).
    SchemaChanged,
    /// An error that retrying will not fix.
    Failed(String),
}

impl From<WriteError> for Stopped {
    fn from(e: WriteError) -> Self {
        Stopped::Failed(e.to_string())
    }
}

impl From<unitable_core::Error> for Stopped {
    fn from(e: unitable_core::Error) -> Self {
        Stopped::Failed(e.to_string())
    }
}

impl TableIngester {
    fn log(&self) -> &dyn unitable_core::changelog::Changelog {
        self.writer.inner.shared.changelog.as_ref()
    }

    async fn run(self) {
        let partitions = loop {
            match self.log().partition_count(&self.topic).await {
                Ok(n) => break n,
                Err(e) => {
                    if matches!(e, ChangelogError::TopicNotFound { .. }) {
                        warn!(table = %self.table, source = %self.topic, "the ingest source topic does not exist (yet); looking again in 5 s");
                    } else {
                        warn!(table = %self.table, source = %self.topic, error = %e, "cannot read the ingest source topic; retrying in 5 s");
                    }
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        let positions = match self
            .positions
            .positions(&self.uuid, &self.config.source_key())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                error!(table = %self.table, error = %e, "cannot read the ingest positions; the ingest starts again in 10 s");
                return;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..partitions {
            let me = self.clone();
            let position = positions.get(&PartitionId(p)).copied();
            tasks.spawn(async move {
                let partition = PartitionId(p);
                let result = me.run_partition(partition, position).await;
                (partition, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(()) | Err(Stopped::Cancelled))) => {}
                Ok((_, Err(Stopped::SchemaChanged))) => {
                    info!(table = %self.table, "the table's schema changed; CDC ingest starts again with it");
                    self.stop.cancel();
                }
                Ok((partition, Err(Stopped::Failed(reason)))) => {
                    error!(table = %self.table, source = %self.topic, %partition, %reason, "CDC ingest stopped; it starts again in 10 s from the last recorded position");
                    metrics::counter!(m::INGEST_FAILURES, "table" => self.table.to_string())
                        .increment(1);
                    self.stop.cancel();
                }
                Err(e) => {
                    error!(table = %self.table, error = %e, "a CDC ingest task failed");
                    self.stop.cancel();
                }
            }
        }
        // This node no longer ingests the table (stopped, handed over, restarting): its lag
        // is no longer this node's to report.
        for p in 0..partitions {
            metrics::gauge!(m::INGEST_LAG_RECORDS, "table" => self.table.to_string(), "partition" => p.to_string())
                .set(0.0);
        }
    }

    async fn run_partition(
        &self,
        partition: PartitionId,
        position: Option<unitable_core::ingest::IngestPosition>,
    ) -> Result<(), Stopped> {
        let mut next = match position {
            Some(position) => {
                if let Some(pending) = position.pending {
                    // The last batch may have landed in part: write it again, same ids.
                    info!(table = %self.table, source = %self.topic, %partition, first = position.next.0, last = pending.0, "recovering an ingest batch that was being written");
                    let batch = self.read_range(partition, position.next, pending).await?;
                    self.ingest_batch(partition, position.next, pending, &batch)
                        .await?;
                    pending.next()
                } else {
                    position.next
                }
            }
            None => {
                let marks = self
                    .retry(|| self.log().watermarks(&self.topic, partition))
                    .await?;
                match self.config.start {
                    IngestStart::Earliest => marks.low,
                    IngestStart::Latest => marks.high,
                }
            }
        };
        let mut lag_at = Instant::now() - Duration::from_secs(60);
        loop {
            let batch = self.read_source(partition, next, BATCH_RECORDS).await?;
            if lag_at.elapsed() >= Duration::from_secs(1) {
                lag_at = Instant::now();
                let after = batch.last().map_or(next, |r| r.offset.next());
                if let Ok(marks) = self.log().watermarks(&self.topic, partition).await {
                    metrics::gauge!(m::INGEST_LAG_RECORDS, "table" => self.table.to_string(), "partition" => partition.0.to_string())
                        .set((marks.high.0 - after.0).max(0) as f64);
                }
            }
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                continue;
            };
            let (first, last) = (first.offset, last.offset);
            self.ingest_batch(partition, first, last, &batch).await?;
            next = last.next();
        }
    }

    /// Every record of `first..=last` (a pending batch read again).
    async fn read_range(
        &self,
        partition: PartitionId,
        first: Offset,
        last: Offset,
    ) -> Result<Vec<StoredRecord>, Stopped> {
        let mut out = Vec::new();
        let mut next = first;
        while next <= last {
            let want = usize::try_from(last.0 - next.0 + 1).unwrap_or(BATCH_RECORDS);
            let got = self
                .read_source(partition, next, want.min(BATCH_RECORDS))
                .await?;
            if got.is_empty() {
                return Err(Stopped::Failed(format!(
                    "the pending ingest batch {}..={} of partition {partition} ends past the \
                     source topic's end ({})",
                    first.0, last.0, next.0
                )));
            }
            next = got.last().expect("not empty").offset.next();
            out.extend(got.into_iter().filter(|r| r.offset <= last));
        }
        Ok(out)
    }

    /// Up to `max` source records from `next`, retrying what may succeed later. A position
    /// outside the partition's records (removed by retention, or past the end of a recreated
    /// topic) stops the partition with what to do about it.
    async fn read_source(
        &self,
        partition: PartitionId,
        next: Offset,
        max: usize,
    ) -> Result<Vec<StoredRecord>, Stopped> {
        loop {
            let read = tokio::select! {
                () = self.stop.cancelled() => return Err(Stopped::Cancelled),
                r = self.log().read(&self.topic, partition, next, max, POLL_WAIT) => r,
            };
            match read {
                Ok(batch) => return Ok(batch),
                Err(ChangelogError::OffsetOutOfRange { low, .. }) if next < low => {
                    return Err(Stopped::Failed(format!(
                        "source records {}..{} of partition {partition} were removed by the \
                         topic's retention before they were ingested; they are lost to the \
                         table. To start over from the oldest records kept, run `unitable \
                         ingest start {} --topic {} --reset`; raise the source topic's \
                         retention to keep this from happening again",
                        next.0, low.0, self.table, self.topic
                    )));
                }
                Err(ChangelogError::OffsetOutOfRange { high, .. }) if next > high => {
                    return Err(Stopped::Failed(format!(
                        "the ingest position {} of source partition {partition} is past the \
                         partition's end {}: the topic was deleted and created again, or \
                         truncated. To ingest it from its start, run `unitable ingest start {} \
                         --topic {} --reset`",
                        next.0, high.0, self.table, self.topic
                    )));
                }
                Err(e) if e.is_retryable() => {
                    warn!(table = %self.table, source = %self.topic, %partition, error = %e, "cannot read the ingest source; retrying");
                    self.pause(Duration::from_secs(1)).await?;
                }
                Err(e) => return Err(Stopped::Failed(e.to_string())),
            }
        }
    }

    /// Whether the table's current schema is another than the converter's: one metadata
    /// pointer read, plus a load when the pointer moved since the last look.
    async fn schema_changed(&self) -> Result<bool, Stopped> {
        let shared = &self.writer.inner.shared;
        let location = shared
            .committer
            .current_metadata_location(&self.table)
            .await
            .map_err(|e| Stopped::Failed(e.to_string()))?;
        if location.is_some() && *crate::writer::lock(&self.checked) == location {
            return Ok(false);
        }
        let state = shared.catalog.describe(&self.table).await?;
        if state.schema_id != self.schema_id {
            return Ok(true);
        }
        *crate::writer::lock(&self.checked) = location;
        Ok(false)
    }

    async fn pause(&self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = self.stop.cancelled() => Err(Stopped::Cancelled),
            () = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Runs `f` until it succeeds or fails for good, pausing between tries.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, Stopped>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ChangelogError>>,
    {
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => self.pause(Duration::from_secs(1)).await?,
                Err(e) => return Err(Stopped::Failed(e.to_string())),
            }
        }
    }

    /// Writes one batch of source records (`first..=last` of `partition`) exactly once.
    async fn ingest_batch(
        &self,
        partition: PartitionId,
        first: Offset,
        last: Offset,
        batch: &[StoredRecord],
    ) -> Result<(), Stopped> {
        let table = self.table.to_string();
        self.positions
            .begin(
                &self.uuid,
                &self.config.source_key(),
                partition,
                first,
                last,
            )
            .await?;
        let mut plan = Plan::default();
        let mut rejected: Vec<(Offset, Rejected)> = Vec::new();
        let mut unknown_seen = false;
        for stored in batch {
            let r = &stored.record;
            match self.converter.convert(r.key.as_deref(), r.value.as_deref()) {
                Ok(converted) => {
                    unknown_seen |= !converted.unknown_columns.is_empty();
                    for column in &converted.unknown_columns {
                        metrics::counter!(m::INGEST_UNKNOWN_COLUMNS, "table" => table.clone(), "column" => column.clone())
                            .increment(1);
                    }
                    let (op, row) = match converted.event {
                        Event::Upsert(row) => (ChangeOp::Upsert, row),
                        Event::Delete(key) => (ChangeOp::Delete, key),
                        Event::Skip(why) => {
                            if why == debezium::Skip::SchemaChange {
                                info!(table = %self.table, source = %self.topic, %partition, offset = stored.offset.0, "skipped a schema-change event: the table's schema is not changed by ingest (alter it with `unitable table alter`)");
                            }
                            metrics::counter!(m::INGEST_EVENTS, "table" => table.clone(), "outcome" => why.as_str())
                                .increment(1);
                            continue;
                        }
                    };
                    let key = self.converter.key_text(&row);
                    let line = serde_json::Value::Object(row).to_string();
                    plan.add(op, key, stored.offset, line);
                }
                Err(e) => rejected.push((stored.offset, e)),
            }
        }
        if unknown_seen && self.schema_changed().await? {
            // The table may have gained the columns the events carry (`add-column` right
            // before these events): convert the batch again with the new schema.
            return Err(Stopped::SchemaChanged);
        }
        let runs = plan.runs;
        for run in &runs {
            let outcome = self.write_run(partition, first, last, run).await?;
            metrics::counter!(m::INGEST_EVENTS, "table" => table.clone(), "outcome" => run.op.as_str())
                .increment(outcome.rows_written);
            for e in outcome.errors {
                let offset = run.offsets.get(e.row).copied().unwrap_or(run.offsets[0]);
                rejected.push((
                    offset,
                    Rejected {
                        field: e.field,
                        reason: e.reason,
                        kind: "invalid",
                    },
                ));
            }
        }
        if !rejected.is_empty() {
            rejected.sort_by_key(|(o, _)| *o);
            self.dead_letter(partition, first, last, batch, &rejected)
                .await?;
        }
        self.positions
            .advance(
                &self.uuid,
                &self.config.source_key(),
                partition,
                last.next(),
            )
            .await?;
        Ok(())
    }

    /// Writes one run under its request id, retrying what may succeed later.
    async fn write_run(
        &self,
        partition: PartitionId,
        first: Offset,
        last: Offset,
        run: &Run,
    ) -> Result<crate::writer::WriteOutcome, Stopped> {
        let id = self.request_id(partition, first, last, &format!(":{}", run.level));
        let mut body = String::with_capacity(run.bytes);
        for line in &run.lines {
            body.push_str(line);
            body.push('\n');
        }
        let body = Bytes::from(body);
        loop {
            if !self.writer.commits(&self.table) {
                // Another node commits the table now; its ingester goes on from the position.
                return Err(Stopped::Cancelled);
            }
            let request = WriteRequest {
                table: self.table.clone(),
                op: run.op,
                rows: Rows::JsonLines(body.clone()),
                first_row: 0,
                wait_for_snapshot: false,
                request_id: Some(id.clone()),
            };
            match self.writer.write_as(request, false).await {
                Ok(outcome) if outcome.rows_unwritten > 0 => {
                    // A changelog partition failed: the retry (same id) appends what is missing.
                    warn!(table = %self.table, request_id = %id, unwritten = outcome.rows_unwritten, "part of an ingest write failed; retrying it");
                    self.pause(Duration::from_millis(500)).await?;
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_retryable() && !matches!(e, WriteError::ShuttingDown) => {
                    debug!(table = %self.table, request_id = %id, error = %e, "an ingest write will be retried");
                    self.pause(Duration::from_millis(500)).await?;
                }
                Err(WriteError::ShuttingDown) => return Err(Stopped::Cancelled),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `ingest:<source>:<partition>:<first>-<last><suffix>` (source: the topic, with `#g<n>`
    /// from generation 1 on), with the source replaced by a hash when the id would be too long.
    fn request_id(
        &self,
        partition: PartitionId,
        first: Offset,
        last: Offset,
        suffix: &str,
    ) -> String {
        let source = self.config.source_key();
        let id = format!(
            "ingest:{source}:{}:{}-{}{suffix}",
            partition.0, first.0, last.0
        );
        if id.len() <= MAX_REQUEST_ID_LEN {
            return id;
        }
        let hash = unitable_core::bucket::murmur2(source.as_bytes());
        format!(
            "ingest:#{hash:08x}:{}:{}-{}{suffix}",
            partition.0, first.0, last.0
        )
    }

    /// Sends the batch's rejected events to the dead-letter topic, once per batch (a request id
    /// in the request log keeps a recovered batch from sending them twice).
    async fn dead_letter(
        &self,
        partition: PartitionId,
        first: Offset,
        last: Offset,
        batch: &[StoredRecord],
        rejected: &[(Offset, Rejected)],
    ) -> Result<(), Stopped> {
        let table = self.table.to_string();
        for (_, r) in rejected {
            metrics::counter!(m::INGEST_EVENTS, "table" => table.clone(), "outcome" => "rejected")
                .increment(1);
            metrics::counter!(m::INGEST_REJECTED, "table" => table.clone(), "reason" => r.kind)
                .increment(1);
        }
        let id = self.request_id(partition, first, last, ":dlq");
        let requests = self.writer.request_log()?;
        let node = self.writer.node_id().to_string();
        let claim = requests
            .claim(&self.uuid, &id, &node, crate::idempotent::IN_FLIGHT)
            .await?;
        // Done: a recovered batch whose rejected events were sent. Otherwise (new, or an
        // earlier attempt that died) they are sent now.
        if matches!(claim, Claim::Done(_)) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let records: Vec<ChangeRecord> = rejected
            .iter()
            .map(|(offset, r)| {
                let input = batch
                    .iter()
                    .find(|s| s.offset == *offset)
                    .and_then(|s| s.record.value.as_deref())
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let value = json!({
                    "source_topic": self.topic.as_str(),
                    "source_partition": partition.0,
                    "source_offset": offset.0,
                    "field": r.field,
                    "reason": r.reason,
                    "input": input,
                });
                ChangeRecord {
                    key: None,
                    value: Some(Bytes::from(value.to_string())),
                    headers: vec![
                        ("unitable.error".into(), Bytes::from(r.reason.clone())),
                        (
                            "unitable.source".into(),
                            Bytes::from(format!("{}:{}:{}", self.topic, partition.0, offset.0)),
                        ),
                    ],
                    timestamp_ms: now,
                }
            })
            .collect();
        let result = async {
            self.log().create_topic(&self.dead_letter, 1).await?;
            self.log()
                .append(&self.dead_letter, PartitionId(0), records)
                .await
        }
        .await;
        match result {
            Ok(_) => {
                requests.finish(&self.uuid, &id, "{}").await?;
                warn!(table = %self.table, source = %self.topic, %partition, events = rejected.len(), topic = %self.dead_letter, "rejected CDC events sent to the dead-letter topic");
                Ok(())
            }
            Err(e) => {
                let _ = requests.abandon(&self.uuid, &id).await;
                Err(Stopped::Failed(format!(
                    "cannot send rejected events to the dead-letter topic `{}`: {e}",
                    self.dead_letter
                )))
            }
        }
    }
}

/// A batch's changes arranged in as few write requests (runs, each of one operation) as the
/// order of each key's changes allows: changes of different keys commute, so a key's change
/// goes into the earliest run of its operation that comes after the run of the key's previous
/// change. Runs alternate operations; a batch needs one run more than the most times any key
/// switches between upsert and delete in it (usually two), instead of one per switch in the
/// stream.
#[derive(Default)]
struct Plan {
    runs: Vec<Run>,
    /// The run of each key's latest change.
    level: HashMap<String, usize>,
}

impl Plan {
    fn add(&mut self, op: ChangeOp, key: String, offset: Offset, line: String) {
        let first_op = self.runs.first().map_or(op, |r| r.op);
        let op_at = |level: usize| {
            if level.is_multiple_of(2) {
                first_op
            } else if first_op == ChangeOp::Upsert {
                ChangeOp::Delete
            } else {
                ChangeOp::Upsert
            }
        };
        let level = match self.level.get(&key) {
            Some(&l) if op_at(l) == op => l,
            Some(&l) => l + 1,
            None if op == first_op => 0,
            None => 1,
        };
        while self.runs.len() <= level {
            let level = self.runs.len();
            self.runs.push(Run {
                op: op_at(level),
                level,
                offsets: Vec::new(),
                lines: Vec::new(),
                bytes: 0,
            });
        }
        let run = &mut self.runs[level];
        run.bytes += line.len() + 1;
        run.offsets.push(offset);
        run.lines.push(line);
        self.level.insert(key, level);
    }
}

/// Changes of one operation, written as one request.
struct Run {
    op: ChangeOp,
    /// Its place among the batch's runs (part of its request id).
    level: usize,
    offsets: Vec<Offset>,
    lines: Vec<String>,
    bytes: usize,
}

#[cfg(test)]
mod tests;
