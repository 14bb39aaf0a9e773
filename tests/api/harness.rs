//! Spawns the real server (real gRPC, real database) on 127.0.0.1:0 for one test, on either
//! backend, with a manual clock and known token keys.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use withholding::app::{AppConfig, Application};
use withholding::clock::ManualClock;
use withholding::grpc::auth::{Authenticator, VerifyKey};
use withholding::pb;
use withholding::pb::mandate_service_client::MandateServiceClient;
use withholding::service::{MandateService, Settings};
use withholding::storage::{Store, TableCounts};

pub const ISSUER: &str = "test-issuer";
pub const AUDIENCE: &str = "test-audience";
pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret";
/// Where every test's clock starts.
pub const START: &str = "2026-03-01T02:00:00Z";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one async test body on both backends: `both_backends!(name);` turns `async fn
/// name(backend: Backend)` into `name::sqlite` and `name::postgres` tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::harness::Backend::Postgres).await
            }
        }
    )*};
}

/// A fresh, empty database for one test.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// The same database again, for a second server ("replica") on it; the first keeps it alive.
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            _dir: None,
        }
    }

    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = std::env::var("WITHHOLDING_TEST_PG_URL").expect(
                    "WITHHOLDING_TEST_PG_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
                );
                let name = format!("t_{}", uuid::Uuid::now_v7().simple());
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("connect to admin database");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create test database");
                pool.close().await;
                let base = admin.rsplit_once('/').expect("URL has a database").0;
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub backend: Backend,
    pub store: Arc<dyn Store>,
    pub service: MandateService,
    pub clock: Arc<ManualClock>,
    pub db: TestDatabase,
    pub database: withholding::storage::Database,
    pub deductions: withholding::service::DeductionService,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Public keys the test server trusts besides the HS256 secret, by kid.
fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

pub fn default_keys() -> Vec<VerifyKey> {
    vec![
        VerifyKey::hs256(None, SECRET),
        VerifyKey::public_pem("rsa-1".into(), Algorithm::RS256, &fixture("rsa-public.pem"))
            .unwrap(),
        VerifyKey::public_pem("ec-1".into(), Algorithm::ES256, &fixture("ec-public.pem")).unwrap(),
        VerifyKey::public_pem("ed-1".into(), Algorithm::EdDSA, &fixture("ed-public.pem")).unwrap(),
    ]
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
    let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
    let app = Application::build(AppConfig {
        database_url: db.url.clone(),
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
    })
    .await
    .expect("build app");
    let addr = app.local_addr();
    let store = app.store();
    let service = app.mandates();
    let deductions = app.deductions();
    let database = app.database();
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

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Client = MandateServiceClient<InterceptedService<Channel, Bearer>>;

/// Signs claims with the HS256 test secret (or, with a kid, one of the fixture keys).
pub fn sign(claims: serde_json::Value, kid: Option<&str>) -> String {
    let (header, key) = match kid {
        None => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(SECRET),
        ),
        Some("rsa-1") => (
            Header::new(Algorithm::RS256),
            EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
        ),
        Some("ec-1") => (
            Header::new(Algorithm::ES256),
            EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap(),
        ),
        Some("ed-1") => (
            Header::new(Algorithm::EdDSA),
            EncodingKey::from_ed_pem(&fixture("ed-private.pem")).unwrap(),
        ),
        Some(other) => panic!("no fixture key {other}"),
    };
    let mut header = header;
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Standard claims valid at `now` for an hour.
pub fn claims(
    now: Timestamp,
    role: &str,
    sub: &str,
    merchant_id: Option<&str>,
) -> serde_json::Value {
    let now = now.as_second();
    let mut claims = json!({
        "sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE,
        "exp": now + 3600, "nbf": now - 1, "iat": now,
    });
    if let Some(m) = merchant_id {
        claims["merchant_id"] = json!(m);
    }
    claims
}

impl TestApp {
    pub async fn client_with(&self, token: Option<String>) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        MandateServiceClient::with_interceptor(channel, Bearer(token))
    }

    /// Tokens carry the real time: jsonwebtoken checks exp and nbf against the system clock.
    fn token(&self, role: &str, sub: &str, merchant_id: Option<&str>) -> String {
        sign(claims(Timestamp::now(), role, sub, merchant_id), None)
    }

    pub async fn merchant(&self, merchant_id: &str) -> Client {
        self.client_with(Some(self.token("merchant", "billing", Some(merchant_id))))
            .await
    }

    pub async fn payer(&self, payer_id: &str) -> Client {
        self.client_with(Some(self.token("payer", payer_id, None)))
            .await
    }

    pub async fn auditor(&self, merchant_id: Option<&str>) -> Client {
        self.client_with(Some(self.token("auditor", "compliance", merchant_id)))
            .await
    }

    pub async fn operator(&self) -> Client {
        self.client_with(Some(self.token("operator", "ops-1", None)))
            .await
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

    pub async fn verify_audit(&self) {
        match self.service.verify_audit().await.unwrap() {
            Ok(_) => {}
            Err(broken) => panic!("audit chain broken: {broken}"),
        }
    }
}

/// The chain a caller's access refusals are recorded on: `caller:` and its idempotency scope
/// (`merchant:<merchant id>` for merchants, `<role>:<sub>` for everyone else).
pub fn caller_chain(scope: &str) -> String {
    format!("caller:{scope}")
}

// ---- request builders ----

pub fn money(amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: "CNY".into(),
        amount: amount.into(),
    })
}

