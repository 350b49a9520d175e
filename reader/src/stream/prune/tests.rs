//! Pruning: which partitions a filter allows (against the codec's own key hashing), and
//! filtered STREAM reads checked against a model of random writes, counting partition reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int32Array, Int64Array, StringArray};
use futures::StreamExt;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::Changelog;
use unitable_core::naming::TableName;
use unitable_core::offsets::{PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::{Column, TableDef, TableSpec};

use super::super::tests::Watched;
use super::super::{StreamRead, StreamStart};
use super::*;
use crate::Reader;

const BUCKETS: u32 = 8;
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const IDS: i64 = 40;

/// `t.orders`: key (`region`, `id`), plus `v` and `n`, 8 partitions.
fn def() -> TableDef {
    TableDef::new(
        "t.orders".parse().unwrap(),
        TableSpec {
            columns: vec![
                Column::parse("region:string!").unwrap(),
                Column::parse("id:int64!").unwrap(),
                Column::parse("v:string").unwrap(),
                Column::parse("n:int64").unwrap(),
            ],
            primary_key: vec!["region".into(), "id".into()],
            buckets: Some(BUCKETS),
            ..TableSpec::default()
        },
    )
    .unwrap()
}

/// The partition of key (`region`, `id`), by the codec.
fn partition_of(codec: &RecordCodec, region: &str, id: i64) -> u32 {
    let line = format!("{{\"region\":\"{region}\",\"id\":{id}}}\n");
    let (parsed, errors) = codec.parse_json_rows(ChangeOp::Delete, line.as_bytes(), 0);
    assert!(errors.is_empty());
    let (keys, errors) = codec.encode_keys(&parsed.batch).unwrap();
    assert!(errors.is_empty());
    keys[0].partition.0
}

fn allowed_partitions(codec: &RecordCodec, text: &str) -> Option<BTreeSet<u32>> {
    let decoded = codec.decoded_schema();
    let filter = RowFilter::parse(text, &decoded).unwrap();
    partitions_for(&filter, codec, &["region".into(), "id".into()], &decoded)
}

#[test]
fn a_filter_pinning_the_whole_key_allows_only_its_partitions() {
    let codec = RecordCodec::new(&def(), "uuid", 0).unwrap();
    let p = |r: &str, id: i64| partition_of(&codec, r, id);
    let set = |keys: &[(&str, i64)]| -> Option<BTreeSet<u32>> {
        Some(keys.iter().map(|(r, id)| p(r, *id)).collect())
    };
    let cases: Vec<(&str, Option<BTreeSet<u32>>)> = vec![
        ("region = 'eu' AND id = 5", set(&[("eu", 5)])),
        ("id = 5 AND region = 'eu'", set(&[("eu", 5)])),
        ("5 = id AND 'eu' = region", set(&[("eu", 5)])),
        (
            "region = 'eu' AND id IN (1, 2, 3)",
            set(&[("eu", 1), ("eu", 2), ("eu", 3)]),
        ),
        (
            "region IN ('eu', 'us') AND (id = 1 OR id = 7)",
            set(&[("eu", 1), ("eu", 7), ("us", 1), ("us", 7)]),
        ),
        (
            "(region = 'eu' AND id = 1) OR (region = 'ap' AND id = 30)",
            set(&[("eu", 1), ("ap", 30)]),
        ),
        // Other columns narrow rows further but not partitions.
        ("region = 'eu' AND id = 5 AND v = 'x'", set(&[("eu", 5)])),
        ("region = 'eu' AND id = 5 AND n > 3", set(&[("eu", 5)])),
        // NULLs never equal anything.
        ("region = 'eu' AND id IN (5, NULL)", set(&[("eu", 5)])),
        // Contradictions allow no key at all.
        ("region = 'eu' AND id = 1 AND id = 2", Some(BTreeSet::new())),
        (
            "region = 'eu' AND id IN (1, 2) AND id IN (3, 4)",
            Some(BTreeSet::new()),
        ),
        // A key value no row has still has its partition.
        (
            "region = 'nowhere' AND id = 123456789",
            set(&[("nowhere", 123_456_789)]),
        ),
        // Not the whole key, not finitely many values, or not the key at all: every partition.
        ("id = 5", None),
        ("region = 'eu'", None),
        ("region = 'eu' AND id > 5", None),
        ("region = 'eu' AND id BETWEEN 1 AND 2", None),
        ("region = 'eu' AND id NOT IN (1, 2)", None),
        ("NOT (region = 'eu' AND id = 5)", None),
        ("(region = 'eu' AND id = 5) OR v = 'x'", None),
        ("region = 'eu' AND id = n", None),
        ("region = 'eu' AND abs(id) = 5", None),
        ("upper(region) = 'EU' AND id = 5", None),
        ("v = 'x'", None),
    ];
    for (text, want) in cases {
        assert_eq!(allowed_partitions(&codec, text), want, "{text}");
    }
}

#[test]
fn an_int32_key_compared_with_integer_literals_still_prunes() {
    let def = TableDef::new(
        "t.small".parse().unwrap(),
        TableSpec {
            columns: vec![
                Column::parse("k:int32!").unwrap(),
                Column::parse("v:string").unwrap(),
            ],
            primary_key: vec!["k".into()],
            buckets: Some(BUCKETS),
            ..TableSpec::default()
        },
    )
    .unwrap();
    let codec = RecordCodec::new(&def, "uuid", 0).unwrap();
    let decoded = codec.decoded_schema();
    let want = |k: i32| {
        let line = format!("{{\"k\":{k}}}\n");
        let (parsed, _) = codec.parse_json_rows(ChangeOp::Delete, line.as_bytes(), 0);
        codec.encode_keys(&parsed.batch).unwrap().0[0].partition.0
    };
    for (text, keys) in [("k = 7", vec![7]), ("k IN (1, 2, 3)", vec![1, 2, 3])] {
        let filter = RowFilter::parse(text, &decoded).unwrap();
        assert_eq!(
            partitions_for(&filter, &codec, &["k".into()], &decoded),
            Some(keys.into_iter().map(want).collect()),
            "{text}: {:?}",
            filter.expr()
        );
    }
}

/// One write of the model, in changelog order within its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    op: &'static str,
    region: String,
    id: i64,
    v: Option<String>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    changelog: Arc<Watched>,
    reader: Reader,
    table: TableName,
    codec: RecordCodec,
    /// Per partition, the changes in offset order.
    model: BTreeMap<u32, Vec<Change>>,
}

