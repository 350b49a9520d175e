//! LOOKUP as of an instant (a time or changelog offsets), exact to the record, against a model
//! that replays the changelog up to that instant: random upserts and deletes over several
//! commits (one round from concurrent writers, so record timestamps may be out of order within
//! a partition), a compaction and a server restart, then many random instants between and
//! inside commits. Also: the snapshot the server chose is the newest one at or before the
//! instant in the keys' partitions, snapshot_id lookups equal the model at the snapshot's
//! offsets, bad instants are refused, and the CLI. Run on the local changelog and on Apache
//! Kafka.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use support::read::{Client, ipc, read, request};
use support::{Rng, TABLE, create_kv_table, kv_line, settle, write_lines};
use tonic::Code;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::read::{ancestors, anchored_offsets};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1::compaction_service_client::CompactionServiceClient;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    AsOf, CompactRequest, PartitionOffset, ReadMode, ReadRequest, RowFormat, StreamStart, WriteOp,
    read_response,
};
use unitable_tests::{Kafka, Service};

type Writer = WriteServiceClient<tonic::transport::Channel>;
/// (v, n)
type Row = (String, i64);

const BUCKETS: u32 = 4;
const KEYS: i64 = 120;

/// One changelog record as a STREAM from the earliest offsets delivers it.
#[derive(Debug, Clone)]
struct Record {
    offset: i64,
    timestamp_ms: i64,
    id: i64,
    row: Option<Row>,
}

/// The changelog per partition, in offset order.
struct Log(BTreeMap<u32, Vec<Record>>);

impl Log {
    /// Reads every record written so far (the heads of a FRESH read, then a STREAM from the
    /// earliest offsets up to them).
    async fn read(reader: &mut Client) -> Result<Self> {
        let (_, as_of) = read(reader, request(ReadMode::Fresh, "")).await?;
        let total: i64 = as_of.offsets.iter().map(|o| o.offset).sum();
        let mut out: BTreeMap<u32, Vec<Record>> = (0..BUCKETS).map(|p| (p, Vec::new())).collect();
        if total > 0 {
            let start = StreamStart {
                kind: Kind::Earliest as i32,
                ..StreamStart::default()
            };
            let mut stream = reader
                .read(ReadRequest {
                    table: TABLE.into(),
                    mode: ReadMode::Stream as i32,
                    start: Some(start),
                    limit: total as u64,
                    ..ReadRequest::default()
                })
                .await?
                .into_inner();
            while let Some(message) = stream.message().await? {
                let Some(read_response::Body::Changes(batch)) = message.body else {
                    continue;
                };
                for b in ipc(batch.arrow_ipc)? {
                    let col = |name: &str| b.column_by_name(name).context(name.to_string());
                    let ops = col("_op")?
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .context("_op")?;
                    let parts = col("_partition")?
                        .as_any()
                        .downcast_ref::<Int32Array>()
                        .context("_partition")?;
                    let offsets = col("_offset")?
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .context("_offset")?;
                    let ts = col("_timestamp")?
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .context("_timestamp")?;
                    let ids = col("id")?
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .context("id")?;
                    let vs = col("v")?
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .context("v")?;
                    let ns = col("n")?
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .context("n")?;
                    for i in 0..b.num_rows() {
                        let row = (ops.value(i) != "delete")
                            .then(|| (vs.value(i).to_string(), ns.value(i)));
                        out.entry(parts.value(i) as u32).or_default().push(Record {
                            offset: offsets.value(i),
                            timestamp_ms: ts.value(i),
                            id: ids.value(i),
                            row,
                        });
                    }
                }
            }
        }
        for (p, records) in &mut out {
            records.sort_by_key(|r| r.offset);
            let want = as_of
                .offsets
                .iter()
                .find(|o| o.partition == *p)
                .map_or(0, |o| o.offset);
            ensure!(
                records.iter().map(|r| r.offset).eq(0..want),
                "partition {p}: the stream did not give offsets 0..{want}"
            );
        }
        Ok(Log(out))
    }

    fn heads(&self) -> BTreeMap<u32, i64> {
        self.0.iter().map(|(p, r)| (*p, r.len() as i64)).collect()
    }

