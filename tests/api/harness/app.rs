//! `TestApp`: the real server on 127.0.0.1:0 over a fresh database, with its clock, store and
//! services at hand, and a client of every service for every role.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use withholding::app::{AppConfig, Application};
use withholding::clock::ManualClock;
use withholding::grpc::auth::{Authenticator, VerifyKey};
use withholding::service::{MandateService, Settings};
use withholding::storage::{Store, TableCounts};

use super::pb::mandate_service_client::MandateServiceClient;
use super::{AUDIENCE, Backend, Bearer, ISSUER, TestDatabase, claims, default_keys, pb, sign};

/// Where every test's clock starts.
pub const START: &str = "2026-03-01T02:00:00Z";
/// The seed of the audit checkpoint key every test server signs with.
pub const AUDIT_KEY_SEED: [u8; 32] = [42; 32];

pub type Client = MandateServiceClient<InterceptedService<Channel, Bearer>>;
pub type DeductionClient =
    pb::deduction_service_client::DeductionServiceClient<InterceptedService<Channel, Bearer>>;
pub type WalletClient =
    pb::wallet_service_client::WalletServiceClient<InterceptedService<Channel, Bearer>>;
pub type AuditClient =
    pb::audit_service_client::AuditServiceClient<InterceptedService<Channel, Bearer>>;
pub type PolicyClient = pb::merchant_policy_service_client::MerchantPolicyServiceClient<
    InterceptedService<Channel, Bearer>,
>;
pub type EventClient =
    pb::event_service_client::EventServiceClient<InterceptedService<Channel, Bearer>>;

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    pub service: MandateService,
    pub clock: Arc<ManualClock>,
    pub db: TestDatabase,
    pub database: withholding::storage::Database,
    pub deductions: withholding::service::DeductionService,
    pub events: withholding::service::EventService,
    /// The compliance console, served beside the API on a port of its own.
    pub console_addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, default_keys()).await
}

pub async fn spawn_app_with(backend: Backend, keys: Vec<VerifyKey>) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_on(backend, db, keys).await
}

pub async fn spawn_on(backend: Backend, db: TestDatabase, keys: Vec<VerifyKey>) -> TestApp {
    spawn_with_bank(backend, db, keys, None).await
}

/// A server whose card sources go to the bank gateway at `bank` (`http://…`) with `deadline`
/// per call; the resolver is driven by hand (`app.deductions.resolve_due`).
pub async fn spawn_with_bank(
    backend: Backend,
    db: TestDatabase,
    keys: Vec<VerifyKey>,
    bank: Option<(String, Duration)>,
) -> TestApp {
    spawn_configured(
        backend,
        db,
        keys,
        bank,
        withholding::service::DeductionSettings::default(),
    )
    .await
}

/// As `spawn_with_bank`, with explicit deduction settings (resolver backoff, horizon, …).
pub async fn spawn_configured(
    backend: Backend,
    db: TestDatabase,
    keys: Vec<VerifyKey>,
    bank: Option<(String, Duration)>,
    deduction_settings: withholding::service::DeductionSettings,
) -> TestApp {
    spawn_full(
        backend,
        db,
        keys,
        bank,
        deduction_settings,
        test_event_settings(),
    )
    .await
}

/// Event delivery in tests: polled often, so that a test waits little for an event.
pub fn test_event_settings() -> withholding::service::EventSettings {
    withholding::service::EventSettings {
        poll: Duration::from_millis(20),
        ..withholding::service::EventSettings::default()
    }
}

