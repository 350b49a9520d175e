//! RPCs whose roles are not built yet answer UNIMPLEMENTED and say what is missing.

use tonic::Status;

pub(crate) fn missing(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented in this build of unitable yet; table administration \
         (TableAdminService) is available"
    ))
}