/// A small deterministic generator (splitmix64), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `t.orders` with `writes` random upserts and deletes in its changelog (no snapshot).
async fn fixture(seed: u64, writes: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path()))
        .await
        .unwrap();
    let changelog = Arc::new(Watched::default());
    let def = def();
    let table = def.name.clone();
    let state = TableAdmin::new(catalog.clone(), changelog.clone())
        .create_table(&def)
        .await
        .unwrap();
    let loaded = catalog.load(&table).await.unwrap();
    let codec = RecordCodec::new(
        &state.def,
        &loaded.metadata().uuid().to_string(),
        loaded.metadata().current_schema_id(),
    )
    .unwrap();
    let mut rng = Rng(seed);
    let mut model: BTreeMap<u32, Vec<Change>> = BTreeMap::new();
    let mut records: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for i in 0..writes {
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let id = rng.below(IDS as u64) as i64;
        let (op, line, v) = if rng.below(5) == 0 {
            (
                ChangeOp::Delete,
                format!("{{\"region\":\"{region}\",\"id\":{id}}}\n"),
                None,
            )
        } else {
            let v = format!("w{i}");
            (
                ChangeOp::Upsert,
                format!(
                    "{{\"region\":\"{region}\",\"id\":{id},\"v\":\"{v}\",\"n\":{}}}\n",
                    rng.below(100)
                ),
                Some(v),
            )
        };
        let (parsed, errors) = codec.parse_json_rows(op, line.as_bytes(), 0);
        assert!(errors.is_empty());
        let (mut encoded, errors) = codec.encode(op, &parsed.batch, 1).unwrap();
        assert!(errors.is_empty());
        let row = encoded.pop().unwrap();
        records.entry(row.partition.0).or_default().push(row.record);
        model.entry(row.partition.0).or_default().push(Change {
            op: op.as_str(),
            region: region.to_string(),
            id,
            v,
        });
    }
    for (p, records) in records {
        changelog
            .append(&def.changelog.topic, PartitionId(p), records)
            .await
            .unwrap();
    }
    let reader = Reader::new(catalog, changelog.clone());
    Fixture {
        _dir: dir,
        changelog,
        reader,
        table,
        codec,
        model,
    }
}

