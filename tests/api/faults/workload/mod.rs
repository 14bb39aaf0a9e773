//! The clients of a fault run: workers that create and confirm mandates, credit wallets,
//! collect, refund, pause and resume over real gRPC, spread over the replicas. A request that
//! meets a dead replica (a connection error, UNAVAILABLE) or a lost race (ABORTED) is sent again,
//! with the same request id and body, to another replica until it gets a definite answer; a
//! share of every write is also sent twice on purpose, to two replicas, one after the other or
//! at once. Everything a client was told is recorded for the checks, and every status counted.

mod ops;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use withholding::grpc::auth::{Claims, mint_hs256};
use withholding::pb::deduction_service_client::DeductionServiceClient;
use withholding::pb::mandate_service_client::MandateServiceClient;
use withholding::pb::wallet_service_client::WalletServiceClient;
use withholding::pb::{self, bank as bank_pb};

use super::Rng;
use super::cluster::{BankControl, REPLICAS, bank_control};
use crate::harness::{Bearer, consent};

pub const MERCHANTS: [&str; 2] = ["m-1", "m-2"];
pub const PAYERS: usize = 6;
/// A client's deadline on one request; the replicas' own bound is shorter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request is retried for before it counts as never answered.
const RETRY_BUDGET: Duration = Duration::from_secs(60);
/// Tokens outlive the longest run (1,000 cycles take well under an hour).
const TOKEN_TTL_S: i64 = 24 * 3600;
/// Card balances: plenty, except on the last payer's card, which soon refuses.
const CARD_BALANCE_MINOR: i64 = 100_000_000;
const POOR_CARD_BALANCE_MINOR: i64 = 5_000;
/// A programmed bank hang: longer than the replicas' bank deadline, so the outcome is unknown.
const BANK_HANG_MS: u32 = 900;

type Intercepted = InterceptedService<Channel, Bearer>;

pub fn payer(index: usize) -> String {
    format!("p-{index:02}")
}

fn card_token(payer: &str) -> String {
    format!("card-{payer}")
}

pub fn cny(minor: i64) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: "CNY".into(),
        amount: format!("{}.{:02}", minor / 100, minor % 100),
    })
}

/// A definite answer: the response, or a status that says what to fix.
#[derive(Debug, Clone)]
pub enum Answer<T> {
    Ok(T),
    Refused(Code, String),
}

impl<T> Answer<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Self::Ok(value) => Some(value),
            Self::Refused(..) => None,
        }
    }
}

/// A mandate the workers collect on, with the limits it was created with.
#[derive(Debug, Clone)]
pub struct MandatePlan {
    pub mandate_id: String,
    pub merchant: &'static str,
    pub payer: String,
    pub period_amount_minor: i64,
    pub period_count: u32,
    pub total_amount_minor: Option<i64>,
    pub total_count: Option<u32>,
}

#[derive(Debug)]
pub struct MandateSent {
    pub merchant: &'static str,
    pub contract_id: String,
    pub answers: Vec<Answer<pb::CreateMandateResponse>>,
    pub gave_up: bool,
}

#[derive(Debug)]
pub struct DeductionSent {
    pub merchant: &'static str,
    pub request_id: String,
    pub mandate_id: String,
    pub amount_minor: i64,
    pub answers: Vec<Answer<pb::CreateDeductionResponse>>,
    pub gave_up: bool,
}

#[derive(Debug)]
pub struct RefundSent {
    pub merchant: &'static str,
    pub request_id: String,
    pub deduction_id: String,
    pub amount_minor: i64,
    pub answers: Vec<Answer<pb::RefundDeductionResponse>>,
    pub gave_up: bool,
}

#[derive(Debug)]
pub struct CreditSent {
    pub request_id: String,
    pub payer: String,
    pub amount_minor: i64,
    pub answers: Vec<Answer<pb::CreditWalletResponse>>,
    pub gave_up: bool,
}

/// A payer's lifecycle change (confirm, pause, resume) under a request id.
#[derive(Debug)]
pub struct ChangeSent {
    pub request_id: String,
    pub mandate_id: String,
    /// The audit action a success records.
    pub action: &'static str,
    pub answers: Vec<Answer<pb::Mandate>>,
    pub gave_up: bool,
}

