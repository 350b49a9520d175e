//! Changelog benchmark: append throughput and append-to-tail latency of one backend, and for
//! Kafka the raw rdkafka producer on the same broker as the ceiling.
//!
//! ```sh
//! cargo run --release -p unitable-tests --bin changelog-bench -- --backend local --value-bytes 100
//! cargo run --release -p unitable-tests --bin changelog-bench -- --backend kafka   # starts a one-broker Kafka
//! ```
//! Prints one Markdown table row per measurement (docs/benchmarks.md collects them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use unitable_core::changelog::{
    ChangeRecord, Changelog, KafkaChangelog, KafkaConfig, LocalChangelog, LocalConfig,
    MemoryChangelog,
};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    Memory,
    Local,
    Kafka,
}

/// Changelog append throughput and append-to-tail latency.
#[derive(Debug, Parser)]
struct Args {
    /// Backend to measure.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    backend: Backend,
    /// Kafka bootstrap servers; absent with `--backend kafka`: start a one-broker Apache Kafka (KAFKA_HOME).
    #[arg(long)]
    brokers: Option<String>,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Records to append in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Records per append call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent appending tasks.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Single-record appends timed in the latency run.
    #[arg(long, default_value_t = 2_000)]
    latency_samples: usize,
    /// Pause between latency-run appends.
    #[arg(long, default_value_t = 2)]
    latency_interval_ms: u64,
}