    /// The end of "as of `t`" in each partition: the first record after `t` (every record
    /// before it counts, whatever its own timestamp), or the head.
    fn ends_at(&self, t: i64) -> BTreeMap<u32, i64> {
        self.0
            .iter()
            .map(|(p, records)| {
                let end = records
                    .iter()
                    .position(|r| r.timestamp_ms > t)
                    .unwrap_or(records.len());
                (*p, end as i64)
            })
            .collect()
    }

    /// The table after replaying every partition up to `ends` (exclusive).
    fn state(&self, ends: &BTreeMap<u32, i64>) -> BTreeMap<i64, Row> {
        let mut out = BTreeMap::new();
        for (p, records) in &self.0 {
            let end = ends.get(p).copied().unwrap_or(0);
            for r in records.iter().take_while(|r| r.offset < end) {
                match &r.row {
                    Some(row) => out.insert(r.id, row.clone()),
                    None => out.remove(&r.id),
                };
            }
        }
        out
    }

    /// Records whose timestamp is older than an earlier record's of the same partition.
    fn disordered(&self) -> usize {
        self.0
            .values()
            .map(|records| {
                let mut max = i64::MIN;
                records
                    .iter()
                    .filter(|r| {
                        let older = r.timestamp_ms < max;
                        max = max.max(r.timestamp_ms);
                        older
                    })
                    .count()
            })
            .sum()
    }
}

fn partition_of(id: i64) -> u32 {
    unitable_core::bucket::bucket_of(format!("{{\"id\":{id}}}").as_bytes(), BUCKETS)
}

fn lookup_request(ids: &[i64]) -> ReadRequest {
    let keys: Vec<String> = ids.iter().map(|k| format!("{{\"id\":{k}}}")).collect();
    ReadRequest {
        table: TABLE.into(),
        mode: ReadMode::Lookup as i32,
        keys: keys.join("\n").into_bytes(),
        keys_format: RowFormat::JsonLines as i32,
        ..ReadRequest::default()
    }
}

/// A unary LOOKUP: (id -> row of the found keys in order, missing indexes, as_of).
async fn lookup(
    reader: &mut Client,
    request: ReadRequest,
) -> Result<(Vec<(i64, Row)>, Vec<u32>, AsOf), tonic::Status> {
    let response = reader.lookup(request).await?.into_inner();
    let Some(read_response::Body::Lookup(result)) = response.body else {
        return Err(tonic::Status::internal("not a lookup body"));
    };
    let mut rows = Vec::new();
    for b in ipc(result.arrow_ipc)? {
        if b.num_rows() == 0 {
            continue;
        }
        let get = |name: &str| b.column_by_name(name).cloned();
        let (Some(ids), Some(vs), Some(ns)) = (get("id"), get("v"), get("n")) else {
            return Err(tonic::Status::internal("missing columns"));
        };
        let ids = ids.as_any().downcast_ref::<Int64Array>().cloned();
        let vs = vs.as_any().downcast_ref::<StringArray>().cloned();
        let ns = ns.as_any().downcast_ref::<Int64Array>().cloned();
        let (Some(ids), Some(vs), Some(ns)) = (ids, vs, ns) else {
            return Err(tonic::Status::internal("unexpected column types"));
        };
        for i in 0..b.num_rows() {
            let v = if vs.is_null(i) {
                String::new()
            } else {
                vs.value(i).to_string()
            };
            rows.push((ids.value(i), (v, ns.value(i))));
        }
    }
    Ok((rows, result.missing, response.as_of.unwrap_or_default()))
}

