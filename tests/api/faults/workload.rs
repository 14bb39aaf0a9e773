//! The clients of a fault run: workers that create and confirm mandates, credit wallets,
//! collect, refund, pause and resume over real gRPC, spread over the replicas. A request that
//! meets a dead replica (a connection error, UNAVAILABLE) or a lost race (ABORTED) is sent again,
//! with the same request id and body, to another replica until it gets a definite answer; a
//! share of every write is also sent twice on purpose, to two replicas, one after the other or
//! at once. Everything a client was told is recorded for the checks, and every status counted.

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

    // ---- setup ----

    /// Cards at the bank, money in every wallet, and a mandate per payer and merchant.
    pub async fn setup(&self, rng: &mut Rng) {
        for i in 0..PAYERS {
            let balance = if i == PAYERS - 1 {
                POOR_CARD_BALANCE_MINOR
            } else {
                CARD_BALANCE_MINOR
            };
            self.program_card(i, balance, bank_pb::SetCardRequest::default())
                .await;
            self.credit(rng, Some(i), 30_000).await;
        }
        for i in 0..PAYERS {
            for merchant in MERCHANTS {
                self.new_mandate(rng, Some((merchant, i))).await;
            }
        }
    }

    async fn program_card(
        &self,
        payer_index: usize,
        balance_minor: i64,
        behaviour: bank_pb::SetCardRequest,
    ) {
        let mut bank = self.bank.clone();
        bank.set_card(bank_pb::SetCardRequest {
            card_token: card_token(&payer(payer_index)),
            balance_minor,
            ..behaviour
        })
        .await
        .expect("program a card at the bank");
    }

    // ---- the workload ----

    /// Runs random operations until told to stop.
    pub async fn work(self: Arc<Self>, mut rng: Rng) {
        while !self.stop.load(Ordering::Relaxed) {
            match rng.below(100) {
                0..45 => self.collect(&mut rng).await,
                45..57 => self.refund(&mut rng).await,
                57..65 => self.credit(&mut rng, None, 0).await,
                65..74 => self.pause_or_resume(&mut rng).await,
                74..78 => self.new_mandate(&mut rng, None).await,
                78..81 => self.bank_trouble(&mut rng).await,
                81..91 => self.get_deduction(&mut rng).await,
                91..96 => self.get_balance(&mut rng).await,
                _ => self.check_deduction(&mut rng).await,
            }
        }
    }

    /// Half the time one of the newest mandates: every worker then races for their fresh
    /// limits, which is where a limit could be overrun.
    fn pick_mandate(&self, rng: &mut Rng) -> Option<MandatePlan> {
        const HOT: usize = 4;
        let mandates = self.mandates.lock().unwrap();
        let n = mandates.len();
        if n == 0 {
            return None;
        }
        let index = if rng.below(2) == 0 {
            n - 1 - rng.index(n.min(HOT))
        } else {
            rng.index(n)
        };
        Some(mandates[index].clone())
    }

    /// Creates (as the merchant) and confirms (as the payer) a mandate with random limits and
    /// funding sources; `who` fixes the merchant and payer.
    async fn new_mandate(&self, rng: &mut Rng, who: Option<(&'static str, usize)>) {
        let (merchant, payer_index) =
            who.unwrap_or_else(|| (MERCHANTS[rng.index(MERCHANTS.len())], rng.index(PAYERS)));
        let payer_id = payer(payer_index);
        let n = self.next_id();
        let period_amount_minor = [15_000, 30_000, 60_000][rng.index(3)];
        let period_count = [3, 6, 10][rng.index(3)];
        let (total_amount_minor, total_count) = match rng.below(3) {
            0 => (Some([40_000, 90_000][rng.index(2)]), None),
            1 => (None, Some([5, 12][rng.index(2)])),
            _ => (Some(120_000), Some(15)),
        };
        let valid_until = jiff::Timestamp::now().as_second() + 365 * 86_400;
        let terms = pb::MandateTerms {
            display_account: format!("ACCT-{n}"),
            purposes: vec![pb::Purpose::Utility as i32],
            currency_code: "CNY".into(),
            amount_type: pb::AmountType::Maximum as i32,
            per_debit_limit: cny(10_000),
            period: Some(pb::Period {
                unit: pb::PeriodUnit::Month as i32,
                count: 1,
            }),
            period_amount_limit: cny(period_amount_minor),
            period_debit_limit: Some(period_count),
            total_amount_limit: total_amount_minor.and_then(cny),
            total_debit_limit: total_count,
            valid_from: None,
            valid_until: Some(prost_types::Timestamp {
                seconds: valid_until,
                nanos: 0,
            }),
            collection_window: None,
            pre_notification: None,
            timezone: String::new(),
            single_use: false,
        };
        let create = pb::CreateMandateRequest {
            merchant_contract_id: format!("c-{n}"),
            payer_id: payer_id.clone(),
            terms: Some(terms),
        };
        let token = &self.merchant_tokens[merchant];
        let (answers, gave_up) = self
            .deliver("CreateMandate", rng, |replica| {
                let mut client = self.mandates_client(replica, token);
                let request = timed(create.clone());
                async move { client.create_mandate(request).await }
            })
            .await;
        let created = answers
            .iter()
            .find_map(|a| a.ok().and_then(|r| r.mandate.clone()));
        self.records.lock().unwrap().mandates.push(MandateSent {
            merchant,
            contract_id: create.merchant_contract_id.clone(),
            answers,
            gave_up,
        });
        let Some(created) = created else { return };

        let wallet = |cap: Option<i64>| pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
            cap_per_debit: cap.and_then(cny),
        };
        let card = pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::BankCard(
                pb::BankCardSource {
                    vault_token: card_token(&payer_id),
                    bank_name: "ICBC".into(),
                    last_four: "4242".into(),
                },
            )),
            cap_per_debit: None,
        };
        let funding_sources = match rng.below(4) {
            0 => vec![wallet(None)],
            1 => vec![wallet(Some(3_000)), card.clone()],
            2 => vec![card.clone()],
            _ => vec![card.clone(), wallet(None)],
        };
        let confirm = pb::ConfirmMandateRequest {
            mandate_id: created.mandate_id.clone(),
            mandate_version: created.version,
            consent: Some(consent()),
            funding_sources,
            request_id: format!("cfm-{n}"),
        };
        let token = &self.payer_tokens[payer_index];
        let (answers, gave_up) = self
            .deliver("ConfirmMandate", rng, |replica| {
                let mut client = self.mandates_client(replica, token);
                let request = timed(confirm.clone());
                async move {
                    client
                        .confirm_mandate(request)
                        .await
                        .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                }
            })
            .await;
        let active = answers.iter().any(|a| {
            a.ok()
                .is_some_and(|m| m.status == pb::MandateStatus::Active as i32)
        });
        self.records.lock().unwrap().changes.push(ChangeSent {
            request_id: confirm.request_id.clone(),
            mandate_id: created.mandate_id.clone(),
            action: "MANDATE_CONFIRMED",
            answers,
            gave_up,
        });
        if active {
            self.mandates.lock().unwrap().push(MandatePlan {
                mandate_id: created.mandate_id,
                merchant,
                payer: payer_id,
                period_amount_minor,
                period_count,
                total_amount_minor,
                total_count,
            });
        }
    }

    async fn collect(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let n = self.next_id();
        let amount_minor = 500 + i64::try_from(rng.below(7_501)).expect("small");
        // Now and then a bill collected before on the mandate, spelt differently: a duplicate,
        // or (once refunded) a clawback.
        let bill_reference = if rng.below(100) < 5 {
            let k = rng.below(3);
            [format!("dup-{k}"), format!("DUP_{k}"), format!("Dup.{k}")][rng.index(3)].clone()
        } else {
            format!("bill-{n}")
        };
        let body = pb::CreateDeductionRequest {
            request_id: format!("ddn-{n}"),
            mandate_id: mandate.mandate_id.clone(),
            amount: cny(amount_minor),
            purpose: pb::Purpose::Utility as i32,
            bill_reference,
            description: "fault run".into(),
            notice_id: String::new(),
            one_off_approval_id: String::new(),
        };
        let token = &self.merchant_tokens[mandate.merchant];
        let (answers, gave_up) = self
            .deliver("CreateDeduction", rng, |replica| {
                let mut client = self.deductions_client(replica, token);
                let request = timed(body.clone());
                async move { client.create_deduction(request).await }
            })
            .await;
        let succeeded = answers.iter().find_map(|a| {
            a.ok()
                .and_then(|r| r.deduction.as_ref())
                .filter(|d| d.status == pb::DeductionStatus::Succeeded as i32)
                .map(|d| d.deduction_id.clone())
        });
        if let Some(id) = succeeded {
            self.paid
                .lock()
                .unwrap()
                .push((mandate.merchant, id, amount_minor));
        }
        self.records.lock().unwrap().deductions.push(DeductionSent {
            merchant: mandate.merchant,
            request_id: body.request_id,
            mandate_id: mandate.mandate_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    async fn refund(&self, rng: &mut Rng) {
        let picked = {
            let paid = self.paid.lock().unwrap();
            (!paid.is_empty()).then(|| paid[rng.index(paid.len())].clone())
        };
        let Some((merchant, deduction_id, collected_minor)) = picked else {
            return;
        };
        // Half the time all of it (refused once something was refunded already).
        let amount_minor = if rng.below(2) == 0 {
            collected_minor
        } else {
            1 + i64::try_from(rng.below(u64::try_from(collected_minor).expect("positive")))
                .expect("small")
        };
        let body = pb::RefundDeductionRequest {
            request_id: format!("rfd-{}", self.next_id()),
            deduction_id: deduction_id.clone(),
            amount: cny(amount_minor),
            reason: "fault run".into(),
        };
        let token = &self.merchant_tokens[merchant];
        let (answers, gave_up) = self
            .deliver("RefundDeduction", rng, |replica| {
                let mut client = self.deductions_client(replica, token);
                let request = timed(body.clone());
                async move { client.refund_deduction(request).await }
            })
            .await;
        self.records.lock().unwrap().refunds.push(RefundSent {
            merchant,
            request_id: body.request_id,
            deduction_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    /// Credits a wallet (a random payer's and amount unless given).
    async fn credit(&self, rng: &mut Rng, payer_index: Option<usize>, amount_minor: i64) {
        let payer_index = payer_index.unwrap_or_else(|| rng.index(PAYERS));
        let amount_minor = if amount_minor > 0 {
            amount_minor
        } else {
            1_000 + i64::try_from(rng.below(19_001)).expect("small")
        };
        let body = pb::CreditWalletRequest {
            request_id: format!("crd-{}", self.next_id()),
            payer_id: payer(payer_index),
            amount: cny(amount_minor),
            reason: "top-up".into(),
        };
        let token = &self.operator_token;
        let (answers, gave_up) = self
            .deliver("CreditWallet", rng, |replica| {
                let mut client = self.wallet_client(replica, token);
                let request = timed(body.clone());
                async move { client.credit_wallet(request).await }
            })
            .await;
        self.records.lock().unwrap().credits.push(CreditSent {
            request_id: body.request_id,
            payer: body.payer_id,
            amount_minor,
            answers,
            gave_up,
        });
    }

    async fn pause_or_resume(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let payer_index = (0..PAYERS)
            .find(|&i| payer(i) == mandate.payer)
            .expect("a known payer");
        let token = &self.payer_tokens[payer_index];
        let request_id = format!("chg-{}", self.next_id());
        let mandate_id = mandate.mandate_id.clone();
        // Resumes more often than pauses, so most mandates collect most of the time.
        let (action, answers, gave_up) = if rng.below(3) == 0 {
            let body = pb::PauseMandateRequest {
                mandate_id: mandate_id.clone(),
                reason: "holiday".into(),
                request_id: request_id.clone(),
            };
            let (answers, gave_up) = self
                .deliver("PauseMandate", rng, |replica| {
                    let mut client = self.mandates_client(replica, token);
                    let request = timed(body.clone());
                    async move {
                        client
                            .pause_mandate(request)
                            .await
                            .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                    }
                })
                .await;
            ("MANDATE_PAUSED", answers, gave_up)
        } else {
            let body = pb::ResumeMandateRequest {
                mandate_id: mandate_id.clone(),
                reason: "back".into(),
                request_id: request_id.clone(),
            };
            let (answers, gave_up) = self
                .deliver("ResumeMandate", rng, |replica| {
                    let mut client = self.mandates_client(replica, token);
                    let request = timed(body.clone());
                    async move {
                        client
                            .resume_mandate(request)
                            .await
                            .map(|r| r.map(|r| r.mandate.unwrap_or_default()))
                    }
                })
                .await;
            ("MANDATE_RESUMED", answers, gave_up)
        };
        self.records.lock().unwrap().changes.push(ChangeSent {
            request_id,
            mandate_id,
            action,
            answers,
            gave_up,
        });
    }

    /// Programs a payer's card to time out after taking the money, to time out without taking
    /// it, or to answer slowly (which widens the window a kill can hit between the bank's
    /// answer and its record).
    async fn bank_trouble(&self, rng: &mut Rng) {
        let payer_index = rng.index(PAYERS - 1);
        let behaviour = match rng.below(10) {
            0..4 => bank_pb::SetCardRequest {
                timeout_after_apply_next: 1 + u32::try_from(rng.below(2)).expect("small"),
                hang_ms: BANK_HANG_MS,
                ..Default::default()
            },
            4..7 => bank_pb::SetCardRequest {
                timeout_without_apply_next: 1,
                hang_ms: BANK_HANG_MS,
                ..Default::default()
            },
            _ => bank_pb::SetCardRequest {
                latency_ms: 20 + u32::try_from(rng.below(200)).expect("small"),
                ..Default::default()
            },
        };
        self.program_card(payer_index, CARD_BALANCE_MINOR, behaviour)
            .await;
        self.count("bank SetCard", "OK".into());
    }

    async fn get_deduction(&self, rng: &mut Rng) {
        let picked = {
            let records = self.records.lock().unwrap();
            let answered: Vec<(&'static str, String)> = records
                .deductions
                .iter()
                .rev()
                .take(200)
                .filter_map(|d| {
                    let id = d.answers.iter().find_map(|a| {
                        a.ok()
                            .and_then(|r| r.deduction.as_ref())
                            .map(|d| d.deduction_id.clone())
                    })?;
                    Some((d.merchant, id))
                })
                .collect();
            (!answered.is_empty()).then(|| answered[rng.index(answered.len())].clone())
        };
        let Some((merchant, deduction_id)) = picked else {
            return;
        };
        let token = &self.merchant_tokens[merchant];
        self.read("GetDeduction", rng, |replica| {
            let mut client = self.deductions_client(replica, token);
            let request = timed(pb::GetDeductionRequest {
                deduction_id: deduction_id.clone(),
            });
            async move { client.get_deduction(request).await }
        })
        .await;
    }

    async fn get_balance(&self, rng: &mut Rng) {
        let payer_id = payer(rng.index(PAYERS));
        let token = &self.operator_token;
        self.read("GetWalletBalance", rng, |replica| {
            let mut client = self.wallet_client(replica, token);
            let request = timed(pb::GetWalletBalanceRequest {
                payer_id: payer_id.clone(),
                currency_code: "CNY".into(),
            });
            async move { client.get_wallet_balance(request).await }
        })
        .await;
    }

    async fn check_deduction(&self, rng: &mut Rng) {
        let Some(mandate) = self.pick_mandate(rng) else {
            return;
        };
        let token = &self.merchant_tokens[mandate.merchant];
        let body = pb::CheckDeductionRequest {
            mandate_id: mandate.mandate_id.clone(),
            amount: cny(5_000),
            purpose: pb::Purpose::Utility as i32,
            bill_reference: format!("check-{}", self.next_id()),
            notice_id: String::new(),
        };
        self.read("CheckDeduction", rng, |replica| {
            let mut client = self.deductions_client(replica, token);
            let request = timed(body.clone());
            async move { client.check_deduction(request).await }
        })
        .await;
    }
}

/// A request with the client's deadline.
fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}