fn read_of(f: &Fixture, filter: &str, start: StreamStart) -> StreamRead {
    StreamRead {
        table: f.table.clone(),
        columns: Vec::new(),
        filter: Some(filter.to_string()),
        start,
        limit: None,
        partitions: Vec::new(),
        resume: PartitionOffsets::default(),
        subscriber: "test".into(),
    }
}

/// What a filtered STREAM delivered: per key, the changes in order; also the partitions read
/// (by the changelog's count of chunk reads) and the last resume offsets.
struct Got {
    by_key: BTreeMap<(String, i64), Vec<Change>>,
    partitions_read: BTreeSet<u32>,
    stats_partitions: Vec<u32>,
    next_offsets: PartitionOffsets,
}

/// Reads `read` until every record of the partitions it reads was read and nothing more comes.
async fn collect(f: &Fixture, read: &StreamRead) -> Got {
    f.changelog.chunk_reads.lock().unwrap().clear();
    let mut stream = f.reader.stream(read).await.unwrap();
    let stats = stream.stats.clone();
    let total: u64 = stats
        .partitions()
        .iter()
        .map(|p| f.model.get(p).map_or(0, |c| c.len() as u64))
        .sum();
    let mut by_key: BTreeMap<(String, i64), Vec<Change>> = BTreeMap::new();
    let mut next_offsets = stream.as_of.offsets.clone();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.changes.next()).await {
            Ok(Some(change)) => {
                let change = change.unwrap();
                next_offsets = change.next_offsets.clone();
                let b = &change.batch;
                let col = |name: &str| b.column_by_name(name).unwrap().clone();
                let ops = col("_op");
                let ops = ops.as_any().downcast_ref::<StringArray>().unwrap();
                let parts = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
                let regions = col("region");
                let regions = regions.as_any().downcast_ref::<StringArray>().unwrap();
                let ids = col("id");
                let ids = ids.as_any().downcast_ref::<Int64Array>().unwrap();
                let vs = col("v");
                let vs = vs.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    assert!(
                        stats.partitions().contains(&(parts.value(i) as u32)),
                        "a change of a partition not read"
                    );
                    let op = ChangeOp::parse(ops.value(i)).unwrap().as_str();
                    by_key
                        .entry((regions.value(i).to_string(), ids.value(i)))
                        .or_default()
                        .push(Change {
                            op,
                            region: regions.value(i).to_string(),
                            id: ids.value(i),
                            v: vs.is_valid(i).then(|| vs.value(i).to_string()),
                        });
                }
            }
            Ok(None) => panic!("a tail-following stream ended"),
            Err(_) if stats.records_read() >= total => break,
            Err(_) => {}
        }
    }
    assert_eq!(stats.records_read(), total, "records read");
    let delivered: usize = by_key.values().map(Vec::len).sum();
    assert_eq!(stats.rows_delivered(), delivered as u64);
    let partitions_read = f
        .changelog
        .chunk_reads
        .lock()
        .unwrap()
        .keys()
        .copied()
        .collect();
    Got {
        by_key,
        partitions_read,
        stats_partitions: stats.partitions().to_vec(),
        next_offsets,
    }
}

