//! Flight tickets: opaque to clients, self-contained for the server. A ticket names exactly the
//! data its endpoint serves (table and uuid, snapshot id, FRESH changelog end, projection,
//! filter, file group; or a SQL statement and each table's pin), so any `DoGet`, on any
//! connection, serves the read planned by `GetFlightInfo`.
//!
//! Tickets are protobuf messages wrapped in `google.protobuf.Any` (Flight SQL's own tickets
//! are too). They are not signed: `DoGet` checks the caller's grants on every table a ticket
//! names, so a hand-made ticket reads nothing its holder could not read with a plain request.

use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
use prost::Message;
use unitable_core::offsets::{Offset, PartitionId, PartitionOffsets};
use unitable_reader::{PinSpec, ReadPart};

use crate::status::ApiError;

/// `Any.type_url` of a [`PartTicket`].
pub(crate) const PART_TYPE_URL: &str = "type.googleapis.com/unitable.v1.flight.PartTicket";

/// A table pinned to a snapshot (and a changelog end).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Pin {
    #[prost(string, tag = "1")]
    pub(crate) table: String,
    #[prost(string, tag = "2")]
    pub(crate) table_uuid: String,
    #[prost(int32, tag = "3")]
    pub(crate) schema_id: i32,
    #[prost(int64, optional, tag = "4")]
    pub(crate) snapshot_id: Option<i64>,
    /// FRESH: the tail's end is `fresh_to`; otherwise the snapshot alone.
    #[prost(bool, tag = "5")]
    pub(crate) fresh: bool,
    #[prost(message, repeated, tag = "6")]
    pub(crate) fresh_to: Vec<PartitionEnd>,
}

/// One partition's exclusive changelog end.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PartitionEnd {
    #[prost(uint32, tag = "1")]
    pub(crate) partition: u32,
    #[prost(int64, tag = "2")]
    pub(crate) offset: i64,
}

/// One endpoint of a SNAPSHOT or FRESH read.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PartTicket {
    #[prost(message, optional, tag = "1")]
    pub(crate) pin: Option<Pin>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) columns: Vec<String>,
    #[prost(string, optional, tag = "3")]
    pub(crate) filter: Option<String>,
    #[prost(uint64, optional, tag = "4")]
    pub(crate) limit: Option<u64>,
    #[prost(uint32, tag = "5")]
    pub(crate) group: u32,
    #[prost(uint32, tag = "6")]
    pub(crate) groups: u32,
}

/// A Flight SQL statement, its tables pinned (the `statement_handle` of Flight SQL's
/// `TicketStatementQuery`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct QueryTicket {
    #[prost(string, tag = "1")]
    pub(crate) sql: String,
    #[prost(message, repeated, tag = "2")]
    pub(crate) pins: Vec<Pin>,
}

/// A prepared statement's handle: the statement and its read mode. Nothing is kept on the
/// server between calls.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PreparedHandle {
    #[prost(string, tag = "1")]
    pub(crate) sql: String,
    #[prost(bool, tag = "2")]
    pub(crate) fresh: bool,
}

fn bad_ticket(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        field: "ticket",
        reason: reason.into(),
    }
}

impl Pin {
    pub(crate) fn of(spec: &PinSpec) -> Self {
        Self {
            table: spec.table.to_string(),
            table_uuid: spec.table_uuid.clone(),
            schema_id: spec.schema_id,
            snapshot_id: spec.snapshot_id,
            fresh: spec.fresh_to.is_some(),
            fresh_to: spec
                .fresh_to
                .iter()
                .flat_map(|to| to.0.iter())
                .map(|(p, o)| PartitionEnd {
                    partition: p.0,
                    offset: o.0,
                })
                .collect(),
        }
    }

    pub(crate) fn spec(&self) -> Result<PinSpec, ApiError> {
        let table = self
            .table
            .parse()
            .map_err(|e| bad_ticket(format!("names no table: {e}")))?;
        let fresh_to = self.fresh.then(|| {
            let mut to = PartitionOffsets::default();
            for end in &self.fresh_to {
                to.set(PartitionId(end.partition), Offset(end.offset));
            }
            to
        });
        Ok(PinSpec {
            table,
            table_uuid: self.table_uuid.clone(),
            schema_id: self.schema_id,
            snapshot_id: self.snapshot_id,
            fresh_to,
        })
    }
}

