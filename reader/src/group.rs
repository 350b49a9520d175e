//! Consumer groups over STREAM: a named group of readers splits a table's changelog partitions,
//! and the server keeps the group's positions (docs/rfcs/0002-consumer-groups.md).
//!
//! A group STREAM joins the group in the catalog database ([`GroupStore`]), waits until the
//! partitions it was given are no longer listed by another member (their previous owner synced,
//! left or expired, after committing what it was sent), then reads them from the group's
//! committed positions (the request's start for partitions with none). While the stream is open
//! the serving node renews the member every tick; when the group's generation moves (a member
//! joined, left or expired) the stream ends with [`ReadError::GroupRebalanced`] after the
//! batches already sent, and the client reconnects with the same member id to get its new
//! share (an eager rebalance). A stream the client closes leaves the group at once.
//!
//! Positions move when the client commits them ([`Reader::commit_group`], at-least-once) or,
//! with auto-commit, when the server hands a batch to the transport (at-most-once for a
//! client that crashes before processing it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, warn};
use unitable_core::groups::{Committed, Fenced, GroupKey, GroupStore, Heartbeat, MAX_NAME_LEN};
use unitable_core::naming::TableName;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::table::TableDef;

use crate::error::{ReadError, ReadResult};
use crate::stream::{ChangeBatches, ChangeStream, StreamRead, StreamStart};
use crate::{Reader, freshness};

/// Where consumer-group state lives and how long a member outlives its last renewal.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The group tables in the catalog database.
    pub store: GroupStore,
    /// This serve node's id (recorded with the members it serves).
    pub node: String,
    /// A member not renewed for this long is dropped from its group; the serving node renews
    /// every tick ([`GroupSettings::tick`]).
    pub session: Duration,
}

impl GroupSettings {
    /// How often open group streams renew their member and look for a new generation.
    pub fn tick(&self) -> Duration {
        (self.session / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The group part of a STREAM request.
#[derive(Debug, Clone)]
pub struct GroupRead {
    /// The group's name.
    pub group: String,
    /// The member id; `None` makes one up (returned in [`GroupStream::member`]; reconnect
    /// with it to keep the member's place without a rebalance).
    pub member: Option<String>,
    /// Commit each batch's positions when it is sent (at-most-once) instead of waiting for
    /// the client's commits (at-least-once).
    pub auto_commit: bool,
}

/// A started group stream.
pub struct GroupStream {
    /// The member id (as given, or made up).
    pub member: String,
    /// The generation the assignment belongs to (commits name it).
    pub generation: i64,
    /// The partitions this member reads.
    pub partitions: Vec<u32>,
    /// Every member of the group at this generation.
    pub members: Vec<String>,
    /// The changes (only of `partitions`), ending with [`ReadError::GroupRebalanced`] when the
    /// group moves on.
    pub stream: ChangeStream,
}

/// A group's state as `unitable consumer-group describe` shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// Its generation.
    pub generation: i64,
    /// Its members at `generation` (id, node, generation synced at, partitions); expired
    /// members are removed, starting a new generation, before the group is read.
    pub members: Vec<MemberDescription>,
    /// Per partition of the table.
    pub partitions: Vec<PartitionDescription>,
    /// Records not yet committed, summed over partitions.
    pub lag_records: i64,
}

/// A member of a group.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Its id.
    pub member: String,
    /// The node serving its stream.
    pub node: String,
    /// The generation it last synced at.
    pub generation: i64,
    /// Its partitions at that generation.
    pub partitions: Vec<u32>,
}

/// One partition of a group's table.
#[derive(Debug, Clone)]
pub struct PartitionDescription {
    /// The partition.
    pub partition: u32,
    /// The group's committed position, if any.
    pub committed: Option<Committed>,
    /// The partition's next offset (high watermark).
    pub high: i64,
    /// `high` minus the committed position (or minus the earliest kept offset without one).
    pub lag: i64,
    /// The member whose row lists the partition (the most recently synced one if two do).
    pub owner: Option<String>,
}

fn check_name(field: &str, text: &str) -> ReadResult<()> {
    if text.is_empty() || text.len() > MAX_NAME_LEN || text.chars().any(char::is_control) {
        return Err(ReadError::BadRequest {
            reason: format!(
                "{field} `{text}` must be 1 to {MAX_NAME_LEN} bytes without control characters"
            ),
        });
    }
    Ok(())
}

impl Reader {
    /// The same reader serving consumer groups from `settings`.
    pub fn with_groups(mut self, settings: GroupSettings) -> Self {
        self.groups = Some(Arc::new(settings));
        self
    }

