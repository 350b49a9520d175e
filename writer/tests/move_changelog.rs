//! Moving a table's changelog between two clusters in process (in-memory changelogs behind a
//! `RoutedChangelog`, a SQLite catalog, a running committer), with a write whose append is
//! still under way on the old cluster when the committer switches: that write must not be
//! acknowledged, and its retry under the same request id must land on the new cluster once.
//! The oracle is the changelog read through the router and the old topic read directly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use unitable_core::admin::{ClusterDirectory, TableAdmin};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::{Changelog, Clusters, MemoryChangelog, RoutedChangelog};
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::{TableName, TopicName, summary};
use unitable_core::offsets::{Offset, PartitionId};
use unitable_core::record::ChangeOp;
use unitable_core::requests::RequestLog;
use unitable_core::table::{Column, TableSpec};
use unitable_core::types::ColumnType;
use unitable_writer::{Rows, WriteRequest, Writer, WriterConfig};

mod common;
use common::Flaky;

fn request(table: &TableName, ids: std::ops::Range<i64>, request_id: &str) -> WriteRequest {
    let lines: String = ids
        .map(|id| format!("{{\"id\":{id},\"v\":\"v{id}\"}}\n"))
        .collect();
    WriteRequest {
        table: table.clone(),
        op: ChangeOp::Upsert,
        rows: Rows::JsonLines(lines.into_bytes().into()),
        first_row: 0,
        wait_for_snapshot: false,
        request_id: Some(request_id.to_string()),
    }
}

async fn ids(log: &dyn Changelog, topic: &TopicName) -> Vec<i64> {
    let mut out = Vec::new();
    let mut from = Offset(0);
    loop {
        let records = log
            .read(topic, PartitionId(0), from, 1000, Duration::ZERO)
            .await
            .unwrap();
        let Some(last) = records.last() else {
            return out;
        };
        from = last.offset.next();
        for r in records {
            let v: serde_json::Value = serde_json::from_slice(&r.record.value.unwrap()).unwrap();
            out.push(v["id"].as_i64().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_caught_in_the_switch_is_retried_onto_the_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = CatalogConfig::embedded(dir.path());
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let a = Arc::new(Flaky::new());
    let b = Arc::new(MemoryChangelog::new());
    let clusters: Clusters = BTreeMap::from([
        ("a".to_string(), a.clone() as Arc<dyn Changelog>),
        ("b".to_string(), b.clone() as Arc<dyn Changelog>),
    ]);
    let log: Arc<dyn Changelog> = Arc::new(RoutedChangelog::new(clusters, "a").unwrap());
    let pointer = Arc::new(SqlMetadataPointer::connect(&config).await.unwrap());
    let admin = TableAdmin::new(catalog.clone(), log.clone())
        .with_committer(Committer::new(catalog.clone(), pointer.clone()))
        .with_clusters(ClusterDirectory {
            default: "a".into(),
            bootstrap: BTreeMap::from([("a".into(), String::new()), ("b".into(), String::new())]),
        });
    let name: TableName = "mv_gate.t".parse().unwrap();
    let def = unitable_core::table::TableDef::new(
        name.clone(),
        TableSpec {
            columns: vec![
                Column::new("id", ColumnType::Int64, true),
                Column::new("v", ColumnType::String, false),
            ],
            primary_key: vec!["id".into()],
            buckets: Some(1),
            ..TableSpec::default()
        },
    )
    .unwrap();
    let created = admin.create_table(&def).await.unwrap();
    assert_eq!(created.def.changelog.cluster.as_deref(), Some("a"));
    let topic = created.def.changelog.topic.clone();
    let writer = Writer::new(
        catalog.clone(),
        log.clone(),
        Committer::new(catalog.clone(), pointer),
        WriterConfig {
            commit_interval: Duration::from_millis(50),
            requests: RequestLog::connect(&config).await.unwrap(),
            ..WriterConfig::default()
        },
    );
    writer.start_committers().await.unwrap();
    writer.write(request(&name, 0..10, "w1")).await.unwrap();

    // w2's append is held on cluster a while the move switches to b.
    a.hold_next.store(true, Ordering::SeqCst);
    let held = tokio::spawn({
        let writer = writer.clone();
        let name = name.clone();
        async move { writer.write(request(&name, 10..20, "w2")).await }
    });
    a.entered.notified().await;
    admin.move_changelog(&name, "b", false).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while catalog
        .describe(&name)
        .await
        .unwrap()
        .def
        .changelog
        .generation
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the move did not switch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = catalog.describe(&name).await.unwrap().def.changelog;
    assert_eq!(moved.cluster.as_deref(), Some("b"));
    assert_eq!(moved.history[0].end.get(PartitionId(0)), Offset(10));
    a.release.notify_one();
    let outcome = held.await.unwrap();
    // The records landed on a past the end: not acknowledged.
    let e = outcome.expect_err("a write that landed past the old topic's end was acknowledged");
    assert!(e.to_string().contains("moved"), "{e}");
    assert_eq!(
        ids(a.as_ref(), &topic).await.len(),
        20,
        "the held append did land on a"
    );

    // The retry under the same id writes the rows to b, once; new writes go there too.
    let retried = writer.write(request(&name, 10..20, "w2")).await.unwrap();
    assert_eq!(retried.rows_written, 10);
    assert_eq!(
        retried.last_offsets.get(PartitionId(0)),
        Offset::of_generation(1, 9)
    );
    let again = writer.write(request(&name, 10..20, "w2")).await.unwrap();
    assert_eq!(again.rows_written, 10, "the recorded outcome");
    writer.write(request(&name, 20..30, "w3")).await.unwrap();
    assert_eq!(ids(log.as_ref(), &topic).await, (0..30).collect::<Vec<_>>());

    // The committer went on across the move: a snapshot covers generation 1 and names it.
    let covered = tokio::time::timeout(
        Duration::from_secs(30),
        writer.wait_for_snapshot_covering(&name, &retried.last_offsets),
    )
    .await;
    assert!(matches!(covered, Ok(Ok(_))), "{covered:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = catalog.load(&name).await.unwrap();
        let summary_of = table
            .metadata()
            .current_snapshot()
            .map(|s| s.summary().additional_properties.clone())
            .unwrap_or_default();
        if summary_of
            .get(summary::CHANGELOG_OFFSETS)
            .map(String::as_str)
            == Some(&format!("0:{}", Offset::of_generation(1, 20).0))
        {
            assert_eq!(
                summary_of
                    .get(summary::CHANGELOG_POSITIONS)
                    .map(String::as_str),
                Some("b/unitable.mv_gate.t.g1@0:20")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot covers w3: {summary_of:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.shutdown().await;
}
