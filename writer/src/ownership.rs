//! Committer ownership across serve nodes, by leases in the catalog database.
//!
//! Every renewal period (a fifth of the lease) each node runs one round: renew its membership
//! and its leases; stop at once any committer whose lease it no longer holds; compute which
//! node should commit each table from the live nodes ([`assign`]: even shares, few moves);
//! take the leases of its own tables that are free (never held, released, or expired because
//! their holder died) and start their committers; hand the tables it holds but should not to
//! their live owners (tables stay with a live holder unless loads would differ by more
//! than one, and a node live for less than a lease takes no held table): the committer
//! commits what the changelog holds, and only then is the lease released (its key-index
//! checkpoint is written after that, so the next owner does not wait for it). On shutdown the node keeps renewing until its committers have made
//! their final commits, then releases every lease and leaves, so the others take over within
//! one round rather than one lease.
//!
//! Leases decide who commits, not whether a commit is safe: a committer that starts claims a
//! higher committer epoch in the table's properties with a compare-and-swap commit, and every
//! row delta requires its epoch, so an owner that lost its lease while paused can never
//! commit after the new owner started (see docs/rfcs/0001-committer-leases.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};
use unitable_core::lease::assign_settling;
use unitable_core::naming::TableName;

use crate::config::LeaseConfig;
use crate::error::WriteResult;
use crate::metric_names as m;
use crate::writer::{Writer, lock};

/// Runs the first round, then keeps running rounds in the background until the writer stops.
/// Returns how many committers the first round started.
pub(crate) async fn start(writer: Writer, config: LeaseConfig) -> WriteResult<usize> {
    let mut coordinator = Coordinator {
        writer,
        config,
        handing_over: HashSet::new(),
        valid_until: None,
        first_seen: HashMap::new(),
        next_expiry: None,
    };
    let started = coordinator.round().await?;
    let tasks = coordinator.writer.inner.tasks.clone();
    tasks.spawn(coordinator.run());
    Ok(started)
}

struct Coordinator {
    writer: Writer,
    config: LeaseConfig,
    /// Tables whose committer was asked to stop gracefully because another node should own
    /// them; their leases are released once it has.
    handing_over: HashSet<TableName>,
    /// Until when the leases renewed last are surely still ours (renewal sent + lease).
    valid_until: Option<Instant>,
    /// When this node first saw each live node (the nodes live at its own start count as
    /// settled); a node seen for less than a lease is young and takes no held table yet.
    first_seen: HashMap<String, Instant>,
    /// When the soonest-expiring lease held by another node (as of the last round) runs out.
    next_expiry: Option<Instant>,
}

/// How long after another node's lease runs out (by the database's answer) a round looks at
/// it: late enough that the database sees it expired, so the round can take it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(25);

