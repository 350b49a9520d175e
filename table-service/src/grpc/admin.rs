//! `TableAdminService`: create, get, list, drop and alter tables.

use tonic::{Request, Response, Status};
use unitable_core::admin::{PositionQuery, TableAdmin};
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_core::table::{Column, ColumnChange};
use unitable_proto::v1::table_admin_service_server::TableAdminService;
use unitable_proto::v1::{
    AddColumnRequest, AddColumnResponse, AlterTableRequest, AlterTableResponse,
    ChangelogPositionsRequest, ChangelogPositionsResponse, ChangelogTopic, CreateTableRequest,
    CreateTableResponse, DropTableRequest, DropTableResponse, GetTableRequest, GetTableResponse,
    IngestPartition, IngestStatus, KafkaSegment, ListTablesRequest, ListTablesResponse,
    MoveChangelogRequest, MoveChangelogResponse, PartitionOffset, PartitionPosition,
};
use unitable_proto::{table_def_from_wire, table_info_to_wire};
use unitable_reader::Reader;
use unitable_writer::Writer;

use super::compact::CompactApi;
use super::table_name;
use crate::access::{Access, Principal, Privilege};
use crate::status::ApiError;

/// Table administration over the catalog and the changelog.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    admin: TableAdmin,
    writer: Writer,
    reader: Reader,
    compaction: CompactApi,
    access: Access,
}

impl AdminApi {
    /// `writer` and `reader` hear about dropped and altered tables (the reader drops its
    /// LOOKUP state of a table whose columns changed at once, instead of at its next re-base);
    /// `compaction` adds the compaction status to `GetTable`; `access` authorizes every call.
    pub(crate) fn new(
        admin: TableAdmin,
        writer: Writer,
        reader: Reader,
        compaction: CompactApi,
        access: Access,
    ) -> Self {
        Self {
            admin,
            writer,
            reader,
            compaction,
            access,
        }
    }
}

impl AdminApi {
    /// The table administration it answers with (for HTTP endpoints that read the catalog).
    pub(crate) fn tables(&self) -> &TableAdmin {
        &self.admin
    }
}

fn count(method: &'static str) {
    metrics::counter!("unitable_grpc_requests_total", "method" => method).increment(1);
}

