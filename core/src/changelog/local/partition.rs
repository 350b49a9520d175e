//! One partition of a local changelog: its segments, appends with group commit, reads, the
//! sparse offset/time index, recovery and retention.
//!
//! Durability: an append writes its batch to the active segment under the state lock, then
//! waits for an fsync that covers it. Concurrent appends share fsyncs (group commit): whoever
//! takes the sync lock syncs everything written so far, and the others find their bytes
//! already covered. Only then does the durable high watermark advance, so readers never see a
//! record that a crash could still take away.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;
use tracing::warn;

use super::format::{self, BatchSummary, HEADER_LEN};
use crate::changelog::{ChangeRecord, ChangelogError, ChangelogResult, StoredRecord};
use crate::offsets::Offset;

/// Index granularity: one entry per this many bytes of batches (plus every segment start).
const INDEX_INTERVAL_BYTES: u64 = 4096;

fn io_err(path: &Path, source: std::io::Error) -> ChangelogError {
    ChangelogError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// A sparse index entry: the batch at `position` starts at `offset`; `max_ts` is the largest
/// timestamp of any record from the segment start through the end of this entry's span.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: i64,
    position: u64,
    cumulative_max_ts: i64,
}

#[derive(Debug)]
struct Segment {
    base: i64,
    path: PathBuf,
    /// Bytes of whole batches.
    size: u64,
    /// Offset after the last record.
    end: i64,
    max_ts: i64,
    index: Vec<IndexEntry>,
    last_indexed_position: u64,
}

impl Segment {
    fn note_batch(&mut self, base_offset: i64, count: u32, max_ts: i64, position: u64, len: u64) {
        self.max_ts = self.max_ts.max(max_ts);
        if self.index.is_empty() || position >= self.last_indexed_position + INDEX_INTERVAL_BYTES {
            self.index.push(IndexEntry {
                offset: base_offset,
                position,
                cumulative_max_ts: self.max_ts,
            });
            self.last_indexed_position = position;
        } else if let Some(last) = self.index.last_mut() {
            last.cumulative_max_ts = self.max_ts;
        }
        self.end = base_offset + i64::from(count);
        self.size = position + len;
    }
}

#[derive(Debug)]
struct State {
    segments: Vec<Segment>,
    active: File,
    /// Total bytes ever written by this process (for group-commit bookkeeping).
    written: u64,
    /// Set after a failed write or fsync: the partition refuses appends until reopened.
    poisoned: Option<String>,
}

/// A partition's log.
#[derive(Debug)]
pub(super) struct PartitionLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Serialises fsyncs; holds the byte count known durable.
    synced: Mutex<u64>,
    /// Durable high watermark: readers see offsets below it.
    durable: watch::Sender<i64>,
    /// Exclusive end offset the Iceberg committer has committed; retention stays below it.
    committed: Mutex<i64>,
}

/// Where a read starts: a segment file, a byte position, and the read bounds.
struct ReadPlan {
    path: PathBuf,
    position: u64,
    end_position: u64,
}

