//! Group streams against a real group store (the SQLite catalog's database) and a memory
//! changelog: a stream that is given up before it starts gives its partitions back at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use unitable_core::admin::TableAdmin;
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::changelog::MemoryChangelog;
use unitable_core::groups::{GroupKey, GroupStore};
use unitable_core::naming::TableName;
use unitable_core::offsets::PartitionOffsets;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    reader: Reader,
    store: GroupStore,
    key: GroupKey,
    table: TableName,
}

/// A `t.kv` table with 4 changelog partitions, and a reader serving group `g` from the
/// catalog's database with a session (60 s) far longer than any wait in these tests.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = CatalogConfig::embedded(dir.path());
    let catalog = TableCatalog::open(config.clone()).await.unwrap();
    let changelog = Arc::new(MemoryChangelog::default());
    let table: TableName = "t.kv".parse().unwrap();
    let def = crate::testing::kv_table(4);
    TableAdmin::new(catalog.clone(), changelog.clone())
        .create_table(&def)
        .await
        .unwrap();
    let uuid = catalog
        .load(&table)
        .await
        .unwrap()
        .metadata()
        .uuid()
        .to_string();
    let store = GroupStore::connect(&config).await.unwrap().unwrap();
    let reader = Reader::new(catalog, changelog).with_groups(GroupSettings {
        store: store.clone(),
        node: "node-1".into(),
        session: Duration::from_secs(60),
    });
    Fixture {
        _dir: dir,
        reader,
        store,
        key: GroupKey {
            table_uuid: uuid,
            group: "g".into(),
        },
        table,
    }
}

fn read_of(f: &Fixture) -> StreamRead {
    StreamRead {
        table: f.table.clone(),
        columns: Vec::new(),
        filter: None,
        start: StreamStart::Earliest,
        limit: None,
        partitions: Vec::new(),
        resume: PartitionOffsets::default(),
        subscriber: "test".into(),
    }
}

fn member(name: &str) -> GroupRead {
    GroupRead {
        group: "g".into(),
        member: Some(name.into()),
        auto_commit: false,
    }
}

/// The interleaving behind the two-node test's failure: a member joins (its row synced at the
/// new generation), then waits for partitions another member still lists, and its client gives
/// up (the RPC is dropped) before its stream starts. The member must leave the group then, not
/// keep its row and partitions until its session expires (60 s here).
#[tokio::test]
async fn a_stream_dropped_while_waiting_for_partitions_leaves_the_group() {
    let f = fixture().await;
    // x reads every partition; its stream is never polled, so x does not sync to the next
    // generation and keeps listing them.
    let x = f
        .reader
        .group_stream(&read_of(&f), &member("x"))
        .await
        .unwrap();
    assert_eq!(x.partitions, vec![0, 1, 2, 3]);

    // y joins and waits for its share, still listed by x; its caller gives up.
    let waited = tokio::time::timeout(
        Duration::from_millis(800),
        f.reader.group_stream(&read_of(&f), &member("y")),
    )
    .await;
    assert!(
        waited.is_err(),
        "y cannot start while x lists its partitions"
    );
    // y leaves: its row goes (long before its session would end). Two changes of the members
    // since x joined (y in, y out), so two generations.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = f.store.state(&f.key).await.unwrap().unwrap();
        let listed: Vec<&str> = state.members.iter().map(|m| m.member.as_str()).collect();
        if listed == ["x"] {
            assert_eq!(state.generation, x.generation + 2, "{state:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "y is still a member after its stream was dropped: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(x);
}
