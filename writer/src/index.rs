//! The primary-key index: every live key of a table -> the data file and row position that hold
//! its current row.
//!
//! The committer uses it to turn an upsert or delete of a key into a position delete of the
//! key's previous row. Keys are the canonical key bytes of the changelog records, stored whole
//! in one arena, so a lookup compares full keys: two keys whose hashes collide are two entries,
//! and a collision can never delete the wrong row. Per key the index costs the key bytes plus a
//! 20-byte slot and the hash table's control byte (see `bytes_per_key` in the writer bench).
//! Removed keys leave dead bytes in the arena; it is compacted when they are the majority.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use iceberg::spec::Struct;

/// A data file the index points into, by a small id.
pub type FileId = u32;

/// Where a key's current row lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLocation {
    /// The data file (see [`KeyIndex::file`]).
    pub file: FileId,
    /// The row's position in it.
    pub pos: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key_start: u64,
    key_len: u32,
    file: FileId,
    pos: u64,
}

/// Key bytes -> row location. `S` hashes keys (tests use a degenerate one to force
/// collisions).
#[derive(Debug)]
pub struct KeyIndex<S = foldhash::fast::RandomState> {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    dead_bytes: usize,
    files: Vec<Option<IndexedFile>>,
    file_ids: std::collections::HashMap<Arc<str>, FileId>,
    free_files: Vec<FileId>,
    hasher: S,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self::with_hasher(foldhash::fast::RandomState::default())
    }
}

/// A data file the index points into.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    /// Its full path, as in its manifest entry.
    pub path: Arc<str>,
    /// Its partition (position deletes against it go in the same partition).
    pub partition: Struct,
    /// Its partition spec id.
    pub spec_id: i32,
    live: u64,
}

fn hash_of<S: BuildHasher>(hasher: &S, key: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(key);
    h.finish()
}

impl KeyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: BuildHasher> KeyIndex<S> {
    /// An empty index hashing with `hasher`.
    pub fn with_hasher(hasher: S) -> Self {
        Self {
            table: HashTable::new(),
            arena: Vec::new(),
            dead_bytes: 0,
            files: Vec::new(),
            file_ids: std::collections::HashMap::new(),
            free_files: Vec::new(),
            hasher,
        }
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held: arena, slots (with the table's spare capacity) and file paths.
    pub fn memory_bytes(&self) -> usize {
        let slots = self.table.capacity() * (std::mem::size_of::<Slot>() + 1);
        let files: usize = self
            .files
            .iter()
            .flatten()
            .map(|f| f.path.len() + std::mem::size_of::<IndexedFile>())
            .sum();
        self.arena.capacity() + slots + files
    }

    /// The files that hold at least one live key.
    pub fn files_in_use(&self) -> impl Iterator<Item = &IndexedFile> {
        self.files.iter().flatten().filter(|f| f.live > 0)
    }

    /// The id of `path`, registering it with its partition.
    pub fn file_id(&mut self, path: &str, partition: &Struct, spec_id: i32) -> FileId {
        if let Some(&id) = self.file_ids.get(path) {
            return id;
        }
        let path: Arc<str> = path.into();
        let entry = IndexedFile {
            path: path.clone(),
            partition: partition.clone(),
            spec_id,
            live: 0,
        };
        let id = match self.free_files.pop() {
            Some(id) => {
                self.files[id as usize] = Some(entry);
                id
            }
            None => {
                self.files.push(Some(entry));
                (self.files.len() - 1) as FileId
            }
        };
        self.file_ids.insert(path, id);
        id
    }

    /// A registered file.
    pub fn file(&self, file: FileId) -> Option<&IndexedFile> {
        self.files.get(file as usize).and_then(|f| f.as_ref())
    }

    /// Where `key`'s row is.
    pub fn get(&self, key: &[u8]) -> Option<RowLocation> {
        let hash = hash_of(&self.hasher, key);
        self.table
            .find(hash, |s| self.key_of(s) == key)
            .map(|s| RowLocation {
                file: s.file,
                pos: s.pos,
            })
    }

    /// Sets `key`'s row location; returns the previous one.
    pub fn insert(&mut self, key: &[u8], location: RowLocation) -> Option<RowLocation> {
        let hash = hash_of(&self.hasher, key);
        self.add_live(location.file, 1);
        let (arena, hasher) = (&self.arena, &self.hasher);
        if let Some(slot) = self.table.find_mut(hash, |s| key_in(arena, s) == key) {
            let previous = RowLocation {
                file: slot.file,
                pos: slot.pos,
            };
            slot.file = location.file;
            slot.pos = location.pos;
            self.add_live(previous.file, -1);
            return Some(previous);
        }
        let key_start = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        let slot = Slot {
            key_start,
            key_len: key.len() as u32,
            file: location.file,
            pos: location.pos,
        };
        let arena = &self.arena;
        self.table
            .insert_unique(hash, slot, |s| hash_of(hasher, key_in(arena, s)));
        None
    }

    /// Removes `key`; returns where its row was.
    pub fn remove(&mut self, key: &[u8]) -> Option<RowLocation> {
        let hash = hash_of(&self.hasher, key);
        let arena = &self.arena;
        let entry = self
            .table
            .find_entry(hash, |s| key_in(arena, s) == key)
            .ok()?;
        let (slot, _) = entry.remove();
        self.dead_bytes += slot.key_len as usize;
        self.add_live(slot.file, -1);
        self.maybe_compact();
        Some(RowLocation {
            file: slot.file,
            pos: slot.pos,
        })
    }

    /// Calls `f` with every live key and its location, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], RowLocation)) {
        for slot in self.table.iter() {
            f(
                self.key_of(slot),
                RowLocation {
                    file: slot.file,
                    pos: slot.pos,
                },
            );
        }
    }

    fn add_live(&mut self, file: FileId, delta: i64) {
        let Some(Some(f)) = self.files.get_mut(file as usize) else {
            return;
        };
        f.live = f.live.saturating_add_signed(delta);
        if f.live == 0 {
            if let Some(gone) = self.files[file as usize].take() {
                self.file_ids.remove(&gone.path);
            }
            self.free_files.push(file);
        }
    }

    fn key_of(&self, slot: &Slot) -> &[u8] {
        key_in(&self.arena, slot)
    }

    /// Rewrites the arena without dead keys once they are more than half of it.
    fn maybe_compact(&mut self) {
        if self.dead_bytes < 1 << 16 || self.dead_bytes * 2 < self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.dead_bytes);
        for slot in self.table.iter_mut() {
            let start = arena.len() as u64;
            arena.extend_from_slice(key_in(&self.arena, slot));
            slot.key_start = start;
        }
        self.arena = arena;
        self.dead_bytes = 0;
    }
}

