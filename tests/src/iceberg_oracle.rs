//! Random commits against an in-memory model, for checking the Iceberg commit layer with outside
//! readers (iceberg-rust's scan here, PyIceberg in tests/python).
//!
//! A row-delta step commits new rows (inserts of fresh ids and updates of live ids) in a new data
//! file, plus position deletes for the old copies of updated ids and for deleted ids. A rewrite
//! step merges a few live data files into one, applying their deletes (the model does not
//! change; the rows move). A merge step merges the current snapshot's manifests (no data
//! change). An expire step drops old snapshots and their files. After each step
//! the model (id -> value) is what every reader must see in that step's snapshot, for as long
//! as the snapshot is retained.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use iceberg::spec::{DataFile, Struct};
use iceberg::table::Table;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::expire::ExpireSnapshots;
use unitable_core::commit::files::{
    PositionDelete, read_data_file, write_data_file, write_position_deletes,
};
use unitable_core::commit::merge::MergeManifests;
use unitable_core::commit::plan::{
    PlannedFile, manifests_of, plan_files, read_position_deletes, snapshot_entries,
};
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::rewrite::{PositionMap, RewriteFiles};
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::TableName;
use unitable_core::scan::{ScanOptions, read_scan};
use unitable_core::table::{Column, TableDef, TableSpec};

/// The table the oracle writes.
pub const ORACLE_TABLE: &str = "oracle.items";

/// The rows (id -> v) snapshot `snapshot_id` of an oracle-shaped table reads as, through
/// [`read_scan`]; a duplicate id is an error.
pub async fn scan_id_values(table: &Table, snapshot_id: i64) -> Result<BTreeMap<i64, String>> {
    let scan = table.scan().snapshot_id(snapshot_id).build()?;
    let batches: Vec<RecordBatch> = read_scan(table, &scan, ScanOptions::default())
        .await?
        .try_collect()
        .await?;
    let mut rows = BTreeMap::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id")?;
        let vs = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("v")?;
        for i in 0..b.num_rows() {
            ensure!(
                rows.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "duplicate id {}",
                ids.value(i)
            );
        }
    }
    Ok(rows)
}

/// Every file snapshot `id` reaches: manifest list, manifests, live data and delete files.
pub async fn reachable(table: &Table, id: i64) -> Result<BTreeSet<String>> {
    let metadata = table.metadata();
    let snapshot = metadata.snapshot_by_id(id).context("snapshot")?;
    let mut out = BTreeSet::from([snapshot.manifest_list().to_string()]);
    for m in manifests_of(table.file_io(), metadata, snapshot).await? {
        out.insert(m.manifest_path.clone());
    }
    for f in snapshot_entries(table.file_io(), metadata, Some(id)).await? {
        if f.is_live() {
            out.insert(f.data_file.file_path().to_string());
        }
    }
    Ok(out)
}

/// Where a row lives: (data file path, row position).
pub type Location = (String, i64);

/// One committed step: its snapshot and the rows it must read as.
#[derive(Debug, Clone)]
pub struct Step {
    /// The snapshot committed by this step.
    pub snapshot_id: i64,
    /// id -> value of every live row.
    pub rows: BTreeMap<i64, String>,
    /// `delta` or `rewrite`.
    pub op: &'static str,
    /// The snapshot was expired by a later step.
    pub expired: bool,
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Creates a two-column table `name` (`id int64` primary key, `v string`) in the embedded
/// catalog of `data_dir` and returns the catalog with a committer for it.
pub async fn create_items_table(
    data_dir: &Path,
    name: &TableName,
) -> Result<(TableCatalog, Committer)> {
    let config = CatalogConfig::embedded(data_dir);
    let catalog = TableCatalog::open(config.clone()).await?;
    let def = TableDef::new(
        name.clone(),
        TableSpec {
            columns: vec![Column::parse("id:int64!")?, Column::parse("v:string")?],
            primary_key: vec!["id".into()],
            ..TableSpec::default()
        },
    )?;
    catalog.create(&def).await?;
    let pointer = Arc::new(SqlMetadataPointer::connect(&config).await?);
    Ok((catalog.clone(), Committer::new(catalog, pointer)))
}

/// Writes `rows` (in order) as a data file of `table` at `path`.
pub async fn write_rows(table: &Table, path: &str, rows: &[(i64, String)]) -> Result<DataFile> {
    let schema = table.metadata().current_schema().clone();
    let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    let batch = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )?;
    Ok(write_data_file(table.file_io(), path, schema, &batch, Struct::empty(), 0).await?)
}

