//! Client subcommands: talk gRPC to a running server, print results, exit 1 on error with one
//! line on stderr that says what is wrong and what to do.

pub(crate) mod access;
pub(crate) mod compact;
pub(crate) mod groups;
pub(crate) mod ingest;
pub(crate) mod lookup;
pub(crate) mod moves;
pub(crate) mod ops;
pub(crate) mod rows;
pub(crate) mod scan;
pub(crate) mod sql;
pub(crate) mod subscribe;
pub(crate) mod table;
pub(crate) mod training;
pub(crate) mod verify;
pub(crate) mod write;

use std::process::ExitCode;
use std::time::Duration;

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// A client-side failure, printed as one line.
#[derive(Debug)]
pub(crate) struct ClientError(String);

impl ClientError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The error for a failed RPC, with a hint for the common codes.
    pub(crate) fn from_status(server: &str, status: &Status) -> Self {
        let hint = match status.code() {
            Code::Unavailable => format!(
                " (is the server running at {server}? start it with `unitable serve`, or point --server / UNITABLE_SERVER at it)"
            ),
            Code::NotFound => " (see `unitable table list`)".to_string(),
            Code::Unimplemented => " (this server does not support it yet)".to_string(),
            Code::Unauthenticated => {
                " (pass --token or set UNITABLE_TOKEN; see `unitable token create`)".to_string()
            }
            _ => String::new(),
        };
        Self(format!("{}{hint}", status.message()))
    }

    /// The message.
    pub(crate) fn message(&self) -> &str {
        &self.0
    }

    pub(crate) fn exit(self) -> ExitCode {
        eprintln!("error: {}", self.0);
        ExitCode::FAILURE
    }
}

/// Where and how the client commands connect: the server, the token, TLS files.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) server: String,
    pub(crate) token: Option<String>,
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) tls_client_cert: Option<PathBuf>,
    pub(crate) tls_client_key: Option<PathBuf>,
}

/// A channel that sends the bearer token with every call.
pub(crate) type Conn = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each request (nothing without a token).
#[derive(Debug, Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| {
        ClientError::new(format!(
            "cannot read {flag} {}: {e}; give a PEM file",
            path.display()
        ))
    })
}

impl Connection {
    /// Connects to the server (lazily; the first RPC reports an unreachable server). A call
    /// whose response has not started within 120 s fails (streams, once started, run on).
    pub(crate) fn channel(&self) -> Result<Conn, ClientError> {
        self.connect(Some(Duration::from_secs(120)))
    }

    /// Like [`Connection::channel`], without the per-call timeout: for calls that may
    /// legitimately run long before answering (Compact).
    pub(crate) fn channel_untimed(&self) -> Result<Conn, ClientError> {
        self.connect(None)
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<Conn, ClientError> {
        let server = &self.server;
        let mut endpoint = Endpoint::from_shared(server.clone()).map_err(|e| {
            ClientError::new(format!(
                "--server {server} is not a valid URL ({e}); use e.g. http://127.0.0.1:7070"
            ))
        })?;
        if self.tls_ca.is_some() || self.tls_client_cert.is_some() || server.starts_with("https:") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "--tls-ca")?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
                tls = tls.identity(Identity::from_pem(
                    read_pem(cert, "--tls-client-cert")?,
                    read_pem(key, "--tls-client-key")?,
                ));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                ClientError::new(format!(
                    "cannot set up TLS for {server}: {e}; use an https:// --server and check \
                     --tls-ca"
                ))
            })?;
        }
        let token = match &self.token {
            None => None,
            Some(token) => Some(format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ClientError::new(
                    "the token has characters a header cannot carry; copy it again from \
                     `unitable token create`",
                )
            })?),
        };
        let mut endpoint = endpoint.connect_timeout(Duration::from_secs(5));
        if let Some(timeout) = timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let channel = endpoint.connect_lazy();
        Ok(InterceptedService::new(channel, BearerToken(token)))
    }
}
