//! Observability against a running server: `/metrics` after a known workload has exact counts
//! (writes, rejections and dead letters, reads by mode, rows out, LOOKUP keys, STREAM and FRESH decoding,
//! active streams, subscriber and consumer-group lag, LOOKUP cache hits, a fenced committer),
//! every exported metric is documented, and the Grafana dashboard and the Prometheus alert rules in
//! `deploy/` reference only metric names that server exports (their PromQL checked by
//! `promtool`). The runtime log filter override is in `log_level.rs`.

mod support;

#[path = "observability/deploy.rs"]
mod deploy;
#[path = "observability/scrape.rs"]
mod scrape;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use scrape::{Scrape, expect, scrape_until};
use support::read::{kv_rows, lookup_ids, subscribe};
use support::{TABLE, kv_line, write_lines};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{StreamStart, WriteOp};
use unitable_tests::Service;
use unitable_tests::bench::create_kv_table_as;

fn lines(ids: std::ops::Range<i64>, tag: &str) -> String {
    ids.map(|id| kv_line(id, &format!("{tag}{id}"), id))
        .collect()
}

/// A known workload, then exact counts: 5 rows and a bad one (dead-lettered), 2 more rows,
/// then one read of each mode, a STREAM of all 7 changes, an open stream that follows 3 more,
/// and a consumer group that reads all 10 and then lags by 3.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_workload_exactly() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| {
        // Warming would decode blocks ahead of the lookups, making hits and misses depend on
        // timing; it is counted in its own test below.
        Service::start(&[
            "--commit-interval",
            "100ms",
            "--compaction-interval",
            "200ms",
            "--consumer-group-session",
            "1s",
            "--lookup-cache-warm",
            "false",
        ])
    })
    .await??;
    create_kv_table_as(
        &service,
        TABLE,
        4,
        &[("unitable.write.dead-letter", "true")],
        Vec::new(),
    )
    .await?;
    let table = ("table", TABLE);
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;

    // Writes: 5 good rows and one that fails validation, then 2 more, each waiting for its
    // snapshot (so the first 5 rows are one data file).
    let first = lines(0..5, "a") + "{\"id\":\"not a number\"}\n";
    let resp = write_lines(&mut writer, WriteOp::Upsert, &first, true).await?;
    ensure!(resp.errors.len() == 1, "{:?}", resp.errors);
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(5..7, "b"), true).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    let s = Scrape::of(&service)?;
    expect(
        &s,
        "unitable_writer_rows_total",
        &[table, ("op", "upsert")],
        7.0,
    )?;
    expect(
        &s,
        "unitable_writer_rejected_rows_total",
        &[table, ("reason", "invalid")],
        1.0,
    )?;
    expect(
        &s,
        "unitable_writer_rejected_rows_total",
        &[table, ("reason", "changelog")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_writer_dead_letter_rows_total",
        &[table, ("outcome", "sent")],
        1.0,
    )?;
    expect(
        &s,
        "unitable_writer_dead_letter_rows_total",
        &[table, ("outcome", "failed")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_grpc_requests_total",
        &[("method", "Write")],
        2.0,
    )?;
    expect(&s, "unitable_committer_fenced_total", &[table], 0.0)?;
    expect(&s, "unitable_committer_panics_total", &[table], 0.0)?;
    ensure!(s.value("unitable_committer_last_commit_timestamp_seconds", &[table])? > 1.7e9);

    // One read of each bounded mode through the CLI.
    let cli = |args: &[&str]| service.cli(args)?.ok();
    cli(&["scan", TABLE])?;
    cli(&["scan", TABLE, "--mode", "fresh"])?;
    cli(&[
        "lookup",
        TABLE,
        "--key",
        "{\"id\":1}",
        "--key",
        "{\"id\":2}",
        "--key",
        "{\"id\":99}",
    ])?;
    cli(&["sql", &format!("SELECT count(*) FROM {TABLE}")])?;
    // A read of a table that does not exist fails with NOT_FOUND.
    let missing = service.cli(&["scan", "ops.nothing"])?;
    ensure!(missing.code() == Some(1), "{missing:?}");
    // A STREAM of every change so far, ending at its limit.
    let out = cli(&["subscribe", TABLE, "--from", "earliest", "--limit", "7"])?;
    ensure!(out.lines().count() == 7, "{out}");

    let mode = |m: &'static str| ("mode", m);
    let s = scrape_until(&service, "the ended STREAM inactive", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(0.0)
    })
    .await?;
    for (m, rows) in [
        ("SNAPSHOT", 7.0),
        ("FRESH", 7.0),
        ("LOOKUP", 2.0),
        ("STREAM", 7.0),
    ] {
        expect(&s, "unitable_read_rows_total", &[table, mode(m)], rows)?;
        expect(
            &s,
            "unitable_read_open_seconds_count",
            &[table, mode(m)],
            1.0,
        )?;
        expect(&s, "unitable_read_active", &[table, mode(m)], 0.0)?;
        ensure!(s.value("unitable_read_bytes_total", &[table, mode(m)])? > 0.0);
    }
    expect(&s, "unitable_read_rows_total", &[table, mode("SQL")], 1.0)?;
    expect(
        &s,
        "unitable_grpc_errors_total",
        &[("code", "NotFound")],
        1.0,
    )?;
    // A read that failed before it opened adds no read series.
    ensure!(
        s.get("unitable_read_active", &[("table", "ops.nothing")])
            .is_none()
    );
    // The bounded modes' full latency; a STREAM has none.
    for m in ["SNAPSHOT", "FRESH", "LOOKUP", "SQL"] {
        expect(&s, "unitable_read_seconds_count", &[table, mode(m)], 1.0)?;
    }
    ensure!(
        s.get("unitable_read_seconds_count", &[mode("STREAM")])
            .is_none()
    );
    // LOOKUP: one request of three keys.
    expect(&s, "unitable_lookup_keys_count", &[table], 1.0)?;
    expect(&s, "unitable_lookup_keys_sum", &[table], 3.0)?;
    expect(
        &s,
        "unitable_lookup_keys_bucket",
        &[table, ("le", "2")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_lookup_keys_bucket",
        &[table, ("le", "5")],
        1.0,
    )?;
    expect(&s, "unitable_lookup_seconds_count", &[table], 1.0)?;
    // The rows of ids 1 and 2 are in one row block of the first commit's data file: the first
    // LOOKUP misses it, the same LOOKUP again hits it.
    expect(&s, "unitable_lookup_cache_misses_total", &[table], 1.0)?;
    expect(&s, "unitable_lookup_cache_hits_total", &[table], 0.0)?;
    cli(&[
        "lookup",
        TABLE,
        "--key",
        "{\"id\":1}",
        "--key",
        "{\"id\":2}",
        "--key",
        "{\"id\":99}",
    ])?;
    let s = Scrape::of(&service)?;
    expect(&s, "unitable_lookup_cache_misses_total", &[table], 1.0)?;
    expect(&s, "unitable_lookup_cache_hits_total", &[table], 1.0)?;
    expect(
        &s,
        "unitable_read_rows_total",
        &[table, mode("LOOKUP")],
        4.0,
    )?;
    expect(&s, "unitable_lookup_keys_sum", &[table], 6.0)?;
    // STREAM: 7 records read and decoded, none skipped, by subscriber `anonymous`.
    let sub = ("subscriber", "anonymous");
    expect(&s, "unitable_stream_records_read_total", &[table, sub], 7.0)?;
    expect(
        &s,
        "unitable_stream_rows_delivered_total",
        &[table, sub],
        7.0,
    )?;
    let stream_path = ("path", "stream");
    expect(
        &s,
        "unitable_changelog_decoded_records_total",
        &[table, stream_path],
        7.0,
    )?;
    expect(
        &s,
        "unitable_changelog_decode_errors_total",
        &[table, stream_path],
        0.0,
    )?;
    ensure!(
        s.value(
            "unitable_changelog_decode_seconds_count",
            &[table, stream_path]
        )? >= 1.0
    );

    // An open stream: active while it follows, lag 0 once it has read everything, and 3 more
    // rows written while it follows arrive and are counted.
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let start = StreamStart {
        kind: Kind::Earliest as i32,
        ..StreamStart::default()
    };
    let mut changes = subscribe(&mut reader, start, "", 0).await?;
    let mut seen = 0;
    while seen < 7 {
        seen += changes.next_batch().await?.context("stream ended")?.len();
    }
    scrape_until(&service, "an open STREAM caught up", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(1.0)
            && s.get("unitable_stream_lag_records", &[table, sub]) == Some(0.0)
    })
    .await?;
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(7..10, "c"), false).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    while seen < 10 {
        seen += changes.next_batch().await?.context("stream ended")?.len();
    }
    ensure!(
        seen == 10,
        "the open stream delivered {seen} changes, expected 10"
    );
    let s = scrape_until(&service, "the followed rows counted", |s| {
        s.get("unitable_read_rows_total", &[table, ("mode", "STREAM")]) == Some(17.0)
    })
    .await?;
    expect(
        &s,
        "unitable_read_open_seconds_count",
        &[table, mode("STREAM")],
        2.0,
    )?;
    expect(
        &s,
        "unitable_stream_records_read_total",
        &[table, sub],
        17.0,
    )?;
    expect(
        &s,
        "unitable_writer_rows_total",
        &[table, ("op", "upsert")],
        10.0,
    )?;
    drop(changes);
    let s = scrape_until(&service, "the dropped STREAM inactive", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(0.0)
    })
    .await?;
    expect(&s, "unitable_stream_lag_records", &[table, sub], 0.0)?;

    // A consumer group and the compactor's plans add their gauges; then every name the
    // dashboard and the alert rules use must be among the server's.
    cli(&[
        "subscribe",
        TABLE,
        "--from",
        "earliest",
        "--limit",
        "10",
        "--group",
        "billing",
        "--auto-commit",
    ])?;
    // The group consumed (and, with auto-commit, committed) all 10 changes: lag 0; 3 more
    // rows: lag 3.
    let group = ("group", "billing");
    scrape_until(&service, "group lag 0", |s| {
        s.get("unitable_consumer_group_lag_records", &[table, group]) == Some(0.0)
    })
    .await?;
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(10..13, "d"), false).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    scrape_until(&service, "group lag 3", |s| {
        s.get("unitable_consumer_group_lag_records", &[table, group]) == Some(3.0)
    })
    .await?;
    let live = scrape_until(&service, "compaction gauges", |s| {
        s.get("unitable_compactor_backlog_small_files", &[table])
            .is_some()
    })
    .await?
    .names();
    deploy::check_documented(&live)?;
    deploy::check_deploy_files(&live)
}

