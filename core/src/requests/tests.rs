use std::time::Duration;

use super::{Claim, RequestLog};
use crate::catalog::CatalogConfig;
use crate::lease::LeaseStore;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_request_id_is_claimed_once_and_its_outcome_returned_to_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CatalogConfig::embedded(dir.path());
    let log = RequestLog::connect(&config).await.unwrap().unwrap();
    let nodes = LeaseStore::connect(&config).await.unwrap().unwrap();
    nodes.heartbeat("node-a", MINUTE).await.unwrap();

    assert_eq!(
        log.claim("uuid-1", "r1", "node-a", MINUTE).await.unwrap(),
        Claim::New
    );
    // The same id of another table is another request.
    assert_eq!(
        log.claim("uuid-2", "r1", "node-a", MINUTE).await.unwrap(),
        Claim::New
    );
    // A retry while node-a (alive) is still at it: in progress.
    match log.claim("uuid-1", "r1", "node-b", MINUTE).await.unwrap() {
        Claim::InProgress { owner, .. } => assert_eq!(owner, "node-a"),
        other => panic!("expected in progress, got {other:?}"),
    }
    log.record_start("uuid-1", "r1", "0:5,1:7").await.unwrap();
    // Only the first attempt's offsets are kept.
    log.record_start("uuid-1", "r1", "0:9,1:9").await.unwrap();
    log.finish("uuid-1", "r1", "{\"rows\":3}").await.unwrap();
    assert_eq!(
        log.claim("uuid-1", "r1", "node-b", MINUTE).await.unwrap(),
        Claim::Done("{\"rows\":3}".into())
    );

    // An attempt that gave up: the next retry recovers it at once, from the first offsets.
    assert_eq!(
        log.claim("uuid-1", "r2", "node-a", MINUTE).await.unwrap(),
        Claim::New
    );
    log.record_start("uuid-1", "r2", "0:1").await.unwrap();
    log.abandon("uuid-1", "r2").await.unwrap();
    assert_eq!(
        log.claim("uuid-1", "r2", "node-b", MINUTE).await.unwrap(),
        Claim::Recover(Some("0:1".into()))
    );
    // node-b holds it now (and is not even a member): a third attempt waits... until the
    // claim is older than the in-flight window, since node-b is not live.
    assert_eq!(
        log.claim("uuid-1", "r2", "node-c", MINUTE).await.unwrap(),
        Claim::Recover(Some("0:1".into())),
        "node-b is not a live member, so its claim is taken over"
    );

    // A claim of a node that died (its membership ran out) is taken over.
    nodes
        .heartbeat("node-d", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        log.claim("uuid-1", "r3", "node-d", MINUTE).await.unwrap(),
        Claim::New
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.claim("uuid-1", "r3", "node-a", MINUTE).await.unwrap(),
        Claim::Recover(None)
    );
    // A restarted node gives up its earlier claims.
    assert_eq!(
        log.claim("uuid-1", "r4", "node-a", MINUTE).await.unwrap(),
        Claim::New
    );
    assert!(log.abandon_all("node-a").await.unwrap() >= 1);
    nodes.heartbeat("node-b", MINUTE).await.unwrap();
    assert_eq!(
        log.claim("uuid-1", "r4", "node-b", MINUTE).await.unwrap(),
        Claim::Recover(None)
    );

    // Expiry forgets old requests: the id is new again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(log.expire(Duration::from_millis(10)).await.unwrap() >= 5);
    assert_eq!(
        log.claim("uuid-1", "r1", "node-a", MINUTE).await.unwrap(),
        Claim::New
    );
}
