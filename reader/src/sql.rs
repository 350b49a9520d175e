//! SQL through DataFusion over tables registered by their names (`ns.table`).
//!
//! A query is parsed once; the tables it names (through joins, subqueries and CTEs alike) are
//! resolved from the statement, pinned to a snapshot (SNAPSHOT mode) or to a snapshot plus the
//! changelog heads (FRESH mode), and registered in a session that knows no other table. The
//! `as_of` of every pinned table is known before the first row. Only queries run: DDL, DML
//! (`INSERT`, `COPY`) and session statements are refused. Filters DataFusion pushes into a
//! table scan are pruned with Iceberg predicates where they translate.

use std::any::Any;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, TableReference};
use datafusion::datasource::TableType;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::TryStreamExt;
use unitable_core::naming::TableName;
use unitable_core::offsets::AsOf;

use crate::Reader;
use crate::error::{ReadError, ReadResult};
use crate::filter::predicate_of;
use crate::parts::PinSpec;
use crate::pinned::{BatchStream, Pinned};
use crate::snapshot::SnapshotSelector;

/// Which data SQL reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// The latest snapshot of each table.
    #[default]
    Snapshot,
    /// Each table's latest snapshot merged with its changelog tail.
    Fresh,
}

/// A SQL query.
#[derive(Debug, Clone)]
pub struct Query {
    /// One SQL query statement.
    pub sql: String,
    /// Which data it reads.
    pub mode: QueryMode,
}

/// A planned query about to stream.
pub struct QueryStream {
    /// Per table read ("ns.table"), which data the query reads.
    pub as_of: BTreeMap<String, AsOf>,
    /// The schema of the result.
    pub schema: SchemaRef,
    /// The result batches.
    pub batches: BatchStream,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("as_of", &self.as_of)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn sql_error(e: DataFusionError) -> ReadError {
    // The memory pool's refusal may arrive wrapped (by a repartition, a stream or a context).
    if let DataFusionError::ResourcesExhausted(reason) = e.find_root() {
        return ReadError::QueryMemory {
            reason: reason.clone(),
        };
    }
    // Our own errors travel through DataFusion as external errors: give them back as they were.
    match e {
        DataFusionError::External(inner) => match inner.downcast::<ReadError>() {
            Ok(read) => *read,
            Err(other) => ReadError::Sql {
                reason: other.to_string(),
            },
        },
        DataFusionError::Context(context, inner) => match sql_error(*inner) {
            ReadError::Sql { reason } => ReadError::Sql {
                reason: format!("{context}: {reason}"),
            },
            other => other,
        },
        other => ReadError::Sql {
            reason: other.to_string(),
        },
    }
}

impl Reader {
    /// The table names a SQL query reads, as written (`ns.table`). Fails on SQL that does not
    /// parse or names a table without its namespace.
    pub fn tables_of(&self, sql: &str) -> ReadResult<Vec<TableName>> {
        let ctx = session(self.sql_runtime.clone());
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(sql_error)?;
        let is_query = matches!(
            &statement,
            DfStatement::Statement(s) if matches!(s.as_ref(), SqlStatement::Query(_))
        );
        if !is_query {
            return Err(ReadError::Sql {
                reason: format!(
                    "`{}` is not a query: only queries can run (writes go through Write, tables \
                     are created with `unitable table create`)",
                    sql.trim()
                ),
            });
        }
        let references = state
            .resolve_table_references(&statement)
            .map_err(sql_error)?;
        let mut names = Vec::new();
        for reference in references {
            let name = match &reference {
                TableReference::Partial { schema, table } => format!("{schema}.{table}"),
                TableReference::Full {
                    catalog,
                    schema,
                    table,
                } if catalog.as_ref() == "datafusion" => format!("{schema}.{table}"),
                other => {
                    return Err(ReadError::Sql {
                        reason: format!(
                            "table `{other}` is not a unitable table name; name tables as \
                             namespace.table (e.g. `shop.orders`)"
                        ),
                    });
                }
            };
            let name: TableName = name.parse().map_err(|e| ReadError::Sql {
                reason: format!("`{reference}`: {e}"),
            })?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Plans `query` and starts it.
    pub async fn query(&self, query: &Query) -> ReadResult<QueryStream> {
        let names = self.tables_of(&query.sql)?;
        let pinned = self.pin_tables(names, query.mode).await?;
        self.run(&query.sql, pinned).await
    }

    /// Pins the tables `query` reads and plans it, without running it: its schema and what
    /// it would read, to run later with [`Reader::query_pinned`].
    pub async fn plan_query(&self, query: &Query) -> ReadResult<QueryPlan> {
        let names = self.tables_of(&query.sql)?;
        let pinned = self.pin_tables(names, query.mode).await?;
        let pins = pinned.iter().map(Pinned::spec).collect();
        let (frame, as_of) = self.frame(&query.sql, pinned).await?;
        Ok(QueryPlan {
            as_of,
            schema: frame.schema().inner().clone(),
            pins,
        })
    }

    /// Runs `sql` on exactly the data `pins` name (from [`Reader::plan_query`]): every table
    /// the statement reads must be pinned there.
    pub async fn query_pinned(&self, sql: &str, pins: &[PinSpec]) -> ReadResult<QueryStream> {
        let names = self.tables_of(sql)?;
        let mut pinned = Vec::with_capacity(names.len());
        for name in names {
            let spec =
                pins.iter()
                    .find(|p| p.table == name)
                    .ok_or_else(|| ReadError::BadRequest {
                        reason: format!("the planned query does not pin table `{name}`"),
                    })?;
            pinned.push(self.repin(spec).await?);
        }
        self.run(sql, pinned).await
    }

    async fn pin_tables(&self, names: Vec<TableName>, mode: QueryMode) -> ReadResult<Vec<Pinned>> {
        let mut pinned = Vec::with_capacity(names.len());
        for name in names {
            pinned.push(match mode {
                QueryMode::Snapshot => self.pin_snapshot(&name, SnapshotSelector::Latest).await?,
                QueryMode::Fresh => self.pin_fresh(&name, None).await?,
            });
        }
        Ok(pinned)
    }

    async fn run(&self, sql: &str, pinned: Vec<Pinned>) -> ReadResult<QueryStream> {
        let (frame, as_of) = self.frame(sql, pinned).await?;
        let stream = frame.execute_stream().await.map_err(sql_error)?;
        let schema = stream.schema();
        Ok(QueryStream {
            as_of,
            schema,
            batches: Box::pin(stream.map_err(sql_error)),
        })
    }

    /// `sql` planned in a session that knows exactly the `pinned` tables.
    async fn frame(
        &self,
        sql: &str,
        pinned: Vec<Pinned>,
    ) -> ReadResult<(DataFrame, BTreeMap<String, AsOf>)> {
        let ctx = session(self.sql_runtime.clone());
        let mut as_of = BTreeMap::new();
        let mut schemas: BTreeMap<String, Arc<MemorySchemaProvider>> = BTreeMap::new();
        for pinned in pinned {
            let name = pinned.name.clone();
            as_of.insert(name.to_string(), pinned.as_of.clone());
            let namespace = name.namespace().to_string();
            let schema = schemas
                .entry(namespace.clone())
                .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
            schema
                .register_table(name.table().to_string(), Arc::new(PinnedTable { pinned }))
                .map_err(sql_error)?;
        }
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| ReadError::Internal {
                reason: "DataFusion's default catalog is missing".into(),
            })?;
        for (namespace, schema) in schemas {
            catalog
                .register_schema(&namespace, schema)
                .map_err(sql_error)?;
        }
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(sql_error)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(sql_error)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| ReadError::Sql {
                reason: format!("{e} (only queries can run; writes go through Write)"),
            })?;
        let frame = ctx.execute_logical_plan(plan).await.map_err(sql_error)?;
        Ok((frame, as_of))
    }
}

/// A query planned on pinned tables, not yet run.
#[derive(Debug, Clone)]
pub struct QueryPlan {
    /// Per table read ("ns.table"), which data the query reads.
    pub as_of: BTreeMap<String, AsOf>,
    /// The schema of the result.
    pub schema: SchemaRef,
    /// What each table is pinned to.
    pub pins: Vec<PinSpec>,
}

/// SQL operator memory shared by every query of a reader unless configured: 1 GiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;

/// A DataFusion runtime whose queries share one pool of `bytes` (fair among spilling
/// operators; the five largest consumers are named when it runs out) and spill to the OS
/// temporary directory.
pub(crate) fn runtime(bytes: usize) -> Arc<RuntimeEnv> {
    let pool = || -> Arc<dyn MemoryPool> {
        Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(bytes),
            NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
        ))
    };
    RuntimeEnvBuilder::new()
        .with_memory_pool(pool())
        .build_arc()
        .or_else(|e| {
            // Only the disk manager can fail here (no temporary directory): run without
            // spilling rather than not at all.
            tracing::warn!("SQL spilling is off: {e}");
            RuntimeEnvBuilder::new()
                .with_memory_pool(pool())
                .with_disk_manager_builder(
                    DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                )
                .build_arc()
        })
        .unwrap_or_else(|e| {
            tracing::error!("SQL memory limit is off: {e}");
            Arc::new(RuntimeEnv::default())
        })
}

