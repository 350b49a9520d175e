//! Client subcommands: talk gRPC to a running server, print results, exit 1 on error with one
//! line on stderr that says what is wrong and what to do.

pub(crate) mod compact;
pub(crate) mod lookup;
pub(crate) mod rows;
pub(crate) mod scan;
pub(crate) mod sql;
pub(crate) mod subscribe;
pub(crate) mod table;
pub(crate) mod write;

use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

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

/// Connects to the server (lazily; the first RPC reports an unreachable server).
pub(crate) fn channel(server: &str) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(server.to_string()).map_err(|e| {
        ClientError::new(format!(
            "--server {server} is not a valid URL ({e}); use e.g. http://127.0.0.1:7070"
        ))
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect_lazy())
}
