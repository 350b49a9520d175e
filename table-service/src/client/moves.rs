//! `unitable table move-changelog` and `unitable table positions`: moving a table's changelog
//! between named Kafka clusters, and finding its records on them (docs/operations.md).

use std::time::{Duration, Instant};

use serde_json::json;
use unitable_core::offsets::PartitionOffsets;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{
    ChangelogBinding, ChangelogPositionsRequest, GetTableRequest, MoveChangelogRequest,
    PartitionOffset, PartitionPosition,
};

use super::{ClientError, Conn};
use crate::cli::OutputFormat;

/// What `table move-changelog` was asked.
pub(crate) struct MoveArgs {
    pub(crate) table: String,
    pub(crate) to: Option<String>,
    pub(crate) abort: bool,
    pub(crate) wait: bool,
    pub(crate) timeout: Duration,
}

fn binding_of(info: Option<unitable_proto::v1::TableInfo>) -> ChangelogBinding {
    info.and_then(|t| t.definition)
        .and_then(|d| d.changelog)
        .unwrap_or_default()
}

/// Requests the move, then (unless told not to wait) follows it until the table is on the
/// new generation, printing where it is.
pub(crate) async fn move_changelog(
    client: &mut TableAdminServiceClient<Conn>,
    server: &str,
    args: MoveArgs,
) -> Result<(), ClientError> {
    let rpc_err = |s: tonic::Status| ClientError::from_status(server, &s);
    let to = match (&args.to, args.abort) {
        (_, true) => String::new(),
        (Some(to), false) => to.clone(),
        (None, false) => {
            return Err(ClientError::new(
                "give --to CLUSTER (or --abort to give up a move under way)",
            ));
        }
    };
    let before = binding_of(
        client
            .move_changelog(MoveChangelogRequest {
                table: args.table.clone(),
                to_cluster: to.clone(),
                abort: args.abort,
            })
            .await
            .map_err(rpc_err)?
            .into_inner()
            .table,
    );
    if args.abort {
        println!(
            "aborted the move of {}: the changelog stays on `{}`",
            args.table,
            cluster_text(&before.cluster)
        );
        return Ok(());
    }
    println!(
        "moving the changelog of {} from `{}` to `{to}` (generation {} -> {}); writes pause until the switch",
        args.table,
        cluster_text(&before.cluster),
        before.generation,
        before.generation + 1
    );
    if !args.wait {
        println!(
            "not waiting; follow it with `unitable table describe {}`",
            args.table
        );
        return Ok(());
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = binding_of(
            client
                .get_table(GetTableRequest {
                    table: args.table.clone(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner()
                .table,
        );
        if now.generation > before.generation {
            let end = now
                .history
                .last()
                .map(|g| offsets_text(&g.end))
                .unwrap_or_default();
            println!(
                "moved in {:.1} s: now on `{}` as topic {} (the old topic ends at {end})",
                started.elapsed().as_secs_f64(),
                now.cluster,
                now.current_topic
            );
            return Ok(());
        }
        if now.moving.is_empty() {
            return Err(ClientError::new(format!(
                "the move of {} was aborted (the changelog is still on `{}`)",
                args.table,
                cluster_text(&now.cluster)
            )));
        }
        if started.elapsed() > args.timeout {
            return Err(ClientError::new(format!(
                "the move of {} has not switched after {} s; the table's committer carries it out: check that a server commits the table (`unitable table describe`, its logs), or give it up with `unitable table move-changelog {} --abort`",
                args.table,
                args.timeout.as_secs(),
                args.table
            )));
        }
        eprint!(
            "\rwaiting for the committer to switch ... {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
}

fn cluster_text(cluster: &str) -> &str {
    if cluster.is_empty() {
        "(server default)"
    } else {
        cluster
    }
}

fn offsets_text(offsets: &[PartitionOffset]) -> String {
    offsets
        .iter()
        .map(|o| format!("{}:{}", o.partition, o.offset))
        .collect::<Vec<_>>()
        .join(",")
}

fn wire_offsets(text: &str) -> Result<Vec<PartitionOffset>, ClientError> {
    let offsets: PartitionOffsets = text
        .parse()
        .map_err(|e: unitable_core::offsets::ParseOffsetsError| ClientError::new(e.to_string()))?;
    Ok(offsets
        .0
        .iter()
        .map(|(p, o)| PartitionOffset {
            partition: p.0,
            offset: o.0,
        })
        .collect())
}

/// Prints where each partition's records are from the given positions on.
pub(crate) async fn positions(
    client: &mut TableAdminServiceClient<Conn>,
    server: &str,
    table: String,
    offsets: Option<String>,
    kafka_topic: Option<String>,
    format: OutputFormat,
) -> Result<(), ClientError> {
    let (offsets, kafka_offsets) = match (&kafka_topic, offsets) {
        (None, Some(o)) => (wire_offsets(&o)?, Vec::new()),
        (None, None) => (Vec::new(), Vec::new()),
        (Some(_), Some(o)) => (Vec::new(), wire_offsets(&o)?),
        (Some(_), None) => {
            return Err(ClientError::new(
                "--kafka-topic needs --offsets P:O,... (Kafka offsets of that topic)",
            ));
        }
    };
    let response = client
        .changelog_positions(ChangelogPositionsRequest {
            table,
            offsets,
            kafka_topic: kafka_topic.unwrap_or_default(),
            kafka_offsets,
        })
        .await
        .map_err(|s| ClientError::from_status(server, &s))?
        .into_inner();
    match format {
        OutputFormat::Json => println!("{}", positions_json(&response.partitions)),
        OutputFormat::Text => {
            for p in &response.partitions {
                println!("partition {} at {}", p.partition, p.offset);
                for s in &p.segments {
                    let end = s
                        .end_offset
                        .map_or_else(|| "(current)".to_string(), |e| format!("..{e}"));
                    println!(
                        "  generation {}  {} {}  {}  from {} {end}",
                        s.generation, s.cluster, s.bootstrap_servers, s.topic, s.from_offset
                    );
                }
            }
        }
    }
    Ok(())
}

fn positions_json(partitions: &[PartitionPosition]) -> serde_json::Value {
    json!(
        partitions
            .iter()
            .map(|p| json!({
                "partition": p.partition,
                "offset": p.offset,
                "segments": p.segments.iter().map(|s| json!({
                    "generation": s.generation,
                    "cluster": s.cluster,
                    "bootstrap_servers": s.bootstrap_servers,
                    "topic": s.topic,
                    "from_offset": s.from_offset,
                    "end_offset": s.end_offset,
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()
    )
}
