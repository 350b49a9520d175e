//! Services whose roles are not built yet (reads, queries, compaction): they answer UNIMPLEMENTED and say what is missing.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use unitable_proto::v1::compaction_service_server::CompactionService;
use unitable_proto::v1::read_service_server::ReadService;
use unitable_proto::v1::{
    CompactRequest, CompactResponse, QueryRequest, QueryResponse, ReadRequest, ReadResponse,
};

/// Answers UNIMPLEMENTED for reads, queries and compaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingApi;

fn missing(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented in this build of unitable yet; table administration \
         (TableAdminService) is available"
    ))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ReadService for PendingApi {
    type ReadStream = BoxStream<ReadResponse>;
    type QueryStream = BoxStream<QueryResponse>;

    async fn read(
        &self,
        _request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        Err(missing(
            "Read (STREAM, SNAPSHOT, FRESH and LOOKUP modes of the reader role)",
        ))
    }

    async fn query(
        &self,
        _request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(missing("Query (SQL through DataFusion, the reader role)"))
    }
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