fn session(runtime: Arc<RuntimeEnv>) -> SessionContext {
    // information_schema stays off: a query sees only the tables it names.
    SessionContext::new_with_config_rt(
        SessionConfig::new()
            .with_information_schema(false)
            .with_default_catalog_and_schema("datafusion", "public"),
        runtime,
    )
}

/// A pinned table as a DataFusion table.
#[derive(Debug)]
struct PinnedTable {
    pinned: Pinned,
}

#[async_trait]
impl TableProvider for PinnedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.pinned.schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        // Pruning only: DataFusion still applies every filter exactly.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let all = self.pinned.schema();
        let columns: Vec<String> = match projection {
            Some(indexes) => indexes
                .iter()
                .map(|&i| all.field(i).name().clone())
                .collect(),
            None => all.fields().iter().map(|f| f.name().clone()).collect(),
        };
        // `SELECT count(*)` projects nothing: read one column and hand DataFusion none.
        let (columns, projection) = match all.fields().first() {
            Some(first) if columns.is_empty() => (vec![first.name().clone()], Some(Vec::new())),
            _ => (columns, None),
        };
        let schema = self
            .pinned
            .output_schema(&columns)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let predicate = predicate_of(filters, &|name| self.pinned.column_type(name));
        let partition = Arc::new(PinnedPartition {
            pinned: self.pinned.clone(),
            columns,
            schema: schema.clone(),
            predicate,
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![partition],
            projection.as_ref(),
            Vec::new(),
            false,
            limit,
        )?))
    }
}

#[derive(Debug)]
struct PinnedPartition {
    pinned: Pinned,
    columns: Vec<String>,
    schema: SchemaRef,
    predicate: Option<iceberg::expr::Predicate>,
}

impl PartitionStream for PinnedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let pinned = self.pinned.clone();
        let columns = self.columns.clone();
        let predicate = self.predicate.clone();
        let batches =
            futures::stream::once(async move { pinned.batches(&columns, None, predicate).await })
                .map_ok(|batches| batches.map_err(|e| DataFusionError::External(Box::new(e))))
                .map_err(|e| DataFusionError::External(Box::new(e)))
                .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}