fn offsets_of(as_of: &AsOf) -> BTreeMap<u32, i64> {
    as_of
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

/// What the checks saw, to make sure both sources were used.
#[derive(Debug, Default)]
struct Seen {
    checked: usize,
    with_snapshot: usize,
    with_changelog_after_snapshot: usize,
    /// Served from the newest snapshot at or before the instant (or one with its offsets).
    newest: usize,
    without_snapshot: usize,
}

/// Compares an as-of answer with the model at `ends` and checks the snapshot it names.
async fn compare(
    catalog: &TableCatalog,
    log: &Log,
    ids: &[i64],
    ends: &BTreeMap<u32, i64>,
    got: (Vec<(i64, Row)>, Vec<u32>, AsOf),
    what: &str,
    seen: &mut Seen,
) -> Result<()> {
    let (rows, missing, as_of) = got;
    let model = log.state(ends);
    let mut want_rows = Vec::new();
    let mut want_missing = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match model.get(id) {
            Some(row) => want_rows.push((*id, row.clone())),
            None => want_missing.push(i as u32),
        }
    }
    ensure!(
        rows == want_rows,
        "{what}: rows differ\n got {rows:?}\nwant {want_rows:?}"
    );
    ensure!(
        missing == want_missing,
        "{what}: missing {missing:?}, want {want_missing:?}"
    );
    // The offsets served are the instant's position in exactly the keys' partitions.
    let partitions: BTreeSet<u32> = ids.iter().map(|id| partition_of(*id)).collect();
    let want_offsets: BTreeMap<u32, i64> = partitions.iter().map(|p| (*p, ends[p])).collect();
    ensure!(
        offsets_of(&as_of) == want_offsets,
        "{what}: as_of offsets {:?}, want {want_offsets:?}",
        as_of.offsets
    );
    // The snapshot is the newest of the current ancestry at or before the instant there.
    let table = catalog.load(&TABLE.parse()?).await?;
    let metadata = table.metadata();
    let covered = |id: i64| {
        let anchored = anchored_offsets(metadata, id);
        partitions
            .iter()
            .all(|p| anchored.get(PartitionId(*p)).0 <= ends[p])
    };
    let newest = metadata
        .current_snapshot_id()
        .map(|current| ancestors(metadata, current))
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.snapshot_id())
        .find(|id| !anchored_offsets(metadata, *id).0.is_empty() && covered(*id));
    match (as_of.snapshot_id, newest) {
        (Some(id), Some(newest)) => {
            // The table is settled while instants are checked, so the snapshots the lookup saw
            // are these. The server reads the newest at or before the instant, or its lookup
            // state's base when that is at or before it (up to a re-base interval older).
            let a = anchored_offsets(metadata, id);
            let b = anchored_offsets(metadata, newest);
            let in_chain = ancestors(metadata, newest)
                .iter()
                .any(|s| s.snapshot_id() == id);
            ensure!(
                covered(id) && in_chain,
                "{what}: snapshot {id} served ({a}), but the newest at or before the instant is \
                 {newest} ({b}) and {id} is not at or before the instant among its ancestors"
            );
            if partitions
                .iter()
                .all(|p| a.get(PartitionId(*p)) == b.get(PartitionId(*p)))
            {
                seen.newest += 1;
            }
            seen.with_snapshot += 1;
            if partitions
                .iter()
                .any(|p| a.get(PartitionId(*p)).0 < ends[p])
            {
                seen.with_changelog_after_snapshot += 1;
            }
        }
        (Some(id), None) => bail!("{what}: snapshot {id} served, but none is at or before it"),
        (None, Some(newest)) => {
            bail!("{what}: no snapshot served, but snapshot {newest} is at or before the instant")
        }
        (None, None) => seen.without_snapshot += 1,
    }
    seen.checked += 1;
    Ok(())
}

fn random_ids(rng: &mut Rng) -> Vec<i64> {
    let n = 1 + rng.below(30) as usize;
    let mut ids: Vec<i64> = (0..n).map(|_| rng.below(KEYS as u64 + 10) as i64).collect();
    if n > 3 {
        ids.push(ids[1]);
    }
    ids
}