/// A committer fenced by another claim on its table (here the test claims a higher committer
/// epoch in the catalog, as a node that took the lease over would) is counted once in
/// `unitable_committer_fenced_total`, the metric the `UnitableCommitterFenced` alert watches.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_committer_is_counted() -> Result<()> {
    use std::sync::Arc;

    use unitable_core::catalog::{CatalogConfig, TableCatalog};
    use unitable_core::commit::pointer::SqlMetadataPointer;
    use unitable_core::commit::row_delta::Committer;
    use unitable_core::naming::{TableName, props};

    let service = tokio::task::spawn_blocking(|| {
        Service::start(&["--commit-interval", "100ms", "--compaction-interval", "0"])
    })
    .await??;
    create_kv_table_as(&service, TABLE, 2, &[], Vec::new()).await?;
    let table = ("table", TABLE);
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(0..3, "a"), true).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    let s = Scrape::of(&service)?;
    expect(&s, "unitable_committer_fenced_total", &[table], 0.0)?;

    // Another owner claims the table under a higher epoch.
    let config = CatalogConfig::embedded(&service.data_dir());
    let catalog = TableCatalog::open(config.clone()).await?;
    let name: TableName = TABLE.parse()?;
    let current = catalog.load(&name).await?;
    let epoch: u64 = current
        .metadata()
        .properties()
        .get(props::COMMITTER_EPOCH)
        .context("no committer epoch")?
        .parse()?;
    let committer = Committer::new(
        catalog,
        Arc::new(SqlMetadataPointer::connect(&config).await?),
    );
    committer
        .commit_properties(
            &name,
            Some("observability-test-claim"),
            BTreeMap::from([
                (props::COMMITTER_EPOCH.to_string(), (epoch + 1).to_string()),
                (
                    props::COMMITTER_OWNER.to_string(),
                    "another-node/test".to_string(),
                ),
            ]),
            BTreeMap::new(),
        )
        .await?;
    let s = scrape_until(&service, "the fenced committer counted", |s| {
        s.get("unitable_committer_fenced_total", &[table]) == Some(1.0)
    })
    .await?;
    expect(&s, "unitable_committer_fenced_total", &[table], 1.0)?;
    ensure!(
        service.log().contains("committer stopped"),
        "{}",
        service.log()
    );
    Ok(())
}

