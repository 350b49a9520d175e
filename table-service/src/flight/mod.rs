//! Arrow Flight beside the gRPC API: the same port, the same authentication (the interceptor in
//! front of every service) and the same grants as `ReadService` (docs/api.md "Arrow Flight").
//!
//! - Table reads: `GetFlightInfo` on a `PATH` descriptor (`["ns.table"]`: the latest snapshot)
//!   or a `CMD` descriptor holding a JSON read command (mode, snapshot, projection, filter)
//!   plans and pins the read in the reader ([`unitable_reader::parts`]): one endpoint per group
//!   of data files, each with a self-contained ticket ([`ticket`]). `DoGet` on every endpoint,
//!   in parallel and on any connection, together gives exactly the planned SNAPSHOT or FRESH
//!   read. `ListFlights` lists the tables the caller may read, by path, without endpoints.
//! - Flight SQL ([`sql`]): statements and prepared statements (without parameters) run
//!   through the reader's SQL, each statement's tables pinned at `GetFlightInfo`; `GetSqlInfo`,
//!   `GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes` describe what the caller may
//!   read. Everything else is UNIMPLEMENTED with a message saying what is served.
//!
//! Result streams run on the read runtime through the same bounded pump as `ReadService`, which
//! re-checks the caller's grant and token while they run.

mod command;
mod sql;
mod ticket;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use unitable_core::offsets::AsOf;
use unitable_reader::{BatchStream, QueryMode, Reader};

use self::command::{FlightCommand, Mode, ReadCommand};
use self::ticket::{PART_TYPE_URL, PartTicket};
use crate::access::{Access, Guard, Principal, Privilege};
use crate::grpc::read::{BoxStream, pump_status};
use crate::status::ApiError;

pub(crate) use arrow_flight::flight_service_server::FlightServiceServer;

/// The request header that picks SNAPSHOT (the default) or FRESH for Flight SQL statements.
pub(crate) const READ_MODE_HEADER: &str = "unitable-read-mode";

/// The Flight service.
#[derive(Clone)]
pub(crate) struct FlightApi {
    reader: Reader,
    /// The runtime that drives result streams (as `ReadService`'s).
    runtime: tokio::runtime::Handle,
    access: Access,
    sql_info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for FlightApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightApi").finish_non_exhaustive()
    }
}

impl FlightApi {
    pub(crate) fn new(
        reader: Reader,
        runtime: tokio::runtime::Handle,
        access: Access,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            reader,
            runtime,
            access,
            sql_info: Arc::new(sql::sql_info()?),
        })
    }
}

fn count(method: &'static str, what: &'static str) {
    metrics::counter!("unitable_grpc_requests_total", "method" => method, "mode" => what)
        .increment(1);
}

/// A Flight encoding failure (the stream's own statuses pass through unchanged).
fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => ApiError::FlightEncode {
            reason: other.to_string(),
        }
        .into(),
    }
}

fn unimplemented(what: impl Into<String>) -> Status {
    ApiError::Unimplemented { what: what.into() }.into()
}

/// `as_of` as JSON (the `app_metadata` of a read's `FlightInfo`).
fn as_of_json(as_of: &AsOf) -> serde_json::Value {
    let offsets: serde_json::Map<String, serde_json::Value> = as_of
        .offsets
        .0
        .iter()
        .map(|(p, o)| (p.0.to_string(), o.0.into()))
        .collect();
    serde_json::json!({
        "snapshot_id": as_of.snapshot_id,
        "offsets": offsets,
        "commit_time_ms": as_of.commit_time_ms,
        "lag_records": as_of.lag_records,
        "lag_ms": as_of.lag_ms,
    })
}

/// The read mode of Flight SQL statements in this call ([`READ_MODE_HEADER`]).
fn query_mode(metadata: &MetadataMap) -> Result<QueryMode, ApiError> {
    let Some(value) = metadata.get(READ_MODE_HEADER) else {
        return Ok(QueryMode::Snapshot);
    };
    match value.to_str().map(str::to_ascii_lowercase).as_deref() {
        Ok("snapshot") => Ok(QueryMode::Snapshot),
        Ok("fresh") => Ok(QueryMode::Fresh),
        _ => Err(ApiError::BadRequest {
            field: READ_MODE_HEADER,
            reason: format!("is {value:?}; give `snapshot` or `fresh`"),
        }),
    }
}

impl FlightApi {
    /// Batches encoded as Flight data and streamed from the read runtime, `guard` re-checked
    /// while they run.
    fn stream(
        &self,
        schema: SchemaRef,
        batches: BatchStream,
        guard: Guard,
    ) -> BoxStream<FlightData> {
        let batches = batches
            .map(|b| b.map_err(|e| FlightError::Tonic(Box::new(Status::from(ApiError::from(e))))));
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map(|d| d.map_err(flight_status));
        pump_status(&self.runtime, None, Box::pin(encoded), guard, Ok)
    }

    /// One small batch (catalog metadata) as Flight data.
    fn one_batch(batch: RecordBatch) -> BoxStream<FlightData> {
        let schema = batch.schema();
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map(|d| d.map_err(flight_status));
        Box::pin(encoded)
    }