#[tonic::async_trait]
impl TableAdminService for AdminApi {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        count("CreateTable");
        let who = Principal::of(&request)?;
        let definition = request
            .into_inner()
            .definition
            .ok_or(ApiError::BadRequest {
                field: "definition",
                reason: "is missing".into(),
            })?;
        let name = table_name(&definition.table)?;
        self.access
            .check(&who, Privilege::Admin, &name, "CreateTable")?;
        let def = table_def_from_wire(&definition).map_err(ApiError::from)?;
        let state = self.admin.create_table(&def).await;
        self.access
            .audit()
            .result(&who, "CreateTable", Some(&name.to_string()), &state);
        let state = state.map_err(ApiError::from)?;
        Ok(Response::new(CreateTableResponse {
            table: Some(table_info_to_wire(&state)),
        }))
    }

    async fn get_table(
        &self,
        request: Request<GetTableRequest>,
    ) -> Result<Response<GetTableResponse>, Status> {
        count("GetTable");
        let who = Principal::of(&request)?;
        let name = table_name(&request.into_inner().table)?;
        self.access
            .check(&who, Privilege::Read, &name, "GetTable")?;
        let state = self.admin.describe(&name).await.map_err(ApiError::from)?;
        // The status is extra: a table whose backlog cannot be computed is still described.
        let compaction = match self.compaction.status(&name).await {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "cannot compute the compaction status");
                None
            }
        };
        let changelog = match self.admin.describe_changelog(&state.def).await {
            Ok(info) => info.map(|info| ChangelogTopic {
                topic: state.def.changelog.topic.to_string(),
                backend: self.admin.changelog().backend().to_string(),
                partitions: info.partitions,
                replication_factor: info.replication_factor,
                configs: info.configs.into_iter().collect(),
                problems: info.problems,
            }),
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "cannot describe the changelog topic");
                None
            }
        };
        let ingest = match self.admin.ingest_status(&state).await {
            Ok(status) => status.map(|s| ingest_status_to_wire(&s)),
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "cannot read the ingest status");
                None
            }
        };
        Ok(Response::new(GetTableResponse {
            table: Some(table_info_to_wire(&state)),
            compaction,
            changelog,
            ingest,
        }))
    }

    async fn list_tables(
        &self,
        request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        count("ListTables");
        let who = Principal::of(&request)?;
        let namespace = request.into_inner().namespace;
        let namespace = (!namespace.is_empty()).then_some(namespace.as_str());
        let tables = self.admin.list(namespace).await.map_err(ApiError::from)?;
        // Only the tables the caller holds a grant on: the others do not exist for it.
        Ok(Response::new(ListTablesResponse {
            tables: tables
                .iter()
                .filter(|t| self.access.allows(&who, Privilege::Read, t))
                .map(ToString::to_string)
                .collect(),
        }))
    }

    async fn drop_table(
        &self,
        request: Request<DropTableRequest>,
    ) -> Result<Response<DropTableResponse>, Status> {
        count("DropTable");
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Admin, &name, "DropTable")?;
        self.writer.table_dropped(&name);
        let dropped = self.admin.drop_table(&name, request.keep_data).await;
        self.access
            .audit()
            .result(&who, "DropTable", Some(&name.to_string()), &dropped);
        dropped.map_err(ApiError::from)?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn add_column(
        &self,
        request: Request<AddColumnRequest>,
    ) -> Result<Response<AddColumnResponse>, Status> {
        count("AddColumn");
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Admin, &name, "AddColumn")?;
        let column = request.column.as_ref().ok_or(ApiError::BadRequest {
            field: "column",
            reason: "is missing".into(),
        })?;
        let column = Column::try_from(column).map_err(ApiError::from)?;
        let state = self.admin.add_column(&name, &column).await;
        self.access
            .audit()
            .result(&who, "AddColumn", Some(&name.to_string()), &state);
        let state = state.map_err(ApiError::from)?;
        self.writer.table_changed(&name);
        self.reader.table_changed(&name);
        Ok(Response::new(AddColumnResponse {
            table: Some(table_info_to_wire(&state)),
        }))
    }

    async fn alter_table(
        &self,
        request: Request<AlterTableRequest>,
    ) -> Result<Response<AlterTableResponse>, Status> {
        count("AlterTable");
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Admin, &name, "AlterTable")?;
        let changes = request
            .column_changes
            .iter()
            .map(ColumnChange::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        let set: std::collections::BTreeMap<String, String> =
            request.set_properties.into_iter().collect();
        let properties = !set.is_empty() || !request.unset_properties.is_empty();
        let state = if changes.is_empty() {
            self.admin
                .alter_properties(&name, &set, &request.unset_properties)
                .await
        } else {
            // Columns first, in one schema commit; then the properties, if any.
            match self.admin.alter_columns(&name, &changes).await {
                Ok(_) if properties => {
                    self.admin
                        .alter_properties(&name, &set, &request.unset_properties)
                        .await
                }
                other => other,
            }
        };
        self.access
            .audit()
            .result(&who, "AlterTable", Some(&name.to_string()), &state);
        let state = state.map_err(ApiError::from)?;
        // The writer re-reads the table's settings (e.g. unitable.write.dead-letter) and
        // schema; the reader's LOOKUP state follows the new schema.
        self.writer.table_changed(&name);
        self.reader.table_changed(&name);
        Ok(Response::new(AlterTableResponse {
            table: Some(table_info_to_wire(&state)),
        }))
    }

    async fn move_changelog(
        &self,
        request: Request<MoveChangelogRequest>,
    ) -> Result<Response<MoveChangelogResponse>, Status> {
        count("MoveChangelog");
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Admin, &name, "MoveChangelog")?;
        if !request.abort && request.to_cluster.is_empty() {
            return Err(ApiError::BadRequest {
                field: "to_cluster",
                reason: "is empty; name the cluster to move the changelog to".into(),
            }
            .into());
        }
        let state = self
            .admin
            .move_changelog(&name, &request.to_cluster, request.abort)
            .await;
        self.access
            .audit()
            .result(&who, "MoveChangelog", Some(&name.to_string()), &state);
        let state = state.map_err(ApiError::from)?;
        // This node's writer sees the move at its next write (it checks the table first).
        self.writer.table_changed(&name);
        Ok(Response::new(MoveChangelogResponse {
            table: Some(table_info_to_wire(&state)),
        }))
    }

    async fn changelog_positions(
        &self,
        request: Request<ChangelogPositionsRequest>,
    ) -> Result<Response<ChangelogPositionsResponse>, Status> {
        count("ChangelogPositions");
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        self.access
            .check(&who, Privilege::Read, &name, "ChangelogPositions")?;
        let query = if request.kafka_topic.is_empty() {
            if !request.kafka_offsets.is_empty() {
                return Err(ApiError::BadRequest {
                    field: "kafka_topic",
                    reason: "is empty; Kafka offsets need the Kafka topic they are of".into(),
                }
                .into());
            }
            PositionQuery::Offsets(offsets_from_wire("offsets", &request.offsets)?)
        } else {
            PositionQuery::Kafka {
                topic: request.kafka_topic.clone(),
                offsets: offsets_from_wire("kafka_offsets", &request.kafka_offsets)?,
            }
        };
        let positions = self
            .admin
            .changelog_positions(&name, &query)
            .await
            .map_err(ApiError::from)?;
        let clusters = self.admin.clusters();
        let partitions = positions
            .into_iter()
            .map(|p| PartitionPosition {
                partition: p.partition.0,
                offset: p.offset.0,
                segments: p
                    .segments
                    .into_iter()
                    .map(|s| KafkaSegment {
                        generation: s.generation,
                        cluster: clusters
                            .map(|c| c.name_of(s.cluster.as_deref()).to_string())
                            .or(s.cluster.clone())
                            .unwrap_or_default(),
                        bootstrap_servers: clusters
                            .map(|c| c.bootstrap_of(s.cluster.as_deref()))
                            .unwrap_or_default(),
                        topic: s.topic.to_string(),
                        from_offset: s.from,
                        end_offset: s.end,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ChangelogPositionsResponse { partitions }))
    }
}

/// Offsets from the wire, refusing negative ones (naming `field`).
fn offsets_from_wire(
    field: &'static str,
    offsets: &[PartitionOffset],
) -> Result<PartitionOffsets, ApiError> {
    let mut out = PartitionOffsets::default();
    for o in offsets {
        if o.offset < 0 {
            return Err(ApiError::BadRequest {
                field,
                reason: format!(
                    "offset {} of partition {} is negative",
                    o.offset, o.partition
                ),
            });
        }
        out.set(PartitionId(o.partition), Offset(o.offset));
    }
    Ok(out)
}

fn ingest_status_to_wire(s: &unitable_core::ingest::IngestStatus) -> IngestStatus {
    IngestStatus {
        topic: s.config.topic.clone(),
        format: s.config.format.as_str().to_string(),
        start: match s.config.start {
            unitable_core::ingest::IngestStart::Earliest => "earliest",
            unitable_core::ingest::IngestStart::Latest => "latest",
        }
        .to_string(),
        source_exists: s.source_exists,
        partitions: s
            .partitions
            .iter()
            .map(|p| IngestPartition {
                partition: p.partition.0,
                next_offset: p.position.map(|x| x.next.0),
                pending_last: p.position.and_then(|x| x.pending).map(|o| o.0),
                low_watermark: p.low.0,
                high_watermark: p.high.0,
                lag: p.lag(),
            })
            .collect(),
    }
}
