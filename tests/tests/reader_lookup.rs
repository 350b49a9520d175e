//! LOOKUP reads over gRPC against a BTreeMap model: random upserts and deletes (acknowledged by
//! the changelog, so many keys are answered from the tail and others from committed snapshots),
//! keys that never existed, deleted keys, duplicate keys, projections, server restarts, lookups
//! in a snapshot, bad keys, the CLI, and lookups on Kafka with and without a staleness
//! allowance.

mod support;

use std::collections::BTreeMap;
use std::io::Cursor;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::ipc::reader::StreamReader;
use support::{Rng, TABLE, create_kv_table, kv_line, write_lines};
use tonic::Code;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{
    AsOf, LookupResult, ReadMode, ReadRequest, RowFormat, WriteOp, read_response,
};
use unitable_tests::{Kafka, Service};

type Reader = ReadServiceClient<tonic::transport::Channel>;
type Writer = WriteServiceClient<tonic::transport::Channel>;
/// id -> (v, n)
type Model = BTreeMap<i64, (String, i64)>;

/// Key space: lookups also ask for keys beyond it, which never exist.
const KEYS: i64 = 300;

fn lookup_request(keys: &[i64], columns: &[&str]) -> ReadRequest {
    let lines: Vec<String> = keys.iter().map(|k| format!("{{\"id\":{k}}}")).collect();
    ReadRequest {
        table: TABLE.into(),
        mode: ReadMode::Lookup as i32,
        columns: columns.iter().map(|c| c.to_string()).collect(),
        keys: lines.join("\n").into_bytes(),
        keys_format: RowFormat::JsonLines as i32,
        ..ReadRequest::default()
    }
}

/// The one response of a lookup: its rows and its `as_of`.
async fn lookup(
    reader: &mut Reader,
    request: ReadRequest,
) -> Result<(Vec<RecordBatch>, Vec<u32>, AsOf), tonic::Status> {
    let mut stream = reader.read(request).await?.into_inner();
    let mut out = None;
    while let Some(message) = stream.message().await? {
        let Some(read_response::Body::Lookup(LookupResult {
            arrow_ipc, missing, ..
        })) = message.body
        else {
            return Err(tonic::Status::internal("not a lookup body"));
        };
        let batches = StreamReader::try_new(Cursor::new(arrow_ipc), None)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        if out.is_some() {
            return Err(tonic::Status::internal("more than one lookup message"));
        }
        out = Some((batches, missing, message.as_of.unwrap_or_default()));
    }
    out.ok_or_else(|| tonic::Status::internal("no lookup message"))
}

/// Rows as (id, v, n) in order; absent columns are None.
/// (id, v, n) of one returned row; columns not projected are None.
type Row = (Option<i64>, Option<String>, Option<i64>);

fn rows(batches: &[RecordBatch]) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for b in batches {
        let ints = |name: &str| -> Result<Option<Int64Array>> {
            b.column_by_name(name)
                .map(|c| {
                    c.as_any()
                        .downcast_ref::<Int64Array>()
                        .cloned()
                        .context("not int64")
                })
                .transpose()
        };
        let ids = ints("id")?;
        let ns = ints("n")?;
        let vs = b
            .column_by_name("v")
            .map(|c| {
                c.as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .context("v not a string")
            })
            .transpose()?;
        for i in 0..b.num_rows() {
            out.push((
                ids.as_ref().map(|a| a.value(i)),
                vs.as_ref()
                    .and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_string())),
                ns.as_ref().map(|a| a.value(i)),
            ));
        }
    }
    Ok(out)
}

/// Looks up `keys` in the test table and compares the answer with `model`.
async fn check(reader: &mut Reader, model: &Model, keys: &[i64], what: &str) -> Result<AsOf> {
    check_table(reader, TABLE, model, keys, what).await
}

/// Looks up `keys` in `table` and compares the rows and the missing keys with `model`.
async fn check_table(
    reader: &mut Reader,
    table: &str,
    model: &Model,
    keys: &[i64],
    what: &str,
) -> Result<AsOf> {
    let mut request = lookup_request(keys, &[]);
    request.table = table.into();
    let (batches, missing, as_of) = lookup(reader, request)
        .await
        .with_context(|| format!("{what}: lookup of {table}"))?;
    let got = rows(&batches)?;
    let mut want = Vec::new();
    let mut want_missing = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match model.get(k) {
            Some((v, n)) => want.push((Some(*k), Some(v.clone()), Some(*n))),
            None => want_missing.push(i as u32),
        }
    }
    ensure!(
        got == want,
        "{what}: {table} rows differ\n got {got:?}\nwant {want:?}"
    );
    ensure!(
        missing == want_missing,
        "{what}: {table} missing {missing:?}, want {want_missing:?}"
    );
    Ok(as_of)
}

