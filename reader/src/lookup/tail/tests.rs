//! The tail's columnar chunks against a model of the latest change per key, through runs of
//! every size (one-record reads make small chunks that get merged; overwrites make garbage that
//! gets merged) and prunes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, StringArray};
use arrow::datatypes::Int64Type;
use unitable_core::changelog::StoredRecord;

use super::*;

const IDS: u64 = 3_000;

fn codec() -> RecordCodec {
    crate::testing::codec(&crate::testing::kv_table(1))
}

fn key(codec: &RecordCodec, id: i64) -> Bytes {
    let batch = RecordBatch::try_new(
        codec.arrow_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ],
    )
    .unwrap();
    codec.encode_keys(&batch).unwrap().0.remove(0).key
}

fn record(codec: &RecordCodec, offset: u64, id: i64, v: Option<&str>) -> StoredRecord {
    let batch = RecordBatch::try_new(
        codec.arrow_schema(),
        vec![
            Arc::new(Int64Array::from(vec![id])),
            Arc::new(StringArray::from(vec![v])),
        ],
    )
    .unwrap();
    let op = if v.is_some() {
        ChangeOp::Upsert
    } else {
        ChangeOp::Delete
    };
    let (mut rows, errors) = codec.encode(op, &batch, 0).unwrap();
    assert!(errors.is_empty());
    StoredRecord {
        offset: Offset(offset as i64),
        record: rows.remove(0).record,
    }
}

/// The latest change per id: (offset, value; `None` a delete).
type Model = BTreeMap<i64, (u64, Option<String>)>;

fn check(tail: &PartitionTail, codec: &RecordCodec, model: &Model, next: u64, largest_run: usize) {
    assert_eq!(tail.consumed(), Offset(next as i64));
    assert_eq!(tail.len(), model.len());
    for id in 0..IDS as i64 {
        let k = key(codec, id);
        let offset = tail.lock().slots.get(&k).map(|s| s.offset.0 as u64);
        let got = tail.get(&k).map(|e| {
            let v = e.row.map(|row| {
                assert_eq!(row.num_rows(), 1);
                assert_eq!(row.column(0).as_primitive::<Int64Type>().value(0), id);
                row.column(1).as_string::<i32>().value(0).to_string()
            });
            (offset.unwrap(), v)
        });
        assert_eq!(got.as_ref(), model.get(&id), "id {id}");
    }
    // A copy: every key, and the live rows in changelog order.
    let (mut keys, mut rows): (Vec<Bytes>, _) = (Vec::new(), Vec::new());
    assert_eq!(
        tail.copy_into(|k| keys.push(k.clone()), &mut rows).unwrap(),
        Offset(next as i64)
    );
    keys.sort();
    let mut want_keys: Vec<Bytes> = model.keys().map(|&id| key(codec, id)).collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    let mut want_live: Vec<(u64, i64, String)> = model
        .iter()
        .filter_map(|(&id, (o, v))| Some((*o, id, v.clone()?)))
        .collect();
    want_live.sort();
    let got_live: Vec<(i64, String)> = rows
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_primitive::<Int64Type>().clone();
            let vs = b.column(1).as_string::<i32>().clone();
            (0..b.num_rows()).map(move |i| (ids.value(i), vs.value(i).to_string()))
        })
        .collect();
    assert!(rows.len() <= 1, "one batch per partition");
    assert_eq!(
        got_live,
        want_live
            .into_iter()
            .map(|(_, id, v)| (id, v))
            .collect::<Vec<_>>()
    );
    // What changed since an earlier offset: exactly the keys whose latest change is at or
    // after it, and their live rows in changelog order.
    for from in [0, next / 3, next.saturating_sub(5), next] {
        let (mut keys, mut rows): (Vec<Bytes>, _) = (Vec::new(), Vec::new());
        let covered = tail
            .copy_since(Offset(from as i64), |k| keys.push(k.clone()), &mut rows)
            .unwrap();
        assert_eq!(covered, Offset(next as i64));
        keys.sort();
        let mut want: Vec<Bytes> = model
            .iter()
            .filter(|(_, (o, _))| *o >= from)
            .map(|(&id, _)| key(codec, id))
            .collect();
        want.sort();
        assert_eq!(keys, want, "keys changed since {from}");
        let mut want_live: Vec<(u64, i64)> = model
            .iter()
            .filter(|(_, (o, v))| *o >= from && v.is_some())
            .map(|(&id, (o, _))| (*o, id))
            .collect();
        want_live.sort();
        let got: Vec<i64> = rows
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(
            got,
            want_live.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
            "live rows changed since {from}"
        );
    }
    // The books: live rows, held rows and bytes match the chunks; memory stays bounded.
    let entries = tail.lock();
    let chunks: Vec<&Chunk> = entries.chunks.iter().flatten().collect();
    let live_slots = entries.slots.values().filter(|s| s.row.is_some()).count();
    assert_eq!(entries.live_rows, live_slots);
    assert_eq!(chunks.iter().map(|c| c.live).sum::<usize>(), live_slots);
    assert!(
        chunks.iter().all(|c| c.live > 0),
        "a chunk no slot uses is kept"
    );
    assert_eq!(
        entries.held_rows,
        chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>()
    );
    let key_bytes: usize = entries.slots.keys().map(|k| KEY_OVERHEAD + k.len()).sum();
    assert_eq!(
        entries.bytes,
        key_bytes + chunks.iter().map(|c| c.bytes).sum::<usize>()
    );
    assert_eq!(tail.bytes(), entries.bytes);
    assert!(
        entries.held_rows <= 2 * entries.live_rows + GARBAGE_SLACK_ROWS + largest_run,
        "{} rows held for {} live",
        entries.held_rows,
        entries.live_rows
    );
    let small = chunks
        .iter()
        .filter(|c| c.batch.num_rows() < SMALL_CHUNK_ROWS)
        .count();
    assert!(small <= MAX_SMALL_CHUNKS + 1, "{small} small chunks");
}

