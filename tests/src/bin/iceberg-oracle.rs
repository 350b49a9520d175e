//! Writes the random row-delta oracle table into `DATA_DIR` and prints, as JSON, every step's
//! snapshot id and expected rows: `[{"snapshot_id": 1, "rows": {"1": "v"}}, ...]`.
//!
//! Usage: `iceberg-oracle DATA_DIR SEED STEPS` (used by tests/python/test_iceberg_commits.py).

use anyhow::Context;
use unitable_tests::iceberg_oracle::run_random_deltas;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: iceberg-oracle DATA_DIR SEED STEPS")?;
    let seed: u64 = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let steps: usize = args.next().unwrap_or_else(|| "20".into()).parse()?;
    let steps = run_random_deltas(std::path::Path::new(&dir), seed, steps).await?;
    let json: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| serde_json::json!({"snapshot_id": s.snapshot_id, "rows": s.rows}))
        .collect();
    println!("{}", serde_json::Value::Array(json));
    Ok(())
}
