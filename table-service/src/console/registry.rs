//! A read-only schema registry for `avro-v1` changelogs on the HTTP port, in the Confluent
//! Schema Registry's REST shape, so registry-aware Avro consumers (tested: confluent-kafka's
//! `AvroDeserializer`) find a value's schema from the id in its framing:
//!
//! - `GET /schemas/ids/{id}`: `{"schema": "<Avro schema JSON>"}`;
//! - `GET /schemas/ids/{id}/schema`: the Avro schema itself;
//! - `GET /subjects`: `<topic>-value` of every readable table that writes `avro-v1`;
//! - `GET /subjects/{subject}/versions`, `.../versions/{n|latest}`: a table's schemas in
//!   Iceberg schema id order as versions 1, 2, ... (`{"subject", "version", "id", "schema"}`).
//!
//! Ids are not stored: an id is [`avro::schema_id`] of a table uuid and one of its Iceberg
//! schema ids, so the endpoint searches the schemas of the tables the caller may read. Callers
//! authenticate as on the JSON API (a bearer token), or with HTTP basic auth whose password is
//! the token (what registry clients send with `basic.auth.user.info`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use unitable_core::naming::TableName;
use unitable_core::naming::props;
use unitable_core::record::avro;
use unitable_core::table::{Column, RecordFormat};
use unitable_proto::v1 as wire;
use unitable_proto::v1::table_admin_service_server::TableAdminService;

use super::{Console, Failure};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An answer in the registry's error shape: `{"error_code": 40403, "message": "..."}`.
fn registry_error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    let body = json!({ "error_code": code, "message": message.into() });
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// A failed call in the registry's error shape (its codes are the HTTP status times 100 plus
/// a detail digit).
fn failed(f: Failure) -> Response {
    let code = u32::from(f.status.as_u16()) * 100 + 1;
    registry_error(f.status, code, f.message)
}

fn registry_json(body: &Value) -> Response {
    let mut response = body.to_string().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// `headers` with HTTP basic credentials turned into the bearer token they carry as password.
fn bearer_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(credentials) = basic {
        let token = credentials
            .split_once(':')
            .map_or(credentials.as_str(), |(_, password)| password);
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
            out.insert(header::AUTHORIZATION, value);
        }
    }
    out
}

/// One schema of a table as the registry shows it.
struct Version {
    /// 1 for the table's first schema, then up by one per schema (in Iceberg schema id order).
    version: u32,
    /// The id in the framing of values written with it.
    id: u32,
    /// The Avro value schema.
    schema: Value,
}

/// The tables the caller may read (a `ListTables` through the gRPC service, so its grants).
async fn readable(c: &Console, headers: &HeaderMap) -> Result<Vec<TableName>, Response> {
    let request = c
        .request(headers, wire::ListTablesRequest::default())
        .map_err(failed)?;
    let names = c
        .inner
        .admin
        .list_tables(request)
        .await
        .map_err(|s| failed(Failure::from(s)))?
        .into_inner()
        .tables;
    Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
}

/// Every schema of `name` with its version and id, and whether the table writes `avro-v1`
/// now; `None` for a table dropped since it was listed.
async fn versions(c: &Console, name: &TableName) -> Result<Option<(Vec<Version>, bool)>, Response> {
    let Ok(table) = c.inner.admin.tables().catalog().load(name).await else {
        return Ok(None);
    };
    let metadata = table.metadata();
    let uuid = metadata.uuid().to_string();
    let mut schemas: Vec<_> = metadata.schemas_iter().collect();
    schemas.sort_by_key(|s| s.schema_id());
    let mut out = Vec::with_capacity(schemas.len());
    for (i, schema) in schemas.into_iter().enumerate() {
        let columns = Column::all_of(schema).map_err(|reason| {
            registry_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                50001,
                format!("table {name}, schema {}: {reason}", schema.schema_id()),
            )
        })?;
        out.push(Version {
            version: u32::try_from(i + 1).unwrap_or(u32::MAX),
            id: avro::schema_id(&uuid, schema.schema_id()),
            schema: avro::value_schema(name, &columns),
        });
    }
    let avro_now = metadata
        .properties()
        .get(props::CHANGELOG_FORMAT)
        .is_some_and(|f| f == RecordFormat::AvroV1.as_str());
    Ok(Some((out, avro_now)))
}