/// Many random instants of the changelog as it is now, by time and by offsets.
async fn check_instants(
    reader: &mut Client,
    catalog: &TableCatalog,
    rng: &mut Rng,
    instants: usize,
    writer: &mut Writer,
    seen: &mut Seen,
) -> Result<()> {
    // Every record in a snapshot first, so the snapshots are fixed while instants are checked;
    // a fresh lookup, so that the server has a lookup state (key index) for the table.
    settle(writer).await?;
    lookup(reader, lookup_request(&[1])).await?;
    let log = Log::read(reader).await?;
    let times: Vec<i64> = log.0.values().flatten().map(|r| r.timestamp_ms).collect();
    ensure!(!times.is_empty(), "nothing written");
    let heads = log.heads();
    for i in 0..instants {
        let ids = random_ids(rng);
        if i % 2 == 0 {
            // A time: a record's own, one ms either side, before everything, far ahead.
            let t = match rng.below(10) {
                0 if i % 4 == 0 => -5,
                0 => 0,
                1 => i64::MAX / 2,
                _ => {
                    let base = times[rng.below(times.len() as u64) as usize];
                    base + rng.below(3) as i64 - 1
                }
            };
            let mut request = lookup_request(&ids);
            request.as_of_timestamp_ms = Some(t);
            let got = lookup(reader, request)
                .await
                .with_context(|| format!("as of {t}"))?;
            compare(
                catalog,
                &log,
                &ids,
                &log.ends_at(t),
                got,
                &format!("instant {i}: as of time {t}"),
                seen,
            )
            .await?;
        } else {
            let ends: BTreeMap<u32, i64> = heads
                .iter()
                .map(|(p, high)| {
                    let o = match rng.below(6) {
                        0 => 0,
                        1 => *high,
                        _ => rng.below(*high as u64 + 1) as i64,
                    };
                    (*p, o)
                })
                .collect();
            let mut request = lookup_request(&ids);
            request.as_of_offsets = ends
                .iter()
                .map(|(p, o)| PartitionOffset {
                    partition: *p,
                    offset: *o,
                })
                .collect();
            let got = lookup(reader, request)
                .await
                .with_context(|| format!("as of offsets {ends:?}"))?;
            compare(
                catalog,
                &log,
                &ids,
                &ends,
                got,
                &format!("instant {i}: as of offsets {ends:?}"),
                seen,
            )
            .await?;
        }
    }
    // Snapshot-alone lookups equal the model at the snapshot's anchored offsets.
    let table = catalog.load(&TABLE.parse()?).await?;
    let metadata = table.metadata();
    let chain = metadata
        .current_snapshot_id()
        .map(|c| ancestors(metadata, c))
        .unwrap_or_default();
    for snapshot in chain.iter().take(3) {
        let id = snapshot.snapshot_id();
        let anchored: BTreeMap<u32, i64> = anchored_offsets(metadata, id)
            .0
            .iter()
            .map(|(p, o)| (p.0, o.0))
            .collect();
        let ids: Vec<i64> = (0..KEYS + 5).collect();
        let mut request = lookup_request(&ids);
        request.snapshot_id = Some(id);
        let (rows, missing, as_of) = lookup(reader, request).await?;
        let model = log.state(&anchored);
        let want: Vec<(i64, Row)> = ids
            .iter()
            .filter_map(|k| Some((*k, model.get(k)?.clone())))
            .collect();
        ensure!(rows == want, "snapshot {id}: rows differ from the model");
        ensure!(
            missing.len() == ids.len() - want.len(),
            "snapshot {id}: missing"
        );
        ensure!(as_of.snapshot_id == Some(id), "snapshot {id}: {as_of:?}");
        ensure!(offsets_of(&as_of) == anchored, "snapshot {id}: {as_of:?}");
    }
    eprintln!(
        "checked {instants} instants over {} records ({} with timestamps out of order)",
        times.len(),
        log.disordered()
    );
    Ok(())
}

