//! The load generator (the `withholding-bench` binary), a plain client of a running server over
//! real gRPC: `seed` creates, confirms and funds mandates (from wallets, or from cards it
//! programs in the bank simulator, see `cards`); `bench` drives `CreateDeduction` against them
//! and then, in the same run with the same concurrency and connections,
//! `grpc.health.v1.Health/Check`: the ceiling that tonic, HTTP/2 and this machine allow, so the
//! service's own cost shows as a ratio of two figures measured side by side (figures from
//! different runs differ by 15–20 %). Given a PostgreSQL URL, a third phase runs the bare
//! cap-checked transaction on it (see `bare`): the floor of database work a deduction needs, for
//! the PostgreSQL ratio.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use withholding::config::KeyArgs;
use withholding::domain::money::{Currency, Money};
use withholding::domain::text::check_identifier;
use withholding::grpc::auth::{Claims, mint_hs256};
use withholding::pb;
use withholding::pb::deduction_service_client::DeductionServiceClient;
use withholding::pb::mandate_service_client::MandateServiceClient;
use withholding::pb::wallet_service_client::WalletServiceClient;

pub mod args;
mod bare;
mod cards;
mod console;

pub use args::{BenchArgs, Cli, Command, SeedArgs, SeedFunding, SeedPeriodUnit, TargetArgs};
pub use console::Console;

/// Every seeded mandate and every debit is in this currency.
const CURRENCY: Currency = Currency::Cny;
/// Defaults of `bench`: enough in flight to keep both cores busy without queueing in the server.
const BENCH_CONCURRENCY: u32 = 64;
const BENCH_CONNECTIONS: u32 = 4;
/// Defaults of `seed`: seeding is write-bound, so fewer in flight is as fast.
const SEED_CONCURRENCY: u32 = 32;
const SEED_CONNECTIONS: u32 = 2;
/// The server serves at most this many requests per connection at once; more only queue there.
const MAX_IN_FLIGHT_PER_CONNECTION: u32 = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest latency the histograms hold (the request timeout is at most 300 s); larger values
/// are clamped to it.
const LATENCY_MAX_US: u64 = 300 * 1_000_000;
/// Three significant digits: a percentile is off by at most 0.1 %.
const LATENCY_SIGFIG: u8 = 3;
/// `--wallet-credit` when not given (CNY): far more than any bench run debits.
const DEFAULT_WALLET_CREDIT: &str = "1000000.00";
/// `--card-balance` when not given (CNY): a card never runs dry in a bench run, whatever its
/// length or amount.
const DEFAULT_CARD_BALANCE: &str = "1000000000.00";
/// Tries of one seeding call that got ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED (every
/// seeding call is idempotent, so a retry never creates a second mandate, credit or debit).
const SEED_ATTEMPTS: u32 = 5;
const SEED_RETRY_BASE: Duration = Duration::from_millis(50);
/// Lifetime of the tokens `seed` mints for each call.
const SEED_TOKEN_TTL_S: i64 = 600;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A mandates file of 1,000,000 ids is about 40 MB; anything far larger is not one.
const MAX_MANDATES_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Most mandate ids `bench` takes from the file.
const MAX_MANDATES: usize = 1_000_000;
/// How the gRPC phases group their errors in the report.
const GRPC_ERRORS_BY: &str = "gRPC code";
/// Errors per code whose message is kept for the report.
const ERROR_SAMPLE_CHARS: usize = 160;

/// Runs one command, reporting to `console`.
pub async fn run(command: Command, console: &Console) -> Result<(), String> {
    match command {
        Command::Seed(args) => seed(args, console).await,
        Command::Bench(args) => bench(args, console).await,
    }
}

// ---------------------------------------------------------------------------------------------
// seed

