use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Fenced, GroupKey, GroupState, GroupStore, Heartbeat, assign_partitions};
use crate::catalog::CatalogConfig;

async fn store(dir: &std::path::Path) -> GroupStore {
    GroupStore::connect(&CatalogConfig::embedded(dir))
        .await
        .expect("connect")
        .expect("a SQLite catalog has a group store")
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("member-{i}")).collect()
}

/// The model of an assignment: every partition exactly once, loads within one of each other.
fn check_assignment(partitions: u32, members: &[String], got: &BTreeMap<String, Vec<u32>>) {
    let keys: BTreeSet<&String> = got.keys().collect();
    assert_eq!(
        keys,
        members.iter().collect(),
        "every member is listed once"
    );
    let mut seen = BTreeSet::new();
    for list in got.values() {
        for p in list {
            assert!(seen.insert(*p), "partition {p} assigned twice: {got:?}");
        }
    }
    assert_eq!(seen, (0..partitions).collect(), "union is every partition");
    let loads: Vec<usize> = got.values().map(Vec::len).collect();
    if let (Some(min), Some(max)) = (loads.iter().min(), loads.iter().max()) {
        assert!(max - min <= 1, "uneven: {got:?}");
    }
}

#[test]
fn assignment_is_a_partition_of_the_partitions_and_moves_little() {
    for partitions in [0u32, 1, 3, 4, 8, 16, 33] {
        for n in 1..=6 {
            let members = names(n);
            let got = assign_partitions(partitions, &members);
            check_assignment(partitions, &members, &got);
            // Every node computes the same answer, whatever order it lists the members in.
            let mut reversed = members.clone();
            reversed.reverse();
            assert_eq!(assign_partitions(partitions, &reversed), got);
        }
    }
    assert!(assign_partitions(8, &[]).is_empty());
    // A third member joining two takes about its third; most partitions stay put.
    let before = assign_partitions(30, &names(2));
    let after = assign_partitions(30, &names(3));
    let owner = |a: &BTreeMap<String, Vec<u32>>, p: u32| {
        a.iter()
            .find(|(_, l)| l.contains(&p))
            .map(|(m, _)| m.clone())
    };
    let moved = (0..30)
        .filter(|p| owner(&before, *p) != owner(&after, *p))
        .count();
    assert!(moved <= 15, "{moved} of 30 partitions moved");
}

