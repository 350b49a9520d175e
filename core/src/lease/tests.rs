use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{LeaseStore, assign};
use crate::catalog::CatalogConfig;
use crate::naming::TableName;

async fn store(dir: &std::path::Path) -> LeaseStore {
    LeaseStore::connect(&CatalogConfig::embedded(dir))
        .await
        .expect("connect")
        .expect("a SQLite catalog has a lease store")
}

fn table(name: &str) -> TableName {
    name.parse().expect("table name")
}

#[tokio::test]
async fn one_holder_at_a_time_and_expiry_frees_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = store(dir.path()).await;
    // A second connection, as a second process would have.
    let b = store(dir.path()).await;
    let t = table("ns.t");
    let long = Duration::from_secs(60);
    assert!(a.acquire(&t, "node-a", long).await.unwrap());
    assert!(
        !b.acquire(&t, "node-b", long).await.unwrap(),
        "a held lease cannot be taken"
    );
    assert!(
        a.acquire(&t, "node-a", long).await.unwrap(),
        "the holder may take it again"
    );
    assert_eq!(
        b.renew_all("node-b", long).await.unwrap(),
        BTreeSet::new(),
        "renewing holds nothing that was never held"
    );
    assert_eq!(
        a.renew_all("node-a", long).await.unwrap(),
        BTreeSet::from(["ns.t".to_string()])
    );

    // A short lease runs out; then another node may take it, and the old holder's renewal
    // does not bring it back.
    let u = table("ns.u");
    assert!(
        a.acquire(&u, "node-a", Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(!b.acquire(&u, "node-b", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!a.renew_all("node-a", long).await.unwrap().contains("ns.u"));
    assert!(b.acquire(&u, "node-b", long).await.unwrap());
    let holders = a.holders().await.unwrap();
    assert_eq!(holders["ns.u"].owner, "node-b");
    assert_eq!(holders["ns.u"].acquired, 2);
    assert_eq!(holders["ns.t"].owner, "node-a");

    // A release hands it over at once.
    a.release(&t, "node-a").await.unwrap();
    assert!(b.acquire(&t, "node-b", long).await.unwrap());
    // Releasing a lease one does not hold changes nothing.
    a.release(&t, "node-a").await.unwrap();
    assert_eq!(a.holders().await.unwrap()["ns.t"].owner, "node-b");
    b.forget(&t).await.unwrap();
    assert!(!a.holders().await.unwrap().contains_key("ns.t"));
}

#[tokio::test]
async fn membership_expires_and_leaving_is_immediate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path()).await;
    assert_eq!(
        s.heartbeat("b", Duration::from_secs(60)).await.unwrap(),
        ["b"]
    );
    assert_eq!(
        s.heartbeat("a", Duration::from_millis(200)).await.unwrap(),
        ["a", "b"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.heartbeat("c", Duration::from_secs(60)).await.unwrap(),
        ["b", "c"]
    );
    s.leave("b").await.unwrap();
    assert_eq!(
        s.heartbeat("c", Duration::from_secs(60)).await.unwrap(),
        ["c"]
    );
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn loads(assignment: &BTreeMap<&str, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for node in assignment.values() {
        *out.entry(node.clone()).or_default() += 1;
    }
    out
}

#[test]
fn assignment_is_even_and_moves_little_when_a_node_joins() {
    let tables = names("ns.table_", 30);
    let three = names("node-", 3);
    let before = assign(&tables, &three);
    assert_eq!(before.len(), 30, "every table has an owner");
    assert!(
        loads(&before).values().all(|&n| n == 10),
        "{:?}",
        loads(&before)
    );
    // Same inputs in another order: same answer (every node computes it alone).
    let mut shuffled = three.clone();
    shuffled.reverse();
    let mut tables_rev = tables.clone();
    tables_rev.reverse();
    assert_eq!(assign(&tables_rev, &shuffled), before);

    let four = names("node-", 4);
    let after = assign(&tables, &four);
    assert!(
        loads(&after).values().all(|&n| (7..=8).contains(&n)),
        "{:?}",
        loads(&after)
    );
    let moved = tables
        .iter()
        .filter(|t| before[t.as_str()] != after[t.as_str()])
        .count();
    // The joining node takes about a quarter; the rest mostly stay.
    assert!(moved <= 15, "{moved} of 30 tables moved");

    // A node leaving: only its tables and a few for balance move.
    let two: Vec<String> = three.iter().take(2).cloned().collect();
    let shrunk = assign(&tables, &two);
    assert!(loads(&shrunk).values().all(|&n| n == 15));
    assert!(assign(&tables, &[]).is_empty());
    assert_eq!(assign(&[], &three).len(), 0);
}
