//! The compare-and-swap of a table's metadata pointer in the catalog.
//!
//! For the SQL catalog (SQLite and Postgres, the `iceberg_tables` layout PyIceberg and
//! iceberg-rust share) the swap is one `UPDATE ... WHERE metadata_location = <expected>`: it
//! changes one row when nobody else committed in between and none otherwise.

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use super::{CommitError, CommitResult};
use crate::catalog::{CATALOG_NAME, CatalogConfig, SqlDialect, sql_url};
use crate::naming::TableName;

/// What a swap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The pointer now names the new metadata.
    Swapped,
    /// The pointer no longer named the expected metadata: someone else committed.
    Conflict,
}

/// Swaps a table's metadata pointer from `expected` to `new` atomically.
///
/// An `Err` means the outcome is unknown (the swap may or may not have happened); callers must
/// find out by reloading the table before trying again.
#[async_trait]
pub trait MetadataPointer: std::fmt::Debug + Send + Sync {
    /// Performs the compare-and-swap.
    async fn swap(&self, table: &TableName, expected: &str, new: &str)
    -> CommitResult<SwapOutcome>;

    /// The metadata location the pointer names now; `None` when the table does not exist.
    /// One cheap read, for callers that check a cached table is still the current one.
    async fn current(&self, table: &TableName) -> CommitResult<Option<String>>;
}

/// The pointer in a SQL catalog database.
#[derive(Debug, Clone)]
pub struct SqlMetadataPointer {
    pool: AnyPool,
    dialect: SqlDialect,
}

impl SqlMetadataPointer {
    /// Connects to the catalog database of `config` (which must be a SQL catalog).
    pub async fn connect(config: &CatalogConfig) -> CommitResult<Self> {
        let (url, dialect) = sql_url(&config.uri)?.ok_or_else(|| CommitError::Invalid {
            reason: format!(
                "catalog `{}` is not a SQL catalog; commits through REST catalogs are not supported yet",
                config.uri
            ),
        })?;
        sqlx::any::install_default_drivers();
        crate::catalog::prepare_sqlite(&config.uri).await?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .map_err(|e| CommitError::CatalogDatabase {
                operation: "connect".into(),
                reason: e.to_string(),
            })?;
        Ok(Self { pool, dialect })
    }
}

#[async_trait]
impl MetadataPointer for SqlMetadataPointer {
    async fn swap(
        &self,
        table: &TableName,
        expected: &str,
        new: &str,
    ) -> CommitResult<SwapOutcome> {
        let sql = match self.dialect {
            SqlDialect::Sqlite => {
                "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                 WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?"
            }
            SqlDialect::Postgres => {
                "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                 WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6"
            }
        };
        let result = sqlx::query(sql)
            .bind(new)
            .bind(expected)
            .bind(CATALOG_NAME)
            .bind(table.namespace())
            .bind(table.table())
            .bind(expected)
            .execute(&self.pool)
            .await
            .map_err(|e| CommitError::CatalogDatabase {
                operation: format!("swap the metadata pointer of {table}"),
                reason: e.to_string(),
            })?;
        Ok(if result.rows_affected() == 1 {
            SwapOutcome::Swapped
        } else {
            SwapOutcome::Conflict
        })
    }

    async fn current(&self, table: &TableName) -> CommitResult<Option<String>> {
        let sql = match self.dialect {
            SqlDialect::Sqlite => {
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?"
            }
            SqlDialect::Postgres => {
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3"
            }
        };
        let row: Option<(Option<String>,)> = sqlx::query_as(sql)
            .bind(CATALOG_NAME)
            .bind(table.namespace())
            .bind(table.table())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| CommitError::CatalogDatabase {
                operation: format!("read the metadata pointer of {table}"),
                reason: e.to_string(),
            })?;
        Ok(row.and_then(|(location,)| location))
    }
}
