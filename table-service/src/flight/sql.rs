//! Flight SQL on the reader's SQL: statements, prepared statements without parameters, and the
//! catalog commands clients (ADBC, JDBC, `pyarrow.flight`) ask before a query. Namespaces are
//! Flight SQL's schemas; there are no catalogs (tables report an empty catalog name), so a
//! query names tables as `namespace.table`, as everywhere else.

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, Command, ProstMessageExt, SqlInfo,
    SqlSupportedTransaction,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use prost::Message;
use tonic::Status;
use unitable_core::naming::TableName;
use unitable_reader::{Query, QueryMode, QueryPlan};

use super::ticket::{Pin, PreparedHandle, QueryTicket};
use super::{FlightApi, as_of_json, flight_status, unimplemented};
use crate::access::{Principal, Privilege};
use crate::grpc::read::BoxStream;
use crate::status::ApiError;

/// The actions served, with their descriptions.
pub(super) const ACTIONS: &[(&str, &str)] = &[
    (
        "CreatePreparedStatement",
        "Flight SQL: prepare a query (no parameters); the handle carries the statement",
    ),
    (
        "ClosePreparedStatement",
        "Flight SQL: close a prepared statement (nothing is kept on the server)",
    ),
];

/// The one table type.
const TABLE_TYPE: &str = "TABLE";

/// What `GetSqlInfo` answers.
pub(super) fn sql_info() -> Result<SqlInfoData, ApiError> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "unitable");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "58");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    info.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    info.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, false);
    info.append(SqlInfo::SqlDdlTable, false);
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.append(SqlInfo::SqlSchemaTerm, "namespace");
    info.append(SqlInfo::SqlCatalogTerm, "catalog");
    info.append(SqlInfo::SqlTransactionsSupported, false);
    info.build().map_err(|e| ApiError::FlightEncode {
        reason: format!("build the SQL info: {e}"),
    })
}

fn schema_bytes(schema: &arrow::datatypes::Schema) -> Result<bytes::Bytes, Status> {
    let options = IpcWriteOptions::default();
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e: arrow::error::ArrowError| flight_status(e.into()))?;
    Ok(bytes)
}

