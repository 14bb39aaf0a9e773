//! The `withholding-bench` binary: parse the command line, start logging, run `seed` or `bench`
//! against a running server.

use std::process::ExitCode;

use clap::Parser;
use withholding_bench::{Cli, Console};

/// The allocator the server runs with, so the client side of a run costs what it did when
/// `bench` was a command of the server's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    withholding::process::init_logging();
    match withholding_bench::run(cli.command, &Console::stdio()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