/// As `spawn_configured`, with explicit event settings (buffer, stall, retention, …).
pub async fn spawn_full(
    backend: Backend,
    db: TestDatabase,
    keys: Vec<VerifyKey>,
    bank: Option<(String, Duration)>,
    deduction_settings: withholding::service::DeductionSettings,
    events: withholding::service::EventSettings,
) -> TestApp {
    let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
    let app = Application::build(AppConfig {
        database_url: db.url.clone(),
        read_database_url: db.read_url.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        authenticator: Arc::new(
            Authenticator::new(keys, ISSUER.into(), AUDIENCE.into(), 30).unwrap(),
        ),
        settings: Settings::default(),
        clock: clock.clone(),
        expiry_sweep_interval: None,
        request_timeout: Duration::from_secs(30),
        bank_gateway: bank,
        deduction_settings,
        resolver_interval: None,
        metrics_listen: None,
        events,
        audit_key: Arc::new(withholding::service::AuditKey::from_seed(AUDIT_KEY_SEED)),
        console: Some((
            "127.0.0.1:0".parse().unwrap(),
            withholding::console::ConsoleSettings {
                session_lifetime: jiff::SignedDuration::from_mins(15),
                time_zone: withholding::domain::terms::TimeZoneName::parse("tz", "Asia/Shanghai")
                    .unwrap(),
            },
        )),
    })
    .await
    .expect("build app");
    let addr = app.local_addr();
    let console_addr = app.console_addr().expect("the console is served");
    let store = app.store();
    let service = app.mandates();
    let deductions = app.deductions();
    let database = app.database();
    let events = app.events();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("server");
    });
    TestApp {
        addr,
        backend,
        store,
        service,
        clock,
        db,
        database,
        deductions,
        events,
        console_addr,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Clients and tokens.
impl TestApp {
    async fn channel(&self) -> Channel {
        channel_to(self.addr).await
    }

    pub async fn client_with(&self, token: Option<String>) -> Client {
        MandateServiceClient::with_interceptor(self.channel().await, Bearer(token))
    }

    /// Tokens carry the real time: jsonwebtoken checks exp and nbf against the system clock.
    fn token(&self, role: &str, sub: &str, merchant_id: Option<&str>) -> String {
        sign(claims(Timestamp::now(), role, sub, merchant_id), None)
    }

    pub fn merchant_token(&self, merchant_id: &str) -> String {
        self.token("merchant", "billing", Some(merchant_id))
    }

    pub fn payer_token(&self, payer_id: &str) -> String {
        self.token("payer", payer_id, None)
    }

    pub fn operator_token(&self) -> String {
        self.token("operator", "ops-1", None)
    }

    pub fn auditor_token(&self, merchant_id: Option<&str>) -> String {
        self.token("auditor", "compliance", merchant_id)
    }

    pub async fn merchant(&self, merchant_id: &str) -> Client {
        self.client_with(Some(self.merchant_token(merchant_id)))
            .await
    }

    pub async fn payer(&self, payer_id: &str) -> Client {
        self.client_with(Some(self.payer_token(payer_id))).await
    }

    pub async fn auditor(&self, merchant_id: Option<&str>) -> Client {
        self.client_with(Some(self.auditor_token(merchant_id)))
            .await
    }

    pub async fn operator(&self) -> Client {
        self.client_with(Some(self.operator_token())).await
    }

    pub async fn deductions_as(&self, token: String) -> DeductionClient {
        pb::deduction_service_client::DeductionServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    pub async fn wallet_as(&self, token: String) -> WalletClient {
        pb::wallet_service_client::WalletServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    pub async fn events_as(&self, token: String) -> EventClient {
        pb::event_service_client::EventServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    pub async fn audit_as(&self, token: String) -> AuditClient {
        pb::audit_service_client::AuditServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    pub async fn policies_as(&self, token: String) -> PolicyClient {
        pb::merchant_policy_service_client::MerchantPolicyServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }
}

/// The database, the clock and the audit trail, read around the service.
impl TestApp {
    pub fn db(&self) -> &withholding::storage::Database {
        &self.database
    }

    pub fn clock_now(&self) -> Timestamp {
        use withholding::clock::Clock;
        self.clock.now()
    }

    pub async fn counts(&self) -> TableCounts {
        self.store.table_counts().await.unwrap()
    }

    /// Moves the clock past the access-refusal window: every caller's next refusal opens a new
    /// window and is recorded at once (refusals inside one window are coalesced).
    pub fn next_refusal_window(&self) {
        self.clock.advance(withholding::service::REFUSAL_WINDOW);
    }

    /// The events of one audit chain, oldest first.
    pub async fn chain_events(&self, chain: &str) -> Vec<withholding::domain::audit::AuditDraft> {
        self.store
            .audit_chain(chain)
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.draft)
            .collect()
    }

    /// Every audit chain verifies and ends at its head.
    pub async fn verify_audit(&self) {
        let outcome = withholding::service::verify_store(self.database.audit.as_ref(), None)
            .await
            .unwrap();
        if let Some(broken) = outcome.broken {
            panic!("audit chain broken: {broken}");
        }
    }
}

/// The chain a caller's access refusals are recorded on: `caller:` and its idempotency scope
/// (`merchant:<merchant id>` for merchants, `<role>:<sub>` for everyone else).
pub fn caller_chain(scope: &str) -> String {
    format!("caller:{scope}")
}

/// A channel of its own to the server at `addr`.
async fn channel_to(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// Clients on a connection of their own (for calls made from spawned tasks).
pub async fn deductions_at(addr: std::net::SocketAddr, token: String) -> DeductionClient {
    pb::deduction_service_client::DeductionServiceClient::with_interceptor(
        channel_to(addr).await,
        Bearer(Some(token)),
    )
}

pub async fn wallet_at(addr: std::net::SocketAddr, token: String) -> WalletClient {
    pb::wallet_service_client::WalletServiceClient::with_interceptor(
        channel_to(addr).await,
        Bearer(Some(token)),
    )
}

pub async fn mandates_at(addr: std::net::SocketAddr, token: String) -> Client {
    MandateServiceClient::with_interceptor(channel_to(addr).await, Bearer(Some(token)))
}
