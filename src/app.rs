//! Assembles the server: storage, services, auth, health and reflection, bounds, and the
//! background expiry sweep. Tests build it on port 0 and read back the bound address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::clock::Clock;
use crate::console::{self, Console, ConsoleSettings};
use crate::funding::bank::BankClient;
use crate::grpc::auth::{AuthInterceptor, Authenticator};
use crate::grpc::transport::{HeaderBoundLayer, decode_error_is_invalid_argument};
use crate::grpc::{
    AuditApi, DeductionApi, EventApi, MandateApi, PolicyApi, SettlementApi, WalletApi,
};
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::deduction_service_server::DeductionServiceServer;
use crate::pb::event_service_server::EventServiceServer;
use crate::pb::mandate_service_server::MandateServiceServer;
use crate::pb::merchant_policy_service_server::MerchantPolicyServiceServer;
use crate::pb::settlement_service_server::SettlementServiceServer;
use crate::pb::wallet_service_server::WalletServiceServer;
use crate::service::{
    AuditKey, AuditService, DeductionService, DeductionSettings, MandateService, PolicyService,
    REFUSAL_WINDOW, RefusalLog, Settings, SettlementService,
};
use crate::service::{EventService, EventSettings};
use crate::storage::{self, Database, Store};

/// Largest request message a client may send (DESIGN §7 bounds every field well below it).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response message (a page of 500 mandates fits).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Concurrent streams (calls) one connection may open, advertised in HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; a client's further calls wait for one to finish.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Concurrent requests one connection may have in flight: as many as it may open streams, so a
/// call never waits for a slot while holding its headers.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = MAX_STREAMS_PER_CONNECTION as usize;
/// Largest header list (metadata) a call may send, counted as HTTP/2 counts it (name + value
/// + 32 bytes per field). A call over it alone is refused with RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;
/// The HTTP/2 layer's own limit on a header list (`SETTINGS_MAX_HEADER_LIST_SIZE`), far above
/// [`MAX_REQUEST_HEADER_BYTES`] so that oversized calls reach the per-call check: h2 itself can
/// refuse a call only with an HTTP 431 (clients see UNKNOWN), which it does for a list over
/// this, and it closes the whole connection (GOAWAY `ENHANCE_YOUR_CALM`, failing every call on
/// it) for a header block sent in more than 1.25 × this / frame size + 1 frames (161 frames,
/// 2.5 MiB, in the default 16 KiB frames) or decoding to over 4 × this. h2 decodes one header
/// block at a time per connection, and a refused call's headers are dropped at once (a call
/// never waits for a concurrency slot, see [`MAX_IN_FLIGHT_PER_CONNECTION`]), so this is also
/// about the memory one connection can pin with headers.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 2 * 1024 * 1024;
/// Largest `ImportStatement` request: a bank statement of 50,000 lines fits.
pub const MAX_STATEMENT_BYTES: usize = 4 * 1024 * 1024;
/// How long in-flight requests may take to finish after shutdown is asked for.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Charges the resolver asks the bank about per pass.
const RESOLVER_BATCH: u32 = 200;
/// Shortest wait between two resolver passes.
const RESOLVER_MIN_WAIT: Duration = Duration::from_millis(100);
/// Mandates the expiry sweep handles per pass.
const EXPIRY_BATCH: u32 = 500;

/// Everything the server needs, already loaded.
pub struct AppConfig {
    pub database_url: String,
    /// A hot standby of the database for compliance reads (PostgreSQL only).
    pub read_database_url: Option<String>,
    pub listen: SocketAddr,
    pub authenticator: Arc<Authenticator>,
    pub settings: Settings,
    pub clock: Arc<dyn Clock>,
    /// How often mandates whose time ran out are expired; `None` disables the sweep (tests
    /// drive it by hand).
    pub expiry_sweep_interval: Option<Duration>,
    /// Upper bound on any request, whatever deadline the client sends.
    pub request_timeout: Duration,
    /// The card gateway (`http://host:port`) and the deadline of each call to it; without it,
    /// card sources refuse with `CARD_NOT_CONNECTED`.
    pub bank_gateway: Option<(String, Duration)>,
    pub deduction_settings: DeductionSettings,
    /// How often charges with no definite outcome are looked up at the bank; `None` disables
    /// the resolver (tests drive it by hand).
    pub resolver_interval: Option<Duration>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Event delivery (`WatchEvents`): polling, retention and the bounds of each stream.
    pub events: EventSettings,
    /// The Ed25519 key audit checkpoints are signed with.
    pub audit_key: Arc<AuditKey>,
    /// Where to serve the compliance console, and how; `None` serves none.
    pub console: Option<(SocketAddr, ConsoleSettings)>,
}

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    console_listener: Option<TcpListener>,
    local_addr: SocketAddr,
    db: Database,
    mandates: MandateService,
    deductions: DeductionService,
    policies: PolicyService,
    events: EventService,
    settlement: SettlementService,
    audit: AuditService,
    config: AppConfig,
}

