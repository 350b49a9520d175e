//! CDC ingest in process: a Debezium stream in an in-memory source topic is ingested into a
//! keyed table while appends to one changelog partition fail after landing (so the writer's
//! request log must recover them), then the ingester is stopped and restarted with its last
//! batch recorded as still pending (a crash between the write and the position update). The
//! oracle: replaying the table's changelog gives the model of the source events, and every
//! ingest request id holds exactly the good events of its source range.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{ChangeRecord, Changelog};
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::Committer;
use unitable_core::ingest::IngestPositions;
use unitable_core::naming::{TopicName, props};
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::requests::RequestLog;
use unitable_core::table::{Column, TableDef, TableSpec};
use unitable_core::types::ColumnType;
use unitable_writer::{Writer, WriterConfig};

mod common;
use common::Flaky;

const SOURCE: &str = "dbz.inventory.items";

/// What each source record is: a good event (applied), a skipped one, or a bad one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Skip,
    Bad,
}

struct Source {
    records: BTreeMap<u32, Vec<(ChangeRecord, Kind)>>,
    model: BTreeMap<i64, Value>,
}

impl Source {
    fn push(&mut self, partition: u32, key: Option<i64>, value: Option<Value>, kind: Kind) {
        self.records.entry(partition).or_default().push((
            ChangeRecord {
                key: key.map(|k| Bytes::from(json!({"id": k}).to_string())),
                value: value.map(|v| Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp_ms: 1,
            },
            kind,
        ));
    }

    fn upsert(&mut self, id: i64, version: i64, op: &str) {
        let row = json!({"id": id, "v": format!("v{version}"), "n": version as i32});
        self.model.insert(id, row.clone());
        let p = (id % 2) as u32;
        self.push(
            p,
            Some(id),
            Some(json!({"op": op, "before": null, "after": row})),
            Kind::Good,
        );
    }

    fn delete(&mut self, id: i64) {
        let before = self.model.remove(&id).expect("a live key");
        let p = (id % 2) as u32;
        self.push(
            p,
            Some(id),
            Some(json!({"op": "d", "before": before, "after": null})),
            Kind::Good,
        );
        self.push(p, Some(id), None, Kind::Skip);
    }
}

async fn table_state(
    log: &Flaky,
    def: &TableDef,
) -> (BTreeMap<i64, Value>, HashMap<String, usize>) {
    let mut state = BTreeMap::new();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for p in 0..def.changelog.partitions {
        let records = log
            .read(
                &def.changelog.topic,
                PartitionId(p),
                Offset(0),
                1_000_000,
                Duration::ZERO,
            )
            .await
            .unwrap();
        for r in records {
            let id = r
                .record
                .headers
                .iter()
                .find(|(k, _)| k == "unitable.request-id")
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
                .expect("every record is the ingest's");
            *per_id.entry(id).or_default() += 1;
            let key: Value = serde_json::from_slice(r.record.key.as_ref().unwrap()).unwrap();
            let key = key["id"].as_i64().unwrap();
            match r.record.value {
                None => {
                    state.remove(&key);
                }
                Some(v) => {
                    let v: Value = serde_json::from_slice(&v).unwrap();
                    state.insert(key, v);
                }
            }
        }
    }
    (state, per_id)
}

/// The records of each batch (request ids `ingest:<topic>:<p>:<first>-<last>:<run>`) are
/// exactly the good events of its source range, and the batches together cover every good
/// event once.
fn check_exactly_once(source: &Source, per_id: &HashMap<String, usize>) {
    let mut per_batch: BTreeMap<(u32, usize, usize), usize> = BTreeMap::new();
    for (id, count) in per_id {
        let rest = id.strip_prefix(&format!("ingest:{SOURCE}:")).expect(id);
        let (batch, _run) = rest.rsplit_once(':').unwrap();
        let (p, range) = batch.split_once(':').unwrap();
        let (first, last) = range.split_once('-').unwrap();
        let key = (
            p.parse().unwrap(),
            first.parse().unwrap(),
            last.parse().unwrap(),
        );
        *per_batch.entry(key).or_default() += count;
    }
    let mut covered = 0;
    let mut previous_end: BTreeMap<u32, usize> = BTreeMap::new();
    for ((p, first, last), count) in per_batch {
        assert!(
            previous_end.get(&p).is_none_or(|end| first > *end),
            "batches overlap"
        );
        previous_end.insert(p, last);
        let good = source.records[&p][first..=last]
            .iter()
            .filter(|(_, k)| *k == Kind::Good)
            .count();
        assert_eq!(count, good, "batch {p}:{first}-{last}");
        covered += good;
    }
    let all_good = source
        .records
        .values()
        .flatten()
        .filter(|(_, k)| *k == Kind::Good)
        .count();
    assert_eq!(covered, all_good, "every good event once");
}

#[tokio::test]
async fn a_debezium_stream_is_ingested_exactly_once_through_failed_appends_and_a_pending_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = CatalogConfig::embedded(dir.path());
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let log = Arc::new(Flaky::new());
    let admin = TableAdmin::new(catalog.clone(), log.clone());
    let mut properties = BTreeMap::new();
    properties.insert(props::INGEST_TOPIC.to_string(), SOURCE.to_string());
    let def = TableDef::new(
        "cdc.items".parse().unwrap(),
        TableSpec {
            columns: vec![
                Column::new("id", ColumnType::Int64, true),
                Column::new("v", ColumnType::String, false),
                Column::new("n", ColumnType::Int32, false),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(3),
            partition_by: Vec::new(),
            properties,
            changelog_format: Default::default(),
        },
    )
    .unwrap();
    let state = admin.create_table(&def).await.unwrap();
    let def = state.def;

    // The source: snapshot reads, updates, deletes with tombstones, a DDL event, bad events.
    let mut source = Source {
        records: BTreeMap::new(),
        model: BTreeMap::new(),
    };
    for id in 0..40 {
        source.upsert(id, 0, "r");
    }
    for round in 1..4 {
        for id in (0..40).filter(|id| id % 3 == round % 3) {
            source.upsert(id, round, "u");
        }
    }
    for id in [3, 8, 21, 34] {
        source.delete(id);
    }
    source.push(
        1,
        None,
        Some(json!({"ddl": "ALTER TABLE items ADD x INT", "tableChanges": []})),
        Kind::Skip,
    );
    source.push(0, Some(900), Some(json!({"op": "c"})), Kind::Bad);
    source.push(
        1,
        Some(901),
        Some(json!({"op": "c", "after": {"id": 901, "n": 1_i64 << 40}})),
        Kind::Bad,
    );
    for id in 40..50 {
        source.upsert(id, 9, "c");
    }
    let topic = TopicName::new(SOURCE);
    log.create_topic(&topic, 2).await.unwrap();
    for (p, records) in &source.records {
        log.append(
            &topic,
            PartitionId(*p),
            records.iter().map(|(r, _)| r.clone()).collect(),
        )
        .await
        .unwrap();
    }

    let pointer = SqlMetadataPointer::connect(&config).await.unwrap();
    let writer = Writer::new(
        catalog.clone(),
        log.clone(),
        Committer::new(catalog, Arc::new(pointer)),
        WriterConfig {
            commit_interval: Duration::from_secs(3600),
            requests: RequestLog::connect(&config).await.unwrap(),
            ..WriterConfig::default()
        },
    );
    writer.start_committers().await.unwrap();
    let positions = IngestPositions::connect(&config).await.unwrap().unwrap();

    // Appends to table partition 1 land but report failure at first: the ingester retries
    // under the same request ids and the request log appends only what is missing.
    log.land_then_fail.store(true, Ordering::SeqCst);
    log.failing.lock().unwrap().insert(1);
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (writer, positions, stop) = (writer.clone(), positions.clone(), stop.clone());
        async move { writer.run_ingest(positions, stop).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    log.failing.lock().unwrap().clear();

    let wait_caught_up = || async {
        for _ in 0..200 {
            let done = positions.positions(&state.uuid, SOURCE).await.unwrap();
            let caught_up = source.records.iter().all(|(p, records)| {
                done.get(&PartitionId(*p)).is_some_and(|pos| {
                    pos.pending.is_none() && pos.next == Offset(records.len() as i64)
                })
            });
            if caught_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the ingest did not catch up");
    };
    wait_caught_up().await;
    let (table, per_id) = table_state(&log, &def).await;
    assert_eq!(table, source.model);
    check_exactly_once(&source, &per_id);

    // The bad events are in the dead-letter topic, once, naming their source positions.
    let dlq = log
        .read(
            &def.changelog.topic.dead_letter(),
            PartitionId(0),
            Offset(0),
            100,
            Duration::ZERO,
        )
        .await
        .unwrap();
    let mut letters: Vec<(u64, u64, Value)> = dlq
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.record.value.as_ref().unwrap()).unwrap();
            (
                v["source_partition"].as_u64().unwrap(),
                v["source_offset"].as_u64().unwrap(),
                v["field"].clone(),
            )
        })
        .collect();
    letters.sort_by_key(|(p, o, _)| (*p, *o));
    let bad: Vec<(u64, u64)> = source
        .records
        .iter()
        .flat_map(|(p, rs)| {
            rs.iter()
                .enumerate()
                .filter(|(_, (_, k))| *k == Kind::Bad)
                .map(move |(o, _)| (u64::from(*p), o as u64))
        })
        .collect();
    assert_eq!(
        letters.iter().map(|(p, o, _)| (*p, *o)).collect::<Vec<_>>(),
        bad
    );
    assert_eq!(letters[0].2, json!("after"));
    assert_eq!(letters[1].2, json!("n"));

    // A crash after a batch was written but before its position moved: the whole of
    // partition 0 (one batch) is pending again. The restarted ingest writes it again under
    // the same ids, and the request log writes nothing twice.
    stop.cancel();
    run.await.unwrap();
    let p0 = source.records[&0].len() as i64;
    // Positions never move back through the API (a stale node cannot rewind them), so the
    // crash's leftover is written straight into the catalog database.
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!(
        "sqlite://{}",
        dir.path().join("catalog.db").display()
    ))
    .await
    .unwrap();
    let rewound = sqlx::query(
        "UPDATE unitable_ingest_positions SET next_offset = 0, pending_last = ? \
         WHERE source_partition = 0",
    )
    .bind(p0 - 1)
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(rewound.rows_affected(), 1);
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (writer, positions, stop) = (writer.clone(), positions.clone(), stop.clone());
        async move { writer.run_ingest(positions, stop).await }
    });
    wait_caught_up().await;
    stop.cancel();
    run.await.unwrap();
    let (table, per_id) = table_state(&log, &def).await;
    assert_eq!(table, source.model);
    check_exactly_once(&source, &per_id);
    writer.shutdown().await;
}
