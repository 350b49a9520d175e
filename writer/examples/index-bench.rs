//! Memory and speed of the primary-key index (docs/benchmarks.md).
//!
//! `cargo run --release -p unitable-writer --example index-bench -- [KEYS]`
//!
//! Inserts KEYS keys shaped like the changelog's canonical keys (`{"id":N}` for an int64 key),
//! spread over 1,000 data files, then looks each up once and replaces a tenth of them; reports
//! the index's own byte count per key, the process's resident memory growth per key, and
//! nanoseconds per operation.

use std::time::Instant;

use iceberg::spec::Struct;
use unitable_writer::index::{KeyIndex, RowLocation};

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

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_bytes();
    let mut index = KeyIndex::new();
    let files: Vec<_> = (0..1000)
        .map(|i| index.file_id(&format!("file:///warehouse/ns/t/data/{i:05}-0198c1a2-7d4e-7000-8000-000000000000.parquet"), &Struct::empty(), 0))
        .collect();
    let mut key = String::with_capacity(32);
    let started = Instant::now();
    for i in 0..keys {
        key.clear();
        key.push_str(&format!(
            "{{\"id\":{}}}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20
        ));
        let file = files[(i % 1000) as usize];
        index.insert(
            key.as_bytes(),
            RowLocation {
                file,
                pos: i / 1000,
            },
        );
    }
    let insert_ns = started.elapsed().as_nanos() as f64 / keys as f64;
    let after = rss_bytes();
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..keys {
        key.clear();
        key.push_str(&format!(
            "{{\"id\":{}}}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20
        ));
        found += u64::from(index.get(key.as_bytes()).is_some());
    }
    let get_ns = started.elapsed().as_nanos() as f64 / keys as f64;
    let started = Instant::now();
    for i in (0..keys).step_by(10) {
        key.clear();
        key.push_str(&format!(
            "{{\"id\":{}}}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20
        ));
        index.insert(
            key.as_bytes(),
            RowLocation {
                file: files[0],
                pos: i,
            },
        );
    }
    let update_ns = started.elapsed().as_nanos() as f64 / (keys / 10).max(1) as f64;
    let live = index.len() as f64;
    println!("keys inserted      {keys}");
    println!("distinct keys      {}", index.len());
    println!("lookups found      {found}");
    println!(
        "index bytes/key    {:.1}",
        index.memory_bytes() as f64 / live
    );
    println!(
        "rss growth/key     {:.1}",
        after.saturating_sub(before) as f64 / live
    );
    println!("insert ns/key      {insert_ns:.0}");
    println!("lookup ns/key      {get_ns:.0}");
    println!("update ns/key      {update_ns:.0}");
}
