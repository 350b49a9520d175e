//! As-of lookups on a changelog with out-of-order timestamps (set here record by record, which
//! a server's writer cannot be made to do), against a model of the prefix rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use unitable_core::changelog::MemoryChangelog;
use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::TableDef;

use super::LookupAsOf;
use crate::Reader;
use crate::error::ReadError;
use crate::lookup::{LookupKeys, LookupRequest, LookupResponse};

const BUCKETS: u32 = 3;
const IDS: i64 = 12;

fn def() -> TableDef {
    crate::testing::kv_table(BUCKETS)
}

/// One record as the model keeps it.
#[derive(Debug, Clone)]
struct Rec {
    timestamp_ms: i64,
    id: i64,
    v: Option<String>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    reader: Reader,
    table: TableName,
    codec: RecordCodec,
    changelog: Arc<MemoryChangelog>,
    log: BTreeMap<u32, Vec<Rec>>,
}

impl Fixture {
    async fn new() -> Self {
        let changelog = Arc::new(MemoryChangelog::new());
        let def = def();
        let (dir, catalog, codec) = crate::testing::create(&def, changelog.clone()).await;
        Fixture {
            _dir: dir,
            reader: Reader::new(catalog, changelog.clone()),
            table: def.name,
            codec,
            changelog,
            log: BTreeMap::new(),
        }
    }

    /// Appends one change of `id` stamped `timestamp_ms` (`None`: a delete).
    async fn write(&mut self, id: i64, v: Option<&str>, timestamp_ms: i64) {
        let (op, line) = match v {
            Some(v) => (ChangeOp::Upsert, format!("{{\"id\":{id},\"v\":\"{v}\"}}\n")),
            None => (ChangeOp::Delete, format!("{{\"id\":{id}}}\n")),
        };
        let topic = def().changelog.topic;
        let partition = crate::testing::append_line(
            &self.codec,
            &*self.changelog,
            &topic,
            op,
            &line,
            timestamp_ms,
        )
        .await;
        self.log.entry(partition.0).or_default().push(Rec {
            timestamp_ms,
            id,
            v: v.map(str::to_string),
        });
    }

    fn partition_of(&self, id: i64) -> u32 {
        let line = format!("{{\"id\":{id}}}\n");
        let (parsed, _) = self
            .codec
            .parse_json_rows(ChangeOp::Delete, line.as_bytes(), 0);
        self.codec.encode_keys(&parsed.batch).unwrap().0[0]
            .partition
            .0
    }

    /// The model: each partition up to its first record stamped after `t`.
    fn ends_at(&self, t: i64) -> BTreeMap<u32, i64> {
        (0..BUCKETS)
            .map(|p| {
                let records = self.log.get(&p).map_or(&[][..], Vec::as_slice);
                let end = records
                    .iter()
                    .position(|r| r.timestamp_ms > t)
                    .unwrap_or(records.len());
                (p, end as i64)
            })
            .collect()
    }

    fn value_at(&self, id: i64, ends: &BTreeMap<u32, i64>) -> Option<String> {
        let p = self.partition_of(id);
        let records = self.log.get(&p).map_or(&[][..], Vec::as_slice);
        records
            .iter()
            .take(ends[&p] as usize)
            .rfind(|r| r.id == id)
            .and_then(|r| r.v.clone())
    }

    async fn lookup(&self, ids: &[i64], at: LookupAsOf) -> Result<LookupResponse, ReadError> {
        let lines: Vec<String> = ids.iter().map(|id| format!("{{\"id\":{id}}}")).collect();
        self.reader
            .lookup(&LookupRequest {
                table: self.table.clone(),
                keys: LookupKeys::JsonLines(lines.join("\n").into_bytes()),
                columns: Vec::new(),
                as_of: Some(at),
                max_staleness: None,
            })
            .await
    }

    /// Checks one answer against the model at `ends`.
    fn check(&self, ids: &[i64], ends: &BTreeMap<u32, i64>, got: &LookupResponse, what: &str) {
        let ids_col = got
            .rows
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let vs = got
            .rows
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let rows: Vec<(i64, String)> = (0..got.rows.num_rows())
            .map(|i| (ids_col.value(i), vs.value(i).to_string()))
            .collect();
        let mut want = Vec::new();
        let mut want_missing = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.value_at(*id, ends) {
                Some(v) => want.push((*id, v)),
                None => want_missing.push(i as u32),
            }
        }
        assert_eq!(rows, want, "{what}: rows");
        assert_eq!(got.missing, want_missing, "{what}: missing");
        let partitions: std::collections::BTreeSet<u32> =
            ids.iter().map(|id| self.partition_of(*id)).collect();
        let want_offsets = PartitionOffsets(
            partitions
                .iter()
                .map(|p| (PartitionId(*p), Offset(ends[p])))
                .collect(),
        );
        assert_eq!(got.as_of.offsets, want_offsets, "{what}: as_of offsets");
        assert_eq!(got.as_of.snapshot_id, None, "{what}: nothing committed");
    }
}