/// A `FlightInfo` with one endpoint whose ticket is `ticket`.
fn info(
    schema: &arrow::datatypes::Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| flight_status(e.into()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

impl FlightApi {
    /// Authorizes every table `sql` names (before planning, as `ReadService.Query` does) and
    /// returns them.
    fn authorize_sql(
        &self,
        who: &Principal,
        sql: &str,
        action: &'static str,
    ) -> Result<Vec<TableName>, Status> {
        if sql.trim().is_empty() {
            return Err(ApiError::BadRequest {
                field: "query",
                reason: "is empty".into(),
            }
            .into());
        }
        let tables = self.reader.tables_of(sql).map_err(ApiError::from)?;
        for table in &tables {
            self.access.check(who, Privilege::Read, table, action)?;
        }
        Ok(tables)
    }

    async fn plan_statement(
        &self,
        who: &Principal,
        sql: String,
        mode: QueryMode,
    ) -> Result<QueryPlan, Status> {
        self.authorize_sql(who, &sql, "Flight.GetFlightInfo(SQL)")?;
        Ok(self
            .reader
            .plan_query(&Query { sql, mode })
            .await
            .map_err(ApiError::from)?)
    }

    /// `FlightInfo` of a statement: its tables pinned now, one endpoint.
    async fn statement_info(
        &self,
        who: &Principal,
        sql: String,
        mode: QueryMode,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        super::count("Flight.GetFlightInfo", "SQL");
        let plan = self.plan_statement(who, sql.clone(), mode).await?;
        let ticket = QueryTicket {
            sql,
            pins: plan.pins.iter().map(Pin::of).collect(),
        };
        let as_of: serde_json::Map<String, serde_json::Value> = plan
            .as_of
            .iter()
            .map(|(table, as_of)| (table.clone(), as_of_json(as_of)))
            .collect();
        Ok(info(&plan.schema, ticket.encode_any(), descriptor)?
            .with_app_metadata(serde_json::Value::Object(as_of).to_string()))
    }

    pub(super) async fn sql_flight_info(
        &self,
        who: &Principal,
        command: Command,
        mode: QueryMode,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        match command {
            Command::CommandStatementQuery(q) => {
                if q.transaction_id.is_some() {
                    return Err(unimplemented(
                        "transactions: unitable's Flight SQL is read-only",
                    ));
                }
                self.statement_info(who, q.query, mode, descriptor).await
            }
            Command::CommandPreparedStatementQuery(q) => {
                let handle =
                    PreparedHandle::decode(q.prepared_statement_handle.as_ref()).map_err(|e| {
                        ApiError::BadRequest {
                            field: "prepared_statement_handle",
                            reason: format!("is not a handle of this server: {e}"),
                        }
                    })?;
                let mode = if handle.fresh {
                    QueryMode::Fresh
                } else {
                    QueryMode::Snapshot
                };
                self.statement_info(who, handle.sql, mode, descriptor).await
            }
            Command::CommandGetSqlInfo(c) => {
                super::count("Flight.GetFlightInfo", "GetSqlInfo");
                info(
                    &self.sql_info.schema(),
                    c.as_any().encode_to_vec(),
                    descriptor,
                )
            }
            Command::CommandGetCatalogs(c) => {
                let ticket = c.as_any().encode_to_vec();
                info(&c.into_builder().schema(), ticket, descriptor)
            }
            Command::CommandGetDbSchemas(c) => {
                let ticket = c.as_any().encode_to_vec();
                info(&c.into_builder().schema(), ticket, descriptor)
            }
            Command::CommandGetTables(c) => {
                let ticket = c.as_any().encode_to_vec();
                info(&c.into_builder().schema(), ticket, descriptor)
            }
            Command::CommandGetTableTypes(c) => {
                let ticket = c.as_any().encode_to_vec();
                info(&c.into_builder().schema(), ticket, descriptor)
            }
            other => Err(not_served(other.type_url())),
        }
    }

    pub(super) async fn sql_do_get(
        &self,
        who: &Principal,
        command: Command,
    ) -> Result<BoxStream<arrow_flight::FlightData>, Status> {
        match command {
            Command::TicketStatementQuery(t) => {
                super::count("Flight.DoGet", "SQL");
                let ticket = QueryTicket::decode_handle(&t.statement_handle)?;
                let action = "Flight.DoGet(SQL)";
                let tables = self.authorize_sql(who, &ticket.sql, action)?;
                let guard = self.access.guard(who, Privilege::Read, tables, action);
                let query = self
                    .reader
                    .query_pinned(&ticket.sql, &ticket.pins()?)
                    .await
                    .map_err(ApiError::from)?;
                Ok(self.stream(query.schema, query.batches, guard))
            }
            Command::CommandGetSqlInfo(c) => {
                let batch = c
                    .into_builder(&self.sql_info)
                    .build()
                    .map_err(flight_status)?;
                Ok(Self::one_batch(batch))
            }
            Command::CommandGetCatalogs(c) => {
                // No catalogs: tables are `namespace.table`.
                let batch = c.into_builder().build().map_err(flight_status)?;
                Ok(Self::one_batch(batch))
            }
            Command::CommandGetDbSchemas(c) => {
                let mut builder = c.into_builder();
                let mut namespaces: Vec<String> = self
                    .readable_tables(who)
                    .await?
                    .iter()
                    .map(|t| t.namespace().to_string())
                    .collect();
                namespaces.dedup();
                for namespace in namespaces {
                    builder.append("", namespace);
                }
                let batch = builder.build().map_err(flight_status)?;
                Ok(Self::one_batch(batch))
            }
            Command::CommandGetTables(c) => {
                let mut builder = c.into_builder();
                for table in self.readable_tables(who).await? {
                    let schema = if builder.include_schema() {
                        self.reader
                            .table_schema(&table)
                            .await
                            .map_err(ApiError::from)?
                    } else {
                        std::sync::Arc::new(arrow::datatypes::Schema::empty())
                    };
                    builder
                        .append("", table.namespace(), table.table(), TABLE_TYPE, &schema)
                        .map_err(flight_status)?;
                }
                let batch = builder.build().map_err(flight_status)?;
                Ok(Self::one_batch(batch))
            }
            Command::CommandGetTableTypes(c) => {
                let mut builder = c.into_builder();
                builder.append(TABLE_TYPE);
                let batch = builder.build().map_err(flight_status)?;
                Ok(Self::one_batch(batch))
            }
            other => Err(not_served(other.type_url())),
        }
    }

    /// The tables `who` may read, sorted: ListTables' rule (no grant, no name).
    pub(super) async fn readable_tables(&self, who: &Principal) -> Result<Vec<TableName>, Status> {
        let mut tables = self
            .reader
            .list_tables(None)
            .await
            .map_err(ApiError::from)?;
        tables.retain(|t| self.access.allows(who, Privilege::Read, t));
        tables.sort_by_key(ToString::to_string);
        Ok(tables)
    }

    pub(super) async fn sql_action(
        &self,
        who: &Principal,
        action: Action,
        mode: QueryMode,
    ) -> Result<BoxStream<arrow_flight::Result>, Status> {
        let body = || {
            Any::decode(action.body.as_ref()).map_err(|e| ApiError::BadRequest {
                field: "action.body",
                reason: format!("is not a Flight SQL request: {e}"),
            })
        };
        match action.r#type.as_str() {
            "CreatePreparedStatement" => {
                super::count("Flight.DoAction", "CreatePreparedStatement");
                let request: ActionCreatePreparedStatementRequest = body()?
                    .unpack()
                    .map_err(|e| flight_status(e.into()))?
                    .ok_or_else(|| ApiError::BadRequest {
                        field: "action.body",
                        reason: "is not an ActionCreatePreparedStatementRequest".into(),
                    })?;
                if request.transaction_id.is_some() {
                    return Err(unimplemented(
                        "transactions: unitable's Flight SQL is read-only",
                    ));
                }
                let plan = self
                    .plan_statement(who, request.query.clone(), mode)
                    .await?;
                let handle = PreparedHandle {
                    sql: request.query,
                    fresh: mode == QueryMode::Fresh,
                };
                let result = ActionCreatePreparedStatementResult {
                    prepared_statement_handle: handle.encode_to_vec().into(),
                    dataset_schema: schema_bytes(&plan.schema)?,
                    parameter_schema: Default::default(),
                };
                let reply = arrow_flight::Result {
                    body: result.as_any().encode_to_vec().into(),
                };
                Ok(Box::pin(futures::stream::iter([Ok(reply)])))
            }
            "ClosePreparedStatement" => {
                let _: Option<ActionClosePreparedStatementRequest> =
                    body()?.unpack().map_err(|e| flight_status(e.into()))?;
                Ok(Box::pin(futures::stream::empty()))
            }
            other => Err(unimplemented(format!(
                "action `{other}`: unitable serves CreatePreparedStatement and \
                 ClosePreparedStatement"
            ))),
        }
    }
}

fn not_served(type_url: &str) -> Status {
    unimplemented(format!(
        "Flight SQL command `{type_url}`: unitable serves CommandStatementQuery, prepared \
         statements without parameters, CommandGetSqlInfo, CommandGetCatalogs, \
         CommandGetDbSchemas, CommandGetTables and CommandGetTableTypes (it is read-only)"
    ))
}