    /// Plans a table read: one endpoint per group of data files.
    async fn read_info(
        &self,
        who: &Principal,
        read: ReadCommand,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let table = read.table()?;
        let (action, mode) = match read.mode {
            Mode::Snapshot => ("Flight.GetFlightInfo(SNAPSHOT)", "SNAPSHOT"),
            Mode::Fresh => ("Flight.GetFlightInfo(FRESH)", "FRESH"),
        };
        count("Flight.GetFlightInfo", mode);
        self.access.check(who, Privilege::Read, &table, action)?;
        let max = read.max_endpoints()?;
        let plan = match read.mode {
            Mode::Snapshot => self.reader.plan_snapshot(&read.snapshot_read()?, max).await,
            Mode::Fresh => self.reader.plan_fresh(&read.fresh_read()?, max).await,
        }
        .map_err(ApiError::from)?;
        let endpoints = plan
            .parts
            .iter()
            .map(|part| {
                FlightEndpoint::new().with_ticket(Ticket::new(PartTicket::of(part).encode_any()))
            })
            .collect();
        let info = FlightInfo::new()
            .try_with_schema(&plan.schema)
            .map_err(|e| flight_status(e.into()))?
            .with_endpoints(endpoints)
            .with_descriptor(descriptor)
            .with_ordered(false)
            .with_app_metadata(as_of_json(&plan.as_of).to_string());
        Ok(info)
    }

    /// Serves one endpoint of a table read.
    async fn get_part(&self, who: &Principal, any: &Any) -> Result<BoxStream<FlightData>, Status> {
        let part = ticket::decode_part(any)?.part()?;
        let (action, mode) = if part.pin.fresh_to.is_some() {
            ("Flight.DoGet(FRESH)", "FRESH")
        } else {
            ("Flight.DoGet(SNAPSHOT)", "SNAPSHOT")
        };
        count("Flight.DoGet", mode);
        let table = part.pin.table.clone();
        self.access.check(who, Privilege::Read, &table, action)?;
        let guard = self.access.guard(who, Privilege::Read, vec![table], action);
        let read = self.reader.read_part(&part).await.map_err(ApiError::from)?;
        Ok(self.stream(read.schema, read.batches, guard))
    }
}

#[tonic::async_trait]
impl FlightService for FlightApi {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    /// The interceptor authenticated the call already; a client that sent `Basic user:token`
    /// gets its token back as a bearer header, which Flight clients then send on every call.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        count("Flight.Handshake", "");
        Principal::of(&request)?;
        let bearer = crate::access::auth::bearer_of(request.metadata());
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        let mut response =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])) as Self::HandshakeStream);
        if let Some(token) = bearer {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                Status::from(ApiError::Unauthenticated {
                    reason: "the token is not printable ASCII".into(),
                })
            })?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    /// The tables the caller may read, each as a `FlightInfo` with its `PATH` descriptor and
    /// current schema and no endpoints: `GetFlightInfo` on the descriptor plans a read.
    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        count("Flight.ListFlights", "");
        let who = Principal::of(&request)?;
        let mut infos = Vec::new();
        for table in self.readable_tables(&who).await? {
            let schema = self
                .reader
                .table_schema(&table)
                .await
                .map_err(ApiError::from)?;
            let info = FlightInfo::new()
                .try_with_schema(&schema)
                .map_err(|e| flight_status(e.into()))?
                .with_descriptor(FlightDescriptor::new_path(vec![table.to_string()]));
            infos.push(Ok(info));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = Principal::of(&request)?;
        let mode = query_mode(request.metadata())?;
        let descriptor = request.into_inner();
        let info = match command::parse(&descriptor)? {
            FlightCommand::Read(read) => self.read_info(&who, read, descriptor).await?,
            FlightCommand::Sql(command) => {
                self.sql_flight_info(&who, command, mode, descriptor)
                    .await?
            }
        };
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(unimplemented(
            "PollFlightInfo: plans are quick; call GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let info = self.get_flight_info(request).await?.into_inner();
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let who = Principal::of(&request)?;
        let any = ticket::decode_any(&request.get_ref().ticket)?;
        if any.type_url == PART_TYPE_URL {
            return Ok(Response::new(self.get_part(&who, &any).await?));
        }
        let command = Command::try_from(any).map_err(|e| ApiError::BadRequest {
            field: "ticket",
            reason: format!("the Flight SQL ticket does not decode: {e}"),
        })?;
        Ok(Response::new(self.sql_do_get(&who, command).await?))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(unimplemented(
            "DoPut: unitable's Flight service is read-only (and prepared statements take no \
             parameters); write rows through WriteService",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(unimplemented("DoExchange"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let who = Principal::of(&request)?;
        let mode = query_mode(request.metadata())?;
        let action = request.into_inner();
        Ok(Response::new(self.sql_action(&who, action, mode).await?))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = sql::ACTIONS.iter().map(|(name, description)| {
            Ok(ActionType {
                r#type: (*name).to_string(),
                description: (*description).to_string(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}
