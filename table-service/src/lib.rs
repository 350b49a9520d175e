//! unitable-table-service: wires core and the role libraries into the `unitable` binary.
//!
//! - [`cli`]: the command line (clap): `serve` and the client subcommands.
//! - `serve`: builds the catalog, the changelog and the roles from flags, starts the gRPC server
//!   (with health and reflection) and the HTTP server (`/metrics`, `/healthz`), and shuts them
//!   down in order on SIGINT/SIGTERM.
//! - `grpc`: the gRPC service implementations; `status` maps every error to a gRPC status in
//!   one exhaustive place.
//! - `flight`: Arrow Flight and Flight SQL on the same port, authentication and grants.
//! - `client`: the client subcommands, talking gRPC to a running server.

mod access;
pub mod cli;
mod client;
mod console;
mod flight;
mod grpc;
mod resp;
mod serve;
mod status;
mod telemetry;
mod wire_json;