/// `withholding-bench seed`: N active mandates of one merchant, each funded by its payer's
/// wallet or by its payer's card in the bank simulator, with their ids written to `--out`.
pub async fn seed(args: SeedArgs, console: &Console) -> Result<(), String> {
    let plan = SeedPlan::from_args(&args)?;
    let minter = Minter::new(&args.keys, SEED_TOKEN_TTL_S)?;
    let connections = args.target.connections.unwrap_or(SEED_CONNECTIONS);
    let concurrency = args.target.concurrency.unwrap_or(SEED_CONCURRENCY);
    check_shape(concurrency, connections)?;
    let channels = connect(&args.target, connections).await?;
    let tag = run_tag()?;
    let plan = Arc::new(plan);
    console.err(format_args!(
        "seeding {} mandates of merchant {} for {} payers on {} ({concurrency} in flight over \
         {connections} connections, run tag {tag})",
        plan.mandates, plan.merchant_id, plan.payers, args.target.target
    ));

    // 0. Cards first: a bank simulator that cannot be reached fails the run before any mandate
    // is made, and the history debits below find their cards programmed.
    if let SeedSource::Card { bank_sim, balance } = &plan.source {
        let bank_channels = connect_to(
            "--bank-sim-target",
            bank_sim,
            args.target.request_timeout_s,
            connections,
        )
        .await?;
        cards::program(&plan, balance, concurrency, &bank_channels, console).await?;
        console.err(format_args!(
            "the cards are in the bank simulator at {bank_sim}: the server must charge it \
             (serve --bank-gateway-url {bank_sim})"
        ));
    }

    // 1. Create and confirm, each mandate in one task so a confirmation follows its creation.
    let step = {
        let (plan, minter, tag) = (plan.clone(), minter.clone(), tag.clone());
        for_each_index(
            "create+confirm",
            plan.mandates,
            concurrency,
            &channels,
            console,
            move |channel, i| {
                let (plan, minter, tag) = (plan.clone(), minter.clone(), tag.clone());
                async move { create_and_confirm(&plan, &minter, &tag, channel, i).await }
            },
        )
        .await?
    };
    let mandate_ids: Vec<String> = step.results.into_iter().map(|(_, id)| id).collect();

    // 2. Credit every payer's wallet once (card funding leaves the wallets alone).
    if let SeedSource::Wallet { credit } = &plan.source {
        let credit = *credit;
        let (plan, minter, tag) = (plan.clone(), minter.clone(), tag.clone());
        for_each_index(
            "credit wallets",
            plan.payers,
            concurrency,
            &channels,
            console,
            move |channel, j| {
                let (plan, minter, tag) = (plan.clone(), minter.clone(), tag.clone());
                async move {
                    let bearer = minter.bearer("operator", "bench-operator", None)?;
                    let request = pb::CreditWalletRequest {
                        request_id: format!("seed-{tag}-credit-{j}"),
                        payer_id: plan.payer(j),
                        amount: Some(money_pb(&credit)),
                        reason: "bench seed".into(),
                    };
                    retrying("CreditWallet", || {
                        let mut client = WalletServiceClient::new(channel.clone());
                        let request = authed(request.clone(), &bearer);
                        async move { client.credit_wallet(request).await }
                    })
                    .await
                    .map(|_| ())
                }
            },
        )
        .await?;
    }

    // 3. History: successful debits spread round robin over the mandates.
    if plan.history > 0 {
        let ids: Arc<[String]> = mandate_ids.clone().into();
        let (plan, minter, tag) = (plan.clone(), minter.clone(), tag.clone());
        let step = for_each_index(
            "history debits",
            plan.history,
            concurrency,
            &channels,
            console,
            move |channel, k| {
                let (plan, minter, tag, ids) =
                    (plan.clone(), minter.clone(), tag.clone(), ids.clone());
                async move {
                    let bearer =
                        minter.bearer("merchant", "bench-seed", Some(&plan.merchant_id))?;
                    let mandate = &ids[usize::try_from(k).unwrap_or(0) % ids.len()];
                    let request = deduction_request(
                        format!("seed-{tag}-hist-{k}"),
                        mandate.clone(),
                        plan.money(&plan.history_amount),
                        format!("seed-{tag}-bill-{k}"),
                    );
                    let response = retrying("CreateDeduction", || {
                        let mut client = DeductionServiceClient::new(channel.clone());
                        let request = authed(request.clone(), &bearer);
                        async move { client.create_deduction(request).await }
                    })
                    .await?;
                    Ok(answer_label(response.deduction.as_ref()))
                }
            },
        )
        .await?;
        let mut outcomes: BTreeMap<(&'static str, String), u64> = BTreeMap::new();
        for (_, label) in step.results {
            *outcomes.entry(label).or_default() += 1;
        }
        console.out("history outcomes:");
        for ((status, reason), count) in &outcomes {
            console.out(format_args!(
                "  {:<44} {count:>10}",
                join_label(status, reason)
            ));
        }
    }

    let mut text = mandate_ids.join("\n");
    text.push('\n');
    std::fs::write(&args.out, text).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    console.out(format_args!(
        "wrote {} mandate ids to {}",
        mandate_ids.len(),
        args.out.display()
    ));
    Ok(())
}

/// What `seed` makes, validated before the first call.
struct SeedPlan {
    mandates: u64,
    payers: u64,
    payer_prefix: String,
    merchant_id: String,
    source: SeedSource,
    history: u64,
    history_amount: Money,
    terms: pb::MandateTerms,
}

impl SeedPlan {
    fn from_args(args: &SeedArgs) -> Result<Self, String> {
        let payers = args.payers.unwrap_or(args.mandates);
        if payers > args.mandates {
            return Err(format!(
                "--payers {payers} is more than --mandates {}",
                args.mandates
            ));
        }
        check_identifier("--merchant-id", &args.merchant_id).map_err(violation)?;
        // The longest payer id it will make must be an identifier too.
        check_identifier(
            "--payer-prefix",
            &format!("{}-{}", args.payer_prefix, payers - 1),
        )
        .map_err(violation)?;
        let period = match (
            args.period_unit,
            &args.period_amount_limit,
            args.period_debit_limit,
        ) {
            (None, _, _) => None,
            (Some(_), None, None) => {
                return Err(
                    "--period-unit needs --period-amount-limit and/or --period-debit-limit".into(),
                );
            }
            (Some(unit), amount, count) => Some((unit, amount, count)),
        };
        let per_debit_limit = parse_money("--per-debit-limit", &args.per_debit_limit)?;
        let (period, period_amount_limit, period_debit_limit) = match period {
            None => (None, None, None),
            Some((unit, amount, count)) => (
                Some(pb::Period {
                    unit: period_unit(unit) as i32,
                    count: 1,
                }),
                amount
                    .as_deref()
                    .map(|a| parse_money("--period-amount-limit", a))
                    .transpose()?,
                count,
            ),
        };
        let terms = pb::MandateTerms {
            display_account: "BENCH-ACCOUNT".into(),
            purposes: vec![pb::Purpose::Utility as i32],
            currency_code: CURRENCY.code().into(),
            amount_type: pb::AmountType::Maximum as i32,
            per_debit_limit: Some(money_pb(&per_debit_limit)),
            period,
            period_amount_limit: period_amount_limit.as_ref().map(money_pb),
            period_debit_limit,
            total_amount_limit: None,
            total_debit_limit: None,
            valid_from: None,
            valid_until: None,
            collection_window: None,
            pre_notification: None,
            timezone: String::new(),
            single_use: false,
        };
        Ok(Self {
            mandates: args.mandates,
            payers,
            payer_prefix: args.payer_prefix.clone(),
            merchant_id: args.merchant_id.clone(),
            source: SeedSource::from_args(args, payers)?,
            history: args.history,
            history_amount: parse_money("--history-amount", &args.history_amount)?,
            terms,
        })
    }

    fn payer(&self, j: u64) -> String {
        format!("{}-{j}", self.payer_prefix)
    }

    fn money(&self, money: &Money) -> pb::Money {
        money_pb(money)
    }

    /// The funding sources payer `j` confirms its mandates with: one, with no cap.
    fn funding_sources(&self, j: u64) -> Vec<pb::FundingSource> {
        let instrument = match self.source {
            SeedSource::Wallet { .. } => {
                pb::funding_source::Instrument::Wallet(pb::WalletSource {})
            }
            SeedSource::Card { .. } => cards::instrument(&self.payer(j)),
        };
        vec![pb::FundingSource {
            instrument: Some(instrument),
            cap_per_debit: None,
        }]
    }
}

/// Where the seeded mandates take their money from, with what that needs.
enum SeedSource {
    /// Each payer's wallet, credited with `credit` by the operator.
    Wallet { credit: Money },
    /// Each payer's own card in the bank simulator at `bank_sim`, given `balance`.
    Card { bank_sim: String, balance: Money },
}

impl SeedSource {
    /// Checks the funding flags together: each belongs to one `--funding`, and a flag given for
    /// the other one is refused rather than silently ignored.
    fn from_args(args: &SeedArgs, payers: u64) -> Result<Self, String> {
        let only_for =
            |flag: &str, funding: &str| format!("{flag} is only for --funding {funding}");
        match args.funding {
            SeedFunding::Wallet => {
                if args.bank_sim_target.is_some() {
                    return Err(only_for("--bank-sim-target", "card"));
                }
                if args.card_balance.is_some() {
                    return Err(only_for("--card-balance", "card"));
                }
                let credit = args
                    .wallet_credit
                    .as_deref()
                    .unwrap_or(DEFAULT_WALLET_CREDIT);
                Ok(Self::Wallet {
                    credit: parse_money("--wallet-credit", credit)?,
                })
            }
            SeedFunding::Card => {
                if args.wallet_credit.is_some() {
                    return Err(format!(
                        "{}: card funding credits no wallet",
                        only_for("--wallet-credit", "wallet")
                    ));
                }
                let bank_sim = args.bank_sim_target.clone().ok_or(
                    "--funding card needs --bank-sim-target http://host:port (a running \
                     `withholding-bank-sim`)",
                )?;
                cards::check_payers(&args.payer_prefix, payers)?;
                let balance = args.card_balance.as_deref().unwrap_or(DEFAULT_CARD_BALANCE);
                Ok(Self::Card {
                    bank_sim,
                    balance: parse_money("--card-balance", balance)?,
                })
            }
        }
    }
}

fn period_unit(unit: SeedPeriodUnit) -> pb::PeriodUnit {
    match unit {
        SeedPeriodUnit::Day => pb::PeriodUnit::Day,
        SeedPeriodUnit::Week => pb::PeriodUnit::Week,
        SeedPeriodUnit::Month => pb::PeriodUnit::Month,
        SeedPeriodUnit::Quarter => pb::PeriodUnit::Quarter,
        SeedPeriodUnit::Year => pb::PeriodUnit::Year,
    }
}

/// Creates mandate `i` as the merchant and confirms it as its payer; returns its id.
async fn create_and_confirm(
    plan: &SeedPlan,
    minter: &Minter,
    tag: &str,
    channel: Channel,
    i: u64,
) -> Result<String, String> {
    let payer = plan.payer(i % plan.payers);
    let merchant = minter.bearer("merchant", "bench-seed", Some(&plan.merchant_id))?;
    let create = pb::CreateMandateRequest {
        merchant_contract_id: format!("bench-{tag}-{i}"),
        payer_id: payer.clone(),
        terms: Some(plan.terms.clone()),
    };
    let created = retrying("CreateMandate", || {
        let mut client = MandateServiceClient::new(channel.clone());
        let request = authed(create.clone(), &merchant);
        async move { client.create_mandate(request).await }
    })
    .await?
    .mandate
    .ok_or("CreateMandate answered without a mandate")?;
    let payer_token = minter.bearer("payer", &payer, None)?;
    let confirm = pb::ConfirmMandateRequest {
        mandate_id: created.mandate_id.clone(),
        mandate_version: created.version,
        consent: Some(pb::ConsentEvidence {
            channel: pb::ConsentChannel::App as i32,
            method: pb::ConsentMethod::Biometric as i32,
            device_id: "bench-device".into(),
            user_agent: String::new(),
            ip_address: "192.0.2.1".into(),
            terms_version: "bench-terms-1".into(),
            // SHA-256 of "test": the bench shows no terms text, only a well-formed digest.
            terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            captured_at: None,
            mandate_version: 0,
        }),
        funding_sources: plan.funding_sources(i % plan.payers),
        request_id: format!("seed-{tag}-confirm-{i}"),
    };
    let confirmed = retrying("ConfirmMandate", || {
        let mut client = MandateServiceClient::new(channel.clone());
        let request = authed(confirm.clone(), &payer_token);
        async move { client.confirm_mandate(request).await }
    })
    .await?
    .mandate
    .ok_or("ConfirmMandate answered without a mandate")?;
    if confirmed.status != pb::MandateStatus::Active as i32 {
        return Err(format!(
            "mandate {} is {} after confirmation",
            confirmed.mandate_id,
            pb::MandateStatus::try_from(confirmed.status)
                .map_or("an unknown status", |s| s.as_str_name())
        ));
    }
    Ok(confirmed.mandate_id)
}

/// Calls `call` until it succeeds, fails for good, or has been tried [`SEED_ATTEMPTS`] times.
/// Only for idempotent calls: a retry after a lost answer must not do the work twice.
async fn retrying<T, F, Fut>(rpc: &str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if attempt < SEED_ATTEMPTS
                    && matches!(
                        status.code(),
                        // CANCELLED is what tonic's client gives when the call's own
                        // deadline fires first.
                        Code::Aborted
                            | Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                    ) =>
            {
                tokio::time::sleep(SEED_RETRY_BASE * 2u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            Err(status) => {
                return Err(format!(
                    "{rpc}: {:?}: {} (after {attempt} tries)",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

/// What [`for_each_index`] did.
struct Step<T> {
    /// `(index, result)`, by index.
    results: Vec<(u64, T)>,
}

/// Runs `op(channel, i)` for every `i` in `0..count`, `concurrency` at a time spread over the
/// channels, printing progress; stops at the first error and returns it.
async fn for_each_index<T, F, Fut>(
    label: &'static str,
    count: u64,
    concurrency: u32,
    channels: &[Channel],
    console: &Console,
    op: F,
) -> Result<Step<T>, String>
where
    T: Send + 'static,
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let channel = channels[worker as usize % channels.len()].clone();
        let (op, next, done, failed) = (op.clone(), next.clone(), done.clone(), failed.clone());
        workers.spawn(async move {
            let mut results = vec![];
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match op(channel.clone(), i).await {
                    Ok(result) => results.push((i, result)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(format!("{label} #{i}: {e}"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(results)
        });
    }
    let progress = {
        let (done, console) = (done.clone(), console.clone());
        tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                ticker.tick().await;
                let n = done.load(Ordering::Relaxed);
                console.err(format_args!(
                    "  {label}: {n}/{count} ({:.0}/s)",
                    per_second(n, started.elapsed())
                ));
            }
        })
    };
    let mut results = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(part)) => results.extend(part),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("{label}: worker failed: {e}"));
            }
        }
    }
    progress.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = started.elapsed();
    results.sort_unstable_by_key(|(i, _)| *i);
    console.out(format_args!(
        "{label}: {} in {:.2} s = {:.1}/s",
        results.len(),
        elapsed.as_secs_f64(),
        per_second(results.len() as u64, elapsed)
    ));
    Ok(Step { results })
}

// ---------------------------------------------------------------------------------------------
// bench

/// `withholding-bench bench`: CreateDeduction for the duration, then the Health/Check ceiling, then
/// (with `--bare-database-url`) the bare cap-checked transaction.
pub async fn bench(args: BenchArgs, console: &Console) -> Result<(), String> {
    let connections = args.target.connections.unwrap_or(BENCH_CONNECTIONS);
    let concurrency = args.target.concurrency.unwrap_or(BENCH_CONCURRENCY);
    check_shape(concurrency, connections)?;
    check_identifier("--merchant-id", &args.merchant_id).map_err(violation)?;
    let amount = parse_money("--amount", &args.amount)?;
    let bare = args
        .bare_database_url
        .as_deref()
        .map(|url| {
            let pool_size = args
                .bare_pool_size
                .unwrap_or(concurrency.min(bare::MAX_POOL_SIZE));
            bare::BareTarget::parse(url, pool_size, args.target.request_timeout_s)
        })
        .transpose()?;
    let mandates = read_mandates(&args.mandates_file)?;
    let shape = Shape {
        concurrency,
        warmup: Duration::from_secs(args.warmup_s),
        duration: Duration::from_secs(args.duration_s),
        max_requests: args.max_requests,
    };
    // The token must outlive both phases and a slow start.
    let ttl_s = 2 * (args.warmup_s + args.duration_s) + args.target.request_timeout_s + 300;
    let minter = Minter::new(&args.keys, i64::try_from(ttl_s).unwrap_or(i64::MAX / 2))?;
    let bearer = minter.bearer("merchant", "bench", Some(&args.merchant_id))?;
    let channels = connect(&args.target, connections).await?;
    preflight(&channels[0], &bearer, &mandates[0], console).await?;
    let bare = match bare {
        Some(target) => Some(target.connect().await?),
        None => None,
    };

    let tag = run_tag()?;
    let bare_work = bare::BareWork {
        rows: mandates.len() as u64,
        hot: args.hot,
        amount_minor: amount.minor(),
        tag: &tag,
    };
    let scenario = if args.hot {
        format!("hot: every debit on {}", mandates[0])
    } else {
        format!("spread over {} mandates", mandates.len())
    };
    let context = Arc::new(DebitContext {
        mandates: mandates.into(),
        hot: args.hot,
        amount: money_pb(&amount),
        bearer,
        tag: tag.clone(),
    });
    let deductions = run_phase(
        "CreateDeduction",
        &channels,
        &shape,
        console,
        move |channel, n| {
            let context = context.clone();
            async move { context.debit(channel, n).await }
        },
    )
    .await?;
    let ceiling = run_phase(
        "Health/Check",
        &channels,
        &shape,
        console,
        |channel, _| async move {
            let request = Request::new(HealthCheckRequest {
                service: String::new(),
            });
            match HealthClient::new(channel).check(request).await {
                Ok(response) => Outcome::Answered {
                    status: ServingStatus::try_from(response.into_inner().status)
                        .map_or("UNKNOWN_SERVING_STATUS", |s| s.as_str_name()),
                    reason: String::new(),
                },
                Err(status) => Outcome::failed(&status),
            }
        },
    )
    .await?;

    console.out(format_args!(
        "target {}  {concurrency} in flight over {connections} connections  warm-up {} s, \
         measured {} s per phase  amount {} {}",
        args.target.target,
        args.warmup_s,
        args.duration_s,
        amount.amount_text(),
        CURRENCY.code()
    ));
    deductions.print(
        &format!("DeductionService/CreateDeduction ({scenario})"),
        GRPC_ERRORS_BY,
        console,
    );
    ceiling.print(
        "ceiling: grpc.health.v1.Health/Check (no token, no database)",
        GRPC_ERRORS_BY,
        console,
    );
    print_ratio("ceiling", deductions.rps(), ceiling.rps(), console);

    // Last, and printed on its own: the gRPC figures above stand even if this phase fails.
    if let Some(bare) = bare {
        let title = bare.title(&bare_work);
        let report = bare.run(bare_work, &shape, channels.len(), console).await?;
        report.print(&title, bare::ERRORS_BY, console);
        print_ratio("bare transaction", deductions.rps(), report.rps(), console);
    }
    Ok(())
}

/// `ratio CreateDeduction / <against>: a / b = a÷b`, unless nothing completed against.
fn print_ratio(against: &str, rps: f64, against_rps: f64, console: &Console) {
    if against_rps > 0.0 {
        console.out(format_args!(
            "\nratio CreateDeduction / {against}: {rps:.1} / {against_rps:.1} = {:.3}",
            rps / against_rps
        ));
    }
}

/// Fails fast, with one call each, on a wrong key, merchant or mandate file and on a server
/// that is not serving.
async fn preflight(
    channel: &Channel,
    bearer: &AsciiMetadataValue,
    mandate_id: &str,
    console: &Console,
) -> Result<(), String> {
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("health check: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if health.status != ServingStatus::Serving as i32 {
        return Err(format!(
            "the server is not serving (status {})",
            health.status
        ));
    }
    let mandate = MandateServiceClient::new(channel.clone())
        .get_mandate(authed(
            pb::GetMandateRequest {
                mandate_id: mandate_id.to_owned(),
                as_of: None,
            },
            bearer,
        ))
        .await
        .map_err(|s| {
            format!(
                "GetMandate {mandate_id} as the bench merchant: {:?}: {} (same --data-dir, \
                 --merchant-id and server as seed?)",
                s.code(),
                s.message()
            )
        })?
        .into_inner()
        .mandate
        .ok_or("GetMandate answered without a mandate")?;
    if mandate.status != pb::MandateStatus::Active as i32 {
        console.err(format_args!(
            "warning: mandate {mandate_id} is {}; its debits will be declined",
            pb::MandateStatus::try_from(mandate.status).map_or("unknown", |s| s.as_str_name())
        ));
    }
    Ok(())
}

/// What every CreateDeduction of one run shares.
struct DebitContext {
    mandates: Arc<[String]>,
    hot: bool,
    amount: pb::Money,
    bearer: AsciiMetadataValue,
    /// Makes request ids and bill references unique across runs.
    tag: String,
}

impl DebitContext {
    /// Debit number `n`: its own request id and bill, on the first mandate (hot) or the next
    /// one round robin.
    async fn debit(&self, channel: Channel, n: u64) -> Outcome {
        let index = if self.hot {
            0
        } else {
            usize::try_from(n).map_or(0, |n| n % self.mandates.len())
        };
        let request = deduction_request(
            format!("bench-{}-{n}", self.tag),
            self.mandates[index].clone(),
            self.amount.clone(),
            format!("bill-{}-{n}", self.tag),
        );
        match DeductionServiceClient::new(channel)
            .create_deduction(authed(request, &self.bearer))
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let (status, reason) = answer_label(response.deduction.as_ref());
                let status = if response.replayed {
                    "REPLAYED"
                } else {
                    status
                };
                Outcome::Answered { status, reason }
            }
            Err(status) => Outcome::failed(&status),
        }
    }
}

