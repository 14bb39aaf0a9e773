//! Command line and environment (every flag has a `WITHHOLDING_*` variable), and loading the
//! token keys they name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::Algorithm;

use crate::grpc::auth::{Authenticator, VerifyKey};

#[derive(Debug, Parser)]
#[command(
    name = "withholding",
    version,
    about = "Withholding (代扣) mandate manager"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service (and the console, if asked for). Boxed: its flags outweigh every
    /// other command's.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Mint a development token signed with the local HS256 key.
    Token(TokenArgs),
    /// Print the daily settlement of a business day as CSV.
    Settle(SettleArgs),
    /// Import the bank's statement of a day and print the discrepancies it shows.
    Reconcile(ReconcileArgs),
    /// The audit trail, offline.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Args)]
pub struct SettleArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The business day, YYYY-MM-DD (each merchant's own cut-off and time zone).
    #[arg(long)]
    pub date: String,
    /// Only this merchant.
    #[arg(long)]
    pub merchant: Option<String>,
    /// Output format.
    #[arg(long, default_value = "csv", value_parser = ["csv"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The statement's UTC day, YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    /// The bank's statement: CSV with the header charge_id,amount,currency,status,time.
    #[arg(long)]
    pub statement: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify every audit chain in the database and, with --checkpoint, that the trail still
    /// extends a kept checkpoint. Exits non-zero naming the first broken link.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// A checkpoint file: the `json` of GetAuditCheckpoint, kept since.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The Ed25519 public key (64 hex digits) the checkpoint must be signed with. Default: the
    /// public half of the audit key file.
    #[arg(long, env = "WITHHOLDING_AUDIT_PUBLIC_KEY")]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (embedded) or `postgres://…` (production).
    #[arg(
        long,
        env = "WITHHOLDING_DATABASE_URL",
        default_value = "sqlite://./data/withholding.db"
    )]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Folder for the embedded default's files (the dev signing key).
    #[arg(long, env = "WITHHOLDING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HS256 secret file. Default: DATA_DIR/dev-jwt.key, created on first run unless public
    /// keys are configured.
    #[arg(long, env = "WITHHOLDING_JWT_HS256_KEY_FILE")]
    pub jwt_hs256_key_file: Option<PathBuf>,
    /// Ed25519 key audit checkpoints are signed with (64 hex digits of its seed). Default:
    /// DATA_DIR/audit-ed25519.key, created on first run.
    #[arg(long, env = "WITHHOLDING_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// Expected `iss` claim.
    #[arg(
        long,
        env = "WITHHOLDING_JWT_ISSUER",
        default_value = "withholding-dev"
    )]
    pub jwt_issuer: String,
    /// Expected `aud` claim.
    #[arg(long, env = "WITHHOLDING_JWT_AUDIENCE", default_value = "withholding")]
    pub jwt_audience: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// A PostgreSQL hot standby of the database (`postgres://…`, streaming replication) that
    /// serves compliance reads: audit queries and exports, mandate histories, listings and
    /// settlement summaries (docs/OPERATIONS.md, "A read replica"). Everything a write or a
    /// decision reads stays on the primary.
    #[arg(long, env = "WITHHOLDING_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "WITHHOLDING_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Public verification keys as KID:ALG:PEM_PATH, ALG one of RS256, ES256, EdDSA.
    /// Repeat the flag, or separate with commas in the variable.
    #[arg(
        long = "jwt-public-key",
        env = "WITHHOLDING_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub jwt_public_keys: Vec<String>,
    /// Clock skew tolerated on exp and nbf, 0 to 60 s.
    #[arg(long, env = "WITHHOLDING_JWT_LEEWAY_S", default_value_t = 30)]
    pub jwt_leeway_s: u64,
    /// How long a new mandate waits for the payer's consent.
    #[arg(long, env = "WITHHOLDING_CONSENT_WINDOW_S", default_value_t = 86_400)]
    pub consent_window_s: i64,
    /// Months without a collection after which a mandate expires.
    #[arg(long, env = "WITHHOLDING_DORMANCY_MONTHS", default_value_t = 36)]
    pub dormancy_months: i64,
    /// Seconds between sweeps that expire mandates whose time ran out.
    #[arg(long, env = "WITHHOLDING_EXPIRY_SWEEP_S", default_value_t = 60)]
    pub expiry_sweep_s: u64,
    /// The bank gateway for card sources, `http://HOST:PORT` (e.g. a `withholding-bank-sim`);
    /// any other form is refused at start-up. Without it, card sources refuse with
    /// CARD_NOT_CONNECTED.
    #[arg(long, env = "WITHHOLDING_BANK_GATEWAY_URL")]
    pub bank_gateway_url: Option<String>,
    /// Deadline of each call to the bank; past it the outcome is unknown, never failed.
    #[arg(long, env = "WITHHOLDING_BANK_DEADLINE_MS", default_value_t = 3000)]
    pub bank_deadline_ms: u64,
    /// Seconds between passes of the resolver that asks the bank about unknown outcomes.
    #[arg(long, env = "WITHHOLDING_RESOLVER_INTERVAL_S", default_value_t = 5)]
    pub resolver_interval_s: u64,
    /// Hours after a charge when the resolver stops asking and leaves it to reconciliation.
    #[arg(long, env = "WITHHOLDING_RESOLVER_HORIZON_H", default_value_t = 24)]
    pub resolver_horizon_h: i64,
    /// Days after a refund during which a debit of the refunded amount under a bill never
    /// collected or announced is suspected of recovering it (DESIGN §5), 1 to 365.
    #[arg(
        long,
        env = "WITHHOLDING_SUSPECTED_RECOVERY_WINDOW_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=365)
    )]
    pub suspected_recovery_window_days: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set), e.g. 127.0.0.1:9464.
    #[arg(long, env = "WITHHOLDING_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Upper bound on any request's duration, whatever deadline the client sets.
    #[arg(long, env = "WITHHOLDING_REQUEST_TIMEOUT_S", default_value_t = 30)]
    pub request_timeout_s: u64,
    /// Hours events are kept for WatchEvents; an older cursor is OUT_OF_RANGE (1 to 8760).
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_RETENTION_H",
        default_value_t = 168,
        value_parser = clap::value_parser!(u32).range(1..=8760)
    )]
    pub event_retention_h: u32,
    /// Milliseconds between looks for new events (what other replicas wrote included), 10 to
    /// 10000: the delivery latency is at most about this.
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_POLL_MS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(10..=10_000)
    )]
    pub event_poll_ms: u64,
    /// Events buffered per WatchEvents stream, 1 to 4096.
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_BUFFER",
        default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..=4096)
    )]
    pub event_buffer: u64,
    /// Seconds a stream's buffer may stay full before the stream is cut off, 1 to 600.
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_STALL_S",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    pub event_stall_s: u64,
    /// WatchEvents streams open at once, in all, 1 to 65536.
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_WATCHERS_MAX",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u64).range(1..=65_536)
    )]
    pub event_watchers_max: u64,
    /// WatchEvents streams open at once per merchant or payer, 1 to 256.
    #[arg(
        long,
        env = "WITHHOLDING_EVENT_WATCHERS_PER_CALLER",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=256)
    )]
    pub event_watchers_per_caller: u64,
    /// Serve the compliance console (read-only web pages) at http://ADDR/ (off unless set),
    /// e.g. 127.0.0.1:8080. Put it behind TLS termination outside a workstation.
    #[arg(long, env = "WITHHOLDING_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// Minutes a console session lasts (never past its token's expiry), 1 to 720.
    #[arg(
        long,
        env = "WITHHOLDING_CONSOLE_SESSION_MIN",
        default_value_t = 15,
        value_parser = clap::value_parser!(u32).range(1..=720)
    )]
    pub console_session_min: u32,
    /// The time zone the console's "today" and times are in (an IANA name).
    #[arg(
        long,
        env = "WITHHOLDING_CONSOLE_TIME_ZONE",
        default_value = "Asia/Shanghai"
    )]
    pub console_time_zone: String,
    /// Seed demo data for the console through the API (once per database; needs the
    /// development signing key), serve the console (on 127.0.0.1:8080 unless
    /// --console-listen says otherwise) and print a token to sign in with.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// merchant, payer, auditor or operator.
    #[arg(long, value_parser = ["merchant", "payer", "auditor", "operator"])]
    pub role: String,
    /// Subject: the payer id for payers, a user or system name otherwise.
    #[arg(long)]
    pub sub: Option<String>,
    /// The merchant (required for merchants; optional for auditors).
    #[arg(long)]
    pub merchant_id: Option<String>,
    /// Lifetime in seconds (at least 1).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl_s: i64,
}

