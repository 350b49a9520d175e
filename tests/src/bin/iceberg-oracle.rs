//! Writes the random oracle table into `DATA_DIR` and prints, as JSON, every step's snapshot id,
//! expected rows, operation and whether it was expired:
//! `[{"snapshot_id": 1, "rows": {"1": "v"}, "op": "delta", "expired": false}, ...]`.
//!
//! Usage: `iceberg-oracle DATA_DIR SEED STEPS [deltas|mixed|compacted]` (used by
//! tests/python/test_iceberg_commits.py); `mixed` adds rewrites, manifest merges and
//! expirations; `compacted` runs STEPS rounds of 8 row deltas and a compaction (with its
//! manifest merge), then 4 row deltas.

use anyhow::Context;
use unitable_tests::iceberg_oracle::{run_compacted, run_random_deltas, run_random_mixed};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: iceberg-oracle DATA_DIR SEED STEPS")?;
    let seed: u64 = args.next().unwrap_or_else(|| "1".into()).parse()?;
    let steps: usize = args.next().unwrap_or_else(|| "20".into()).parse()?;
    let dir = std::path::Path::new(&dir);
    let steps = match args.next().as_deref() {
        None | Some("deltas") => run_random_deltas(dir, seed, steps).await?,
        Some("mixed") => run_random_mixed(dir, seed, steps).await?,
        Some("compacted") => run_compacted(dir, seed, steps).await?,
        Some(other) => anyhow::bail!("unknown mode {other}; expected deltas, mixed or compacted"),
    };
    let json: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "snapshot_id": s.snapshot_id,
                "rows": s.rows,
                "op": s.op,
                "expired": s.expired,
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(json));
    Ok(())
}
