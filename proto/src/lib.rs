//! unitable-proto: the gRPC contract (`unitable.v1`), its generated code, and conversions
//! between wire messages and `unitable-core` domain types.
//!
//! The `.proto` files live in `proto/unitable/v1/`; `build.rs` compiles them with protox (no
//! system `protoc`) and tonic-prost-build. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.
#![warn(missing_docs)]

mod convert;

pub use convert::{ConversionError, table_def_from_wire, table_info_to_wire};

/// Generated messages and services of package `unitable.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("unitable.v1");
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/unitable_descriptor.bin"));