impl ServeArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }

    /// The console's address and settings, if it is served.
    pub fn console(&self) -> Result<Option<(SocketAddr, crate::console::ConsoleSettings)>, String> {
        let demo_default = self.demo.then(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let Some(listen) = self.console_listen.or(demo_default) else {
            return Ok(None);
        };
        let time_zone = crate::domain::terms::TimeZoneName::parse(
            "--console-time-zone",
            &self.console_time_zone,
        )
        .map_err(|e| e.to_string())?;
        Ok(Some((
            listen,
            crate::console::ConsoleSettings {
                session_lifetime: jiff::SignedDuration::from_mins(i64::from(
                    self.console_session_min,
                )),
                time_zone,
            },
        )))
    }

    /// Event delivery as the flags set it.
    pub fn event_settings(&self) -> crate::service::EventSettings {
        let buffer = usize::try_from(self.event_buffer).unwrap_or(256);
        crate::service::EventSettings {
            poll: Duration::from_millis(self.event_poll_ms),
            retention: jiff::SignedDuration::from_hours(i64::from(self.event_retention_h)),
            buffer,
            batch: u32::try_from(buffer.min(128)).unwrap_or(128),
            stall: Duration::from_secs(self.event_stall_s),
            max_watchers: usize::try_from(self.event_watchers_max).unwrap_or(1024),
            max_watchers_per_caller: usize::try_from(self.event_watchers_per_caller).unwrap_or(8),
            ..crate::service::EventSettings::default()
        }
    }
}

