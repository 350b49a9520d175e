//! Consumer groups: named groups of STREAM readers that split a table's changelog partitions,
//! with membership, assignments and committed positions kept in the catalog database, so a
//! member may connect to any serve node and positions survive restarts and node changes.
//!
//! Three tables next to the SQL catalog's own:
//! - `unitable_consumer_groups`: one row per (table uuid, group) with its **generation**, which
//!   goes up by one whenever the set of members changes (a member joins, leaves or expires).
//! - `unitable_consumer_group_members`: one row per member, renewed by the node serving its stream
//!   (`expires_ms`, by the database's clock), with the generation it last synced at, the
//!   partitions it was given then, and the session (connection) that owns the row.
//! - `unitable_consumer_group_offsets`: the committed position (next offset to read) per (table uuid,
//!   group, partition).
//!
//! Assignment is a pure function of the member ids and the partition count
//! ([`assign_partitions`]), so every member computing it at the same generation gets its part of
//! the same answer. A member only starts reading a partition once no other live member row lists
//! it ([`GroupStore::contended`]): the previous owner either synced to the new generation (after
//! committing what it was sent), left, or expired. A commit is applied only if the committing
//! member's row still holds the generation the commit names and lists the partition, checked in
//! the same statement that writes the position ([`GroupStore::commit`]); anything else is
//! fenced. See docs/rfcs/0002-consumer-groups.md.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::AnyPool;

use crate::catalog::{CatalogConfig, SqlDialect};
use crate::error::{Error, Result};
use crate::lease::{assign, db_now, open_catalog_db};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS unitable_consumer_groups (\
       table_uuid VARCHAR(64) NOT NULL, \
       group_name VARCHAR(255) NOT NULL, \
       table_name VARCHAR(1024) NOT NULL, \
       generation BIGINT NOT NULL, \
       PRIMARY KEY (table_uuid, group_name))",
    "CREATE TABLE IF NOT EXISTS unitable_consumer_group_members (\
       table_uuid VARCHAR(64) NOT NULL, \
       group_name VARCHAR(255) NOT NULL, \
       member_id VARCHAR(255) NOT NULL, \
       session_id VARCHAR(64) NOT NULL, \
       node_id VARCHAR(255) NOT NULL, \
       generation BIGINT NOT NULL, \
       partitions TEXT NOT NULL, \
       expires_ms BIGINT NOT NULL, \
       PRIMARY KEY (table_uuid, group_name, member_id))",
    "CREATE TABLE IF NOT EXISTS unitable_consumer_group_offsets (\
       table_uuid VARCHAR(64) NOT NULL, \
       group_name VARCHAR(255) NOT NULL, \
       partition_id BIGINT NOT NULL, \
       next_offset BIGINT NOT NULL, \
       member_id VARCHAR(255) NOT NULL, \
       generation BIGINT NOT NULL, \
       committed_ms BIGINT NOT NULL, \
       PRIMARY KEY (table_uuid, group_name, partition_id))",
];

/// The longest group name or member id.
pub const MAX_NAME_LEN: usize = 255;

/// Which group of which table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// The table's Iceberg uuid (a dropped and re-created table starts with no positions).
    pub table_uuid: String,
    /// The group's name.
    pub group: String,
}

/// A member's place in its group after joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The group's generation the assignment belongs to.
    pub generation: i64,
    /// The partitions this member reads, ascending.
    pub partitions: Vec<u32>,
    /// Every member of the group at that generation, sorted.
    pub members: Vec<String>,
}

/// What a member's heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Still a member at its generation.
    Steady,
    /// The group moved on to this generation: the member must sync again.
    Rebalanced(i64),
    /// The member's row is gone or belongs to a newer session of the same member id.
    Gone,
}

/// Why a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// The member is not in the group (it left, expired, or never joined).
    NotAMember,
    /// The member synced to another generation since (or the commit names a wrong one).
    Generation {
        /// The member's generation now.
        member: i64,
        /// The group's generation now.
        group: i64,
    },
    /// The partition is not among the member's.
    NotAssigned {
        /// The member's partitions.
        assigned: Vec<u32>,
    },
}

/// A member row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The member id.
    pub member: String,
    /// The node serving its stream.
    pub node: String,
    /// The generation it last synced at.
    pub generation: i64,
    /// Its partitions at that generation.
    pub partitions: Vec<u32>,
    /// When it expires without renewal (database clock, ms since the Unix epoch).
    pub expires_ms: i64,
}

