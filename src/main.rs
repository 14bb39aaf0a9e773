//! The `withholding` binary: parse the command line, start logging, run the command.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use jiff::SignedDuration;
use jiff::Span;
use withholding::app::{AppConfig, Application};
use withholding::clock::SystemClock;
use withholding::config::{
    self, AuditCommand, AuditVerifyArgs, Cli, Command, ServeArgs, TokenArgs,
};
use withholding::grpc::auth::{Authenticator, Claims, VerifyKey, mint_hs256};
use withholding::service::{AuditKey, DeductionSettings, ResolverSettings, Settings};

/// The server's threads hand allocations across one another (rows decoded on the database
/// threads are dropped on tokio's), which glibc's arenas handle poorly under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    withholding::process::init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => withholding::storage::migrate(&args.database_url)
            .await
            .map(|()| eprintln!("migrations applied"))
            .map_err(|e| e.to_string()),
        Command::Token(args) => token(&args),
        Command::Settle(args) => withholding::cli::settle(&args).await,
        Command::Reconcile(args) => withholding::cli::reconcile(&args).await,
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let (authenticator, dev_key) = config::authenticator(&args)?;
    if let Some(dev_key) = dev_key {
        if dev_key.created {
            eprintln!(
                "created a development signing key at {}\n\
                 mint tokens with, for example:\n  \
                 withholding token --role merchant --merchant-id m-001\n  \
                 withholding token --role payer --sub payer-001",
                dev_key.path.display()
            );
        }
        // On every start, not only the first: a server left on the development key accepts
        // any token minted by whoever can read that file.
        eprintln!(
            "warning: tokens are checked with the development HS256 key {}; anyone who can \
             read it can mint any token: not for production (configure --jwt-public-key)",
            dev_key.path.display()
        );
    }
    let audit_key_path = args.keys.audit_key_path();
    let (audit_key, created) = AuditKey::load_or_create(&audit_key_path)?;
    if created {
        eprintln!(
            "created an audit checkpoint key at {} (public key {})",
            audit_key_path.display(),
            audit_key.public().hex()
        );
    }
    let settings = Settings {
        consent_window: Span::new().seconds(args.consent_window_s),
        dormancy: Span::new().months(args.dormancy_months),
    };
    let app = Application::build(AppConfig {
        database_url: args.database.database_url.clone(),
        read_database_url: args.read_database_url.clone(),
        listen: args.listen,
        authenticator: Arc::new(authenticator),
        settings,
        clock: Arc::new(SystemClock),
        expiry_sweep_interval: Some(Duration::from_secs(args.expiry_sweep_s.max(1))),
        request_timeout: args.request_timeout(),
        bank_gateway: args
            .bank_gateway_url
            .clone()
            .map(|url| (url, Duration::from_millis(args.bank_deadline_ms.max(1)))),
        deduction_settings: DeductionSettings {
            resolver: ResolverSettings {
                bank_deadline: SignedDuration::from_millis(
                    i64::try_from(args.bank_deadline_ms.max(1)).unwrap_or(i64::MAX / 4),
                ),
                // Never second-guess a live bank call: a charge left IN_FLIGHT is looked at
                // only after twice the bank deadline (at least a second).
                first_check_after: SignedDuration::from_millis(
                    i64::try_from(args.bank_deadline_ms.max(500)).unwrap_or(i64::MAX / 4) * 2,
                ),
                horizon: SignedDuration::from_hours(args.resolver_horizon_h.max(1)),
                ..ResolverSettings::default()
            },
            recovery_window: SignedDuration::from_hours(
                i64::from(args.suspected_recovery_window_days) * 24,
            ),
            ..DeductionSettings::default()
        },
        resolver_interval: Some(Duration::from_secs(args.resolver_interval_s.max(1))),
        metrics_listen: args.metrics_listen,
        events: args.event_settings(),
        audit_key: Arc::new(audit_key),
        console: args.console()?,
    })
    .await
    .map_err(|e| format!("starting: {e}"))?;
    if let Some(addr) = app.metrics_addr() {
        eprintln!("metrics at http://{addr}/metrics");
    }
    if let Some(addr) = app.console_addr() {
        eprintln!(
            "compliance console at {} (sign in with a token from `withholding token`)",
            withholding::console::url(addr)
        );
    }
    eprintln!("withholding listening on {}", app.local_addr());
    let addr = app.local_addr();
    let console = app.console_addr();
    let server = tokio::spawn(app.run_until(withholding::process::shutdown_signal()));
    if args.demo {
        demo(&args, addr, console).await?;
    }
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Seeds the demo data once, and prints how to sign in to the console.
async fn demo(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
    console: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let secret = args
        .keys
        .read_hs256_secret()
        .map_err(|e| format!("--demo mints tokens with the development key: {e}"))?;
    let minter = |role: &str, sub: &str, merchant_id: Option<&str>| {
        let claims = dev_claims(&args.keys, role, sub, merchant_id, 8 * 3600);
        mint_hs256(&secret, &claims).map_err(|e| e.to_string())
    };
    if withholding::demo::seed(addr, &minter).await? {
        eprintln!(
            "demo data written: merchants water-co, loan-co, stream-co; payers payer-alice, \
             payer-bob, payer-chen"
        );
    } else {
        eprintln!("demo data already in this database");
    }
    if let Some(console) = console {
        eprintln!(
            "open {} and sign in with this auditor token (valid 8 hours):\n{}",
            withholding::console::url(console),
            minter("auditor", "demo-auditor", None)?
        );
    }
    Ok(())
}