/// A FRESH read of an append-only table merges the changelog records its snapshot lacks: they
/// are decoded on the FRESH path and counted exactly.
#[tokio::test(flavor = "multi_thread")]
async fn fresh_tail_decoding_is_counted() -> Result<()> {
    // Commits only at a committer's start: what is written after it stays in the changelog.
    let service = tokio::task::spawn_blocking(|| {
        Service::start(&["--commit-interval", "1h", "--compaction-interval", "0"])
    })
    .await??;
    service
        .cli(&[
            "table",
            "create",
            "ops.events",
            "--column",
            "v:string",
            "--buckets",
            "2",
        ])?
        .ok()?;
    let table = ("table", "ops.events");
    // The committer's first cycle (right after its start) has looked at the changelog once it
    // has reported its lag.
    scrape_until(&service, "the committer's first cycle", |s| {
        s.get("unitable_committer_lag_records", &[table]).is_some()
    })
    .await?;
    let rows = service.dir().join("events.jsonl");
    std::fs::write(
        &rows,
        "{\"v\":\"a\"}\n{\"v\":\"b\"}\n{\"v\":\"c\"}\n{\"v\":\"d\"}\n",
    )?;
    let rows = rows.display().to_string();
    service
        .cli(&["write", "ops.events", "--file", &rows, "--op", "insert"])?
        .ok()?;
    let out = service
        .cli(&["scan", "ops.events", "--mode", "fresh"])?
        .ok()?;
    ensure!(out.lines().count() == 4, "{out}");
    let s = Scrape::of(&service)?;
    let fresh = ("path", "fresh");
    expect(
        &s,
        "unitable_changelog_decoded_records_total",
        &[table, fresh],
        4.0,
    )?;
    expect(
        &s,
        "unitable_changelog_decode_errors_total",
        &[table, fresh],
        0.0,
    )?;
    expect(
        &s,
        "unitable_fresh_tails_total",
        &[table, ("source", "changelog")],
        1.0,
    )?;
    expect(
        &s,
        "unitable_read_rows_total",
        &[table, ("mode", "FRESH")],
        4.0,
    )?;
    Ok(())
}