#[tokio::test]
async fn a_record_stamped_before_an_earlier_later_stamped_one_counts_only_after_it() {
    let mut f = Fixture::new().await;
    // One key, timestamps 10, 30, 20, 40 in offset order.
    f.write(1, Some("a"), 10).await;
    f.write(1, Some("b"), 30).await;
    f.write(1, Some("c"), 20).await;
    f.write(1, Some("d"), 40).await;
    let value = |got: &LookupResponse| {
        (got.rows.num_rows() == 1).then(|| {
            got.rows
                .column_by_name("v")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0)
                .to_string()
        })
    };
    for (t, want) in [
        (i64::MIN, None),
        (-40, None),
        (9, None),
        (10, Some("a")),
        // "c" is stamped 20 but follows "b" (30): not before 30.
        (25, Some("a")),
        (29, Some("a")),
        (30, Some("c")),
        (39, Some("c")),
        (40, Some("d")),
        (i64::MAX, Some("d")),
    ] {
        let got = f.lookup(&[1], LookupAsOf::Timestamp(t)).await.unwrap();
        assert_eq!(value(&got).as_deref(), want, "as of {t}");
    }
}

#[tokio::test]
async fn random_disordered_timestamps_match_the_prefix_model() {
    let mut f = Fixture::new().await;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // Timestamps drift upwards with jitter, so many records are older than one before them.
    for i in 0..300i64 {
        let id = below(IDS as u64) as i64;
        let ts = 1_000 + i * 2 + below(15) as i64 - 7;
        let v = (below(4) != 0).then(|| format!("w{i}"));
        f.write(id, v.as_deref(), ts).await;
    }
    let disordered: usize = f
        .log
        .values()
        .map(|r| {
            r.windows(2)
                .filter(|w| w[1].timestamp_ms < w[0].timestamp_ms)
                .count()
        })
        .sum();
    assert!(disordered > 20, "only {disordered} out-of-order records");
    let heads: BTreeMap<u32, i64> = (0..BUCKETS)
        .map(|p| (p, f.log.get(&p).map_or(0, |r| r.len() as i64)))
        .collect();
    for step in 0..200 {
        let ids: Vec<i64> = (0..1 + below(8))
            .map(|_| below(IDS as u64 + 2) as i64)
            .collect();
        if step % 2 == 0 {
            let t = 990 + below(640) as i64;
            let got = f.lookup(&ids, LookupAsOf::Timestamp(t)).await.unwrap();
            f.check(&ids, &f.ends_at(t), &got, &format!("as of {t}"));
        } else {
            let ends: BTreeMap<u32, i64> = heads
                .iter()
                .map(|(p, h)| (*p, below(*h as u64 + 1) as i64))
                .collect();
            let offsets = PartitionOffsets(
                ends.iter()
                    .map(|(p, o)| (PartitionId(*p), Offset(*o)))
                    .collect(),
            );
            let got = f.lookup(&ids, LookupAsOf::Offsets(offsets)).await.unwrap();
            f.check(&ids, &ends, &got, &format!("as of {ends:?}"));
        }
    }
}

#[tokio::test]
async fn instants_whose_records_retention_removed_are_out_of_range() {
    let mut f = Fixture::new().await;
    for (i, ts) in [10, 20, 30, 40, 50].into_iter().enumerate() {
        f.write(1, Some(&format!("v{i}")), ts).await;
    }
    let p = PartitionId(f.partition_of(1));
    let topic = def().changelog.topic;
    f.changelog.remove_before(&topic, p, Offset(2)).unwrap();
    let unavailable = |r: Result<LookupResponse, ReadError>| match r {
        Err(ReadError::AsOfUnavailable { partition, .. }) => partition == p.0,
        other => panic!("expected AsOfUnavailable, got {other:?}"),
    };
    // Offset 1 and the time 15 lie in the removed records: no snapshot covers them.
    let one = PartitionOffsets([(p, Offset(1))].into_iter().collect());
    assert!(unavailable(f.lookup(&[1], LookupAsOf::Offsets(one)).await));
    assert!(unavailable(f.lookup(&[1], LookupAsOf::Timestamp(15)).await));
    // Before the first retained record (stamped 30), where the instant fell is unknown.
    assert!(unavailable(f.lookup(&[1], LookupAsOf::Timestamp(25)).await));
    // The retained range alone cannot answer either: the key's value before it is gone.
    let four = PartitionOffsets([(p, Offset(4))].into_iter().collect());
    assert!(unavailable(f.lookup(&[1], LookupAsOf::Offsets(four)).await));
    // An instant at the low watermark with nothing needed before it: offset 0 is "before
    // everything" only while offset 0 is kept, so offsets 2 (the low watermark) fail too.
    let two = PartitionOffsets([(p, Offset(2))].into_iter().collect());
    assert!(unavailable(f.lookup(&[1], LookupAsOf::Offsets(two)).await));
}
