//! The web console: a single page served by `unitable serve` on its HTTP port under
//! `/console/`, and the JSON API it reads under `/api/v1/` (usable on its own, e.g. with curl).
//!
//! Every API call authenticates exactly as a gRPC call does (the same interceptor: a bearer
//! token in `Authorization`, or anonymous on a server started with `--allow-anonymous`) and is
//! answered by the gRPC service implementations themselves, so grants, audit lines and errors
//! are the gRPC API's. The page keeps the token in the tab's session storage and sends it as
//! `Authorization: Bearer ...`; there are no cookies, so no cross-site request can act as the
//! user.

mod api;
mod history;
mod registry;

pub(crate) use history::History;

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use tonic::Code;
use tonic::service::Interceptor;
use unitable_reader::Reader;

use crate::access::auth::Authenticator;
use crate::access::{Access, Principal};
use crate::grpc::access::AccessApi;
use crate::grpc::admin::AdminApi;
use crate::grpc::read::ReadApi;

/// What the console's API calls into.
#[derive(Clone)]
pub(crate) struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    admin: AdminApi,
    read: ReadApi,
    access_api: AccessApi,
    access: Access,
    reader: Reader,
    auth: Authenticator,
    history: History,
}

impl Console {
    pub(crate) fn new(
        admin: AdminApi,
        read: ReadApi,
        access: Access,
        reader: Reader,
        history: History,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                read,
                access_api: AccessApi::new(access.clone()),
                auth: Authenticator::new(access.clone()),
                access,
                reader,
                history,
            }),
        }
    }

    /// A gRPC request carrying `body` and the caller's identity, authenticated from the HTTP
    /// request's `Authorization` header by the gRPC interceptor.
    fn request<T>(&self, headers: &HeaderMap, body: T) -> Result<tonic::Request<T>, Failure> {
        let mut request = tonic::Request::new(());
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value =
                tonic::metadata::MetadataValue::try_from(value.as_bytes()).map_err(|_| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        "INVALID_ARGUMENT",
                        "the Authorization header is not valid text",
                    )
                })?;
            request.metadata_mut().insert("authorization", value);
        }
        let (metadata, extensions, ()) = self
            .inner
            .auth
            .clone()
            .call(request)
            .map_err(Failure::from)?
            .into_parts();
        Ok(tonic::Request::from_parts(metadata, extensions, body))
    }

    /// The caller's identity, for calls answered here rather than by a gRPC service.
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, Failure> {
        Ok(Principal::of(&self.request(headers, ())?)?)
    }
}

/// The console's routes: the page, its assets and the JSON API.
pub(crate) fn router(console: Console) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Redirect::temporary("/console/") }))
        .route(
            "/console",
            get(|| async { Redirect::temporary("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/api/v1/auth", get(api::auth))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/api/v1/tables", get(api::tables))
        .route("/api/v1/tables/{table}", get(api::table))
        .route("/api/v1/tables/{table}/snapshots", get(api::snapshots))
        .route("/api/v1/tables/{table}/freshness", get(api::freshness))
        .route("/api/v1/tables/{table}/consumers", get(api::consumers))
        .route(
            "/api/v1/tables/{table}/dead-letters",
            get(api::dead_letters),
        )
        .route("/api/v1/sql", post(api::sql))
        .route("/schemas/ids/{id}", get(registry::by_id))
        .route("/schemas/ids/{id}/schema", get(registry::schema_only))
        .route("/subjects", get(registry::subjects))
        .route(
            "/subjects/{subject}/versions",
            get(registry::subject_version_list),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(registry::subject_version),
        )
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such page; the console is at /console/, its API under /api/v1/",
            )
        })
        .with_state(console)
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// A static asset, with a policy that lets the page load only its own scripts and styles and
/// talk only to this server.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// An API error: the gRPC code's name and message as JSON, under the matching HTTP status.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let (status, code) = match s.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
            Code::Cancelled => (StatusCode::BAD_REQUEST, "CANCELLED"),
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
            }
        };
        Self::new(status, code, s.message())
    }
}

impl From<crate::status::ApiError> for Failure {
    fn from(e: crate::status::ApiError) -> Self {
        tonic::Status::from(e).into()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Tells a browser opening the API directly what to send, without its login prompt.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"unitable\""),
            );
        }
        response
    }
}
