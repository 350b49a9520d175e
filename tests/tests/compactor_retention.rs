//! The compactor's expiration and orphan removal on a table built through the commit layer,
//! with a manual clock: files only expired snapshots reached are gone, every retained snapshot
//! still reads as it did, and orphan removal never deletes a live file or a file of a commit in
//! flight (younger than the safety age).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use iceberg::spec::Struct;
use unitable_compactor::{CompactOptions, Compactor, SchedulerConfig};
use unitable_core::catalog::TableCatalog;
use unitable_core::clock::ManualClock;
use unitable_core::commit::files::{PositionDelete, write_position_deletes};
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::TableName;
use unitable_tests::iceberg_oracle::{
    create_items_table, reachable, scan_id_values as scan, write_rows,
};

async fn commit(
    committer: &Committer,
    name: &TableName,
    data: Vec<iceberg::spec::DataFile>,
    deletes: Vec<iceberg::spec::DataFile>,
    n: usize,
) -> Result<i64> {
    let delta = RowDelta {
        data_files: data,
        delete_files: deletes,
        commit_id: format!("retention-{n}"),
        ..RowDelta::default()
    };
    Ok(committer.commit_row_delta(name, &delta).await?.snapshot_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn expiration_and_orphan_removal_keep_everything_live_and_in_flight() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let name: TableName = "ret.items".parse()?;
    let (catalog, committer): (TableCatalog, Committer) =
        create_items_table(dir.path(), &name).await?;
    let props = [
        ("unitable.compaction.min-input-files", "2"),
        ("unitable.compaction.snapshot-retention-ms", "0"),
        ("unitable.compaction.min-snapshots-to-keep", "2"),
        ("unitable.compaction.orphan-age-ms", "3600000"),
    ];
    committer
        .commit_properties(
            &name,
            Some("props-1"),
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            BTreeMap::new(),
        )
        .await?;

    // Six commits: ten new rows each, and a delete of one row of the previous file.
    let mut model = BTreeMap::new();
    let mut snapshots: Vec<(i64, BTreeMap<i64, String>)> = Vec::new();
    let mut previous: Option<String> = None;
    for i in 0..6i64 {
        let table = catalog.load(&name).await?;
        let location = table.metadata().location().to_string();
        let rows: Vec<(i64, String)> = (0..10).map(|k| (i * 10 + k, format!("v{i}-{k}"))).collect();
        let path = format!("{location}/data/f{i}.parquet");
        let data = write_rows(&table, &path, &rows).await?;
        model.extend(rows.iter().cloned());
        let mut deletes = Vec::new();
        if let Some(prev) = &previous {
            let d = write_position_deletes(
                table.file_io(),
                &format!("{location}/data/d{i}.parquet"),
                vec![PositionDelete {
                    file_path: prev.clone(),
                    pos: 3,
                }],
                Struct::empty(),
                0,
            )
            .await?;
            deletes.push(d);
            model.remove(&((i - 1) * 10 + 3));
        }
        let id = commit(&committer, &name, vec![data], deletes, i as usize).await?;
        snapshots.push((id, model.clone()));
        previous = Some(path);
    }
    let table = catalog.load(&name).await?;
    let location = table.metadata().location().to_string();
    let mut before = BTreeMap::new();
    for (id, _) in &snapshots {
        before.insert(*id, reachable(&table, *id).await?);
    }
    // A commit in flight (its file written, not yet committed) and a stray file.
    let in_flight_rows = vec![(1000, "late".to_string())];
    let in_flight_path = format!("{location}/data/in-flight.parquet");
    let in_flight = write_rows(&table, &in_flight_path, &in_flight_rows).await?;
    let stray = format!("{location}/data/stray.parquet");
    table
        .file_io()
        .new_output(&stray)?
        .write("junk".into())
        .await?;

    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 1000);
    let compactor = Compactor::new(
        catalog.clone(),
        committer.clone(),
        Arc::new(clock.clone()),
        SchedulerConfig::default(),
    );
    let options = CompactOptions {
        dry_run: false,
        orphans: true,
    };
    let report = compactor.compact(&name, options).await?;
    ensure!(report.files_rewritten == 6, "{report:?}");
    ensure!(report.deletes_applied == 5, "{report:?}");
    ensure!(report.snapshots_expired >= 4, "{report:?}");

    let table = catalog.load(&name).await?;
    let retained: Vec<i64> = table
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    let mut still_reached = BTreeSet::new();
    for id in &retained {
        still_reached.extend(reachable(&table, *id).await?);
        // Every retained snapshot reads as its model (the rewrite reads as the last one).
        let expected = snapshots
            .iter()
            .find(|(s, _)| s == id)
            .map_or(&model, |(_, m)| m);
        ensure!(
            &scan(&table, *id).await? == expected,
            "snapshot {id} changed"
        );
    }
    for file in &still_reached {
        ensure!(
            table.file_io().exists(file).await?,
            "a retained snapshot's file {file} is gone"
        );
    }
    let mut gone = 0;
    for (id, files) in &before {
        if retained.contains(id) {
            continue;
        }
        for file in files.difference(&still_reached) {
            ensure!(
                !table.file_io().exists(file).await?,
                "expired-only file {file} still exists"
            );
            gone += 1;
        }
    }
    ensure!(gone > 0);
    // Young unreferenced files survive: the in-flight commit's and (for now) the stray.
    ensure!(table.file_io().exists(&in_flight_path).await?);
    ensure!(table.file_io().exists(&stray).await?);

    // The in-flight commit lands; hours later orphan removal takes only the stray. (That run
    // bin-packs the file with the compacted one and merges manifests: two new snapshots. Four
    // kept keep the snapshot that added the file, so the file must still be there.)
    commit(&committer, &name, vec![in_flight], Vec::new(), 100).await?;
    committer
        .commit_properties(
            &name,
            Some("props-2"),
            BTreeMap::from([(
                "unitable.compaction.min-snapshots-to-keep".to_string(),
                "4".to_string(),
            )]),
            BTreeMap::new(),
        )
        .await?;
    model.extend(in_flight_rows);
    clock.advance(2 * 3_600_000);
    let report = compactor.compact(&name, options).await?;
    ensure!(report.files_removed >= 1, "{report:?}");
    let table = catalog.load(&name).await?;
    ensure!(!table.file_io().exists(&stray).await?, "the stray survived");
    ensure!(
        table.file_io().exists(&in_flight_path).await?,
        "a live file was removed"
    );
    let current = table.metadata().current_snapshot_id().context("snapshot")?;
    ensure!(scan(&table, current).await? == model);
    for id in table.metadata().snapshots().map(|s| s.snapshot_id()) {
        for file in reachable(&table, id).await? {
            ensure!(
                table.file_io().exists(&file).await?,
                "{file} of snapshot {id} is gone"
            );
        }
    }
    Ok(())
}