    fn group_settings(&self) -> ReadResult<&Arc<GroupSettings>> {
        self.groups.as_ref().ok_or(ReadError::NoGroupStore)
    }

    async fn group_key(&self, table: &TableName, group: &str) -> ReadResult<(GroupKey, TableDef)> {
        check_name("consumer group", group)?;
        let loaded = self.catalog.load(table).await?;
        let def = TableDef::from_iceberg(table.clone(), loaded.metadata())?;
        Ok((
            GroupKey {
                table_uuid: loaded.metadata().uuid().to_string(),
                group: group.to_string(),
            },
            def,
        ))
    }

    /// Starts a STREAM as a member of a consumer group: joins, waits for its partitions to be
    /// released by their previous owners, then reads them from the group's positions.
    pub async fn group_stream(
        &self,
        read: &StreamRead,
        group: &GroupRead,
    ) -> ReadResult<GroupStream> {
        let settings = self.group_settings()?.clone();
        if !read.partitions.is_empty() {
            return Err(ReadError::BadRequest {
                reason: "a consumer group assigns the partitions; do not name partitions with a \
                         group"
                    .into(),
            });
        }
        if matches!(read.start, StreamStart::Snapshot(_)) {
            return Err(ReadError::BadRequest {
                reason: "a consumer group reads the changelog by partition and cannot start from \
                         a snapshot; start from earliest, latest, a time or offsets"
                    .into(),
            });
        }
        if let Some(member) = &group.member {
            check_name("member id", member)?;
        }
        let (key, def) = self.group_key(&read.table, &group.group).await?;
        let member = group
            .member
            .clone()
            .unwrap_or_else(|| format!("{}-{}", settings.node, uuid::Uuid::new_v4().simple()));
        let session = uuid::Uuid::new_v4().simple().to_string();
        let partitions = def.changelog.partitions;
        let store = &settings.store;
        let table = read.table.to_string();
        // The member's session from before it joins: if this call ends before the stream is
        // handed out (an error, or the client gives up while we wait for partitions and the
        // call is dropped), dropping the session leaves the group at once, instead of keeping
        // the member's row and its partitions until it expires.
        let mut member_session = Session {
            settings: settings.clone(),
            key: key.clone(),
            member: member.clone(),
            session,
            generation: -1,
            partitions: Vec::new(),
            auto_commit: group.auto_commit,
            keep: false,
        };
        // Join, then wait until no other live member lists our partitions; a new generation
        // meanwhile means joining again.
        let joined = 'join: loop {
            let joined = store
                .join(
                    &key,
                    &table,
                    &member,
                    &member_session.session,
                    &settings.node,
                    settings.session,
                    partitions,
                )
                .await?;
            debug!(group = %key.group, %member, generation = joined.generation, partitions = ?joined.partitions, "joined the consumer group");
            loop {
                let contended = store.contended(&key, &member, &joined.partitions).await?;
                if contended.is_empty() {
                    break 'join joined;
                }
                debug!(group = %key.group, %member, ?contended, "waiting for partitions to be released");
                tokio::time::sleep(settings.tick()).await;
                match store
                    .heartbeat(
                        &key,
                        &member,
                        &member_session.session,
                        joined.generation,
                        settings.session,
                    )
                    .await?
                {
                    Heartbeat::Steady => {}
                    Heartbeat::Rebalanced(_) => continue 'join,
                    Heartbeat::Gone => {
                        return Err(ReadError::GroupMemberGone {
                            group: key.group.clone(),
                            member,
                        });
                    }
                }
            }
        };
        let stream = self.start_assigned(read, &key, &joined.partitions).await?;
        metrics::counter!("unitable_consumer_group_joins_total", "table" => table.clone(), "group" => key.group.clone())
            .increment(1);
        member_session.generation = joined.generation;
        member_session.partitions = joined.partitions.clone();
        let changes = watch(stream.changes, member_session);
        Ok(GroupStream {
            member,
            generation: joined.generation,
            partitions: joined.partitions,
            members: joined.members,
            stream: ChangeStream {
                as_of: stream.as_of,
                schema: stream.schema,
                changes,
                stats: stream.stats,
            },
        })
    }

