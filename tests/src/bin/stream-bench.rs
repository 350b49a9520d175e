//! STREAM read cost with and without partition pruning and column projection, in-process
//! (the reader over a local durable changelog; no gRPC, no writer: records are encoded with the
//! table's codec and appended directly, as the writer would).
//!
//! ```sh
//! cargo run --release -p unitable-tests --bin stream-bench -- --records 1000000 --partitions 8
//! ```
//!
//! Each case streams from the earliest offsets until every record of the partitions it reads
//! was read, and reports the time, the changelog records and bytes read, the rows decoded and
//! the rows delivered (the stream's own counters).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Parser;
use futures::StreamExt;
use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{ChangeRecord, Changelog, LocalChangelog, LocalConfig};
use unitable_core::offsets::{PartitionId, PartitionOffsets};
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::{Column, TableDef, TableSpec};
use unitable_reader::Reader;
use unitable_reader::stream::{StreamRead, StreamStart};

#[derive(Debug, Parser)]
struct Args {
    /// Changelog records written (upserts of `--keys` distinct keys).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Changelog partitions (= buckets).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Distinct keys (`region`, `id`).
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
}

const REGIONS: [&str; 4] = ["eu-west-1", "us-east-2", "ap-south-1", "sa-east-1"];

/// A benchmark case: its name, the filter, the columns, and the rows it must deliver.
type Case = (&'static str, Option<String>, Vec<String>, Option<usize>);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let catalog = TableCatalog::open(CatalogConfig::embedded(&dir.path().join("catalog"))).await?;
    let changelog = Arc::new(LocalChangelog::open(LocalConfig::new(dir.path().join("log"))).await?);
    let def = TableDef::new(
        "bench.orders".parse()?,
        TableSpec {
            columns: [
                "region:string!",
                "id:int64!",
                "customer:string",
                "qty:int32",
                "price:decimal(12,2)",
                "note:string",
                "updated:timestamptz",
            ]
            .iter()
            .map(|c| Column::parse(c))
            .collect::<Result<_, _>>()?,
            primary_key: vec!["region".into(), "id".into()],
            buckets: Some(args.partitions),
            ..TableSpec::default()
        },
    )?;
    let state = TableAdmin::new(catalog.clone(), changelog.clone())
        .create_table(&def)
        .await?;
    let loaded = catalog.load(&def.name).await?;
    let codec = RecordCodec::new(
        &state.def,
        &loaded.metadata().uuid().to_string(),
        loaded.metadata().current_schema_id(),
    )?;

    // Write.
    let started = Instant::now();
    let mut per_partition = vec![0usize; args.partitions as usize];
    let mut matching: BTreeMap<&str, usize> = BTreeMap::new();
    let chunk = 20_000;
    let mut written = 0;
    while written < args.records {
        let n = chunk.min(args.records - written);
        let mut lines = String::new();
        for i in written..written + n {
            let k = (i * 7919) % args.keys;
            let region = REGIONS[k % REGIONS.len()];
            let id = k / REGIONS.len();
            if region == REGIONS[0] && id == 7 {
                *matching.entry("one key").or_default() += 1;
            }
            if region == REGIONS[0] && id < 8 {
                *matching.entry("eight keys").or_default() += 1;
            }
            lines.push_str(&format!(
                "{{\"region\":\"{region}\",\"id\":{id},\"customer\":\"customer number {k}\",\
                 \"qty\":{},\"price\":\"{}.{:02}\",\"note\":\"a note of modest length for row {i}\",\
                 \"updated\":\"2026-11-21T10:00:00.{:06}Z\"}}\n",
                i % 100,
                i % 1000,
                i % 100,
                i % 1_000_000
            ));
        }
        let (parsed, errors) = codec.parse_json_rows(ChangeOp::Upsert, lines.as_bytes(), 0);
        ensure!(errors.is_empty(), "{errors:?}");
        let (encoded, errors) = codec.encode(ChangeOp::Upsert, &parsed.batch, 1)?;
        ensure!(errors.is_empty(), "{errors:?}");
        let mut by_partition: BTreeMap<u32, Vec<ChangeRecord>> = BTreeMap::new();
        for row in encoded {
            per_partition[row.partition.0 as usize] += 1;
            by_partition
                .entry(row.partition.0)
                .or_default()
                .push(row.record);
        }
        for (p, records) in by_partition {
            changelog
                .append(&def.changelog.topic, PartitionId(p), records)
                .await?;
        }
        written += n;
    }
    println!(
        "wrote {} records in {} partitions ({} keys) in {:.1} s",
        args.records,
        args.partitions,
        args.keys,
        started.elapsed().as_secs_f64()
    );

    let reader = Reader::new(catalog, changelog.clone());
    let eight: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    let cases: Vec<Case> = vec![
        ("unfiltered, all columns", None, vec![], Some(args.records)),
        (
            "unfiltered, key + qty",
            None,
            vec!["qty".into()],
            Some(args.records),
        ),
        (
            "one key (pruned)",
            Some(format!("region = '{}' AND id = 7", REGIONS[0])),
            vec![],
            matching.get("one key").copied(),
        ),
        (
            "8 keys, IN (pruned)",
            Some(format!(
                "region = '{}' AND id IN ({})",
                REGIONS[0],
                eight.join(", ")
            )),
            vec![],
            matching.get("eight keys").copied(),
        ),
        (
            "one key, not prunable (abs(id))",
            Some(format!("region = '{}' AND abs(id) = 7", REGIONS[0])),
            vec![],
            matching.get("one key").copied(),
        ),
        (
            "one key (pruned), key + qty",
            Some(format!("region = '{}' AND id = 7", REGIONS[0])),
            vec!["qty".into()],
            matching.get("one key").copied(),
        ),
    ];
    println!(
        "| case | partitions read | time | records read | MB read | rows decoded | rows delivered |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, filter, columns, want) in cases {
        let read = StreamRead {
            table: def.name.clone(),
            columns,
            filter,
            start: StreamStart::Earliest,
            limit: None,
            partitions: Vec::new(),
            resume: PartitionOffsets::default(),
            subscriber: "bench".into(),
        };
        let started = Instant::now();
        let mut stream = reader.stream(&read).await?;
        let stats = stream.stats.clone();
        let total: u64 = stats
            .partitions()
            .iter()
            .map(|p| per_partition[*p as usize] as u64)
            .sum();
        let mut delivered = 0usize;
        // Done when every record of the partitions read was read and nothing came for 20 ms
        // (the time includes that wait).
        loop {
            match tokio::time::timeout(Duration::from_millis(20), stream.changes.next()).await {
                Ok(Some(change)) => delivered += change?.batch.num_rows(),
                Ok(None) => break,
                Err(_) if stats.records_read() >= total => break,
                Err(_) => {}
            }
        }
        let elapsed = started.elapsed();
        if let Some(want) = want {
            ensure!(
                delivered == want,
                "{name}: {delivered} rows delivered, {want} expected"
            );
        }
        println!(
            "| {name} | {} of {} | {:.2} s | {} | {:.1} | {} | {} |",
            stats.partitions().len(),
            args.partitions,
            elapsed.as_secs_f64(),
            stats.records_read(),
            stats.bytes_read() as f64 / 1e6,
            stats.rows_decoded(),
            stats.rows_delivered(),
        );
    }
    Ok(())
}
