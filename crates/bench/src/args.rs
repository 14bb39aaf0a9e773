//! The load generator's command line: `seed` and `bench`, each with the server's key flags (and
//! their `WITHHOLDING_*` variables) to mint its tokens with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use withholding::config::KeyArgs;

#[derive(Debug, Parser)]
#[command(
    name = "withholding-bench",
    version,
    about = "Load generator for the withholding service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, confirm and fund mandates on a running server for `bench`.
    Seed(SeedArgs),
    /// Load generator: drive CreateDeduction against a running server, then measure the
    /// health-check ceiling on the same connections shape.
    Bench(BenchArgs),
}

/// Where the load generator finds the server and how it bounds each call.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The running server, `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// HTTP/2 connections (separate `Endpoint::connect` each) the requests are spread over.
    /// Default: 4 for bench, 2 for seed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: Option<u32>,
    /// Requests in flight at once, spread over the connections (at most 256 per connection).
    /// Default: 64 for bench, 32 for seed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Deadline of each call; a call past it counts as DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub request_timeout_s: u64,
}

/// Where seeded mandates take their money from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedFunding {
    /// The payer's built-in wallet, no cap; `seed` credits every payer's wallet.
    Wallet,
    /// One card per payer, programmed in the bank simulator at `--bank-sim-target`; the server
    /// must charge that simulator (`serve --bank-gateway-url`).
    Card,
}

/// The calendar unit of a seeded mandate's limit period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedPeriodUnit {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Mandates to create, confirm and fund.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mandates: u64,
    /// Distinct payers the mandates are shared among (round robin). Default: one payer per
    /// mandate.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub payers: Option<u64>,
    /// Payer ids are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "bench-payer")]
    pub payer_prefix: String,
    /// The merchant that owns the mandates (and that `bench` collects as).
    #[arg(long, default_value = "m-bench")]
    pub merchant_id: String,
    /// Funding source of every mandate: `wallet` (the payer's wallet, no cap) or `card` (one
    /// card per payer in the bank simulator, no cap; needs `--bank-sim-target`).
    #[arg(long, value_enum, default_value_t = SeedFunding::Wallet)]
    pub funding: SeedFunding,
    /// Credited to each payer's wallet (CNY), by the operator; `--funding wallet` only.
    /// Default: 1000000.00.
    #[arg(long)]
    pub wallet_credit: Option<String>,
    /// The bank simulator (`withholding-bank-sim`) the cards are programmed in,
    /// `http://host:port`; `--funding card` only, and required with it.
    #[arg(long)]
    pub bank_sim_target: Option<String>,
    /// Balance (CNY) each payer's card is given; `--funding card` only. Default:
    /// 1000000000.00, so no bench run empties a card.
    #[arg(long)]
    pub card_balance: Option<String>,
    /// Largest single debit (CNY).
    #[arg(long, default_value = "1000.00")]
    pub per_debit_limit: String,
    /// Limit period; needs --period-amount-limit and/or --period-debit-limit. Default: none.
    #[arg(long, value_enum)]
    pub period_unit: Option<SeedPeriodUnit>,
    /// Most collected per period (CNY).
    #[arg(long, requires = "period_unit")]
    pub period_amount_limit: Option<String>,
    /// Most debits per period.
    #[arg(long, requires = "period_unit")]
    pub period_debit_limit: Option<u32>,
    /// Successful debits to make first, spread over the mandates, to build history rows.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub history: u64,
    /// Amount of each history debit (CNY).
    #[arg(long, default_value = "1.00")]
    pub history_amount: String,
    /// File the mandate ids are written to, one a line.
    #[arg(long, default_value = "mandates.txt")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Mandate ids, one a line (what `seed --out` writes).
    #[arg(long)]
    pub mandates_file: PathBuf,
    /// Every debit on the first mandate: the single-row contention case.
    #[arg(long)]
    pub hot: bool,
    /// The merchant the mandates belong to.
    #[arg(long, default_value = "m-bench")]
    pub merchant_id: String,
    /// Measured seconds of each phase (after the warm-up).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Seconds of each phase before measuring starts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_s: u64,
    /// Amount of each debit (CNY).
    #[arg(long, default_value = "1.00")]
    pub amount: String,
    /// Most requests sent in each phase, warm-up included.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_requests: u64,
    /// A PostgreSQL database (`postgres://…`, best the server's own cluster) to run a third
    /// phase on: the bare cap-checked transaction (`SELECT … FOR UPDATE`, `UPDATE`, `INSERT`,
    /// `COMMIT`), sent by bench itself in tables it creates and drops, as the rate
    /// CreateDeduction is compared with. It may hold a password: prefer the variable.
    #[arg(
        long,
        env = "WITHHOLDING_BENCH_BARE_DATABASE_URL",
        hide_env_values = true
    )]
    pub bare_database_url: Option<String>,
    /// Connections of the bare phase's pool. Default: --concurrency, at most 64. Set it to the
    /// server's pool size to compare like with like.
    #[arg(long, requires = "bare_database_url", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub bare_pool_size: Option<u32>,
}