/// The rows of a planned data file that its deletes leave live, with their positions.
pub async fn live_rows(table: &Table, planned: &PlannedFile) -> Result<Vec<(i64, i64, String)>> {
    let path = planned.data_file.file_path();
    let deleted = read_position_deletes(table.file_io(), &planned.deletes).await?;
    let gone = deleted.get(path).cloned().unwrap_or_default();
    let mut out = Vec::new();
    let mut pos = 0i64;
    for batch in read_data_file(table.file_io(), path).await? {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("id column")?;
        let vs = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("v column")?;
        for i in 0..batch.num_rows() {
            if !gone.contains(&pos) {
                out.push((pos, ids.value(i), vs.value(i).to_string()));
            }
            pos += 1;
        }
    }
    Ok(out)
}

/// A key index of the table's current snapshot built from its files: id -> location and value.
pub async fn key_index(table: &Table) -> Result<(BTreeMap<i64, Location>, BTreeMap<i64, String>)> {
    let mut location = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for planned in plan_files(table.file_io(), table.metadata(), None).await? {
        for (pos, id, v) in live_rows(table, &planned).await? {
            let path = planned.data_file.file_path().to_string();
            anyhow::ensure!(
                location.insert(id, (path, pos)).is_none(),
                "id {id} is live twice"
            );
            rows.insert(id, v);
        }
    }
    Ok((location, rows))
}

/// A compaction of `files` (planned at snapshot `start`) into one new data file: the rewrite to
/// commit and where each moved id now lives.
pub async fn compact(
    table: &Table,
    files: &[PlannedFile],
    start: i64,
    commit_id: String,
) -> Result<(RewriteFiles, Vec<(i64, Location)>)> {
    let new_path = format!(
        "{}/data/compacted-{}.parquet",
        table.metadata().location(),
        commit_id
    );
    let new: Arc<str> = Arc::from(new_path.as_str());
    let mut rows = Vec::new();
    let mut moved = Vec::new();
    let mut map = PositionMap::new();
    for planned in files {
        for (pos, id, v) in live_rows(table, planned).await? {
            let new_pos = rows.len() as i64;
            map.insert(planned.data_file.file_path(), pos, new.clone(), new_pos);
            moved.push((id, (new_path.clone(), new_pos)));
            rows.push((id, v));
        }
    }
    let added = if rows.is_empty() {
        Vec::new()
    } else {
        vec![write_rows(table, &new_path, &rows).await?]
    };
    let rewrite = RewriteFiles {
        removed_data_files: files.iter().map(|p| p.data_file.clone()).collect(),
        added_data_files: added,
        starting_snapshot_id: Some(start),
        position_map: Some(Arc::new(map)),
        commit_id,
        ..RewriteFiles::default()
    };
    Ok((rewrite, moved))
}

/// Random steps against the oracle table, with the model.
#[derive(Debug)]
pub struct Oracle {
    catalog: TableCatalog,
    committer: Committer,
    name: TableName,
    seed: u64,
    rng: Rng,
    model: BTreeMap<i64, String>,
    location: BTreeMap<i64, Location>,
    next_id: i64,
    steps: Vec<Step>,
}

impl Oracle {
    /// Creates the oracle table in the embedded catalog of `data_dir`.
    pub async fn create(data_dir: &Path, seed: u64) -> Result<Self> {
        let name: TableName = ORACLE_TABLE.parse()?;
        let (catalog, committer) = create_items_table(data_dir, &name).await?;
        Ok(Self {
            catalog,
            committer,
            name,
            seed,
            rng: Rng(seed | 1),
            model: BTreeMap::new(),
            location: BTreeMap::new(),
            next_id: 0,
            steps: Vec::new(),
        })
    }

    /// Every step so far.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The catalog.
    pub fn catalog(&self) -> &TableCatalog {
        &self.catalog
    }

    /// One random step: mostly row deltas, some rewrites, a few expirations and manifest
    /// merges.
    pub async fn random_step(&mut self) -> Result<()> {
        match self.rng.below(10) {
            0..=1 if self.rewrite().await? => Ok(()),
            2 if self.steps.len() > 3 => self.expire().await,
            3 if self.steps.len() > 5 && self.merge_manifests().await? => Ok(()),
            _ => self.row_delta().await,
        }
    }

