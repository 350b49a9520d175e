//! `unitable compact NS.TABLE [--dry-run]`: shows the plan, then runs it with a progress bar
//! (polled from the table's compaction status while the Compact call runs).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use unitable_core::naming::TableName;
use unitable_proto::v1::compaction_service_client::CompactionServiceClient;
use unitable_proto::v1::table_admin_service_client::TableAdminServiceClient;
use unitable_proto::v1::{CompactRequest, CompactResponse, GetTableRequest};

use super::{ClientError, Connection};
use crate::cli::CompactArgs;

/// Runs `unitable compact`.
pub(crate) async fn run(conn: &Connection, args: CompactArgs) -> ExitCode {
    match run_inner(conn, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}

async fn run_inner(conn: &Connection, args: CompactArgs) -> Result<(), ClientError> {
    let server = conn.server.as_str();
    let name: TableName = args
        .table
        .parse()
        .map_err(|e: unitable_core::Error| ClientError::new(e.to_string()))?;
    // A compaction can take long: no per-call timeout here.
    let channel = conn.channel_untimed()?;
    let mut compaction = CompactionServiceClient::new(channel.clone());
    let rpc_err = |s: tonic::Status| ClientError::from_status(server, &s);
    let plan = compaction
        .compact(CompactRequest {
            table: name.to_string(),
            dry_run: true,
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    print_plan(&name, &plan);
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    let started = Instant::now();
    let table = name.to_string();
    let mut call = Box::pin(compaction.compact(CompactRequest {
        table: table.clone(),
        dry_run: false,
    }));
    let progress = std::io::stderr().is_terminal();
    let mut admin = TableAdminServiceClient::new(channel);
    let done = loop {
        tokio::select! {
            result = &mut call => break result,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if !progress {
                    continue;
                }
                let running = admin
                    .get_table(GetTableRequest { table: table.clone() })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().compaction)
                    .and_then(|c| c.running);
                if let Some(p) = running {
                    eprint!("\r{}", bar(p.tasks_done, p.tasks_total, p.bytes_done, p.bytes_total, started));
                    let _ = std::io::stderr().flush();
                }
            }
        }
    };
    if progress {
        eprintln!();
    }
    let report = done.map_err(rpc_err)?.into_inner();
    println!(
        "compacted {name} in {:.1} s: {} files ({}) rewritten into {} files ({}), {} deleted rows applied, {} snapshots expired, {} files removed{}",
        report.duration_ms as f64 / 1000.0,
        report.files_rewritten,
        human_bytes(report.bytes_rewritten),
        report.files_written,
        human_bytes(report.bytes_written),
        report.deletes_applied,
        report.snapshots_expired,
        report.files_removed,
        report
            .snapshot_id
            .map(|id| format!("; snapshot {id}"))
            .unwrap_or_default()
    );
    Ok(())
}

fn print_plan(name: &TableName, plan: &CompactResponse) {
    if plan.plan.is_empty() {
        println!("{name}: nothing to compact");
        return;
    }
    println!("{name}: {} tasks", plan.plan.len());
    for task in &plan.plan {
        let input = if task.input_bytes > 0 {
            format!(
                " [{} files, {}]",
                task.input_files,
                human_bytes(task.input_bytes)
            )
        } else {
            String::new()
        };
        println!("  {:<17} {}{input}", task.kind, task.description);
    }
}

fn bar(done: u64, total: u64, bytes_done: u64, bytes_total: u64, started: Instant) -> String {
    const WIDTH: usize = 30;
    let filled = if total == 0 {
        0
    } else {
        (done as usize * WIDTH / total as usize).min(WIDTH)
    };
    format!(
        "[{}{}] {done}/{total} tasks, {} of {} ({:.0} s)   ",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        human_bytes(bytes_done),
        human_bytes(bytes_total),
        started.elapsed().as_secs_f64()
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
