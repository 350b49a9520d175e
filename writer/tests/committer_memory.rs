//! The committer alone, on the in-memory changelog and a SQLite catalog: the per-commit record
//! limit shared fairly among partitions, records removed by retention before they were
//! committed, commit answers lost after the swap happened, and a primary-key index that spills
//! to disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::array::{Array, Int64Array, StringArray};
use async_trait::async_trait;
use futures::TryStreamExt;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{ChangeRecord, Changelog, MemoryChangelog};
use unitable_core::commit::pointer::{MetadataPointer, SqlMetadataPointer, SwapOutcome};
use unitable_core::commit::read::changelog_offsets;
use unitable_core::commit::row_delta::Committer;
use unitable_core::commit::{CommitError, CommitResult};
use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_core::table::{Column, TableDef, TableSpec};
use unitable_core::types::ColumnType;
use unitable_writer::index::{KeyIndex, RowLocation};
use unitable_writer::{Writer, WriterConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    catalog: TableCatalog,
    changelog: Arc<MemoryChangelog>,
    name: TableName,
    codec: RecordCodec,
    def: TableDef,
}

async fn fixture(buckets: u32) -> Fixture {
    fixture_named("mem.kv", buckets).await
}

async fn fixture_named(table: &str, buckets: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
        .await
        .unwrap();
    let changelog = Arc::new(MemoryChangelog::new());
    let name: TableName = table.parse().unwrap();
    let def = TableDef::new(
        name.clone(),
        TableSpec {
            columns: vec![
                Column::new("id", ColumnType::Int64, true),
                Column::new("v", ColumnType::String, false),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(buckets),
            partition_by: Vec::new(),
            properties: BTreeMap::new(),
            changelog_format: Default::default(),
        },
    )
    .unwrap();
    let admin = TableAdmin::new(catalog.clone(), changelog.clone());
    let state = admin.create_table(&def).await.unwrap();
    let codec = RecordCodec::new(&state.def, &state.uuid, state.schema_id).unwrap();
    Fixture {
        _dir: dir,
        catalog,
        changelog,
        name,
        codec,
        def: state.def,
    }
}

impl Fixture {
    /// Encoded upserts of `(id, v)` with their partitions.
    fn records(&self, rows: &[(i64, String)]) -> Vec<(PartitionId, ChangeRecord)> {
        let lines: String = rows
            .iter()
            .map(|(id, v)| format!("{{\"id\":{id},\"v\":\"{v}\"}}\n"))
            .collect();
        self.encoded(ChangeOp::Upsert, &lines)
    }

    /// Encoded deletes of `ids` with their partitions.
    fn delete_records(&self, ids: &[i64]) -> Vec<(PartitionId, ChangeRecord)> {
        let lines: String = ids.iter().map(|id| format!("{{\"id\":{id}}}\n")).collect();
        self.encoded(ChangeOp::Delete, &lines)
    }

    /// JSON lines encoded as `op` records, with their partitions.
    fn encoded(&self, op: ChangeOp, lines: &str) -> Vec<(PartitionId, ChangeRecord)> {
        let (parsed, errors) = self.codec.parse_json_rows(op, lines.as_bytes(), 0);
        assert!(errors.is_empty(), "{errors:?}");
        let (encoded, bad) = self
            .codec
            .encode(op, &parsed.batch, 1_700_000_000_000)
            .unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        encoded
            .into_iter()
            .map(|e| (e.partition, e.record))
            .collect()
    }

    async fn append(&self, records: Vec<(PartitionId, ChangeRecord)>) {
        let topic = &self.def.changelog.topic;
        for (partition, record) in records {
            self.changelog
                .append(topic, partition, vec![record])
                .await
                .unwrap();
        }
    }

    /// Runs a writer's committers until they have committed everything (a graceful stop
    /// commits until caught up).
    async fn commit_all(&self, pointer: Arc<dyn MetadataPointer>, max_batch_records: usize) {
        self.commit_all_with(
            pointer,
            WriterConfig {
                max_batch_records,
                ..WriterConfig::default()
            },
        )
        .await;
    }

    /// [`Fixture::commit_all`] with `config` (its commit interval set to an hour).
    async fn commit_all_with(&self, pointer: Arc<dyn MetadataPointer>, config: WriterConfig) {
        let writer = Writer::new(
            self.catalog.clone(),
            self.changelog.clone(),
            Committer::new(self.catalog.clone(), pointer),
            WriterConfig {
                commit_interval: Duration::from_secs(3600),
                ..config
            },
        );
        assert_eq!(writer.start_committers().await.unwrap(), 1);
        writer.shutdown().await;
    }

    async fn pointer(&self) -> SqlMetadataPointer {
        SqlMetadataPointer::connect(self.catalog.config())
            .await
            .unwrap()
    }

    /// Every snapshot's anchored offsets and record count, oldest first.
    async fn commits(&self) -> Vec<(PartitionOffsets, u64)> {
        let table = self.catalog.load(&self.name).await.unwrap();
        let mut snapshots: Vec<_> = table.metadata().snapshots().cloned().collect();
        snapshots.sort_by_key(|s| s.sequence_number());
        snapshots
            .iter()
            .map(|s| {
                let added = s
                    .summary()
                    .additional_properties
                    .get("added-records")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (changelog_offsets(s).unwrap_or_default(), added)
            })
            .collect()
    }

    /// The current snapshot's rows, id -> v; panics on a duplicate id.
    async fn rows(&self) -> BTreeMap<i64, String> {
        let table = self.catalog.load(&self.name).await.unwrap();
        let scan = table.scan().build().unwrap();
        let batches: Vec<_> = read_scan(&table, &scan, ScanOptions::default())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for b in batches {
            let ids = b
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            let vs = b
                .column_by_name("v")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            for i in 0..b.num_rows() {
                let old = out.insert(ids.value(i), vs.value(i).to_string());
                assert!(old.is_none(), "id {} twice in the table", ids.value(i));
            }
        }
        out
    }
}

/// Keys whose records land in `partition`, from `start` on.
fn keys_in(f: &Fixture, partition: u32, start: i64, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut id = start;
    while out.len() < n {
        let row = vec![(id, format!("v{id}"))];
        if f.records(&row)[0].0 == PartitionId(partition) {
            out.extend(row);
        }
        id += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_limit_is_shared_fairly_among_partitions() {
    let f = fixture(2).await;
    // Partition 0 has a backlog of 300, partition 1 has 20.
    let mut rows = keys_in(&f, 0, 0, 300);
    rows.extend(keys_in(&f, 1, 0, 20));
    f.append(f.records(&rows)).await;
    f.commit_all(Arc::new(f.pointer().await), 100).await;

    let commits = f.commits().await;
    assert!(commits.len() >= 4, "{commits:?}");
    for (offsets, added) in &commits {
        assert!(*added <= 100, "a commit took {added} records: {offsets}");
    }
    // The first commit takes all of the small partition (its equal share is 50) and fills
    // the rest of the limit from the large one.
    let (first, _) = &commits[0];
    assert_eq!(
        first.get(PartitionId(1)),
        Offset(20),
        "first commit {first}"
    );
    assert_eq!(
        first.get(PartitionId(0)),
        Offset(80),
        "first commit {first}"
    );
    let (last, _) = commits.last().unwrap();
    assert_eq!(last.get(PartitionId(0)), Offset(300));
    let want: BTreeMap<i64, String> = rows.into_iter().collect();
    assert_eq!(f.rows().await, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_removed_before_commit_are_skipped_and_the_rest_committed() {
    let f = fixture(1).await;
    let rows: Vec<(i64, String)> = (0..50).map(|i| (i, format!("v{i}"))).collect();
    f.append(f.records(&rows)).await;
    // Retention takes the first 20 records before any commit.
    f.changelog
        .remove_before(&f.def.changelog.topic, PartitionId(0), Offset(20))
        .unwrap();
    f.commit_all(Arc::new(f.pointer().await), 500_000).await;

    let want: BTreeMap<i64, String> = rows.into_iter().skip(20).collect();
    assert_eq!(f.rows().await, want);
    let (last, _) = f.commits().await.pop().unwrap();
    assert_eq!(last.get(PartitionId(0)), Offset(50));
}

/// Swaps that happen but answer with an error, every other time (a connection reset after
/// the update).
#[derive(Debug)]
struct LosesEveryOtherAnswer {
    inner: SqlMetadataPointer,
    swaps: AtomicU32,
}

#[async_trait]
impl MetadataPointer for LosesEveryOtherAnswer {
    async fn swap(
        &self,
        table: &TableName,
        expected: &str,
        new: &str,
    ) -> CommitResult<SwapOutcome> {
        let outcome = self.inner.swap(table, expected, new).await?;
        if self.swaps.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            return Err(CommitError::CatalogDatabase {
                operation: "swap".into(),
                reason: "connection reset after the update (injected)".into(),
            });
        }
        Ok(outcome)
    }

    async fn current(&self, table: &TableName) -> CommitResult<Option<String>> {
        self.inner.current(table).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_whose_answers_were_lost_are_not_applied_twice() {
    let f = fixture(2).await;
    // Upserts over 40 keys, several versions each, in batches of 30 records per commit.
    let mut model = HashMap::new();
    let mut rows = Vec::new();
    for round in 0..5 {
        for id in 0..40 {
            let v = format!("r{round}-{id}");
            model.insert(id, v.clone());
            rows.push((id, v));
        }
    }
    f.append(f.records(&rows)).await;
    let pointer = Arc::new(LosesEveryOtherAnswer {
        inner: f.pointer().await,
        swaps: AtomicU32::new(0),
    });
    f.commit_all(pointer.clone(), 30).await;
    assert!(
        pointer.swaps.load(Ordering::SeqCst) >= 6,
        "answers were lost"
    );

    let want: BTreeMap<i64, String> = model.into_iter().collect();
    assert_eq!(f.rows().await, want);
    // Each commit's range follows the previous one: nothing was committed twice.
    let commits = f.commits().await;
    let total: u64 = commits.iter().map(|(_, added)| added).sum();
    let records = rows.len() as u64;
    assert!(
        total <= records,
        "{total} records added for {records} changelog records: a commit was applied twice"
    );
    let (last, _) = commits.last().unwrap();
    let end: i64 = last.0.values().map(|o| o.0).sum();
    assert_eq!(end, records as i64);
}

/// The largest value each gauge was set to, by metric name and `table` label (this test
/// binary's global metrics recorder).
fn gauge_maxima() -> &'static Mutex<HashMap<(String, String), f64>> {
    static MAXIMA: OnceLock<Mutex<HashMap<(String, String), f64>>> = OnceLock::new();
    MAXIMA.get_or_init(|| {
        let _ = metrics::set_global_recorder(MaxGauges);
        Mutex::new(HashMap::new())
    })
}

struct MaxGauges;

struct MaxGauge((String, String));

impl metrics::GaugeFn for MaxGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        let mut maxima = gauge_maxima().lock().unwrap();
        let max = maxima.entry(self.0.clone()).or_insert(value);
        *max = max.max(value);
    }
}

impl metrics::Recorder for MaxGauges {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        let table = key
            .labels()
            .find(|l| l.key() == "table")
            .map(|l| l.value().to_string())
            .unwrap_or_default();
        metrics::Gauge::from_arc(Arc::new(MaxGauge((key.name().to_string(), table))))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spilling_index_commits_what_the_model_holds() {
    gauge_maxima();
    const KEYS: i64 = 20_000;
    let f = fixture_named("mem.spill", 2).await;
    // A tenth of what the index of these keys takes unlimited (keys shaped like the codec's).
    let limit = {
        let mut index = KeyIndex::new();
        let file = index.file_id(
            "file:///warehouse/mem/spill/data/00000-0-0198c1a2-7d4e-7000-8000-000000000000.parquet",
            &iceberg::spec::Struct::empty(),
            0,
        );
        for id in 0..KEYS {
            let key = format!("{{\"id\":{id}}}");
            let pos = id as u64;
            index
                .insert(key.as_bytes(), RowLocation { file, pos })
                .unwrap();
        }
        index.memory_bytes() as u64 / 10
    };
    let spill_dir = tempfile::tempdir().unwrap();
    let config = || WriterConfig {
        max_batch_records: 7_000,
        index_memory_limit: Some(limit),
        index_spill_dir: spill_dir.path().to_path_buf(),
        ..WriterConfig::default()
    };
    let pointer = Arc::new(f.pointer().await);
    let mut model = BTreeMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for cycle in 0..4 {
        // Upserts of every key first, then of a random third; deletes of a random twentieth.
        let rows: Vec<(i64, String)> = (0..KEYS)
            .filter(|_| cycle == 0 || next() % 3 == 0)
            .map(|id| (id, format!("c{cycle}-{id}")))
            .collect();
        let deletes: Vec<i64> = (0..KEYS / 20)
            .map(|_| (next() % KEYS as u64) as i64)
            .collect();
        f.append(f.records(&rows)).await;
        f.append(f.delete_records(&deletes)).await;
        model.extend(rows);
        for id in &deletes {
            model.remove(id);
        }
        // Each round starts a writer: its committer rebuilds the index (spilling), then
        // commits the round in several snapshots.
        f.commit_all_with(pointer.clone(), config()).await;
        assert_eq!(f.rows().await, model, "cycle {cycle}");
    }
    let maxima = gauge_maxima().lock().unwrap().clone();
    let of = |name: &str| {
        maxima
            .get(&(name.to_string(), "mem.spill".to_string()))
            .copied()
    };
    let resident = of("unitable_writer_index_bytes").expect("index bytes reported");
    assert!(
        resident <= limit as f64,
        "{resident} bytes resident, limit {limit}"
    );
    let spilled = of("unitable_writer_index_spilled_bytes").expect("spilled bytes reported");
    assert!(spilled > 0.0, "the index never spilled");
    // Every committer removed its spill directory when it stopped.
    assert_eq!(std::fs::read_dir(spill_dir.path()).unwrap().count(), 0);
}
