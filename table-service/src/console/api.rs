//! The console's JSON API (docs/console.md lists every endpoint and field).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use unitable_core::naming::TableName;
use unitable_core::offsets::{AsOf, PartitionOffsets};
use unitable_proto::v1 as wire;
use unitable_proto::v1::access_service_server::AccessService;
use unitable_proto::v1::read_service_server::ReadService;
use unitable_proto::v1::table_admin_service_server::TableAdminService;
use unitable_reader::overview::{ActiveStream, SnapshotEntry, TableOverview};

use super::{Console, Failure};
use crate::access::Privilege;
use crate::grpc::table_name;
use crate::wire_json::{compaction_json, describe_json, group_json, topic_json};

type Answer = Result<Json<Value>, Failure>;

/// `GET /api/v1/auth`, answered without credentials: whether the server lets callers in
/// without a token, so the page knows whether to ask for one.
pub(super) async fn auth(State(c): State<Console>) -> Json<Value> {
    Json(json!({ "anonymous": c.inner.access.allow_anonymous() }))
}

/// `GET /api/v1/whoami`: the caller as the server sees it.
pub(super) async fn whoami(State(c): State<Console>, headers: HeaderMap) -> Answer {
    let request = c.request(&headers, wire::WhoAmIRequest {})?;
    let me = c.inner.access_api.who_am_i(request).await?.into_inner();
    Ok(Json(json!({
        "user": me.user,
        "groups": me.groups,
        "authenticated_by": me.authenticated_by,
    })))
}

/// `GET /api/v1/tables`: the tables the caller may read, each with its size and freshness.
pub(super) async fn tables(State(c): State<Console>, headers: HeaderMap) -> Answer {
    let request = c.request(&headers, wire::ListTablesRequest::default())?;
    let names = c
        .inner
        .admin
        .list_tables(request)
        .await?
        .into_inner()
        .tables;
    let (c, headers) = (&c, &headers);
    let rows = futures::future::join_all(names.iter().map(|name| async move {
        match table_summary(c, headers, name).await {
            Ok(row) => row,
            // A table dropped between the listing and its description, or one whose metadata
            // cannot be read, is still listed, with why.
            Err(e) => json!({"table": name, "error": e.message}),
        }
    }))
    .await;
    Ok(Json(json!({ "tables": rows })))
}

/// `name` described by the gRPC `GetTable` (which checks the caller's grant) and its
/// overview (snapshots and freshness).
async fn described(
    c: &Console,
    headers: &HeaderMap,
    name: &str,
) -> Result<(wire::GetTableResponse, TableName, TableOverview), Failure> {
    let request = c.request(
        headers,
        wire::GetTableRequest {
            table: name.to_string(),
        },
    )?;
    let got = c.inner.admin.get_table(request).await?.into_inner();
    let table = table_name(name)?;
    let overview = overview(c, &table).await?;
    Ok((got, table, overview))
}

/// The reader's overview of `table` (the caller's grant already checked).
async fn overview(c: &Console, table: &TableName) -> Result<TableOverview, Failure> {
    Ok(c.inner
        .reader
        .overview(table)
        .await
        .map_err(crate::status::ApiError::from)?)
}

async fn table_summary(c: &Console, headers: &HeaderMap, name: &str) -> Result<Value, Failure> {
    let (got, _, overview) = described(c, headers, name).await?;
    let info = got.table.unwrap_or_default();
    let def = info.definition.clone().unwrap_or_default();
    Ok(json!({
        "table": name,
        "columns": def.columns.len(),
        "primary_key": def.primary_key,
        "partitions": def.changelog.map(|c| c.partitions).unwrap_or_default(),
        "current_snapshot_id": id(info.current_snapshot_id),
        "snapshots": overview.snapshots.len(),
        "rows": got.compaction.as_ref().map(|s| s.rows.saturating_sub(s.deleted_rows)),
        "freshness": as_of_json(&overview.freshness),
    }))
}