impl Coordinator {
    async fn run(mut self) {
        let every = self.config.renew_every();
        let inner = self.writer.inner.clone();
        let stop = inner.stop.clone();
        loop {
            let next = self.next_expiry.map_or(every, |at| {
                at.saturating_duration_since(Instant::now()).min(every)
            });
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = inner.lease_round.notified() => {}
                () = stop.cancelled() => return self.leave().await,
            }
            if let Err(e) = self.round().await {
                metrics::counter!(m::LEASE_ERRORS).increment(1);
                warn!(node = %self.config.node, error = %e, "committer lease round failed; retrying");
                self.expire_if_unrenewed();
            }
        }
    }

    /// One round; returns how many committers it started.
    async fn round(&mut self) -> WriteResult<usize> {
        let store = self.config.store.clone();
        let (node, ttl) = (self.config.node.clone(), self.config.ttl);
        let node = node.as_str();
        // A round that fails before reading the leases retries a renewal period later.
        self.next_expiry = None;
        let sent = Instant::now();
        let nodes = store.heartbeat(node, ttl).await?;
        let held = store.renew_all(node, ttl).await?;
        self.valid_until = Some(sent + ttl);
        metrics::gauge!(m::LEASE_NODES).set(nodes.len() as f64);
        self.stop_unleased(&held);
        self.finish_handovers().await?;

        let tables: Vec<String> = self
            .writer
            .inner
            .shared
            .catalog
            .list(None)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        // Tables stay with their live holders while loads allow it: a move costs seconds
        // without commits (a hand-over, or a failover's lease expiry).
        let leases = store.holders().await?;
        let read = Instant::now();
        // The next lease of another node to run out: if its holder died, this node looks again
        // right then rather than up to a renewal period later (a live holder renews it first).
        self.next_expiry = leases
            .values()
            .filter(|h| h.owner != node)
            .map(|h| read + h.remaining + EXPIRY_MARGIN)
            .min();
        let holders: BTreeMap<String, String> = leases
            .into_iter()
            .map(|(table, holder)| (table, holder.owner))
            .collect();
        let young = self.young(&nodes, sent);
        let desired = assign_settling(&tables, &nodes, &holders, &young);
        let mut started = 0;
        for table in &tables {
            let Ok(name) = table.parse::<TableName>() else {
                continue;
            };
            let owner = desired.get(table.as_str()).map(String::as_str);
            let running = self.running(&name);
            if owner == Some(node) {
                if running || self.handing_over.contains(&name) {
                    continue;
                }
                if held.contains(table) || store.acquire(&name, node, ttl).await? {
                    if self.start_committer(&name).await {
                        started += 1;
                    }
                } else {
                    // Still held by a node that is finishing its final commits or died; its
                    // lease runs out or is released, then a later round takes it.
                }
            } else if running {
                let owner_live = owner.is_some_and(|o| nodes.iter().any(|n| n == o));
                if owner_live && self.handing_over.insert(name.clone()) {
                    info!(table = %name, to = owner.unwrap_or_default(), "handing the table's commits over");
                    if let Some(c) = lock(&self.writer.inner.committers).get(&name) {
                        c.cancel.cancel();
                    }
                }
            } else if held.contains(table) && !self.handing_over.contains(&name) {
                store.release(&name, node).await?;
            }
        }
        // Leases of tables that no longer exist.
        let known: BTreeSet<&str> = tables.iter().map(String::as_str).collect();
        for table in held.iter().filter(|t| !known.contains(t.as_str())) {
            if let Ok(name) = table.parse::<TableName>() {
                store.forget(&name).await?;
            }
        }
        let count = lock(&self.writer.inner.committers)
            .values()
            .filter(|c| !c.done.is_cancelled())
            .count();
        metrics::gauge!(m::LEASES_HELD).set(count as f64);
        Ok(started)
    }

    /// The live nodes first seen less than a lease ago (this node itself after its start);
    /// forgets nodes no longer live, so one that comes back is young again.
    fn young(&mut self, nodes: &[String], now: Instant) -> BTreeSet<String> {
        let ttl = self.config.ttl;
        let settled = now.checked_sub(ttl).unwrap_or(now);
        let first_round = self.first_seen.is_empty();
        self.first_seen.retain(|n, _| nodes.contains(n));
        for node in nodes {
            let seen = if first_round && *node != self.config.node {
                settled
            } else {
                now
            };
            self.first_seen.entry(node.clone()).or_insert(seen);
        }
        self.first_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) < ttl)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn running(&self, name: &TableName) -> bool {
        lock(&self.writer.inner.committers)
            .get(name)
            .is_some_and(|c| !c.done.is_cancelled())
    }

    async fn start_committer(&self, name: &TableName) -> bool {
        let state = match self.writer.inner.shared.catalog.describe(name).await {
            Ok(state) => state,
            Err(e) => {
                warn!(table = %name, error = %e, "cannot start the committer of a leased table");
                return false;
            }
        };
        metrics::counter!(m::LEASES_ACQUIRED, "table" => name.to_string()).increment(1);
        info!(table = %name, node = %self.config.node, "took the table's committer lease");
        self.writer.ensure_committer(name, &state.uuid);
        true
    }

    /// Aborts the committers of tables whose lease this node no longer holds (it could not
    /// renew in time, and another node may own them now).
    fn stop_unleased(&mut self, held: &BTreeSet<String>) {
        let mut committers = lock(&self.writer.inner.committers);
        committers.retain(|name, c| {
            if c.done.is_cancelled() {
                return self.handing_over.contains(name);
            }
            if held.contains(&name.to_string()) {
                return true;
            }
            metrics::counter!(m::LEASES_LOST, "table" => name.to_string()).increment(1);
            warn!(table = %name, node = %self.config.node, "lost the table's committer lease; stopping its committer");
            c.abort.cancel();
            self.handing_over.remove(name);
            false
        });
    }

    /// Releases the leases of tables whose graceful hand-over has finished.
    async fn finish_handovers(&mut self) -> WriteResult<()> {
        let finished: Vec<TableName> = {
            let committers = lock(&self.writer.inner.committers);
            self.handing_over
                .iter()
                .filter(|name| {
                    committers.get(*name).is_none_or(|c| {
                        c.done.is_cancelled() || c.progress.borrow().final_commit_done
                    })
                })
                .cloned()
                .collect()
        };
        for name in finished {
            self.config.store.release(&name, &self.config.node).await?;
            lock(&self.writer.inner.committers).remove(&name);
            self.handing_over.remove(&name);
            metrics::counter!(m::LEASE_HANDOVERS, "table" => name.to_string()).increment(1);
            info!(table = %name, "handed the table's commits over");
        }
        Ok(())
    }

    /// After failed rounds: once the last renewal is a lease old, the leases may belong to
    /// others; stop every committer rather than compete (the epoch would fence them anyway).
    fn expire_if_unrenewed(&mut self) {
        if self
            .valid_until
            .is_some_and(|until| Instant::now() >= until)
        {
            let committers = std::mem::take(&mut *lock(&self.writer.inner.committers));
            if !committers.is_empty() {
                warn!(
                    node = %self.config.node, tables = committers.len(),
                    "could not renew the committer leases for a whole lease period; stopping every committer"
                );
            }
            for c in committers.values() {
                c.abort.cancel();
            }
            self.handing_over.clear();
            self.valid_until = None;
        }
    }

    /// The writer is stopping: its committers are making their final commits. Keep the leases
    /// until they are done, then release them all and leave.
    async fn leave(mut self) {
        let every = self.config.renew_every();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pending: Vec<TableName> = lock(&self.writer.inner.committers)
                .iter()
                .filter(|(_, c)| !c.done.is_cancelled())
                .map(|(name, _)| name.clone())
                .collect();
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            let store = &self.config.store;
            if let Err(e) = store.renew_all(&self.config.node, self.config.ttl).await {
                warn!(error = %e, "cannot renew the committer leases during shutdown");
            }
            tokio::time::sleep(every.min(Duration::from_millis(200))).await;
        }
        let held = match self
            .config
            .store
            .renew_all(&self.config.node, self.config.ttl)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                warn!(error = %e, "cannot list the committer leases to release them; they expire by themselves");
                BTreeSet::new()
            }
        };
        for table in &held {
            if let Ok(name) = table.parse::<TableName>()
                && let Err(e) = self.config.store.release(&name, &self.config.node).await
            {
                warn!(table = %name, error = %e, "cannot release the committer lease; it expires by itself");
            }
        }
        if let Err(e) = self.config.store.leave(&self.config.node).await {
            warn!(error = %e, "cannot remove this node from the committer nodes; it expires by itself");
        }
        self.handing_over.clear();
        info!(node = %self.config.node, released = held.len(), "left the committer nodes");
    }
}
