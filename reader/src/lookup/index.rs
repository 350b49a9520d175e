//! The lookup index: canonical key bytes -> where the key's live row is in a base snapshot.
//!
//! Built for memory first, since it holds every live key of a table: a 16-byte slot per key
//! (arena offset and length packed into one `u64`, a 32-bit file id, a 32-bit row position)
//! in an open-addressing table with one control byte per bucket, plus the key bytes themselves
//! in one arena. Keys are compared in full, so colliding hashes are two entries. Removed keys
//! leave dead bytes in the arena, reclaimed when they outgrow the live ones.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A data file of the base snapshot, by a small id (see `state::Files`).
pub(crate) type FileId = u32;

/// Where a key's live row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowLocation {
    /// The data file.
    pub(crate) file: FileId,
    /// The row's position in it.
    pub(crate) pos: u32,
}

/// Longest key the index stores (canonical JSON of the key columns).
pub(crate) const MAX_KEY_BYTES: usize = u16::MAX as usize;
const LEN_BITS: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// `start << 16 | len` into the arena.
    key: u64,
    file: FileId,
    pos: u32,
}

impl Slot {
    fn range(&self) -> std::ops::Range<usize> {
        let start = (self.key >> LEN_BITS) as usize;
        start..start + (self.key & ((1 << LEN_BITS) - 1)) as usize
    }
}

/// Key bytes -> row location.
#[derive(Debug)]
pub(crate) struct KeyIndex<S = foldhash::fast::RandomState> {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    dead_bytes: usize,
    hasher: S,
}

impl KeyIndex {
    pub(crate) fn new() -> Self {
        Self::with_hasher(foldhash::fast::RandomState::default())
    }
}

impl<S: BuildHasher> KeyIndex<S> {
    pub(crate) fn with_hasher(hasher: S) -> Self {
        Self {
            table: HashTable::new(),
            arena: Vec::new(),
            dead_bytes: 0,
            hasher,
        }
    }

    /// Live keys.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes allocated by the index (slots, control bytes, arena).
    pub(crate) fn allocated_bytes(&self) -> usize {
        let buckets = if self.table.capacity() == 0 {
            0
        } else {
            (self.table.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<Slot>() + 1) + self.arena.capacity()
    }

    /// The location of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<RowLocation> {
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        self.table
            .find(hash, |s| &arena[s.range()] == key)
            .map(|s| RowLocation {
                file: s.file,
                pos: s.pos,
            })
    }

    /// Sets the location of `key` (a key longer than [`MAX_KEY_BYTES`] is the caller's to
    /// refuse; it is truncated here never, but refused with `false`).
    pub(crate) fn insert(&mut self, key: &[u8], location: RowLocation) -> bool {
        if key.len() > MAX_KEY_BYTES {
            return false;
        }
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        if let Some(slot) = self.table.find_mut(hash, |s| &arena[s.range()] == key) {
            slot.file = location.file;
            slot.pos = location.pos;
            return true;
        }
        let start = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        let slot = Slot {
            key: start << LEN_BITS | key.len() as u64,
            file: location.file,
            pos: location.pos,
        };
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .insert_unique(hash, slot, |s| hasher.hash_one(&arena[s.range()]));
        true
    }

    /// Removes `key`; returns where it was.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<RowLocation> {
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        let entry = self
            .table
            .find_entry(hash, |s| &arena[s.range()] == key)
            .ok()?;
        let (slot, _) = entry.remove();
        self.dead_bytes += slot.range().len();
        if self.dead_bytes > 1 << 20 && self.dead_bytes > self.arena.len() / 2 {
            self.compact_arena();
        }
        Some(RowLocation {
            file: slot.file,
            pos: slot.pos,
        })
    }

    /// Copies the live keys into a new arena.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.dead_bytes);
        for slot in self.table.iter_mut() {
            let range = slot.range();
            let start = arena.len() as u64;
            arena.extend_from_slice(&self.arena[range.clone()]);
            slot.key = start << LEN_BITS | range.len() as u64;
        }
        self.arena = arena;
        self.dead_bytes = 0;
    }

    /// Frees spare capacity after a bulk build.
    pub(crate) fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .shrink_to_fit(|s| hasher.hash_one(&arena[s.range()]));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::hash::{BuildHasherDefault, Hasher};

    use super::*;

    /// Sends every key to the same hash: every lookup goes through full key comparison.
    #[derive(Default)]
    struct Collide;
    impl Hasher for Collide {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    fn key(n: u64) -> Vec<u8> {
        format!("{{\"id\":{n}}}").into_bytes()
    }

    /// A small xorshift so the test needs no dependency and is reproducible.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn check_against_model<S: BuildHasher>(mut index: KeyIndex<S>, ops: usize, keys: u64) {
        let mut model: BTreeMap<Vec<u8>, RowLocation> = BTreeMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..ops {
            let k = key(next(&mut rng) % keys);
            if next(&mut rng).is_multiple_of(3) {
                assert_eq!(index.remove(&k), model.remove(&k));
            } else {
                let at = RowLocation {
                    file: (i % 17) as u32,
                    pos: i as u32,
                };
                assert!(index.insert(&k, at));
                model.insert(k, at);
            }
            assert_eq!(index.len(), model.len());
        }
        for n in 0..keys {
            let k = key(n);
            assert_eq!(index.get(&k), model.get(&k).copied(), "key {n}");
        }
    }

    #[test]
    fn matches_a_map_model() {
        check_against_model(KeyIndex::new(), 200_000, 5_000);
    }

    #[test]
    fn colliding_hashes_stay_separate_keys() {
        check_against_model(
            KeyIndex::with_hasher(BuildHasherDefault::<Collide>::default()),
            3_000,
            300,
        );
    }

    #[test]
    fn arena_compaction_keeps_every_live_key() {
        let mut index = KeyIndex::new();
        for n in 0..200_000 {
            index.insert(
                &key(n),
                RowLocation {
                    file: 1,
                    pos: n as u32,
                },
            );
        }
        for n in (0..200_000u64).filter(|n| !n.is_multiple_of(10)) {
            assert!(index.remove(&key(n)).is_some());
        }
        assert!(index.arena.len() < 200_000 * 8, "the arena was compacted");
        for n in 0..200_000u64 {
            let want = n.is_multiple_of(10).then_some(RowLocation {
                file: 1,
                pos: n as u32,
            });
            assert_eq!(index.get(&key(n)), want);
        }
        index.shrink();
        assert_eq!(index.len(), 20_000);
    }

    #[test]
    fn oversized_keys_are_refused() {
        let mut index = KeyIndex::new();
        let long = vec![b'x'; MAX_KEY_BYTES + 1];
        assert!(!index.insert(&long, RowLocation { file: 0, pos: 0 }));
        assert_eq!(index.get(&long), None);
    }
}