fn key_in<'a>(arena: &'a [u8], slot: &Slot) -> &'a [u8] {
    let start = slot.key_start as usize;
    &arena[start..start + slot.key_len as usize]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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

    #[test]
    fn colliding_hashes_never_confuse_keys() {
        let mut index = KeyIndex::with_hasher(Collide);
        let f = index.file_id("a.parquet", &Struct::empty(), 0);
        for i in 0..2_000u64 {
            let key = format!("{{\"id\":{i:08}}}");
            assert_eq!(
                index.insert(key.as_bytes(), RowLocation { file: f, pos: i }),
                None
            );
        }
        for i in 0..2_000u64 {
            let key = format!("{{\"id\":{i:08}}}");
            assert_eq!(
                index.get(key.as_bytes()),
                Some(RowLocation { file: f, pos: i })
            );
        }
        // Removing one colliding key leaves its neighbours alone.
        assert_eq!(
            index.remove(b"{\"id\":00000007}"),
            Some(RowLocation { file: f, pos: 7 })
        );
        assert_eq!(index.get(b"{\"id\":00000007}"), None);
        assert_eq!(
            index.get(b"{\"id\":00000008}"),
            Some(RowLocation { file: f, pos: 8 })
        );
        assert_eq!(index.get(b"{\"id\":99999999}"), None);
    }

    #[test]
    fn matches_a_map_model_through_inserts_removes_and_compaction() {
        let mut index = KeyIndex::new();
        let mut model: HashMap<Vec<u8>, RowLocation> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("key-{}", x % 5_000).into_bytes();
            if x.is_multiple_of(3) {
                assert_eq!(index.remove(&key), model.remove(&key), "step {step}");
            } else {
                let file = index.file_id(&format!("f{}.parquet", x % 5), &Struct::empty(), 0);
                let loc = RowLocation { file, pos: step };
                assert_eq!(index.insert(&key, loc), model.insert(key.clone(), loc));
            }
        }
        assert_eq!(index.len(), model.len());
        for (k, v) in &model {
            assert_eq!(index.get(k), Some(*v));
        }
    }
}