fn deduction_request(
    request_id: String,
    mandate_id: String,
    amount: pb::Money,
    bill_reference: String,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        request_id,
        mandate_id,
        amount: Some(amount),
        purpose: pb::Purpose::Utility as i32,
        bill_reference,
        description: "bench".into(),
        notice_id: String::new(),
        one_off_approval_id: String::new(),
    }
}

/// A deduction's status name (without the enum prefix) and reason code (empty when none).
fn answer_label(deduction: Option<&pb::Deduction>) -> (&'static str, String) {
    let Some(deduction) = deduction else {
        return ("NO_DEDUCTION", String::new());
    };
    let status = pb::DeductionStatus::try_from(deduction.status).map_or("UNKNOWN_STATUS", |s| {
        s.as_str_name()
            .strip_prefix("DEDUCTION_STATUS_")
            .unwrap_or(s.as_str_name())
    });
    (status, deduction.reason_code.clone())
}

/// How a phase is driven.
struct Shape {
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
    /// Most requests sent in the phase, warm-up included.
    max_requests: u64,
}

/// What one call came back as.
enum Outcome {
    /// An answer: its status and reason code (empty when it has none).
    Answered {
        status: &'static str,
        reason: String,
    },
    /// An error: its kind (a gRPC code, a SQLSTATE) and message.
    Failed { kind: String, message: String },
}

