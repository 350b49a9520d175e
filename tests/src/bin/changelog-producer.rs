//! Writes rows into a table's changelog topic on Kafka the way unitable's writer does: encoded
//! with the `json-v1` record codec, appended through `KafkaChangelog` to the key's bucket.
//!
//! Usage: `changelog-producer BROKERS TABLE OP IPC_FILE --column NAME:TYPE[!]... [--primary-key A,B]
//! [--buckets N]`. The rows come from an Arrow IPC stream file, so the test that checks the topic
//! (tests/python/test_changelog_format.py) states the values itself. Prints one JSON line per
//! appended record: `{"row": R, "partition": P, "offset": O}`.

use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::ipc::reader::StreamReader;
use unitable_core::changelog::{Changelog, KafkaChangelog, KafkaConfig};
use unitable_core::naming::TableName;
use unitable_core::record::{ChangeOp, RecordCodec};
use unitable_core::table::{Column, TableDef, TableSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, table, op, ipc, rest @ ..] = args.as_slice() else {
        bail!(
            "usage: changelog-producer BROKERS TABLE OP IPC_FILE --column NAME:TYPE ... [--primary-key A,B] [--buckets N]"
        );
    };
    let mut spec = TableSpec::default();
    let mut flags = rest.iter();
    while let Some(flag) = flags.next() {
        let value = flags
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--column" => spec.columns.push(Column::parse(value)?),
            "--primary-key" => spec.primary_key = value.split(',').map(str::to_string).collect(),
            "--buckets" => spec.buckets = Some(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    let def = TableDef::new(table.parse::<TableName>()?, spec)?;
    let op = ChangeOp::parse(op).with_context(|| format!("unknown op {op}"))?;
    let codec = RecordCodec::new(&def, "00000000-0000-7000-8000-000000000001", 0)?;
    let reader = StreamReader::try_new(std::fs::File::open(ipc)?, None)?;
    let log = Arc::new(KafkaChangelog::connect(KafkaConfig::new(brokers.clone())).await?);
    let topic = def.changelog.topic.clone();
    log.create_topic(&topic, def.changelog.partitions).await?;
    for batch in reader {
        let batch = batch?;
        let (rows, errors) = codec.encode(op, &batch, chrono::Utc::now().timestamp_millis())?;
        if let Some(e) = errors.first() {
            bail!("row rejected: {e}");
        }
        // One append per row keeps per-key order simple to check: each call returns once durable.
        for row in rows {
            let range = log.append(&topic, row.partition, vec![row.record]).await?;
            println!(
                "{}",
                serde_json::json!({"row": row.row, "partition": row.partition.0, "offset": range.first.0})
            );
        }
    }
    Ok(())
}