    /// Re-reads where every key lives from the current snapshot, after another process (a
    /// compactor) moved rows; fails unless the table holds exactly the model.
    pub async fn reindex(&mut self) -> Result<()> {
        let table = self.catalog.load(&self.name).await?;
        let (location, rows) = key_index(&table).await?;
        anyhow::ensure!(rows == self.model, "the table differs from the model");
        self.location = location;
        Ok(())
    }

    /// Merges the current snapshot's manifests; false when there was nothing to merge.
    pub async fn merge_manifests(&mut self) -> Result<bool> {
        let n = self.steps.len();
        let merge = MergeManifests {
            commit_id: format!("oracle-{}-{n}-merge", self.seed),
            ..MergeManifests::default()
        };
        let merged = self
            .committer
            .merge_manifests(&self.name, &merge)
            .await
            .with_context(|| format!("merge at step {n}"))?;
        match merged {
            Some(m) => {
                self.record(m.committed.snapshot_id, "merge");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Commits one random row delta.
    pub async fn row_delta(&mut self) -> Result<()> {
        let n = self.steps.len();
        let table = self.catalog.load(&self.name).await?;
        let mut writes: BTreeMap<i64, String> = BTreeMap::new();
        let mut deletes: Vec<i64> = Vec::new();
        for _ in 0..self.rng.below(8) {
            self.next_id += 1;
            writes.insert(self.next_id, format!("s{n}-new{}", self.next_id));
        }
        let live: Vec<i64> = self.model.keys().copied().collect();
        for _ in 0..self.rng.below(4) {
            if let Some(&id) = live.get(self.rng.below(live.len() as u64) as usize) {
                if self.rng.below(3) == 0 {
                    writes.remove(&id);
                    if !deletes.contains(&id) {
                        deletes.push(id);
                    }
                } else if !deletes.contains(&id) {
                    writes.insert(id, format!("s{n}-upd{id}"));
                }
            }
        }
        let mut delta = RowDelta {
            commit_id: format!("oracle-{}-{n}", self.seed),
            ..RowDelta::default()
        };
        delta
            .properties
            .insert("unitable.changelog-offsets".into(), format!("0:{n}"));
        let mut position_deletes = Vec::new();
        for id in writes.keys().chain(deletes.iter()) {
            if let Some((path, pos)) = self.location.get(id) {
                delta.deleted_from.insert(path.clone());
                position_deletes.push(PositionDelete {
                    file_path: path.clone(),
                    pos: *pos,
                });
            }
        }
        let base = table.metadata().location().to_string();
        let tag = format!("{:016x}", self.rng.below(u64::MAX));
        if !writes.is_empty() {
            let rows: Vec<(i64, String)> = writes.iter().map(|(k, v)| (*k, v.clone())).collect();
            let path = format!("{base}/data/step{n}-{tag}.parquet");
            let file = write_rows(&table, &path, &rows).await?;
            for (pos, id) in writes.keys().enumerate() {
                self.location
                    .insert(*id, (file.file_path().to_string(), pos as i64));
            }
            delta.data_files.push(file);
        }
        if !position_deletes.is_empty() {
            let path = format!("{base}/data/step{n}-{tag}-deletes.parquet");
            delta.delete_files.push(
                write_position_deletes(
                    table.file_io(),
                    &path,
                    position_deletes,
                    Struct::empty(),
                    0,
                )
                .await?,
            );
        }
        for id in &deletes {
            self.model.remove(id);
            self.location.remove(id);
        }
        self.model.extend(writes);
        let committed = self
            .committer
            .commit_row_delta(&self.name, &delta)
            .await
            .with_context(|| format!("step {n}"))?;
        self.record(committed.snapshot_id, "delta");
        Ok(())
    }

    /// Merges 2 or 3 random live data files; false when there are fewer than 2.
    pub async fn rewrite(&mut self) -> Result<bool> {
        let n = self.steps.len();
        let table = self.catalog.load(&self.name).await?;
        let Some(start) = table.metadata().current_snapshot_id() else {
            return Ok(false);
        };
        let mut planned = plan_files(table.file_io(), table.metadata(), None).await?;
        if planned.len() < 2 {
            return Ok(false);
        }
        let take = 2 + self.rng.below(2) as usize;
        let mut chosen = Vec::new();
        while chosen.len() < take && !planned.is_empty() {
            chosen.push(planned.remove(self.rng.below(planned.len() as u64) as usize));
        }
        let (rewrite, moved) = compact(
            &table,
            &chosen,
            start,
            format!("oracle-{}-{n}-rw", self.seed),
        )
        .await?;
        let committed = self
            .committer
            .commit_rewrite(&self.name, &rewrite)
            .await
            .with_context(|| format!("rewrite at step {n}"))?;
        for (id, loc) in moved {
            self.location.insert(id, loc);
        }
        self.record(committed.snapshot_id, "rewrite");
        Ok(true)
    }

    /// Expires all but the last 1 to 4 snapshots.
    pub async fn expire(&mut self) -> Result<()> {
        let request = ExpireSnapshots {
            older_than_ms: i64::MAX,
            retain_last: 1 + self.rng.below(4) as usize,
            dry_run: false,
        };
        let report = self
            .committer
            .expire_snapshots(&self.name, &request)
            .await?;
        let expired: BTreeSet<i64> = report.expired_snapshot_ids.into_iter().collect();
        for step in &mut self.steps {
            step.expired |= expired.contains(&step.snapshot_id);
        }
        Ok(())
    }

    /// Records the current snapshot as a step holding the model, after another process (a
    /// compactor) committed it.
    pub async fn record_head(&mut self, op: &'static str) -> Result<()> {
        let table = self.catalog.load(&self.name).await?;
        let head = table
            .metadata()
            .current_snapshot_id()
            .context("the table has no snapshot")?;
        self.record(head, op);
        Ok(())
    }

    fn record(&mut self, snapshot_id: i64, op: &'static str) {
        self.steps.push(Step {
            snapshot_id,
            rows: self.model.clone(),
            op,
            expired: false,
        });
    }
}

/// Creates the oracle table in `data_dir` and commits `steps` random row deltas; returns every
/// step's snapshot and expected rows.
pub async fn run_random_deltas(data_dir: &Path, seed: u64, steps: usize) -> Result<Vec<Step>> {
    let mut oracle = Oracle::create(data_dir, seed).await?;
    for _ in 0..steps {
        oracle.row_delta().await?;
    }
    Ok(oracle.steps().to_vec())
}

/// Like [`run_random_deltas`], with rewrites and expirations mixed in: runs until `steps`
/// snapshots were committed.
pub async fn run_random_mixed(data_dir: &Path, seed: u64, steps: usize) -> Result<Vec<Step>> {
    let mut oracle = Oracle::create(data_dir, seed).await?;
    while oracle.steps().len() < steps {
        oracle.random_step().await?;
    }
    Ok(oracle.steps().to_vec())
}

/// `rounds` rounds of 8 random row deltas, each followed by a compaction run of the table's
/// compactor (bin-packing from 2 small files, then a manifest merge; nothing expires), recorded
/// as a step `compact` holding the model; then 4 more row deltas on the compacted table.
pub async fn run_compacted(data_dir: &Path, seed: u64, rounds: usize) -> Result<Vec<Step>> {
    use unitable_compactor::{CompactOptions, Compactor, SchedulerConfig};
    let mut oracle = Oracle::create(data_dir, seed).await?;
    let name: TableName = ORACLE_TABLE.parse()?;
    let committer = oracle.committer.clone();
    committer
        .commit_properties(
            &name,
            Some("oracle-compaction-props"),
            BTreeMap::from([
                ("unitable.compaction.min-input-files".into(), "2".into()),
                (
                    "unitable.compaction.min-snapshots-to-keep".into(),
                    "100000".into(),
                ),
            ]),
            BTreeMap::new(),
        )
        .await?;
    let compactor = Compactor::new(
        oracle.catalog.clone(),
        committer,
        Arc::new(unitable_core::clock::SystemClock),
        SchedulerConfig::default(),
    );
    let options = CompactOptions {
        dry_run: false,
        orphans: false,
    };
    for _ in 0..rounds {
        for _ in 0..8 {
            oracle.row_delta().await?;
        }
        compactor.compact(&name, options).await?;
        oracle.reindex().await?;
        oracle.record_head("compact").await?;
    }
    for _ in 0..4 {
        oracle.row_delta().await?;
    }
    Ok(oracle.steps().to_vec())
}
