//! The commit layer checked by an outside reader: after random row deltas, iceberg-rust's scan of
//! every snapshot (position deletes applied) equals the model.

use std::collections::BTreeMap;

use anyhow::Result;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_tests::iceberg_oracle::{ORACLE_TABLE, run_random_deltas};

async fn scan(catalog: &TableCatalog, snapshot_id: i64) -> Result<BTreeMap<i64, String>> {
    let table = catalog.load(&ORACLE_TABLE.parse()?).await?;
    let batches: Vec<RecordBatch> = table
        .scan()
        .snapshot_id(snapshot_id)
        .build()?
        .to_arrow()
        .await?
        .try_collect()
        .await?;
    let mut rows = BTreeMap::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| anyhow::anyhow!("id column"))?;
        let vs = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| anyhow::anyhow!("v column"))?;
        for i in 0..b.num_rows() {
            anyhow::ensure!(
                rows.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "duplicate id {}",
                ids.value(i)
            );
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_snapshot_of_random_row_deltas_reads_as_the_model() -> Result<()> {
    for seed in [3, 17, 99] {
        let dir = tempfile::tempdir()?;
        let steps = run_random_deltas(dir.path(), seed, 25).await?;
        let catalog = TableCatalog::open(CatalogConfig::embedded(dir.path())).await?;
        for (i, step) in steps.iter().enumerate() {
            let got = scan(&catalog, step.snapshot_id).await?;
            anyhow::ensure!(
                got == step.rows,
                "seed {seed} step {i}: scan differs from the model\n got {got:?}\nwant {:?}",
                step.rows
            );
        }
    }
    Ok(())
}