fn token(args: &TokenArgs) -> Result<(), String> {
    let secret = args
        .keys
        .read_hs256_secret()
        .map_err(|e| format!("{e} (run `withholding serve` once to create it)"))?;
    let sub = match (&args.sub, args.role.as_str()) {
        (Some(sub), _) => sub.clone(),
        (None, "payer") => return Err("--sub is required for payers: it is the payer id".into()),
        (None, role) => format!("{role}-cli"),
    };
    if args.role == "merchant" && args.merchant_id.is_none() {
        return Err(
            "--merchant-id is required for merchants: a merchant token names its merchant".into(),
        );
    }
    let claims = dev_claims(
        &args.keys,
        &args.role,
        &sub,
        args.merchant_id.as_deref(),
        args.ttl_s,
    );
    let token = mint_hs256(&secret, &claims).map_err(|e| e.to_string())?;
    // Checked as `serve` checks it (same key, issuer and audience, no leeway), so a token the
    // server would refuse (a sub or merchant id that is not an identifier, …) is never minted.
    Authenticator::new(
        vec![VerifyKey::hs256(None, &secret)],
        args.keys.jwt_issuer.clone(),
        args.keys.jwt_audience.clone(),
        0,
    )?
    .authenticate(&token)
    .map_err(|e| format!("not minting a token the server would refuse: {e}"))?;
    println!("{token}");
    Ok(())
}

/// Verifies the trail in the database, and against a kept checkpoint if one is named.
async fn audit_verify(args: AuditVerifyArgs) -> Result<(), String> {
    let public = match &args.public_key {
        Some(hex) => withholding::service::AuditPublicKey::from_hex(hex)?,
        None => AuditKey::load(&args.keys.audit_key_path())?.public(),
    };
    let checkpoint = args
        .checkpoint
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))
                .and_then(|text| withholding::grpc::checkpoint_from_json(&text))
        })
        .transpose()?;
    let outcome = withholding::service::verify_database(
        &args.database.database_url,
        public,
        checkpoint.as_ref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let p = &outcome.progress;
    match &outcome.broken {
        None => {
            println!(
                "intact: {} chains, {} events{}",
                p.chains_verified,
                p.events_verified,
                match outcome.checkpoint_extended {
                    Some(true) => ", and the trail extends the checkpoint",
                    _ => "",
                }
            );
            Ok(())
        }
        Some(broken) => Err(format!(
            "{broken}; expected hash {}, found {}",
            broken.expected_hash, broken.found_hash
        )),
    }
}

/// The claims of a development token valid from now for `ttl_s` seconds, with the configured
/// issuer and audience.
fn dev_claims(
    keys: &config::KeyArgs,
    role: &str,
    sub: &str,
    merchant_id: Option<&str>,
    ttl_s: i64,
) -> Claims {
    let now = jiff::Timestamp::now().as_second();
    Claims {
        sub: sub.to_owned(),
        role: role.to_owned(),
        merchant_id: merchant_id.map(str::to_owned),
        scope: None,
        iss: keys.jwt_issuer.clone(),
        aud: keys.jwt_audience.clone(),
        exp: now + ttl_s,
        nbf: Some(now),
        iat: Some(now),
    }
}
