//! The primary-key index: every live key of a table -> the data file and row position that hold
//! its current row.
//!
//! The committer uses it to turn an upsert or delete of a key into a position delete of the
//! key's previous row. Keys are the canonical key bytes of the changelog records, stored whole,
//! so a lookup compares full keys: two keys whose hashes collide are two entries, and a
//! collision can never delete the wrong row.
//!
//! Entries are split by key hash into [`SHARDS`] shards. A shard is resident (a hash table of
//! slots over one key arena: the key bytes plus a 24-byte slot and a control byte per key) until
//! the index holds more than its memory limit ([`SpillConfig`]); then the shards with the most
//! resident bytes are spilled: written as a sorted run to the index's spill file ([`run`]) with
//! an in-memory fence per 4 KiB block, and their tables emptied. A spilled shard keeps
//! mutations in its table as an overlay (upserts, and tombstones for removed keys) that is
//! merged into a new run when it is the largest resident shard again. A lookup of a spilled
//! shard asks the overlay, then reads one block of the run (`pread` on the calling thread). The
//! data-file registry and every file's count of live keys stay in memory, so
//! [`KeyIndex::files_in_use`] never reads the disk.

mod run;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashTable;
use iceberg::spec::Struct;

use self::run::{Entries, Run, SpillFile};
use crate::metric_names as m;

/// Shards of an index (by bits 32..40 of the key hash; the hash table uses the low bits and the
/// top seven, so sharding takes nothing from it).
pub const SHARDS: usize = 256;

/// A data file the index points into, by a small id.
pub type FileId = u32;

/// The file id of an overlay slot that marks a key removed from a spilled shard.
const TOMBSTONE: FileId = FileId::MAX;

/// Where a key's current row lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLocation {
    /// The data file (see [`KeyIndex::file`]).
    pub file: FileId,
    /// The row's position in it.
    pub pos: u64,
}