impl Outcome {
    /// A gRPC error, by its code.
    fn failed(status: &Status) -> Self {
        Self::error(format!("{:?}", status.code()), status.message())
    }

    /// An error of `kind`; only the start of the message is kept, for the report's sample.
    fn error(kind: String, message: &str) -> Self {
        Self::Failed {
            kind,
            message: message.chars().take(ERROR_SAMPLE_CHARS).collect(),
        }
    }
}

/// What the workers of one connection recorded; merged into the phase's report at the end.
/// One per connection rather than per worker: a histogram is about 150 KB, and the lock is
/// held for a few hundred nanoseconds per call.
struct Tally {
    latency_us: Histogram<u64>,
    answers: BTreeMap<(&'static str, String), u64>,
    /// By kind (a gRPC code, a SQLSTATE): how many, and the first message.
    errors: BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn new() -> Result<Self, String> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
                .map_err(|e| format!("histogram: {e}"))?,
            answers: BTreeMap::new(),
            errors: BTreeMap::new(),
        })
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(micros.clamp(1, LATENCY_MAX_US));
        match outcome {
            Outcome::Answered { status, reason } => {
                *self.answers.entry((status, reason)).or_default() += 1;
            }
            Outcome::Failed { kind, message } => {
                self.errors.entry(kind).or_insert((0, message)).0 += 1;
            }
        }
    }

    fn merge(&mut self, other: Self) -> Result<(), String> {
        self.latency_us
            .add(&other.latency_us)
            .map_err(|e| format!("merging histograms: {e}"))?;
        for (key, count) in other.answers {
            *self.answers.entry(key).or_default() += count;
        }
        for (kind, (count, message)) in other.errors {
            self.errors.entry(kind).or_insert((0, message)).0 += count;
        }
        Ok(())
    }
}