/// A group's generation with its members, as one consistent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's generation.
    pub generation: i64,
    /// Its member rows at that generation, sorted by id.
    pub members: Vec<MemberRow>,
}

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to read.
    pub next_offset: i64,
    /// The member that committed it.
    pub member: String,
    /// At which generation.
    pub generation: i64,
    /// When (database clock).
    pub committed_ms: i64,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The table's uuid.
    pub table_uuid: String,
    /// The table's name when the group was created.
    pub table_name: String,
    /// The group's name.
    pub group: String,
    /// Its generation.
    pub generation: i64,
}

/// Which partitions each member reads: every partition goes to exactly one member, loads differ
/// by at most one, and a member joining or leaving moves little more than its own share
/// (rendezvous hashing with a cap, as for committer leases). Members with nothing to read
/// (more members than partitions) get an empty list.
pub fn assign_partitions(partitions: u32, members: &[String]) -> BTreeMap<String, Vec<u32>> {
    let names: Vec<String> = (0..partitions).map(|p| p.to_string()).collect();
    let mut out: BTreeMap<String, Vec<u32>> =
        members.iter().map(|m| (m.clone(), Vec::new())).collect();
    for (partition, member) in assign(&names, members, &BTreeMap::new()) {
        if let (Ok(p), Some(list)) = (partition.parse::<u32>(), out.get_mut(&member)) {
            list.push(p);
        }
    }
    for list in out.values_mut() {
        list.sort_unstable();
    }
    out
}

/// `,0,3,5,`: partitions as stored, so `LIKE '%,3,%'` finds a partition.
fn encode_partitions(partitions: &[u32]) -> String {
    let mut out = String::from(",");
    for p in partitions {
        out.push_str(&p.to_string());
        out.push(',');
    }
    out
}

fn decode_partitions(text: &str) -> Vec<u32> {
    text.split(',').filter_map(|p| p.parse().ok()).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::GroupDatabase {
        operation,
        reason: e.to_string(),
    }
}

/// The consumer-group tables in a SQL catalog's database.
#[derive(Debug, Clone)]
pub struct GroupStore {
    pool: AnyPool,
    dialect: SqlDialect,
}

impl GroupStore {
    /// Connects to the database of the SQL catalog in `config`, creating the tables if
    /// missing; `None` for a REST catalog.
    pub async fn connect(config: &CatalogConfig) -> Result<Option<Self>> {
        Ok(open_catalog_db(config, 4, SCHEMA)
            .await?
            .map(|(pool, dialect)| Self { pool, dialect }))
    }

    fn sql(&self, text: &str) -> String {
        self.dialect
            .placeholders(&text.replace("{now}", db_now(self.dialect)))
    }

