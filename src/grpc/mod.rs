//! The gRPC surface: generated code, proto ⇄ domain conversion, authentication, handlers, and
//! the single mapping from service errors to status codes.

pub mod auth;
pub mod convert;
mod mandate;
pub mod status;

pub use mandate::MandateApi;

/// Code generated from `proto/withholding/v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("withholding.v1");

    /// The descriptor set of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/withholding_descriptor.bin"));
}