/// Utility terms: up to 500.00 a debit, 1000.00 and 2 debits a month, for a year.
pub fn utility_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        display_account: "ELEC-0042".into(),
        purposes: vec![pb::Purpose::Utility as i32],
        currency_code: "CNY".into(),
        amount_type: pb::AmountType::Maximum as i32,
        per_debit_limit: money("500.00"),
        period: Some(pb::Period {
            unit: pb::PeriodUnit::Month as i32,
            count: 1,
        }),
        period_amount_limit: money("1000.00"),
        period_debit_limit: Some(2),
        total_amount_limit: None,
        total_debit_limit: None,
        valid_from: None,
        valid_until: Some(prost_types::Timestamp {
            seconds: "2027-03-01T00:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second(),
            nanos: 0,
        }),
        collection_window: None,
        pre_notification: None,
        timezone: String::new(),
        single_use: false,
    }
}

pub fn create_request(contract: &str, payer: &str) -> pb::CreateMandateRequest {
    pb::CreateMandateRequest {
        merchant_contract_id: contract.into(),
        payer_id: payer.into(),
        terms: Some(utility_terms()),
    }
}

pub fn consent() -> pb::ConsentEvidence {
    pb::ConsentEvidence {
        channel: pb::ConsentChannel::App as i32,
        method: pb::ConsentMethod::Biometric as i32,
        device_id: "iphone-7f3a".into(),
        user_agent: String::new(),
        ip_address: "203.0.113.7".into(),
        terms_version: "withholding-terms-2026.1".into(),
        terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        captured_at: None,
        mandate_version: 0,
    }
}

pub fn wallet_then_card() -> Vec<pb::FundingSource> {
    vec![
        pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
            cap_per_debit: money("200.00"),
        },
        pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::BankCard(
                pb::BankCardSource {
                    vault_token: "tok_9a8b7c".into(),
                    bank_name: "ICBC".into(),
                    last_four: "4242".into(),
                },
            )),
            cap_per_debit: None,
        },
    ]
}

pub fn confirm_request(mandate: &pb::Mandate) -> pb::ConfirmMandateRequest {
    pb::ConfirmMandateRequest {
        mandate_id: mandate.mandate_id.clone(),
        mandate_version: mandate.version,
        consent: Some(consent()),
        funding_sources: wallet_then_card(),
        request_id: String::new(),
    }
}

