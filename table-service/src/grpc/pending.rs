//! Services whose roles are not built yet (compaction): they answer UNIMPLEMENTED and say what is missing.

use tonic::{Request, Response, Status};
use unitable_proto::v1::compaction_service_server::CompactionService;
use unitable_proto::v1::{CompactRequest, CompactResponse};

use super::table_name;
use crate::access::{Access, Principal, Privilege};

/// Answers UNIMPLEMENTED for compaction, after the same authorization a compactor will need
/// (`admin` on the table), so a caller without the grant learns nothing more.
#[derive(Debug, Clone)]
pub(crate) struct PendingApi {
    access: Access,
}

impl PendingApi {
    pub(crate) fn new(access: Access) -> Self {
        Self { access }
    }
}

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
        request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let who = Principal::of(&request)?;
        let table = table_name(&request.get_ref().table)?;
        self.access
            .check(&who, Privilege::Admin, &table, "Compact")?;
        Err(missing("Compact (the compactor role)"))
    }
}