/// Everything the clients sent and were told.
#[derive(Debug, Default)]
pub struct Records {
    pub mandates: Vec<MandateSent>,
    pub deductions: Vec<DeductionSent>,
    pub refunds: Vec<RefundSent>,
    pub credits: Vec<CreditSent>,
    pub changes: Vec<ChangeSent>,
    /// Reads that were not answered OK: (rpc, status).
    pub failed_reads: Vec<(&'static str, String)>,
}

/// A status made up by the client for a connection that failed (the replica died, or was not
/// up yet), as opposed to one a server sent: tonic keeps the transport error as its source.
fn from_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Whether a status is an answer to act on, rather than "try again" (possibly elsewhere).
/// INTERNAL and UNKNOWN are retried too — they are counted as defects, and the retry still
/// yields the request's definite outcome for the other checks.
fn definite(status: &Status) -> bool {
    !from_transport(status)
        && !matches!(
            status.code(),
            Code::Unavailable
                | Code::Aborted
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::DataLoss
        )
}

/// The label a status is counted under: `OK`, the server's code, or `transport <code>`.
pub fn label(result: &Result<(), &Status>) -> String {
    match result {
        Ok(()) => "OK".into(),
        Err(status) if from_transport(status) => format!("transport {:?}", status.code()),
        Err(status) => format!("{:?}", status.code()),
    }
}

enum Delivered<T> {
    /// The answer and the replica that gave it.
    Answered(Answer<T>, usize),
    GaveUp,
}

/// How a write is delivered: once, or sent again under the same request id to another replica
/// after its answer, or sent to two replicas at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delivery {
    Once,
    Resend,
    Concurrent,
}

pub struct World {
    channels: Vec<Channel>,
    bank: BankControl,
    merchant_tokens: BTreeMap<&'static str, String>,
    payer_tokens: Vec<String>,
    operator_token: String,
    ids: AtomicU64,
    stop: AtomicBool,
    pub mandates: Mutex<Vec<MandatePlan>>,
    /// Deductions a client was told SUCCEEDED: (merchant, deduction id, amount), for refunds.
    paid: Mutex<Vec<(&'static str, String, i64)>>,
    pub records: Mutex<Records>,
    /// Answers by (rpc, label), every attempt counted.
    pub tally: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// INTERNAL and UNKNOWN answers a server sent, counted by rpc, code and message.
    pub server_errors: Mutex<BTreeMap<String, u64>>,
    pub deliveries: Mutex<BTreeMap<Delivery, u64>>,
}

fn token(secret: &[u8], role: &str, sub: &str, merchant: Option<&str>) -> String {
    let now = jiff::Timestamp::now().as_second();
    mint_hs256(
        secret,
        &Claims {
            sub: sub.into(),
            role: role.into(),
            merchant_id: merchant.map(str::to_owned),
            scope: None,
            iss: "withholding-dev".into(),
            aud: "withholding".into(),
            exp: now + TOKEN_TTL_S,
            nbf: Some(now),
            iat: Some(now),
        },
    )
    .expect("mint a token")
}

impl World {
    pub fn new(ports: &[u16], bank_url: &str, secret: &[u8]) -> Self {
        let channels = ports
            .iter()
            .map(|port| {
                // Lazy: a channel reconnects by itself once its replica is back.
                Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy()
            })
            .collect();
        Self {
            channels,
            bank: bank_control(bank_url),
            merchant_tokens: MERCHANTS
                .iter()
                .map(|m| (*m, token(secret, "merchant", "billing", Some(m))))
                .collect(),
            payer_tokens: (0..PAYERS)
                .map(|i| token(secret, "payer", &payer(i), None))
                .collect(),
            operator_token: token(secret, "operator", "ops-1", None),
            ids: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            mandates: Mutex::new(vec![]),
            paid: Mutex::new(vec![]),
            records: Mutex::new(Records::default()),
            tally: Mutex::new(BTreeMap::new()),
            server_errors: Mutex::new(BTreeMap::new()),
            deliveries: Mutex::new(BTreeMap::new()),
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn mandates_client(&self, replica: usize, token: &str) -> MandateServiceClient<Intercepted> {
        MandateServiceClient::with_interceptor(
            self.channels[replica].clone(),
            Bearer(Some(token.to_owned())),
        )
    }

    fn deductions_client(
        &self,
        replica: usize,
        token: &str,
    ) -> DeductionServiceClient<Intercepted> {
        DeductionServiceClient::with_interceptor(
            self.channels[replica].clone(),
            Bearer(Some(token.to_owned())),
        )
    }

    fn wallet_client(&self, replica: usize, token: &str) -> WalletServiceClient<Intercepted> {
        WalletServiceClient::with_interceptor(
            self.channels[replica].clone(),
            Bearer(Some(token.to_owned())),
        )
    }

    fn count(&self, rpc: &'static str, label: String) {
        *self.tally.lock().unwrap().entry((rpc, label)).or_default() += 1;
    }

    /// Sends one request to `first`, and again to another replica after every answer that is
    /// not definite, until a definite one or the retry budget is spent.
    async fn call<T, F, Fut>(&self, rpc: &'static str, first: usize, send: &F) -> Delivered<T>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut replica = first;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = send(replica).await;
            self.count(rpc, label(&result.as_ref().map(|_| ())));
            match result {
                Ok(response) => {
                    return Delivered::Answered(Answer::Ok(response.into_inner()), replica);
                }
                Err(status) if definite(&status) => {
                    let answer = Answer::Refused(status.code(), status.message().to_owned());
                    return Delivered::Answered(answer, replica);
                }
                Err(status) => {
                    if !from_transport(&status)
                        && matches!(status.code(), Code::Internal | Code::Unknown)
                    {
                        let key = format!("{:?} to {rpc} ({:?})", status.code(), status.message());
                        *self.server_errors.lock().unwrap().entry(key).or_default() += 1;
                    }
                    if started.elapsed() >= RETRY_BUDGET {
                        return Delivered::GaveUp;
                    }
                    // Another replica: this one may be down.
                    replica = (replica + 1 + usize::from(attempt.is_multiple_of(2))) % REPLICAS;
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 20))
                        .await;
                }
            }
        }
    }

