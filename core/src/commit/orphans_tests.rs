//! Orphan removal: unreferenced old files go, referenced files and files of commits in flight
//! (younger than the safety age) stay.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::clock::{ManualClock, SystemClock};
use crate::commit::tests::{data_file, delete_file, fixture, scan_at};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn local(location: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(canonical(location))
}

#[tokio::test]
async fn old_unreferenced_files_go_and_everything_referenced_stays() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;
    // Keep one previous metadata file in the log: older ones become orphans.
    f.committer
        .commit_properties(
            &f.name,
            None,
            BTreeMap::from([(
                "write.metadata.previous-versions-max".to_string(),
                "1".to_string(),
            )]),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    let b = data_file(&f, &[(3, "c")]).await;
    let d = delete_file(&f, &[(&a, 0)]).await;
    let c2 = f.commit(vec![b], vec![d], "c2").await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let location = table.metadata().location().to_string();
    let io = table.file_io().clone();
    // Strays: a data file nobody committed, a manifest of a lost attempt.
    let strays = [
        format!("{location}/data/stray.parquet"),
        format!("{location}/metadata/stray-m0.avro"),
    ];
    // unitable's own files beside the table (a key-index checkpoint) are never orphans.
    let own = format!(
        "{}/00000000000000000002-x.parquet",
        crate::naming::paths::index_checkpoint_dir(&location)
    );
    for s in strays.iter().chain([&own]) {
        io.new_output(s)
            .unwrap()
            .write(bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    // Metadata files that fell out of the log.
    let current = canonical(table.metadata_location().unwrap());
    let logged: BTreeSet<String> = table
        .metadata()
        .metadata_log()
        .iter()
        .map(|l| canonical(&l.metadata_file))
        .collect();
    assert_eq!(logged.len(), 1);
    let mut expected: BTreeSet<String> = std::fs::read_dir(local(&format!("{location}/metadata")))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".metadata.json") && *p != current && !logged.contains(p))
        .collect();
    assert_eq!(expected.len(), 2, "versions 0 and 1 fell out of the log");
    expected.extend(strays.iter().map(|s| canonical(s)));
    let rows = scan_at(&f, None).await;

    // With the real clock everything is young: nothing goes.
    let young = remove_orphan_files(
        &f.catalog,
        &f.name,
        &RemoveOrphanFiles::default(),
        &SystemClock,
    )
    .await
    .unwrap();
    assert!(young.removed.is_empty());
    let young_set: BTreeSet<String> = young.kept_young.iter().map(|p| canonical(p)).collect();
    assert_eq!(young_set, expected);

    // Four days later: a dry run reports exactly the orphans, a real run removes them.
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 4 * DAY_MS);
    let request = RemoveOrphanFiles {
        dry_run: true,
        ..RemoveOrphanFiles::default()
    };
    let dry = remove_orphan_files(&f.catalog, &f.name, &request, &clock)
        .await
        .unwrap();
    let dry_set: BTreeSet<String> = dry.removed.iter().map(|p| canonical(p)).collect();
    assert_eq!(dry_set, expected);
    for p in &expected {
        assert!(std::path::Path::new(p).exists(), "dry run removed {p}");
    }
    let done = remove_orphan_files(
        &f.catalog,
        &f.name,
        &RemoveOrphanFiles {
            dry_run: false,
            ..request
        },
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(done.removed, dry.removed);
    assert!(done.undeleted.is_empty() && done.kept_young.is_empty());
    for p in &expected {
        assert!(!std::path::Path::new(p).exists(), "{p} survived");
    }
    assert!(local(&own).exists(), "orphan removal deleted {own}");
    // The table still loads and every snapshot reads as before.
    assert_eq!(scan_at(&f, None).await, rows);
    assert_eq!(
        scan_at(&f, Some(c1.snapshot_id)).await,
        crate::commit::tests::expect(&[(1, "a"), (2, "b")])
    );
    assert_eq!(scan_at(&f, Some(c2.snapshot_id)).await, rows);
}

#[tokio::test]
async fn a_commit_in_flight_keeps_its_files_while_younger_than_the_safety_age() {
    let dir = tempfile::tempdir().unwrap();
    let f = std::sync::Arc::new(fixture(dir.path()).await);
    let a = data_file(&f, &[(1, "a")]).await;
    f.commit(vec![a], vec![], "c1").await;

    // A slow commit: its data file is written now, referenced only 500 ms later.
    let in_flight = data_file(&f, &[(2, "b")]).await;
    let path = in_flight.file_path().to_string();
    let committer = {
        let f = f.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            f.commit(vec![in_flight], vec![], "c2").await
        })
    };
    // Orphan removal runs repeatedly meanwhile, with a safety age (5 s) above the commit's
    // duration: the file is unreferenced but young, so it is kept every time.
    let request = RemoveOrphanFiles {
        older_than: Duration::from_secs(5),
        dry_run: false,
    };
    let mut saw_it_young = false;
    while !committer.is_finished() {
        let report = remove_orphan_files(&f.catalog, &f.name, &request, &SystemClock)
            .await
            .unwrap();
        assert!(!report.removed.contains(&path), "removed an in-flight file");
        saw_it_young |= report.kept_young.contains(&path);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    committer.await.unwrap();
    assert!(
        saw_it_young,
        "the in-flight file was never seen unreferenced"
    );
    assert_eq!(
        scan_at(&f, None).await,
        crate::commit::tests::expect(&[(1, "a"), (2, "b")])
    );

    // Why the age must exceed the commit duration: with a zero age, a file of a commit that
    // has not landed yet is an orphan candidate (dry run, so nothing is harmed).
    let pending = data_file(&f, &[(3, "c")]).await;
    let zero = RemoveOrphanFiles {
        older_than: Duration::ZERO,
        dry_run: true,
    };
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 1);
    let report = remove_orphan_files(&f.catalog, &f.name, &zero, &clock)
        .await
        .unwrap();
    assert!(report.removed.contains(&pending.file_path().to_string()));
    // Once committed, it is referenced, whatever its age.
    f.commit(vec![pending.clone()], vec![], "c3").await;
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis() + 1);
    let report = remove_orphan_files(&f.catalog, &f.name, &zero, &clock)
        .await
        .unwrap();
    assert!(!report.removed.contains(&pending.file_path().to_string()));
}
