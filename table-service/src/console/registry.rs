//! A read-only schema registry for `avro-v1` changelogs on the HTTP port, in the Confluent
//! Schema Registry's REST shape, so registry-aware Avro consumers (tested: confluent-kafka's
//! `AvroDeserializer`) find a value's schema from the id in its framing:
//!
//! - `GET /schemas/ids/{id}`: `{"schema": "<Avro schema JSON>"}`;
//! - `GET /schemas/ids/{id}/schema`: the Avro schema itself.
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
use unitable_core::record::avro;
use unitable_core::table::Column;
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

/// The Avro value schemas with this id among the tables the caller may read, with their table.
async fn find(
    c: &Console,
    headers: &HeaderMap,
    id: u32,
) -> Result<Vec<(TableName, Value)>, Response> {
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
    let catalog = c.inner.admin.tables().catalog();
    let mut found = Vec::new();
    for name in names {
        let Ok(name) = name.parse::<TableName>() else {
            continue;
        };
        // A table dropped since the listing has no schemas to offer.
        let Ok(table) = catalog.load(&name).await else {
            continue;
        };
        let metadata = table.metadata();
        let uuid = metadata.uuid().to_string();
        for schema in metadata.schemas_iter() {
            if avro::schema_id(&uuid, schema.schema_id()) != id {
                continue;
            }
            let columns = Column::all_of(schema).map_err(|reason| {
                registry_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    50001,
                    format!("table {name}, schema {}: {reason}", schema.schema_id()),
                )
            })?;
            found.push((name.clone(), avro::value_schema(&name, &columns)));
        }
    }
    Ok(found)
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
