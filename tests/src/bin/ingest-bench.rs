//! CDC ingest throughput and source-to-LOOKUP latency.
//!
//! ```sh
//! cargo build --release -p unitable-table-service -p unitable-tests
//! UNITABLE_BIN=$CARGO_TARGET_DIR/release/unitable KAFKA_HOME=... \
//!   $CARGO_TARGET_DIR/release/ingest-bench --events 200000
//! ```
//! Starts Apache Kafka (one broker) and `unitable serve` on it. For each case (Debezium events
//! with and without the Connect schema envelope; with no deletes and with a fifth of them
//! deletes), creates a keyed table and a source topic, produces EVENTS Debezium events over
//! KEYS keys (updates of live keys, inserts of new ones, deletes followed by tombstones), then
//! runs `unitable ingest start` and times it until `GetTable` reports the ingest lag at 0: the
//! backlog throughput. Then, with the ingest caught up, produces one insert at a time and times
//! it from the produce call until a LOOKUP of its key returns it (the delay from a database
//! change to the value served). Prints a Markdown table.

use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrow::ipc::reader::StreamReader;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{GetTableRequest, ReadMode, ReadRequest, RowFormat, read_response};
use unitable_tests::{Kafka, Service, bench};

#[derive(Debug, Parser)]
struct Args {
    /// Source events per case.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 20_000)]
    keys: u64,
    /// Source topic partitions.
    #[arg(long, default_value_t = 3)]
    source_partitions: i32,
    /// Table buckets.
    #[arg(long, default_value_t = 3)]
    buckets: u32,
    /// Source-to-LOOKUP latency samples per case.
    #[arg(long, default_value_t = 100)]
    latency_samples: usize,
}

fn row(id: u64, version: u64) -> Value {
    json!({"id": id, "v": format!("value-{id}-{version}"), "n": version})
}

fn schema() -> Value {
    let fields = json!([
        {"field": "id", "type": "int64", "optional": false},
        {"field": "v", "type": "string", "optional": true},
        {"field": "n", "type": "int64", "optional": true}
    ]);
    json!({"type": "struct", "fields": [
        {"field": "before", "type": "struct", "optional": true, "fields": fields},
        {"field": "after", "type": "struct", "optional": true, "fields": fields},
        {"field": "op", "type": "string"},
        {"field": "ts_ms", "type": "int64", "optional": true}
    ]})
}

