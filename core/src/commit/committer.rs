//! The committer and its one attempt loop, shared by every operation (row delta, rewrite,
//! table properties, expire snapshots).
//!
//! An attempt loads the table, asks the operation whether it already landed (idempotent retries:
//! a commit whose pointer swap succeeded but whose answer was lost is found, not repeated), lets
//! the operation validate itself against the loaded metadata and stage new metadata, writes that
//! metadata to a new file (never overwriting one) and swaps the catalog's pointer with a
//! compare-and-swap. A lost race backs off (5 ms doubling to 500 ms) and starts over on the new
//! head; validation errors are final.
//!
//! **Turns.** Row deltas commit quickly and often; a rewrite's attempt is slower (it reads the
//! new delete files and rewrites manifests), so a back-to-back writer can win every race. After
//! a rewrite has lost [`CLAIM_TURN_AFTER`] races it claims the table's turn (in this process):
//! row deltas of that table wait before their next attempt until the rewrite finishes, at most
//! [`MAX_YIELD`], then go on regardless. Committers share turns through clones.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iceberg::MetadataLocation;
use iceberg::io::FileIO;
use iceberg::spec::{
    MAIN_BRANCH, ManifestFile, ManifestListWriter, Snapshot, Summary, TableMetadata,
    TableMetadataBuilder,
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::cache::ManifestCache;
use super::plan::{TrackedFile, resolve_snapshot};
use super::pointer::{MetadataPointer, SwapOutcome};
use super::{CommitError, CommitResult};
use crate::catalog::TableCatalog;
use crate::naming::{TableName, props, summary};

/// The snapshot a commit produced (or found already committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The snapshot id.
    pub snapshot_id: i64,
    /// Its sequence number.
    pub sequence_number: i64,
    /// True when an earlier attempt with the same commit id had already landed.
    pub already_committed: bool,
}

/// Lost races after which a rewrite asks row deltas to wait (see the module header).
pub const CLAIM_TURN_AFTER: u32 = 2;
/// The longest a row delta waits for a rewrite's turn before it commits anyway.
pub const MAX_YIELD: Duration = Duration::from_secs(2);

/// Commits to tables of one catalog.
#[derive(Debug, Clone)]
pub struct Committer {
    catalog: TableCatalog,
    pointer: Arc<dyn MetadataPointer>,
    max_attempts: u32,
    cache: Arc<ManifestCache>,
    turns: Arc<Turns>,
}

/// Per table, whether a rewrite holds the turn (row deltas then wait, bounded).
#[derive(Debug, Default)]
struct Turns {
    tables: std::sync::Mutex<HashMap<TableName, watch::Sender<bool>>>,
}

impl Turns {
    fn sender(&self, table: &TableName) -> watch::Sender<bool> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .entry(table.clone())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }

    fn claim(&self, table: &TableName) -> TurnGuard {
        let sender = self.sender(table);
        sender.send_replace(true);
        TurnGuard(sender)
    }

    /// Waits while a rewrite holds `table`'s turn, at most `limit`.
    async fn wait_clear(&self, table: &TableName, limit: Duration) {
        let mut receiver = self.sender(table).subscribe();
        if !*receiver.borrow() {
            return;
        }
        debug!(%table, "a rewrite holds the turn; waiting briefly");
        let _ = tokio::time::timeout(limit, receiver.wait_for(|held| !*held)).await;
    }
}

/// Releases a claimed turn when dropped.
struct TurnGuard(watch::Sender<bool>);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// How an operation takes part in turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnRole {
    /// Neither waits nor claims (properties, expiration).
    Neutral,
    /// Waits (bounded) while a rewrite holds the turn (row deltas).
    Yields,
    /// Claims the turn after losing [`CLAIM_TURN_AFTER`] races (rewrites).
    Claims,
}

/// The table state an attempt builds on.
pub(crate) struct Base<'a> {
    pub(crate) table: &'a TableName,
    pub(crate) metadata: &'a TableMetadata,
    pub(crate) file_io: &'a FileIO,
    /// The metadata file the pointer names now (the compare-and-swap's expected value).
    pub(crate) location: &'a str,
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    /// Manifests and delete files read by earlier attempts and commits.
    pub(crate) cache: &'a ManifestCache,
}

/// What an attempt decided.
pub(crate) enum Staged<T> {
    /// Swap the pointer to this metadata; `output` is the result if the swap wins.
    Commit {
        metadata: Box<TableMetadata>,
        output: T,
    },
    /// Nothing to commit (e.g. nothing to expire): finish with `output`.
    Done(T),
}

/// One commit operation, run by [`Committer::run`].
#[async_trait]
pub(crate) trait Attempt: Send {
    type Output: Send;

    /// The result, when this operation already landed in `metadata` (checked first on every
    /// attempt, before any validation).
    fn landed(&self, metadata: &TableMetadata) -> Option<Self::Output>;

    /// Validates the operation against `base` and stages the new metadata.
    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<Self::Output>>;