/// The Avro value schemas with this id among the tables the caller may read, with their table.
async fn find(
    c: &Console,
    headers: &HeaderMap,
    id: u32,
) -> Result<Vec<(TableName, Value)>, Response> {
    let mut found = Vec::new();
    for name in readable(c, headers).await? {
        let Some((versions, _)) = versions(c, &name).await? else {
            continue;
        };
        for v in versions.into_iter().filter(|v| v.id == id) {
            found.push((name.clone(), v.schema));
        }
    }
    Ok(found)
}

/// The subject of a table's values (the topic name strategy): `<topic>-value`.
fn subject_of(name: &TableName) -> String {
    format!("{}-value", name.changelog_topic())
}

/// `GET /subjects`: the value subjects of the readable tables that write `avro-v1`.
pub(super) async fn subjects(State(c): State<Console>, headers: HeaderMap) -> Response {
    let headers = bearer_headers(&headers);
    let names = match readable(&c, &headers).await {
        Ok(names) => names,
        Err(response) => return response,
    };
    let mut out = Vec::new();
    for name in names {
        match versions(&c, &name).await {
            Ok(Some((_, true))) => out.push(subject_of(&name)),
            Ok(_) => {}
            Err(response) => return response,
        }
    }
    out.sort();
    registry_json(&json!(out))
}

/// The versions of `subject`, or the registry's 404 (also for tables the caller may not
/// read: they do not exist for it).
async fn subject_versions(
    c: &Console,
    headers: &HeaderMap,
    subject: &str,
) -> Result<Vec<Version>, Response> {
    let headers = bearer_headers(headers);
    let not_found = || {
        registry_error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    };
    let name = readable(c, &headers)
        .await?
        .into_iter()
        .find(|n| subject_of(n) == subject)
        .ok_or_else(not_found)?;
    match versions(c, &name).await? {
        Some((versions, _)) => Ok(versions),
        None => Err(not_found()),
    }
}

/// `GET /subjects/{subject}/versions`: the version numbers.
pub(super) async fn subject_version_list(
    State(c): State<Console>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> Response {
    match subject_versions(&c, &headers, &subject).await {
        Ok(versions) => registry_json(&json!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>()
        )),
        Err(response) => response,
    }
}

/// `GET /subjects/{subject}/versions/{version}` (a number or `latest`).
pub(super) async fn subject_version(
    State(c): State<Console>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let versions = match subject_versions(&c, &headers, &subject).await {
        Ok(versions) => versions,
        Err(response) => return response,
    };
    let wanted = if version == "latest" || version == "-1" {
        versions.last()
    } else {
        version
            .parse::<u32>()
            .ok()
            .and_then(|n| versions.iter().find(|v| v.version == n))
    };
    match wanted {
        Some(v) => registry_json(&json!({
            "subject": subject,
            "version": v.version,
            "id": v.id,
            "schema": v.schema.to_string(),
        })),
        None => registry_error(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        ),
    }
}

/// The one schema with this id, or the registry's error answer.
async fn schema(c: &Console, headers: &HeaderMap, id: &str) -> Result<Value, Response> {
    let not_found = || {
        registry_error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        )
    };
    let id: u32 = id.parse().map_err(|_| not_found())?;
    let mut found = find(c, &bearer_headers(headers), id).await?;
    match found.len() {
        0 => Err(not_found()),
        1 => Ok(found.remove(0).1),
        _ => Err(registry_error(
            StatusCode::CONFLICT,
            40901,
            format!(
                "schema id {id} belongs to more than one table ({}); read these tables' values with the schema of their table",
                found
                    .iter()
                    .map(|(t, _)| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `GET /schemas/ids/{id}`.
pub(super) async fn by_id(
    State(c): State<Console>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match schema(&c, &headers, &id).await {
        Ok(s) => registry_json(&json!({ "schema": s.to_string() })),
        Err(response) => response,
    }
}

/// `GET /schemas/ids/{id}/schema`.
pub(super) async fn schema_only(
    State(c): State<Console>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match schema(&c, &headers, &id).await {
        Ok(s) => registry_json(&s),
        Err(response) => response,
    }
}
