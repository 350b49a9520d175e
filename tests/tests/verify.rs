//! `unitable verify`: clean tables pass (current and older snapshots, keyed and append-only);
//! a snapshot committed behind the server's back with one row removed, one changed and one
//! added (its changelog offsets copied from the snapshot before it) is found different, with
//! exactly those rows, while the older snapshot still passes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use iceberg::spec::Struct;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::commit::files::{PositionDelete, write_position_deletes};
use unitable_core::commit::plan::plan_files;
use unitable_core::commit::pointer::SqlMetadataPointer;
use unitable_core::commit::row_delta::{Committer, RowDelta};
use unitable_core::naming::{TableName, summary};
use unitable_tests::Service;
use unitable_tests::iceberg_oracle::{live_rows, write_rows};

const TABLE: &str = "ops.kv";

/// The snapshot id a `write --wait snapshot` printed.
fn committed_snapshot(stdout: &str) -> Result<i64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("committed in snapshot "))
        .context("no snapshot in the write output")?
        .trim()
        .parse()
        .context("snapshot id")
}

/// Commits a snapshot that deletes `remove` and `change`, and adds `change` with a new value
/// and `add`, anchored at the same changelog offsets as the current snapshot.
async fn tamper(
    data_dir: &std::path::Path,
    remove: i64,
    change: (i64, &str),
    add: (i64, &str),
) -> Result<i64> {
    let config = CatalogConfig::embedded(data_dir);
    let catalog = TableCatalog::open(config.clone()).await?;
    let name: TableName = TABLE.parse()?;
    let table = catalog.load(&name).await?;
    let offsets = table
        .metadata()
        .current_snapshot()
        .context("no snapshot")?
        .summary()
        .additional_properties
        .get(summary::CHANGELOG_OFFSETS)
        .context("no anchored offsets")?
        .clone();
    let location = table.metadata().location().to_string();
    // Position deletes of the rows `remove` and `change`, one delete file per data file.
    let mut deletes: BTreeMap<String, Vec<PositionDelete>> = BTreeMap::new();
    for planned in plan_files(table.file_io(), table.metadata(), None).await? {
        for (pos, id, _) in live_rows(&table, &planned).await? {
            if id == remove || id == change.0 {
                deletes
                    .entry(planned.data_file.file_path().to_string())
                    .or_default()
                    .push(PositionDelete {
                        file_path: planned.data_file.file_path().to_string(),
                        pos,
                    });
            }
        }
    }
    ensure!(
        deletes.values().map(Vec::len).sum::<usize>() == 2,
        "found {deletes:?}"
    );
    let mut delete_files = Vec::new();
    for (i, list) in deletes.into_values().enumerate() {
        delete_files.push(
            write_position_deletes(
                table.file_io(),
                &format!("{location}/data/tamper-delete-{i}.parquet"),
                list,
                Struct::empty(),
                0,
            )
            .await?,
        );
    }
    let data = write_rows(
        &table,
        &format!("{location}/data/tamper-data.parquet"),
        &[(change.0, change.1.to_string()), (add.0, add.1.to_string())],
    )
    .await?;
    let pointer = Arc::new(SqlMetadataPointer::connect(&config).await?);
    let committer = Committer::new(catalog, pointer);
    let delta = RowDelta {
        data_files: vec![data],
        delete_files,
        properties: BTreeMap::from([(summary::CHANGELOG_OFFSETS.to_string(), offsets)]),
        commit_id: "verify-test-tamper".into(),
        ..RowDelta::default()
    };
    Ok(committer.commit_row_delta(&name, &delta).await?.snapshot_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_clean_snapshots_and_finds_injected_differences() -> Result<()> {
    let mut service = tokio::task::spawn_blocking(|| {
        Service::start(&[
            "--commit-interval",
            "100ms",
            "--compaction-interval",
            "0",
            "--no-index-checkpoints",
        ])
    })
    .await??;
    let cli = |service: &Service, args: &[&str]| service.cli(args);
    cli(
        &service,
        &[
            "table",
            "create",
            TABLE,
            "--column",
            "id:int64!",
            "--column",
            "v:string",
            "--primary-key",
            "id",
            "--buckets",
            "3",
        ],
    )?
    .ok()?;
    // Nothing committed yet: nothing to verify.
    let out = cli(&service, &["verify", TABLE])?.ok()?;
    ensure!(
        out == "ops.kv has no snapshot yet: nothing to verify\n",
        "{out}"
    );

    // 20 rows, then 5 of them changed and 2 deleted: 18 rows from 27 changelog records.
    let dir = service.dir();
    let file = |name: &str, text: String| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let first = file(
        "first.jsonl",
        (0..20)
            .map(|i| format!("{{\"id\":{i},\"v\":\"a{i}\"}}\n"))
            .collect(),
    )?;
    let out = cli(
        &service,
        &["write", TABLE, "--file", &first, "--wait", "snapshot"],
    )?
    .ok()?;
    let first_snapshot = committed_snapshot(&out)?;
    let second = file(
        "second.jsonl",
        (0..5)
            .map(|i| format!("{{\"id\":{i},\"v\":\"b{i}\"}}\n"))
            .collect(),
    )?;
    cli(&service, &["write", TABLE, "--file", &second])?.ok()?;
    let gone = file("gone.jsonl", "{\"id\":18}\n{\"id\":19}\n".into())?;
    let out = cli(
        &service,
        &[
            "write", TABLE, "--file", &gone, "--op", "delete", "--wait", "snapshot",
        ],
    )?
    .ok()?;
    let clean_snapshot = committed_snapshot(&out)?;

    let out = cli(&service, &["verify", TABLE])?;
    ensure!(out.code() == Some(0), "{out:?}");
    let header = format!("ops.kv snapshot {clean_snapshot} (changelog offsets ");
    ensure!(out.stdout.starts_with(&header), "{}", out.stdout);
    ensure!(
        out.stdout.ends_with(
            "): 18 rows in the snapshot, 18 rows from replaying 27 changelog records\n\
             ok: the snapshot matches the changelog\n"
        ),
        "{}",
        out.stdout
    );
    // The first snapshot: the 20 rows of the first write only.
    let first_id = first_snapshot.to_string();
    let out = cli(&service, &["verify", TABLE, "--snapshot", &first_id])?;
    ensure!(out.code() == Some(0), "{out:?}");
    ensure!(
        out.stdout
            .contains("20 rows in the snapshot, 20 rows from replaying 20 changelog records"),
        "{}",
        out.stdout
    );

    // An append-only table: rows compared as a multiset (a duplicate row included).
    cli(
        &service,
        &[
            "table", "create", "ops.log", "--column", "v:string", "--column", "n:int64",
        ],
    )?
    .ok()?;
    let log_rows = file(
        "log.jsonl",
        "{\"v\":\"x\",\"n\":1}\n{\"v\":\"x\",\"n\":1}\n{\"v\":\"y\"}\n".into(),
    )?;
    cli(
        &service,
        &[
            "write", "ops.log", "--file", &log_rows, "--op", "insert", "--wait", "snapshot",
        ],
    )?
    .ok()?;
    let out = cli(&service, &["verify", "ops.log"])?;
    ensure!(out.code() == Some(0), "{out:?}");
    ensure!(
        out.stdout
            .contains("3 rows in the snapshot, 3 rows from replaying 3 changelog records"),
        "{}",
        out.stdout
    );

    // Behind the server's back: id 3 removed, id 7 changed, id 100 added.
    ensure!(service.stop()?.success(), "the server did not stop cleanly");
    let tampered = tamper(&service.data_dir(), 3, (7, "WRONG"), (100, "ghost")).await?;
    tokio::task::block_in_place(|| service.restart())?;

    let out = cli(&service, &["verify", TABLE])?;
    ensure!(out.code() == Some(1), "{out:?}");
    let expected = "): 18 rows in the snapshot, 18 rows from replaying 27 changelog records\n\
         DIFFERENT: 1 missing (in the changelog, not in the snapshot), 1 extra (in the snapshot, \
         not in the changelog), 1 wrong (different values)\n  \
         missing [3]: {\"id\":3,\"v\":\"b3\"}\n  \
         extra [100]: {\"id\":100,\"v\":\"ghost\"}\n  \
         wrong [7]: changelog {\"id\":7,\"v\":\"a7\"}, snapshot {\"id\":7,\"v\":\"WRONG\"}\n";
    ensure!(
        out.stdout
            .starts_with(&format!("ops.kv snapshot {tampered} (changelog offsets "))
            && out.stdout.ends_with(expected),
        "{}",
        out.stdout
    );
    // The snapshot before the tampering still verifies.
    let clean_id = clean_snapshot.to_string();
    let out = cli(&service, &["verify", TABLE, "--snapshot", &clean_id])?;
    ensure!(out.code() == Some(0), "{out:?}");
    // A snapshot that does not exist is an error, not a pass.
    let out = cli(&service, &["verify", TABLE, "--snapshot", "12345"])?;
    ensure!(out.code() == Some(1) && out.stdout.is_empty(), "{out:?}");
    Ok(())
}