/// `GET /api/v1/tables/{table}`: the definition, changelog topic, compaction status,
/// freshness, open streams and the grants on the table the caller may see.
pub(super) async fn table(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let (got, table, overview) = described(&c, &headers, &name).await?;
    let who = c.principal(&headers)?;
    let grants: Vec<Value> = crate::grpc::access::visible_grants(&c.inner.access, &who)
        .into_iter()
        .filter(|g| g.object.covers(&table))
        .map(|g| {
            json!({
                "grant": crate::grpc::access::describe(&g),
                "privilege": g.privilege.to_string(),
                "object_kind": g.object.kind(),
                "object": g.object.name(),
                "grantee_kind": g.grantee.kind(),
                "grantee": g.grantee.name(),
            })
        })
        .collect();
    let info = got.table.unwrap_or_default();
    let mut value = describe_json(&info);
    value["current_snapshot_id"] = id(info.current_snapshot_id);
    value["compaction"] = got.compaction.as_ref().map_or(Value::Null, compaction_json);
    if let Some(run) = got.compaction.as_ref().and_then(|c| c.last_run.as_ref()) {
        value["compaction"]["last_run"]["snapshot_id"] = id(run.snapshot_id);
    }
    value["changelog_topic"] = got.changelog.as_ref().map_or(Value::Null, topic_json);
    value["freshness"] = as_of_json(&overview.freshness);
    value["heads"] = offsets_json(&overview.heads);
    value["snapshot_count"] = json!(overview.snapshots.len());
    value["grants"] = json!(grants);
    Ok(Json(value))
}