/// Writes a random batch of upserts and deletes and applies it to the model.
async fn random_writes(
    writer: &mut Writer,
    model: &mut Model,
    rng: &mut Rng,
    round: u64,
    wait: bool,
) -> Result<()> {
    let mut upserts = String::new();
    let mut deletes = String::new();
    let mut batch_up: Vec<(i64, String, i64)> = Vec::new();
    let mut batch_del: Vec<i64> = Vec::new();
    for _ in 0..1 + rng.below(25) {
        let id = rng.below(KEYS as u64) as i64;
        if rng.below(4) == 0 {
            batch_del.push(id);
        } else {
            batch_up.push((
                id,
                format!("r{round}-{}", rng.below(1000)),
                rng.below(1 << 40) as i64,
            ));
        }
    }
    // Upserts first, then deletes, each its own request: the model applies them in that order.
    for (id, v, n) in &batch_up {
        upserts.push_str(&kv_line(*id, v, *n));
    }
    for id in &batch_del {
        deletes.push_str(&format!("{{\"id\":{id}}}\n"));
    }
    if !upserts.is_empty() {
        let r = write_lines(writer, WriteOp::Upsert, &upserts, wait).await?;
        ensure!(r.rows_rejected == 0, "upserts rejected: {r:?}");
        for (id, v, n) in batch_up {
            model.insert(id, (v, n));
        }
    }
    if !deletes.is_empty() {
        let r = write_lines(writer, WriteOp::Delete, &deletes, wait).await?;
        ensure!(r.rows_rejected == 0, "deletes rejected: {r:?}");
        for id in batch_del {
            model.remove(&id);
        }
    }
    Ok(())
}

fn random_keys(rng: &mut Rng, n: usize) -> Vec<i64> {
    (0..n)
        .map(|_| rng.below(KEYS as u64 + KEYS as u64 / 5) as i64)
        .collect()
}

async fn clients(service: &Service) -> Result<(Writer, Reader)> {
    Ok((
        WriteServiceClient::connect(service.grpc_url()).await?,
        ReadServiceClient::connect(service.grpc_url()).await?,
    ))
}