    async fn bump_on(&self, conn: &mut sqlx::AnyConnection, key: &GroupKey) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE unitable_consumer_groups SET generation = generation + 1 \
             WHERE table_uuid = $1 AND group_name = $2",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .execute(conn)
        .await
        .map_err(db("start a new generation of a consumer group"))?;
        Ok(())
    }

    /// Removes the group's expired members; a removal starts a new generation.
    async fn sweep(&self, key: &GroupKey) -> Result<()> {
        // Removal and the new generation in one transaction: no reader sees the group without
        // the member but still at the generation whose assignment included it.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("remove expired consumer group members"))?;
        let gone = sqlx::query(&self.sql(
            "DELETE FROM unitable_consumer_group_members \
             WHERE table_uuid = $1 AND group_name = $2 AND expires_ms <= {now}",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("remove expired consumer group members"))?;
        if gone.rows_affected() > 0 {
            self.bump_on(&mut tx, key).await?;
        }
        tx.commit()
            .await
            .map_err(db("remove expired consumer group members"))?;
        Ok(())
    }

    async fn generation(&self, key: &GroupKey) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(&self.sql(
            "SELECT generation FROM unitable_consumer_groups \
             WHERE table_uuid = $1 AND group_name = $2",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a consumer group's generation"))?;
        Ok(row.map(|(g,)| g))
    }

    /// Joins (or re-joins) `member` to the group for a stream `session` served by `node`, and
    /// syncs it to the group's current generation: returns its partitions of a table with
    /// `partitions` changelog partitions. A new member id starts a new generation; a member id
    /// already in the group keeps the generation and takes the row over for `session` (the
    /// older session's stream sees [`Heartbeat::Gone`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        &self,
        key: &GroupKey,
        table_name: &str,
        member: &str,
        session: &str,
        node: &str,
        ttl: Duration,
        partitions: u32,
    ) -> Result<Joined> {
        let ttl = millis(ttl);
        sqlx::query(&self.sql(
            "INSERT INTO unitable_consumer_groups (table_uuid, group_name, table_name, generation) \
             VALUES ($1, $2, $3, 0) ON CONFLICT (table_uuid, group_name) DO NOTHING",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(table_name)
        .execute(&self.pool)
        .await
        .map_err(db("create a consumer group"))?;
        self.sweep(key).await?;
        // A new member and the generation it starts land together: no one reads the group
        // with the member but at the generation before it (whose assignment left it out).
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("add a consumer group member"))?;
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO unitable_consumer_group_members (table_uuid, group_name, member_id, session_id, \
             node_id, generation, partitions, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, -1, ',', {now} + $6) \
             ON CONFLICT (table_uuid, group_name, member_id) DO NOTHING",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .bind(session)
        .bind(node)
        .bind(ttl)
        .execute(&mut *tx)
        .await
        .map_err(db("add a consumer group member"))?;
        if inserted.rows_affected() == 1 {
            self.bump_on(&mut tx, key).await?;
        } else {
            sqlx::query(&self.sql(
                "UPDATE unitable_consumer_group_members SET session_id = $1, node_id = $2, \
                 expires_ms = {now} + $3 \
                 WHERE table_uuid = $4 AND group_name = $5 AND member_id = $6",
            ))
            .bind(session)
            .bind(node)
            .bind(ttl)
            .bind(key.table_uuid.as_str())
            .bind(key.group.as_str())
            .bind(member)
            .execute(&mut *tx)
            .await
            .map_err(db("renew a consumer group member"))?;
        }
        tx.commit()
            .await
            .map_err(db("add a consumer group member"))?;
        // Sync: the assignment at the current generation, written only if the generation did
        // not move meanwhile (then compute it again).
        loop {
            // The generation and the members it counts, from one statement.
            let state = self
                .snapshot(key)
                .await?
                .ok_or_else(|| Error::GroupDatabase {
                    operation: "sync a consumer group member",
                    reason: format!("the group `{}` vanished while joining it", key.group),
                })?;
            let generation = state.generation;
            let members: Vec<String> = state.members.into_iter().map(|m| m.member).collect();
            let mine = assign_partitions(partitions, &members)
                .remove(member)
                .unwrap_or_default();
            let synced = sqlx::query(&self.sql(
                "UPDATE unitable_consumer_group_members SET generation = $1, partitions = $2 \
                 WHERE table_uuid = $3 AND group_name = $4 AND member_id = $5 AND session_id = $6 \
                 AND $7 = (SELECT g.generation FROM unitable_consumer_groups g \
                           WHERE g.table_uuid = $8 AND g.group_name = $9)",
            ))
            .bind(generation)
            .bind(encode_partitions(&mine))
            .bind(key.table_uuid.as_str())
            .bind(key.group.as_str())
            .bind(member)
            .bind(session)
            .bind(generation)
            .bind(key.table_uuid.as_str())
            .bind(key.group.as_str())
            .execute(&self.pool)
            .await
            .map_err(db("sync a consumer group member"))?;
            if synced.rows_affected() == 1 {
                return Ok(Joined {
                    generation,
                    partitions: mine,
                    members,
                });
            }
            if !self.owns(key, member, session).await? {
                // A newer session of the same member took the row over.
                return Err(Error::GroupMemberReplaced {
                    group: key.group.clone(),
                    member: member.to_string(),
                });
            }
        }
    }

    async fn owns(&self, key: &GroupKey, member: &str, session: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(&self.sql(
            "SELECT generation FROM unitable_consumer_group_members \
             WHERE table_uuid = $1 AND group_name = $2 AND member_id = $3 AND session_id = $4",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .bind(session)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a consumer group member"))?;
        Ok(row.is_some())
    }

    /// Renews `member`'s row for `session` by `ttl`, removes expired members, and says whether
    /// the member is still at `generation`.
    pub async fn heartbeat(
        &self,
        key: &GroupKey,
        member: &str,
        session: &str,
        generation: i64,
        ttl: Duration,
    ) -> Result<Heartbeat> {
        let renewed = sqlx::query(&self.sql(
            "UPDATE unitable_consumer_group_members SET expires_ms = {now} + $1 \
             WHERE table_uuid = $2 AND group_name = $3 AND member_id = $4 AND session_id = $5 \
             AND expires_ms > {now}",
        ))
        .bind(millis(ttl))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .bind(session)
        .execute(&self.pool)
        .await
        .map_err(db("renew a consumer group member"))?;
        if renewed.rows_affected() == 0 {
            return Ok(Heartbeat::Gone);
        }
        self.sweep(key).await?;
        match self.generation(key).await? {
            Some(g) if g == generation => Ok(Heartbeat::Steady),
            Some(g) => Ok(Heartbeat::Rebalanced(g)),
            None => Ok(Heartbeat::Gone),
        }
    }

    /// Removes `member` (when `session` still owns it): its stream ended. Starts a new
    /// generation so the others take its partitions at once.
    pub async fn leave(&self, key: &GroupKey, member: &str, session: &str) -> Result<()> {
        // As in `sweep`: the removal and the new generation land together.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("remove a consumer group member"))?;
        let gone = sqlx::query(&self.sql(
            "DELETE FROM unitable_consumer_group_members \
             WHERE table_uuid = $1 AND group_name = $2 AND member_id = $3 AND session_id = $4",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .bind(session)
        .execute(&mut *tx)
        .await
        .map_err(db("remove a consumer group member"))?;
        if gone.rows_affected() > 0 {
            self.bump_on(&mut tx, key).await?;
        }
        tx.commit()
            .await
            .map_err(db("remove a consumer group member"))?;
        Ok(())
    }

    /// Every member row of the group (expired ones included until swept), sorted by id.
    pub async fn members(&self, key: &GroupKey) -> Result<Vec<MemberRow>> {
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(&self.sql(
            "SELECT member_id, node_id, generation, partitions, expires_ms \
             FROM unitable_consumer_group_members WHERE table_uuid = $1 AND group_name = $2 \
             ORDER BY member_id",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list consumer group members"))?;
        Ok(rows
            .into_iter()
            .map(
                |(member, node, generation, partitions, expires_ms)| MemberRow {
                    member,
                    node,
                    generation,
                    partitions: decode_partitions(&partitions),
                    expires_ms,
                },
            )
            .collect())
    }

    /// The group's generation and its member rows, read in one statement so both belong to
    /// the same state of the group (every change of the members moves the generation in the
    /// same transaction). Expired members not swept yet are listed: they count in the
    /// generation until a sweep removes them and starts the next. `None` for no such group.
    async fn snapshot(&self, key: &GroupKey) -> Result<Option<GroupState>> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(&self.sql(
            "SELECT g.generation, m.member_id, m.node_id, m.generation, m.partitions, \
             m.expires_ms FROM unitable_consumer_groups g \
             LEFT JOIN unitable_consumer_group_members m \
             ON m.table_uuid = g.table_uuid AND m.group_name = g.group_name \
             WHERE g.table_uuid = $1 AND g.group_name = $2 ORDER BY m.member_id",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("read a consumer group's generation and members"))?;
        let Some(generation) = rows.first().map(|r| r.0) else {
            return Ok(None);
        };
        let members = rows
            .into_iter()
            .filter_map(|(_, member, node, generation, partitions, expires_ms)| {
                Some(MemberRow {
                    member: member?,
                    node: node?,
                    generation: generation?,
                    partitions: decode_partitions(&partitions?),
                    expires_ms: expires_ms?,
                })
            })
            .collect();
        Ok(Some(GroupState {
            generation,
            members,
        }))
    }

    /// The group's generation and members as one consistent view, after removing expired
    /// members (which starts a new generation, as a member's heartbeat would): what a
    /// description shows. `None` for no such group.
    pub async fn state(&self, key: &GroupKey) -> Result<Option<GroupState>> {
        self.sweep(key).await?;
        self.snapshot(key).await
    }

    /// The partitions of `mine` that another live member's row still lists (its owner has not
    /// synced to the new generation, left or expired yet), with that member.
    pub async fn contended(
        &self,
        key: &GroupKey,
        member: &str,
        mine: &[u32],
    ) -> Result<Vec<(u32, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(&self.sql(
            "SELECT member_id, partitions FROM unitable_consumer_group_members \
             WHERE table_uuid = $1 AND group_name = $2 AND member_id <> $3 \
             AND expires_ms > {now}",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list consumer group members"))?;
        let mut out = Vec::new();
        for (other, partitions) in rows {
            for p in decode_partitions(&partitions) {
                if mine.contains(&p) {
                    out.push((p, other.clone()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Commits `next_offset` as the group's position in `partition` for `member` at
    /// `generation`. Applied only when, in the same statement, the member's live row is at
    /// that generation and lists the partition; otherwise says why it was fenced.
    pub async fn commit(
        &self,
        key: &GroupKey,
        member: &str,
        generation: i64,
        partition: u32,
        next_offset: i64,
    ) -> Result<Result<(), Fenced>> {
        let done = sqlx::query(&self.sql(
            "INSERT INTO unitable_consumer_group_offsets (table_uuid, group_name, partition_id, \
             next_offset, member_id, generation, committed_ms) \
             SELECT $1, $2, $3, $4, $5, $6, {now} WHERE EXISTS (\
               SELECT 1 FROM unitable_consumer_group_members m WHERE m.table_uuid = $7 \
               AND m.group_name = $8 AND m.member_id = $9 AND m.generation = $10 \
               AND m.expires_ms > {now} AND m.partitions LIKE $11) \
             ON CONFLICT (table_uuid, group_name, partition_id) DO UPDATE SET \
             next_offset = excluded.next_offset, member_id = excluded.member_id, \
             generation = excluded.generation, committed_ms = excluded.committed_ms",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(i64::from(partition))
        .bind(next_offset)
        .bind(member)
        .bind(generation)
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .bind(member)
        .bind(generation)
        .bind(format!("%,{partition},%"))
        .execute(&self.pool)
        .await
        .map_err(db("commit a consumer group position"))?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let group = self.generation(key).await?.unwrap_or(0);
        let row = self
            .members(key)
            .await?
            .into_iter()
            .find(|m| m.member == member);
        Ok(Err(match row {
            None => Fenced::NotAMember,
            Some(m) if m.generation != generation => Fenced::Generation {
                member: m.generation,
                group,
            },
            // Listed, at the right generation, yet refused: it expired before being swept.
            Some(m) if m.partitions.contains(&partition) => Fenced::NotAMember,
            Some(m) => Fenced::NotAssigned {
                assigned: m.partitions,
            },
        }))
    }

    /// The group's committed positions by partition.
    pub async fn committed(&self, key: &GroupKey) -> Result<BTreeMap<u32, Committed>> {
        let rows: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(&self.sql(
            "SELECT partition_id, next_offset, member_id, generation, committed_ms \
             FROM unitable_consumer_group_offsets WHERE table_uuid = $1 AND group_name = $2",
        ))
        .bind(key.table_uuid.as_str())
        .bind(key.group.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("read consumer group positions"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, next_offset, member, generation, committed_ms)| {
                Some((
                    u32::try_from(p).ok()?,
                    Committed {
                        next_offset,
                        member,
                        generation,
                        committed_ms,
                    },
                ))
            })
            .collect())
    }

    /// The groups of a table (`Some(uuid)`), or of every table.
    pub async fn groups(&self, table_uuid: Option<&str>) -> Result<Vec<GroupRow>> {
        let rows: Vec<(String, String, String, i64)> = match table_uuid {
            Some(uuid) => {
                sqlx::query_as(&self.sql(
                    "SELECT table_uuid, table_name, group_name, generation \
                 FROM unitable_consumer_groups WHERE table_uuid = $1 ORDER BY group_name",
                ))
                .bind(uuid)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as(&self.sql(
                    "SELECT table_uuid, table_name, group_name, generation \
                 FROM unitable_consumer_groups ORDER BY table_name, group_name",
                ))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db("list consumer groups"))?;
        Ok(rows
            .into_iter()
            .map(|(table_uuid, table_name, group, generation)| GroupRow {
                table_uuid,
                table_name,
                group,
                generation,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
