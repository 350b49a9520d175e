//! Random row deltas against an in-memory model, for checking the Iceberg commit layer with
//! outside readers (iceberg-rust's scan here, PyIceberg in tests/python).
//!
//! Each step commits one row delta: new rows (inserts of fresh ids and updates of live ids) in a
//! new data file, plus position deletes for the old copies of updated ids and for deleted ids.
//! After each step the model (id -> value) is what every reader must see in that snapshot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use iceberg::spec::Struct;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::files::{PositionDelete, write_data_file, write_position_deletes};
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::TableName;
use unitable_core::table::{Column, TableDef, TableSpec};

/// The table the oracle writes.
pub const ORACLE_TABLE: &str = "oracle.items";

/// One committed step: its snapshot and the rows it must read as.
#[derive(Debug, Clone)]
pub struct Step {
    /// The snapshot committed by this step.
    pub snapshot_id: i64,
    /// id -> value of every live row.
    pub rows: BTreeMap<i64, String>,
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

/// Creates the oracle table in the embedded catalog of `data_dir` and commits `steps` random
/// row deltas; returns every step's snapshot and expected rows.
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

pub async fn run_random_deltas(data_dir: &Path, seed: u64, steps: usize) -> Result<Vec<Step>> {
    let name: TableName = ORACLE_TABLE.parse()?;
    let (catalog, committer) = create_items_table(data_dir, &name).await?;
    let mut rng = Rng(seed | 1);
    let mut model: BTreeMap<i64, String> = BTreeMap::new();
    // Where each live id is stored: (data file path, row position).
    let mut location: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut next_id = 0i64;
    let mut out = Vec::new();
    for step in 0..steps {
        let table = catalog.load(&name).await?;
        let schema = table.metadata().current_schema().clone();
        let mut writes: BTreeMap<i64, String> = BTreeMap::new();
        let mut deletes: Vec<i64> = Vec::new();
        for _ in 0..rng.below(8) {
            next_id += 1;
            writes.insert(next_id, format!("s{step}-new{next_id}"));
        }
        let live: Vec<i64> = model.keys().copied().collect();
        for _ in 0..rng.below(4) {
            if let Some(&id) = live.get(rng.below(live.len() as u64) as usize) {
                if rng.below(3) == 0 {
                    writes.remove(&id);
                    if !deletes.contains(&id) {
                        deletes.push(id);
                    }
                } else if !deletes.contains(&id) {
                    writes.insert(id, format!("s{step}-upd{id}"));
                }
            }
        }
        let mut delta = RowDelta {
            commit_id: format!("oracle-{seed}-{step}"),
            ..RowDelta::default()
        };
        delta
            .properties
            .insert("unitable.changelog-offsets".into(), format!("0:{step}"));
        let mut position_deletes = Vec::new();
        for id in writes.keys().chain(deletes.iter()) {
            if let Some((path, pos)) = location.get(id) {
                position_deletes.push(PositionDelete {
                    file_path: path.clone(),
                    pos: *pos,
                });
            }
        }
        let base = table.metadata().location().to_string();
        if !writes.is_empty() {
            let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
            let batch = RecordBatch::try_new(
                arrow_schema,
                vec![
                    Arc::new(Int64Array::from_iter_values(writes.keys().copied())),
                    Arc::new(StringArray::from_iter_values(writes.values())),
                ],
            )?;
            let path = format!("{base}/data/step{step}-{}.parquet", uuid_like(&mut rng));
            let file = write_data_file(
                table.file_io(),
                &path,
                schema.clone(),
                &batch,
                Struct::empty(),
                0,
            )
            .await?;
            for (pos, id) in writes.keys().enumerate() {
                location.insert(*id, (file.file_path().to_string(), pos as i64));
            }
            delta.data_files.push(file);
        }
        if !position_deletes.is_empty() {
            let path = format!(
                "{base}/data/step{step}-{}-deletes.parquet",
                uuid_like(&mut rng)
            );
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
            model.remove(id);
            location.remove(id);
        }
        model.extend(writes);
        let committed = committer
            .commit_row_delta(&name, &delta)
            .await
            .with_context(|| format!("step {step}"))?;
        out.push(Step {
            snapshot_id: committed.snapshot_id,
            rows: model.clone(),
        });
    }
    Ok(out)
}

fn uuid_like(rng: &mut Rng) -> String {
    format!("{:016x}", rng.below(u64::MAX))
}
