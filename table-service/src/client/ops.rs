//! `unitable admin ...`: operating a running server. `unitable admin log-level` shows the log
//! filter, `unitable admin log-level DIRECTIVES --for 10m` overrides it until the override
//! expires, `--reset` restores the start-up filter now. Needs `admin ON ALL`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use unitable_proto::v1::ops_service_client::OpsServiceClient;
use unitable_proto::v1::{GetLogLevelRequest, LogLevelResponse, SetLogLevelRequest};

use super::{ClientError, Connection};
use crate::cli::{OutputFormat, parse_duration};

/// `unitable admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Show the server's log filter; with DIRECTIVES, replace it for a while (`--for`), after
    /// which the start-up filter (UNITABLE_LOG) comes back by itself. Audit-logged.
    LogLevel {
        /// tracing filter directives, e.g. `debug` or `info,unitable_writer=debug`.
        #[arg(conflicts_with = "reset")]
        directives: Option<String>,
        /// How long the override lasts (1s to 24h), e.g. `90s`, `10m`, `1h`.
        #[arg(long = "for", value_parser = parse_duration, default_value = "10m")]
        duration: Duration,
        /// Restore the start-up filter now.
        #[arg(long)]
        reset: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// Runs `unitable admin ...`.
pub(crate) async fn run(conn: &Connection, command: AdminCommand) -> ExitCode {
    match run_inner(conn, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn run_inner(conn: &Connection, command: AdminCommand) -> Result<(), ClientError> {
    let AdminCommand::LogLevel {
        directives,
        duration,
        reset,
        format,
    } = command;
    let mut client = OpsServiceClient::new(conn.channel()?);
    let response = match (directives, reset) {
        (None, false) => client.get_log_level(GetLogLevelRequest {}).await,
        (directives, reset) => {
            client
                .set_log_level(SetLogLevelRequest {
                    directives: directives.unwrap_or_default(),
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    reset,
                })
                .await
        }
    }
    .map_err(|s| ClientError::from_status(&conn.server, &s))?
    .into_inner();
    print(&response, format);
    Ok(())
}

fn print(r: &LogLevelResponse, format: OutputFormat) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "directives": r.directives,
                "startup_directives": r.startup_directives,
                "expires_at_ms": r.expires_at_ms,
            })
        ),
        OutputFormat::Text => {
            println!("log filter: {}", r.directives);
            match r.expires_at_ms {
                Some(ms) => {
                    let at = chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| ms.to_string());
                    println!("until {at}, then back to: {}", r.startup_directives);
                }
                None => println!("(the start-up filter)"),
            }
        }
    }
}