#[tokio::test]
async fn generations_fence_commits_and_partitions_wait_for_their_previous_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path()).await;
    // A second connection, as a second serve node would have.
    let other = store(dir.path()).await;
    let key = GroupKey {
        table_uuid: "uuid-1".into(),
        group: "billing".into(),
    };
    let ttl = Duration::from_secs(60);
    let members = |n: &[&str]| n.iter().map(|m| m.to_string()).collect::<Vec<_>>();

    // a joins alone: everything is a's, nothing contended.
    let a1 = s
        .join(&key, "ns.t", "a", "sa1", "node-1", ttl, 4)
        .await
        .unwrap();
    assert_eq!(a1.partitions, vec![0, 1, 2, 3]);
    assert_eq!(a1.members, ["a"]);
    assert!(
        s.commit(&key, "a", a1.generation, 0, 10)
            .await
            .unwrap()
            .is_ok()
    );

    // b joins on another node: a new generation; b's share is the model's, and what a still
    // lists (a has not synced yet) is contended.
    let b2 = other
        .join(&key, "ns.t", "b", "sb1", "node-2", ttl, 4)
        .await
        .unwrap();
    assert!(b2.generation > a1.generation);
    let model = assign_partitions(4, &members(&["a", "b"]));
    assert_eq!(b2.partitions, model["b"]);
    let contended: Vec<u32> = other
        .contended(&key, "b", &b2.partitions)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, owner)| {
            assert_eq!(owner, "a");
            p
        })
        .collect();
    assert_eq!(contended, b2.partitions, "a still lists all of them");

    // a, not synced yet, may still commit what it was sent of a partition moving to b.
    let moving = b2.partitions[0];
    assert!(
        s.commit(&key, "a", a1.generation, moving, 20)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        s.heartbeat(&key, "a", "sa1", a1.generation, ttl)
            .await
            .unwrap(),
        Heartbeat::Rebalanced(b2.generation)
    );
    // b may not commit at a generation it was never given.
    assert_eq!(
        other
            .commit(&key, "b", b2.generation + 5, moving, 1)
            .await
            .unwrap(),
        Err(Fenced::Generation {
            member: b2.generation,
            group: b2.generation
        })
    );

    // a syncs: its share of the model, and b's partitions are free.
    let a2 = s
        .join(&key, "ns.t", "a", "sa1", "node-1", ttl, 4)
        .await
        .unwrap();
    assert_eq!(
        a2.generation, b2.generation,
        "a re-join is not a new member"
    );
    assert_eq!(a2.partitions, model["a"]);
    assert!(
        other
            .contended(&key, "b", &b2.partitions)
            .await
            .unwrap()
            .is_empty()
    );
    // The old generation is over for a: its late commit is fenced, the position stays.
    assert_eq!(
        s.commit(&key, "a", a1.generation, moving, 99)
            .await
            .unwrap(),
        Err(Fenced::Generation {
            member: a2.generation,
            group: a2.generation
        })
    );
    // A partition of b's is not a's to commit.
    assert_eq!(
        s.commit(&key, "a", a2.generation, moving, 99)
            .await
            .unwrap(),
        Err(Fenced::NotAssigned {
            assigned: a2.partitions.clone()
        })
    );
    assert!(
        other
            .commit(&key, "b", b2.generation, moving, 30)
            .await
            .unwrap()
            .is_ok()
    );
    let committed = s.committed(&key).await.unwrap();
    let positions: BTreeMap<u32, i64> =
        committed.iter().map(|(p, c)| (*p, c.next_offset)).collect();
    let mut expected = BTreeMap::from([(0, 10), (moving, 30)]);
    if moving == 0 {
        expected = BTreeMap::from([(0, 30)]);
    }
    assert_eq!(positions, expected);
    assert_eq!(committed[&moving].member, "b");

    // b's stream ends: a new generation, and b can no longer commit.
    other.leave(&key, "b", "sb1").await.unwrap();
    assert!(matches!(
        s.heartbeat(&key, "a", "sa1", a2.generation, ttl)
            .await
            .unwrap(),
        Heartbeat::Rebalanced(g) if g > a2.generation
    ));
    assert_eq!(
        other
            .commit(&key, "b", b2.generation, moving, 40)
            .await
            .unwrap(),
        Err(Fenced::NotAMember)
    );
    let a3 = s
        .join(&key, "ns.t", "a", "sa1", "node-1", ttl, 4)
        .await
        .unwrap();
    assert_eq!(a3.partitions, vec![0, 1, 2, 3]);

    // A member whose node stops renewing it expires; the next heartbeat starts a new
    // generation without it.
    let c = other
        .join(
            &key,
            "ns.t",
            "c",
            "sc1",
            "node-2",
            Duration::from_millis(300),
            4,
        )
        .await
        .unwrap();
    assert_eq!(c.members, ["a", "c"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Heartbeat::Rebalanced(g) = s
        .heartbeat(&key, "a", "sa1", a3.generation, ttl)
        .await
        .unwrap()
    else {
        panic!("c joined: a must rebalance");
    };
    assert!(g > c.generation, "c's expiry started another generation");
    let a4 = s
        .join(&key, "ns.t", "a", "sa1", "node-1", ttl, 4)
        .await
        .unwrap();
    assert_eq!(a4.members, ["a"]);

    // A newer connection with the same member id takes the row over; the older one is gone.
    let a5 = other
        .join(&key, "ns.t", "a", "sa2", "node-2", ttl, 4)
        .await
        .unwrap();
    assert_eq!(a5.generation, a4.generation);
    assert_eq!(
        s.heartbeat(&key, "a", "sa1", a4.generation, ttl)
            .await
            .unwrap(),
        Heartbeat::Gone
    );
    // Leaving with the stale session removes nothing.
    s.leave(&key, "a", "sa1").await.unwrap();
    assert_eq!(s.members(&key).await.unwrap().len(), 1);

    let groups = s.groups(Some("uuid-1")).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].table_name, "ns.t");
    assert!(s.groups(Some("uuid-2")).await.unwrap().is_empty());
}

