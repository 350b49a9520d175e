//! gRPC service implementations.

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod compact;
pub(crate) mod groups;
pub(crate) mod json_rows;
pub(crate) mod lookup;
pub(crate) mod ops;
pub(crate) mod read;
pub(crate) mod read_metrics;
pub(crate) mod training;
pub(crate) mod write;

use unitable_core::naming::TableName;

use crate::status::ApiError;

/// Parses the `table` field of a request.
pub(crate) fn table_name(text: &str) -> Result<TableName, ApiError> {
    if text.is_empty() {
        return Err(ApiError::BadRequest {
            field: "table",
            reason: "is empty; name a table as `namespace.table`".into(),
        });
    }
    Ok(text.parse::<TableName>()?)
}