/// Failures of the index's spill file. The index stays consistent after any of them: a failed
/// read changes nothing, and a failed spill leaves the change made in memory (the index is
/// then over its limit until a later spill succeeds).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading or writing the spill file failed.
    #[error(
        "the primary-key index could not {operation} its spill file {path}: {source}; make sure \
         the spill directory (--index-spill-dir) is on a writable local disk with free space, or \
         raise --index-memory-limit so that less of the index spills"
    )]
    SpillIo {
        /// What was being done.
        operation: &'static str,
        /// The spill file (unlinked once created) or its directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The spill file does not hold what the index wrote to it.
    #[error(
        "the primary-key index's spill file {path} is corrupt in the block at offset {offset}: \
         {reason}; the committer rebuilds the index from the table (if this repeats, check the \
         disk of --index-spill-dir)"
    )]
    SpillCorrupt {
        /// The spill file.
        path: PathBuf,
        /// Where the bad block starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl IndexError {
    fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        IndexError::SpillIo {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How much of an index stays in memory, and where the rest goes.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// Most bytes the index keeps resident ([`KeyIndex::memory_bytes`]). Past it, shards spill
    /// until it holds 7/8 of this. What never spills (the fences, about 0.4% of the spilled
    /// bytes, and the data-file registry) counts too; a limit below that spills everything
    /// and stays exceeded.
    pub memory_limit: u64,
    /// Directory of the spill file (created at the first spill).
    pub dir: PathBuf,
    /// The table, the label of the spill counter.
    pub table: String,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key_start: u64,
    key_len: u32,
    file: FileId,
    pos: u64,
}

impl Slot {
    /// The location, `None` for a tombstone.
    fn location(&self) -> Option<RowLocation> {
        (self.file != TOMBSTONE).then_some(RowLocation {
            file: self.file,
            pos: self.pos,
        })
    }
}

/// The entries of one hash range: all of them while resident; the changes since its run was
/// written while spilled.
#[derive(Debug)]
struct Shard {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    dead_bytes: usize,
    run: Option<Run>,
}

impl Shard {
    fn new() -> Self {
        Self {
            table: HashTable::new(),
            arena: Vec::new(),
            dead_bytes: 0,
            run: None,
        }
    }

    /// Bytes a spill would free.
    fn spillable_bytes(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<Slot>() + 1) + self.arena.capacity()
    }

    fn resident_bytes(&self) -> usize {
        self.spillable_bytes() + self.run.as_ref().map_or(0, Run::resident_bytes)
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<&Slot> {
        self.table.find(hash, |s| key_in(&self.arena, s) == key)
    }

    /// Sets `key`'s slot if the table has one; returns what it held.
    fn update(
        &mut self,
        hash: u64,
        key: &[u8],
        file: FileId,
        pos: u64,
    ) -> Option<Option<RowLocation>> {
        let arena = &self.arena;
        let slot = self.table.find_mut(hash, |s| key_in(arena, s) == key)?;
        let previous = slot.location();
        slot.file = file;
        slot.pos = pos;
        Some(previous)
    }

    /// Adds a slot for `key`, which the table does not have.
    fn add<S: BuildHasher>(&mut self, hasher: &S, hash: u64, key: &[u8], file: FileId, pos: u64) {
        let key_start = self.arena.len() as u64;
        self.arena.extend_from_slice(key);
        let slot = Slot {
            key_start,
            key_len: key.len() as u32,
            file,
            pos,
        };
        let arena = &self.arena;
        self.table
            .insert_unique(hash, slot, |s| hash_of(hasher, key_in(arena, s)));
    }

    /// Removes `key`'s slot; returns its location.
    fn take(&mut self, hash: u64, key: &[u8]) -> Option<RowLocation> {
        let arena = &self.arena;
        let entry = self
            .table
            .find_entry(hash, |s| key_in(arena, s) == key)
            .ok()?;
        let (slot, _) = entry.remove();
        self.dead_bytes += slot.key_len as usize;
        self.maybe_compact();
        slot.location()
    }

    /// Rewrites the arena without dead keys once they are more than half of it.
    fn maybe_compact(&mut self) {
        if self.dead_bytes < 4096 || self.dead_bytes * 2 < self.arena.len() {
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

/// Key bytes -> row location. `S` hashes keys (tests use a degenerate one to force
/// collisions).
#[derive(Debug)]
pub struct KeyIndex<S = foldhash::fast::RandomState> {
    shards: Vec<Shard>,
    len: usize,
    /// Sum of the shards' resident bytes.
    resident: usize,
    files: Vec<Option<IndexedFile>>,
    file_ids: HashMap<Arc<str>, FileId>,
    free_files: Vec<FileId>,
    files_bytes: usize,
    hasher: S,
    spill_config: Option<SpillConfig>,
    spill: Option<SpillFile>,
    spills: u64,
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

fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

fn key_in<'a>(arena: &'a [u8], slot: &Slot) -> &'a [u8] {
    let start = slot.key_start as usize;
    &arena[start..start + slot.key_len as usize]
}

impl KeyIndex {
    /// An empty index, all in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index that spills past `spill`'s memory limit (`None`: all in memory).
    pub fn with_spill(spill: Option<SpillConfig>) -> Self {
        Self::with_hasher_and_spill(foldhash::fast::RandomState::default(), spill)
    }
}

impl<S: BuildHasher> KeyIndex<S> {
    /// An empty in-memory index hashing with `hasher`.
    pub fn with_hasher(hasher: S) -> Self {
        Self::with_hasher_and_spill(hasher, None)
    }

    /// An empty index hashing with `hasher` that spills past `spill`'s memory limit.
    pub fn with_hasher_and_spill(hasher: S, spill: Option<SpillConfig>) -> Self {
        let shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
        Self {
            resident: shards.iter().map(Shard::resident_bytes).sum(),
            shards,
            len: 0,
            files: Vec::new(),
            file_ids: HashMap::new(),
            free_files: Vec::new(),
            files_bytes: 0,
            hasher,
            spill_config: spill,
            spill: None,
            spills: 0,
        }
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in memory: the shards' tables (with their spare capacity) and key arenas, the
    /// fences of spilled runs, and the file registry. The memory limit applies to this.
    pub fn memory_bytes(&self) -> usize {
        self.resident + self.files_bytes + SHARDS * std::mem::size_of::<Shard>()
    }

    /// Makes room for `keys` more keys of `key_bytes` bytes in all, spread over the shards, so
    /// that a bulk load (a checkpoint restore) does not grow every shard's table and arena
    /// step by step, rehashing and copying at each step. An index that spills reserves only
    /// what fits under its memory limit's spill point (nothing otherwise).
    pub fn reserve(&mut self, keys: usize, key_bytes: usize) {
        if keys == 0 {
            return;
        }
        // Hashes spread keys over the shards binomially: a shard's count stays within a few
        // standard deviations (about the square root) of the mean. Six of them, plus a
        // sixteenth for uneven key lengths, leave no shard growing in practice.
        let per = keys.div_ceil(SHARDS);
        let slots = per + per / 16 + 6 * per.isqrt() + 16;
        let bytes =
            usize::try_from(slots as u128 * key_bytes as u128 / keys as u128).unwrap_or(usize::MAX);
        if let Some(limit) = self.memory_limit() {
            // Tables keep at least an eighth of their buckets free.
            let wanted = SHARDS * (slots * 8 / 7 * (std::mem::size_of::<Slot>() + 1) + bytes);
            let room = (usize::try_from(limit).unwrap_or(usize::MAX) / 8 * 7)
                .saturating_sub(self.memory_bytes());
            if wanted > room {
                return;
            }
        }
        let hasher = &self.hasher;
        for shard in &mut self.shards {
            let Shard { table, arena, .. } = shard;
            table.reserve(slots, |s| hash_of(hasher, key_in(arena, s)));
            arena.reserve(bytes);
        }
        self.resident = self.shards.iter().map(Shard::resident_bytes).sum();
    }

    /// The memory limit, if the index spills.
    pub fn memory_limit(&self) -> Option<u64> {
        self.spill_config.as_ref().map(|c| c.memory_limit)
    }

    /// Bytes of the spill file on disk (live runs plus replaced ones not yet reclaimed).
    pub fn spilled_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, SpillFile::disk_bytes)
    }

    /// Shards written to disk so far (first spills and overlay merges).
    pub fn spills(&self) -> u64 {
        self.spills
    }

    /// The files that hold at least one live key.
    pub fn files_in_use(&self) -> impl Iterator<Item = &IndexedFile> {
        self.files.iter().flatten().filter(|f| f.live > 0)
    }

    /// The registered files with their ids (every id a location can hold is below
    /// [`KeyIndex::file_id_bound`]).
    pub fn files_by_id(&self) -> impl Iterator<Item = (FileId, &IndexedFile)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(id, f)| Some((id as FileId, f.as_ref()?)))
    }

    /// One more than the largest file id in use.
    pub fn file_id_bound(&self) -> usize {
        self.files.len()
    }

    /// The id of `path`, registering it with its partition.
    pub fn file_id(&mut self, path: &str, partition: &Struct, spec_id: i32) -> FileId {
        if let Some(&id) = self.file_ids.get(path) {
            return id;
        }
        let path: Arc<str> = path.into();
        self.files_bytes += file_bytes(&path);
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

    /// Where `key`'s row is (reads one block of the spill file if `key`'s shard spilled).
    pub fn get(&self, key: &[u8]) -> Result<Option<RowLocation>, IndexError> {
        let hash = hash_of(&self.hasher, key);
        let shard = &self.shards[shard_of(hash)];
        if let Some(slot) = shard.find(hash, key) {
            return Ok(slot.location());
        }
        match &shard.run {
            Some(run) => self.spill_file()?.find(run, hash, key),
            None => Ok(None),
        }
    }

    /// Sets `key`'s row location; returns the previous one.
    pub fn insert(
        &mut self,
        key: &[u8],
        location: RowLocation,
    ) -> Result<Option<RowLocation>, IndexError> {
        self.insert_with(key, location, |_, _| {})
    }

    /// [`KeyIndex::insert`], calling `replaced` with the file and position of the key's
    /// previous row (before the file is unregistered if that was its last live key).
    fn insert_with(
        &mut self,
        key: &[u8],
        location: RowLocation,
        replaced: impl FnOnce(&IndexedFile, u64),
    ) -> Result<Option<RowLocation>, IndexError> {
        let hash = hash_of(&self.hasher, key);
        let s = shard_of(hash);
        let before = self.shards[s].resident_bytes();
        let shard = &mut self.shards[s];
        let previous = match shard.update(hash, key, location.file, location.pos) {
            Some(previous) => previous,
            None => {
                let previous = match &shard.run {
                    Some(run) => spill_of(&self.spill, &self.spill_config)?.find(run, hash, key)?,
                    None => None,
                };
                shard.add(&self.hasher, hash, key, location.file, location.pos);
                previous
            }
        };
        // The new file first: replacing a file's last key by another of its rows must not
        // unregister it.
        self.add_live(location.file, 1);
        match previous {
            Some(p) => {
                if let Some(file) = self.file(p.file) {
                    replaced(file, p.pos);
                }
                self.add_live(p.file, -1);
            }
            None => self.len += 1,
        }
        self.resident = self.resident - before + self.shards[s].resident_bytes();
        self.enforce_limit()?;
        Ok(previous)
    }

    /// Inserts many entries, as [`KeyIndex::insert`] of each in the order `entries` yields
    /// them would, using up to `threads` threads: each owns a range of the shards, runs
    /// `entries` (which must yield the same entries in the same order on every call) and
    /// keeps the entries of its shards, so every key's entries are applied in order. Returns
    /// the file and position of each row whose key was already indexed (its entry replaced).
    ///
    /// The threads work on shards that are resident; once any shard has spilled this inserts
    /// on the calling thread. The memory limit is enforced after the whole call, so an index
    /// that spills can exceed it by what one call adds: callers feed it a bounded chunk.
    pub fn insert_many<F>(
        &mut self,
        threads: usize,
        entries: F,
    ) -> Result<Vec<(IndexedFile, u64)>, IndexError>
    where
        F: Fn(&mut EntrySink<'_>) + Sync,
        S: Sync,
    {
        let threads = threads.clamp(1, SHARDS);
        let mut replaced = Vec::new();
        if threads == 1 || self.shards.iter().any(|s| s.run.is_some()) {
            let mut failure = None;
            entries(&mut |key, location| {
                if failure.is_none()
                    && let Err(e) = self.insert_with(key, location, |file, pos| {
                        replaced.push((file.clone(), pos));
                    })
                {
                    failure = Some(e);
                }
            });
            return failure.map_or(Ok(replaced), Err);
        }
        let per = SHARDS.div_ceil(threads);
        let files = self.files.len();
        let hasher = &self.hasher;
        let entries = &entries;
        let outcomes: Vec<ShardsLoaded> = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .shards
                .chunks_mut(per)
                .enumerate()
                .map(|(t, shards)| {
                    scope.spawn(move || load_shards(hasher, t * per, shards, files, entries))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        // Resolve the replaced rows' files before any live count changes.
        let mut live = vec![0i64; files];
        for outcome in &outcomes {
            self.len += outcome.added;
            for (file, delta) in live.iter_mut().zip(&outcome.live) {
                *file += delta;
            }
            for previous in &outcome.replaced {
                if let Some(file) = self.file(previous.file) {
                    replaced.push((file.clone(), previous.pos));
                }
            }
        }
        for (file, delta) in live.into_iter().enumerate() {
            if delta != 0 {
                self.add_live(file as FileId, delta);
            }
        }
        self.resident = self.shards.iter().map(Shard::resident_bytes).sum();
        self.enforce_limit()?;
        Ok(replaced)
    }

    /// Removes `key`; returns where its row was.
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<RowLocation>, IndexError> {
        let hash = hash_of(&self.hasher, key);
        let s = shard_of(hash);
        let before = self.shards[s].resident_bytes();
        let shard = &mut self.shards[s];
        let previous = if shard.run.is_none() {
            shard.take(hash, key)
        } else {
            match shard.update(hash, key, TOMBSTONE, 0) {
                Some(previous) => previous,
                None => {
                    let previous = match &shard.run {
                        Some(run) => {
                            spill_of(&self.spill, &self.spill_config)?.find(run, hash, key)?
                        }
                        None => None,
                    };
                    if previous.is_some() {
                        shard.add(&self.hasher, hash, key, TOMBSTONE, 0);
                    }
                    previous
                }
            }
        };
        if let Some(p) = previous {
            self.add_live(p.file, -1);
            self.len -= 1;
        }
        self.resident = self.resident - before + self.shards[s].resident_bytes();
        self.enforce_limit()?;
        Ok(previous)
    }

    /// Calls `f` with every live key and its location, in no particular order (reads the
    /// spilled runs whole, block by block).
    pub fn for_each(&self, f: impl FnMut(&[u8], RowLocation)) -> Result<(), IndexError> {
        self.for_each_in(0..SHARDS, f)
    }

    /// [`KeyIndex::for_each`] of the keys in `shards` (numbers below [`SHARDS`]; others are
    /// skipped): sets that split `0..SHARDS` split the keys, so several threads can go through
    /// an index at once.
    pub fn for_each_in(
        &self,
        shards: impl IntoIterator<Item = usize>,
        mut f: impl FnMut(&[u8], RowLocation),
    ) -> Result<(), IndexError> {
        let mut buf = Vec::new();
        for shard in shards.into_iter().filter_map(|s| self.shards.get(s)) {
            if let Some(run) = &shard.run {
                let spill = self.spill_file()?;
                for block in 0..run.blocks() {
                    spill.read_block(run, block, &mut buf)?;
                    let mut entries = Entries::new(&buf);
                    while let Some((key, location)) = entries.next_entry(spill, run, block)? {
                        // The overlay holds the newer state of the keys it has.
                        if shard.find(hash_of(&self.hasher, key), key).is_none() {
                            f(key, location);
                        }
                    }
                }
            }
            for slot in shard.table.iter() {
                if let Some(location) = slot.location() {
                    f(key_in(&shard.arena, slot), location);
                }
            }
        }
        Ok(())
    }

    fn spill_file(&self) -> Result<&SpillFile, IndexError> {
        spill_of(&self.spill, &self.spill_config)
    }

    fn add_live(&mut self, file: FileId, delta: i64) {
        let Some(Some(f)) = self.files.get_mut(file as usize) else {
            return;
        };
        f.live = f.live.saturating_add_signed(delta);
        if f.live == 0 {
            if let Some(gone) = self.files[file as usize].take() {
                self.files_bytes -= file_bytes(&gone.path);
                self.file_ids.remove(&gone.path);
            }
            self.free_files.push(file);
        }
    }

    /// Spills the shards with the most resident bytes until the index holds 7/8 of its limit
    /// (or nothing is left to spill).
    fn enforce_limit(&mut self) -> Result<(), IndexError> {
        let Some(limit) = self.memory_limit() else {
            return Ok(());
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if self.memory_bytes() <= limit {
            return Ok(());
        }
        let target = limit - limit / 8;
        while self.memory_bytes() > target {
            let Some((s, bytes)) = self
                .shards
                .iter()
                .map(Shard::spillable_bytes)
                .enumerate()
                .max_by_key(|&(_, bytes)| bytes)
            else {
                break;
            };
            if bytes == 0 {
                break;
            }
            self.spill_shard(s)?;
        }
        let Some(config) = &self.spill_config else {
            return Ok(());
        };
        if let Some(spill) = &mut self.spill
            && spill.wants_compaction()
        {
            let runs = self
                .shards
                .iter_mut()
                .filter_map(|s| s.run.as_mut())
                .collect();
            spill.compact(&config.dir, runs)?;
            self.resident = self.shards.iter().map(Shard::resident_bytes).sum();
        }
        Ok(())
    }

    /// Writes shard `s` (its run merged with its table) as a new run and empties its table.
    fn spill_shard(&mut self, s: usize) -> Result<(), IndexError> {
        let Some(config) = &self.spill_config else {
            return Ok(());
        };
        let spill = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert(SpillFile::create(&config.dir)?),
        };
        let shard = &self.shards[s];
        let hasher = &self.hasher;
        let mut changes: Vec<(u64, &[u8], Option<RowLocation>)> = shard
            .table
            .iter()
            .map(|slot| {
                let key = key_in(&shard.arena, slot);
                (hash_of(hasher, key), key, slot.location())
            })
            .collect();
        changes.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut changes = changes.into_iter().peekable();
        let mut writer = spill.writer();
        if let Some(run) = &shard.run {
            let mut buf = Vec::new();
            for block in 0..run.blocks() {
                spill.read_block(run, block, &mut buf)?;
                let mut entries = Entries::new(&buf);
                while let Some((key, location)) = entries.next_entry(spill, run, block)? {
                    let hash = hash_of(hasher, key);
                    // Changes of keys before this one go first; a change of this key replaces it.
                    let mut replaced = false;
                    while let Some(&(h, k, change)) = changes.peek() {
                        if (h, k) > (hash, key) {
                            break;
                        }
                        replaced = (h, k) == (hash, key);
                        if let Some(change) = change {
                            writer.push(h, k, change)?;
                        }
                        changes.next();
                    }
                    if !replaced {
                        writer.push(hash, key, location)?;
                    }
                }
            }
        }
        for (h, k, change) in changes {
            if let Some(change) = change {
                writer.push(h, k, change)?;
            }
        }
        let run = writer.finish()?;
        let before = self.shards[s].resident_bytes();
        let shard = &mut self.shards[s];
        let old = shard.run.take();
        spill.replaced(&run, old.as_ref());
        shard.run = (run.blocks() > 0).then_some(run);
        shard.table = HashTable::new();
        shard.arena = Vec::new();
        shard.dead_bytes = 0;
        self.resident = self.resident - before + self.shards[s].resident_bytes();
        self.spills += 1;
        metrics::counter!(m::INDEX_SPILLS, "table" => config.table.clone()).increment(1);
        Ok(())
    }
}

/// What [`KeyIndex::insert_many`]'s entries are given: called with each key and location.
pub type EntrySink<'a> = dyn FnMut(&[u8], RowLocation) + 'a;

/// What one thread of [`KeyIndex::insert_many`] did to its shards.
struct ShardsLoaded {
    /// Keys added.
    added: usize,
    /// Change of each file's live keys, by file id.
    live: Vec<i64>,
    /// Locations replaced.
    replaced: Vec<RowLocation>,
}

/// Inserts the entries of `shards` (resident, the shards numbered from `first`) that
/// `entries` yields, in order.
fn load_shards<S: BuildHasher>(
    hasher: &S,
    first: usize,
    shards: &mut [Shard],
    files: usize,
    entries: &(dyn Fn(&mut EntrySink<'_>) + Sync),
) -> ShardsLoaded {
    let mut out = ShardsLoaded {
        added: 0,
        live: vec![0; files],
        replaced: Vec::new(),
    };
    entries(&mut |key, location| {
        let hash = hash_of(hasher, key);
        let Some(shard) = shard_of(hash)
            .checked_sub(first)
            .and_then(|i| shards.get_mut(i))
        else {
            return;
        };
        match shard.update(hash, key, location.file, location.pos) {
            Some(Some(previous)) => {
                out.replaced.push(previous);
                if let Some(n) = out.live.get_mut(previous.file as usize) {
                    *n -= 1;
                }
            }
            // A tombstone exists only in a spilled shard, which this never sees.
            Some(None) => out.added += 1,
            None => {
                shard.add(hasher, hash, key, location.file, location.pos);
                out.added += 1;
            }
        }
        if let Some(n) = out.live.get_mut(location.file as usize) {
            *n += 1;
        }
    });
    out
}

/// The spill file, which exists whenever a shard has a run.
fn spill_of<'a>(
    spill: &'a Option<SpillFile>,
    config: &Option<SpillConfig>,
) -> Result<&'a SpillFile, IndexError> {
    spill.as_ref().ok_or_else(|| IndexError::SpillCorrupt {
        path: config.as_ref().map(|c| c.dir.clone()).unwrap_or_default(),
        offset: 0,
        reason: "a shard has a run but the index has no spill file".into(),
    })
}

fn file_bytes(path: &str) -> usize {
    path.len() + std::mem::size_of::<IndexedFile>()
}

#[cfg(test)]
mod tests;
