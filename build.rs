//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed, and writes one descriptor set per server for its reflection: the
//! `withholding.v1` API for the main server, the bank protos for the bank simulator, so each
//! server lists exactly the services it serves.

use std::path::{Path, PathBuf};

use prost::Message;

/// The API the main server (`withholding serve`) serves.
const API_PROTOS: &[&str] = &[
    "proto/withholding/v1/types.proto",
    "proto/withholding/v1/mandate_service.proto",
    "proto/withholding/v1/deduction_service.proto",
    "proto/withholding/v1/policy_service.proto",
    "proto/withholding/v1/event_service.proto",
    "proto/withholding/v1/settlement_service.proto",
    "proto/withholding/v1/audit_service.proto",
];

/// The bank gateway contract and the simulator's control service (`withholding-bank-sim`).
const BANK_PROTOS: &[&str] = &["proto/withholding/bank/v1/bank_gateway.proto"];

fn compile(
    protos: &[&str],
    descriptor_file: &str,
    out_dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(protos, ["proto"])?;
    std::fs::write(out_dir.join(descriptor_file), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    compile(API_PROTOS, "withholding_descriptor.bin", &out_dir)?;
    compile(BANK_PROTOS, "bank_descriptor.bin", &out_dir)?;
    Ok(())
}
