//! unitable's reader role: serves each access mode from the store that fits it and says exactly
//! which data it served ([`unitable_core::offsets::AsOf`]).
//!
//! - SNAPSHOT ([`snapshot`]): one Iceberg snapshot (latest, by id, or current at a time),
//!   deletes applied by iceberg-rust's scan.
//! - FRESH ([`snapshot`], [`pinned`], [`tail`]): the latest snapshot merged by key with the
//!   changelog from the snapshot's anchored offsets up to the heads at the time of the request,
//!   so every write acknowledged before the request is reflected.
//! - STREAM ([`stream`]): the changelog as changes from earliest, latest, offsets, a time, or a
//!   snapshot (its rows as inserts, then the changelog from its anchored offsets). Named
//!   consumer groups ([`group`]) split the partitions among members and keep their positions.
//! - LOOKUP ([`lookup`]): the latest rows of given keys, fresh, from an in-memory key index of
//!   a base snapshot, the changelog tail and single Parquet pages; or their rows as of a time
//!   or changelog offsets, exact to the record; and training sets (entity rows joined with
//!   feature columns as of each row's time).
//! - SQL ([`sql`]): DataFusion over the tables a statement names, each pinned like a SNAPSHOT
//!   or FRESH read.
//! - Reads in parts ([`parts`]): a SNAPSHOT or FRESH read (or a query) planned and pinned
//!   once, then served in parts (groups of data files) that together are the planned read;
//!   Arrow Flight's endpoints.
//!
//! Every mode takes a projection and a row filter ([`filter`]: a SQL boolean expression,
//! evaluated exactly, pushed into Iceberg scans where it translates). Batches stream out as
//! they are produced, so large results are never held in memory, and a slow client holds the
//! read back instead of growing buffers.

mod decode_metrics;
pub mod error;
pub mod filter;
pub mod followed;
pub mod freshness;
pub mod group;
pub mod lookup;
pub mod overview;
pub mod parts;
pub mod pinned;
mod range;
pub mod snapshot;
pub mod sql;
pub mod stream;
mod tail;
#[cfg(test)]
mod testing;

pub use error::{ReadError, ReadResult};
pub use group::{GroupRead, GroupSettings, GroupStream};
pub use lookup::{
    LookupAsOf, LookupKeys, LookupRequest, LookupResponse, MAX_KEYS as MAX_LOOKUP_KEYS,
    TrainingSet, TrainingSetSpec,
};
pub use parts::{PinSpec, ReadPart, ReadPlan};
pub use pinned::{BatchStream, Part, Pinned};
pub use snapshot::{FreshRead, ReadStream, SnapshotRead, SnapshotSelector};
pub use sql::{Query, QueryMode, QueryPlan, QueryStream};
pub use stream::{ChangeBatch, ChangeStream, StreamRead, StreamStart, StreamStats};
pub use tail::MAX_TAIL_RECORDS;

use std::sync::Arc;

use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::Changelog;

/// The reader role over a catalog and a changelog.
#[derive(Clone)]
pub struct Reader {
    catalog: TableCatalog,
    changelog: Arc<dyn Changelog>,
    lookups: Arc<lookup::LookupCache>,
    /// Changelog tails kept in memory for FRESH reads of keyed tables.
    followed: Arc<followed::FollowedTails>,
    /// Memory pool and spill space shared by every SQL query of this reader.
    sql_runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    /// Consumer groups, when the catalog has a database to keep them in.
    groups: Option<Arc<group::GroupSettings>>,
    /// STREAM reads open now, for the console.
    streams: Arc<overview::StreamRegistry>,
    /// Memory each training set's two sorts may hold before they spill.
    training_memory: usize,
    /// How old a fresh LOOKUP's answer may be when the request does not say.
    lookup_max_staleness: std::time::Duration,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A reader over `catalog` and `changelog`; SQL queries share [`sql::DEFAULT_MEMORY_LIMIT`].
    pub fn new(catalog: TableCatalog, changelog: Arc<dyn Changelog>) -> Self {
        Self {
            catalog,
            changelog,
            lookups: Arc::default(),
            followed: Arc::default(),
            sql_runtime: sql::runtime(sql::DEFAULT_MEMORY_LIMIT),
            groups: None,
            streams: Arc::default(),
            training_memory: lookup::DEFAULT_TRAINING_SET_MEMORY,
            lookup_max_staleness: std::time::Duration::ZERO,
        }
    }

