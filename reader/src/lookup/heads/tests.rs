//! Fresh lookups with and without `max_staleness`, on a memory changelog (which counts its
//! high-watermark reads): a strict lookup reads the watermark every time and sees every
//! acknowledged write; a lookup that accepts some staleness reads it only when the last read is
//! too old (in the background past half the age), and still sees every write acknowledged
//! before that read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use unitable_core::changelog::MemoryChangelog;
use unitable_core::naming::{TableName, TopicName};
use unitable_core::record::{ChangeOp, RecordCodec};

use crate::Reader;
use crate::error::ReadError;
use crate::lookup::{LookupAsOf, LookupKeys, LookupRequest, LookupResponse};

struct Fixture {
    _dir: tempfile::TempDir,
    reader: Reader,
    table: TableName,
    topic: TopicName,
    codec: RecordCodec,
    changelog: Arc<MemoryChangelog>,
}

impl Fixture {
    /// `t.kv` in one bucket (every key in partition 0), nothing written.
    async fn new() -> Self {
        let changelog = Arc::new(MemoryChangelog::new());
        let def = crate::testing::kv_table(1);
        let (dir, catalog, codec) = crate::testing::create(&def, changelog.clone()).await;
        Fixture {
            _dir: dir,
            reader: Reader::new(catalog, changelog.clone()),
            table: def.name,
            topic: def.changelog.topic,
            codec,
            changelog,
        }
    }

    /// Appends (acknowledges) an upsert of `id`.
    async fn write(&self, id: i64, v: &str) {
        let line = format!("{{\"id\":{id},\"v\":\"{v}\"}}\n");
        crate::testing::append_line(
            &self.codec,
            &*self.changelog,
            &self.topic,
            ChangeOp::Upsert,
            &line,
            0,
        )
        .await;
    }

    fn reads(&self) -> u64 {
        self.changelog.watermark_reads()
    }

    async fn lookup(
        &self,
        id: i64,
        max_staleness: Option<Duration>,
        as_of: Option<LookupAsOf>,
    ) -> Result<LookupResponse, ReadError> {
        self.reader
            .lookup(&LookupRequest {
                table: self.table.clone(),
                keys: LookupKeys::JsonLines(format!("{{\"id\":{id}}}").into_bytes()),
                columns: Vec::new(),
                as_of,
                max_staleness,
            })
            .await
    }

    /// The value of `id` a fresh lookup answers, and the answer's `lag_ms`.
    async fn value(&self, id: i64, max_staleness: Option<Duration>) -> (Option<String>, i64) {
        let answer = self.lookup(id, max_staleness, None).await.unwrap();
        let v = answer.rows.column_by_name("v").unwrap().as_string::<i32>();
        let value = (v.len() == 1).then(|| v.value(0).to_string());
        (value, answer.as_of.lag_ms)
    }

    /// Waits until no watermark read is under way: the count holds still for 100 ms.
    async fn settled_reads(&self) -> u64 {
        let mut last = self.reads();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.reads();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

#[tokio::test]
async fn strict_lookups_read_the_high_watermark_every_time() {
    let f = Fixture::new().await;
    for round in 0..5 {
        let v = format!("v{round}");
        f.write(1, &v).await;
        let before = f.reads();
        // The reader's default (zero), then zero asked for explicitly.
        let staleness = [None, Some(Duration::ZERO)][round % 2];
        let (got, lag) = f.value(1, staleness).await;
        assert_eq!(got.as_deref(), Some(v.as_str()), "round {round}");
        assert_eq!(lag, 0);
        assert_eq!(f.reads(), before + 1, "round {round}: one watermark read");
    }
}

#[tokio::test]
async fn stale_lookups_reuse_a_recent_watermark_and_reflect_every_write_before_it() {
    let f = Fixture::new().await;
    let hour = Some(Duration::from_secs(3600));
    f.write(1, "a").await;
    // No watermark read yet: the first lookup reads one, whatever staleness it accepts.
    let before = f.reads();
    assert_eq!(f.value(1, hour).await.0.as_deref(), Some("a"));
    let reads = f.settled_reads().await;
    assert_eq!(reads, before + 1);
    // Within the hour no lookup reads the watermark again.
    f.write(1, "b").await;
    f.write(2, "x").await;
    for _ in 0..20 {
        let (got, lag) = f.value(1, hour).await;
        // Either value is allowed: "b" was acknowledged after the watermark in use was read.
        assert!(matches!(got.as_deref(), Some("a" | "b")), "{got:?}");
        assert!((0..3_600_000).contains(&lag), "lag {lag}");
    }
    assert_eq!(f.reads(), reads, "no watermark read within the allowed age");
    // A strict lookup reads the watermark, which stale lookups then use: every write
    // acknowledged before that read is reflected by them.
    assert_eq!(f.value(1, None).await.0.as_deref(), Some("b"));
    let reads = f.reads();
    f.write(1, "c").await;
    for id in [1, 2] {
        let (got, _) = f.value(id, hour).await;
        let want: &[&str] = if id == 1 { &["b", "c"] } else { &["x"] };
        assert!(
            got.as_deref().is_some_and(|g| want.contains(&g)),
            "id {id}: {got:?}, want one of {want:?}"
        );
    }
    assert_eq!(f.reads(), reads);
}

#[tokio::test]
async fn a_watermark_past_half_the_age_is_read_again_in_the_background_and_past_it_by_the_lookup() {
    let f = Fixture::new().await;
    // Generous against a loaded machine: the steps below must each take well under a second.
    let age = Duration::from_secs(2);
    f.write(1, "a").await;
    f.value(1, None).await;
    let read_at = Instant::now();
    let reads = f.settled_reads().await;
    // Past half the age: the lookup is answered from the kept watermark and starts a
    // background read.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(read_at.elapsed())).await;
    let (got, lag) = f.value(1, Some(age)).await;
    assert_eq!(got.as_deref(), Some("a"));
    assert!(
        lag >= 1000,
        "answered from the kept watermark, {lag} ms old"
    );
    assert_eq!(f.settled_reads().await, reads + 1, "one background read");
    // Past the whole age, with no lookup meanwhile to refresh it: the lookup reads it itself.
    tokio::time::sleep(age + Duration::from_millis(50)).await;
    let before = f.reads();
    f.write(1, "b").await;
    let (got, lag) = f.value(1, Some(age)).await;
    assert_eq!(got.as_deref(), Some("b"));
    assert_eq!(lag, 0);
    assert_eq!(f.reads(), before + 1);
}

#[tokio::test]
async fn max_staleness_is_refused_for_lookups_as_of_an_instant() {
    let f = Fixture::new().await;
    f.write(1, "a").await;
    let err = f
        .lookup(
            1,
            Some(Duration::from_secs(1)),
            Some(LookupAsOf::Timestamp(i64::MAX)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReadError::BadRequest { reason } if reason.contains("max_staleness")),
        "{err}"
    );
}
