//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/withholding/v1/types.proto",
    "proto/withholding/v1/mandate_service.proto",
    "proto/withholding/v1/deduction_service.proto",
    "proto/withholding/v1/policy_service.proto",
    "proto/withholding/bank/v1/bank_gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("withholding_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