/// Length of a generated dev secret.
const DEV_SECRET_BYTES: usize = 32;

impl KeyArgs {
    pub fn audit_key_path(&self) -> PathBuf {
        self.audit_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-ed25519.key"))
    }

    fn hs256_path(&self) -> PathBuf {
        self.jwt_hs256_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dev-jwt.key"))
    }

    /// Reads the HS256 secret (hex in a file).
    pub fn read_hs256_secret(&self) -> Result<Vec<u8>, String> {
        let path = self.hs256_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        hex::decode(text.trim()).map_err(|e| format!("{}: not hex: {e}", path.display()))
    }

    /// The dev secret, created (owner-only) on first use. Returns it and whether it was new.
    pub fn ensure_dev_secret(&self) -> Result<(Vec<u8>, bool), String> {
        let path = self.hs256_path();
        if path.exists() {
            return self.read_hs256_secret().map(|s| (s, false));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let mut secret = [0u8; DEV_SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| format!("random: {e}"))?;
        write_private(&path, &hex::encode(secret))?;
        Ok((secret.to_vec(), true))
    }
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The development HS256 key `serve` checks tokens with when no public keys are configured:
/// anyone who can read it can mint any token.
#[derive(Debug, Clone)]
pub struct DevKey {
    pub path: PathBuf,
    /// Made by this start (it did not exist).
    pub created: bool,
}

/// Builds the authenticator `serve` uses. Without public keys, the HS256 dev key is used (and
/// created), and returned; with them, HS256 is accepted only if a key file is named explicitly.
pub fn authenticator(args: &ServeArgs) -> Result<(Authenticator, Option<DevKey>), String> {
    let mut keys = vec![];
    for spec in &args.jwt_public_keys {
        let mut parts = spec.splitn(3, ':');
        let (Some(kid), Some(alg), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "--jwt-public-key {spec:?}: expected KID:ALG:PEM_PATH"
            ));
        };
        let algorithm = match alg {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(format!(
                    "--jwt-public-key {kid}: algorithm {other} is not allowed"
                ));
            }
        };
        let pem = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        keys.push(VerifyKey::public_pem(kid.to_owned(), algorithm, &pem)?);
    }
    let mut dev_key = None;
    if args.jwt_public_keys.is_empty() {
        let (secret, created) = args.keys.ensure_dev_secret()?;
        dev_key = Some(DevKey {
            path: args.keys.hs256_path(),
            created,
        });
        keys.push(VerifyKey::hs256(None, &secret));
    } else if args.keys.jwt_hs256_key_file.is_some() {
        keys.push(VerifyKey::hs256(None, &args.keys.read_hs256_secret()?));
    }
    let auth = Authenticator::new(
        keys,
        args.keys.jwt_issuer.clone(),
        args.keys.jwt_audience.clone(),
        args.jwt_leeway_s,
    )?;
    Ok((auth, dev_key))
}
