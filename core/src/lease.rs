//! Committer leases: which serve node commits which table, kept in the catalog database.
//!
//! Two tables next to the SQL catalog's own (`unitable_nodes`, `unitable_committer_leases`):
//! every serve node renews a row for itself (its membership) and one per table it commits
//! (its lease), each with an expiry. Expiries are computed and compared by the database's
//! clock, never by a node's, so clock skew between nodes cannot make two of them believe they
//! hold the same lease. A lease is taken with a single conditional statement (free, expired,
//! or already ours), so at most one node holds a table's lease at any database instant.
//!
//! The lease decides *who should* commit; it does not make commits safe by itself (a node can
//! pause past its lease and wake up mid-commit). Safety stays with the committer epoch in the
//! Iceberg table properties: a new owner claims a higher epoch with a compare-and-swap commit
//! before it commits, and every row delta requires the epoch its committer claimed. See
//! docs/rfcs/0001-committer-leases.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::bucket::murmur2;
use crate::catalog::{CatalogConfig, SqlDialect, sql_url};
use crate::error::{Error, Result};
use crate::naming::TableName;

/// The membership table (also read by the write request log).
pub(crate) const NODES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS unitable_nodes (\
       node_id VARCHAR(255) NOT NULL PRIMARY KEY, \
       expires_ms BIGINT NOT NULL)";

const SCHEMA: &[&str] = &[
    NODES_SCHEMA,
    "CREATE TABLE IF NOT EXISTS unitable_committer_leases (\
       table_name VARCHAR(1024) NOT NULL PRIMARY KEY, \
       owner VARCHAR(255) NOT NULL, \
       expires_ms BIGINT NOT NULL, \
       acquired BIGINT NOT NULL)",
];

/// Who holds a table's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The node id of the holder.
    pub owner: String,
    /// When the lease runs out, by the database's clock (ms since the Unix epoch).
    pub expires_ms: i64,
    /// How many times the lease has been taken (by anyone) since the row was created.
    pub acquired: i64,
    /// How long the lease had left when it was read, by the database's clock (so a node can
    /// time its next look at an expiry without comparing its clock with the database's).
    pub remaining: Duration,
}

/// The lease and membership tables in a SQL catalog's database.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    pool: AnyPool,
    dialect: SqlDialect,
}

pub(crate) fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::LeaseDatabase {
        operation,
        reason: e.to_string(),
    }
}