    /// The same reader with fresh LOOKUPs that do not say otherwise
    /// ([`LookupRequest::max_staleness`]) reflecting every write acknowledged at least
    /// `max_staleness` before them, not every write acknowledged before them: the last high
    /// watermark read of a partition is waited for while it is that recent, so a lookup costs
    /// no changelog round trip (with Kafka, a request to the partition's leader). Zero, the
    /// default, reads the watermarks for every lookup.
    pub fn with_lookup_max_staleness(mut self, max_staleness: std::time::Duration) -> Self {
        self.lookup_max_staleness = max_staleness;
        self
    }

    /// The same reader with each training set sorting its entity rows and its answer within
    /// `bytes` together ([`lookup::DEFAULT_TRAINING_SET_MEMORY`] by default); past it the sorts
    /// spill sorted runs to temporary files.
    pub fn with_training_set_memory(mut self, bytes: usize) -> Self {
        self.training_memory = bytes;
        self
    }

    /// The same reader with SQL queries sharing at most `bytes` of memory for their operators
    /// (sorts, aggregations and joins; sorts and aggregations spill to temporary files past
    /// it, the rest fail with [`ReadError::QueryMemory`]).
    pub fn with_sql_memory_limit(mut self, bytes: usize) -> Self {
        self.sql_runtime = sql::runtime(bytes);
        self
    }

    /// The same reader with LOOKUP states (key indexes and changelog tails of every table)
    /// sharing at most `bytes` ([`lookup::DEFAULT_MEMORY_LIMIT`] by default): past it the
    /// least recently used tables' states are dropped (rebuilt on their next lookup), and a
    /// table whose state alone is larger fails with [`ReadError::LookupMemory`].
    pub fn with_lookup_memory_limit(mut self, bytes: usize) -> Self {
        self.lookups = Arc::new(lookup::LookupCache::new(
            bytes,
            self.lookups.blocks_bytes(),
            self.lookups.warms(),
        ));
        self
    }

    /// The tables of the catalog, of one namespace or all.
    pub async fn list_tables(
        &self,
        namespace: Option<&str>,
    ) -> ReadResult<Vec<unitable_core::naming::TableName>> {
        Ok(self.catalog.list(namespace).await?)
    }

    /// The Arrow schema of `table`'s current schema (what a FRESH read returns).
    pub async fn table_schema(
        &self,
        table: &unitable_core::naming::TableName,
    ) -> ReadResult<arrow::datatypes::SchemaRef> {
        let loaded = self.catalog.load(table).await?;
        let schema = iceberg::arrow::schema_to_arrow_schema(loaded.metadata().current_schema())
            .map_err(|e| ReadError::iceberg("map the schema", e))?;
        Ok(Arc::new(schema))
    }

    /// The same reader with LOOKUP keeping at most `bytes` of decoded data-file rows (blocks
    /// of rows around those looked up, every table together;
    /// [`lookup::DEFAULT_BLOCK_CACHE_BYTES`] by default), least recently useful first out.
    /// 0 decodes every lookup's rows from the files.
    pub fn with_lookup_cache(mut self, bytes: u64) -> Self {
        self.lookups = Arc::new(lookup::LookupCache::new(
            self.lookups.limit(),
            bytes,
            self.lookups.warms(),
        ));
        self
    }

    /// The same reader with LOOKUP warming its cache (`true`, the default) or not: a table's
    /// data files are decoded into the cache in the background when its lookup state is built
    /// and as new snapshots bring files in, as long as they fit in 80% of the cache's memory
    /// (all tables together). Without it only looked-up blocks are decoded and cached.
    pub fn with_lookup_cache_warming(mut self, warm: bool) -> Self {
        self.lookups = Arc::new(lookup::LookupCache::new(
            self.lookups.limit(),
            self.lookups.blocks_bytes(),
            warm,
        ));
        self
    }
}