#[tokio::test]
async fn lookups_match_a_model_through_writes_commits_and_restarts() -> Result<()> {
    let mut service =
        tokio::task::spawn_blocking(|| Service::start(&["--commit-interval", "150ms"])).await??;
    create_kv_table(&service, 3).await?;
    let (mut writer, mut reader) = clients(&service).await?;
    let mut model = Model::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);

    // An empty table: every key is missing.
    let as_of = check(&mut reader, &model, &[1, 2, 3], "empty table").await?;
    ensure!(as_of.snapshot_id.is_none(), "no snapshot yet: {as_of:?}");

    for round in 0..60u64 {
        // Some rounds wait for the snapshot, so answers come from the index as well.
        random_writes(&mut writer, &mut model, &mut rng, round, round % 7 == 3).await?;
        let n = 1 + rng.below(60) as usize;
        let keys = random_keys(&mut rng, n);
        check(&mut reader, &model, &keys, &format!("round {round}")).await?;
        if round == 25 || round == 45 {
            let mut svc = service;
            service = tokio::task::spawn_blocking(move || svc.restart().map(|()| svc)).await??;
            (writer, reader) = clients(&service).await?;
            let all: Vec<i64> = (0..KEYS).collect();
            check(
                &mut reader,
                &model,
                &all,
                &format!("after restart at round {round}"),
            )
            .await?;
        }
    }
    // Every key, all at once, duplicates included.
    let mut all: Vec<i64> = (0..KEYS + 20).collect();
    all.extend([5, 5, 7]);
    let as_of = check(&mut reader, &model, &all, "every key").await?;
    ensure!(as_of.snapshot_id.is_some(), "a snapshot by now: {as_of:?}");

    // A projection in another order.
    let keys: Vec<i64> = model.keys().copied().take(10).collect();
    let (batches, missing, _) = lookup(&mut reader, lookup_request(&keys, &["n", "id"])).await?;
    ensure!(missing.is_empty());
    let b = batches.first().context("a batch")?;
    ensure!(
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            == ["n", "id"],
        "projection order: {:?}",
        b.schema()
    );
    let got = rows(&batches)?;
    let want: Vec<_> = keys
        .iter()
        .map(|k| (Some(*k), None, Some(model[k].1)))
        .collect();
    ensure!(got == want, "projection: {got:?} vs {want:?}");

    // As of a time just after a write that waited for its commit: the model.
    random_writes(&mut writer, &mut model, &mut rng, 1000, true).await?;
    let keys: Vec<i64> = (0..KEYS).collect();
    let mut request = lookup_request(&keys, &[]);
    request.as_of_timestamp_ms = Some(chrono::Utc::now().timestamp_millis() + 1);
    let (batches, missing, as_of) = lookup(&mut reader, request).await?;
    let found = rows(&batches)?;
    let want: Vec<Row> = keys
        .iter()
        .filter_map(|k| {
            let (v, n) = model.get(k)?;
            Some((Some(*k), Some(v.clone()), Some(*n)))
        })
        .collect();
    ensure!(
        found == want,
        "as-of lookup rows differ\n got {found:?}\nwant {want:?}"
    );
    let want_missing: Vec<u32> = (0..keys.len() as u32)
        .filter(|i| !model.contains_key(&keys[*i as usize]))
        .collect();
    ensure!(missing == want_missing, "as-of lookup missing {missing:?}");
    ensure!(as_of.snapshot_id.is_some());
    // Before the first record every key is missing (as of a time is exact to the record;
    // tests/tests/reader_asof.rs checks many instants against a changelog replay).
    let mut request = lookup_request(&[1, 2], &[]);
    request.as_of_timestamp_ms = Some(1);
    let (batches, missing, as_of) = lookup(&mut reader, request).await?;
    ensure!(
        rows(&batches)?.is_empty() && missing == [0, 1],
        "as of 1970: {missing:?}"
    );
    ensure!(as_of.snapshot_id.is_none(), "as of 1970: {as_of:?}");
    // A snapshot id that does not exist is NOT_FOUND.
    let mut request = lookup_request(&[1], &[]);
    request.snapshot_id = Some(1);
    let e = lookup(&mut reader, request)
        .await
        .err()
        .context("snapshot 1")?;
    ensure!(e.code() == Code::NotFound, "{e:?}");
    Ok(())
}

#[tokio::test]
async fn bad_keys_name_the_key_and_field() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    create_kv_table(&service, 2).await?;
    let (mut writer, mut reader) = clients(&service).await?;
    write_lines(&mut writer, WriteOp::Upsert, &kv_line(1, "a", 10), false).await?;

    let bad = |keys: &str| ReadRequest {
        table: TABLE.into(),
        mode: ReadMode::Lookup as i32,
        keys: keys.as_bytes().to_vec(),
        keys_format: RowFormat::JsonLines as i32,
        ..ReadRequest::default()
    };
    for (keys, wants) in [
        ("{\"id\":1}\n{\"idd\":2}", ["key 1", "`id`"]),
        ("{\"id\":1}\n{\"id\":2}\n{\"id\":null}", ["key 2", "`id`"]),
        ("{\"id\":\"x\"}", ["key 0", "`id`"]),
        ("not json", ["key 0", ""]),
    ] {
        let e = lookup(&mut reader, bad(keys))
            .await
            .err()
            .with_context(|| format!("{keys} should fail"))?;
        ensure!(e.code() == Code::InvalidArgument, "{keys}: {e:?}");
        for w in wants {
            ensure!(e.message().contains(w), "{keys}: {} lacks {w}", e.message());
        }
    }
    let many: Vec<i64> = (0..10_001).collect();
    let e = lookup(&mut reader, lookup_request(&many, &[]))
        .await
        .err()
        .context("too many")?;
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("10000"),
        "{e:?}"
    );
    let e = lookup(&mut reader, lookup_request(&[1], &["nope"]))
        .await
        .err()
        .context("column")?;
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("nope"),
        "{e:?}"
    );
    let mut unknown = lookup_request(&[1], &[]);
    unknown.table = "crash.none".into();
    let e = lookup(&mut reader, unknown).await.err().context("table")?;
    ensure!(e.code() == Code::NotFound, "{e:?}");

    // The CLI: found rows on stdout, missing keys on stderr, exit 0.
    let out = service.cli(&[
        "lookup",
        TABLE,
        "--key",
        "{\"id\":1}",
        "--key",
        "{\"id\":99}",
        "--columns",
        "id,v",
    ])?;
    ensure!(out.code() == Some(0), "{out:?}");
    ensure!(out.stdout.trim() == "{\"id\":1,\"v\":\"a\"}", "{out:?}");
    ensure!(out.stderr.contains("not found: {\"id\":99}"), "{out:?}");
    let out = service.cli(&["lookup", TABLE, "--key", "{\"idd\":1}"])?;
    if out.code() == Some(0) {
        bail!("a bad key must fail: {out:?}");
    }
    ensure!(out.stderr.contains("{\"idd\":1}"), "names the key: {out:?}");
    Ok(())
}