fn event(op: &str, before: Option<Value>, after: Option<Value>, schemas: bool) -> String {
    let payload = json!({"before": before, "after": after, "op": op,
        "source": {"connector": "mysql", "table": "items"}, "ts_ms": 1_700_000_000_000_i64});
    if schemas {
        json!({"schema": schema(), "payload": payload}).to_string()
    } else {
        payload.to_string()
    }
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let mut record = FutureRecord::to(topic).key(key).partition(partition);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Produces the case's stream; returns how many records (events plus tombstones).
async fn produce_stream(
    producer: &FutureProducer,
    args: &Args,
    topic: &str,
    schemas: bool,
    delete_fraction: f64,
) -> Result<u64> {
    let mut rng = bench::Rng(0x9e37_79b9_7f4a_7c15);
    let mut live = vec![None::<u64>; args.keys as usize];
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut records = 0;
    for i in 0..args.events {
        let id = rng.next_u64() % args.keys;
        let partition = (id % args.source_partitions as u64) as i32;
        let key = json!({"id": id}).to_string();
        let delete = live[id as usize].is_some()
            && (rng.next_u64() % 10_000) as f64 / 10_000.0 < delete_fraction;
        let mut values = Vec::new();
        if delete {
            let before = row(id, live[id as usize].take().expect("live"));
            values.push(Some(event("d", Some(before), None, schemas)));
            values.push(None);
        } else {
            let op = if live[id as usize].is_some() {
                "u"
            } else {
                "c"
            };
            let before = live[id as usize].map(|v| row(id, v));
            live[id as usize] = Some(i);
            values.push(Some(event(op, before, Some(row(id, i)), schemas)));
        }
        for value in values {
            records += 1;
            let (producer, topic, key) = (producer.clone(), topic.to_string(), key.clone());
            pending.push(async move {
                produce(&producer, &topic, partition, &key, value.as_deref()).await
            });
            if pending.len() >= 10_000 {
                use futures::StreamExt;
                if let Some(r) = pending.next().await {
                    r?;
                }
            }
        }
    }
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(records)
}

async fn ingest_lag(service: &Service, table: &str) -> Result<Option<i64>> {
    let mut admin = TableAdminServiceClient::connect(service.grpc_url()).await?;
    let response = admin
        .get_table(GetTableRequest {
            table: table.into(),
        })
        .await?
        .into_inner();
    Ok(response.ingest.map(|i| {
        if i.partitions.iter().any(|p| p.next_offset.is_none()) {
            i64::MAX
        } else {
            i.partitions.iter().map(|p| p.lag).sum()
        }
    }))
}

async fn lookup_n(
    reader: &mut ReadServiceClient<tonic::transport::Channel>,
    table: &str,
    id: u64,
) -> Result<Option<i64>> {
    let response = reader
        .lookup(ReadRequest {
            table: table.into(),
            mode: ReadMode::Lookup as i32,
            keys: format!("{{\"id\":{id}}}").into_bytes(),
            keys_format: RowFormat::JsonLines as i32,
            ..ReadRequest::default()
        })
        .await?
        .into_inner();
    let Some(read_response::Body::Lookup(result)) = response.body else {
        return Ok(None);
    };
    for batch in StreamReader::try_new(Cursor::new(result.arrow_ipc), None)? {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let n = batch
            .column_by_name("n")
            .context("column n")?
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .context("n is int64")?;
        return Ok(Some(n.value(0)));
    }
    Ok(None)
}

fn quantile(times: &mut [Duration], q: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
    times[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let kafka = Kafka::start()?;
    let brokers = kafka.bootstrap();
    let service = Service::start(&["--kafka-brokers", &brokers, "--commit-interval", "1s"])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    println!(
        "| source format | deletes | events (records) | ingest time | events/s | source -> LOOKUP p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases = [(true, 0.0), (true, 0.2), (false, 0.0), (false, 0.2)];
    for (case, (schemas, deletes)) in cases.into_iter().enumerate() {
        let table = format!("bench.ingest{case}");
        let topic = format!("dbz.bench.items{case}");
        bench::create_kv_table(&service, &table, args.buckets).await?;
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    args.source_partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await?;
        for r in created {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
        let records = produce_stream(&producer, &args, &topic, schemas, deletes).await?;
        producer.flush(Duration::from_secs(30))?;

        let started = Instant::now();
        service
            .cli(&["ingest", "start", &table, "--topic", &topic])?
            .ok()?;
        loop {
            if ingest_lag(&service, &table).await? == Some(0) {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("the ingest of {table} did not catch up in 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();

        // Source -> LOOKUP: one insert of a new key at a time.
        let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
        let mut times = Vec::with_capacity(args.latency_samples);
        for s in 0..args.latency_samples as u64 {
            let id = args.keys + 1_000_000 + s;
            let value = event("c", None, Some(row(id, s)), schemas);
            let key = json!({"id": id}).to_string();
            let partition = (id % args.source_partitions as u64) as i32;
            let sent = Instant::now();
            produce(&producer, &topic, partition, &key, Some(&value)).await?;
            loop {
                if lookup_n(&mut reader, &table, id).await? == Some(s as i64) {
                    break;
                }
                ensure!(
                    sent.elapsed() < Duration::from_secs(30),
                    "key {id} not served within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(sent.elapsed());
        }
        println!(
            "| {} | {:.0}% | {} ({records}) | {:.2} s | {:.0} | {:.1} ms | {:.1} ms |",
            if schemas { "with schema" } else { "schemaless" },
            deletes * 100.0,
            args.events,
            took.as_secs_f64(),
            args.events as f64 / took.as_secs_f64(),
            quantile(&mut times, 0.5),
            quantile(&mut times, 0.99),
        );
        service.cli(&["ingest", "stop", &table])?.ok()?;
    }
    Ok(())
}