impl Application {
    /// Connects and migrates the database, and binds the listen address (port 0 picks one).
    pub async fn build(
        config: AppConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        // Checked first: a gateway URL that cannot work must stop the start before anything
        // else is done.
        let bank = config
            .bank_gateway
            .as_ref()
            .map(|(url, deadline)| BankClient::new(url, *deadline))
            .transpose()?;
        storage::observe_group_commits(crate::metrics::record_group_commit);
        let db =
            storage::open_with_replica(&config.database_url, config.read_database_url.as_deref())
                .await?;
        let mandates = MandateService::new(
            db.mandates.clone(),
            config.clock.clone(),
            config.settings.clone(),
        );
        let deduction_settings = DeductionSettings {
            dormancy: config.settings.dormancy,
            ..config.deduction_settings.clone()
        };
        let deductions = DeductionService::new(
            db.clone(),
            mandates.clone(),
            config.clock.clone(),
            deduction_settings,
            bank,
        );
        let policies = PolicyService::new(db.clone(), mandates.clone(), config.clock.clone());
        let events = EventService::new(
            db.events.clone(),
            config.clock.clone(),
            config.events.clone(),
        );
        let settlement = SettlementService::new(
            db.clone(),
            mandates.clone(),
            deductions.clone(),
            config.clock.clone(),
        );
        let audit = AuditService::new(
            db.mandates.clone(),
            db.audit.clone(),
            mandates.clone(),
            config.clock.clone(),
            config.audit_key.clone(),
        );
        let listener = bind(config.listen, "gRPC listen").await?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "metrics").await?),
            None => None,
        };
        let console_listener = match &config.console {
            Some((addr, _)) => Some(bind(*addr, "console").await?),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            console_listener,
            local_addr,
            db,
            mandates,
            deductions,
            policies,
            events,
            settlement,
            audit,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.db.mandates.clone()
    }

    pub fn database(&self) -> Database {
        self.db.clone()
    }

    pub fn deductions(&self) -> DeductionService {
        self.deductions.clone()
    }

    pub fn mandates(&self) -> MandateService {
        self.mandates.clone()
    }

    pub fn events(&self) -> EventService {
        self.events.clone()
    }

    pub fn settlement(&self) -> SettlementService {
        self.settlement.clone()
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where the console is served, if it is.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Self {
            listener,
            metrics_listener,
            console_listener,
            db,
            mandates,
            deductions,
            policies,
            events,
            settlement,
            audit,
            config,
            ..
        } = self;
        let resolver_service = deductions.clone();
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<MandateServiceServer<MandateApi>>()
            .await;
        let (reflection_v1, reflection_v1alpha) =
            crate::grpc::reflection_services(crate::pb::FILE_DESCRIPTOR_SET, MAX_REQUEST_BYTES)?;
        let mandate_service = MandateServiceServer::new(MandateApi::new(mandates.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let auth = AuthInterceptor(config.authenticator.clone());
        let mandate_service = InterceptedService::new(mandate_service, auth.clone());
        let deduction_service =
            DeductionServiceServer::new(DeductionApi::new(deductions.clone(), mandates.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let deduction_service = InterceptedService::new(deduction_service, auth.clone());
        let wallet_service =
            WalletServiceServer::new(WalletApi::new(deductions.clone(), mandates.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let wallet_service = InterceptedService::new(wallet_service, auth.clone());
        let policy_service =
            MerchantPolicyServiceServer::new(PolicyApi::new(policies, mandates.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let policy_service = InterceptedService::new(policy_service, auth.clone());
        let event_service =
            EventServiceServer::new(EventApi::new(events.clone(), mandates.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let event_service = InterceptedService::new(event_service, auth.clone());
        let event_pump = tokio::spawn(events.clone().pump());
        let event_sweep = tokio::spawn(events.sweep());
        // Statements are larger than any other request; every other message keeps its bound.
        let settlement_service =
            SettlementServiceServer::new(SettlementApi::new(settlement.clone(), mandates.clone()))
                .max_decoding_message_size(MAX_STATEMENT_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let settlement_service = InterceptedService::new(settlement_service, auth.clone());
        let console =
            console_listener
                .zip(config.console.clone())
                .map(|(listener, (_, settings))| {
                    let console = Console::new(
                        config.authenticator.clone(),
                        console::Services {
                            mandates: mandates.clone(),
                            deductions: deductions.clone(),
                            audit: audit.clone(),
                            settlement: settlement.clone(),
                        },
                        config.clock.clone(),
                        settings,
                    );
                    tokio::spawn(async move {
                        if let Err(e) =
                            console::serve(listener, console, std::future::pending()).await
                        {
                            tracing::error!(error = %e, "the console stopped");
                        }
                    })
                });
        let audit_service = AuditServiceServer::new(AuditApi::new(audit, mandates.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let audit_service = InterceptedService::new(audit_service, auth);
        let refusals = mandates.refusals();
        let refusal_flush = tokio::spawn(flush_refusals(refusals.clone()));

        let metrics =
            metrics_listener.map(|listener| tokio::spawn(crate::metrics::serve(listener, db)));
        let sweep = config
            .expiry_sweep_interval
            .map(|every| tokio::spawn(expiry_sweep(mandates, every)));
        let resolver = config
            .resolver_interval
            .map(|every| tokio::spawn(resolve_charges(resolver_service, every)));

        // Once shutdown is asked for, in-flight requests get DRAIN_GRACE to finish; clients that
        // keep idle connections open cannot hold the process up beyond it.
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let drain_deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_GRACE).await;
                tracing::warn!("drain grace period over; closing remaining connections");
            } else {
                std::future::pending::<()>().await;
            }
        };

        tracing::info!(addr = %listener.local_addr()?, "serving");
        let server = Server::builder()
            .timeout(config.request_timeout)
            .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Metrics outermost, so they count the codes callers receive.
            .layer(crate::metrics::RpcMetricsLayer)
            .layer(tower::util::MapResponseLayer::new(
                too_large_is_resource_exhausted,
            ))
            .layer(tower::util::MapResponseLayer::new(
                decode_error_is_invalid_argument,
            ))
            .layer(HeaderBoundLayer::new(MAX_REQUEST_HEADER_BYTES))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(mandate_service)
            .add_service(deduction_service)
            .add_service(wallet_service)
            .add_service(policy_service)
            .add_service(event_service)
            .add_service(settlement_service)
            .add_service(audit_service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener)
                    // Set here, not on the builder: the builder's TCP options are ignored for
                    // an incoming stream, and without nodelay Nagle delays answers by ~40 ms.
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                shutdown,
            );
        let result = tokio::select! {
            result = server => result,
            () = drain_deadline => Ok(()),
        };
        for task in [sweep, resolver, metrics, console].into_iter().flatten() {
            task.abort();
        }
        refusal_flush.abort();
        event_pump.abort();
        event_sweep.abort();
        if let Err(e) = refusals.flush(true).await {
            tracing::warn!(error = %e, "could not record the last access refusals");
        }
        tracing::info!("stopped");
        Ok(result?)
    }
}

/// Binds `addr`; a failure names the address and what it is for ("address already in use"
/// alone does not say which of the server's addresses is taken).
async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the {what} address {addr}: {e}"),
        )
    })
}

/// tonic answers an oversized request with OUT_OF_RANGE; gRPC's convention (and what clients
/// retry on) is RESOURCE_EXHAUSTED, so that one answer is rewritten. It is recognised by the
/// decoder's own message, so an OUT_OF_RANGE raised by a handler is left alone.
fn too_large_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("request%20message%20larger%20than%2064%20KiB"),
        );
    }
    response
}

/// Follows up card charges with no definite outcome. At start-up it asks at once about every
/// charge a crash (or an earlier run) left open whose bank call cannot still be running, by
/// its own charge id; then it wakes when the next charge is due, and at least every `every`
/// (charges other replicas record are seen then).
async fn resolve_charges(deductions: DeductionService, every: Duration) {
    match deductions.resume_open_charges(RESOLVER_BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(charges = n, "resolver resumed charges left open"),
        Err(e) => tracing::warn!(error = %e, "resuming open charges failed; the resolver retries"),
    }
    loop {
        match deductions.resolve_due(RESOLVER_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(charges = n, "resolver asked the bank"),
            Err(e) => tracing::warn!(error = %e, "resolver failed; retrying"),
        }
        let wait = match deductions.next_charge_check().await {
            Ok(Some(due)) => Duration::try_from(due.duration_since(deductions.now()))
                .unwrap_or(Duration::ZERO)
                .min(every),
            Ok(None) | Err(_) => every,
        };
        // At least a moment between passes, so a charge the bank keeps not answering cannot
        // make the loop spin.
        tokio::time::sleep(wait.max(RESOLVER_MIN_WAIT)).await;
    }
}

/// Appends the summary of each caller's refusal window once it ends.
async fn flush_refusals(refusals: Arc<RefusalLog>) {
    let every = Duration::try_from(REFUSAL_WINDOW).unwrap_or(Duration::from_secs(60)) / 4;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = refusals.flush(false).await {
            tracing::warn!(error = %e, "recording access refusals failed; retrying next tick");
        }
    }
}

async fn expiry_sweep(mandates: MandateService, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match mandates.expire_due(EXPIRY_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expiry sweep"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; retrying next tick"),
        }
    }
}
