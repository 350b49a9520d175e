//! `unitable table create|list|describe|drop|add-column`.

use std::collections::HashMap;
use std::process::ExitCode;

use serde_json::json;
use unitable_core::naming::TableName;
use unitable_core::partition::PartitionField;
use unitable_core::table::{Column, ColumnChange};
use unitable_core::types::ColumnType;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{
    AddColumnRequest, AlterTableRequest, ChangelogBinding, ChangelogTopic, CompactionStatus,
    CreateTableRequest, DropTableRequest, GetTableRequest, ListTablesRequest, TableDefinition,
    TableInfo,
};

use super::{ClientError, Connection};
use crate::cli::{CreateArgs, OutputFormat, TableCommand};
use crate::wire_json::{compaction_json, describe_json, partition_text, topic_json, type_text};

/// Runs one table subcommand.
pub(crate) async fn run(conn: &Connection, cmd: TableCommand) -> ExitCode {
    match run_inner(conn, cmd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

fn parse_name(text: &str) -> Result<TableName, ClientError> {
    text.parse()
        .map_err(|e: unitable_core::Error| ClientError::new(e.to_string()))
}

async fn run_inner(conn: &Connection, cmd: TableCommand) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let mut client = TableAdminServiceClient::new(conn.channel()?);
    let rpc_err = |s: tonic::Status| ClientError::from_status(server, &s);
    match cmd {
        TableCommand::Create(args) => {
            let definition = definition_from_args(&args)?;
            let info = client
                .create_table(CreateTableRequest {
                    definition: Some(definition),
                })
                .await
                .map_err(rpc_err)?
                .into_inner()
                .table
                .unwrap_or_default();
            let def = info.definition.unwrap_or_default();
            let topic = def.changelog.map(|c| c.topic).unwrap_or_default();
            println!(
                "created {} ({} buckets, changelog topic {topic})",
                def.table, def.buckets
            );
        }
        TableCommand::MoveChangelog {
            table,
            to,
            abort,
            no_wait,
            timeout,
        } => {
            let name = parse_name(&table)?;
            let args = super::moves::MoveArgs {
                table: name.to_string(),
                to,
                abort,
                wait: !no_wait,
                timeout,
            };
            super::moves::move_changelog(&mut client, server, args).await?;
        }
        TableCommand::Positions {
            table,
            offsets,
            kafka_topic,
            format,
        } => {
            let name = parse_name(&table)?;
            super::moves::positions(
                &mut client,
                server,
                name.to_string(),
                offsets,
                kafka_topic,
                format,
            )
            .await?;
        }
        TableCommand::List { namespace, format } => {
            let tables = client
                .list_tables(ListTablesRequest {
                    namespace: namespace.unwrap_or_default(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner()
                .tables;
            match format {
                OutputFormat::Json => println!("{}", json!(tables)),
                OutputFormat::Text => tables.iter().for_each(|t| println!("{t}")),
            }
        }
        TableCommand::Describe { table, format } => {
            let name = parse_name(&table)?;
            let response = client
                .get_table(GetTableRequest {
                    table: name.to_string(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            let info = response.table.unwrap_or_default();
            let compaction = response.compaction;
            let topic = response.changelog;
            match format {
                OutputFormat::Json => {
                    let mut value = describe_json(&info);
                    value["compaction"] = compaction.as_ref().map_or(json!(null), compaction_json);
                    value["changelog_topic"] = topic.as_ref().map_or(json!(null), topic_json);
                    value["ingest"] = response
                        .ingest
                        .as_ref()
                        .map_or(json!(null), super::ingest::status_json);
                    println!("{value:#}");
                }
                OutputFormat::Text => {
                    print!("{}", describe_text(&info));
                    if let Some(t) = &topic {
                        print!("{}", topic_text(t));
                    }
                    if let Some(c) = &compaction {
                        print!("{}", compaction_text(c));
                    }
                    if let Some(i) = &response.ingest {
                        print!("{}", super::ingest::status_text(&name.to_string(), i));
                    }
                }
            }
        }
        TableCommand::Drop { table, keep_data } => {
            let name = parse_name(&table)?;
            client
                .drop_table(DropTableRequest {
                    table: name.to_string(),
                    keep_data,
                })
                .await
                .map_err(rpc_err)?;
            println!("dropped {name}");
        }
        TableCommand::AddColumn { table, column } => {
            let name = parse_name(&table)?;
            let column = Column::parse(&column).map_err(|e| ClientError::new(e.to_string()))?;
            client
                .add_column(AddColumnRequest {
                    table: name.to_string(),
                    column: Some((&column).into()),
                })
                .await
                .map_err(rpc_err)?;
            println!("added column {} ({}) to {name}", column.name, column.ty);
        }
        TableCommand::Alter {
            table,
            set,
            unset,
            rename,
            widen,
            make_optional,
            move_column,
            drop,
        } => {
            let name = parse_name(&table)?;
            let changes = column_changes(&rename, &widen, &make_optional, &move_column, &drop)?;
            if set.is_empty() && unset.is_empty() && changes.is_empty() {
                return Err(ClientError::new(
                    "nothing to alter: give --set KEY=VALUE, --unset KEY or a column change (--rename-column, --widen-column, --make-optional, --move-column, --drop-column)",
                ));
            }
            let set_properties = key_values(&set, "--set")?;
            let altered = client
                .alter_table(AlterTableRequest {
                    table: name.to_string(),
                    set_properties,
                    unset_properties: unset,
                    column_changes: changes.iter().map(Into::into).collect(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            let info = altered.table.unwrap_or_default();
            let definition = info.definition.unwrap_or_default();
            println!("altered {name}; schema {}:", info.schema_id);
            for c in &definition.columns {
                let column = Column::try_from(c).map_err(|e| ClientError::new(e.to_string()))?;
                println!(
                    "  {:>3}  {}:{}{}",
                    column.field_id,
                    column.name,
                    column.ty,
                    if column.required { "!" } else { "" }
                );
            }
            let mut properties: Vec<_> = definition.properties.into_iter().collect();
            properties.sort();
            println!("properties:");
            for (k, v) in properties {
                println!("  {k}={v}");
            }
        }
    }
    Ok(())
}

/// The column changes of `table alter`'s flags, in the order they apply: renames, widens,
/// make-optional, moves, drops.
fn column_changes(
    rename: &[String],
    widen: &[String],
    make_optional: &[String],
    move_column: &[String],
    drop: &[String],
) -> Result<Vec<ColumnChange>, ClientError> {
    let mut changes = Vec::new();
    for r in rename {
        let (column, to) = r
            .split_once('=')
            .ok_or_else(|| ClientError::new(format!("--rename-column `{r}` must be OLD=NEW")))?;
        changes.push(ColumnChange::Rename {
            column: column.trim().to_string(),
            to: to.trim().to_string(),
        });
    }
    for w in widen {
        let (column, ty) = w.split_once(':').ok_or_else(|| {
            ClientError::new(format!(
                "--widen-column `{w}` must be COLUMN:TYPE, e.g. qty:int64"
            ))
        })?;
        let column = column.trim();
        let to = ColumnType::parse(column, ty).map_err(|e| ClientError::new(e.to_string()))?;
        changes.push(ColumnChange::Widen {
            column: column.to_string(),
            to,
        });
    }
    for c in make_optional {
        changes.push(ColumnChange::MakeOptional {
            column: c.trim().to_string(),
        });
    }
    for m in move_column {
        let bad = || {
            ClientError::new(format!(
                "--move-column `{m}` must be COLUMN=first or COLUMN=after:OTHER"
            ))
        };
        let (column, place) = m.split_once('=').ok_or_else(bad)?;
        let after = match place.trim() {
            "first" => None,
            other => Some(
                other
                    .strip_prefix("after:")
                    .ok_or_else(bad)?
                    .trim()
                    .to_string(),
            ),
        };
        changes.push(ColumnChange::Move {
            column: column.trim().to_string(),
            after,
        });
    }
    for c in drop {
        changes.push(ColumnChange::Drop {
            column: c.trim().to_string(),
        });
    }
    Ok(changes)
}

/// `KEY=VALUE` arguments of `flag` as a map.
fn key_values(args: &[String], flag: &str) -> Result<HashMap<String, String>, ClientError> {
    let mut out = HashMap::new();
    for p in args {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| ClientError::new(format!("{flag} `{p}` must be KEY=VALUE")))?;
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// Builds the wire definition, catching malformed flags before calling the server.
fn definition_from_args(args: &CreateArgs) -> Result<TableDefinition, ClientError> {
    let invalid = |e: unitable_core::Error| ClientError::new(e.to_string());
    let name = parse_name(&args.table)?;
    let columns = args
        .columns
        .iter()
        .map(|c| Column::parse(c).map(|c| (&c).into()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let partition_by = args
        .partition_by
        .iter()
        .map(|p| PartitionField::parse(p).map(|p| (&p).into()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let properties = key_values(&args.properties, "--property")?;
    Ok(TableDefinition {
        table: name.to_string(),
        columns,
        primary_key: args
            .primary_key
            .iter()
            .map(|k| k.trim().to_string())
            .collect(),
        buckets: args.buckets.unwrap_or(0),
        partition_by,
        properties,
        changelog: Some(ChangelogBinding {
            format: args.changelog_format.trim().to_string(),
            ..ChangelogBinding::default()
        }),
    })
}

fn topic_text(t: &ChangelogTopic) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut configs: Vec<String> = t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    configs.sort();
    let _ = writeln!(
        out,
        "topic        {} ({}): {} partitions{}{}",
        t.topic,
        t.backend,
        t.partitions,
        t.replication_factor
            .map_or_else(String::new, |r| format!(", replication factor {r}")),
        if configs.is_empty() {
            String::new()
        } else {
            format!(", {}", configs.join(", "))
        }
    );
    for problem in &t.problems {
        let _ = writeln!(out, "topic WARNING {problem}");
    }
    out
}

fn compaction_text(c: &CompactionStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "compaction   {}; {} data files ({} bytes), {} small, {} delete files, {} of {} rows deleted ({:.1}%), {} snapshots, {} tasks pending",
        if c.enabled { "enabled" } else { "disabled" },
        c.data_files,
        c.data_bytes,
        c.small_files,
        c.delete_files,
        c.deleted_rows,
        c.rows,
        c.delete_ratio * 100.0,
        c.snapshots,
        c.pending_tasks
    );
    if let Some(at) = c.last_run_ms {
        let when = chrono::DateTime::from_timestamp_millis(at)
            .map_or_else(|| at.to_string(), |t| t.to_rfc3339());
        match &c.last_run {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "last run     {when}: {} files ({} bytes) rewritten into {}, {} deletes applied, {} snapshots expired, {} files removed, {} ms",
                    r.files_rewritten,
                    r.bytes_rewritten,
                    r.files_written,
                    r.deletes_applied,
                    r.snapshots_expired,
                    r.files_removed,
                    r.duration_ms
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "last run     {when}: FAILED ({} in a row): {}",
                    c.consecutive_failures, c.last_error
                );
            }
        }
    }
    out
}

fn describe_text(info: &TableInfo) -> String {
    use std::fmt::Write;
    let def = info.definition.clone().unwrap_or_default();
    let changelog = def.changelog.clone().unwrap_or_default();
    let mut out = String::new();
    let pk = if def.primary_key.is_empty() {
        "(none: append-only)".to_string()
    } else {
        def.primary_key.join(", ")
    };
    let partitions = if def.partition_by.is_empty() {
        "(unpartitioned)".to_string()
    } else {
        def.partition_by
            .iter()
            .map(partition_text)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let snapshot = info
        .current_snapshot_id
        .map_or_else(|| "(none yet)".to_string(), |s| s.to_string());
    let _ = writeln!(out, "table        {}", def.table);
    let _ = writeln!(out, "uuid         {}", info.table_uuid);
    let _ = writeln!(out, "location     {}", info.location);
    let _ = writeln!(out, "primary key  {pk}");
    let _ = writeln!(out, "buckets      {}", def.buckets);
    let _ = writeln!(out, "partitioned  {partitions}");
    let _ = writeln!(
        out,
        "changelog    {} ({} partitions, {})",
        changelog.topic, changelog.partitions, changelog.format
    );
    if !changelog.cluster.is_empty() || changelog.generation > 0 {
        let _ = writeln!(
            out,
            "  cluster    {} (generation {}, Kafka topic {})",
            if changelog.cluster.is_empty() {
                "(server default)"
            } else {
                &changelog.cluster
            },
            changelog.generation,
            changelog.current_topic
        );
    }
    for g in &changelog.history {
        let end: Vec<String> = g
            .end
            .iter()
            .map(|o| format!("{}:{}", o.partition, o.offset))
            .collect();
        let _ = writeln!(
            out,
            "  earlier    generation {} on {}: {} up to {}",
            g.generation,
            if g.cluster.is_empty() {
                "(server default)"
            } else {
                &g.cluster
            },
            g.topic,
            end.join(",")
        );
    }
    if !changelog.moving.is_empty() {
        let _ = writeln!(
            out,
            "  MOVING     to cluster {} (writes pause until the switch)",
            changelog.moving
        );
    }
    let _ = writeln!(out, "snapshot     {snapshot}");
    let _ = writeln!(out, "columns");
    let width = def.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &def.columns {
        let key = if def.primary_key.contains(&c.name) {
            "  key"
        } else {
            ""
        };
        let null = if c.required { "not null" } else { "null" };
        let _ = writeln!(
            out,
            "  {:>3}  {:<width$}  {:<15} {null}{key}",
            c.field_id,
            c.name,
            type_text(c)
        );
    }
    if !def.properties.is_empty() {
        let _ = writeln!(out, "properties");
        let mut props: Vec<_> = def.properties.iter().collect();
        props.sort();
        for (k, v) in props {
            let _ = writeln!(out, "  {k} = {v}");
        }
    }
    out
}
