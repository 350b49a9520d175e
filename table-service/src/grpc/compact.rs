//! `CompactionService`: compact one table now (or show its plan), and the compaction status
//! shown by `GetTable`. The work runs on the compactor's own runtime, off the gRPC threads.

use tokio::runtime::Handle;
use tonic::{Request, Response, Status};
use unitable_compactor::{CompactOptions, CompactionReport, Compactor, TableStatus};
use unitable_core::naming::TableName;
use unitable_proto::v1::compaction_service_server::CompactionService;
use unitable_proto::v1::{
    CompactRequest, CompactResponse, CompactionProgress, CompactionStatus, CompactionTask,
};

use super::table_name;
use crate::access::{Access, Principal, Privilege};
use crate::status::ApiError;

/// The compactor and the runtime its work runs on.
#[derive(Debug, Clone)]
pub(crate) struct CompactApi {
    compactor: Compactor,
    runtime: Handle,
    access: Access,
}

impl CompactApi {
    pub(crate) fn new(compactor: Compactor, runtime: Handle, access: Access) -> Self {
        Self {
            compactor,
            runtime,
            access,
        }
    }

    /// The compaction status of `table` (computed on the compactor's runtime).
    pub(crate) async fn status(&self, table: &TableName) -> Result<CompactionStatus, ApiError> {
        let compactor = self.compactor.clone();
        let name = table.clone();
        let status = self
            .runtime
            .spawn(async move { compactor.status(&name).await })
            .await
            .map_err(|e| ApiError::Worker(e.to_string()))??;
        Ok(status_to_wire(&status))
    }
}

#[tonic::async_trait]
impl CompactionService for CompactApi {
    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "Compact").increment(1);
        let who = Principal::of(&request)?;
        let request = request.into_inner();
        let name = table_name(&request.table)?;
        // A dry run shows file sizes and the backlog, an admin's view: the same grant as a run.
        self.access
            .check(&who, Privilege::Admin, &name, "Compact")?;
        let table = name.to_string();
        let compactor = self.compactor.clone();
        let options = CompactOptions {
            dry_run: request.dry_run,
            orphans: true,
        };
        // Runs to completion even if the client goes away (a half-done run is still safe, but
        // finishing it is cheaper than redoing it).
        let report = self
            .runtime
            .spawn(async move { compactor.compact(&name, options).await })
            .await
            .map_err(|e| ApiError::Worker(e.to_string()))
            .and_then(|r| r.map_err(ApiError::from));
        if !request.dry_run {
            self.access
                .audit()
                .result(&who, "Compact", Some(&table), &report);
        }
        Ok(Response::new(report_to_wire(&report?)))
    }
}

fn report_to_wire(r: &CompactionReport) -> CompactResponse {
    CompactResponse {
        plan: r
            .plan
            .iter()
            .map(|t| CompactionTask {
                kind: t.kind.as_str().to_string(),
                description: t.description.clone(),
                input_files: t.input_files,
                input_bytes: t.input_bytes,
            })
            .collect(),
        executed: r.executed,
        files_rewritten: r.files_rewritten,
        bytes_rewritten: r.bytes_rewritten,
        deletes_applied: r.deletes_applied,
        snapshots_expired: r.snapshots_expired,
        files_removed: r.files_removed,
        duration_ms: r.duration.as_millis() as u64,
        snapshot_id: r.snapshot_id,
        files_written: r.files_written,
        bytes_written: r.bytes_written,
    }
}

fn status_to_wire(s: &TableStatus) -> CompactionStatus {
    let b = &s.backlog;
    let last = s.last_run.as_ref();
    CompactionStatus {
        data_files: b.data_files,
        data_bytes: b.data_bytes,
        small_files: b.small_files,
        delete_files: b.delete_files,
        rows: b.rows,
        deleted_rows: b.deleted_rows,
        delete_ratio: b.delete_ratio(),
        snapshots: b.snapshots,
        pending_tasks: s.pending_tasks,
        last_run_ms: last.map(|l| l.finished_ms),
        last_run: last.and_then(|l| l.report.as_ref()).map(report_to_wire),
        last_error: last.and_then(|l| l.error.clone()).unwrap_or_default(),
        consecutive_failures: s.consecutive_failures,
        enabled: s.settings.enabled,
        running: s.running.as_ref().map(|p| CompactionProgress {
            tasks_done: p.tasks_done,
            tasks_total: p.tasks_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }),
    }
}