/// Creates a mandate as merchant `m-1` for payer `p-1` and returns it.
pub async fn create_mandate(app: &TestApp, contract: &str) -> pb::Mandate {
    app.merchant("m-1")
        .await
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// Creates and confirms a mandate for payer `p-1`.
pub async fn active_mandate(app: &TestApp, contract: &str) -> pb::Mandate {
    let created = create_mandate(app, contract).await;
    app.payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

pub fn status_of(mandate: &pb::Mandate) -> pb::MandateStatus {
    pb::MandateStatus::try_from(mandate.status).unwrap()
}

impl TestApp {
    pub fn db(&self) -> &withholding::storage::Database {
        &self.database
    }

    pub fn clock_now(&self) -> Timestamp {
        use withholding::clock::Clock;
        self.clock.now()
    }
}

// ---- deductions and wallet ----

pub type DeductionClient = withholding::pb::deduction_service_client::DeductionServiceClient<
    InterceptedService<Channel, Bearer>,
>;
pub type WalletClient = withholding::pb::wallet_service_client::WalletServiceClient<
    InterceptedService<Channel, Bearer>,
>;

impl TestApp {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
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

    pub async fn deductions_as(&self, token: String) -> DeductionClient {
        withholding::pb::deduction_service_client::DeductionServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    pub async fn wallet_as(&self, token: String) -> WalletClient {
        withholding::pb::wallet_service_client::WalletServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    /// Credits payer `payer` with `amount` CNY through the operator.
    pub async fn credit(&self, payer: &str, amount: &str) {
        self.wallet_as(self.operator_token())
            .await
            .credit_wallet(pb::CreditWalletRequest {
                request_id: format!("credit-{}", uuid::Uuid::now_v7().simple()),
                payer_id: payer.into(),
                amount: money(amount),
                reason: "top-up".into(),
            })
            .await
            .unwrap();
    }

    pub async fn balance(&self, payer: &str) -> String {
        self.wallet_as(self.operator_token())
            .await
            .get_wallet_balance(pb::GetWalletBalanceRequest {
                payer_id: payer.into(),
                currency_code: "CNY".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance
            .expect("a balance")
            .amount
    }
}

/// A deduction request for `amount` CNY of purpose UTILITY on `bill`.
pub fn collect(
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    bill: &str,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        request_id: request_id.into(),
        mandate_id: mandate_id.into(),
        amount: money(amount),
        purpose: pb::Purpose::Utility as i32,
        bill_reference: bill.into(),
        description: "electricity".into(),
        notice_id: String::new(),
        one_off_approval_id: String::new(),
    }
}

pub fn deduction_status(d: &pb::Deduction) -> pb::DeductionStatus {
    pb::DeductionStatus::try_from(d.status).unwrap()
}

// ---- bank cards ----

pub type BankControl =
    withholding::pb::bank::bank_simulator_service_client::BankSimulatorServiceClient<Channel>;

/// A bank simulator on 127.0.0.1:0, stopped when dropped.
pub struct TestBank {
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestBank {
    pub async fn start() -> Self {
        let sim = withholding_bank_sim::BankSim::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind bank-sim");
        let addr = sim.local_addr();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            sim.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("bank-sim");
        });
        Self {
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn control(&self) -> BankControl {
        BankControl::connect(self.url())
            .await
            .expect("connect bank-sim")
    }

    /// Gives `token` a balance (minor units) and no special behaviour.
    pub async fn card(&self, token: &str, balance_minor: i64) {
        self.program(withholding::pb::bank::SetCardRequest {
            card_token: token.into(),
            balance_minor,
            ..Default::default()
        })
        .await;
    }

    pub async fn program(&self, card: withholding::pb::bank::SetCardRequest) {
        self.control().await.set_card(card).await.expect("set card");
    }

    /// Every charge the bank recorded.
    pub async fn charges(&self) -> Vec<withholding::pb::bank::SimulatedCharge> {
        self.control()
            .await
            .list_charges(withholding::pb::bank::ListChargesRequest {})
            .await
            .expect("list charges")
            .into_inner()
            .charges
    }
}

impl Drop for TestBank {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A server on a fresh database whose cards go to `bank` with `deadline` per bank call.
pub async fn spawn_app_with_bank(backend: Backend, bank: &TestBank, deadline: Duration) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_with_bank(backend, db, default_keys(), Some((bank.url(), deadline))).await
}

// ---- the fixture layer: one call each for what most tests do ----

/// `terms` with room for many debits a month: up to 500.00 a debit, 50 debits and 10000.00 a
/// month, for a year.
pub fn roomy_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        period_amount_limit: money("10000.00"),
        period_debit_limit: Some(50),
        ..utility_terms()
    }
}

impl TestApp {
    /// A mandate of `merchant` for `payer` under `terms`, confirmed by the payer (wallet up to
    /// 200.00, then a card).
    pub async fn mandate_for(
        &self,
        merchant: &str,
        payer: &str,
        contract: &str,
        terms: pb::MandateTerms,
    ) -> pb::Mandate {
        let created = self
            .merchant(merchant)
            .await
            .create_mandate(pb::CreateMandateRequest {
                merchant_contract_id: contract.into(),
                payer_id: payer.into(),
                terms: Some(terms),
            })
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap();
        self.payer(payer)
            .await
            .confirm_mandate(confirm_request(&created))
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap()
    }

    /// Collects as `merchant`; the RPC must succeed (the deduction may be declined).
    pub async fn deduct(
        &self,
        merchant: &str,
        request: pb::CreateDeductionRequest,
    ) -> pb::Deduction {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .create_deduction(request)
            .await
            .unwrap()
            .into_inner()
            .deduction
            .unwrap()
    }

    /// Refunds `amount` CNY of a deduction as `merchant`.
    pub async fn refund(
        &self,
        merchant: &str,
        request_id: &str,
        deduction_id: &str,
        amount: &str,
    ) -> Result<pb::RefundDeductionResponse, tonic::Status> {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .refund_deduction(pb::RefundDeductionRequest {
                request_id: request_id.into(),
                deduction_id: deduction_id.into(),
                amount: money(amount),
                reason: "customer complaint".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// CheckDeduction of `amount` CNY of purpose UTILITY on `bill`, as `merchant`.
    pub async fn check(
        &self,
        merchant: &str,
        mandate_id: &str,
        amount: &str,
        bill: &str,
    ) -> pb::CheckDeductionResponse {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .check_deduction(pb::CheckDeductionRequest {
                mandate_id: mandate_id.into(),
                amount: money(amount),
                purpose: pb::Purpose::Utility as i32,
                bill_reference: bill.into(),
                notice_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// The reason codes of a deduction's violations, in order.
pub fn violation_codes(violations: &[pb::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.reason_code.as_str()).collect()
}

pub type PolicyClient =
    withholding::pb::merchant_policy_service_client::MerchantPolicyServiceClient<
        InterceptedService<Channel, Bearer>,
    >;

impl TestApp {
    pub async fn policies_as(&self, token: String) -> PolicyClient {
        withholding::pb::merchant_policy_service_client::MerchantPolicyServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token)),
        )
    }

    /// Sets `merchant`'s suspected-refund-recovery policy, as an operator.
    pub async fn set_recovery_policy(&self, merchant: &str, policy: pb::RecoveryPolicy) {
        self.policies_as(self.operator_token())
            .await
            .set_merchant_policy(pb::SetMerchantPolicyRequest {
                merchant_id: merchant.into(),
                suspected_refund_recovery: policy as i32,
                reason: "compliance review".into(),
            })
            .await
            .unwrap();
    }
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