/// `GET /api/v1/tables/{table}/snapshots`: every snapshot in the metadata, oldest first, with
/// its operation, summary counts and the changelog offsets it anchors.
pub(super) async fn snapshots(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let table = readable(&c, &headers, &name, "ConsoleSnapshots")?;
    let overview = overview(&c, &table).await?;
    Ok(Json(json!({
        "current_snapshot_id": id(overview.current_snapshot_id),
        "snapshots": overview.snapshots.iter().map(snapshot_json).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/tables/{table}/freshness`: the table's freshness sampled by the server every
/// `--console-sample-interval`, oldest first (the newest 360 samples; empty after a restart).
pub(super) async fn freshness(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let table = readable(&c, &headers, &name, "ConsoleFreshness")?;
    let samples: Vec<Value> = c
        .inner
        .history
        .of(&table)
        .iter()
        .map(|s| {
            json!({
                "time_ms": s.time_ms,
                "snapshot_id": id(s.snapshot_id),
                "lag_records": s.lag_records,
                "lag_ms": s.lag_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "interval_ms": c.inner.history.interval().as_millis() as u64,
        "samples": samples,
    })))
}

/// `GET /api/v1/tables/{table}/consumers`: the STREAM reads open on this node and every
/// consumer group of the table with its lag.
pub(super) async fn consumers(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer {
    let request = c.request(
        &headers,
        wire::DescribeConsumerGroupsRequest {
            table: name.clone(),
            group: String::new(),
        },
    )?;
    let groups = match c.inner.read.describe_consumer_groups(request).await {
        Ok(r) => r.into_inner().groups,
        // A server without a catalog database keeps no groups; the streams are still shown.
        Err(s) if s.code() == tonic::Code::FailedPrecondition => Vec::new(),
        Err(s) => return Err(s.into()),
    };
    let table = table_name(&name)?;
    let streams = c.inner.reader.active_streams(&table);
    Ok(Json(json!({
        "streams": streams.iter().map(stream_json).collect::<Vec<_>>(),
        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct Limit {
    limit: Option<usize>,
}

/// `GET /api/v1/tables/{table}/dead-letters?limit=N`: the newest rejected rows (50 unless
/// `limit`, at most 1000), newest first.
pub(super) async fn dead_letters(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Answer {
    let table = readable(&c, &headers, &name, "ConsoleDeadLetters")?;
    let letters = c
        .inner
        .reader
        .dead_letters(&table, q.limit.unwrap_or(50))
        .await
        .map_err(crate::status::ApiError::from)?;
    let rows: Vec<Value> = letters
        .iter()
        .map(|d| {
            let value = d.value.as_deref().map_or(Value::Null, |v| {
                serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()))
            });
            json!({"offset": d.offset, "timestamp_ms": d.timestamp_ms, "record": value})
        })
        .collect();
    Ok(Json(json!({ "dead_letters": rows })))
}

#[derive(Debug, Deserialize)]
pub(super) struct SqlBody {
    sql: String,
    /// "snapshot" (default) or "fresh".
    #[serde(default)]
    mode: Option<String>,
    /// Rows returned at most (default 500, at most 10,000); the rest are counted, not sent.
    #[serde(default)]
    limit: Option<usize>,
}

/// Most rows one console query returns.
const MAX_SQL_ROWS: usize = 10_000;

/// `POST /api/v1/sql` `{"sql": ..., "mode": "snapshot"|"fresh", "limit": N}`: a read-only
/// query (the gRPC `Query`: SELECT over the tables the caller may read) as JSON rows.
pub(super) async fn sql(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(body): Json<SqlBody>,
) -> Answer {
    let mode = match body.mode.as_deref().unwrap_or("snapshot") {
        "snapshot" => wire::ReadMode::Snapshot,
        "fresh" => wire::ReadMode::Fresh,
        other => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                format!("field `mode`: `{other}` is not a SQL read mode; use snapshot or fresh"),
            ));
        }
    };
    let limit = body.limit.unwrap_or(500).min(MAX_SQL_ROWS);
    let request = c.request(
        &headers,
        wire::QueryRequest {
            sql: body.sql,
            mode: mode as i32,
        },
    )?;
    let mut stream = c.inner.read.query(request).await?.into_inner();
    let mut columns = Vec::new();
    let mut rows: Vec<Value> = Vec::new();
    let mut total = 0usize;
    let mut as_of = serde_json::Map::new();
    while let Some(message) = stream.next().await {
        let message = message?;
        for (table, a) in &message.as_of {
            as_of.insert(table.clone(), wire_as_of_json(a));
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(&message.arrow_ipc[..], None)
            .map_err(internal)?;
        if columns.is_empty() {
            columns = reader
                .schema()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect();
        }
        for batch in reader {
            let batch = batch.map_err(internal)?;
            total += batch.num_rows();
            let room = limit.saturating_sub(rows.len());
            if room == 0 {
                continue;
            }
            let batch = batch.slice(0, batch.num_rows().min(room));
            rows.extend(batch_rows(&batch)?);
        }
    }
    Ok(Json(json!({
        "columns": columns,
        "rows": rows,
        "row_count": total,
        "truncated": total > rows.len(),
        "as_of": as_of,
    })))
}

/// The rows of `batch` as JSON objects (nulls kept, so every row has every column; 64-bit
/// integers as strings, see [`id`]).
fn batch_rows(batch: &arrow::record_batch::RecordBatch) -> Result<Vec<Value>, Failure> {
    use arrow::datatypes::{DataType, Field, Schema};
    let wide = |t: &DataType| matches!(t, DataType::Int64 | DataType::UInt64);
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if wide(field.data_type()) {
            columns.push(arrow::compute::cast(column, &DataType::Utf8).map_err(internal)?);
            fields.push(Field::new(field.name(), DataType::Utf8, true));
        } else {
            columns.push(column.clone());
            fields.push(field.as_ref().clone());
        }
    }
    let batch = arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )
    .map_err(internal)?;
    let batch = &batch;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    writer.write(batch).map_err(internal)?;
    writer.finish().map_err(internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_slice(&bytes).map_err(internal)? {
        Value::Array(rows) => Ok(rows),
        other => Ok(vec![other]),
    }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        format!("cannot render the query result: {e}"),
    )
}

/// `name` parsed, after checking that the caller may read it (for answers built here).
fn readable(
    c: &Console,
    headers: &HeaderMap,
    name: &str,
    action: &'static str,
) -> Result<TableName, Failure> {
    let who = c.principal(headers)?;
    let table = table_name(name)?;
    c.inner
        .access
        .check(&who, Privilege::Read, &table, action)?;
    Ok(table)
}

fn offsets_json(offsets: &PartitionOffsets) -> Value {
    Value::Object(
        offsets
            .0
            .iter()
            .map(|(p, o)| (p.0.to_string(), json!(o.0)))
            .collect(),
    )
}

/// A 64-bit id as a JSON string (as the protobuf JSON mapping writes int64): JavaScript
/// numbers keep only 53 bits, and snapshot ids use all 63.
fn id(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn as_of_json(a: &AsOf) -> Value {
    json!({
        "snapshot_id": id(a.snapshot_id),
        "offsets": offsets_json(&a.offsets),
        "commit_time_ms": a.commit_time_ms,
        "lag_records": a.lag_records,
        "lag_ms": a.lag_ms,
    })
}

fn wire_as_of_json(a: &wire::AsOf) -> Value {
    let offsets: BTreeMap<String, i64> = a
        .offsets
        .iter()
        .map(|o| (o.partition.to_string(), o.offset))
        .collect();
    json!({
        "snapshot_id": id(a.snapshot_id),
        "offsets": offsets,
        "commit_time_ms": a.commit_time_ms,
        "lag_records": a.lag_records,
        "lag_ms": a.lag_ms,
    })
}

fn snapshot_json(s: &SnapshotEntry) -> Value {
    json!({
        "snapshot_id": id(Some(s.snapshot_id)),
        "parent_id": id(s.parent_id),
        "timestamp_ms": s.timestamp_ms,
        "operation": s.operation,
        "summary": s.summary,
        "offsets": s.offsets.as_ref().map(offsets_json),
    })
}

fn stream_json(s: &ActiveStream) -> Value {
    json!({
        "subscriber": s.subscriber,
        "started_ms": s.started_ms,
        "partitions": s.partitions,
        "records_read": s.records_read,
        "rows_delivered": s.rows_delivered,
        "lag_records": s.lag_records,
    })
}