    /// The stream of a member's partitions from the group's positions (the request's start for
    /// partitions without one). A member with no partitions gets a stream that only waits.
    async fn start_assigned(
        &self,
        read: &StreamRead,
        key: &GroupKey,
        mine: &[u32],
    ) -> ReadResult<ChangeStream> {
        let settings = self.group_settings()?;
        let committed = settings.store.committed(key).await?;
        let mut resume = PartitionOffsets::default();
        for p in mine {
            if let Some(c) = committed.get(p) {
                resume.set(PartitionId(*p), Offset(c.next_offset));
            }
        }
        let idle = mine.is_empty();
        let assigned = StreamRead {
            partitions: if idle {
                // Partition 0 stands in to describe the schema; nothing of it is read.
                vec![0]
            } else {
                mine.to_vec()
            },
            resume,
            subscriber: key.group.clone(),
            start: if idle {
                StreamStart::Latest
            } else {
                read.start.clone()
            },
            ..read.clone()
        };
        let mut stream = self.stream(&assigned).await?;
        if idle {
            stream.changes = Box::pin(futures::stream::pending());
            stream.as_of.offsets = PartitionOffsets::default();
        }
        Ok(stream)
    }

    /// Commits a member's positions (next offsets to read) at `generation`. Refused with
    /// [`ReadError::GroupFenced`] when the member is no longer at that generation or the
    /// partition is not its own; positions of earlier partitions in `offsets` stay committed.
    pub async fn commit_group(
        &self,
        table: &TableName,
        group: &str,
        member: &str,
        generation: i64,
        offsets: &PartitionOffsets,
    ) -> ReadResult<()> {
        let settings = self.group_settings()?;
        check_name("member id", member)?;
        let (key, def) = self.group_key(table, group).await?;
        for (p, o) in &offsets.0 {
            if p.0 >= def.changelog.partitions {
                return Err(ReadError::BadRequest {
                    reason: format!(
                        "table `{table}` has {} changelog partitions; there is no partition {p}",
                        def.changelog.partitions
                    ),
                });
            }
            if o.0 < 0 {
                return Err(ReadError::BadRequest {
                    reason: format!("offset {o} of partition {p} is negative"),
                });
            }
        }
        for (p, o) in &offsets.0 {
            if let Err(fenced) = settings
                .store
                .commit(&key, member, generation, p.0, o.0)
                .await?
            {
                metrics::counter!("unitable_consumer_group_commits_fenced_total", "table" => table.to_string(), "group" => group.to_string())
                    .increment(1);
                return Err(ReadError::GroupFenced {
                    group: group.to_string(),
                    member: member.to_string(),
                    generation,
                    partition: p.0,
                    reason: fenced_reason(&fenced, generation),
                });
            }
        }
        Ok(())
    }