/// The model's check of a group view: when every listed member has synced to the view's
/// generation (the group looks settled), their partitions are every partition, each once.
fn check_settled_view(partitions: u32, state: &GroupState) {
    if state.members.is_empty()
        || state
            .members
            .iter()
            .any(|m| m.generation != state.generation)
    {
        return;
    }
    let mut seen = BTreeSet::new();
    for m in &state.members {
        for p in &m.partitions {
            assert!(seen.insert(*p), "partition {p} listed twice: {state:?}");
        }
    }
    assert_eq!(
        seen,
        (0..partitions).collect(),
        "a settled view leaves partitions to nobody: {state:?}"
    );
}

/// The race of the two-node test: a member joined and synced, then its stream was cancelled
/// before it started (no leave) and its node stopped renewing it. Once its row expires, and
/// before any heartbeat sweeps it, a description must not show the others settled at the
/// generation whose assignment still gave the expired member its partitions.
#[tokio::test]
async fn an_expired_member_is_not_hidden_at_the_generation_that_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path()).await;
    let key = GroupKey {
        table_uuid: "uuid-1".into(),
        group: "billing".into(),
    };
    let long = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    s.join(&key, "ns.t", "a", "sa", "node-1", long, 6)
        .await
        .unwrap();
    s.join(&key, "ns.t", "b", "sb", "node-2", short, 6)
        .await
        .unwrap();
    s.join(&key, "ns.t", "c", "sc", "node-1", long, 6)
        .await
        .unwrap();
    // a and b reconnect after the rebalances: everyone is at the group's generation.
    s.join(&key, "ns.t", "a", "sa", "node-1", long, 6)
        .await
        .unwrap();
    s.join(&key, "ns.t", "b", "sb", "node-2", short, 6)
        .await
        .unwrap();
    let settled = s.state(&key).await.unwrap().expect("the group exists");
    assert_eq!(
        settled
            .members
            .iter()
            .map(|m| (m.member.as_str(), m.generation))
            .collect::<Vec<_>>(),
        [
            ("a", settled.generation),
            ("b", settled.generation),
            ("c", settled.generation)
        ]
    );
    check_settled_view(6, &settled);

    // b's node stops renewing it; nobody heartbeats before the description.
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    let view = s.state(&key).await.unwrap().expect("the group exists");
    check_settled_view(6, &view);
    let listed: Vec<&str> = view.members.iter().map(|m| m.member.as_str()).collect();
    if listed.contains(&"b") {
        assert_eq!(view.generation, settled.generation, "{view:?}");
    } else {
        assert!(
            view.generation > settled.generation,
            "b is gone but the generation that counted it is shown: {view:?}"
        );
    }

    // a and c sync to the generation without b: settled on all six partitions.
    s.join(&key, "ns.t", "a", "sa", "node-1", long, 6)
        .await
        .unwrap();
    s.join(&key, "ns.t", "c", "sc", "node-1", long, 6)
        .await
        .unwrap();
    let after = s.state(&key).await.unwrap().expect("the group exists");
    assert_eq!(
        after
            .members
            .iter()
            .map(|m| (m.member.as_str(), m.generation))
            .collect::<Vec<_>>(),
        [("a", after.generation), ("c", after.generation)]
    );
    check_settled_view(6, &after);
}
