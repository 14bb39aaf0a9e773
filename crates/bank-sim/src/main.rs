//! The `withholding-bank-sim` binary: parse the command line, start logging, serve the bank
//! simulator until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use withholding_bank_sim::BankSim;

/// The allocator the server runs with, so the simulator costs what it did when it was a
/// command of the server's binary (it shares the machine with the server in card-funded runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run the bank simulator: a `BankGateway` with programmable cards, for tests and demos.
#[derive(Debug, Parser)]
#[command(name = "withholding-bank-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        env = "WITHHOLDING_BANK_SIM_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: SocketAddr,
    /// JSON file of cards to program at start:
    /// `[{"card_token": "card-1", "balance_minor": 100000}, …]` (any `SetCardRequest` field).
    #[arg(long, env = "WITHHOLDING_BANK_SIM_SEED")]
    seed: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    withholding::process::init_logging();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut sim = BankSim::bind(cli.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", cli.listen))?;
    if let Some(seed) = &cli.seed {
        sim = sim.with_seed(seed).map_err(|e| e.to_string())?;
    }
    eprintln!("bank-sim listening on {}", sim.local_addr());
    sim.run_until(withholding::process::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