    /// The consumer groups of `table` (only `group` when given), with members, positions and
    /// lag.
    pub async fn describe_groups(
        &self,
        table: &TableName,
        group: Option<&str>,
    ) -> ReadResult<Vec<GroupDescription>> {
        let settings = self.group_settings()?;
        let loaded = self.catalog.load(table).await?;
        let def = TableDef::from_iceberg(table.clone(), loaded.metadata())?;
        let uuid = loaded.metadata().uuid().to_string();
        let rows = settings.store.groups(Some(&uuid)).await?;
        let watermarks = freshness::watermarks(
            self.changelog.as_ref(),
            &def.changelog.topic,
            def.changelog.partitions,
        )
        .await?;
        let mut out = Vec::new();
        for row in rows {
            if group.is_some_and(|g| g != row.group) {
                continue;
            }
            let key = GroupKey {
                table_uuid: uuid.clone(),
                group: row.group.clone(),
            };
            // The generation and the members it counts, as one view (expired members removed
            // first): never members of one state of the group beside the generation of another.
            let Some(state) = settings.store.state(&key).await? else {
                continue;
            };
            let members: Vec<MemberDescription> = state
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member: m.member,
                    node: m.node,
                    generation: m.generation,
                    partitions: m.partitions,
                })
                .collect();
            let mut committed = settings.store.committed(&key).await?;
            let mut partitions = Vec::new();
            let mut lag_records = 0;
            for (p, w) in watermarks.iter().enumerate() {
                let p = p as u32;
                let committed = committed.remove(&p);
                let from = committed.as_ref().map_or(w.low.0, |c| c.next_offset);
                let lag = Offset(from.max(w.low.0)).records_until(w.high);
                lag_records += lag;
                partitions.push(PartitionDescription {
                    partition: p,
                    committed,
                    high: w.high.0,
                    lag,
                    owner: members
                        .iter()
                        .filter(|m| m.partitions.contains(&p))
                        .max_by_key(|m| m.generation)
                        .map(|m| m.member.clone()),
                });
            }
            out.push(GroupDescription {
                group: row.group,
                generation: state.generation,
                members,
                partitions,
                lag_records,
            });
        }
        if let Some(g) = group
            && out.is_empty()
        {
            return Err(ReadError::GroupNotFound {
                table: table.clone(),
                group: g.to_string(),
            });
        }
        Ok(out)
    }

    /// Sets `unitable_consumer_group_lag_records` and `unitable_consumer_group_members` for
    /// every group of every table, every `interval`, until `shutdown` resolves.
    pub async fn report_group_metrics(
        &self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let Ok(settings) = self.group_settings() else {
            return;
        };
        tokio::pin!(shutdown);
        loop {
            let tables: BTreeSet<String> = match settings.store.groups(None).await {
                Ok(rows) => rows.into_iter().map(|r| r.table_name).collect(),
                Err(e) => {
                    warn!("cannot list consumer groups for metrics: {e}");
                    BTreeSet::new()
                }
            };
            for name in &tables {
                let Ok(table) = name.parse::<TableName>() else {
                    continue;
                };
                match self.describe_groups(&table, None).await {
                    Ok(groups) => {
                        for g in groups {
                            metrics::gauge!("unitable_consumer_group_lag_records", "table" => name.clone(), "group" => g.group.clone())
                                .set(g.lag_records as f64);
                            metrics::gauge!("unitable_consumer_group_members", "table" => name.clone(), "group" => g.group.clone())
                                .set(g.members.len() as f64);
                        }
                    }
                    // A dropped table: its groups are no longer reported.
                    Err(ReadError::Table(unitable_core::Error::TableNotFound { .. })) => {}
                    Err(e) => debug!(table = %name, "cannot describe consumer groups: {e}"),
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

fn fenced_reason(fenced: &Fenced, generation: i64) -> String {
    match fenced {
        Fenced::NotAMember => "the member is not in the group (its stream ended, or it expired); \
                               its partitions' records go to their new owners"
            .into(),
        Fenced::Generation { member, group } => format!(
            "generation {generation} is over (the member synced to generation {member}, the \
             group is at {group}): the group rebalanced; commit with the generation of the \
             current stream"
        ),
        Fenced::NotAssigned { assigned } => {
            format!("the partition is not the member's (its partitions: {assigned:?})")
        }
    }
}

/// A member's stream as the serving node keeps it: renewed every tick, ended when the group
/// moves on, removed from the group when the client leaves.
struct Session {
    settings: Arc<GroupSettings>,
    key: GroupKey,
    member: String,
    session: String,
    generation: i64,
    partitions: Vec<u32>,
    auto_commit: bool,
    /// Keep the member's row on drop (the stream ended for a rebalance: the client reconnects
    /// with the same id and keeps its place; the row expires if it does not).
    keep: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let store = self.settings.store.clone();
        let key = self.key.clone();
        let member = std::mem::take(&mut self.member);
        let session = std::mem::take(&mut self.session);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                match store.leave(&key, &member, &session).await {
                    Ok(()) => debug!(group = %key.group, %member, "left the consumer group"),
                    Err(e) => warn!(group = %key.group, %member, "cannot leave the consumer group (the member expires instead): {e}"),
                }
            });
        }
    }
}