/// A connection pool to the database of the SQL catalog in `config`, with `schema` applied
/// (`CREATE TABLE IF NOT EXISTS ...`); `None` for a REST catalog.
pub(crate) async fn open_catalog_db(
    config: &CatalogConfig,
    max_connections: u32,
    schema: &[&str],
) -> Result<Option<(AnyPool, SqlDialect)>> {
    let Some((url, dialect)) = sql_url(&config.uri)? else {
        return Ok(None);
    };
    sqlx::any::install_default_drivers();
    crate::catalog::prepare_sqlite(&config.uri).await?;
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .map_err(db("connect to the catalog database"))?;
    for statement in schema {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .map_err(db("create unitable's tables in the catalog database"))?;
    }
    Ok(Some((pool, dialect)))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LeaseStore {
    /// Connects to the database of the SQL catalog in `config` and creates the lease tables if
    /// they are missing. `None` for a REST catalog, which has no database to hold leases.
    pub async fn connect(config: &CatalogConfig) -> Result<Option<Self>> {
        Ok(open_catalog_db(config, 2, SCHEMA)
            .await?
            .map(|(pool, dialect)| Self { pool, dialect }))
    }

    fn sql(&self, text: &str) -> String {
        self.dialect
            .placeholders(&text.replace("{now}", db_now(self.dialect)))
    }

    /// Renews `node`'s membership for `ttl` and returns the live nodes (this one included),
    /// sorted.
    pub async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Vec<String>> {
        let ttl = millis(ttl);
        let updated = sqlx::query(
            &self.sql("UPDATE unitable_nodes SET expires_ms = {now} + $1 WHERE node_id = $2"),
        )
        .bind(ttl)
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("renew this node's membership"))?;
        if updated.rows_affected() == 0 {
            sqlx::query(&self.sql(
                "INSERT INTO unitable_nodes (node_id, expires_ms) VALUES ($1, {now} + $2) \
                 ON CONFLICT (node_id) DO UPDATE SET expires_ms = excluded.expires_ms",
            ))
            .bind(node)
            .bind(ttl)
            .execute(&self.pool)
            .await
            .map_err(db("register this node"))?;
        }
        let rows: Vec<(String,)> =
            sqlx::query_as(&self.sql(
                "SELECT node_id FROM unitable_nodes WHERE expires_ms > {now} ORDER BY node_id",
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list the live nodes"))?;
        // Expired members are gone for good; keep the table small.
        sqlx::query(&self.sql("DELETE FROM unitable_nodes WHERE expires_ms < {now} - 3600000"))
            .execute(&self.pool)
            .await
            .map_err(db("remove long-dead nodes"))?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Ends `node`'s membership at once (a graceful stop), so the others take over its share
    /// without waiting for the expiry.
    pub async fn leave(&self, node: &str) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM unitable_nodes WHERE node_id = $1"))
            .bind(node)
            .execute(&self.pool)
            .await
            .map_err(db("remove this node's membership"))?;
        Ok(())
    }

    /// Takes the lease of `table` for `node` for `ttl` when it is free, expired or already
    /// `node`'s. Returns whether `node` holds it now.
    pub async fn acquire(&self, table: &TableName, node: &str, ttl: Duration) -> Result<bool> {
        let ttl = millis(ttl);
        let key = table.to_string();
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO unitable_committer_leases (table_name, owner, expires_ms, acquired) \
             VALUES ($1, $2, {now} + $3, 1) ON CONFLICT (table_name) DO NOTHING",
        ))
        .bind(key.as_str())
        .bind(node)
        .bind(ttl)
        .execute(&self.pool)
        .await
        .map_err(db("create a committer lease"))?;
        if inserted.rows_affected() == 1 {
            return Ok(true);
        }
        let taken = sqlx::query(&self.sql(
            "UPDATE unitable_committer_leases \
             SET owner = $1, expires_ms = {now} + $2, acquired = acquired + 1 \
             WHERE table_name = $3 AND (expires_ms <= {now} OR owner = $4)",
        ))
        .bind(node)
        .bind(ttl)
        .bind(key.as_str())
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("take a committer lease"))?;
        Ok(taken.rows_affected() == 1)
    }

    /// Extends every unexpired lease `node` holds by `ttl` and returns the tables they are
    /// for. A lease that expired before the renewal is not renewed (another node may have it).
    pub async fn renew_all(&self, node: &str, ttl: Duration) -> Result<BTreeSet<String>> {
        sqlx::query(&self.sql(
            "UPDATE unitable_committer_leases SET expires_ms = {now} + $1 \
             WHERE owner = $2 AND expires_ms > {now}",
        ))
        .bind(millis(ttl))
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("renew the committer leases"))?;
        let rows: Vec<(String,)> = sqlx::query_as(&self.sql(
            "SELECT table_name FROM unitable_committer_leases \
             WHERE owner = $1 AND expires_ms > {now}",
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list this node's committer leases"))?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Gives up `node`'s lease of `table` (after its committer stopped), so another node may
    /// take it at once.
    pub async fn release(&self, table: &TableName, node: &str) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE unitable_committer_leases SET expires_ms = 0 \
             WHERE table_name = $1 AND owner = $2",
        ))
        .bind(table.to_string())
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(db("release a committer lease"))?;
        Ok(())
    }

    /// Removes the lease row of a dropped table.
    pub async fn forget(&self, table: &TableName) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM unitable_committer_leases WHERE table_name = $1"))
            .bind(table.to_string())
            .execute(&self.pool)
            .await
            .map_err(db("remove a committer lease"))?;
        Ok(())
    }

    /// Every unexpired lease, by table name.
    pub async fn holders(&self) -> Result<BTreeMap<String, LeaseHolder>> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(&self.sql(
            "SELECT table_name, owner, expires_ms, acquired, expires_ms - {now} \
             FROM unitable_committer_leases WHERE expires_ms > {now}",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list the committer leases"))?;
        Ok(rows
            .into_iter()
            .map(|(table, owner, expires_ms, acquired, remaining_ms)| {
                (
                    table,
                    LeaseHolder {
                        owner,
                        expires_ms,
                        acquired,
                        remaining: Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)),
                    },
                )
            })
            .collect())
    }
}

