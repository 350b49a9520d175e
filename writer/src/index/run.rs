//! The index's spill file and the sorted runs in it.
//!
//! A run holds one shard's entries sorted by (key hash, key), in blocks of about
//! [`BLOCK_BYTES`]; an entry never straddles two blocks. An entry is the key's length (LEB128),
//! the key bytes, the file id (LEB128) and the row position (LEB128): the key plus about six
//! bytes. The run's fences (in memory) hold the first hash and the file offset of every block,
//! so a lookup reads one block (two when a hash sits at a block boundary) with one positioned
//! read. Runs are appended to one file per index; a replaced run becomes garbage, and the file
//! is rewritten without it once garbage is the larger part. The file is unlinked as soon as it
//! is created: its space is freed when the index is dropped or the process dies, however it
//! dies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{FileId, IndexError, RowLocation};

/// Target size of a run block.
pub(super) const BLOCK_BYTES: usize = 4096;
/// Runs are written in chunks of this size.
const WRITE_CHUNK: usize = 256 * 1024;
/// The file is rewritten once its garbage is more than its live runs and more than this.
const MIN_GARBAGE: u64 = 1 << 20;

/// The first hash of a block and where the block starts in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fence {
    hash: u64,
    offset: u64,
}

/// One shard's sorted entries in the spill file.
#[derive(Debug)]
pub(super) struct Run {
    offset: u64,
    len: u64,
    fences: Vec<Fence>,
}

impl Run {
    /// Memory the run keeps (its fences).
    pub(super) fn resident_bytes(&self) -> usize {
        self.fences.capacity() * std::mem::size_of::<Fence>()
    }

    /// Blocks in the run.
    pub(super) fn blocks(&self) -> usize {
        self.fences.len()
    }

    /// Blocks that may hold keys hashing to `hash`: the last block starting below it and the
    /// blocks starting at it (a run of equal hashes may span several).
    pub(super) fn blocks_for(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let first = self
            .fences
            .partition_point(|f| f.hash < hash)
            .saturating_sub(1);
        (first..self.fences.len()).take_while(move |&i| i == first || self.fences[i].hash <= hash)
    }

    fn block_range(&self, block: usize) -> (u64, usize) {
        let start = self.fences[block].offset;
        let end = self
            .fences
            .get(block + 1)
            .map_or(self.offset + self.len, |f| f.offset);
        (start, (end - start) as usize)
    }
}

/// The file the runs of one index live in.
#[derive(Debug)]
pub(super) struct SpillFile {
    file: File,
    path: PathBuf,
    end: u64,
    garbage: u64,
}

impl SpillFile {
    /// Creates a new spill file in `dir` (and `dir` itself), unlinked at once.
    pub(super) fn create(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::io("create the directory of", dir, e))?;
        let path = dir.join(format!("index-{}.spill", uuid::Uuid::now_v7()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| IndexError::io("create", &path, e))?;
        std::fs::remove_file(&path).map_err(|e| IndexError::io("unlink", &path, e))?;
        Ok(Self {
            file,
            path,
            end: 0,
            garbage: 0,
        })
    }

    /// Bytes the file takes on disk (live runs plus garbage).
    pub(super) fn disk_bytes(&self) -> u64 {
        self.end
    }

