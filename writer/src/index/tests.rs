use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

/// Hashes every key to the same value: every lookup is a collision.
#[derive(Default)]
struct Collide;
struct CollideHasher;
impl Hasher for CollideHasher {
    fn finish(&self) -> u64 {
        42
    }
    fn write(&mut self, _: &[u8]) {}
}
impl BuildHasher for Collide {
    type Hasher = CollideHasher;
    fn build_hasher(&self) -> CollideHasher {
        CollideHasher
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn spill_config(dir: &Path, memory_limit: u64) -> Option<SpillConfig> {
    Some(SpillConfig {
        memory_limit,
        dir: dir.to_path_buf(),
        table: "test.t".into(),
    })
}

fn colliding_keys_stay_apart(index: &mut KeyIndex<Collide>) {
    let f = index.file_id("a.parquet", &Struct::empty(), 0);
    for i in 0..2_000u64 {
        let key = format!("{{\"id\":{i:08}}}");
        assert_eq!(
            index
                .insert(key.as_bytes(), RowLocation { file: f, pos: i })
                .unwrap(),
            None
        );
    }
    for i in 0..2_000u64 {
        let key = format!("{{\"id\":{i:08}}}");
        assert_eq!(
            index.get(key.as_bytes()).unwrap(),
            Some(RowLocation { file: f, pos: i })
        );
    }
    // Removing one colliding key leaves its neighbours alone.
    assert_eq!(
        index.remove(b"{\"id\":00000007}").unwrap(),
        Some(RowLocation { file: f, pos: 7 })
    );
    assert_eq!(index.get(b"{\"id\":00000007}").unwrap(), None);
    assert_eq!(
        index.get(b"{\"id\":00000008}").unwrap(),
        Some(RowLocation { file: f, pos: 8 })
    );
    assert_eq!(index.get(b"{\"id\":99999999}").unwrap(), None);
    assert_eq!(index.len(), 1_999);
}

#[test]
fn colliding_hashes_never_confuse_keys() {
    colliding_keys_stay_apart(&mut KeyIndex::with_hasher(Collide));
}

#[test]
fn colliding_hashes_never_confuse_spilled_keys() {
    let dir = tempfile::tempdir().unwrap();
    // Every key is in one shard, whose run has many blocks starting with the same hash.
    // The empty index takes about 27 KiB (its 256 shards).
    let mut index = KeyIndex::with_hasher_and_spill(Collide, spill_config(dir.path(), 48 * 1024));
    colliding_keys_stay_apart(&mut index);
    assert!(index.shards[0].run.as_ref().is_some_and(|r| r.blocks() > 4));
    assert!(index.memory_bytes() <= 48 * 1024);
}

#[test]
fn matches_a_map_model_through_inserts_removes_and_compaction() {
    let mut index = KeyIndex::new();
    let mut model: HashMap<Vec<u8>, RowLocation> = HashMap::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for step in 0..200_000u64 {
        let x = rng.next();
        let key = format!("key-{}", x % 5_000).into_bytes();
        if x.is_multiple_of(3) {
            assert_eq!(
                index.remove(&key).unwrap(),
                model.remove(&key),
                "step {step}"
            );
        } else {
            let file = index.file_id(&format!("f{}.parquet", x % 5), &Struct::empty(), 0);
            let loc = RowLocation { file, pos: step };
            assert_eq!(
                index.insert(&key, loc).unwrap(),
                model.insert(key.clone(), loc)
            );
        }
    }
    assert_eq!(index.len(), model.len());
    for (k, v) in &model {
        assert_eq!(index.get(k).unwrap(), Some(*v));
    }
}

const KEYS: u64 = 100_000;

/// Loads `KEYS` keys, then runs random upserts, removes and gets against a model; checks
/// every answer, the memory limit after every operation (when there is one), and every so
/// often the whole content and the files in use. Returns the most memory the index held.
fn run_against_model(index: &mut KeyIndex) -> usize {
    let mut model: BTreeMap<Vec<u8>, (String, u64)> = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut peak = 0;
    let limit = index.memory_limit().map(|l| l as usize);
    let key_of = |n: u64| format!("{{\"id\":{n}}}").into_bytes();
    let path_of = |n: u64| format!("s3://warehouse/ns/t/data/{n:05}.parquet");
    let check_memory = |index: &KeyIndex, peak: &mut usize| {
        let held = index.memory_bytes();
        *peak = (*peak).max(held);
        if let Some(limit) = limit {
            assert!(held <= limit, "{held} bytes held, limit {limit}");
        }
    };
    let mut step = 0u64;
    let mut upsert = |index: &mut KeyIndex, model: &mut BTreeMap<_, _>, n: u64, f: u64| {
        step += 1;
        let file = index.file_id(&path_of(f), &Struct::empty(), 0);
        let loc = RowLocation { file, pos: step };
        let previous = index.insert(&key_of(n), loc).unwrap();
        let expected = model.insert(key_of(n), (path_of(f), step));
        // Positions are unique (the step), so they name the entry; the previous file may be
        // gone from the registry if this was its last key.
        assert_eq!(
            previous.map(|p| p.pos),
            expected.map(|(_, pos)| pos),
            "upsert of key {n}"
        );
    };
    for n in 0..KEYS {
        upsert(index, &mut model, n, n % 20);
        check_memory(index, &mut peak);
    }
    for round in 0..300_000u64 {
        let x = rng.next();
        let n = (x >> 8) % (KEYS + KEYS / 10);
        match x % 10 {
            0..=4 => upsert(index, &mut model, n, 20 + (x >> 40) % 10),
            5..=6 => {
                let removed = index.remove(&key_of(n)).unwrap();
                let expected = model.remove(&key_of(n));
                assert_eq!(removed.is_some(), expected.is_some(), "remove of key {n}");
                if let (Some(r), Some((_, pos))) = (removed, expected) {
                    assert_eq!(r.pos, pos, "remove of key {n}");
                }
            }
            _ => {
                let got = index.get(&key_of(n)).unwrap();
                let expected = model.get(&key_of(n));
                assert_eq!(
                    got.map(|g| (index.file(g.file).unwrap().path.to_string(), g.pos)),
                    expected.cloned(),
                    "get of key {n}"
                );
            }
        }
        check_memory(index, &mut peak);
        if round % 100_000 == 99_999 {
            assert_matches_model(index, &model);
        }
    }
    assert_matches_model(index, &model);
    peak
}

fn assert_matches_model(index: &KeyIndex, model: &BTreeMap<Vec<u8>, (String, u64)>) {
    assert_eq!(index.len(), model.len());
    let mut seen = BTreeMap::new();
    index
        .for_each(|key, loc| {
            let path = index.file(loc.file).unwrap().path.to_string();
            assert!(
                seen.insert(key.to_vec(), (path, loc.pos)).is_none(),
                "for_each yielded a key twice"
            );
        })
        .unwrap();
    assert!(seen == *model, "for_each differs from the model");
    let in_use: BTreeSet<String> = index.files_in_use().map(|f| f.path.to_string()).collect();
    let want: BTreeSet<String> = model.values().map(|(path, _)| path.clone()).collect();
    assert_eq!(in_use, want);
}

#[test]
fn a_spilling_index_matches_a_model_at_a_tenth_of_its_memory() {
    let unlimited_peak = run_against_model(&mut KeyIndex::new());
    let limit = unlimited_peak as u64 / 10;
    let dir = tempfile::tempdir().unwrap();
    let mut index = KeyIndex::with_spill(spill_config(dir.path(), limit));
    let peak = run_against_model(&mut index);
    assert!(peak <= limit as usize);
    // Every shard spilled, and overlays were merged into new runs many times over.
    assert!(
        index.spills() > 4 * SHARDS as u64,
        "{} spills",
        index.spills()
    );
    assert!(index.shards.iter().all(|s| s.run.is_some()));
    // Replaced runs were reclaimed: the file is near the size of the live entries (about 23
    // bytes each), not of every run ever written.
    assert!(index.spilled_bytes() > 0);
    assert!(
        index.spilled_bytes() < 3 * 23 * index.len() as u64 + (2 << 20),
        "{} bytes spilled",
        index.spilled_bytes()
    );
    // The spill file is unlinked: nothing is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_spill_that_cannot_write_fails_without_losing_the_change() {
    let dir = tempfile::tempdir().unwrap();
    // The spill directory cannot be created: a file is in the way.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let mut index = KeyIndex::with_spill(spill_config(&blocked.join("spill"), 64 * 1024));
    let file = index.file_id("a.parquet", &Struct::empty(), 0);
    let mut failed = None;
    for pos in 0..10_000u64 {
        let key = format!("k{pos}");
        if let Err(e) = index.insert(key.as_bytes(), RowLocation { file, pos }) {
            failed = Some((pos, e));
            break;
        }
    }
    let (last, error) = failed.expect("the index never spilled");
    assert!(last > 100, "the first spill came at insert {last}");
    assert!(
        matches!(&error, IndexError::SpillIo { path, .. } if path.starts_with(&blocked)),
        "{error}"
    );
    assert!(error.to_string().contains("--index-spill-dir"), "{error}");
    // Every insert so far, the failed one included, is still answered from memory.
    for pos in 0..=last {
        let key = format!("k{pos}");
        assert_eq!(
            index.get(key.as_bytes()).unwrap(),
            Some(RowLocation { file, pos })
        );
    }
    assert_eq!(index.len() as u64, last + 1);
}

#[test]
fn a_reserved_index_loads_without_growing_and_a_spilling_one_reserves_within_its_limit() {
    // Enough keys per shard (about 3,900) for the reservation's margin to stay small.
    let keys: Vec<String> = (0..1_000_000u64).map(|i| format!("key-{i:09}")).collect();
    let key_bytes: usize = keys.iter().map(String::len).sum();
    let mut index = KeyIndex::new();
    let f = index.file_id("a.parquet", &Struct::empty(), 0);
    index.reserve(keys.len(), key_bytes);
    let reserved = index.memory_bytes();
    for (pos, key) in keys.iter().enumerate() {
        let at = RowLocation {
            file: f,
            pos: pos as u64,
        };
        assert_eq!(index.insert(key.as_bytes(), at).unwrap(), None);
    }
    // Nothing grew (no shard rehashed or copied its arena), and every key is found.
    assert_eq!(index.memory_bytes(), reserved);
    assert_eq!(index.len(), keys.len());
    for (pos, key) in keys.iter().enumerate().step_by(9973) {
        assert_eq!(
            index.get(key.as_bytes()).unwrap().map(|l| l.pos),
            Some(pos as u64)
        );
    }
    // Unreserved, the same load grows step by step (doubling) and ends about as large: the
    // reservation costs little memory beyond what the load needs anyway.
    let mut grown = KeyIndex::new();
    let g = grown.file_id("a.parquet", &Struct::empty(), 0);
    for (pos, key) in keys.iter().enumerate() {
        let at = RowLocation {
            file: g,
            pos: pos as u64,
        };
        grown.insert(key.as_bytes(), at).unwrap();
    }
    assert!(
        reserved <= grown.memory_bytes() / 10 * 11,
        "reserved {reserved} B, grown {} B",
        grown.memory_bytes()
    );

    // An index that spills does not reserve past its limit.
    let dir = tempfile::tempdir().unwrap();
    let mut small = KeyIndex::with_spill(spill_config(dir.path(), 1 << 20));
    let before = small.memory_bytes();
    small.reserve(keys.len(), key_bytes);
    assert_eq!(small.memory_bytes(), before);
    small.reserve(1_000, 10_000);
    assert!(small.memory_bytes() > before && small.memory_bytes() <= 1 << 20);
}

/// Entries for the bulk-insert tests: 200,000 keys, a tenth of them twice (the second in a
/// later file), over 8 files, in one fixed order. Positions are unique, so they name entries.
fn bulk_entries() -> Vec<(Vec<u8>, u64, u64)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut entries: Vec<(Vec<u8>, u64, u64)> = Vec::new();
    for pos in 0..200_000u64 {
        let n = rng.next() % 180_000;
        entries.push((format!("{{\"id\":{n}}}").into_bytes(), pos % 8, pos));
    }
    entries
}

/// Loads [`bulk_entries`] (after a few keys inserted one by one, some of which the bulk
/// replaces) into `index` with `threads` threads; checks every key, the replaced rows and the
/// files in use against a map that applied the same entries in order.
fn bulk_insert_matches_the_model(mut index: KeyIndex, threads: usize) -> KeyIndex {
    let path_of = |f: u64| format!("s3://warehouse/ns/t/data/{f:05}.parquet");
    let mut model: BTreeMap<Vec<u8>, (String, u64)> = BTreeMap::new();
    // File 9 holds keys before the bulk: those the bulk names again are replaced, and file 9
    // (whose every key is replaced) leaves the files in use.
    let early = index.file_id(&path_of(9), &Struct::empty(), 0);
    for n in [3u64, 5, 170_001, 179_999] {
        let key = format!("{{\"id\":{n}}}").into_bytes();
        let pos = 1_000_000 + n;
        index
            .insert(&key, RowLocation { file: early, pos })
            .unwrap();
        model.insert(key, (path_of(9), pos));
    }
    let entries = bulk_entries();
    let ids: Vec<FileId> = (0..8)
        .map(|f| index.file_id(&path_of(f), &Struct::empty(), 0))
        .collect();
    let mut want_replaced = BTreeSet::new();
    for (key, f, pos) in &entries {
        if let Some((path, old)) = model.insert(key.clone(), (path_of(*f), *pos)) {
            want_replaced.insert((path, old));
        }
    }
    let replaced = index
        .insert_many(threads, |sink| {
            for (key, f, pos) in &entries {
                sink(
                    key,
                    RowLocation {
                        file: ids[*f as usize],
                        pos: *pos,
                    },
                );
            }
        })
        .unwrap();
    let replaced: BTreeSet<(String, u64)> = replaced
        .into_iter()
        .map(|(file, pos)| (file.path.to_string(), pos))
        .collect();
    assert_eq!(replaced, want_replaced, "{threads} threads");
    assert_matches_model(&index, &model);
    // The index still takes single inserts and removes afterwards.
    let key = b"{\"id\":3}";
    assert!(index.remove(key).unwrap().is_some());
    model.remove(key.as_slice());
    assert_matches_model(&index, &model);
    index
}

#[test]
fn a_bulk_insert_on_several_threads_equals_inserting_in_order() {
    for threads in [1, 2, 3, 8] {
        bulk_insert_matches_the_model(KeyIndex::new(), threads);
    }
    // An index that spills inserts on the calling thread once a shard has spilled; the result
    // is the same.
    let dir = tempfile::tempdir().unwrap();
    let index = KeyIndex::with_spill(spill_config(dir.path(), 1 << 20));
    let index = bulk_insert_matches_the_model(index, 4);
    assert!(index.spills() > 0);
    assert!(index.memory_bytes() <= 1 << 20);
}