    /// Delivers one write as `rng` chooses (see [`Delivery`]); every definite answer, and
    /// whether some send was never answered.
    async fn deliver<T, F, Fut>(
        &self,
        rpc: &'static str,
        rng: &mut Rng,
        send: F,
    ) -> (Vec<Answer<T>>, bool)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first = rng.index(REPLICAS);
        let other = (first + 1 + rng.index(REPLICAS - 1)) % REPLICAS;
        let delivery = match rng.below(100) {
            0..60 => Delivery::Once,
            60..85 => Delivery::Resend,
            _ => Delivery::Concurrent,
        };
        *self.deliveries.lock().unwrap().entry(delivery).or_default() += 1;
        let delivered = match delivery {
            Delivery::Once => vec![self.call(rpc, first, &send).await],
            Delivery::Resend => {
                let one = self.call(rpc, first, &send).await;
                // To a replica other than the one that answered.
                let again = match &one {
                    Delivered::Answered(_, replica) => {
                        (replica + 1 + rng.index(REPLICAS - 1)) % REPLICAS
                    }
                    Delivered::GaveUp => other,
                };
                vec![one, self.call(rpc, again, &send).await]
            }
            Delivery::Concurrent => {
                let (one, two) =
                    tokio::join!(self.call(rpc, first, &send), self.call(rpc, other, &send));
                vec![one, two]
            }
        };
        let mut answers = vec![];
        let mut gave_up = false;
        for d in delivered {
            match d {
                Delivered::Answered(answer, _) => answers.push(answer),
                Delivered::GaveUp => gave_up = true,
            }
        }
        (answers, gave_up)
    }

    /// A read: once, to a random replica (retried elsewhere like any request).
    async fn read<T, F, Fut>(&self, rpc: &'static str, rng: &mut Rng, send: F)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let failed = match self.call(rpc, rng.index(REPLICAS), &send).await {
            Delivered::Answered(Answer::Ok(_), _) => None,
            Delivered::Answered(Answer::Refused(code, message), _) => {
                Some(format!("{code:?} {message:?}"))
            }
            Delivered::GaveUp => Some("no answer".into()),
        };
        if let Some(failed) = failed {
            self.records
                .lock()
                .unwrap()
                .failed_reads
                .push((rpc, failed));
        }
    }
}