/// Cache warming: once a table's lookup state is built, its data files are decoded into the
/// block cache in the background (`unitable_lookup_cache_warmed_blocks_total`), so lookups of
/// any key afterwards read no block (no new misses) and return the rows written; after a
/// compaction rewrites the files, the new file is warmed too and lookups still read no block.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_after_warming_read_no_block() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| {
        Service::start(&["--commit-interval", "100ms", "--compaction-interval", "0"])
    })
    .await??;
    create_kv_table_as(&service, TABLE, 2, &[], Vec::new()).await?;
    let table = ("table", TABLE);
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    // Three commits, so three data files per bucket's worth of rows.
    for (round, ids) in [(0, 0..3000), (1, 3000..6000), (2, 0..1500)].into_iter() {
        let resp = write_lines(
            &mut writer,
            WriteOp::Upsert,
            &lines(ids, &format!("r{round}-")),
            true,
        )
        .await?;
        ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    }
    let want = |id: i64| {
        let tag = if id < 1500 {
            "r2-"
        } else if id < 3000 {
            "r0-"
        } else {
            "r1-"
        };
        (format!("{tag}{id}"), id)
    };
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let check = |batches: &[arrow::array::RecordBatch], ids: &[i64]| -> Result<()> {
        let rows = kv_rows(batches)?;
        for id in ids {
            ensure!(
                rows.get(id) == Some(&want(*id)),
                "row {id}: {:?}",
                rows.get(id)
            );
        }
        Ok(())
    };
    let (batches, missing) = lookup_ids(&mut reader, &[1]).await?;
    ensure!(missing.is_empty());
    check(&batches, &[1])?;
    let warmed = scrape_until(&service, "the first warming pass", |s| {
        s.get("unitable_lookup_cache_warmed_blocks_total", &[table])
            .is_some_and(|v| v > 0.0)
    })
    .await?;
    let warmed = warmed.value("unitable_lookup_cache_warmed_blocks_total", &[table])?;
    // Let the pass finish (it counts per file).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let misses = |s: &Scrape| {
        s.get("unitable_lookup_cache_misses_total", &[table])
            .unwrap_or(0.0)
    };
    let before = misses(&Scrape::of(&service)?);
    let ids: Vec<i64> = (0..6000).step_by(7).collect();
    let (batches, missing) = lookup_ids(&mut reader, &ids).await?;
    ensure!(missing.is_empty(), "{missing:?}");
    check(&batches, &ids)?;
    let s = Scrape::of(&service)?;
    ensure!(
        misses(&s) == before,
        "lookups after warming read blocks: {} misses before, {} after ({warmed} blocks warmed)",
        before,
        misses(&s)
    );

    // A compaction rewrites the files: the new one is warmed once the state moves to it.
    service.cli(&["compact", TABLE])?.ok()?;
    scrape_until(&service, "the compacted file's warming", |s| {
        s.get("unitable_lookup_cache_warmed_blocks_total", &[table])
            .is_some_and(|v| v > warmed)
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = misses(&Scrape::of(&service)?);
    let (batches, missing) = lookup_ids(&mut reader, &ids).await?;
    ensure!(missing.is_empty(), "{missing:?}");
    check(&batches, &ids)?;
    let after = misses(&Scrape::of(&service)?);
    ensure!(
        after == before,
        "lookups after the compaction's warming read {} blocks",
        after - before
    );
    Ok(())
}