/// The database's clock, in ms since the Unix epoch, as an SQL expression.
pub(crate) fn db_now(dialect: SqlDialect) -> &'static str {
    match dialect {
        SqlDialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
        SqlDialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// Which node should commit each table: every node computes the same answer from the same
/// live nodes, tables and current lease holders (`holders`: table -> the node holding its
/// lease now; holders that are not live nodes are ignored).
///
/// Loads differ by at most one table: each node's quota is the floor of the mean, plus one for
/// as many nodes as there are tables left over, given first to the nodes holding the most (so
/// as few tables as possible move). A table stays with its holder while the holder is within
/// its quota (moving a table costs a hand-over or a failover: seconds without commits), so a
/// node that joins takes only its share, from the nodes above theirs, and a node that leaves
/// moves only its own tables. The tables without a holder within quota go to the node ranking
/// highest for them among those below their quota (rendezvous hashing, so without holders the
/// answer still changes little when nodes come and go).
pub fn assign<'a>(
    tables: &'a [String],
    nodes: &[String],
    holders: &BTreeMap<String, String>,
) -> BTreeMap<&'a str, String> {
    assign_settling(tables, nodes, holders, &BTreeSet::new())
}

/// [`assign`], where the `young` nodes (live for less than a lease, in the caller's view) take
/// no table from a live holder yet: a table above its holder's quota stays there until a node
/// that is not young has room for it. Young nodes do get free tables. This damps flapping: a
/// node that restarts and dies again within seconds causes no hand-overs (each costs the
/// table seconds without commits), and one that stays takes its share a lease later, when the
/// failover that its restart may have followed has settled.
pub fn assign_settling<'a>(
    tables: &'a [String],
    nodes: &[String],
    holders: &BTreeMap<String, String>,
    young: &BTreeSet<String>,
) -> BTreeMap<&'a str, String> {
    let mut out = BTreeMap::new();
    if nodes.is_empty() {
        return out;
    }
    let mut nodes: Vec<&String> = nodes.iter().collect();
    nodes.sort();
    nodes.dedup();
    // Visit tables in a fixed order that does not depend on their names' sort order.
    let mut order: Vec<&String> = tables.iter().collect();
    order.sort_by_key(|t| (murmur2(t.as_bytes()), t.as_str()));
    order.dedup();
    let slot = |node: &str| nodes.binary_search_by(|n| n.as_str().cmp(node)).ok();
    let mut held = vec![0usize; nodes.len()];
    for table in &order {
        if let Some(i) = holders.get(table.as_str()).and_then(|h| slot(h)) {
            held[i] += 1;
        }
    }
    let floor = order.len() / nodes.len();
    let mut by_held: Vec<usize> = (0..nodes.len()).collect();
    by_held.sort_by_key(|&i| (std::cmp::Reverse(held[i]), nodes[i]));
    let mut quota = vec![floor; nodes.len()];
    for &i in by_held.iter().take(order.len() % nodes.len()) {
        quota[i] += 1;
    }
    let mut load = vec![0usize; nodes.len()];
    let mut unplaced = Vec::new();
    for table in order {
        match holders.get(table.as_str()).and_then(|h| slot(h)) {
            Some(i) if load[i] < quota[i] => {
                load[i] += 1;
                out.insert(table.as_str(), nodes[i].clone());
            }
            _ => unplaced.push(table),
        }
    }
    for table in unplaced {
        let holder = holders.get(table.as_str()).and_then(|h| slot(h));
        let best = (0..nodes.len())
            .filter(|&i| load[i] < quota[i] && (holder.is_none() || !young.contains(nodes[i])))
            .max_by_key(|&i| (rank(table, nodes[i]), std::cmp::Reverse(i)));
        // A held table with no room outside young nodes stays with its holder, over quota
        // (quota left unused elsewhere keeps room for every free table).
        if let Some(i) = best.or(holder) {
            load[i] += 1;
            out.insert(table.as_str(), nodes[i].clone());
        }
    }
    out
}

fn rank(table: &str, node: &str) -> i32 {
    let mut key = Vec::with_capacity(table.len() + node.len() + 1);
    key.extend_from_slice(table.as_bytes());
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    murmur2(&key)
}

#[cfg(test)]
mod tests;
