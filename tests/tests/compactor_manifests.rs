//! The compactor's manifest merge on a table built by random row deltas (updates as new row plus
//! position delete), with a manual clock: after every run the current snapshot lists at most
//! one manifest per content type, the table reads as the model, every retained snapshot reads
//! as it did (time travel), expiration and orphan removal (run in the same compactions) leave
//! every file a retained snapshot reaches, and the manifest count never grows past what the
//! commits since the last run added.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use iceberg::table::Table;
use unitable_compactor::{CompactOptions, Compactor, SchedulerConfig, TaskKind};
use unitable_core::catalog::CatalogConfig;
use unitable_core::clock::ManualClock;
use unitable_core::commit::plan::manifests_of;
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::Committer;
use unitable_core::naming::TableName;
use unitable_tests::iceberg_oracle::{ORACLE_TABLE, Oracle, reachable, scan_id_values as scan};

async fn head_manifests(table: &Table) -> Result<usize> {
    let snapshot = table.metadata().current_snapshot().context("head")?;
    Ok(manifests_of(table.file_io(), table.metadata(), snapshot)
        .await?
        .len())
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_merges_manifests_and_every_retained_snapshot_reads_as_its_model() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let name: TableName = ORACLE_TABLE.parse()?;
    let mut oracle = Oracle::create(dir.path(), 41).await?;
    let config = CatalogConfig::embedded(dir.path());
    let catalog = oracle.catalog().clone();
    let committer = Committer::new(
        catalog.clone(),
        Arc::new(SqlMetadataPointer::connect(&config).await?),
    );
    let props = [
        ("unitable.compaction.min-input-files", "2"),
        ("unitable.compaction.snapshot-retention-ms", "0"),
        ("unitable.compaction.min-snapshots-to-keep", "6"),
        ("unitable.compaction.orphan-age-ms", "3600000"),
        ("unitable.compaction.max-manifests", "8"),
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
    // Two hours on: orphans (unreferenced files older than the 1 h safety age) are removed.
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 2 * 3_600_000);
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

    let (mut merges, mut most) = (0, 0);
    for round in 0..6 {
        for _ in 0..12 {
            oracle.row_delta().await?;
        }
        let before = head_manifests(&catalog.load(&name).await?).await?;
        most = most.max(before);
        let report = compactor.compact(&name, options).await?;
        // The compactor moved rows: the oracle's next deletes must name the new files.
        oracle.reindex().await?;
        let merged = report
            .plan
            .iter()
            .any(|t| t.kind == TaskKind::MergeManifests);
        ensure!(
            merged,
            "round {round}: {before} manifests and no merge planned"
        );
        merges += usize::from(report.manifests_removed > 0);

        let table = catalog.load(&name).await?;
        let head = table.metadata().current_snapshot_id().context("head")?;
        let after = head_manifests(&table).await?;
        ensure!(
            after <= 2,
            "round {round}: {after} manifests after the run ({before} before): {report:?}"
        );
        let model = &oracle.steps().last().context("steps")?.rows;
        ensure!(&scan(&table, head).await? == model, "round {round}: head");
        // Time travel: every retained snapshot of the oracle reads as its model, and every
        // file any retained snapshot reaches still exists (expiration and orphan removal ran).
        let mut retained = 0;
        for step in oracle.steps() {
            if table.metadata().snapshot_by_id(step.snapshot_id).is_none() {
                continue;
            }
            retained += 1;
            ensure!(
                scan(&table, step.snapshot_id).await? == step.rows,
                "round {round}: snapshot {} ({})",
                step.snapshot_id,
                step.op
            );
        }
        ensure!(
            retained >= 4,
            "round {round}: {retained} oracle snapshots retained"
        );
        for snapshot in table.metadata().snapshots() {
            for file in reachable(&table, snapshot.snapshot_id()).await? {
                ensure!(
                    table.file_io().exists(&file).await?,
                    "round {round}: {file} of retained snapshot {} is gone",
                    snapshot.snapshot_id()
                );
            }
        }
        // The replace snapshots (rewrites, the merge) keep the parent's changelog offsets.
        let summary = table
            .metadata()
            .current_snapshot()
            .context("head")?
            .summary();
        ensure!(
            summary
                .additional_properties
                .contains_key("unitable.changelog-offsets"),
            "round {round}: the merge lost the changelog offsets"
        );
    }
    // Bounded: between runs only the 12 commits' manifests (at most 2 each) are added.
    ensure!(most <= 2 + 2 * 12, "{most} manifests before a run");
    ensure!(merges == 6, "{merges} of 6 runs merged manifests");
    Ok(())
}
