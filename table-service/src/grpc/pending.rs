//! Services whose roles are not built yet (compaction): they answer UNIMPLEMENTED and say what is missing.

use tonic::{Request, Response, Status};
use unitable_proto::v1::compaction_service_server::CompactionService;
use unitable_proto::v1::{CompactRequest, CompactResponse};

/// Answers UNIMPLEMENTED for compaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingApi;

pub(crate) fn missing(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented in this build of unitable yet; table administration \
         (TableAdminService) is available"
    ))
}

#[tonic::async_trait]
impl CompactionService for PendingApi {
    async fn compact(
        &self,
        _request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        Err(missing("Compact (the compactor role)"))
    }
}