impl PartTicket {
    pub(crate) fn of(part: &ReadPart) -> Self {
        Self {
            pin: Some(Pin::of(&part.pin)),
            columns: part.columns.clone(),
            filter: part.filter.clone(),
            limit: part.limit,
            group: part.group,
            groups: part.groups,
        }
    }

    /// The ticket bytes (an `Any`).
    pub(crate) fn encode_any(&self) -> Vec<u8> {
        Any {
            type_url: PART_TYPE_URL.into(),
            value: self.encode_to_vec().into(),
        }
        .encode_to_vec()
    }

    pub(crate) fn part(&self) -> Result<ReadPart, ApiError> {
        let pin = self
            .pin
            .as_ref()
            .ok_or_else(|| bad_ticket("names no table"))?;
        Ok(ReadPart {
            pin: pin.spec()?,
            columns: self.columns.clone(),
            filter: self.filter.clone(),
            limit: self.limit,
            group: self.group,
            groups: self.groups,
        })
    }
}

impl QueryTicket {
    /// The ticket bytes: Flight SQL's `TicketStatementQuery` (in an `Any`) holding this.
    pub(crate) fn encode_any(&self) -> Vec<u8> {
        TicketStatementQuery {
            statement_handle: self.encode_to_vec().into(),
        }
        .as_any()
        .encode_to_vec()
    }

    pub(crate) fn decode_handle(handle: &[u8]) -> Result<Self, ApiError> {
        Self::decode(handle).map_err(|e| bad_ticket(format!("is not a unitable statement: {e}")))
    }

    pub(crate) fn pins(&self) -> Result<Vec<PinSpec>, ApiError> {
        self.pins.iter().map(Pin::spec).collect()
    }
}

/// A ticket's `Any`.
pub(crate) fn decode_any(ticket: &[u8]) -> Result<Any, ApiError> {
    Any::decode(ticket).map_err(|e| {
        bad_ticket(format!(
            "is not a ticket of this server ({e}); use the tickets GetFlightInfo returns"
        ))
    })
}

/// A [`PartTicket`] from its `Any`.
pub(crate) fn decode_part(any: &Any) -> Result<PartTicket, ApiError> {
    PartTicket::decode(any.value.as_ref())
        .map_err(|e| bad_ticket(format!("is not a unitable read ticket: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_ticket_round_trips() {
        let mut to = PartitionOffsets::default();
        to.set(PartitionId(0), Offset(12));
        to.set(PartitionId(3), Offset(7));
        let part = ReadPart {
            pin: PinSpec {
                table: "shop.orders".parse().unwrap(),
                table_uuid: "u-1".into(),
                schema_id: 2,
                snapshot_id: Some(99),
                fresh_to: Some(to),
            },
            columns: vec!["id".into(), "v".into()],
            filter: Some("n > 3".into()),
            limit: None,
            group: 1,
            groups: 4,
        };
        let bytes = PartTicket::of(&part).encode_any();
        let any = decode_any(&bytes).unwrap();
        assert_eq!(any.type_url, PART_TYPE_URL);
        assert_eq!(decode_part(&any).unwrap().part().unwrap(), part);
        let snapshot_only = ReadPart {
            pin: PinSpec {
                fresh_to: None,
                snapshot_id: None,
                ..part.pin.clone()
            },
            ..part
        };
        let bytes = PartTicket::of(&snapshot_only).encode_any();
        let back = decode_part(&decode_any(&bytes).unwrap()).unwrap();
        assert_eq!(back.part().unwrap(), snapshot_only);
    }

    #[test]
    fn garbage_is_a_bad_ticket() {
        assert!(matches!(
            decode_any(b"\xff\xff not protobuf"),
            Err(ApiError::BadRequest {
                field: "ticket",
                ..
            })
        ));
    }
}
