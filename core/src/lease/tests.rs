use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{LeaseStore, assign, assign_settling};
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

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// An assignment as the lease holders it leads to.
fn held(assignment: &BTreeMap<&str, String>) -> BTreeMap<String, String> {
    assignment
        .iter()
        .map(|(t, n)| (t.to_string(), n.clone()))
        .collect()
}

fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<&str, String>) -> usize {
    after
        .iter()
        .filter(|(t, n)| before.get(**t) != Some(*n))
        .count()
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
    let before = assign(&tables, &three, &none());
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
    assert_eq!(assign(&tables_rev, &shuffled, &none()), before);

    let four = names("node-", 4);
    let after = assign(&tables, &four, &none());
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
    let shrunk = assign(&tables, &two, &none());
    assert!(loads(&shrunk).values().all(|&n| n == 15));
    assert!(assign(&tables, &[], &none()).is_empty());
    assert_eq!(assign(&[], &three, &none()).len(), 0);
}

#[test]
fn with_holders_a_join_takes_only_its_share_and_a_leave_moves_only_its_tables() {
    let tables = names("ns.table_", 30);
    let three = names("node-", 3);
    let holders = held(&assign(&tables, &three, &none()));

    // node-3 joins: quotas 8, 8, 7, 7, so exactly 2 + 2 + 3 tables move, all to node-3.
    let four = names("node-", 4);
    let after = assign(&tables, &four, &holders);
    assert!(loads(&after).values().all(|&n| (7..=8).contains(&n)));
    assert_eq!(moved(&holders, &after), 7);
    assert!(
        after
            .iter()
            .filter(|(t, n)| holders[**t] != **n)
            .all(|(_, n)| n == "node-3")
    );

    // node-1 leaves: only its 10 tables move.
    let two = vec!["node-0".to_string(), "node-2".to_string()];
    let shrunk = assign(&tables, &two, &holders);
    assert!(loads(&shrunk).values().all(|&n| n == 15));
    assert_eq!(moved(&holders, &shrunk), 10);
    assert!(
        shrunk
            .iter()
            .filter(|(t, n)| holders[**t] != **n)
            .all(|(t, _)| holders[*t] == "node-1")
    );
}

#[test]
fn with_holders_the_assignment_is_even_and_moves_the_fewest_tables() {
    // Random holder maps, some holders dead, some tables free: loads differ by at most one,
    // every table has an owner, the answer does not depend on input order, and the number of
    // tables taken from a live holder is the least that evens the loads out.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for _ in 0..500 {
        let tables = names("ns.t", 1 + next(40) as usize);
        let nodes = names("node-", 1 + next(6) as usize);
        let mut holders = BTreeMap::new();
        for t in &tables {
            match next(4) {
                0 => {}
                1 => {
                    holders.insert(t.clone(), "node-dead".to_string());
                }
                _ => {
                    holders.insert(t.clone(), format!("node-{}", next(nodes.len() as u64)));
                }
            }
        }
        let got = assign(&tables, &nodes, &holders);
        assert_eq!(got.len(), tables.len());
        let l = loads(&got);
        let (min, max) = (
            nodes
                .iter()
                .map(|n| l.get(n).copied().unwrap_or(0))
                .min()
                .unwrap(),
            nodes
                .iter()
                .map(|n| l.get(n).copied().unwrap_or(0))
                .max()
                .unwrap(),
        );
        assert!(max - min <= 1, "{l:?}");
        let mut reversed = tables.clone();
        reversed.reverse();
        let mut nodes_reversed = nodes.clone();
        nodes_reversed.reverse();
        assert_eq!(assign(&reversed, &nodes_reversed, &holders), got);

        // The fewest moves: every live holder keeps min(held, its quota) tables, and quotas
        // of floor + 1 go to the nodes holding the most.
        let floor = tables.len() / nodes.len();
        let mut counts: Vec<usize> = nodes
            .iter()
            .map(|n| holders.values().filter(|h| *h == n).count())
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let extra = tables.len() % nodes.len();
        let least: usize = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(floor + usize::from(i < extra)))
            .sum();
        let taken = got
            .iter()
            .filter(|(t, n)| {
                holders
                    .get(**t)
                    .is_some_and(|h| nodes.contains(h) && h != *n)
            })
            .count();
        assert_eq!(taken, least, "holders {holders:?} -> {got:?}");
    }
}

#[test]
fn a_young_node_takes_free_tables_but_no_held_ones_until_it_settles() {
    let tables = names("ns.table_", 30);
    let three = names("node-", 3);
    let holders = held(&assign(&tables, &three, &none()));
    let four = names("node-", 4);
    let young = BTreeSet::from(["node-3".to_string()]);

    // node-3 just joined: nothing moves.
    let joined = assign_settling(&tables, &four, &holders, &young);
    assert_eq!(moved(&holders, &joined), 0);
    assert!(!joined.values().any(|n| n == "node-3"));

    // node-1 died at the same time: its 10 tables are free; the young node-3 takes its
    // quota of them (7 or 8) and the rest go to the other two.
    let without_1: BTreeMap<String, String> = holders
        .iter()
        .filter(|(_, n)| *n != "node-1")
        .map(|(t, n)| (t.clone(), n.clone()))
        .collect();
    let live = vec![
        "node-0".to_string(),
        "node-2".to_string(),
        "node-3".to_string(),
    ];
    let failed_over = assign_settling(&tables, &live, &without_1, &young);
    assert_eq!(failed_over.len(), 30);
    assert!(loads(&failed_over).values().all(|&n| n == 10));
    assert!(
        failed_over
            .iter()
            .filter(|(t, _)| without_1.contains_key(**t))
            .all(|(t, n)| without_1[*t] == *n),
        "held tables stay put"
    );

    // Once settled, node-3 takes its share: the fewest moves (7).
    let settled = assign_settling(&tables, &four, &holders, &BTreeSet::new());
    assert_eq!(settled, assign(&tables, &four, &holders));
    assert_eq!(moved(&holders, &settled), 7);
}
