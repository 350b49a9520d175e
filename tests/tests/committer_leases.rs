//! Several `unitable serve` nodes on one catalog and one Kafka cluster share the tables'
//! committers by leases in the catalog database: tables spread evenly, a dead node's tables
//! are taken over, a restarted node takes its share back, a stopping node hands its tables
//! over, and a paused owner that lost its lease never commits again. Every acknowledged write
//! reaches the Iceberg tables exactly once (read back with iceberg-rust, checked against a
//! model of what was written).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use support::{create_kv_table_as, kv_line, scan_kv_table, write_lines_to};
use unitable_core::catalog::{CatalogConfig, TableCatalog};
use unitable_core::lease::{LeaseHolder, LeaseStore};
use unitable_core::naming::{props, summary};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_proto::v1::WriteOp;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_tests::{Kafka, Service, bench};

type Client = WriteServiceClient<tonic::transport::Channel>;

const LEASE: &str = "2s";

/// A serve node named `id` with a 2 s lease and a 100 ms commit interval; with `first`, on
/// `first`'s catalog and warehouse.
async fn node(kafka: &Kafka, id: &str, first: Option<&Service>) -> Result<Service> {
    let args = [
        "--commit-interval",
        "100ms",
        "--committer-lease",
        LEASE,
        "--compaction-interval",
        "0s",
    ];
    Service::start_node(&kafka.bootstrap(), id, first, &args).await
}

async fn leases(data: &Path) -> Result<LeaseStore> {
    LeaseStore::connect(&CatalogConfig::embedded(data))
        .await?
        .context("the embedded catalog has a lease store")
}