fn record(i: usize, value_bytes: usize, payload: &Bytes) -> ChangeRecord {
    ChangeRecord {
        key: Some(Bytes::from(format!("{{\"id\":{i}}}"))),
        value: Some(payload.slice(0..value_bytes)),
        headers: vec![("unitable.op".into(), Bytes::from_static(b"upsert"))],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn throughput(log: Arc<dyn Changelog>, args: &Args, topic: &TopicName) -> Result<(f64, f64)> {
    let payload = Bytes::from(vec![b'x'; args.value_bytes]);
    let per_writer = args.records / args.writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let log = log.clone();
        let topic = topic.clone();
        let payload = payload.clone();
        let (batch, value_bytes, partitions) = (args.batch, args.value_bytes, args.partitions);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < per_writer {
                let n = batch.min(per_writer - sent);
                let records = (0..n)
                    .map(|i| record(w * per_writer + sent + i, value_bytes, &payload))
                    .collect();
                let partition = PartitionId(((w + sent / batch) as u32) % partitions);
                log.append(&topic, partition, records).await?;
                sent += n;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (per_writer * args.writers) as f64;
    let bytes = total * (args.value_bytes as f64 + 12.0);
    Ok((total / secs, bytes / secs / 1e6))
}

async fn tail_latency(
    log: Arc<dyn Changelog>,
    args: &Args,
    topic: &TopicName,
) -> Result<(Duration, Duration)> {
    let p = PartitionId(0);
    let start = log.watermarks(topic, p).await?.high;
    let origin = Instant::now();
    let samples = args.latency_samples;
    let tailer = {
        let log = log.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut next = start;
            let mut latencies = Vec::with_capacity(samples);
            while latencies.len() < samples {
                let got = log
                    .read(&topic, p, next, 1000, Duration::from_secs(5))
                    .await?;
                let now = origin.elapsed();
                for r in &got {
                    let bytes = r.record.value.as_deref().unwrap_or_default();
                    let sent =
                        u64::from_le_bytes(bytes.get(..8).context("short value")?.try_into()?);
                    latencies.push(now.saturating_sub(Duration::from_nanos(sent)));
                    next = Offset(r.offset.0 + 1);
                }
            }
            anyhow::Ok(latencies)
        })
    };
    for i in 0..samples {
        let mut value = (origin.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        value.resize(args.value_bytes.max(8), b'x');
        let rec = ChangeRecord {
            key: Some(Bytes::from(format!("{{\"id\":{i}}}"))),
            value: Some(Bytes::from(value)),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        };
        log.append(topic, p, vec![rec]).await?;
        tokio::time::sleep(Duration::from_millis(args.latency_interval_ms)).await;
    }
    let mut latencies = tailer.await??;
    latencies.sort();
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

/// Raw rdkafka produce of the same records with the same producer settings: the ceiling.
async fn raw_produce(brokers: &str, args: &Args, topic: &str) -> Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let payload = vec![b'x'; args.value_bytes];
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..args.records {
        let key = format!("{{\"id\":{i}}}");
        let partition = (i / args.batch) as i32 % args.partitions as i32;
        let mut rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send_result(rec) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    if let Some(r) = in_flight.next().await {
                        r?.map_err(|(e, _)| e)?;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r?.map_err(|(e, _)| e)?;
    }
    Ok(args.records as f64 / started.elapsed().as_secs_f64())
}

/// Raw rdkafka produce-to-consume latency on the same broker (consumer settings as unitable's
/// readers: assigned partition, no group commits, `fetch.wait.max.ms=100`).
async fn raw_latency(brokers: &str, args: &Args, topic: &str) -> Result<(Duration, Duration)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset as KOffset, TopicPartitionList};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "unitable-bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, KOffset::Beginning)?;
    consumer.assign(&tpl)?;
    let origin = Instant::now();
    let samples = args.latency_samples;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(samples);
        while latencies.len() < samples {
            let msg = consumer.recv().await?;
            let bytes = msg.payload().unwrap_or_default();
            let sent = u64::from_le_bytes(bytes.get(..8).context("short value")?.try_into()?);
            latencies.push(origin.elapsed().saturating_sub(Duration::from_nanos(sent)));
        }
        anyhow::Ok(latencies)
    });
    for _ in 0..samples {
        let mut value = (origin.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        value.resize(args.value_bytes.max(8), b'x');
        let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(value.as_slice())
            .partition(0);
        producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        tokio::time::sleep(Duration::from_millis(args.latency_interval_ms)).await;
    }
    let mut latencies = reader.await??;
    latencies.sort();
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut _broker = None;
    let mut brokers = args.brokers.clone();
    if args.backend == Backend::Kafka && brokers.is_none() {
        let kafka = unitable_tests::Kafka::start()
            .context("starting Kafka (run scripts/test once to install it, or set KAFKA_HOME)")?;
        brokers = Some(kafka.bootstrap());
        _broker = Some(kafka);
    }
    let log: Arc<dyn Changelog> = match args.backend {
        Backend::Memory => Arc::new(MemoryChangelog::new()),
        Backend::Local => Arc::new(LocalChangelog::open(LocalConfig::new(dir.path())).await?),
        Backend::Kafka => Arc::new(
            KafkaChangelog::connect(KafkaConfig::new(brokers.clone().unwrap_or_default())).await?,
        ),
    };
    let run = std::process::id();
    let topic = TopicName::new(format!("unitable.bench.t{run}v{}", args.value_bytes));
    log.create_topic(&topic, args.partitions).await?;
    let (rps, mbps) = throughput(log.clone(), &args, &topic).await?;
    let lat_topic = TopicName::new(format!("unitable.bench.lat{run}v{}", args.value_bytes));
    log.create_topic(&lat_topic, 1).await?;
    let (p50, p99) = tail_latency(log.clone(), &args, &lat_topic).await?;
    println!(
        "| {:?} | {} B | {} x {} writers, batch {} | {:.0} rec/s | {:.1} MB/s | {:.2} ms | {:.2} ms |",
        args.backend,
        args.value_bytes,
        args.records,
        args.writers,
        args.batch,
        rps,
        mbps,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    if let (Backend::Kafka, Some(brokers)) = (args.backend, &brokers) {
        let raw_topic = format!("unitable.bench.raw{run}v{}", args.value_bytes);
        log.create_topic(&TopicName::new(raw_topic.clone()), args.partitions)
            .await?;
        let raw = raw_produce(brokers, &args, &raw_topic).await?;
        println!(
            "| raw rdkafka produce | {} B | {} records | {raw:.0} rec/s | ratio unitable/raw = {:.2} |",
            args.value_bytes,
            args.records,
            rps / raw
        );
        let raw_lat_topic = format!("unitable.bench.rawlat{run}v{}", args.value_bytes);
        log.create_topic(&TopicName::new(raw_lat_topic.clone()), 1)
            .await?;
        let (rp50, rp99) = raw_latency(brokers, &args, &raw_lat_topic).await?;
        println!(
            "| raw rdkafka produce-to-consume | {} B | p50 {:.2} ms | p99 {:.2} ms |",
            args.value_bytes,
            rp50.as_secs_f64() * 1e3,
            rp99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
