//! Memory and speed of the primary-key index (docs/benchmarks.md).
//!
//! `cargo run --release -p unitable-writer --example index-bench -- [KEYS [LIMIT-BYTES [DIR]]]`
//!
//! Inserts KEYS keys shaped like the changelog's canonical keys (`{"id":N}` for an int64 key),
//! spread over 1,000 data files, then looks each up once and replaces a tenth of them; reports
//! the index's own byte count per key, the process's resident memory growth per key, and
//! nanoseconds per operation. With LIMIT-BYTES, the index spills to DIR (default: the
//! system's temporary directory) past that many bytes of memory (run without it first to learn
//! the unlimited index's bytes per key); it then also reports its spill file's bytes per key
//! and how many shards it wrote.

use std::path::PathBuf;
use std::time::Instant;

use iceberg::spec::Struct;
use unitable_writer::index::{KeyIndex, RowLocation, SpillConfig};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn key_of(i: u64, key: &mut String) {
    use std::fmt::Write;
    key.clear();
    let _ = write!(
        key,
        "{{\"id\":{}}}",
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20
    );
}

/// Fills `index` with `keys` keys and measures it.
fn run(mut index: KeyIndex, keys: u64) {
    let before = rss_bytes();
    let files: Vec<_> = (0..1000)
        .map(|i| index.file_id(&format!("file:///warehouse/ns/t/data/{i:05}-0198c1a2-7d4e-7000-8000-000000000000.parquet"), &Struct::empty(), 0))
        .collect();
    let mut key = String::with_capacity(32);
    let started = Instant::now();
    for i in 0..keys {
        key_of(i, &mut key);
        let file = files[(i % 1000) as usize];
        index
            .insert(
                key.as_bytes(),
                RowLocation {
                    file,
                    pos: i / 1000,
                },
            )
            .expect("insert");
    }
    let insert_ns = started.elapsed().as_nanos() as f64 / keys as f64;
    let after = rss_bytes();
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..keys {
        key_of(i, &mut key);
        found += u64::from(index.get(key.as_bytes()).expect("get").is_some());
    }
    let get_ns = started.elapsed().as_nanos() as f64 / keys as f64;
    let started = Instant::now();
    for i in (0..keys).step_by(10) {
        key_of(i, &mut key);
        index
            .insert(
                key.as_bytes(),
                RowLocation {
                    file: files[0],
                    pos: i,
                },
            )
            .expect("update");
    }
    let update_ns = started.elapsed().as_nanos() as f64 / (keys / 10).max(1) as f64;
    let live = index.len() as f64;
    println!("keys inserted      {keys}");
    println!("distinct keys      {}", index.len());
    println!("lookups found      {found}");
    if let Some(limit) = index.memory_limit() {
        println!("memory limit       {limit}");
        println!(
            "spilled bytes/key  {:.1}",
            index.spilled_bytes() as f64 / live
        );
        println!("shards written     {}", index.spills());
    }
    println!(
        "index bytes/key    {:.1}",
        index.memory_bytes() as f64 / live
    );
    println!(
        "rss growth/key     {:.1}",
        after.saturating_sub(before) as f64 / live
    );
    println!("rss after inserts  {after}");
    println!("insert ns/key      {insert_ns:.0}");
    println!("lookup ns/key      {get_ns:.0}");
    println!("update ns/key      {update_ns:.0}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let limit: Option<u64> = args.next().and_then(|a| a.parse().ok());
    let dir: PathBuf = args
        .next()
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("index-bench-{}", std::process::id()));
    let index = KeyIndex::with_spill(limit.map(|memory_limit| SpillConfig {
        memory_limit,
        dir: dir.clone(),
        table: "bench.t".into(),
    }));
    run(index, keys);
    let _ = std::fs::remove_dir_all(&dir);
}
