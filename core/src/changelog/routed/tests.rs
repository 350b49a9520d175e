use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::changelog::MemoryChangelog;
use crate::changelog::routes::{ClosedGeneration, Route, observe};

fn record(value: &str, timestamp_ms: i64) -> ChangeRecord {
    ChangeRecord {
        key: Some(Bytes::from(value.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        timestamp_ms,
    }
}

fn route(
    version: i64,
    cluster: &str,
    generation: u32,
    moving: Option<&str>,
    history: Vec<ClosedGeneration>,
) -> Route {
    Route {
        table_uuid: "u".into(),
        version,
        cluster: Some(cluster.into()),
        generation,
        moving: moving.map(str::to_string),
        history,
    }
}

fn values(records: &[StoredRecord]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.offset.0,
                String::from_utf8(r.record.value.clone().unwrap().to_vec()).unwrap(),
            )
        })
        .collect()
}

/// A move from cluster `a` to `b` as the committer drives it, with an append that lands in
/// the old topic after its end was fixed.
#[tokio::test]
async fn a_moved_changelog_reads_as_one_log() {
    let a = Arc::new(MemoryChangelog::new());
    let b = Arc::new(MemoryChangelog::new());
    let clusters: Clusters = BTreeMap::from([
        ("a".to_string(), a.clone() as Arc<dyn Changelog>),
        ("b".to_string(), b.clone() as Arc<dyn Changelog>),
    ]);
    let log = RoutedChangelog::new(clusters, "a").unwrap();
    let topic = TopicName::new("unitable.routed_test.moved");
    let p = PartitionId(0);
    observe(&topic, route(1, "a", 0, None, Vec::new()));
    log.create_topic(&topic, 2).await.unwrap();
    for (i, v) in ["x", "y", "z"].iter().enumerate() {
        log.append(&topic, p, vec![record(v, 1000 + i as i64)])
            .await
            .unwrap();
    }
    assert_eq!(a.partition_count(&topic).await.unwrap(), 2);

    // The move starts: writes are refused; the next generation's topic is created on b.
    observe(&topic, route(2, "a", 0, Some("b"), Vec::new()));
    let refused = log
        .append(&topic, p, vec![record("no", 0)])
        .await
        .unwrap_err();
    assert!(refused.is_retryable(), "{refused}");
    log.create_topic(&topic, 2).await.unwrap();
    let next = TopicName::new("unitable.routed_test.moved.g1");
    assert_eq!(b.partition_count(&next).await.unwrap(), 2);
    // An append that was in flight lands after the end was read (3).
    let late = a
        .append(&topic, p, vec![record("late", 1500)])
        .await
        .unwrap();
    assert_eq!(
        log.append_status(&topic, p, late),
        AppendStatus::Pending,
        "while moving, an append's fate is open"
    );

    // The switch: generation 0 ends at 3.
    let history = vec![ClosedGeneration {
        generation: 0,
        cluster: Some("a".into()),
        end: "0:3,1:0".parse().unwrap(),
    }];
    observe(&topic, route(3, "b", 1, None, history));
    assert!(matches!(
        log.append_status(&topic, p, late),
        AppendStatus::Lost { .. }
    ));
    let early = AppendedRange {
        first: Offset(1),
        last: Offset(2),
    };
    assert_eq!(log.append_status(&topic, p, early), AppendStatus::Durable);

    let appended = log
        .append(&topic, p, vec![record("w", 2000)])
        .await
        .unwrap();
    assert_eq!(appended.last, Offset::of_generation(1, 0));
    assert_eq!(b.watermarks(&next, p).await.unwrap().high, Offset(1));
    assert_eq!(
        log.append_status(&topic, p, appended),
        AppendStatus::Durable
    );

    // Reading from 0 gives the old generation up to its end (not the late record), then the
    // new one.
    let first = log
        .read(&topic, p, Offset(0), 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        values(&first),
        vec![(0, "x".into()), (1, "y".into()), (2, "z".into())]
    );
    let second = log
        .read(&topic, p, Offset(3), 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        values(&second),
        vec![(Offset::of_generation(1, 0).0, "w".into())]
    );
    let none = log
        .read(
            &topic,
            p,
            Offset::of_generation(1, 1),
            100,
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    // The other partition has nothing in generation 0 and goes straight on.
    assert!(
        log.read(&topic, PartitionId(1), Offset(0), 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );

    let w = log.watermarks(&topic, p).await.unwrap();
    assert_eq!((w.low, w.high), (Offset(0), Offset::of_generation(1, 1)));
    assert_eq!(
        log.offset_for_timestamp(&topic, p, 1001).await.unwrap(),
        Some(Offset(1))
    );
    // The late record (1500) is past the end: the first at or after 1500 is the new one.
    assert_eq!(
        log.offset_for_timestamp(&topic, p, 1500).await.unwrap(),
        Some(Offset::of_generation(1, 0))
    );
    assert_eq!(
        log.offset_for_timestamp(&topic, p, 5000).await.unwrap(),
        None
    );

    // Positions for Kafka clients.
    let route = crate::changelog::routes::route(&topic).unwrap();
    let segments = route.segments(&topic, p, Offset(1));
    assert_eq!(segments.len(), 2);
    assert_eq!(
        (
            segments[0].topic.as_str(),
            segments[0].from,
            segments[0].end
        ),
        ("unitable.routed_test.moved", 1, Some(3))
    );
    assert_eq!(
        (
            segments[1].topic.as_str(),
            segments[1].from,
            segments[1].end
        ),
        ("unitable.routed_test.moved.g1", 0, None)
    );
    assert_eq!(
        route.segments(&topic, p, Offset(3)).len(),
        1,
        "at the end: the new topic only"
    );
    assert_eq!(
        route.position_of(&topic, "unitable.routed_test.moved", p, 2),
        Some(Offset(2))
    );
    assert_eq!(
        route.position_of(&topic, "unitable.routed_test.moved", p, 3),
        Some(Offset::of_generation(1, 0))
    );
    assert_eq!(
        route.position_of(&topic, "unitable.routed_test.moved.g1", p, 7),
        Some(Offset::of_generation(1, 7))
    );
    assert_eq!(route.position_of(&topic, "other", p, 7), None);
    let mut covered = PartitionOffsets::default();
    covered.set(p, Offset::of_generation(1, 1));
    covered.set(PartitionId(1), Offset(0));
    assert_eq!(
        route.describe_positions(&topic, &covered),
        "a/unitable.routed_test.moved@1:0;b/unitable.routed_test.moved.g1@0:1"
    );
    log.publish_committed(&topic, &covered).await.unwrap();

    // An old topic deleted by an operator reads as removed by retention.
    a.delete_topic(&topic).await.unwrap();
    match log.read(&topic, p, Offset(1), 10, Duration::ZERO).await {
        Err(ChangelogError::OffsetOutOfRange { low, .. }) => {
            assert_eq!(low, Offset::of_generation(1, 0));
        }
        other => panic!("expected out of range, got {other:?}"),
    }
    assert_eq!(
        log.watermarks(&topic, p).await.unwrap().low,
        Offset::of_generation(1, 0)
    );

    // Deleting removes every generation's topic.
    log.delete_topic(&topic).await.unwrap();
    assert!(b.partition_count(&next).await.is_err());
}

#[tokio::test]
async fn topics_without_a_route_use_the_default_cluster() {
    let a = Arc::new(MemoryChangelog::new());
    let clusters: Clusters = BTreeMap::from([("a".to_string(), a.clone() as Arc<dyn Changelog>)]);
    let log = RoutedChangelog::new(clusters, "a").unwrap();
    let topic = TopicName::new("cdc.source.no_route");
    log.create_topic(&topic, 1).await.unwrap();
    let r = log
        .append(&topic, PartitionId(0), vec![record("v", 1)])
        .await
        .unwrap();
    assert_eq!(r.last, Offset(0));
    assert_eq!(
        a.watermarks(&topic, PartitionId(0)).await.unwrap().high,
        Offset(1)
    );
    assert!(RoutedChangelog::new(BTreeMap::new(), "a").is_err());
    let bad: Clusters = BTreeMap::from([("Bad_Name".to_string(), a as Arc<dyn Changelog>)]);
    assert!(
        RoutedChangelog::new(bad, "Bad_Name")
            .unwrap_err()
            .contains("invalid")
    );
}

#[test]
fn history_round_trips_and_rejects_gaps() {
    let history = vec![
        ClosedGeneration {
            generation: 0,
            cluster: None,
            end: "0:5".parse().unwrap(),
        },
        ClosedGeneration {
            generation: 1,
            cluster: Some("b".into()),
            end: "0:7,1:2".parse().unwrap(),
        },
    ];
    let text = routes::history_text(&history);
    assert_eq!(routes::parse_history(&text).unwrap(), history);
    assert!(
        routes::parse_history(r#"[{"generation":1,"end":"0:1"}]"#)
            .unwrap_err()
            .contains("from 0 on")
    );
    assert!(routes::parse_history("nope").is_err());
    assert_eq!(routes::parse_history("").unwrap(), Vec::new());
}