/// Polls the lease holders until `done` accepts them.
async fn wait_for_holders(
    store: &LeaseStore,
    what: &str,
    timeout: Duration,
    done: impl Fn(&BTreeMap<String, LeaseHolder>) -> bool,
) -> Result<BTreeMap<String, LeaseHolder>> {
    let deadline = Instant::now() + timeout;
    loop {
        // The nodes' lease rounds write the same database: a read may meet a busy database
        // now and then. That is retried like a condition not yet met; the nodes do the same.
        let seen = store.holders().await;
        if let Ok(holders) = &seen
            && done(holders)
        {
            return seen.map_err(Into::into);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}; holders {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(holders: &BTreeMap<String, LeaseHolder>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for h in holders.values() {
        *out.entry(h.owner.clone()).or_default() += 1;
    }
    out
}

/// Tables, the model of what was acknowledged, and the last offsets written per table.
struct Model {
    tables: Vec<String>,
    rows: BTreeMap<String, BTreeMap<i64, String>>,
    written: BTreeMap<String, PartitionOffsets>,
    next: i64,
}

impl Model {
    fn new(tables: Vec<String>) -> Self {
        Self {
            rows: tables
                .iter()
                .map(|t| (t.clone(), BTreeMap::new()))
                .collect(),
            written: BTreeMap::new(),
            tables,
            next: 0,
        }
    }

    /// One upsert to every table, through the clients in turn; only acknowledged writes enter
    /// the model.
    async fn write_round(&mut self, clients: &mut [&mut Client]) -> Result<()> {
        for (i, table) in self.tables.iter().enumerate() {
            let client = &mut clients[(i + self.next as usize) % clients.len()];
            let id = self.next % 50;
            let v = format!("v{}", self.next);
            let r = write_lines_to(client, table, WriteOp::Upsert, &kv_line(id, &v, 0), false)
                .await
                .with_context(|| format!("write to {table}"))?;
            ensure!(r.rows_written == 1 && r.errors.is_empty(), "{r:?}");
            self.rows.get_mut(table).expect("table").insert(id, v);
            let seen = self.written.entry(table.clone()).or_default();
            for po in &r.last_offsets {
                let p = PartitionId(po.partition);
                if po.offset >= seen.get(p).0 {
                    seen.set(p, Offset(po.offset));
                }
            }
        }
        self.next += 1;
        Ok(())
    }
}

async fn wait_committed(data: &Path, model: &Model, timeout: Duration) -> Result<Duration> {
    bench::wait_committed(data, &model.written, timeout).await
}

async fn check_tables(data: &Path, model: &Model) -> Result<()> {
    for table in &model.tables {
        let rows = scan_kv_table(data, table).await?;
        ensure!(
            rows == model.rows[table],
            "{table}: the Iceberg table {rows:?}\nthe model {:?}",
            model.rows[table]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_share_the_tables_and_take_over_from_a_dead_one() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let a = node(&kafka, "node-a", None).await?;
    let data = a.data_dir();
    let tables: Vec<String> = (0..6).map(|i| format!("lease.t{i}")).collect();
    for t in &tables {
        create_kv_table_as(&a, t, 2, &[], Vec::new()).await?;
    }
    let mut b = node(&kafka, "node-b", Some(&a)).await?;
    let mut c = node(&kafka, "node-c", Some(&a)).await?;
    let (ida, idb, idc) = ("node-a", "node-b", "node-c");
    let store = leases(&data).await?;

    // Even spread: two tables each.
    let holders = wait_for_holders(
        &store,
        "two tables per node",
        Duration::from_secs(30),
        |h| h.len() == 6 && counts(h).values().all(|&n| n == 2) && counts(h).len() == 3,
    )
    .await?;
    eprintln!("spread: {:?}", counts(&holders));

    let mut ca = WriteServiceClient::connect(a.grpc_url()).await?;
    let mut cb = WriteServiceClient::connect(b.grpc_url()).await?;
    let mut cc = WriteServiceClient::connect(c.grpc_url()).await?;
    let mut model = Model::new(tables.clone());
    for _ in 0..10 {
        model.write_round(&mut [&mut ca, &mut cb, &mut cc]).await?;
    }
    wait_committed(&data, &model, Duration::from_secs(30)).await?;

    // b dies: its tables are taken over by a and c once its leases run out.
    let b_tables: BTreeSet<String> = holders
        .iter()
        .filter(|(_, h)| h.owner == idb)
        .map(|(t, _)| t.clone())
        .collect();
    b.kill()?;
    let killed = Instant::now();
    for _ in 0..10 {
        model.write_round(&mut [&mut ca, &mut cc]).await?;
    }
    let failover = wait_committed(&data, &model, Duration::from_secs(30)).await?;
    let taken = killed.elapsed();
    let holders =
        wait_for_holders(&store, "read the leases", Duration::from_secs(10), |_| true).await?;
    for t in &b_tables {
        let owner = &holders
            .get(t)
            .with_context(|| format!("{t} has no lease"))?
            .owner;
        ensure!(
            *owner == ida || *owner == idc,
            "{t} is held by {owner} after b died"
        );
    }
    eprintln!(
        "failover: the dead node's tables committed {:.1} s after the kill (lease {LEASE}); waited {:.1} s for the writes",
        taken.as_secs_f64(),
        failover.as_secs_f64()
    );

    // b comes back (same node id): it takes its share back.
    b = tokio::task::spawn_blocking(move || b.restart().map(|()| b)).await??;
    let mut cb = WriteServiceClient::connect(b.grpc_url()).await?;
    wait_for_holders(
        &store,
        "b takes its share back",
        Duration::from_secs(30),
        |h| h.len() == 6 && counts(h).get(idb) == Some(&2) && counts(h).values().all(|&n| n == 2),
    )
    .await?;
    for _ in 0..10 {
        model.write_round(&mut [&mut ca, &mut cb, &mut cc]).await?;
    }
    wait_committed(&data, &model, Duration::from_secs(30)).await?;

    // c stops gracefully: it commits, releases its leases and leaves; a and b take over
    // within a round or two, well before its leases would have run out.
    let c_status = tokio::task::spawn_blocking(move || c.stop().map(|s| (s, c))).await??;
    let (status, c) = c_status;
    ensure!(status.success(), "c exited with {status}");
    let stopped = Instant::now();
    let holders = wait_for_holders(
        &store,
        "c's tables handed over",
        Duration::from_secs(10),
        |h| h.len() == 6 && !h.values().any(|l| l.owner == idc),
    )
    .await?;
    eprintln!(
        "graceful stop: c's tables held by others {:.2} s after it exited: {:?}",
        stopped.elapsed().as_secs_f64(),
        counts(&holders)
    );
    ensure!(
        c.log().contains("left the committer nodes"),
        "c did not release its leases:\n{}",
        c.log()
    );
    for _ in 0..5 {
        model.write_round(&mut [&mut ca, &mut cb]).await?;
    }
    wait_committed(&data, &model, Duration::from_secs(30)).await?;
    check_tables(&data, &model).await?;
    drop((a, b, c, kafka));
    Ok(())
}

/// The committer epoch `table`'s properties name now.
async fn claimed_epoch(catalog: &TableCatalog, table: &str) -> Result<String> {
    catalog
        .load(&table.parse()?)
        .await?
        .metadata()
        .properties()
        .get(props::COMMITTER_EPOCH)
        .cloned()
        .context("claimed epoch")
}

/// The epoch each snapshot of `table` was committed under, oldest first.
async fn epochs(catalog: &TableCatalog, table: &str) -> Result<Vec<(i64, String)>> {
    let t = catalog.load(&table.parse()?).await?;
    let mut snapshots: Vec<_> = t.metadata().snapshots().collect();
    snapshots.sort_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
    Ok(snapshots
        .iter()
        .filter_map(|s| {
            s.summary()
                .additional_properties
                .get(summary::COMMITTER_EPOCH)
                .map(|e| (s.snapshot_id(), e.clone()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_owner_commits_nothing_after_losing_its_lease() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let mut a = node(&kafka, "node-a", None).await?;
    let data = a.data_dir();
    let table = "lease.paused";
    create_kv_table_as(&a, table, 2, &[], Vec::new()).await?;
    let mut b = node(&kafka, "node-b", Some(&a)).await?;
    let store = leases(&data).await?;
    let catalog = TableCatalog::open(CatalogConfig::embedded(&data)).await?;
    let mut model = Model::new(vec![table.to_string()]);
    {
        let mut ca = WriteServiceClient::connect(a.grpc_url()).await?;
        let mut cb = WriteServiceClient::connect(b.grpc_url()).await?;
        for _ in 0..6 {
            model.write_round(&mut [&mut ca, &mut cb]).await?;
        }
    }
    wait_committed(&data, &model, Duration::from_secs(30)).await?;
    // Let any hand-over between the two settle, then find the owner.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holders =
        wait_for_holders(&store, "read the leases", Duration::from_secs(10), |_| true).await?;
    let owner = holders
        .get(table)
        .context("the table has a lease")?
        .owner
        .clone();
    let (paused, live, live_id) = if owner == "node-a" {
        (&mut a, &mut b, "node-b")
    } else {
        (&mut b, &mut a, "node-a")
    };
    let epoch_before = claimed_epoch(&catalog, table).await?;
    let pid = paused.process().id().context("pid")?;
    signal(pid, "STOP")?;
    // The live node takes the lease once it runs out and claims a higher epoch.
    let result = async {
        wait_for_holders(
            &store,
            "the live node takes the lease",
            Duration::from_secs(15),
            |h| h.get(table).is_some_and(|l| l.owner == live_id),
        )
        .await?;
        let mut cl = WriteServiceClient::connect(live.grpc_url()).await?;
        for _ in 0..5 {
            model.write_round(&mut [&mut cl]).await?;
        }
        wait_committed(&data, &model, Duration::from_secs(30)).await?;
        anyhow::Ok(())
    }
    .await;
    signal(pid, "CONT")?;
    result?;
    let epoch_after = claimed_epoch(&catalog, table).await?;
    ensure!(
        epoch_after.parse::<u64>()? > epoch_before.parse::<u64>()?,
        "epoch {epoch_before} -> {epoch_after}"
    );
    // The woken node keeps acknowledging writes; the live owner commits them.
    {
        let mut cp = WriteServiceClient::connect(paused.grpc_url()).await?;
        let mut cl = WriteServiceClient::connect(live.grpc_url()).await?;
        for _ in 0..6 {
            model.write_round(&mut [&mut cp, &mut cl]).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_committed(&data, &model, Duration::from_secs(30)).await?;
    // The fence: epochs never go back. Once a snapshot was committed under the new owner's
    // epoch, none is committed under the paused owner's old one. (The woken node may be the
    // table's rightful owner again and take it back by a hand-over, under a yet higher epoch.)
    let epochs = epochs(&catalog, table).await?;
    ensure!(
        epochs.iter().any(|(_, e)| *e == epoch_after),
        "no snapshot under the new epoch {epoch_after}: {epochs:?}"
    );
    for pair in epochs.windows(2) {
        let (older, newer) = (pair[0].1.parse::<u64>()?, pair[1].1.parse::<u64>()?);
        ensure!(
            newer >= older,
            "snapshot {} was committed under epoch {newer} after one under {older}: {epochs:?}",
            pair[1].0
        );
    }
    check_tables(&data, &model).await?;
    drop((a, b, kafka));
    Ok(())
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

/// Two nodes write multi-row batches into one partition at the same time, as clients spread
/// over a deployment do: in Kafka the nodes' records interleave. Every batch is acknowledged in
/// full (a batch is not required to land at consecutive offsets), and the Iceberg table ends up
/// with every row exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_writing_one_partition_at_once_lose_nothing() -> Result<()> {
    let kafka = tokio::task::spawn_blocking(Kafka::start).await??;
    let a = node(&kafka, "node-a", None).await?;
    let b = node(&kafka, "node-b", Some(&a)).await?;
    let table = "lease.shared";
    create_kv_table_as(&a, table, 1, &[], Vec::new()).await?;
    // Three clients per node, batches of 500 rows: enough overlap that the nodes' records
    // interleave in the partition (before the fix, the first interleaved batch failed).
    let mut writers = Vec::new();
    let urls = [a.grpc_url(), b.grpc_url()];
    for (n, url) in urls.iter().cycle().take(6).cloned().enumerate() {
        writers.push(tokio::spawn(async move {
            let mut client = WriteServiceClient::connect(url).await?;
            let mut rows = BTreeMap::new();
            let mut last = 0i64;
            for batch in 0..20i64 {
                let ids = (0..500).map(|i| n as i64 * 1_000_000 + batch * 500 + i);
                let lines: String = ids.clone().map(|id| kv_line(id, "v", 0)).collect();
                let r = write_lines_to(&mut client, table, WriteOp::Upsert, &lines, false).await?;
                ensure!(
                    r.rows_written == 500 && r.errors.is_empty(),
                    "client {n} batch {batch}: {} written, first error {:?}",
                    r.rows_written,
                    r.errors.first()
                );
                rows.extend(ids.map(|id| (id, "v".to_string())));
                last = last.max(r.last_offsets.iter().map(|po| po.offset).max().unwrap_or(0));
            }
            Ok::<_, anyhow::Error>((rows, last))
        }));
    }
    let mut model = Model::new(vec![table.to_string()]);
    let mut last = 0;
    for w in writers {
        let (rows, l) = w.await??;
        model.rows.get_mut(table).expect("table").extend(rows);
        last = last.max(l);
    }
    model
        .written
        .entry(table.to_string())
        .or_default()
        .set(PartitionId(0), Offset(last));
    wait_committed(&a.data_dir(), &model, Duration::from_secs(60)).await?;
    check_tables(&a.data_dir(), &model).await
}