/// The model's changes of the keys `keep` accepts, per key in order.
fn expected(f: &Fixture, keep: impl Fn(&str, i64) -> bool) -> BTreeMap<(String, i64), Vec<Change>> {
    let mut out: BTreeMap<(String, i64), Vec<Change>> = BTreeMap::new();
    for changes in f.model.values() {
        for c in changes.iter().filter(|c| keep(&c.region, c.id)) {
            out.entry((c.region.clone(), c.id))
                .or_default()
                .push(c.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_filtered_stream_reads_only_the_keys_partitions_and_matches_the_model() {
    for seed in [1, 2, 3] {
        let f = fixture(seed, 3_000).await;
        let p = |r: &str, id: i64| partition_of(&f.codec, r, id);
        // Two keys in different partitions, for the OR case.
        let (r2, id2) = (0..IDS)
            .map(|id| ("us", id))
            .find(|(r, id)| p(r, *id) != p("eu", 3))
            .unwrap();
        let cases: Vec<(String, Vec<(&str, i64)>)> = vec![
            ("region = 'eu' AND id = 3".into(), vec![("eu", 3)]),
            (
                format!("(region = 'eu' AND id = 3) OR (region = '{r2}' AND id = {id2})"),
                vec![("eu", 3), (r2, id2)],
            ),
            (
                "region IN ('eu', 'ap') AND id IN (1, 2, 3)".into(),
                vec![
                    ("eu", 1),
                    ("eu", 2),
                    ("eu", 3),
                    ("ap", 1),
                    ("ap", 2),
                    ("ap", 3),
                ],
            ),
            // A key no write ever had: only its partition is read, nothing is delivered.
            ("region = 'eu' AND id = 1000".into(), vec![("eu", 1000)]),
        ];
        for (text, keys) in cases {
            let want_partitions: BTreeSet<u32> = keys.iter().map(|(r, id)| p(r, *id)).collect();
            let got = collect(&f, &read_of(&f, &text, StreamStart::Earliest)).await;
            let want = expected(&f, |r, id| keys.contains(&(r, id)));
            assert_eq!(got.by_key, want, "seed {seed}: {text}");
            assert_eq!(
                got.stats_partitions,
                want_partitions.iter().copied().collect::<Vec<_>>(),
                "seed {seed}: {text}"
            );
            assert_eq!(got.partitions_read, want_partitions, "seed {seed}: {text}");
            // Every partition is in the resume offsets; skipped ones at their start (0).
            assert_eq!(got.next_offsets.0.len(), BUCKETS as usize, "{text}");
            for (part, offset) in &got.next_offsets.0 {
                if !want_partitions.contains(&part.0) {
                    assert_eq!(offset.0, 0, "{text}: skipped partition {part}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_that_do_not_pin_the_key_read_every_partition() {
    let f = fixture(7, 1_500).await;
    let all: BTreeSet<u32> = (0..BUCKETS).collect();
    // A partial key filter (only `id`): exact on every change, including deletes.
    let got = collect(&f, &read_of(&f, "id = 3", StreamStart::Earliest)).await;
    assert_eq!(got.partitions_read, all);
    assert_eq!(got.by_key, expected(&f, |_, id| id == 3));
    // A non-key filter: every partition read; upserts that fail become deletes, deletes pass.
    let got = collect(&f, &read_of(&f, "v = 'w10'", StreamStart::Earliest)).await;
    assert_eq!(got.partitions_read, all);
    assert_eq!(got.stats_partitions.len(), BUCKETS as usize);
    let passing: Vec<&Change> = got
        .by_key
        .values()
        .flatten()
        .filter(|c| c.op == "upsert")
        .collect();
    assert!(passing.iter().all(|c| c.v.as_deref() == Some("w10")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_and_value_filter_prunes_and_stays_exact_for_its_key() {
    let f = fixture(11, 2_000).await;
    let part = partition_of(&f.codec, "us", 5);
    let got = collect(
        &f,
        &read_of(
            &f,
            "region = 'us' AND id = 5 AND n >= 50",
            StreamStart::Earliest,
        ),
    )
    .await;
    assert_eq!(got.partitions_read, BTreeSet::from([part]));
    // For the key itself: upserts with n >= 50 pass, the others turn into deletes.
    let mine = got
        .by_key
        .get(&("us".to_string(), 5))
        .cloned()
        .unwrap_or_default();
    let model = expected(&f, |r, id| r == "us" && id == 5)
        .remove(&("us".to_string(), 5))
        .unwrap_or_default();
    assert_eq!(mine.len(), model.len());
    // Other keys of the same partition only ever show up as deletes.
    for ((r, id), changes) in &got.by_key {
        if (r.as_str(), *id) != ("us", 5) {
            assert!(changes.iter().all(|c| c.op == "delete"), "{r}/{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_start_prunes_the_changelog_part() {
    let f = fixture(5, 1_000).await;
    let part = partition_of(&f.codec, "ap", 9);
    let got = collect(
        &f,
        &read_of(&f, "region = 'ap' AND id = 9", StreamStart::Snapshot(None)),
    )
    .await;
    assert_eq!(got.partitions_read, BTreeSet::from([part]));
    assert_eq!(got.by_key, expected(&f, |r, id| r == "ap" && id == 9));

    // With a partition subset that misses the key's partition nothing is read at all, and the
    // stream stays open (it follows the tail) until dropped.
    let mut read = read_of(&f, "region = 'ap' AND id = 9", StreamStart::Earliest);
    read.partitions = vec![(part + 1) % BUCKETS];
    let got = collect(&f, &read).await;
    assert!(got.partitions_read.is_empty());
    assert!(got.stats_partitions.is_empty());
    assert!(got.by_key.is_empty());
    assert_eq!(
        got.next_offsets.0.keys().map(|p| p.0).collect::<Vec<_>>(),
        vec![(part + 1) % BUCKETS]
    );
}
