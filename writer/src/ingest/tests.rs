use unitable_core::offsets::Offset;
use unitable_core::record::ChangeOp::{Delete, Upsert};

use super::Plan;

fn plan(changes: &[(unitable_core::record::ChangeOp, &str)]) -> Vec<(String, Vec<i64>)> {
    let mut plan = Plan::default();
    for (i, (op, key)) in changes.iter().enumerate() {
        plan.add(*op, key.to_string(), Offset(i as i64), format!("{key}@{i}"));
    }
    plan.runs
        .iter()
        .enumerate()
        .map(|(level, r)| {
            assert_eq!(r.level, level);
            assert_eq!(r.offsets.len(), r.lines.len());
            (
                r.op.as_str().to_string(),
                r.offsets.iter().map(|o| o.0).collect(),
            )
        })
        .collect()
}

#[test]
fn changes_of_different_keys_share_runs_and_each_key_keeps_its_order() {
    // Alternating ops on different keys: two runs instead of six.
    let runs = plan(&[
        (Upsert, "a"),
        (Delete, "b"),
        (Upsert, "c"),
        (Delete, "d"),
        (Upsert, "e"),
        (Delete, "f"),
    ]);
    assert_eq!(
        runs,
        vec![
            ("upsert".into(), vec![0, 2, 4]),
            ("delete".into(), vec![1, 3, 5])
        ]
    );
    // A key deleted then upserted again needs a third run after its delete; repeated upserts of
    // one key stay in one run, in order.
    let runs = plan(&[
        (Upsert, "a"),
        (Upsert, "a"),
        (Delete, "a"),
        (Upsert, "b"),
        (Upsert, "a"),
        (Delete, "b"),
    ]);
    assert_eq!(
        runs,
        vec![
            ("upsert".into(), vec![0, 1, 3]),
            ("delete".into(), vec![2, 5]),
            ("upsert".into(), vec![4]),
        ]
    );
    // A batch that starts with a delete: its runs start with deletes.
    let runs = plan(&[(Delete, "a"), (Upsert, "b"), (Upsert, "a")]);
    assert_eq!(
        runs,
        vec![("delete".into(), vec![0]), ("upsert".into(), vec![1, 2])]
    );
}

#[test]
fn replaying_the_runs_gives_the_state_of_replaying_the_changes() {
    // A deterministic pseudo-random mix: the runs, replayed in order, end in the same state
    // as the changes in source order.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50 {
        let changes: Vec<_> = (0..200)
            .map(|_| {
                let op = if next() % 3 == 0 { Delete } else { Upsert };
                (op, format!("k{}", next() % 20))
            })
            .collect();
        let mut plan_ = Plan::default();
        let mut expected = std::collections::BTreeMap::new();
        for (i, (op, key)) in changes.iter().enumerate() {
            plan_.add(*op, key.clone(), Offset(i as i64), format!("{key}={i}"));
            if *op == Delete {
                expected.remove(key);
            } else {
                expected.insert(key.clone(), i);
            }
        }
        let mut got = std::collections::BTreeMap::new();
        for run in &plan_.runs {
            for line in &run.lines {
                let (key, i) = line.split_once('=').unwrap();
                if run.op == Delete {
                    got.remove(key);
                } else {
                    got.insert(key.to_string(), i.parse::<usize>().unwrap());
                }
            }
        }
        assert_eq!(got, expected);
        assert!(plan_.runs.len() < 20, "{} runs", plan_.runs.len());
    }
}