/// Writes keys `0..n` (value `v{id}` padded, n = id) to `table` with a one-hour commit
/// interval after one committed row, so a lookup state holds them all in its changelog tail.
/// Returns the model.
async fn fill_tail(service: &Service, table: &str, n: i64) -> Result<Model> {
    support::create_kv_table_as(
        service,
        table,
        2,
        &[("unitable.commit.interval-ms", "3600000")],
        Vec::new(),
    )
    .await?;
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let write =
        |lines: String, wait_for: unitable_proto::v1::WaitFor| unitable_proto::v1::WriteRequest {
            table: table.into(),
            op: WriteOp::Upsert as i32,
            format: RowFormat::JsonLines as i32,
            rows: lines.into_bytes(),
            wait_for: wait_for as i32,
            request_id: String::new(),
        };
    // The committer's first cycle runs as soon as it starts: let it commit one row, so the
    // rows below stay in the changelog tail until the hour is up.
    let first = format!("v{:06}", -1);
    writer
        .write(write(
            kv_line(-1, &first, -1),
            unitable_proto::v1::WaitFor::Snapshot,
        ))
        .await?;
    let mut model = Model::from([(-1, (first, -1))]);
    let mut lines = String::new();
    for id in 0..n {
        let v = format!("v{id:06}-{}", "x".repeat(32));
        lines.push_str(&kv_line(id, &v, id));
        model.insert(id, (v, id));
    }
    let r = writer
        .write(write(lines, unitable_proto::v1::WaitFor::Changelog))
        .await?
        .into_inner();
    ensure!(r.rows_written == n as u64, "{r:?}");
    Ok(model)
}