/// One phase's figures.
struct PhaseReport {
    tally: Tally,
    /// The measured window: from the end of the warm-up to the deadline, or to when the last
    /// worker stopped if `--max-requests` ran out first.
    window: Duration,
    sent: u64,
    /// Calls still in flight at the deadline, abandoned unrecorded.
    cut_at_deadline: u64,
}

impl PhaseReport {
    fn completed(&self) -> u64 {
        self.tally.latency_us.len()
    }

    fn rps(&self) -> f64 {
        per_second(self.completed(), self.window)
    }

    /// Prints the figures under `== title`; `errors_by` names what errors are grouped by.
    fn print(&self, title: &str, errors_by: &str, console: &Console) {
        console.out(format_args!("\n== {title}"));
        console.out(format_args!(
            "completed {} in {:.2} s = {:.1} req/s   (sent {} incl. warm-up; {} in flight at \
             the deadline, not counted)",
            self.completed(),
            self.window.as_secs_f64(),
            self.rps(),
            self.sent,
            self.cut_at_deadline
        ));
        let h = &self.tally.latency_us;
        if h.is_empty() {
            console.out("no call completed in the measured window");
        } else {
            let ms = |micros: u64| micros as f64 / 1000.0;
            console.out(format_args!(
                "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.90)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                h.mean() / 1000.0
            ));
        }
        console.out("outcomes:");
        for ((status, reason), count) in &self.tally.answers {
            console.out(format_args!(
                "  {:<44} {count:>10}",
                join_label(status, reason)
            ));
        }
        if self.tally.errors.is_empty() {
            console.out(format_args!("errors by {errors_by}: none"));
        } else {
            console.out(format_args!("errors by {errors_by}:"));
            for (kind, (count, message)) in &self.tally.errors {
                console.out(format_args!("  {kind:<44} {count:>10}   first: {message}"));
            }
        }
    }
}

