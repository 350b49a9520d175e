//! Expiration: files unique to expired snapshots are gone, every file a retained snapshot reads
//! still exists, retained snapshots scan as before.

use std::collections::BTreeSet;

use super::expire::ExpireSnapshots;
use super::plan::{manifests_of, snapshot_entries};
use super::rewrite_tests::compact;
use super::tests::{Fixture, data_file, delete_file, delta, fixture, scan_at};

/// Every file a snapshot of the current metadata reads: manifest lists, manifests, live files.
async fn files_read_by_retained(f: &Fixture) -> BTreeSet<String> {
    let table = f.catalog.load(&f.name).await.unwrap();
    let (io, m) = (table.file_io(), table.metadata());
    let mut out = BTreeSet::new();
    for s in m.snapshots() {
        out.insert(s.manifest_list().to_string());
        for manifest in manifests_of(io, m, s).await.unwrap() {
            out.insert(manifest.manifest_path.clone());
        }
        for e in snapshot_entries(io, m, Some(s.snapshot_id()))
            .await
            .unwrap()
        {
            if e.is_live() {
                out.insert(e.data_file.file_path().to_string());
            }
        }
    }
    out
}

async fn exists(f: &Fixture, path: &str) -> bool {
    let table = f.catalog.load(&f.name).await.unwrap();
    table.file_io().exists(path).await.unwrap()
}

#[tokio::test]
async fn expiring_removes_only_what_expired_snapshots_alone_reached() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b")]).await;
    let c1 = f.commit(vec![a.clone()], vec![], "c1").await;
    let b = data_file(&f, &[(3, "c")]).await;
    let d = delete_file(&f, &[(&a, 0)]).await;
    let c2 = f.commit(vec![b.clone()], vec![d.clone()], "c2").await;
    let rewrite = compact(&f, &[a.file_path(), b.file_path()], c2.snapshot_id, "r").await;
    let new = rewrite.added_data_files[0].clone();
    let c3 = f.committer.commit_rewrite(&f.name, &rewrite).await.unwrap();
    let c = data_file(&f, &[(4, "d")]).await;
    let c4 = f.commit(vec![c.clone()], vec![], "c4").await;
    let current_rows = scan_at(&f, None).await;
    let table = f.catalog.load(&f.name).await.unwrap();
    let lists: Vec<String> = [&c1, &c2, &c3]
        .iter()
        .map(|c| {
            table
                .metadata()
                .snapshot_by_id(c.snapshot_id)
                .unwrap()
                .manifest_list()
                .to_string()
        })
        .collect();

    // Keep the newest two snapshots by count; the age limit lets everything else go.
    let request = ExpireSnapshots {
        older_than_ms: i64::MAX,
        retain_last: 2,
        dry_run: true,
    };
    let dry = f
        .committer
        .expire_snapshots(&f.name, &request)
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.expired_snapshot_ids, {
        let mut v = vec![c1.snapshot_id, c2.snapshot_id];
        v.sort();
        v
    });
    for p in &dry.deleted_files {
        assert!(exists(&f, p).await, "dry run deleted {p}");
    }
    assert_eq!(
        f.catalog
            .load(&f.name)
            .await
            .unwrap()
            .metadata()
            .snapshots()
            .count(),
        4
    );

    let report = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                dry_run: false,
                ..request
            },
        )
        .await
        .unwrap();
    assert_eq!(report.expired_snapshot_ids, dry.expired_snapshot_ids);
    assert_eq!(report.deleted_files, dry.deleted_files);
    assert!(report.undeleted_files.is_empty());
    let deleted: BTreeSet<&str> = report.deleted_files.iter().map(String::as_str).collect();
    // The replaced data files, the applied delete file and the expired manifest lists go ...
    for p in [
        a.file_path(),
        b.file_path(),
        d.file_path(),
        &lists[0],
        &lists[1],
    ] {
        assert!(deleted.contains(p), "{p} not deleted: {deleted:?}");
        assert!(!exists(&f, p).await, "{p} still exists");
    }
    // ... what retained snapshots read stays.
    for p in [new.file_path(), c.file_path(), &lists[2]] {
        assert!(!deleted.contains(p));
    }
    for p in files_read_by_retained(&f).await {
        assert!(exists(&f, &p).await, "retained snapshot reads deleted {p}");
        assert!(!deleted.contains(p.as_str()));
    }
    let table = f.catalog.load(&f.name).await.unwrap();
    let ids: BTreeSet<i64> = table
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    assert_eq!(ids, BTreeSet::from([c3.snapshot_id, c4.snapshot_id]));
    assert_eq!(scan_at(&f, None).await, current_rows);
    assert_eq!(
        scan_at(&f, Some(c3.snapshot_id)).await,
        super::tests::expect(&[(2, "b"), (3, "c")])
    );

    // Nothing left to expire: a no-op.
    let again = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                dry_run: false,
                ..request
            },
        )
        .await
        .unwrap();
    assert!(again.expired_snapshot_ids.is_empty() && again.deleted_files.is_empty());
}

