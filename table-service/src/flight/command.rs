//! What a `FlightDescriptor` asks for: a unitable table read (a path, or a JSON command) or a
//! Flight SQL command (a protobuf `Any`).

use std::time::Duration;

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::{Any, Command};
use prost::Message;
use serde::Deserialize;
use unitable_core::naming::TableName;
use unitable_reader::{FreshRead, SnapshotRead, SnapshotSelector};

use crate::status::ApiError;

/// Endpoints a read is split into unless the command says otherwise.
pub(crate) const DEFAULT_ENDPOINTS: u32 = 8;
/// The most endpoints a command may ask for.
pub(crate) const MAX_ENDPOINTS: u32 = 1024;

/// A descriptor's request.
#[derive(Debug)]
pub(crate) enum FlightCommand {
    Read(ReadCommand),
    Sql(Command),
}

/// Which data a table read serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    #[default]
    #[serde(alias = "SNAPSHOT")]
    Snapshot,
    #[serde(alias = "FRESH")]
    Fresh,
}

/// A table read: the JSON command of a `CMD` descriptor, or a `PATH` descriptor (the latest
/// snapshot, every column).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadCommand {
    pub(crate) table: String,
    #[serde(default)]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) columns: Vec<String>,
    #[serde(default)]
    pub(crate) filter: Option<String>,
    #[serde(default)]
    pub(crate) snapshot_id: Option<i64>,
    #[serde(default)]
    pub(crate) as_of_timestamp_ms: Option<i64>,
    #[serde(default)]
    pub(crate) max_staleness_ms: Option<u64>,
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) max_endpoints: Option<u32>,
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field: "descriptor",
        reason: reason.into(),
    }
}

/// The request of `descriptor`.
pub(crate) fn parse(descriptor: &FlightDescriptor) -> Result<FlightCommand, ApiError> {
    match DescriptorType::try_from(descriptor.r#type) {
        Ok(DescriptorType::Path) => {
            let table = match descriptor.path.as_slice() {
                [table] => table.clone(),
                [namespace, table] => format!("{namespace}.{table}"),
                _ => {
                    return Err(bad(format!(
                        "a PATH descriptor names one table, as [\"ns.table\"] or [\"ns\", \
                         \"table\"]; got {:?}",
                        descriptor.path
                    )));
                }
            };
            Ok(FlightCommand::Read(ReadCommand {
                table,
                ..ReadCommand::default()
            }))
        }
        Ok(DescriptorType::Cmd) => {
            let cmd = descriptor.cmd.as_ref();
            if cmd.trim_ascii_start().starts_with(b"{") {
                let read = serde_json::from_slice::<ReadCommand>(cmd)
                    .map_err(|e| bad(format!("the JSON read command is invalid: {e}")))?;
                return Ok(FlightCommand::Read(read));
            }
            let any = Any::decode(cmd).map_err(|e| {
                bad(format!(
                    "a CMD descriptor holds a JSON read command ({{\"table\": \"ns.t\", ...}}) \
                     or a Flight SQL command; this is neither ({e})"
                ))
            })?;
            let command = Command::try_from(any)
                .map_err(|e| bad(format!("the Flight SQL command does not decode: {e}")))?;
            Ok(FlightCommand::Sql(command))
        }
        Ok(DescriptorType::Unknown) | Err(_) => Err(bad("the descriptor type must be PATH or CMD")),
    }
}

impl ReadCommand {
    pub(crate) fn table(&self) -> Result<TableName, ApiError> {
        crate::grpc::table_name(&self.table)
    }

    fn filter(&self) -> Option<String> {
        self.filter.clone().filter(|f| !f.trim().is_empty())
    }

    /// How many endpoints the read may be split into.
    pub(crate) fn max_endpoints(&self) -> Result<usize, ApiError> {
        match self.max_endpoints {
            None => Ok(DEFAULT_ENDPOINTS as usize),
            Some(n @ 1..=MAX_ENDPOINTS) => Ok(n as usize),
            Some(n) => Err(bad(format!(
                "max_endpoints is {n}; give 1 to {MAX_ENDPOINTS}"
            ))),
        }
    }

    pub(crate) fn snapshot_read(&self) -> Result<SnapshotRead, ApiError> {
        if self.max_staleness_ms.is_some() {
            return Err(bad("max_staleness_ms applies to FRESH reads only"));
        }
        let snapshot = match (self.snapshot_id, self.as_of_timestamp_ms) {
            (Some(_), Some(_)) => {
                return Err(bad("give snapshot_id or as_of_timestamp_ms, not both"));
            }
            (Some(id), None) => SnapshotSelector::Id(id),
            (None, Some(ms)) => SnapshotSelector::AsOf(ms),
            (None, None) => SnapshotSelector::Latest,
        };
        Ok(SnapshotRead {
            table: self.table()?,
            columns: self.columns.clone(),
            filter: self.filter(),
            snapshot,
            limit: self.limit.filter(|l| *l > 0),
        })
    }

    pub(crate) fn fresh_read(&self) -> Result<FreshRead, ApiError> {
        if self.snapshot_id.is_some() || self.as_of_timestamp_ms.is_some() {
            return Err(bad(
                "FRESH reads serve the latest data; use mode \"snapshot\" to time-travel",
            ));
        }
        Ok(FreshRead {
            table: self.table()?,
            columns: self.columns.clone(),
            filter: self.filter(),
            limit: self.limit.filter(|l| *l > 0),
            max_staleness: self.max_staleness_ms.map(Duration::from_millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(bytes: &[u8]) -> FlightDescriptor {
        FlightDescriptor::new_cmd(bytes.to_vec())
    }

    #[test]
    fn paths_and_json_commands_are_reads() {
        for path in [
            vec!["shop.orders".to_string()],
            vec!["shop".into(), "orders".into()],
        ] {
            let FlightCommand::Read(read) = parse(&FlightDescriptor::new_path(path)).unwrap()
            else {
                panic!("not a read");
            };
            assert_eq!(read.table, "shop.orders");
            assert_eq!(read.mode, Mode::Snapshot);
        }
        let FlightCommand::Read(read) = parse(&cmd(
            br#" {"table": "a.b", "mode": "fresh", "columns": ["id"], "filter": "id > 1"}"#,
        ))
        .unwrap() else {
            panic!("not a read");
        };
        assert_eq!(read.mode, Mode::Fresh);
        assert_eq!(read.columns, vec!["id"]);
        assert!(read.fresh_read().is_ok());
        let timed = ReadCommand {
            snapshot_id: Some(1),
            ..read
        };
        assert!(timed.fresh_read().is_err(), "FRESH cannot time-travel");
    }

    #[test]
    fn bad_descriptors_say_why() {
        let e = parse(&cmd(br#"{"table": "a.b", "colums": []}"#)).unwrap_err();
        assert!(e.to_string().contains("colums"), "{e}");
        let e = parse(&cmd(b"\xff\x01garbage")).unwrap_err();
        assert!(e.to_string().contains("JSON read command"), "{e}");
        let e = parse(&FlightDescriptor::new_path(vec![])).unwrap_err();
        assert!(e.to_string().contains("PATH"), "{e}");
        let read = ReadCommand {
            table: "a.b".into(),
            max_endpoints: Some(0),
            ..ReadCommand::default()
        };
        assert!(read.max_endpoints().is_err());
    }
}