#[test]
fn chunks_follow_the_model_through_runs_overwrites_deletes_and_prunes() {
    let codec = codec();
    let tail = PartitionTail::new(Offset(0));
    let mut model = Model::new();
    let mut next = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let sizes = [1, 1, 1, 2, 7, 64, 900, 2_500];
    let largest_run = *sizes.iter().max().unwrap();
    for round in 0..400 {
        let size = sizes[rand(sizes.len() as u64) as usize];
        let mut records = Vec::with_capacity(size);
        for _ in 0..size {
            // Hot ids now and then, so runs overwrite their own rows too.
            let id = if rand(4) == 0 { rand(20) } else { rand(IDS) } as i64;
            let v = (rand(5) != 0).then(|| format!("v{next}"));
            records.push(record(&codec, next, id, v.as_deref()));
            model.insert(id, (next, v));
            next += 1;
        }
        tail.apply(&codec, &records, "t.kv");
        if round % 37 == 36 {
            let below = next - rand(next / 2 + 1);
            let mut deletes = Vec::new();
            tail.prune_below(Offset(below as i64), |k| {
                deletes.push(Bytes::copy_from_slice(k))
            });
            let mut want_deletes = Vec::new();
            model.retain(|&id, (o, v)| {
                if *o >= below {
                    return true;
                }
                if v.is_none() {
                    want_deletes.push(key(&codec, id));
                }
                false
            });
            deletes.sort();
            want_deletes.sort();
            assert_eq!(deletes, want_deletes, "round {round}");
        }
        if round % 20 == 0 || round > 390 {
            check(&tail, &codec, &model, next, largest_run);
        }
    }
    // Everything pruned: nothing held.
    tail.prune_below(Offset(next as i64), |_| {});
    model.clear();
    check(&tail, &codec, &model, next, largest_run);
    assert_eq!(tail.bytes(), 0);
}

#[test]
fn a_bad_record_in_a_read_skips_only_itself() {
    let codec = codec();
    let tail = PartitionTail::new(Offset(0));
    let mut records = vec![record(&codec, 0, 1, Some("a"))];
    records.push(StoredRecord {
        offset: Offset(1),
        record: unitable_core::changelog::ChangeRecord {
            key: Some(Bytes::from_static(br#"{"id":2}"#)),
            value: Some(Bytes::from_static(b"{not json")),
            headers: records[0].record.headers.clone(),
            timestamp_ms: 0,
        },
    });
    records.push(record(&codec, 2, 3, Some("c")));
    tail.apply(&codec, &records, "t.kv");
    let model = Model::from([(1, (0, Some("a".into()))), (3, (2, Some("c".into())))]);
    check(&tail, &codec, &model, 3, 3);
    assert!(tail.get(&key(&codec, 2)).is_none());
}

#[test]
fn a_run_whose_first_rows_are_deleted_within_it_keeps_its_later_rows() {
    let codec = codec();
    let tail = PartitionTail::new(Offset(0));
    let records = [
        record(&codec, 0, 1, Some("a")),
        record(&codec, 1, 1, None),
        record(&codec, 2, 2, Some("b")),
        record(&codec, 3, 3, Some("c")),
    ];
    tail.apply(&codec, &records, "t.kv");
    // The next run's chunk must not take the number of a chunk still in use.
    tail.apply(&codec, &[record(&codec, 4, 4, Some("d"))], "t.kv");
    let model = Model::from([
        (1, (1, None)),
        (2, (2, Some("b".into()))),
        (3, (3, Some("c".into()))),
        (4, (4, Some("d".into()))),
    ]);
    check(&tail, &codec, &model, 5, 4);
}
