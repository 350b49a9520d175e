//! `OpsService`: operating a running server (the log filter). Every call needs `admin ON ALL`;
//! every change is audit-logged.

use std::time::Duration;

use tonic::{Request, Response, Status};
use unitable_proto::v1 as wire;
use unitable_proto::v1::ops_service_server::OpsService;

use crate::access::{Access, Principal};
use crate::status::ApiError;
use crate::telemetry::log_level::{LogLevel, LogLevelState};

/// Server operations.
#[derive(Debug, Clone)]
pub(crate) struct OpsApi {
    log_level: LogLevel,
    access: Access,
}

impl OpsApi {
    pub(crate) fn new(log_level: LogLevel, access: Access) -> Self {
        Self { log_level, access }
    }
}

fn to_wire(state: LogLevelState) -> wire::LogLevelResponse {
    wire::LogLevelResponse {
        directives: state.directives,
        startup_directives: state.startup,
        expires_at_ms: state.expires_at_ms,
    }
}

#[tonic::async_trait]
impl OpsService for OpsApi {
    async fn set_log_level(
        &self,
        request: Request<wire::SetLogLevelRequest>,
    ) -> Result<Response<wire::LogLevelResponse>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "SetLogLevel").increment(1);
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "SetLogLevel")?;
        let request = request.into_inner();
        let (result, detail) = if request.reset {
            (
                self.log_level.reset(),
                "reset to the start-up filter".to_string(),
            )
        } else {
            (
                self.log_level.set_for(
                    &request.directives,
                    Duration::from_millis(request.duration_ms),
                ),
                format!(
                    "directives `{}` for {} ms",
                    request.directives.trim(),
                    request.duration_ms
                ),
            )
        };
        let audit = self.access.audit();
        match &result {
            Ok(_) => audit.record(
                who.name(),
                "SetLogLevel",
                None,
                crate::access::audit::Outcome::Ok,
                Some(&detail),
            ),
            Err(_) => audit.result(&who, "SetLogLevel", None, &result),
        }
        let state = result.map_err(ApiError::from)?;
        Ok(Response::new(to_wire(state)))
    }

    async fn get_log_level(
        &self,
        request: Request<wire::GetLogLevelRequest>,
    ) -> Result<Response<wire::LogLevelResponse>, Status> {
        metrics::counter!("unitable_grpc_requests_total", "method" => "GetLogLevel").increment(1);
        let who = Principal::of(&request)?;
        self.access.check_global_admin(&who, "GetLogLevel")?;
        Ok(Response::new(to_wire(self.log_level.state())))
    }
}