impl Session {
    async fn auto_commit(&self, next: &PartitionOffsets) -> ReadResult<()> {
        for p in &self.partitions {
            let offset = next.get(PartitionId(*p));
            if let Err(fenced) = self
                .settings
                .store
                .commit(&self.key, &self.member, self.generation, *p, offset.0)
                .await?
            {
                return Err(ReadError::GroupFenced {
                    group: self.key.group.clone(),
                    member: self.member.clone(),
                    generation: self.generation,
                    partition: *p,
                    reason: fenced_reason(&fenced, self.generation),
                });
            }
        }
        Ok(())
    }
}

/// `changes` under the member's session: renews it every tick and ends with the reason when
/// the group moves on or the member is gone.
fn watch(changes: ChangeBatches, session: Session) -> ChangeBatches {
    let tick = session.settings.tick();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Some((changes, session, ticker));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut changes, mut session, mut ticker) = state?;
        loop {
            tokio::select! {
                // `next` is cancel-safe: a batch is never lost to the tick.
                item = changes.next() => {
                    return match item {
                        Some(Ok(batch)) => {
                            if session.auto_commit
                                && let Err(e) = session.auto_commit(&batch.next_offsets).await
                            {
                                return Some((Err(e), None));
                            }
                            Some((Ok(batch), Some((changes, session, ticker))))
                        }
                        Some(Err(e)) => Some((Err(e), None)),
                        // The limit was reached: batches may still be on their way to the
                        // client, which commits them after processing; the member stays until
                        // its session runs out instead of leaving at once.
                        None => {
                            session.keep = true;
                            None
                        }
                    };
                }
                _ = ticker.tick() => {
                    let beat = session
                        .settings
                        .store
                        .heartbeat(
                            &session.key,
                            &session.member,
                            &session.session,
                            session.generation,
                            session.settings.session,
                        )
                        .await;
                    match beat {
                        Ok(Heartbeat::Steady) => {}
                        Ok(Heartbeat::Rebalanced(generation)) => {
                            session.keep = true;
                            metrics::counter!("unitable_consumer_group_rebalances_total", "group" => session.key.group.clone())
                                .increment(1);
                            return Some((
                                Err(ReadError::GroupRebalanced {
                                    group: session.key.group.clone(),
                                    member: session.member.clone(),
                                    generation,
                                }),
                                None,
                            ));
                        }
                        Ok(Heartbeat::Gone) => {
                            session.keep = true;
                            return Some((
                                Err(ReadError::GroupMemberGone {
                                    group: session.key.group.clone(),
                                    member: session.member.clone(),
                                }),
                                None,
                            ));
                        }
                        // The database is unreachable: keep streaming; the member expires
                        // if this lasts, and the next heartbeat that succeeds says so.
                        Err(e) => warn!(group = %session.key.group, member = %session.member, "cannot renew the consumer group member: {e}"),
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests;
