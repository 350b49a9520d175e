//! unitable's reader role: serves each access mode from the store that fits it and says exactly
//! which data it served ([`unitable_core::offsets::AsOf`]).
//!
//! Built so far: SNAPSHOT (an Iceberg snapshot: the latest, a snapshot id, or the snapshot
//! current at a time; projection; a row limit; deletes applied by iceberg-rust's scan; batches
//! stream out as the scan produces them, so large results are never held in memory); LOOKUP
//! (the latest rows of given keys, fresh, from an in-memory key index, the changelog tail and
//! single Parquet pages; [`lookup`]). STREAM,
//! FRESH and SQL come with the rest of the reader issue.

pub mod error;
pub mod freshness;
pub mod lookup;
pub mod snapshot;

pub use error::{ReadError, ReadResult};
pub use lookup::{LookupKeys, LookupRequest, LookupResponse};
pub use snapshot::{SnapshotRead, SnapshotSelector};

use std::sync::Arc;

use unitable_core::catalog::TableCatalog;
use unitable_core::changelog::Changelog;

/// The reader role over a catalog and a changelog.
#[derive(Debug, Clone)]
pub struct Reader {
    catalog: TableCatalog,
    changelog: Arc<dyn Changelog>,
    lookups: Arc<lookup::LookupCache>,
}

impl Reader {
    /// A reader over `catalog` and `changelog`.
    pub fn new(catalog: TableCatalog, changelog: Arc<dyn Changelog>) -> Self {
        Self {
            catalog,
            changelog,
            lookups: Arc::default(),
        }
    }
}
