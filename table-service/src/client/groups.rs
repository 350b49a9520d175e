//! `unitable consumer-group list NS.TABLE` and `unitable consumer-group describe NS.TABLE
//! GROUP`: a table's consumer groups, their members, positions and lag.

use std::process::ExitCode;

use serde_json::Value;
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::{ConsumerGroup, DescribeConsumerGroupsRequest};

use super::{ClientError, Connection};
use crate::cli::{ConsumerGroupCommand, OutputFormat};
use crate::wire_json::group_json;

/// Runs `unitable consumer-group ...`.
pub(crate) async fn run(conn: &Connection, command: ConsumerGroupCommand) -> ExitCode {
    match run_inner(conn, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn run_inner(conn: &Connection, command: ConsumerGroupCommand) -> Result<(), ClientError> {
    let (table, group, format, detail) = match command {
        ConsumerGroupCommand::List { table, format } => (table, String::new(), format, false),
        ConsumerGroupCommand::Describe {
            table,
            group,
            format,
        } => (table, group, format, true),
    };
    let groups = ReadServiceClient::new(conn.channel()?)
        .describe_consumer_groups(DescribeConsumerGroupsRequest {
            table: table.clone(),
            group,
        })
        .await
        .map_err(|s| ClientError::from_status(&conn.server, &s))?
        .into_inner()
        .groups;
    match format {
        OutputFormat::Json => {
            let value = if detail {
                groups.first().map(group_json).unwrap_or(Value::Null)
            } else {
                Value::Array(groups.iter().map(group_json).collect())
            };
            println!("{value}");
        }
        OutputFormat::Text if detail => {
            for g in &groups {
                print_group(&table, g);
            }
        }
        OutputFormat::Text => {
            if groups.is_empty() {
                println!("{table} has no consumer groups");
            }
            println!(
                "{:<32} {:>10} {:>8} {:>12}",
                "GROUP", "GENERATION", "MEMBERS", "LAG"
            );
            for g in &groups {
                println!(
                    "{:<32} {:>10} {:>8} {:>12}",
                    g.group,
                    g.generation,
                    g.members.len(),
                    g.lag_records
                );
            }
        }
    }
    Ok(())
}

fn print_group(table: &str, g: &ConsumerGroup) {
    println!(
        "consumer group {} of {table}: generation {}, {} members, lag {} records",
        g.group,
        g.generation,
        g.members.len(),
        g.lag_records
    );
    println!(
        "{:<40} {:<24} {:>10}  PARTITIONS",
        "MEMBER", "NODE", "GENERATION"
    );
    for m in &g.members {
        println!(
            "{:<40} {:<24} {:>10}  {:?}",
            m.member, m.node, m.generation, m.partitions
        );
    }
    println!(
        "{:>9} {:>12} {:>12} {:>10}  {:<40} COMMITTED BY",
        "PARTITION", "COMMITTED", "HIGH", "LAG", "OWNER"
    );
    for p in &g.partitions {
        println!(
            "{:>9} {:>12} {:>12} {:>10}  {:<40} {}",
            p.partition,
            p.committed_offset
                .map_or_else(|| "-".to_string(), |o| o.to_string()),
            p.high_watermark,
            p.lag_records,
            if p.owner.is_empty() { "-" } else { &p.owner },
            if p.committed_by.is_empty() {
                "-".to_string()
            } else {
                format!("{} (generation {})", p.committed_by, p.committed_generation)
            }
        );
    }
}