/// A round of random upserts and deletes in `requests` requests (each waiting for its
/// snapshot when `wait`).
async fn random_round(
    writer: &mut Writer,
    rng: &mut Rng,
    round: u64,
    requests: usize,
    wait: bool,
) -> Result<()> {
    for r in 0..requests {
        let mut upserts = String::new();
        let mut deletes = String::new();
        for i in 0..1 + rng.below(12) {
            let id = rng.below(KEYS as u64) as i64;
            if rng.below(4) == 0 {
                deletes.push_str(&format!("{{\"id\":{id}}}\n"));
            } else {
                upserts.push_str(&kv_line(
                    id,
                    &format!("r{round}.{r}.{i}"),
                    rng.below(1000) as i64,
                ));
            }
        }
        let wait = wait && r + 1 == requests;
        if !upserts.is_empty() {
            let resp = write_lines(writer, WriteOp::Upsert, &upserts, wait).await?;
            ensure!(resp.rows_rejected == 0, "upserts rejected: {resp:?}");
        }
        if !deletes.is_empty() {
            let resp = write_lines(writer, WriteOp::Delete, &deletes, wait).await?;
            ensure!(resp.rows_rejected == 0, "deletes rejected: {resp:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_as_of_instants_match_a_changelog_replay() -> Result<()> {
    scenario(Vec::new()).await
}

/// The same on Apache Kafka: instants by time resolve through the broker's ListOffsets.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_as_of_instants_match_a_changelog_replay_on_kafka() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let result = scenario(vec!["--kafka-brokers".into(), kafka.bootstrap()]).await;
    drop(kafka);
    result
}

/// Writes, a compaction, a restart and checks of many instants on a server started with
/// `extra` arguments.
async fn scenario(extra: Vec<String>) -> Result<()> {
    let mut service = tokio::task::spawn_blocking(move || {
        // A small training-set memory makes the large training set spill (training_sets).
        let mut args = vec![
            "--commit-interval",
            "150ms",
            "--training-set-memory",
            "8MiB",
        ];
        args.extend(extra.iter().map(String::as_str));
        Service::start(&args)
    })
    .await??;
    create_kv_table(&service, BUCKETS).await?;
    let catalog = TableCatalog::open(CatalogConfig::embedded(&service.data_dir())).await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = Seen::default();
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;

    for round in 0..14u64 {
        if round == 5 {
            // Concurrent writers: records of one partition may carry out-of-order timestamps.
            let url = service.grpc_url();
            let mut tasks = Vec::new();
            for w in 0..3u64 {
                let url = url.clone();
                let mut rng = Rng(0x1234_5678 + w);
                tasks.push(tokio::spawn(async move {
                    let mut writer = WriteServiceClient::connect(url).await?;
                    random_round(&mut writer, &mut rng, 100 + w, 6, false).await
                }));
            }
            for t in tasks {
                t.await??;
            }
        } else {
            random_round(&mut writer, &mut rng, round, 4, round % 3 == 1).await?;
        }
        if round % 2 == 0 {
            // Let the committer cut snapshots in between some rounds.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        if round == 7 {
            let done = CompactionServiceClient::connect(service.grpc_url())
                .await?
                .compact(CompactRequest {
                    table: TABLE.into(),
                    dry_run: false,
                })
                .await?
                .into_inner();
            ensure!(done.executed, "the compaction did not run: {done:?}");
            eprintln!(
                "compaction rewrote {} files, expired {} snapshots",
                done.files_rewritten, done.snapshots_expired
            );
            check_instants(&mut reader, &catalog, &mut rng, 40, &mut writer, &mut seen)
                .await
                .context("after the compaction")?;
        }
        if round == 10 {
            let mut svc = service;
            service = tokio::task::spawn_blocking(move || svc.restart().map(|()| svc)).await??;
            writer = WriteServiceClient::connect(service.grpc_url()).await?;
            reader = ReadServiceClient::connect(service.grpc_url()).await?;
            check_instants(&mut reader, &catalog, &mut rng, 40, &mut writer, &mut seen)
                .await
                .context("after the restart")?;
        }
    }
    check_instants(&mut reader, &catalog, &mut rng, 120, &mut writer, &mut seen)
        .await
        .context("at the end")?;
    random_round(&mut writer, &mut rng, 99, 2, true).await?;
    check_instants(&mut reader, &catalog, &mut rng, 60, &mut writer, &mut seen)
        .await
        .context("settled")?;
    eprintln!("{seen:?}");
    ensure!(
        seen.with_snapshot > 20
            && seen.with_changelog_after_snapshot > 20
            && seen.without_snapshot > 0,
        "both sources should have served many answers: {seen:?}"
    );

    // Since the restart, rows came from the lookup state's key index and from key-filtered
    // snapshot scans.
    let index = support::metric(&service, "unitable_lookup_as_of_total", &["base=\"index\""])?;
    let scan = support::metric(&service, "unitable_lookup_as_of_total", &["base=\"scan\""])?;
    eprintln!("as-of lookups since the restart: {index} from the key index, {scan} from scans");
    ensure!(index > 0.0 && scan > 0.0, "index {index}, scan {scan}");

    training_sets(&service, &mut reader, &mut rng).await?;
    refusals(&mut reader).await?;
    cli(&service, &mut reader).await?;
    Ok(())
}

/// Bad instants are refused with INVALID_ARGUMENT naming what is wrong.
async fn refusals(reader: &mut Client) -> Result<()> {
    let ids = [1i64, 2, 3, 4, 5, 6, 7, 8];
    let partitions: BTreeSet<u32> = ids.iter().map(|id| partition_of(*id)).collect();
    let heads = Log::read(reader).await?.heads();
    let at = |offsets: Vec<(u32, i64)>| {
        let mut request = lookup_request(&ids);
        request.as_of_offsets = offsets
            .into_iter()
            .map(|(partition, offset)| PartitionOffset { partition, offset })
            .collect();
        request
    };
    let missing_one: Vec<(u32, i64)> = partitions.iter().skip(1).map(|p| (*p, 0)).collect();
    let past: Vec<(u32, i64)> = partitions.iter().map(|p| (*p, heads[p] + 5)).collect();
    let negative: Vec<(u32, i64)> = partitions.iter().map(|p| (*p, -1)).collect();
    let mut both = at(partitions.iter().map(|p| (*p, 0)).collect());
    both.as_of_timestamp_ms = Some(1);
    for (request, needle) in [
        (at(missing_one), "must list partition"),
        (at(past), "past its high watermark"),
        (at(negative), "negative"),
        (both, "at most one"),
    ] {
        let e = lookup(reader, request)
            .await
            .err()
            .with_context(|| format!("expected a refusal with `{needle}`"))?;
        ensure!(
            e.code() == Code::InvalidArgument && e.message().contains(needle),
            "{needle}: {e:?}"
        );
    }
    // Offsets on a SNAPSHOT read are refused, not ignored.
    let mut snapshot = request(ReadMode::Snapshot, "");
    snapshot.as_of_offsets = vec![PartitionOffset {
        partition: 0,
        offset: 0,
    }];
    let e = read(reader, snapshot).await.err().context("snapshot")?;
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    Ok(())
}

/// `unitable lookup --as-of` and `--as-of-offsets` print the model's rows and the instant.
async fn cli(service: &Service, reader: &mut Client) -> Result<()> {
    let log = Log::read(reader).await?;
    let ids: Vec<i64> = (0..KEYS).collect();
    let key_args: Vec<String> = ids.iter().map(|id| format!("{{\"id\":{id}}}")).collect();
    let times: Vec<i64> = log.0.values().flatten().map(|r| r.timestamp_ms).collect();
    let t = times[times.len() / 2];
    let heads = log.heads();
    let half: BTreeMap<u32, i64> = heads.iter().map(|(p, h)| (*p, h / 2)).collect();
    let half_text = PartitionOffsets(
        half.iter()
            .map(|(p, o)| (PartitionId(*p), Offset(*o)))
            .collect(),
    )
    .to_string();
    let rfc3339 = chrono::DateTime::from_timestamp_millis(t)
        .context("time")?
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (flag, value, ends) in [
        ("--as-of", rfc3339, log.ends_at(t)),
        ("--as-of-offsets", half_text, half.clone()),
    ] {
        let mut args: Vec<&str> = vec!["lookup", TABLE, flag, &value];
        let keys_file = service.dir().join("asof-keys.jsonl");
        std::fs::write(&keys_file, key_args.join("\n"))?;
        let keys_path = keys_file.to_string_lossy().to_string();
        args.extend(["--keys-file", &keys_path]);
        let out = service.cli(&args)?;
        let stderr = out.stderr.clone();
        let stdout = out.ok()?;
        let model = log.state(&ends);
        let mut got = BTreeMap::new();
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            got.insert(
                v["id"].as_i64().context("id")?,
                (
                    v["v"].as_str().unwrap_or_default().to_string(),
                    v["n"].as_i64().context("n")?,
                ),
            );
        }
        ensure!(
            got == model,
            "CLI {flag} {value}: rows differ from the model"
        );
        let want_offsets = ends
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",");
        ensure!(
            stderr.contains(&format!("offsets {want_offsets}")),
            "CLI {flag}: stderr {stderr}"
        );
    }
    let out = service.cli(&[
        "lookup",
        TABLE,
        "--key",
        "{\"id\":1}",
        "--as-of",
        "yesterday",
    ])?;
    ensure!(!out.status.success(), "{out:?}");
    ensure!(out.stderr.contains("--as-of"), "{}", out.stderr);

    // `unitable training-set` from a CSV file: the replay at each row's time.
    let entities = service.dir().join("entities.csv");
    // Enough rows (4 MB as Arrow) that the CLI must send them in several messages of its one
    // call (the server takes messages of at most 4 MiB).
    let rows: Vec<(i64, i64)> = (0..250_000usize)
        .map(|i| ((i as i64) % (KEYS + 5), times[(i * 7) % times.len()]))
        .collect();
    let mut csv = String::from("id,at\n");
    for (id, at) in &rows {
        csv.push_str(&format!("{id},{at}\n"));
    }
    std::fs::write(&entities, csv)?;
    let entities = entities.to_string_lossy().to_string();
    let v = format!("{TABLE}.v");
    let n = format!("{TABLE}.n");
    let requests = |service: &Service| {
        support::metric(
            service,
            "unitable_grpc_requests_total",
            &["method=\"TrainingSet\""],
        )
    };
    let before = requests(service)?;
    let out = service.cli(&[
        "training-set",
        "--entities",
        &entities,
        "--timestamp-column",
        "at",
        "--feature",
        &v,
        "--feature",
        &n,
    ])?;
    let stdout = out.ok()?;
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.len() == rows.len(),
        "training-set printed {} rows",
        lines.len()
    );
    let sent = requests(service)? - before;
    ensure!(
        sent == 1.0,
        "the CLI made {sent} TrainingSet calls, not one"
    );
    for ((id, at), line) in rows.iter().zip(lines).step_by(97) {
        let row: serde_json::Value = serde_json::from_str(line)?;
        let want = value_at(&log, *id, &log.ends_at(*at), None);
        let got = row[v.as_str()]
            .as_str()
            .map(|s| (s.to_string(), row[n.as_str()].as_i64().unwrap_or_default()));
        ensure!(
            row["id"].as_i64() == Some(*id) && got == want,
            "training-set row {line}: want {want:?}"
        );
    }
    Ok(())
}

