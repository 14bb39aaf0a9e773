//! Code generated from `proto/` by `build.rs`: the `withholding.v1` API here, the bank gateway
//! contract and the simulator's controls in [`bank`]. A module of its own, below every layer, so
//! the gRPC handlers, the bank gateway client and the programs beside the service (the bank
//! simulator, the load generator) share one set of types without reaching through one another.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("withholding.v1");

/// The descriptor set of the `withholding.v1` API (and what it imports), for the main server's
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/withholding_descriptor.bin"));

/// Code generated from `proto/withholding/bank/v1`: the bank gateway contract and the simulator.
pub mod bank {
    tonic::include_proto!("withholding.bank.v1");

    /// The descriptor set of the bank protos, for the bank simulator's reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/bank_descriptor.bin"));
}
