//! `unitable ingest start|stop|status`: CDC ingest of a Debezium topic into a table. Start and
//! stop set and remove the table's `unitable.ingest.*` properties (the node committing the
//! table runs the ingester); status reads the positions through GetTable.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use unitable_core::naming::props;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{AlterTableRequest, GetTableRequest, IngestStatus};

use super::{ClientError, Connection};
use crate::cli::OutputFormat;

/// `unitable ingest ...`
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Start feeding a table (it needs a primary key) from a Debezium JSON topic on the
    /// server's Kafka cluster: inserts, updates and deletes, exactly once. A table that
    /// ingested before resumes from its recorded positions.
    Start(StartArgs),
    /// Stop a table's ingest (positions are kept: a later start resumes from them).
    Stop {
        /// NAMESPACE.TABLE
        table: String,
    },
    /// Show a table's ingest: source, and per source partition the position, a batch being
    /// written, the watermarks and the lag.
    Status {
        /// NAMESPACE.TABLE
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `unitable ingest start` flags.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// NAMESPACE.TABLE
    pub table: String,
    /// The source topic (Debezium writes `<server>.<database>.<table>`).
    #[arg(long)]
    pub topic: String,
    /// The source format.
    #[arg(long, value_enum, default_value_t = SourceFormat::DebeziumJson)]
    pub format: SourceFormat,
    /// Where a source partition without a recorded position starts.
    #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
    pub start: String,
    /// The unit (ms, us, ns) of integer timestamps in events without a schema
    /// (`value.converter.schemas.enable=false`); with schemas the Connect type says it.
    #[arg(long)]
    pub timestamp_unit: Option<String>,
    /// What to do with source columns the table lacks: `ignore` (leave the value out, count
    /// it) or `reject` (dead-letter the event).
    #[arg(long, default_value = "ignore", value_parser = ["ignore", "reject"])]
    pub unknown_columns: String,
    /// Start over: forget the recorded positions and read the source again from --start (a
    /// new ingest generation; changes already ingested are applied again, which upserts and
    /// deletes by key make harmless to the rows). For a source topic that was recreated, or
    /// that lost records to retention.
    #[arg(long)]
    pub reset: bool,
    /// The named Kafka cluster the source topic is on (`serve --kafka-cluster`; default: the
    /// server's default cluster).
    #[arg(long)]
    pub cluster: Option<String>,
}

/// Source formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SourceFormat {
    /// Debezium's JSON envelope, with or without the Connect schema.
    DebeziumJson,
}

impl SourceFormat {
    /// The `unitable.ingest.format` value.
    fn as_str(self) -> &'static str {
        match self {
            SourceFormat::DebeziumJson => "debezium-json",
        }
    }
}

/// The keys `ingest stop` removes (the generation stays, so a later start goes on in it).
const KEYS: [&str; 6] = [
    props::INGEST_TOPIC,
    props::INGEST_CLUSTER,
    props::INGEST_FORMAT,
    props::INGEST_START,
    props::INGEST_TIMESTAMP_UNIT,
    props::INGEST_UNKNOWN_COLUMNS,
];