    /// Reads `run`'s block `block` into `buf`.
    pub(super) fn read_block(
        &self,
        run: &Run,
        block: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), IndexError> {
        let (offset, len) = run.block_range(block);
        buf.clear();
        buf.resize(len, 0);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| IndexError::io("read", &self.path, e))
    }

    /// Where `key` is in `run`, reading the blocks that may hold it.
    pub(super) fn find(
        &self,
        run: &Run,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<RowLocation>, IndexError> {
        let mut buf = Vec::with_capacity(BLOCK_BYTES + 64);
        for block in run.blocks_for(hash) {
            self.read_block(run, block, &mut buf)?;
            let mut entries = Entries::new(&buf);
            while let Some((k, location)) = entries.next_entry(self, run, block)? {
                if k == key {
                    return Ok(Some(location));
                }
            }
        }
        Ok(None)
    }

    /// Starts a run at the end of the file.
    pub(super) fn writer(&self) -> RunWriter<'_> {
        RunWriter {
            spill: self,
            start: self.end,
            pos: self.end,
            out: Vec::new(),
            block: Vec::with_capacity(BLOCK_BYTES),
            block_hash: 0,
            fences: Vec::new(),
        }
    }

    /// Records that `new` (written by [`SpillFile::writer`]) replaced `old`.
    pub(super) fn replaced(&mut self, new: &Run, old: Option<&Run>) {
        self.end = new.offset + new.len;
        self.garbage += old.map_or(0, |o| o.len);
    }

    /// Whether the file should be rewritten without its garbage.
    pub(super) fn wants_compaction(&self) -> bool {
        self.garbage > MIN_GARBAGE && self.garbage > self.end - self.garbage
    }

    /// Copies `runs` into a new file in `dir` and moves them there (on error, nothing moved).
    pub(super) fn compact(
        &mut self,
        dir: &Path,
        mut runs: Vec<&mut Run>,
    ) -> Result<(), IndexError> {
        let fresh = SpillFile::create(dir)?;
        let mut buf = vec![0u8; WRITE_CHUNK];
        let mut at = 0u64;
        let mut moved = Vec::with_capacity(runs.len());
        for run in &runs {
            let mut done = 0u64;
            while done < run.len {
                let n = (run.len - done).min(WRITE_CHUNK as u64) as usize;
                self.file
                    .read_exact_at(&mut buf[..n], run.offset + done)
                    .map_err(|e| IndexError::io("read", &self.path, e))?;
                fresh
                    .file
                    .write_all_at(&buf[..n], at + done)
                    .map_err(|e| IndexError::io("write", &fresh.path, e))?;
                done += n as u64;
            }
            moved.push(at);
            at += run.len;
        }
        for (run, offset) in runs.iter_mut().zip(moved) {
            for fence in &mut run.fences {
                fence.offset = fence.offset - run.offset + offset;
            }
            run.offset = offset;
        }
        *self = SpillFile { end: at, ..fresh };
        Ok(())
    }

    fn corrupt(&self, run: &Run, block: usize, reason: &str) -> IndexError {
        IndexError::SpillCorrupt {
            path: self.path.clone(),
            offset: run.block_range(block).0,
            reason: reason.to_string(),
        }
    }
}

/// Writes one run, block by block.
pub(super) struct RunWriter<'a> {
    spill: &'a SpillFile,
    start: u64,
    pos: u64,
    out: Vec<u8>,
    block: Vec<u8>,
    block_hash: u64,
    fences: Vec<Fence>,
}

impl RunWriter<'_> {
    /// Appends an entry; entries must come in (hash, key) order.
    pub(super) fn push(
        &mut self,
        hash: u64,
        key: &[u8],
        location: RowLocation,
    ) -> Result<(), IndexError> {
        let len = varint_len(key.len() as u64)
            + key.len()
            + varint_len(u64::from(location.file))
            + varint_len(location.pos);
        if !self.block.is_empty() && self.block.len() + len > BLOCK_BYTES {
            self.end_block()?;
        }
        if self.block.is_empty() {
            self.block_hash = hash;
        }
        put_varint(&mut self.block, key.len() as u64);
        self.block.extend_from_slice(key);
        put_varint(&mut self.block, u64::from(location.file));
        put_varint(&mut self.block, location.pos);
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), IndexError> {
        self.fences.push(Fence {
            hash: self.block_hash,
            offset: self.pos + self.out.len() as u64,
        });
        self.out.extend_from_slice(&self.block);
        self.block.clear();
        if self.out.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IndexError> {
        self.spill
            .file
            .write_all_at(&self.out, self.pos)
            .map_err(|e| IndexError::io("write", &self.spill.path, e))?;
        self.pos += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes what is buffered; the run (empty if no entry was pushed).
    pub(super) fn finish(mut self) -> Result<Run, IndexError> {
        if !self.block.is_empty() {
            self.end_block()?;
        }
        self.flush()?;
        self.fences.shrink_to_fit();
        Ok(Run {
            offset: self.start,
            len: self.pos - self.start,
            fences: self.fences,
        })
    }
}

/// The entries of one block.
pub(super) struct Entries<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Entries<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// The next entry, `None` at the block's end; a malformed entry is an error naming the
    /// block (`spill`, `run`, `block` only name it).
    pub(super) fn next_entry(
        &mut self,
        spill: &SpillFile,
        run: &Run,
        block: usize,
    ) -> Result<Option<(&'a [u8], RowLocation)>, IndexError> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        self.decode()
            .map(Some)
            .ok_or_else(|| spill.corrupt(run, block, "an entry is cut short or malformed"))
    }

    fn decode(&mut self) -> Option<(&'a [u8], RowLocation)> {
        let len = usize::try_from(get_varint(self.buf, &mut self.at)?).ok()?;
        let key = self.buf.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        let file = FileId::try_from(get_varint(self.buf, &mut self.at)?).ok()?;
        let pos = get_varint(self.buf, &mut self.at)?;
        Some((key, RowLocation { file, pos }))
    }
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *buf.get(*at)?;
        *at += 1;
        if shift > 63 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_with_their_lengths() {
        for v in [0, 1, 127, 128, 300, 1 << 32, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(get_varint(&out, &mut at), Some(v));
            assert_eq!(at, out.len());
        }
    }
}