/// The value of `id` at the instant `ends` by replay, when the change that set it is stamped
/// after `not_before` (`None`: any age).
fn value_at(log: &Log, id: i64, ends: &BTreeMap<u32, i64>, not_before: Option<i64>) -> Option<Row> {
    let p = partition_of(id);
    let last = log.0[&p]
        .iter()
        .take(ends[&p] as usize)
        .rfind(|r| r.id == id)?;
    let row = last.row.clone()?;
    not_before
        .is_none_or(|t| last.timestamp_ms > t)
        .then_some(row)
}

/// TrainingSet: entity rows at random times (record times, 1 ms either side, before
/// everything, far ahead) joined with `v` and `n` equal the replay at each row's time, with
/// and without a TTL, times as int64 ms and as a timestamp column; extra entity columns pass
/// through; each row names its partition and instant. The last set, 100,000 rows in seven
/// request messages, is larger than the server's training-set memory (8 MiB), so it is sorted on
/// disk (the spill counter must rise) and still comes back in order and equal to the replay.
async fn training_sets(service: &Service, reader: &mut Client, rng: &mut Rng) -> Result<()> {
    use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray as Ts};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    use unitable_proto::v1::TrainingSetRequest;

    const SPILLED: &str = "unitable_training_set_spilled_bytes_total";
    let log = Log::read(reader).await?;
    let times: Vec<i64> = log.0.values().flatten().map(|r| r.timestamp_ms).collect();
    let mut ends_at: HashMap<i64, BTreeMap<u32, i64>> = HashMap::new();
    let cases = [
        (700usize, None, false, 1usize),
        (700, Some(40u64), true, 1),
        (700, Some(400), false, 1),
        (100_000, None, true, 7),
    ];
    for (rows, ttl, as_timestamp, messages) in cases {
        let ids: Vec<i64> = (0..rows)
            .map(|_| rng.below(KEYS as u64 + 10) as i64)
            .collect();
        let at: Vec<i64> = (0..rows)
            .map(|_| match rng.below(12) {
                0 => 0,
                1 => i64::MAX / 4,
                _ => times[rng.below(times.len() as u64) as usize] + rng.below(3) as i64 - 1,
            })
            .collect();
        let labels: Vec<i64> = (0..rows as i64).collect();
        let time: ArrayRef = if as_timestamp {
            Arc::new(Ts::from(at.clone()).with_timezone("+00:00"))
        } else {
            Arc::new(Int64Array::from(at.clone()))
        };
        let time_type = if as_timestamp {
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
        } else {
            DataType::Int64
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("at", time_type, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(labels.clone())),
                Arc::new(Int64Array::from(ids.clone())),
                time,
            ],
        )?;
        // The rows in `messages` request messages, each its own IPC stream; the settings go in
        // the first (the second repeats the features, which is allowed).
        let per_message = rows.div_ceil(messages);
        let mut requests = Vec::new();
        for m in 0..messages {
            let slice = batch.slice(m * per_message, per_message.min(rows - m * per_message));
            let mut ipc = Vec::new();
            {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema)?;
                w.write(&slice)?;
                w.finish()?;
            }
            let mut request = TrainingSetRequest {
                entities: ipc,
                ..TrainingSetRequest::default()
            };
            if m <= 1 {
                request.features = vec![format!("{TABLE}.v"), format!("{TABLE}.n")];
            }
            if m == 0 {
                request.timestamp_column = "at".into();
                request.ttl_ms = ttl;
            }
            requests.push(request);
        }
        let spilled_before = support::metric(service, SPILLED, &[])?;
        let mut stream = reader
            .training_set(futures::stream::iter(requests))
            .await?
            .into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await? {
            got.extend(ipc_batches(message.arrow_ipc)?);
        }
        let mut i = 0usize;
        for b in &got {
            let col = |name: &str| -> Result<ArrayRef> {
                b.column_by_name(name)
                    .cloned()
                    .with_context(|| format!("no column {name}"))
            };
            let label = col("label")?;
            let label = label
                .as_any()
                .downcast_ref::<Int64Array>()
                .context("label")?;
            let v = col(&format!("{TABLE}.v"))?;
            let v = v.as_any().downcast_ref::<StringArray>().context("v")?;
            let n = col(&format!("{TABLE}.n"))?;
            let n = n.as_any().downcast_ref::<Int64Array>().context("n")?;
            let part = col(&format!("{TABLE}._partition"))?;
            let part = part
                .as_any()
                .downcast_ref::<Int32Array>()
                .context("_partition")?;
            let off = col(&format!("{TABLE}._offset"))?;
            let off = off
                .as_any()
                .downcast_ref::<Int64Array>()
                .context("_offset")?;
            for r in 0..b.num_rows() {
                ensure!(label.value(r) == i as i64, "row {i}: rows out of order");
                let (id, t) = (ids[i], at[i]);
                let ends = ends_at.entry(t).or_insert_with(|| log.ends_at(t));
                let not_before = ttl.map(|ttl| t - ttl as i64);
                let want = value_at(&log, id, ends, not_before);
                let got_row = (!v.is_null(r)).then(|| (v.value(r).to_string(), n.value(r)));
                ensure!(
                    got_row == want,
                    "ttl {ttl:?}: row {i} (id {id} at {t}): {got_row:?}, want {want:?}"
                );
                let p = partition_of(id);
                ensure!(
                    part.value(r) as u32 == p && off.value(r) == ends[&p],
                    "row {i}: instant {}:{}, want {p}:{}",
                    part.value(r),
                    off.value(r),
                    ends[&p]
                );
                i += 1;
            }
        }
        ensure!(i == rows, "{i} of {rows} rows came back");
        let spilled = support::metric(service, SPILLED, &[])? - spilled_before;
        eprintln!("training set of {rows} rows in {messages} messages: {spilled} bytes spilled");
        if rows > 10_000 {
            ensure!(
                spilled > 0.0,
                "{rows} rows over an 8 MiB limit spilled nothing"
            );
        }
    }
    Ok(())
}

fn ipc_batches(bytes: Vec<u8>) -> Result<Vec<arrow::array::RecordBatch>> {
    Ok(ipc(bytes)?)
}