/// Runs one ingest subcommand.
pub(crate) async fn run(conn: &Connection, cmd: IngestCommand) -> ExitCode {
    match run_inner(conn, cmd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn run_inner(conn: &Connection, cmd: IngestCommand) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut client = TableAdminServiceClient::new(conn.channel()?);
    let rpc_err = |s: tonic::Status| ClientError::from_status(server, &s);
    match cmd {
        IngestCommand::Start(args) => {
            let mut set = HashMap::new();
            set.insert(props::INGEST_TOPIC.to_string(), args.topic.clone());
            set.insert(
                props::INGEST_FORMAT.to_string(),
                args.format.as_str().to_string(),
            );
            set.insert(props::INGEST_START.to_string(), args.start);
            set.insert(
                props::INGEST_UNKNOWN_COLUMNS.to_string(),
                args.unknown_columns,
            );
            if args.reset {
                let current = client
                    .get_table(GetTableRequest {
                        table: args.table.clone(),
                    })
                    .await
                    .map_err(rpc_err)?
                    .into_inner();
                let generation = current
                    .table
                    .and_then(|t| t.definition)
                    .and_then(|d| d.properties.get(props::INGEST_GENERATION).cloned())
                    .and_then(|g| g.trim().parse::<u32>().ok())
                    .unwrap_or(0);
                set.insert(
                    props::INGEST_GENERATION.to_string(),
                    (generation + 1).to_string(),
                );
            }
            let mut unset = Vec::new();
            match args.cluster {
                Some(cluster) => {
                    set.insert(props::INGEST_CLUSTER.to_string(), cluster);
                }
                None => unset.push(props::INGEST_CLUSTER.to_string()),
            }
            match args.timestamp_unit {
                Some(unit) => {
                    set.insert(props::INGEST_TIMESTAMP_UNIT.to_string(), unit);
                }
                None => unset.push(props::INGEST_TIMESTAMP_UNIT.to_string()),
            }
            client
                .alter_table(AlterTableRequest {
                    table: args.table.clone(),
                    set_properties: set,
                    unset_properties: unset,
                    column_changes: Vec::new(),
                })
                .await
                .map_err(rpc_err)?;
            println!(
                "{} ingests {} ({}); the node committing the table starts within a \
                 few seconds. Follow it with `unitable ingest status {}`",
                args.table,
                args.topic,
                args.format.as_str(),
                args.table
            );
        }
        IngestCommand::Stop { table } => {
            client
                .alter_table(AlterTableRequest {
                    table: table.clone(),
                    set_properties: HashMap::new(),
                    unset_properties: KEYS.iter().map(|k| k.to_string()).collect(),
                    column_changes: Vec::new(),
                })
                .await
                .map_err(rpc_err)?;
            println!(
                "{table} stops ingesting (within a second; a batch being written is finished \
                 first or written again on the next start)"
            );
        }
        IngestCommand::Status { table, format } => {
            let response = client
                .get_table(GetTableRequest {
                    table: table.clone(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            let Some(status) = response.ingest else {
                return Err(ClientError::new(format!(
                    "{table} ingests nothing; start with `unitable ingest start {table} --topic TOPIC`"
                )));
            };
            match format {
                OutputFormat::Json => println!("{:#}", status_json(&status)),
                OutputFormat::Text => print!("{}", status_text(&table, &status)),
            }
        }
    }
    Ok(())
}

pub(crate) fn status_json(s: &IngestStatus) -> serde_json::Value {
    json!({
        "topic": s.topic,
        "format": s.format,
        "start": s.start,
        "source_exists": s.source_exists,
        "lag": s.partitions.iter().map(|p| p.lag).sum::<i64>(),
        "partitions": s.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "next_offset": p.next_offset,
            "pending": p.pending_last,
            "low_watermark": p.low_watermark,
            "high_watermark": p.high_watermark,
            "lag": p.lag,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn status_text(table: &str, s: &IngestStatus) -> String {
    let mut out = format!(
        "ingest into {table} from {} ({}, new partitions start at {})\n",
        s.topic, s.format, s.start
    );
    if !s.source_exists {
        out.push_str("  the source topic does not exist (yet); the ingester waits for it\n");
        return out;
    }
    let lag: i64 = s.partitions.iter().map(|p| p.lag).sum();
    out.push_str(&format!("  lag: {lag} source records\n"));
    out.push_str("  partition  next       pending    low        high       lag\n");
    for p in &s.partitions {
        let opt = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "  {:<10} {:<10} {:<10} {:<10} {:<10} {}\n",
            p.partition,
            opt(p.next_offset),
            opt(p.pending_last),
            p.low_watermark,
            p.high_watermark,
            p.lag
        ));
    }
    out
}