    /// How the operation takes part in turns.
    fn turn_role(&self) -> TurnRole {
        TurnRole::Neutral
    }
}

impl Committer {
    /// A committer over `catalog`, swapping pointers through `pointer`.
    pub fn new(catalog: TableCatalog, pointer: Arc<dyn MetadataPointer>) -> Self {
        Self {
            catalog,
            pointer,
            max_attempts: 20,
            cache: Arc::default(),
            turns: Arc::default(),
        }
    }

    /// Sets how many conflicting attempts are made before giving up.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &TableCatalog {
        &self.catalog
    }

    /// The metadata location the catalog names for `table` now (`None`: no such table), read
    /// straight from the pointer: cheaper than loading the table.
    pub async fn current_metadata_location(
        &self,
        table: &TableName,
    ) -> CommitResult<Option<String>> {
        self.pointer.current(table).await
    }

    /// The live data and delete files of snapshot `snapshot_id` (the current one for `None`),
    /// as [`super::plan::live_files`] gives them, but through this committer's manifest cache:
    /// what a commit (or an earlier call) read is not read again, and what this reads, the
    /// next commit does not read. A committer that starts on a table calls this for the head,
    /// so its first commit validates without another pass over the manifests.
    pub async fn live_files(
        &self,
        file_io: &FileIO,
        metadata: &TableMetadata,
        snapshot_id: Option<i64>,
    ) -> CommitResult<Vec<TrackedFile>> {
        let Some(snapshot) = resolve_snapshot(metadata, snapshot_id)? else {
            return Ok(Vec::new());
        };
        let manifests = self
            .cache
            .manifests(file_io, metadata, &snapshot, |_| true)
            .await?;
        Ok(manifests
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .filter(|f| f.is_live())
            .cloned()
            .collect())
    }

    /// Runs `op` until it commits, finds itself landed, fails validation, or loses
    /// `max_attempts` races.
    pub(crate) async fn run<A: Attempt>(
        &self,
        table: &TableName,
        op: &mut A,
    ) -> CommitResult<A::Output> {
        let mut backoff = Duration::from_millis(5);
        let role = op.turn_role();
        let mut turn: Option<TurnGuard> = None;
        for attempt in 1..=self.max_attempts {
            if role == TurnRole::Yields {
                self.turns.wait_clear(table, MAX_YIELD).await;
            }
            let loaded = self.catalog.load(table).await?;
            let metadata = loaded.metadata();
            if let Some(found) = op.landed(metadata) {
                return Ok(found);
            }
            let location = loaded
                .metadata_location()
                .ok_or_else(|| CommitError::Invalid {
                    reason: format!("{table} has no metadata location"),
                })?
                .to_string();
            let base = Base {
                table,
                metadata,
                file_io: loaded.file_io(),
                location: &location,
                attempt,
                cache: &self.cache,
            };
            let (new_metadata, output) = match op.stage(&base).await? {
                Staged::Done(output) => return Ok(output),
                Staged::Commit { metadata, output } => (*metadata, output),
            };
            let new_location = MetadataLocation::from_str(&location)
                .map_err(|e| CommitError::iceberg("parse the metadata location", e))?
                // A new version with a fresh UUID: never overwrite the file the pointer names.
                .with_next_version()
                .with_new_metadata(&new_metadata);
            new_metadata
                .write_to(loaded.file_io(), &new_location)
                .await
                .map_err(|e| CommitError::iceberg("write table metadata", e))?;
            match self
                .pointer
                .swap(table, &location, &new_location.to_string())
                .await
            {
                Ok(SwapOutcome::Swapped) => {
                    debug!(%table, attempt, "committed");
                    return Ok(output);
                }
                Ok(SwapOutcome::Conflict) => {
                    debug!(%table, attempt, "commit conflict; rebasing on the new head");
                    if role == TurnRole::Claims && attempt >= CLAIM_TURN_AFTER && turn.is_none() {
                        debug!(%table, attempt, "rewrite claims the turn");
                        turn = Some(self.turns.claim(table));
                    }
                }
                Err(e) => {
                    // Unknown outcome: the next attempt reloads and asks `landed` first.
                    warn!(%table, attempt, error = %e, "metadata swap failed with an unknown outcome; checking before retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        drop(turn);
        Err(CommitError::CommitConflict {
            table: table.clone(),
            attempts: self.max_attempts,
        })
    }

    /// A metadata-only commit (no snapshot) setting table properties `updates`, when the table's
    /// properties hold exactly the values in `required` (else [`CommitError::Fenced`]); used to
    /// claim a committer epoch. With a `commit_id`, a retry of a commit that already landed
    /// (recorded in `unitable.properties-commit-id`) succeeds without committing again.
    pub async fn commit_properties(
        &self,
        table: &TableName,
        commit_id: Option<&str>,
        updates: BTreeMap<String, String>,
        required: BTreeMap<String, String>,
    ) -> CommitResult<()> {
        if updates.is_empty() {
            return Err(CommitError::Invalid {
                reason: "a properties commit needs at least one property".into(),
            });
        }
        let mut op = PropertiesCommit {
            commit_id: commit_id.map(String::from),
            updates,
            required,
        };
        self.run(table, &mut op).await
    }
}

struct PropertiesCommit {
    commit_id: Option<String>,
    updates: BTreeMap<String, String>,
    required: BTreeMap<String, String>,
}

#[async_trait]
impl Attempt for PropertiesCommit {
    type Output = ();

    fn landed(&self, metadata: &TableMetadata) -> Option<()> {
        let id = self.commit_id.as_ref()?;
        let props = metadata.properties();
        let applied = props.get(props::PROPERTIES_COMMIT_ID) == Some(id)
            && self.updates.iter().all(|(k, v)| props.get(k) == Some(v));
        applied.then_some(())
    }

    async fn stage(&mut self, base: &Base<'_>) -> CommitResult<Staged<()>> {
        check_required(base.table, base.metadata, &self.required)?;
        let current = base.metadata.properties();
        if self.commit_id.is_none() && self.updates.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(Staged::Done(()));
        }
        let mut updates: HashMap<String, String> = self
            .updates
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(id) = &self.commit_id {
            updates.insert(props::PROPERTIES_COMMIT_ID.into(), id.clone());
        }
        let metadata = TableMetadataBuilder::new_from_metadata(
            base.metadata.clone(),
            Some(base.location.to_string()),
        )
        .set_properties(updates)
        .and_then(|b| b.build())
        .map_err(|e| CommitError::iceberg("set table properties", e))?
        .metadata;
        Ok(Staged::Commit {
            metadata: Box::new(metadata),
            output: (),
        })
    }
}

/// Fails with [`CommitError::Fenced`] unless `metadata`'s properties hold every `required` value.
pub(crate) fn check_required(
    table: &TableName,
    metadata: &TableMetadata,
    required: &BTreeMap<String, String>,
) -> CommitResult<()> {
    for (property, expected) in required {
        let found = metadata.properties().get(property);
        if found != Some(expected) {
            return Err(CommitError::Fenced {
                table: table.clone(),
                property: property.clone(),
                expected: expected.clone(),
                found: found.cloned(),
            });
        }
    }
    Ok(())
}

/// A fresh random positive snapshot id.
pub(crate) fn new_snapshot_id() -> i64 {
    let id = uuid::Uuid::new_v4().as_u64_pair().0 & (i64::MAX as u64);
    (id as i64).max(1)
}

/// The snapshot carrying `commit_id` in its summary among the main branch's history (the
/// current snapshot and its ancestors), if any. A snapshot no longer in that history (rolled
/// back) does not count: its commit is not part of the table.
pub(crate) fn find_commit(metadata: &TableMetadata, commit_id: &str) -> Option<Committed> {
    let current = metadata.current_snapshot_id()?;
    super::read::ancestors(metadata, current)
        .into_iter()
        .find(|s| {
            s.summary()
                .additional_properties
                .get(summary::COMMIT_ID)
                .is_some_and(|id| id == commit_id)
        })
        .map(|s| Committed {
            snapshot_id: s.snapshot_id(),
            sequence_number: s.sequence_number(),
            already_committed: true,
        })
}

/// Writes the manifest list of a new main-branch snapshot `snapshot_id` on top of `base`
/// (listing `manifests`, in order) and returns the new metadata with that snapshot as the head
/// of `main`, and the snapshot.
pub(crate) async fn stage_snapshot(
    base: &Base<'_>,
    snapshot_id: i64,
    manifests: Vec<ManifestFile>,
    summary: Summary,
) -> CommitResult<(TableMetadata, Committed)> {
    let metadata = base.metadata;
    let parent = metadata.current_snapshot();
    let sequence_number = metadata.next_sequence_number();
    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-{}-{}.avro",
        metadata.location(),
        base.attempt,
        uuid::Uuid::now_v7()
    );
    let output = base
        .file_io
        .new_output(&list_path)
        .map_err(|e| CommitError::iceberg(format!("open {list_path}"), e))?;
    let writer = output
        .writer()
        .await
        .map_err(|e| CommitError::iceberg(format!("create {list_path}"), e))?;
    let mut list = ManifestListWriter::v2(
        writer,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())
        .map_err(|e| CommitError::iceberg("add manifests to the list", e))?;
    list.close()
        .await
        .map_err(|e| CommitError::iceberg(format!("write {list_path}"), e))?;

    let timestamp_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(metadata.last_updated_ms() + 1);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .build();
    let new_metadata =
        TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(base.location.to_string()))
            .set_branch_snapshot(snapshot, MAIN_BRANCH)
            .and_then(|b| b.build())
            .map_err(|e| CommitError::iceberg("build the new table metadata", e))?
            .metadata;
    Ok((
        new_metadata,
        Committed {
            snapshot_id,
            sequence_number,
            already_committed: false,
        },
    ))
}
