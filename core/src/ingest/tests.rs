use std::collections::BTreeMap;

use super::{IngestConfig, IngestPosition, IngestPositions, IngestStart, TimeUnit, UnknownColumns};
use crate::catalog::CatalogConfig;
use crate::naming::props;
use crate::offsets::{Offset, PartitionId};

fn properties(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn ingest_settings_are_read_from_properties_with_defaults() {
    assert_eq!(
        IngestConfig::from_properties(&properties(&[]), true),
        Ok(None)
    );
    let config = IngestConfig::from_properties(
        &properties(&[(props::INGEST_TOPIC, " shop.public.orders ")]),
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(config.topic, "shop.public.orders");
    assert_eq!(config.start, IngestStart::Earliest);
    assert_eq!(config.timestamp_unit, None);
    assert_eq!(config.unknown_columns, UnknownColumns::Ignore);

    let config = IngestConfig::from_properties(
        &properties(&[
            (props::INGEST_TOPIC, "t"),
            (props::INGEST_FORMAT, "Debezium-JSON"),
            (props::INGEST_START, "latest"),
            (props::INGEST_TIMESTAMP_UNIT, "us"),
            (props::INGEST_UNKNOWN_COLUMNS, "reject"),
        ]),
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(config.start, IngestStart::Latest);
    assert_eq!(config.timestamp_unit, Some(TimeUnit::Micros));
    assert_eq!(config.unknown_columns, UnknownColumns::Reject);
}

#[test]
fn bad_ingest_settings_name_the_property() {
    let err = |pairs: &[(&str, &str)], keyed: bool| {
        IngestConfig::from_properties(&properties(pairs), keyed).unwrap_err()
    };
    let e = err(
        &[
            (props::INGEST_TOPIC, "t"),
            (props::INGEST_FORMAT, "maxwell"),
        ],
        true,
    );
    assert!(
        e.contains(props::INGEST_FORMAT) && e.contains("maxwell"),
        "{e}"
    );
    let e = err(
        &[(props::INGEST_TOPIC, "t"), (props::INGEST_START, "now")],
        true,
    );
    assert!(e.contains(props::INGEST_START), "{e}");
    let e = err(
        &[
            (props::INGEST_TOPIC, "t"),
            (props::INGEST_TIMESTAMP_UNIT, "s"),
        ],
        true,
    );
    assert!(e.contains(props::INGEST_TIMESTAMP_UNIT), "{e}");
    let e = err(&[(props::INGEST_TOPIC, "a topic")], true);
    assert!(e.contains("not a Kafka topic name"), "{e}");
    let e = err(&[(props::INGEST_FORMAT, "debezium-json")], true);
    assert!(e.contains(props::INGEST_TOPIC), "{e}");
    let e = err(&[(props::INGEST_TOPIC, "t")], false);
    assert!(e.contains("primary key"), "{e}");
    let e = err(
        &[(props::INGEST_TOPIC, "t"), (props::INGEST_GENERATION, "-1")],
        true,
    );
    assert!(e.contains(props::INGEST_GENERATION), "{e}");
}

#[test]
fn a_new_generation_names_the_source_anew_and_outlives_a_stop() {
    let config = |pairs: &[(&str, &str)]| {
        IngestConfig::from_properties(&properties(pairs), true)
            .unwrap()
            .unwrap()
    };
    assert_eq!(config(&[(props::INGEST_TOPIC, "src")]).source_key(), "src");
    let next = config(&[
        (props::INGEST_TOPIC, "src"),
        (props::INGEST_GENERATION, "2"),
    ]);
    assert_eq!(next.generation, 2);
    assert_eq!(next.source_key(), "src#g2");
    // Stopped (no topic) with a generation left behind: valid, and nothing to ingest.
    assert_eq!(
        IngestConfig::from_properties(&properties(&[(props::INGEST_GENERATION, "2")]), true),
        Ok(None)
    );
}

#[tokio::test]
async fn positions_record_pending_batches_and_never_move_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CatalogConfig::embedded(dir.path());
    let store = IngestPositions::connect(&config).await.unwrap().unwrap();
    let (p0, p1) = (PartitionId(0), PartitionId(1));
    assert!(store.positions("u1", "src").await.unwrap().is_empty());

    store
        .begin("u1", "src", p0, Offset(0), Offset(9))
        .await
        .unwrap();
    store
        .begin("u1", "src", p1, Offset(0), Offset(4))
        .await
        .unwrap();
    store.advance("u1", "src", p1, Offset(5)).await.unwrap();
    let positions = store.positions("u1", "src").await.unwrap();
    assert_eq!(
        positions[&p0],
        IngestPosition {
            next: Offset(0),
            pending: Some(Offset(9))
        }
    );
    assert_eq!(
        positions[&p1],
        IngestPosition {
            next: Offset(5),
            pending: None
        }
    );

    // A stale writer's older position changes nothing.
    store.advance("u1", "src", p1, Offset(3)).await.unwrap();
    store
        .begin("u1", "src", p1, Offset(2), Offset(4))
        .await
        .unwrap();
    assert_eq!(
        store.positions("u1", "src").await.unwrap()[&p1].next,
        Offset(5)
    );

    // Positions are per table and per source topic.
    assert!(store.positions("u2", "src").await.unwrap().is_empty());
    assert!(store.positions("u1", "other").await.unwrap().is_empty());

    // They survive a reconnect (another process, a restart).
    drop(store);
    let store = IngestPositions::connect(&config).await.unwrap().unwrap();
    assert_eq!(
        store.positions("u1", "src").await.unwrap()[&p0].pending,
        Some(Offset(9))
    );
}

#[test]
fn a_source_cluster_is_named_or_refused() {
    let ok = IngestConfig::from_properties(
        &properties(&[(props::INGEST_TOPIC, "t"), (props::INGEST_CLUSTER, "eu-1")]),
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(ok.cluster.as_deref(), Some("eu-1"));
    let e = IngestConfig::from_properties(
        &properties(&[(props::INGEST_TOPIC, "t"), (props::INGEST_CLUSTER, "EU_1")]),
        true,
    )
    .unwrap_err();
    assert!(e.contains(props::INGEST_CLUSTER), "{e}");
    let e = IngestConfig::from_properties(&properties(&[(props::INGEST_CLUSTER, "eu")]), true)
        .unwrap_err();
    assert!(e.contains(props::INGEST_TOPIC), "{e}");
}