impl PartitionLog {
    /// Opens (creating if needed) the partition in `dir`, recovering a torn tail.
    pub(super) fn open(dir: PathBuf, segment_bytes: u64) -> ChangelogResult<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let mut bases: Vec<i64> = fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, e))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            let path = segment_path(&dir, 0);
            File::create(&path).map_err(|e| io_err(&path, e))?;
            sync_dir(&dir)?;
            bases.push(0);
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let last = bases.len() - 1;
        for (i, base) in bases.into_iter().enumerate() {
            let segment = recover_segment(&dir, base, i == last)?;
            if let Some(prev) = segments.last()
                && segment.base != prev.end
            {
                return Err(ChangelogError::Corrupt {
                    location: segment.path.display().to_string(),
                    reason: format!(
                        "segment starts at offset {} but the previous one ends at {}",
                        segment.base, prev.end
                    ),
                });
            }
            segments.push(segment);
        }
        let active_path = &segments[last].path;
        let mut active = OpenOptions::new()
            .append(true)
            .open(active_path)
            .map_err(|e| io_err(active_path, e))?;
        active
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err(active_path, e))?;
        let high = segments[last].end;
        Ok(Self {
            dir,
            segment_bytes,
            state: Mutex::new(State {
                segments,
                active,
                written: 0,
                poisoned: None,
            }),
            synced: Mutex::new(0),
            durable: watch::channel(high).0,
            committed: Mutex::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The durable high watermark.
    pub(super) fn high(&self) -> i64 {
        *self.durable.borrow()
    }

    /// The oldest retained offset.
    pub(super) fn low(&self) -> i64 {
        self.lock().segments.first().map_or(0, |s| s.base)
    }

    /// Subscribes to durable high watermark changes.
    pub(super) fn subscribe(&self) -> watch::Receiver<i64> {
        self.durable.subscribe()
    }

    /// Appends a batch and returns its first offset once it is durable. Blocking.
    pub(super) fn append(&self, records: &[ChangeRecord]) -> ChangelogResult<i64> {
        let (first, target) = {
            let mut state = self.lock();
            if let Some(reason) = &state.poisoned {
                return Err(self.failed(reason));
            }
            let base = state.segments.last().map_or(0, |s| s.end);
            if records.is_empty() {
                return Ok(base);
            }
            // Large appends become several batches, each small enough to read back; they are
            // written (and, on a failed write, cut off) together.
            let batches = format::encode_batches(base, records, format::MAX_PAYLOAD)?;
            self.maybe_roll(&mut state, base)?;
            let State {
                segments,
                active,
                written,
                poisoned,
            } = &mut *state;
            let segment = segments.last_mut().ok_or_else(|| ChangelogError::Corrupt {
                location: self.dir.display().to_string(),
                reason: "no active segment".into(),
            })?;
            let write = batches.iter().try_for_each(|batch| {
                fail::fail_point!("local-changelog-write", |_| Err(std::io::Error::other(
                    "injected write failure"
                )));
                active.write_all(&batch.bytes)
            });
            if let Err(e) = write {
                // Cut the partial append off so the file stays a sequence of whole batches.
                let restored = active
                    .set_len(segment.size)
                    .and_then(|()| active.seek(SeekFrom::End(0)).map(|_| ()));
                if restored.is_err() {
                    *poisoned = Some(format!("write failed: {e}"));
                }
                return Err(io_err(&segment.path, e));
            }
            let mut offset = base;
            for batch in &batches {
                let position = segment.size;
                let len = batch.bytes.len() as u64;
                segment.note_batch(offset, batch.count, batch.max_timestamp, position, len);
                offset += i64::from(batch.count);
                *written += len;
            }
            (base, *written)
        };
        self.sync_through(target)?;
        Ok(first)
    }

    /// The error of every append and waiter once the partition failed.
    fn failed(&self, reason: &str) -> ChangelogError {
        ChangelogError::Unavailable {
            backend: "local",
            reason: format!(
                "partition {} is failed ({reason}); restart to recover",
                self.dir.display()
            ),
        }
    }

    /// Starts a new segment when the active one is full. Called with the state lock held.
    fn maybe_roll(&self, state: &mut State, base: i64) -> ChangelogResult<()> {
        let Some(active) = state.segments.last() else {
            return Ok(());
        };
        if active.size < self.segment_bytes || active.size == 0 {
            return Ok(());
        }
        // The full segment must be durable before anything lands in the next one.
        state.active.sync_data().map_err(|e| {
            state.poisoned = Some(format!("fsync failed: {e}"));
            io_err(&active.path, e)
        })?;
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        state.active = file;
        state.segments.push(Segment {
            base,
            path,
            size: 0,
            end: base,
            max_ts: i64::MIN,
            index: Vec::new(),
            last_indexed_position: 0,
        });
        Ok(())
    }

    /// Waits until the bytes up to `target` are fsynced, syncing them (and every other append
    /// written so far) if no one else has.
    fn sync_through(&self, target: u64) -> ChangelogResult<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= target {
            return Ok(());
        }
        let (file, written, high, path) = {
            let mut state = self.lock();
            // Once an fsync failed, what reached the disk is unknown: a later fsync that
            // succeeds proves nothing about the bytes before it, so every waiter fails until
            // the log is reopened (and recovery re-reads what is really there).
            if let Some(reason) = &state.poisoned {
                return Err(self.failed(reason));
            }
            let path = state
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            match state.active.try_clone() {
                Ok(file) => (
                    file,
                    state.written,
                    state.segments.last().map_or(0, |s| s.end),
                    path,
                ),
                Err(e) => {
                    state.poisoned = Some(format!("cannot reopen for fsync: {e}"));
                    return Err(io_err(&path, e));
                }
            }
        };
        fail::fail_point!("local-changelog-before-fsync");
        let sync = sync_data(&file);
        if let Err(e) = sync {
            // After a failed fsync the page cache state is unknown: stop taking writes.
            self.lock().poisoned = Some(format!("fsync failed: {e}"));
            return Err(io_err(&path, e));
        }
        *synced = written;
        self.durable.send_if_modified(|h| {
            let changed = *h < high;
            *h = (*h).max(high);
            changed
        });
        Ok(())
    }

    /// Reads up to `max` durable records from `from` (which must be within low..high).
    pub(super) fn read(&self, from: i64, max: usize) -> ChangelogResult<Vec<StoredRecord>> {
        let high = self.high();
        let plan = {
            let state = self.lock();
            let Some(segment) = state.segments.iter().rev().find(|s| s.base <= from) else {
                return Ok(Vec::new());
            };
            let entry = match segment.index.partition_point(|e| e.offset <= from) {
                0 => None,
                i => Some(segment.index[i - 1]),
            };
            ReadPlan {
                path: segment.path.clone(),
                position: entry.map_or(0, |e| e.position),
                end_position: segment.size,
            }
        };
        read_from(&plan, from, high, max)
    }

    /// The first offset with a timestamp at or after `ts`, if any durable record has one.
    pub(super) fn offset_for_timestamp(&self, ts: i64) -> ChangelogResult<Option<i64>> {
        let high = self.high();
        let plans: Vec<ReadPlan> = {
            let state = self.lock();
            let mut plans = Vec::new();
            for segment in &state.segments {
                if segment.max_ts < ts {
                    continue;
                }
                // First index span whose running maximum reaches `ts` holds the answer.
                let i = segment.index.partition_point(|e| e.cumulative_max_ts < ts);
                if let Some(entry) = segment.index.get(i) {
                    plans.push(ReadPlan {
                        path: segment.path.clone(),
                        position: entry.position,
                        end_position: segment.size,
                    });
                }
            }
            plans
        };
        // One pass per candidate segment; only batches whose newest record is recent enough
        // are decoded.
        for plan in plans {
            let mut found = None;
            scan_batches(&plan, high, |summary, payload| {
                if summary.max_timestamp < ts {
                    return Ok(ControlFlow::Continue(()));
                }
                let records = decode_batch(&plan, summary, payload)?;
                found = records
                    .iter()
                    .position(|r| r.timestamp_ms >= ts)
                    .map(|i| summary.base_offset + i as i64)
                    .filter(|offset| *offset < high);
                Ok(ControlFlow::Break(()))
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Records the committer's progress and removes whole segments that are both below it and
    /// outside the retention limits. Returns the number of segments removed.
    pub(super) fn publish_committed(
        &self,
        committed: i64,
        keep_newer_than_ts: Option<i64>,
        keep_bytes: Option<u64>,
    ) -> ChangelogResult<usize> {
        let committed = {
            let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            *c = (*c).max(committed);
            *c
        };
        let mut removed = Vec::new();
        {
            let mut state = self.lock();
            let mut total: u64 = state.segments.iter().map(|s| s.size).sum();
            while state.segments.len() > 1 {
                let oldest = &state.segments[0];
                let fully_committed = oldest.end <= committed;
                let too_old = keep_newer_than_ts.is_some_and(|t| oldest.max_ts < t);
                let too_big = keep_bytes.is_some_and(|b| total > b);
                if !(fully_committed && (too_old || too_big)) {
                    break;
                }
                total -= oldest.size;
                removed.push(state.segments.remove(0).path);
            }
        }
        for path in &removed {
            if let Err(e) = fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "could not remove a retired changelog segment");
            }
        }
        Ok(removed.len())
    }
}

fn sync_dir(dir: &Path) -> ChangelogResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Walks the verified batches of `plan` from its start position, handing each one that starts
/// below `high` to `visit` until it answers `Break`. A file removed by retention between
/// planning and reading is simply empty.
fn scan_batches(
    plan: &ReadPlan,
    high: i64,
    mut visit: impl FnMut(BatchSummary, &[u8]) -> ChangelogResult<ControlFlow<()>>,
) -> ChangelogResult<()> {
    let file = match File::open(&plan.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&plan.path, e)),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    reader
        .seek(SeekFrom::Start(plan.position))
        .map_err(|e| io_err(&plan.path, e))?;
    let mut position = plan.position;
    let corrupt = |reason: String| ChangelogError::Corrupt {
        location: plan.path.display().to_string(),
        reason,
    };
    while position < plan.end_position {
        let mut header = [0u8; HEADER_LEN];
        reader
            .read_exact(&mut header)
            .map_err(|e| io_err(&plan.path, e))?;
        let header = format::parse_header(&header)
            .ok_or_else(|| corrupt(format!("bad batch header at byte {position}")))?;
        let mut payload = vec![0u8; header.payload_len];
        reader
            .read_exact(&mut payload)
            .map_err(|e| io_err(&plan.path, e))?;
        let summary = format::verify_payload(header, &payload)
            .ok_or_else(|| corrupt(format!("checksum mismatch in the batch at byte {position}")))?;
        position += (HEADER_LEN + header.payload_len) as u64;
        if summary.base_offset >= high {
            break;
        }
        if visit(summary, &payload)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Decodes a verified batch payload, naming the batch if it is malformed.
fn decode_batch(
    plan: &ReadPlan,
    summary: BatchSummary,
    payload: &[u8],
) -> ChangelogResult<Vec<ChangeRecord>> {
    format::decode_records(payload).ok_or_else(|| ChangelogError::Corrupt {
        location: plan.path.display().to_string(),
        reason: format!(
            "malformed records in the batch at offset {}",
            summary.base_offset
        ),
    })
}

/// Reads batches from `plan.position`, returning records with offsets in `from..high`.
fn read_from(
    plan: &ReadPlan,
    from: i64,
    high: i64,
    max: usize,
) -> ChangelogResult<Vec<StoredRecord>> {
    let mut out = Vec::new();
    if from >= high || max == 0 {
        return Ok(out);
    }
    scan_batches(plan, high, |summary, payload| {
        if summary.base_offset + i64::from(summary.count) <= from {
            return Ok(ControlFlow::Continue(()));
        }
        for (i, record) in decode_batch(plan, summary, payload)?
            .into_iter()
            .enumerate()
        {
            let offset = summary.base_offset + i as i64;
            if offset < from {
                continue;
            }
            if offset >= high || out.len() >= max {
                break;
            }
            out.push(StoredRecord {
                offset: Offset(offset),
                record,
            });
        }
        Ok(if out.len() >= max {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    Ok(out)
}

/// Scans a segment, verifying every batch. In the last segment, a torn or corrupt tail is cut
/// off (an append that was never acknowledged); anywhere else damage is an error.
fn recover_segment(dir: &Path, base: i64, is_last: bool) -> ChangelogResult<Segment> {
    let path = segment_path(dir, base);
    let file = File::open(&path).map_err(|e| io_err(&path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(&path, e))?.len();
    let mut reader = BufReader::with_capacity(1024 * 1024, file);
    let mut segment = Segment {
        base,
        path: path.clone(),
        size: 0,
        end: base,
        max_ts: i64::MIN,
        index: Vec::new(),
        last_indexed_position: 0,
    };
    let mut position = 0u64;
    let damage = loop {
        if position == file_len {
            break None;
        }
        let mut header = [0u8; HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            break Some("a truncated batch header");
        }
        let Some(header) = format::parse_header(&header) else {
            break Some("a bad batch header");
        };
        let mut payload = vec![0u8; header.payload_len];
        if reader.read_exact(&mut payload).is_err() {
            break Some("a truncated batch");
        }
        let Some(summary) = format::verify_payload(header, &payload) else {
            break Some("a checksum mismatch");
        };
        if summary.base_offset != segment.end {
            break Some("an out-of-sequence batch");
        }
        let len = (HEADER_LEN + header.payload_len) as u64;
        segment.note_batch(
            summary.base_offset,
            summary.count,
            summary.max_timestamp,
            position,
            len,
        );
        position += len;
    };
    if let Some(what) = damage {
        if !is_last {
            return Err(ChangelogError::Corrupt {
                location: path.display().to_string(),
                reason: format!("{what} at byte {position} of a sealed segment"),
            });
        }
        warn!(
            segment = %path.display(),
            valid_bytes = position,
            dropped_bytes = file_len - position,
            next_offset = segment.end,
            "changelog recovery: found {what} at the tail (an append interrupted by a crash, never acknowledged); truncating to the last valid record"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.set_len(position).map_err(|e| io_err(&path, e))?;
        file.sync_all().map_err(|e| io_err(&path, e))?;
    }
    Ok(segment)
}

/// `fsync` of a partition file's data, with the `local-changelog-fsync` fail point (tests inject
/// a failed fsync through it).
fn sync_data(file: &std::fs::File) -> std::io::Result<()> {
    fail::fail_point!("local-changelog-fsync", |_| Err(std::io::Error::other(
        "injected fsync failure"
    )));
    file.sync_data()
}
