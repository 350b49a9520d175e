//! Row-delta validation (deletes against removed data files) and fencing through table
//! properties.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::CommitError;
use super::pointer::SqlMetadataPointer;
use super::row_delta::Committer;
use super::tests::{LosesFirstAnswer, data_file, delete_file, delta, expect, fixture, scan_at};
use crate::catalog::CatalogConfig;

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn deletes_against_a_data_file_that_is_not_live_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let a = data_file(&f, &[(1, "a"), (2, "b")]).await;
    f.commit(vec![a.clone()], vec![], "c1").await;
    // Never committed: a stand-in for a file a rewrite removed (rewrite tests cover the race).
    let ghost = data_file(&f, &[(9, "z")]).await;

    // Named through `deleted_from` (multi-file delete files).
    let d = delete_file(&f, &[(&a, 0)]).await;
    let mut bad = delta(vec![], vec![d.clone()], "c2");
    bad.deleted_from = BTreeSet::from([ghost.file_path().to_string()]);
    let err = f
        .committer
        .commit_row_delta(&f.name, &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommitError::DataFileRemoved { path, .. } if path == ghost.file_path()),
        "{err}"
    );
    assert!(!err.is_retryable());

    // Found through the delete file's referenced_data_file alone.
    let d_ghost = delete_file(&f, &[(&ghost, 0)]).await;
    let err = f
        .committer
        .commit_row_delta(&f.name, &delta(vec![], vec![d_ghost], "c3"))
        .await
        .unwrap_err();
    assert!(matches!(&err, CommitError::DataFileRemoved { .. }), "{err}");

    // Nothing was committed; a valid delete still goes through.
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1);
    let mut ok = delta(vec![], vec![d], "c4");
    ok.deleted_from = BTreeSet::from([a.file_path().to_string()]);
    f.committer.commit_row_delta(&f.name, &ok).await.unwrap();
    assert_eq!(scan_at(&f, None).await, expect(&[(2, "b")]));
}

#[tokio::test]
async fn a_stale_committer_is_fenced_by_the_epoch_property() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let epoch = "unitable.test-epoch";
    // Claim epoch 1 on a table without one: nothing required.
    f.committer
        .commit_properties(
            &f.name,
            Some("claim-1"),
            props(&[(epoch, "1")]),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    let a = data_file(&f, &[(1, "a")]).await;
    let mut d1 = delta(vec![a], vec![], "w1-0");
    d1.required_properties = props(&[(epoch, "1")]);
    f.committer.commit_row_delta(&f.name, &d1).await.unwrap();

    // A second committer takes over: epoch 1 -> 2.
    f.committer
        .commit_properties(
            &f.name,
            Some("claim-2"),
            props(&[(epoch, "2")]),
            props(&[(epoch, "1")]),
        )
        .await
        .unwrap();
    // The first committer is fenced, for row deltas and for claims.
    let b = data_file(&f, &[(2, "b")]).await;
    let mut d2 = delta(vec![b], vec![], "w1-1");
    d2.required_properties = props(&[(epoch, "1")]);
    let err = f
        .committer
        .commit_row_delta(&f.name, &d2)
        .await
        .unwrap_err();
    match &err {
        CommitError::Fenced {
            property,
            expected,
            found,
            ..
        } => {
            assert_eq!(property, epoch);
            assert_eq!(expected, "1");
            assert_eq!(found.as_deref(), Some("2"));
        }
        other => panic!("expected Fenced, got {other}"),
    }
    assert!(!err.is_retryable());
    let err = f
        .committer
        .commit_properties(
            &f.name,
            Some("claim-2b"),
            props(&[(epoch, "2")]),
            props(&[(epoch, "1")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Fenced { .. }), "{err}");
    assert_eq!(scan_at(&f, None).await, expect(&[(1, "a")]));
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(
        table.metadata().properties().get(epoch).map(String::as_str),
        Some("2")
    );
    // A properties commit adds no snapshot.
    assert_eq!(table.metadata().snapshots().count(), 1);
}

#[tokio::test]
async fn a_properties_commit_whose_answer_was_lost_is_found_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path()).await;
    let epoch = "unitable.test-epoch";
    f.committer
        .commit_properties(&f.name, None, props(&[(epoch, "1")]), BTreeMap::new())
        .await
        .unwrap();
    let pointer = LosesFirstAnswer {
        inner: SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path()))
            .await
            .unwrap(),
        lost: AtomicBool::new(false),
    };
    let lossy = Committer::new(f.catalog.clone(), Arc::new(pointer));
    // The swap lands but reports failure; the retry would be fenced (epoch is 2 now, 1 is
    // required) if it did not recognise its own commit id first.
    lossy
        .commit_properties(
            &f.name,
            Some("claim-2"),
            props(&[(epoch, "2")]),
            props(&[(epoch, "1")]),
        )
        .await
        .unwrap();
    let table = f.catalog.load(&f.name).await.unwrap();
    assert_eq!(
        table.metadata().properties().get(epoch).map(String::as_str),
        Some("2")
    );
    // Without a commit id the same situation is reported as fenced: the caller cannot tell.
    let pointer = LosesFirstAnswer {
        inner: SqlMetadataPointer::connect(&CatalogConfig::embedded(dir.path()))
            .await
            .unwrap(),
        lost: AtomicBool::new(false),
    };
    let lossy = Committer::new(f.catalog.clone(), Arc::new(pointer));
    let err = lossy
        .commit_properties(
            &f.name,
            None,
            props(&[(epoch, "3")]),
            props(&[(epoch, "2")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Fenced { .. }), "{err}");
}