#[tokio::test]
async fn the_age_limit_and_retain_last_both_protect_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let mut commits = Vec::new();
    for i in 0..4 {
        let file = data_file(&f, &[(i, "v")]).await;
        commits.push(f.commit(vec![file], vec![], &format!("c{i}")).await);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let table = f.catalog.load(&f.name).await.unwrap();
    let ts = |i: usize| {
        table
            .metadata()
            .snapshot_by_id(commits[i].snapshot_id)
            .unwrap()
            .timestamp_ms()
    };
    // Older than c2: c0 and c1 qualify by age; retain_last = 3 keeps c1 too.
    let report = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                older_than_ms: ts(2),
                retain_last: 3,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.expired_snapshot_ids, vec![commits[0].snapshot_id]);
    // c0's data file and manifest are carried by every later snapshot: only its list goes.
    let list0 = table
        .metadata()
        .snapshot_by_id(commits[0].snapshot_id)
        .unwrap()
        .manifest_list()
        .to_string();
    assert_eq!(report.deleted_files, vec![list0]);
    assert_eq!(scan_at(&f, None).await.len(), 4);
    // retain_last = 0 still keeps the current snapshot.
    let report = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                older_than_ms: i64::MAX,
                retain_last: 0,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.expired_snapshot_ids.len(), 2);
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(
        table.metadata().current_snapshot_id(),
        Some(commits[3].snapshot_id)
    );
    assert_eq!(table.metadata().snapshots().count(), 1);
    assert_eq!(scan_at(&f, None).await.len(), 4);
}

#[tokio::test]
async fn the_newest_snapshot_with_changelog_offsets_is_never_expired() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a")]).await;
    let mut anchored = delta(vec![a], vec![], "anchored");
    anchored.properties.insert(
        crate::naming::summary::CHANGELOG_OFFSETS.to_string(),
        "0:7".to_string(),
    );
    let c1 = f
        .committer
        .commit_row_delta(&f.name, &anchored)
        .await
        .unwrap();
    // Two later commits by "another engine": no offsets in their summaries.
    let mut ids = vec![c1.snapshot_id];
    for name in ["other-1", "other-2"] {
        let file = data_file(&f, &[(2, name)]).await;
        let c = f.commit(vec![file], vec![], name).await;
        ids.push(c.snapshot_id);
    }
    let report = f
        .committer
        .expire_snapshots(
            &f.name,
            &ExpireSnapshots {
                older_than_ms: i64::MAX,
                retain_last: 1,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert!(report.expired_snapshot_ids.is_empty(), "{report:?}");
    let table = f.catalog.load(&f.name).await.unwrap();
    let m = table.metadata();
    let chain = crate::commit::read::ancestors(m, ids[2]);
    assert_eq!(
        chain.len(),
        3,
        "the walk from the head reaches the anchored snapshot"
    );
    assert_eq!(
        chain
            .iter()
            .find_map(crate::commit::read::changelog_offsets)
            .map(|o| o.to_string()),
        Some("0:7".to_string())
    );
}
