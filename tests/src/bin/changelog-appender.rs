//! Crash-test child: appends batches to a `LocalChangelog` from several tasks and prints
//! `ack PARTITION FIRST LAST BATCH_ID` for every acknowledged append, until it is killed.
//!
//! Usage: `changelog-appender ROOT ROUND`. Record `i` of a batch has key `BATCH_ID-i` and a
//! value derived from its key ([`unitable_tests::crash::value_for`]), so the test can check every
//! record it finds without keeping copies.

use std::io::Write;
use std::sync::Arc;

use unitable_core::changelog::{ChangeRecord, Changelog, LocalChangelog, LocalConfig};
use unitable_core::naming::TopicName;
use unitable_core::offsets::PartitionId;
use unitable_tests::crash::{PARTITIONS, TOPIC, WRITERS, batch_records};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: changelog-appender ROOT ROUND"))?;
    let round: u64 = args.next().unwrap_or_default().parse()?;
    let mut config = LocalConfig::new(root);
    // Small segments so kills also land around segment rolls.
    config.segment_bytes = 64 * 1024;
    let log = Arc::new(LocalChangelog::open(config).await?);
    let topic = TopicName::new(TOPIC);
    log.create_topic(&topic, PARTITIONS).await?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let log = log.clone();
        let topic = topic.clone();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let partition = PartitionId(writer % PARTITIONS);
            for seq in 0u64.. {
                let batch_id = format!("r{round}w{writer}s{seq}");
                let size = 1 + (seq as usize * 7 + writer as usize) % 12;
                let records: Vec<ChangeRecord> = batch_records(&batch_id, size);
                let range = log.append(&topic, partition, records).await?;
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                writeln!(
                    out,
                    "ack {} {} {} {batch_id}",
                    partition.0, range.first.0, range.last.0
                )?;
                out.flush()?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