/// Runs `call(lane, n)` with `shape.concurrency` calls in flight, worker `w` on lane
/// `w % lanes` (a gRPC channel, a database pool), until the deadline (warm-up plus duration) or
/// `max_requests`; records the calls that complete after the warm-up and before the deadline.
/// A call still running at the deadline is dropped: work that must finish (a database
/// transaction) has to run in a task of its own.
async fn run_phase<L, F, Fut>(
    name: &'static str,
    lanes: &[L],
    shape: &Shape,
    console: &Console,
    call: F,
) -> Result<PhaseReport, String>
where
    L: Clone + Send + 'static,
    F: Fn(L, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    if lanes.is_empty() {
        return Err(format!("{name}: no lanes to run on"));
    }
    console.err(format_args!(
        "{name}: warming up {} s, then measuring {} s",
        shape.warmup.as_secs(),
        shape.duration.as_secs()
    ));
    let call = Arc::new(call);
    let tallies = lanes
        .iter()
        .map(|_| Tally::new().map(|t| Arc::new(Mutex::new(t))))
        .collect::<Result<Vec<_>, _>>()?;
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let deadline = measure_from + shape.duration;
    let max_requests = shape.max_requests;
    let mut workers = JoinSet::new();
    for worker in 0..shape.concurrency as usize {
        let lane = lanes[worker % lanes.len()].clone();
        let tally = tallies[worker % lanes.len()].clone();
        let (call, sent, cut) = (call.clone(), sent.clone(), cut.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests {
                    sent.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let began = Instant::now();
                // A call still running at the deadline is abandoned: the phase ends on time.
                let Ok(outcome) = tokio::time::timeout_at(deadline, call(lane.clone(), n)).await
                else {
                    cut.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                let ended = Instant::now();
                if ended >= measure_from && ended < deadline {
                    tally
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(ended - began, outcome);
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| format!("{name}: worker failed: {e}"))?;
    }
    let window_end = Instant::now().min(deadline);
    let mut merged = Tally::new()?;
    for tally in tallies {
        let tally = Arc::try_unwrap(tally)
            .map_err(|_| format!("{name}: a worker outlived its phase"))?
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        merged.merge(tally)?;
    }
    Ok(PhaseReport {
        tally: merged,
        window: window_end.saturating_duration_since(measure_from),
        sent: sent.load(Ordering::Relaxed),
        cut_at_deadline: cut.load(Ordering::Relaxed),
    })
}

/// Mandate ids, one a line; blank lines are skipped.
fn read_mandates(path: &Path) -> Result<Vec<String>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_MANDATES_FILE_BYTES {
        return Err(format!(
            "{}: {size} bytes is more than a mandates file ({MAX_MANDATES_FILE_BYTES})",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let ids: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(format!("{}: no mandate ids", path.display()));
    }
    if ids.len() > MAX_MANDATES {
        return Err(format!(
            "{}: {} mandate ids, at most {MAX_MANDATES}",
            path.display(),
            ids.len()
        ));
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// shared

/// Mints tokens with the server's HS256 dev key, as `withholding token` does.
#[derive(Clone)]
struct Minter {
    secret: Arc<[u8]>,
    issuer: String,
    audience: String,
    ttl_s: i64,
}

impl Minter {
    fn new(keys: &KeyArgs, ttl_s: i64) -> Result<Self, String> {
        let secret = keys
            .read_hs256_secret()
            .map_err(|e| format!("{e} (pass the server's --data-dir or --jwt-hs256-key-file)"))?;
        Ok(Self {
            secret: secret.into(),
            issuer: keys.jwt_issuer.clone(),
            audience: keys.jwt_audience.clone(),
            ttl_s,
        })
    }

    /// `Bearer <token>` for an `authorization` header.
    fn bearer(
        &self,
        role: &str,
        sub: &str,
        merchant_id: Option<&str>,
    ) -> Result<AsciiMetadataValue, String> {
        let now = jiff::Timestamp::now().as_second();
        let claims = Claims {
            sub: sub.to_owned(),
            role: role.to_owned(),
            merchant_id: merchant_id.map(str::to_owned),
            scope: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.ttl_s,
            nbf: Some(now),
            iat: Some(now),
        };
        let token = mint_hs256(&self.secret, &claims).map_err(|e| format!("minting: {e}"))?;
        format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token is not a header value: {e}"))
    }
}

fn authed<T>(message: T, bearer: &AsciiMetadataValue) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// `connections` separate HTTP/2 connections to the target.
async fn connect(target: &TargetArgs, connections: u32) -> Result<Vec<Channel>, String> {
    connect_to(
        "--target",
        &target.target,
        target.request_timeout_s,
        connections,
    )
    .await
}

/// `connections` separate HTTP/2 connections to `url`, given by `flag` (named in errors), each
/// call bounded by `request_timeout_s`.
async fn connect_to(
    flag: &str,
    url: &str,
    request_timeout_s: u64,
    connections: u32,
) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{flag} {url}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(request_timeout_s))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        channels.push(endpoint.connect().await.map_err(|e| {
            format!(
                "{flag}: connecting to {url}: {}",
                withholding::grpc::status::error_chain(&e)
            )
        })?);
    }
    Ok(channels)
}

fn check_shape(concurrency: u32, connections: u32) -> Result<(), String> {
    if concurrency < connections {
        return Err(format!(
            "--concurrency {concurrency} is less than --connections {connections}: some \
             connections would carry nothing"
        ));
    }
    if concurrency > connections * MAX_IN_FLIGHT_PER_CONNECTION {
        return Err(format!(
            "--concurrency {concurrency} over {connections} connections is more than the \
             server's {MAX_IN_FLIGHT_PER_CONNECTION} per connection; the rest would only queue"
        ));
    }
    Ok(())
}

/// A short random tag that keeps this run's contract ids, request ids and bills apart from
/// every other run's.
fn run_tag() -> Result<String, String> {
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).map_err(|e| format!("random: {e}"))?;
    Ok(hex::encode(bytes))
}

fn parse_money(flag: &str, text: &str) -> Result<Money, String> {
    Money::parse(CURRENCY, text).map_err(|e| format!("{flag} {text:?}: {e}"))
}

fn money_pb(money: &Money) -> pb::Money {
    pb::Money {
        currency_code: money.currency().code().into(),
        amount: money.amount_text(),
    }
}

fn violation(v: withholding::domain::FieldViolation) -> String {
    format!("{} {}", v.field, v.description)
}

fn join_label(status: &str, reason: &str) -> String {
    if reason.is_empty() {
        status.to_owned()
    } else {
        format!("{status} {reason}")
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}