/// The sum of a metric's samples for `table` in /metrics.
fn metric(service: &Service, name: &str, table: &str) -> Result<f64> {
    let body = String::from_utf8(service.http_get("/metrics")?.body)?;
    let label = format!("table=\"{table}\"");
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Two tables' lookup states under a memory limit that fits one but not both: looking up one
/// evicts the other (counted in /metrics), answers stay right as they alternate, and a table
/// whose state alone is over the limit fails with RESOURCE_EXHAUSTED instead of growing.
#[tokio::test]
async fn lookup_states_share_one_memory_limit() -> Result<()> {
    const N: i64 = 3_000;
    let keys: Vec<i64> = (0..N + 100).step_by(7).collect();
    // What one table's state holds, measured on a server of its own with the same data.
    let probe = tokio::task::spawn_blocking(|| Service::start(&[])).await??;
    let model = fill_tail(&probe, "crash.a", N).await?;
    let (_, mut reader) = clients(&probe).await?;
    check_table(&mut reader, "crash.a", &model, &keys, "probe").await?;
    let one = metric(&probe, "unitable_lookup_state_bytes", "crash.a")?;
    ensure!(one > 0.0, "the state's size is reported");
    drop(probe);

    let limit = format!("{}", (one * 1.5) as u64);
    let service =
        tokio::task::spawn_blocking(move || Service::start(&["--lookup-memory-limit", &limit]))
            .await??;
    let a = fill_tail(&service, "crash.a", N).await?;
    let b = fill_tail(&service, "crash.b", N).await?;
    let (_, mut reader) = clients(&service).await?;
    for round in 0..3 {
        check_table(&mut reader, "crash.a", &a, &keys, &format!("round {round}")).await?;
        check_table(&mut reader, "crash.b", &b, &keys, &format!("round {round}")).await?;
    }
    let evicted = metric(&service, "unitable_lookup_evictions_total", "crash.a")?
        + metric(&service, "unitable_lookup_evictions_total", "crash.b")?;
    ensure!(
        evicted >= 4.0,
        "alternating two tables that do not fit together must evict each time: {evicted}"
    );

    // Four times the data in one table: over the limit on its own (the lookup's keys are in
    // both partitions, so it waits until the whole tail is applied).
    fill_tail(&service, "crash.big", 4 * N).await?;
    let mut request = lookup_request(&keys, &[]);
    request.table = "crash.big".into();
    let e = lookup(&mut reader, request)
        .await
        .err()
        .context("a state over the limit must fail")?;
    ensure!(
        e.code() == Code::ResourceExhausted && e.message().contains("--lookup-memory-limit"),
        "{e:?}"
    );
    // The other tables still answer.
    check_table(&mut reader, "crash.a", &a, &keys, "after the refusal").await?;
    Ok(())
}

/// On Kafka, with the server accepting answers an hour old unless a request says otherwise
/// (`--lookup-max-staleness 1h`): a lookup asking for none (`max_staleness_ms = 0`) reflects
/// every acknowledged write; a default one reflects at least every write acknowledged before
/// the last high watermark read (the strict lookup's), key by key either the value before the
/// round's writes or after them.
#[tokio::test]
async fn lookups_on_kafka_with_and_without_a_staleness_allowance() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let brokers = kafka.bootstrap();
    let service = tokio::task::spawn_blocking(move || {
        Service::start(&[
            "--kafka-brokers",
            &brokers,
            "--commit-interval",
            "300ms",
            "--lookup-max-staleness",
            "1h",
        ])
    })
    .await??;
    create_kv_table(&service, 3).await?;
    let (mut writer, mut reader) = clients(&service).await?;
    let keys: Vec<i64> = (0..60).collect();
    let mut model = Model::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let strict = |keys: &[i64]| {
        let mut request = lookup_request(keys, &[]);
        request.max_staleness_ms = Some(0);
        request
    };
    for round in 0..8i64 {
        let before = model.clone();
        // Distinct keys per round: each key changes at most once, so a lookup sees its value
        // before the round or after it, nothing in between.
        let mut ids: Vec<i64> = keys.clone();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (upserts, deletes) = ids[..30].split_at(24);
        let lines: String = upserts
            .iter()
            .map(|id| kv_line(*id, &format!("s{round}"), round))
            .collect();
        let r = write_lines(&mut writer, WriteOp::Upsert, &lines, round % 3 == 1).await?;
        ensure!(r.rows_rejected == 0, "{r:?}");
        for id in upserts {
            model.insert(*id, (format!("s{round}"), round));
        }
        let lines: String = deletes
            .iter()
            .map(|id| format!("{{\"id\":{id}}}\n"))
            .collect();
        let r = write_lines(&mut writer, WriteOp::Delete, &lines, false).await?;
        ensure!(r.rows_rejected == 0, "{r:?}");
        for id in deletes {
            model.remove(id);
        }

        // The server's default allowance: each key before or after the round.
        let (batches, missing, _) = lookup(&mut reader, lookup_request(&keys, &[])).await?;
        let mut found = rows(&batches)?.into_iter();
        for (i, k) in keys.iter().enumerate() {
            let got = if missing.contains(&(i as u32)) {
                None
            } else {
                let (_, v, n) = found.next().context("fewer rows than found keys")?;
                Some((v.context("v")?, n.context("n")?))
            };
            let (old, new) = (before.get(k).cloned(), model.get(k).cloned());
            ensure!(
                got == old || got == new,
                "round {round}, key {k}: {got:?}, want {old:?} or {new:?}"
            );
        }
        // Strict: the model exactly, and nothing missed.
        let (batches, missing, as_of) = lookup(&mut reader, strict(&keys)).await?;
        let want_missing: Vec<u32> = (0..keys.len() as u32)
            .filter(|i| !model.contains_key(&keys[*i as usize]))
            .collect();
        let want: Vec<Row> = keys
            .iter()
            .filter_map(|k| {
                model
                    .get(k)
                    .map(|(v, n)| (Some(*k), Some(v.clone()), Some(*n)))
            })
            .collect();
        ensure!(
            rows(&batches)? == want && missing == want_missing,
            "round {round}: strict lookup differs"
        );
        ensure!(as_of.lag_ms == 0, "strict lookup lag {}", as_of.lag_ms);
        // The default again: the strict lookup's watermarks cover every write so far.
        check(
            &mut reader,
            &model,
            &keys,
            &format!("round {round}, after a strict lookup"),
        )
        .await?;
    }
    drop(service);
    drop(kafka);
    Ok(())
}
