//! A committer's cache of manifest entries and position-delete file contents.
//!
//! Every attempt validates against the whole head snapshot (which data files are live, which
//! deletes touch them). Manifests and delete files are immutable (unitable never reuses a
//! path), so what was read once is kept: an attempt reads only what is new since the last one,
//! which keeps slow operations (rewrites) from being starved by fast ones (row deltas). Entries
//! are keyed by manifest path and the sequence number and snapshot the manifest list assigns
//! (what inheritance depends on). The cache is bounded: past its capacity it starts over.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt, stream};
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, ManifestContentType, ManifestFile, SnapshotRef, TableMetadata};

use super::CommitResult;
use super::plan::{
    READ_CONCURRENCY, TrackedFile, manifest_entries, manifests_of, read_position_deletes,
};

/// Position deletes of one file: data file path -> positions.
pub(crate) type Deletes = Arc<HashMap<String, BTreeSet<i64>>>;

/// Cached manifests and delete files (see the module docs).
#[derive(Debug)]
pub(crate) struct ManifestCache {
    state: Mutex<State>,
    /// Capacity in cached items (manifest entries plus delete positions).
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(String, i64, i64), Arc<Vec<TrackedFile>>>,
    deletes: HashMap<String, Deletes>,
    size: usize,
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self::with_capacity(2_000_000)
    }
}

impl ManifestCache {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account(&self, state: &mut State, size: usize) {
        if state.size + size > self.capacity {
            *state = State::default();
        }
        state.size += size;
    }

    /// Every entry of `manifest`.
    pub(crate) async fn entries(
        &self,
        file_io: &FileIO,
        manifest: &ManifestFile,
    ) -> CommitResult<Arc<Vec<TrackedFile>>> {
        let key = (
            manifest.manifest_path.clone(),
            manifest.sequence_number,
            manifest.added_snapshot_id,
        );
        if let Some(found) = self.lock().entries.get(&key) {
            return Ok(found.clone());
        }
        let read = Arc::new(manifest_entries(file_io, manifest).await?);
        let mut state = self.lock();
        self.account(&mut state, read.len().max(1));
        state.entries.insert(key, read.clone());
        Ok(read)
    }

    /// The contents of the position-delete file `file`.
    pub(crate) async fn deletes(&self, file_io: &FileIO, file: &DataFile) -> CommitResult<Deletes> {
        if let Some(found) = self.lock().deletes.get(file.file_path()) {
            return Ok(found.clone());
        }
        let read = Arc::new(read_position_deletes(file_io, std::slice::from_ref(file)).await?);
        let mut state = self.lock();
        self.account(
            &mut state,
            read.values().map(BTreeSet::len).sum::<usize>().max(1),
        );
        state
            .deletes
            .insert(file.file_path().to_string(), read.clone());
        Ok(read)
    }

    /// The manifests of `snapshot` that `wanted` keeps, with their entries, in manifest-list
    /// order (see [`ManifestCache::with_entries`]).
    pub(crate) async fn manifests(
        &self,
        file_io: &FileIO,
        metadata: &TableMetadata,
        snapshot: &SnapshotRef,
        wanted: impl Fn(&ManifestFile) -> bool,
    ) -> CommitResult<Vec<(ManifestFile, Arc<Vec<TrackedFile>>)>> {
        let mut manifests = manifests_of(file_io, metadata, snapshot).await?;
        manifests.retain(|m| wanted(m));
        self.with_entries(file_io, manifests).await
    }

    /// `manifests` with their entries. Manifests not cached yet are read [`READ_CONCURRENCY`]
    /// at a time: a committer that starts on a table reads all of them, and one after the
    /// other that took seconds on an object store.
    pub(crate) async fn with_entries(
        &self,
        file_io: &FileIO,
        manifests: Vec<ManifestFile>,
    ) -> CommitResult<Vec<(ManifestFile, Arc<Vec<TrackedFile>>)>> {
        // (Collected first, as in `plan::read_position_deletes`, so the future stays `Send`.)
        let reads: Vec<_> = manifests.iter().map(|m| self.entries(file_io, m)).collect();
        let entries: Vec<Arc<Vec<TrackedFile>>> = stream::iter(reads)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(manifests.into_iter().zip(entries).collect())
    }

    /// The head snapshot's manifests with their entries.
    pub(crate) async fn head(
        &self,
        file_io: &FileIO,
        metadata: &TableMetadata,
    ) -> CommitResult<Vec<(ManifestFile, Arc<Vec<TrackedFile>>)>> {
        match metadata.current_snapshot() {
            None => Ok(Vec::new()),
            Some(snapshot) => self.manifests(file_io, metadata, snapshot, |_| true).await,
        }
    }

    /// The paths of the head snapshot's live data files.
    pub(crate) async fn live_data_paths(
        &self,
        file_io: &FileIO,
        metadata: &TableMetadata,
    ) -> CommitResult<HashSet<String>> {
        let Some(snapshot) = metadata.current_snapshot() else {
            return Ok(HashSet::new());
        };
        let data = self
            .manifests(file_io, metadata, snapshot, |m| {
                m.content == ManifestContentType::Data
            })
            .await?;
        Ok(data
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .filter(|f| f.is_live())
            .map(|f| f.data_file.file_path().to_string())
            .collect())
    }
}
