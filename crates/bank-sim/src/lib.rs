//! A simulated bank that speaks the `BankGateway` contract (DESIGN §4.1) over real gRPC, with a
//! programmable in-memory ledger: balances, latency, declines, timeouts that took the money and
//! timeouts that did not, and charges that stay PROCESSING for a while. For tests and demos
//! (the `withholding-bank-sim` binary, or [`BankSim`] and [`BankSimThread`] in a test); nothing
//! survives a restart.
//!
//! Rules a caller can rely on:
//! - A charge id names one charge forever: a repeat (with the same card, amount, currency and
//!   merchant) answers the recorded outcome, never moves money again and never hangs; the same id
//!   with different terms is `ALREADY_EXISTS`. Declines are recorded too. Refund ids likewise.
//! - A charge is recorded before any programmed hang, so a repeat that arrives while the first
//!   call is still hanging already sees it.
//! - `timeout_without_apply_next` is checked before `timeout_after_apply_next`; each counts new
//!   charge ids on a known card only. A hang-after-apply also applies to a charge that is declined
//!   (the bank decided, the answer was lost).
//! - A tonic client whose own deadline (`Request::set_timeout`) runs out while the bank hangs gets
//!   `CANCELLED` ("Timeout expired") from tonic 0.14, not `DEADLINE_EXCEEDED`; with no deadline, a
//!   hang without apply ends in `UNAVAILABLE`. All of these mean "outcome unknown".

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use withholding::app::{MAX_IN_FLIGHT_PER_CONNECTION, MAX_REQUEST_BYTES};
use withholding::domain::FieldViolation;
use withholding::domain::money::{Currency, Money};
use withholding::domain::reconcile::STATEMENT_HEADER;
use withholding::domain::text::check_identifier;
use withholding::grpc::status::invalid_argument;
use withholding::pb::bank::bank_gateway_service_server::{
    BankGatewayService, BankGatewayServiceServer,
};
use withholding::pb::bank::bank_simulator_service_server::{
    BankSimulatorService, BankSimulatorServiceServer,
};
use withholding::pb::bank::{
    ChargeRequest, ChargeResponse, ChargeStatus, GetStatementRequest, GetStatementResponse,
    ListChargesRequest, ListChargesResponse, QueryChargeRequest, QueryChargeResponse,
    RefundChargeRequest, RefundChargeResponse, RefundStatus, SetCardRequest, SetCardResponse,
    SimulatedCharge,
};

/// The balance is below the charge.
pub const DECLINE_INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";
/// The bank knows no card with this token.
pub const DECLINE_CARD_INVALID: &str = "CARD_INVALID";
/// The refund would bring the refunded total above the charge.
pub const DECLINE_REFUND_EXCEEDS_CHARGE: &str = "REFUND_EXCEEDS_CHARGE";
/// The charge is unknown, declined or still processing.
pub const DECLINE_CHARGE_NOT_REFUNDABLE: &str = "CHARGE_NOT_REFUNDABLE";

/// How long a hanging call hangs when `hang_ms` is 0.
pub const DEFAULT_HANG_MS: u32 = 5_000;
/// Longest `latency_ms` or `hang_ms` a card may be given (10 minutes).
pub const MAX_DELAY_MS: u32 = 600_000;
/// Longest `processing_ms` a card may be given (a day).
pub const MAX_PROCESSING_MS: u32 = 86_400_000;
/// Largest balance or amount in minor units: 15 integer digits and 3 decimals (DESIGN §7).
pub const MAX_AMOUNT_MINOR: i64 = 999_999_999_999_999_999;
/// Cards, charges and refunds the simulator keeps; beyond them calls are RESOURCE_EXHAUSTED.
pub const MAX_CARDS: usize = 100_000;
pub const MAX_CHARGES: usize = 100_000;
pub const MAX_REFUNDS: usize = 100_000;
/// Largest seed file read at start-up.
const MAX_SEED_BYTES: u64 = 16 * 1024 * 1024;
/// Largest response: `ListCharges` with `MAX_CHARGES` charges fits.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Upper bound on a call: the longest latency plus the longest hang, with a margin.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2 * MAX_DELAY_MS as u64 + 60_000);
/// After shutdown is asked for, in-flight calls get this long. Short: a simulator's hanging
/// calls are hanging on purpose and are not worth waiting for.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A card as programmed by `SetCard`.
#[derive(Debug, Clone)]
struct Card {
    balance_minor: i64,
    decline_code: Option<String>,
    latency: Duration,
    timeout_after_apply_next: u32,
    timeout_without_apply_next: u32,
    hang: Duration,
    processing: Duration,
}

/// What the bank decided for a charge.
#[derive(Debug, Clone)]
enum Outcome {
    /// The money was taken; reported PROCESSING until `settles_at`, SUCCEEDED after.
    Applied {
        settles_at: Instant,
    },
    Declined {
        code: String,
    },
}

/// The terms a charge id is bound to: a repeat must carry the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChargeTerms {
    card_token: String,
    currency_code: String,
    amount_minor: i64,
    merchant_id: String,
}

#[derive(Debug, Clone)]
struct Charge {
    charge_id: String,
    terms: ChargeTerms,
    outcome: Outcome,
    refunded_minor: i64,
    applied_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Succeeded,
    Processing,
    Declined,
}

impl Charge {
    fn reported(&self, now: Instant) -> Reported {
        match &self.outcome {
            Outcome::Applied { settles_at } if now < *settles_at => Reported::Processing,
            Outcome::Applied { .. } => Reported::Succeeded,
            Outcome::Declined { .. } => Reported::Declined,
        }
    }

    fn decline_code(&self) -> &str {
        match &self.outcome {
            Outcome::Applied { .. } => "",
            Outcome::Declined { code } => code,
        }
    }

    fn answer(&self, now: Instant) -> ChargeResponse {
        ChargeResponse {
            status: charge_status(self.reported(now)).into(),
            decline_code: self.decline_code().to_owned(),
        }
    }
}

fn charge_status(reported: Reported) -> ChargeStatus {
    match reported {
        Reported::Succeeded => ChargeStatus::Succeeded,
        Reported::Processing => ChargeStatus::Processing,
        Reported::Declined => ChargeStatus::Declined,
    }
}

fn statement_status(reported: Reported) -> &'static str {
    match reported {
        Reported::Succeeded => "SUCCEEDED",
        Reported::Processing => "PROCESSING",
        Reported::Declined => "DECLINED",
    }
}

#[derive(Debug, Clone)]
struct Refund {
    charge_id: String,
    amount_minor: i64,
    /// `None` when it succeeded, the decline code otherwise.
    declined: Option<&'static str>,
}

impl Refund {
    fn answer(&self) -> RefundChargeResponse {
        match self.declined {
            None => RefundChargeResponse {
                status: RefundStatus::Succeeded.into(),
                decline_code: String::new(),
            },
            Some(code) => RefundChargeResponse {
                status: RefundStatus::Declined.into(),
                decline_code: code.to_owned(),
            },
        }
    }
}

/// What the `Charge` handler does once the ledger has decided.
#[derive(Debug)]
enum ChargeDecision {
    /// Answer now.
    Answer(ChargeResponse),
    /// Recorded (and possibly applied); answer after hanging.
    AnswerAfter(Duration, ChargeResponse),
    /// Nothing recorded; hang, then answer UNAVAILABLE.
    Unavailable(Duration),
}

/// The simulated bank's books. Every change happens inside one synchronous method, so a handler
/// dropped by tonic (the client went away) never leaves a change half made.
#[derive(Debug, Default)]
struct Ledger {
    cards: HashMap<String, Card>,
    /// Oldest first.
    charges: Vec<Charge>,
    charge_index: HashMap<String, usize>,
    refunds: HashMap<String, Refund>,
}

impl Ledger {
    fn set_card(&mut self, token: String, card: Card) -> Result<(), Status> {
        if !self.cards.contains_key(&token) && self.cards.len() >= MAX_CARDS {
            return Err(Status::resource_exhausted(format!(
                "the simulator holds at most {MAX_CARDS} cards"
            )));
        }
        self.cards.insert(token, card);
        Ok(())
    }

    fn latency_of_card(&self, token: &str) -> Duration {
        self.cards
            .get(token)
            .map_or(Duration::ZERO, |card| card.latency)
    }

    fn charge_by_id(&self, charge_id: &str) -> Option<&Charge> {
        self.charge_index
            .get(charge_id)
            .and_then(|&i| self.charges.get(i))
    }

    fn latency_of_charge(&self, charge_id: &str) -> Duration {
        self.charge_by_id(charge_id).map_or(Duration::ZERO, |c| {
            self.latency_of_card(&c.terms.card_token)
        })
    }

    fn charge(
        &mut self,
        charge_id: String,
        terms: ChargeTerms,
        now: Instant,
        now_ts: Timestamp,
    ) -> Result<ChargeDecision, Status> {
        if let Some(existing) = self.charge_by_id(&charge_id) {
            if existing.terms != terms {
                return Err(Status::already_exists(format!(
                    "charge_id {charge_id} was used for a different charge"
                )));
            }
            return Ok(ChargeDecision::Answer(existing.answer(now)));
        }
        if self.charges.len() >= MAX_CHARGES {
            return Err(Status::resource_exhausted(format!(
                "the simulator holds at most {MAX_CHARGES} charges"
            )));
        }
        let (outcome, hang) = match self.cards.get_mut(&terms.card_token) {
            None => (
                Outcome::Declined {
                    code: DECLINE_CARD_INVALID.to_owned(),
                },
                None,
            ),
            Some(card) => {
                if card.timeout_without_apply_next > 0 {
                    card.timeout_without_apply_next -= 1;
                    return Ok(ChargeDecision::Unavailable(card.hang));
                }
                let hang = if card.timeout_after_apply_next > 0 {
                    card.timeout_after_apply_next -= 1;
                    Some(card.hang)
                } else {
                    None
                };
                let outcome = if let Some(code) = &card.decline_code {
                    Outcome::Declined { code: code.clone() }
                } else if card.balance_minor < terms.amount_minor {
                    Outcome::Declined {
                        code: DECLINE_INSUFFICIENT_FUNDS.to_owned(),
                    }
                } else {
                    card.balance_minor -= terms.amount_minor;
                    Outcome::Applied {
                        settles_at: now + card.processing,
                    }
                };
                (outcome, hang)
            }
        };
        let charge = Charge {
            charge_id: charge_id.clone(),
            terms,
            outcome,
            refunded_minor: 0,
            applied_at: now_ts,
        };
        let answer = charge.answer(now);
        tracing::debug!(
            charge_id = %charge.charge_id,
            amount_minor = charge.terms.amount_minor,
            status = statement_status(charge.reported(now)),
            decline_code = charge.decline_code(),
            "simulated charge"
        );
        self.charge_index.insert(charge_id, self.charges.len());
        self.charges.push(charge);
        Ok(match hang {
            Some(hang) => ChargeDecision::AnswerAfter(hang, answer),
            None => ChargeDecision::Answer(answer),
        })
    }

    fn query(&self, charge_id: &str, now: Instant) -> QueryChargeResponse {
        match self.charge_by_id(charge_id) {
            None => QueryChargeResponse {
                status: ChargeStatus::NotFound.into(),
                decline_code: String::new(),
                amount_minor: 0,
                refunded_minor: 0,
            },
            Some(charge) => QueryChargeResponse {
                status: charge_status(charge.reported(now)).into(),
                decline_code: charge.decline_code().to_owned(),
                amount_minor: charge.terms.amount_minor,
                refunded_minor: charge.refunded_minor,
            },
        }
    }

    fn refund(
        &mut self,
        refund_id: String,
        charge_id: String,
        amount_minor: i64,
        now: Instant,
    ) -> Result<RefundChargeResponse, Status> {
        if let Some(existing) = self.refunds.get(&refund_id) {
            if existing.charge_id != charge_id || existing.amount_minor != amount_minor {
                return Err(Status::already_exists(format!(
                    "refund_id {refund_id} was used for a different refund"
                )));
            }
            return Ok(existing.answer());
        }
        if self.refunds.len() >= MAX_REFUNDS {
            return Err(Status::resource_exhausted(format!(
                "the simulator holds at most {MAX_REFUNDS} refunds"
            )));
        }
        let declined = match self.charge_index.get(&charge_id).copied() {
            None => Some(DECLINE_CHARGE_NOT_REFUNDABLE),
            Some(i) => self.apply_refund(i, amount_minor, now)?,
        };
        let refund = Refund {
            charge_id,
            amount_minor,
            declined,
        };
        let answer = refund.answer();
        self.refunds.insert(refund_id, refund);
        Ok(answer)
    }

    /// Moves a refund back to the card; the decline code if it may not.
    fn apply_refund(
        &mut self,
        index: usize,
        amount_minor: i64,
        now: Instant,
    ) -> Result<Option<&'static str>, Status> {
        let Some(charge) = self.charges.get_mut(index) else {
            return Ok(Some(DECLINE_CHARGE_NOT_REFUNDABLE));
        };
        if charge.reported(now) != Reported::Succeeded {
            return Ok(Some(DECLINE_CHARGE_NOT_REFUNDABLE));
        }
        if charge.terms.amount_minor - charge.refunded_minor < amount_minor {
            return Ok(Some(DECLINE_REFUND_EXCEEDS_CHARGE));
        }
        // Cards are replaced, never removed, so the card of a succeeded charge exists.
        if let Some(card) = self.cards.get_mut(&charge.terms.card_token) {
            card.balance_minor = card
                .balance_minor
                .checked_add(amount_minor)
                .ok_or_else(|| Status::out_of_range("the card balance would overflow"))?;
        }
        charge.refunded_minor += amount_minor;
        Ok(None)
    }

    fn list(&self, now: Instant) -> Vec<SimulatedCharge> {
        self.charges
            .iter()
            .map(|c| SimulatedCharge {
                charge_id: c.charge_id.clone(),
                card_token: c.terms.card_token.clone(),
                amount_minor: c.terms.amount_minor,
                status: charge_status(c.reported(now)).into(),
                decline_code: c.decline_code().to_owned(),
                refunded_minor: c.refunded_minor,
                applied_at_s: c.applied_at.as_second(),
            })
            .collect()
    }

    /// The statement of `day` (UTC): every charge the bank applied or declined that day, with
    /// what the bank really did — a charge applied behind a timeout, or still reported
    /// PROCESSING to queries, is SUCCEEDED here: the money was taken.
    fn statement(&self, day: Date) -> String {
        let mut csv = format!("{STATEMENT_HEADER}\n");
        for charge in &self.charges {
            if charge.applied_at.to_zoned_datetime(TimeZone::UTC).date() == day {
                let terms = &charge.terms;
                let amount = match Currency::parse(&terms.currency_code) {
                    Some(currency) => Money::minor_text(currency, terms.amount_minor),
                    // A currency the service does not know: the amount as the bank holds it.
                    None => terms.amount_minor.to_string(),
                };
                let status = match charge.outcome {
                    Outcome::Applied { .. } => "SUCCEEDED",
                    Outcome::Declined { .. } => "DECLINED",
                };
                csv.push_str(&format!(
                    "{},{amount},{},{status},{}\n",
                    charge.charge_id, terms.currency_code, charge.applied_at
                ));
            }
        }
        csv
    }
}

fn bad(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(FieldViolation::new(field, description))
}

fn identifier(field: &str, value: &str) -> Result<(), Status> {
    check_identifier(field, value).map_err(invalid_argument)
}

fn amount(field: &str, value: i64) -> Result<i64, Status> {
    if value <= 0 {
        return Err(bad(field, "must be positive"));
    }
    if value > MAX_AMOUNT_MINOR {
        return Err(bad(field, format!("must be at most {MAX_AMOUNT_MINOR}")));
    }
    Ok(value)
}

fn currency(value: &str) -> Result<(), Status> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(bad("currency_code", "must be an ISO 4217 code"))
    }
}

fn delay(field: &str, ms: u32, max_ms: u32) -> Result<Duration, FieldViolation> {
    if ms > max_ms {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_ms}"),
        ));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Checks a `SetCard` request and turns it into a card.
fn parse_card(request: SetCardRequest) -> Result<(String, Card), FieldViolation> {
    let SetCardRequest {
        card_token,
        balance_minor,
        decline_code,
        latency_ms,
        timeout_after_apply_next,
        timeout_without_apply_next,
        hang_ms,
        processing_ms,
    } = request;
    check_identifier("card_token", &card_token)?;
    if !(0..=MAX_AMOUNT_MINOR).contains(&balance_minor) {
        return Err(FieldViolation::new(
            "balance_minor",
            format!("must be between 0 and {MAX_AMOUNT_MINOR}"),
        ));
    }
    let decline_code = if decline_code.is_empty() {
        None
    } else {
        check_identifier("decline_code", &decline_code)?;
        Some(decline_code)
    };
    let hang_ms = if hang_ms == 0 {
        DEFAULT_HANG_MS
    } else {
        hang_ms
    };
    let card = Card {
        balance_minor,
        decline_code,
        latency: delay("latency_ms", latency_ms, MAX_DELAY_MS)?,
        timeout_after_apply_next,
        timeout_without_apply_next,
        hang: delay("hang_ms", hang_ms, MAX_DELAY_MS)?,
        processing: delay("processing_ms", processing_ms, MAX_PROCESSING_MS)?,
    };
    Ok((card_token, card))
}

/// One card in a seed file: the fields of `SetCardRequest`; all but the token and balance may be
/// left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedCard {
    card_token: String,
    balance_minor: i64,
    #[serde(default)]
    decline_code: String,
    #[serde(default)]
    latency_ms: u32,
    #[serde(default)]
    timeout_after_apply_next: u32,
    #[serde(default)]
    timeout_without_apply_next: u32,
    #[serde(default)]
    hang_ms: u32,
    #[serde(default)]
    processing_ms: u32,
}

impl From<SeedCard> for SetCardRequest {
    fn from(seed: SeedCard) -> Self {
        let SeedCard {
            card_token,
            balance_minor,
            decline_code,
            latency_ms,
            timeout_after_apply_next,
            timeout_without_apply_next,
            hang_ms,
            processing_ms,
        } = seed;
        Self {
            card_token,
            balance_minor,
            decline_code,
            latency_ms,
            timeout_after_apply_next,
            timeout_without_apply_next,
            hang_ms,
            processing_ms,
        }
    }
}

/// The gRPC handlers of both services, over one shared ledger.
#[derive(Debug, Clone)]
struct SimApi {
    ledger: Arc<Mutex<Ledger>>,
}

#[tonic::async_trait]
impl BankGatewayService for SimApi {
    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        let ChargeRequest {
            charge_id,
            card_token,
            currency_code,
            amount_minor,
            merchant_id,
        } = request.into_inner();
        identifier("charge_id", &charge_id)?;
        identifier("card_token", &card_token)?;
        currency(&currency_code)?;
        let amount_minor = amount("amount_minor", amount_minor)?;
        identifier("merchant_id", &merchant_id)?;
        let terms = ChargeTerms {
            card_token,
            currency_code,
            amount_minor,
            merchant_id,
        };
        let latency = self.ledger.lock().await.latency_of_card(&terms.card_token);
        tokio::time::sleep(latency).await;
        let decision =
            self.ledger
                .lock()
                .await
                .charge(charge_id, terms, Instant::now(), Timestamp::now())?;
        match decision {
            ChargeDecision::Answer(answer) => Ok(Response::new(answer)),
            ChargeDecision::AnswerAfter(hang, answer) => {
                tokio::time::sleep(hang).await;
                Ok(Response::new(answer))
            }
            ChargeDecision::Unavailable(hang) => {
                tokio::time::sleep(hang).await;
                Err(Status::unavailable(
                    "simulated bank timeout: nothing was applied",
                ))
            }
        }
    }

    async fn query_charge(
        &self,
        request: Request<QueryChargeRequest>,
    ) -> Result<Response<QueryChargeResponse>, Status> {
        let QueryChargeRequest { charge_id } = request.into_inner();
        identifier("charge_id", &charge_id)?;
        let latency = self.ledger.lock().await.latency_of_charge(&charge_id);
        tokio::time::sleep(latency).await;
        let answer = self.ledger.lock().await.query(&charge_id, Instant::now());
        Ok(Response::new(answer))
    }

    async fn refund_charge(
        &self,
        request: Request<RefundChargeRequest>,
    ) -> Result<Response<RefundChargeResponse>, Status> {
        let RefundChargeRequest {
            refund_id,
            charge_id,
            amount_minor,
        } = request.into_inner();
        identifier("refund_id", &refund_id)?;
        identifier("charge_id", &charge_id)?;
        let amount_minor = amount("amount_minor", amount_minor)?;
        let latency = self.ledger.lock().await.latency_of_charge(&charge_id);
        tokio::time::sleep(latency).await;
        let answer =
            self.ledger
                .lock()
                .await
                .refund(refund_id, charge_id, amount_minor, Instant::now())?;
        Ok(Response::new(answer))
    }
}

#[tonic::async_trait]
impl BankSimulatorService for SimApi {
    async fn set_card(
        &self,
        request: Request<SetCardRequest>,
    ) -> Result<Response<SetCardResponse>, Status> {
        let (token, card) = parse_card(request.into_inner()).map_err(invalid_argument)?;
        self.ledger.lock().await.set_card(token, card)?;
        Ok(Response::new(SetCardResponse {}))
    }

    async fn list_charges(
        &self,
        request: Request<ListChargesRequest>,
    ) -> Result<Response<ListChargesResponse>, Status> {
        let ListChargesRequest {} = request.into_inner();
        let charges = self.ledger.lock().await.list(Instant::now());
        Ok(Response::new(ListChargesResponse { charges }))
    }

    async fn get_statement(
        &self,
        request: Request<GetStatementRequest>,
    ) -> Result<Response<GetStatementResponse>, Status> {
        let GetStatementRequest { day } = request.into_inner();
        // Strictly YYYY-MM-DD: jiff also accepts other ISO 8601 spellings.
        let date = day
            .parse::<Date>()
            .ok()
            .filter(|date| date.to_string() == day)
            .ok_or_else(|| bad("day", "must be a date as YYYY-MM-DD"))?;
        let csv = self.ledger.lock().await.statement(date);
        Ok(Response::new(GetStatementResponse { csv }))
    }
}

/// The bank simulator server: bound on [`BankSim::bind`] (port 0 picks one), serving on
/// [`BankSim::run_until`]. Serves `BankGatewayService`, `BankSimulatorService`, health and
/// reflection, without authentication.
pub struct BankSim {
    listener: TcpListener,
    local_addr: SocketAddr,
    ledger: Ledger,
}

impl BankSim {
    /// Binds the listen address; the ledger starts empty (no cards).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            ledger: Ledger::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Programs the cards listed in a JSON file: an array of objects with the fields of
    /// `SetCardRequest` (`card_token` and `balance_minor` required, the rest default to 0 or
    /// empty), checked as `SetCard` checks them. Errors are `InvalidData` naming the entry.
    pub fn with_seed(mut self, path: &Path) -> io::Result<Self> {
        let context = |e: &dyn std::fmt::Display| format!("seed file {}: {e}", path.display());
        let size = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), context(&e)))?
            .len();
        if size > MAX_SEED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                context(&format!("larger than {MAX_SEED_BYTES} bytes")),
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), context(&e)))?;
        let cards: Vec<SeedCard> = serde_json::from_str(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, context(&e)))?;
        for (i, seed) in cards.into_iter().enumerate() {
            let invalid = |e: &dyn std::fmt::Display| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    context(&format!("card #{i}: {e}")),
                )
            };
            let (token, card) = parse_card(seed.into()).map_err(|e| invalid(&e))?;
            self.ledger
                .set_card(token, card)
                .map_err(|e| invalid(&e.message()))?;
        }
        Ok(self)
    }

    /// Serves until `shutdown` completes, then gives in-flight calls a short grace period
    /// (hanging calls are cut off).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Self {
            listener, ledger, ..
        } = self;
        let api = SimApi {
            ledger: Arc::new(Mutex::new(ledger)),
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<BankGatewayServiceServer<SimApi>>()
            .await;
        health_reporter
            .set_serving::<BankSimulatorServiceServer<SimApi>>()
            .await;
        let (reflection_v1, reflection_v1alpha) = withholding::grpc::reflection_services(
            withholding::pb::bank::FILE_DESCRIPTOR_SET,
            MAX_REQUEST_BYTES,
        )?;
        let gateway = BankGatewayServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let simulator = BankSimulatorServiceServer::new(api)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);

        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let drain_deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };

        tracing::info!(addr = %listener.local_addr()?, "bank simulator serving");
        let server = Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(gateway)
            .add_service(simulator)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            );
        let result = tokio::select! {
            result = server => result,
            () = drain_deadline => Ok(()),
        };
        tracing::info!("bank simulator stopped");
        Ok(result?)
    }
}

/// A simulator serving on a thread and a runtime of its own until dropped, as the binary would
/// in a process of its own: for a caller that is not async, or whose runtime must not share its
/// threads with the bank (the tests' multi-process cluster and README walkthrough).
pub struct BankSimThread {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BankSimThread {
    /// Binds `addr` (port 0 picks one) on the new thread, waiting only for that, and serves an
    /// empty ledger there until dropped.
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bank-sim".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let sim = match BankSim::bind(addr).await {
                        Ok(sim) => sim,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = bound_tx.send(Ok(sim.local_addr()));
                    let stopped = async {
                        // A dropped sender stops the simulator as a sent stop does.
                        let _ = stopped.await;
                    };
                    if let Err(e) = sim.run_until(stopped).await {
                        tracing::error!(error = %e, "bank simulator failed");
                    }
                });
            })?;
        let local_addr = bound_rx.recv().map_err(|_| {
            io::Error::other("the bank simulator's thread ended before it was bound")
        })??;
        Ok(Self {
            local_addr,
            stop: Some(stop),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for BankSimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinHandle;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;
    use withholding::pb::bank::bank_gateway_service_client::BankGatewayServiceClient;
    use withholding::pb::bank::bank_simulator_service_client::BankSimulatorServiceClient;

    /// A running simulator and clients for it; dropping it stops the server.
    struct Sim {
        gateway: BankGatewayServiceClient<Channel>,
        simulator: BankSimulatorServiceClient<Channel>,
        addr: SocketAddr,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn spawn_sim() -> Sim {
        spawn(BankSim::bind("127.0.0.1:0".parse().unwrap()).await.unwrap()).await
    }

    async fn spawn(sim: BankSim) -> Sim {
        let addr = sim.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sim.run_until(async move {
            let _ = stopped.await;
        }));
        // The listener is already bound, so connecting needs no wait.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Sim {
            gateway: BankGatewayServiceClient::new(channel.clone()),
            simulator: BankSimulatorServiceClient::new(channel),
            addr,
            _stop: stop,
        }
    }

    fn card(token: &str, balance_minor: i64) -> SetCardRequest {
        SetCardRequest {
            card_token: token.into(),
            balance_minor,
            ..SetCardRequest::default()
        }
    }

    fn charge_req(charge_id: &str, card_token: &str, amount_minor: i64) -> ChargeRequest {
        ChargeRequest {
            charge_id: charge_id.into(),
            card_token: card_token.into(),
            currency_code: "CNY".into(),
            amount_minor,
            merchant_id: "m-001".into(),
        }
    }

    fn refund_req(refund_id: &str, charge_id: &str, amount_minor: i64) -> RefundChargeRequest {
        RefundChargeRequest {
            refund_id: refund_id.into(),
            charge_id: charge_id.into(),
            amount_minor,
        }
    }

    fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
    }

    impl Sim {
        async fn set_card(&mut self, request: SetCardRequest) {
            self.simulator.set_card(request).await.unwrap();
        }

        async fn charge(&mut self, id: &str, card: &str, amount: i64) -> (ChargeStatus, String) {
            let r = self
                .gateway
                .charge(charge_req(id, card, amount))
                .await
                .unwrap()
                .into_inner();
            (r.status(), r.decline_code)
        }

        async fn query(&mut self, id: &str) -> QueryChargeResponse {
            self.gateway
                .query_charge(QueryChargeRequest {
                    charge_id: id.into(),
                })
                .await
                .unwrap()
                .into_inner()
        }

        async fn refund(&mut self, id: &str, charge: &str, amount: i64) -> (RefundStatus, String) {
            let r = self
                .gateway
                .refund_charge(refund_req(id, charge, amount))
                .await
                .unwrap()
                .into_inner();
            (r.status(), r.decline_code)
        }

        async fn charges(&mut self) -> Vec<SimulatedCharge> {
            self.simulator
                .list_charges(ListChargesRequest {})
                .await
                .unwrap()
                .into_inner()
                .charges
        }

        /// Polls QueryCharge until it leaves PROCESSING, for at most 5 s.
        async fn await_settled(&mut self, id: &str) -> QueryChargeResponse {
            for _ in 0..200 {
                let answer = self.query(id).await;
                if answer.status() != ChargeStatus::Processing {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("charge {id} still PROCESSING after 5 s");
        }
    }

    fn succeeded() -> (ChargeStatus, String) {
        (ChargeStatus::Succeeded, String::new())
    }

    fn declined(code: &str) -> (ChargeStatus, String) {
        (ChargeStatus::Declined, code.to_owned())
    }

    /// What a tonic 0.14 client reports when its own deadline runs out: CANCELLED, message
    /// "Timeout expired" (its channel's timeout layer fires before any answer).
    fn assert_client_timeout(status: &Status) {
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
        assert_eq!(status.message(), "Timeout expired", "{status:?}");
    }

    #[tokio::test]
    async fn a_charge_id_debits_once_however_often_it_is_sent() {
        let mut sim = spawn_sim().await;
        sim.set_card(card("card-1", 1_000)).await;
        for _ in 0..3 {
            assert_eq!(sim.charge("ch-1", "card-1", 400).await, succeeded());
        }
        let charges = sim.charges().await;
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].charge_id, "ch-1");
        assert_eq!(charges[0].card_token, "card-1");
        assert_eq!(charges[0].amount_minor, 400);
        assert_eq!(charges[0].status(), ChargeStatus::Succeeded);
        // 600 left exactly: a second debit of ch-1 would have left 200.
        assert_eq!(sim.charge("ch-2", "card-1", 600).await, succeeded());
        assert_eq!(
            sim.charge("ch-3", "card-1", 1).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        let ids: Vec<_> = sim
            .charges()
            .await
            .into_iter()
            .map(|c| c.charge_id)
            .collect();
        assert_eq!(ids, ["ch-1", "ch-2", "ch-3"]);

        // The same id with other terms is a caller bug, not a repeat.
        let err = sim
            .gateway
            .charge(charge_req("ch-1", "card-1", 401))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
    }

    #[tokio::test]
    async fn insufficient_funds_takes_nothing() {
        let mut sim = spawn_sim().await;
        sim.set_card(card("card-1", 100)).await;
        assert_eq!(
            sim.charge("ch-1", "card-1", 101).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        let query = sim.query("ch-1").await;
        assert_eq!(query.status(), ChargeStatus::Declined);
        assert_eq!(query.decline_code, DECLINE_INSUFFICIENT_FUNDS);
        assert_eq!(query.amount_minor, 101);
        // A repeat stays declined, even once the balance would allow it.
        sim.set_card(card("card-1", 1_000)).await;
        assert_eq!(
            sim.charge("ch-1", "card-1", 101).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        sim.set_card(card("card-1", 100)).await;
        assert_eq!(sim.charge("ch-2", "card-1", 100).await, succeeded());
    }

    #[tokio::test]
    async fn programmed_decline_code_and_unknown_card() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            decline_code: "DO_NOT_HONOUR".into(),
            ..card("card-1", 1_000)
        })
        .await;
        assert_eq!(
            sim.charge("ch-1", "card-1", 10).await,
            declined("DO_NOT_HONOUR")
        );
        assert_eq!(
            sim.charge("ch-2", "no-such-card", 10).await,
            declined(DECLINE_CARD_INVALID)
        );
        let statuses: Vec<_> = sim
            .charges()
            .await
            .iter()
            .map(|c| (c.status(), c.decline_code.clone()))
            .collect();
        assert_eq!(
            statuses,
            [declined("DO_NOT_HONOUR"), declined(DECLINE_CARD_INVALID)]
        );
        // The decline took nothing: without the code, the whole balance is there.
        sim.set_card(card("card-1", 1_000)).await;
        assert_eq!(sim.charge("ch-3", "card-1", 1_000).await, succeeded());
    }

    #[tokio::test]
    async fn bad_input_is_invalid_argument_and_records_nothing() {
        let mut sim = spawn_sim().await;
        sim.set_card(card("card-1", 1_000)).await;
        let cases = [
            charge_req("", "card-1", 10),
            charge_req("ch 1", "card-1", 10),
            charge_req("ch-1", "", 10),
            charge_req("ch-1", "card-1", 0),
            charge_req("ch-1", "card-1", -5),
            charge_req("ch-1", "card-1", MAX_AMOUNT_MINOR + 1),
            ChargeRequest {
                currency_code: String::new(),
                ..charge_req("ch-1", "card-1", 10)
            },
            ChargeRequest {
                merchant_id: String::new(),
                ..charge_req("ch-1", "card-1", 10)
            },
        ];
        for case in cases {
            let err = sim.gateway.charge(case.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{case:?}");
        }
        for case in [
            refund_req("", "ch-1", 1),
            refund_req("r-1", "", 1),
            refund_req("r-1", "ch-1", 0),
            refund_req("r-1", "ch-1", -1),
        ] {
            let err = sim.gateway.refund_charge(case.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{case:?}");
        }
        let err = sim
            .gateway
            .query_charge(QueryChargeRequest {
                charge_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        for case in [
            card("", 1),
            card("card-2", -1),
            SetCardRequest {
                hang_ms: MAX_DELAY_MS + 1,
                ..card("card-2", 1)
            },
            SetCardRequest {
                latency_ms: MAX_DELAY_MS + 1,
                ..card("card-2", 1)
            },
            SetCardRequest {
                processing_ms: MAX_PROCESSING_MS + 1,
                ..card("card-2", 1)
            },
        ] {
            let err = sim.simulator.set_card(case.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{case:?}");
        }
        assert!(sim.charges().await.is_empty());
        assert_eq!(sim.charge("ch-1", "card-1", 1_000).await, succeeded());
    }

    #[tokio::test]
    async fn timeout_after_apply_took_the_money() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            timeout_after_apply_next: 1,
            hang_ms: 5_000,
            ..card("card-1", 1_000)
        })
        .await;
        let started = std::time::Instant::now();
        let err = sim
            .gateway
            .charge(with_timeout(
                charge_req("ch-1", "card-1", 600),
                Duration::from_millis(200),
            ))
            .await
            .unwrap_err();
        assert_client_timeout(&err);
        assert!(started.elapsed() < Duration::from_secs(2));

        let charges = sim.charges().await;
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].status(), ChargeStatus::Succeeded);
        assert_eq!(sim.query("ch-1").await.status(), ChargeStatus::Succeeded);
        // The retry answers at once with the first outcome; the balance was taken once.
        assert_eq!(sim.charge("ch-1", "card-1", 600).await, succeeded());
        assert_eq!(
            sim.charge("ch-2", "card-1", 401).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        assert_eq!(sim.charge("ch-3", "card-1", 400).await, succeeded());
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_call_hangs_sees_it() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            timeout_after_apply_next: 1,
            hang_ms: 3_000,
            ..card("card-1", 1_000)
        })
        .await;
        let mut gateway = sim.gateway.clone();
        let first: JoinHandle<_> =
            tokio::spawn(async move { gateway.charge(charge_req("ch-1", "card-1", 700)).await });
        assert_eq!(
            sim.await_settled_or_found("ch-1").await,
            ChargeStatus::Succeeded
        );
        assert_eq!(sim.charge("ch-1", "card-1", 700).await, succeeded());
        assert!(!first.is_finished(), "the first call should still hang");
        assert_eq!(sim.charges().await.len(), 1);
        let first = first.await.unwrap().unwrap().into_inner();
        assert_eq!(first.status(), ChargeStatus::Succeeded);
        assert_eq!(
            sim.charge("ch-2", "card-1", 301).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
    }

    impl Sim {
        /// Polls QueryCharge until the charge exists, for at most 5 s.
        async fn await_settled_or_found(&mut self, id: &str) -> ChargeStatus {
            for _ in 0..200 {
                let status = self.query(id).await.status();
                if status != ChargeStatus::NotFound {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("charge {id} not recorded after 5 s");
        }
    }

    #[tokio::test]
    async fn timeout_without_apply_records_nothing() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            timeout_without_apply_next: 2,
            hang_ms: 5_000,
            ..card("card-1", 1_000)
        })
        .await;
        let err = sim
            .gateway
            .charge(with_timeout(
                charge_req("ch-1", "card-1", 600),
                Duration::from_millis(200),
            ))
            .await
            .unwrap_err();
        assert_client_timeout(&err);
        let query = sim.query("ch-1").await;
        assert_eq!(query.status(), ChargeStatus::NotFound);
        assert_eq!(query.amount_minor, 0);
        assert!(sim.charges().await.is_empty());

        // Without a client deadline the hang ends in UNAVAILABLE.
        sim.set_card(SetCardRequest {
            timeout_without_apply_next: 1,
            hang_ms: 100,
            ..card("card-1", 1_000)
        })
        .await;
        let err = sim
            .gateway
            .charge(charge_req("ch-1", "card-1", 600))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(sim.query("ch-1").await.status(), ChargeStatus::NotFound);

        // The retry goes through, and takes the money once.
        assert_eq!(sim.charge("ch-1", "card-1", 600).await, succeeded());
        assert_eq!(
            sim.charge("ch-2", "card-1", 401).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        assert_eq!(sim.charges().await.len(), 2);
    }

    #[tokio::test]
    async fn processing_then_succeeded() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            processing_ms: 300,
            ..card("card-1", 1_000)
        })
        .await;
        assert_eq!(
            sim.charge("ch-1", "card-1", 1_000).await,
            (ChargeStatus::Processing, String::new())
        );
        let query = sim.query("ch-1").await;
        assert_eq!(query.status(), ChargeStatus::Processing);
        assert_eq!(query.amount_minor, 1_000);
        assert_eq!(sim.charges().await[0].status(), ChargeStatus::Processing);
        // Not refundable while processing.
        assert_eq!(
            sim.refund("r-early", "ch-1", 1).await,
            (
                RefundStatus::Declined,
                DECLINE_CHARGE_NOT_REFUNDABLE.to_owned()
            )
        );
        // The money is already held.
        assert_eq!(
            sim.charge("ch-2", "card-1", 1).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );

        let settled = sim.await_settled("ch-1").await;
        assert_eq!(settled.status(), ChargeStatus::Succeeded);
        assert_eq!(sim.charges().await[0].status(), ChargeStatus::Succeeded);
        assert_eq!(sim.charge("ch-1", "card-1", 1_000).await, succeeded());
    }

    #[tokio::test]
    async fn latency_delays_every_call_on_the_card() {
        let mut sim = spawn_sim().await;
        sim.set_card(SetCardRequest {
            latency_ms: 300,
            ..card("card-1", 1_000)
        })
        .await;
        let started = std::time::Instant::now();
        assert_eq!(sim.charge("ch-1", "card-1", 10).await, succeeded());
        assert!(started.elapsed() >= Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert_eq!(sim.query("ch-1").await.status(), ChargeStatus::Succeeded);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A deadline shorter than the latency: nothing is applied.
        let err = sim
            .gateway
            .charge(with_timeout(
                charge_req("ch-2", "card-1", 10),
                Duration::from_millis(100),
            ))
            .await
            .unwrap_err();
        assert_client_timeout(&err);
        assert_eq!(sim.charges().await.len(), 1);
    }

    #[tokio::test]
    async fn refunds_are_idempotent_and_bounded() {
        let mut sim = spawn_sim().await;
        sim.set_card(card("card-1", 1_000)).await;
        assert_eq!(sim.charge("ch-1", "card-1", 1_000).await, succeeded());
        let refund_ok = (RefundStatus::Succeeded, String::new());
        let refund_declined = |code: &str| (RefundStatus::Declined, code.to_owned());

        assert_eq!(sim.refund("r-1", "ch-1", 400).await, refund_ok);
        assert_eq!(sim.refund("r-1", "ch-1", 400).await, refund_ok);
        assert_eq!(sim.query("ch-1").await.refunded_minor, 400);
        assert_eq!(
            sim.refund("r-2", "ch-1", 601).await,
            refund_declined(DECLINE_REFUND_EXCEEDS_CHARGE)
        );
        assert_eq!(sim.refund("r-3", "ch-1", 600).await, refund_ok);
        assert_eq!(
            sim.refund("r-4", "ch-1", 1).await,
            refund_declined(DECLINE_REFUND_EXCEEDS_CHARGE)
        );
        let query = sim.query("ch-1").await;
        assert_eq!(query.status(), ChargeStatus::Succeeded);
        assert_eq!(query.refunded_minor, 1_000);
        assert_eq!(sim.charges().await[0].refunded_minor, 1_000);

        // The refunds went back to the card: the whole balance is there again.
        assert_eq!(sim.charge("ch-2", "card-1", 1_000).await, succeeded());

        assert_eq!(
            sim.refund("r-5", "no-such-charge", 1).await,
            refund_declined(DECLINE_CHARGE_NOT_REFUNDABLE)
        );
        assert_eq!(
            sim.charge("ch-3", "card-1", 1).await,
            declined(DECLINE_INSUFFICIENT_FUNDS)
        );
        assert_eq!(
            sim.refund("r-6", "ch-3", 1).await,
            refund_declined(DECLINE_CHARGE_NOT_REFUNDABLE)
        );
        // A refund id is bound to its charge and amount.
        let err = sim
            .gateway
            .refund_charge(refund_req("r-1", "ch-1", 300))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let err = sim
            .gateway
            .refund_charge(refund_req("r-1", "ch-2", 400))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert_eq!(sim.query("ch-2").await.refunded_minor, 0);
    }

    #[tokio::test]
    async fn statement_lists_the_day_as_csv() {
        let mut sim = spawn_sim().await;
        sim.set_card(card("card-1", 1_000)).await;
        sim.set_card(SetCardRequest {
            processing_ms: 600_000,
            ..card("card-slow", 1_000)
        })
        .await;
        sim.charge("s-1", "card-1", 700).await;
        sim.charge("s-2", "card-1", 301).await;
        sim.charge("s-3", "card-slow", 5).await;
        let charges = sim.charges().await;
        let applied: Vec<i64> = charges.iter().map(|c| c.applied_at_s).collect();
        let statement = |day: String| GetStatementRequest { day };
        // What the bank did: s-3 is still reported PROCESSING, but its money was taken.
        let lines = [
            "s-1,7.00,CNY,SUCCEEDED",
            "s-2,3.01,CNY,DECLINED",
            "s-3,0.05,CNY,SUCCEEDED",
        ];
        let day_of = |s: i64| {
            Timestamp::from_second(s)
                .unwrap()
                .to_zoned_datetime(TimeZone::UTC)
                .date()
        };
        let day = day_of(applied[0]);
        let csv = sim
            .simulator
            .get_statement(statement(day.to_string()))
            .await
            .unwrap()
            .into_inner()
            .csv;
        let mut rows = csv.lines();
        assert_eq!(rows.next(), Some("charge_id,amount,currency,status,time"));
        let expected: Vec<(&str, i64)> = lines
            .iter()
            .zip(&applied)
            .filter(|(_, at)| day_of(**at) == day)
            .map(|(line, at)| (*line, *at))
            .collect();
        let got: Vec<(String, i64)> = rows
            .map(|row| {
                let (fields, time) = row.rsplit_once(',').unwrap();
                (
                    fields.to_owned(),
                    time.parse::<Timestamp>().unwrap().as_second(),
                )
            })
            .collect();
        let got: Vec<(&str, i64)> = got.iter().map(|(f, t)| (f.as_str(), *t)).collect();
        assert_eq!(got, expected);

        let csv = sim
            .simulator
            .get_statement(statement("1999-01-01".into()))
            .await
            .unwrap()
            .into_inner()
            .csv;
        assert_eq!(csv, "charge_id,amount,currency,status,time\n");

        for bad_day in ["", "yesterday", "2024-13-01", "20240101", "2024-1-5"] {
            let err = sim
                .simulator
                .get_statement(statement(bad_day.into()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad_day:?}");
        }
    }

    #[tokio::test]
    async fn serves_health() {
        let sim = spawn_sim().await;
        let channel = Channel::from_shared(format!("http://{}", sim.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in [
            "withholding.bank.v1.BankGatewayService",
            "withholding.bank.v1.BankSimulatorService",
        ] {
            let answer = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.status(),
                tonic_health::pb::health_check_response::ServingStatus::Serving
            );
        }
    }

    #[tokio::test]
    async fn serves_reflection() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let sim = spawn_sim().await;
        let channel = Channel::from_shared(format!("http://{}", sim.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected answer {answer:?}");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        for expected in [
            "withholding.bank.v1.BankGatewayService",
            "withholding.bank.v1.BankSimulatorService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
    }

    #[tokio::test]
    async fn seed_file_programs_cards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cards.json");
        std::fs::write(
            &path,
            r#"[{"card_token": "card-1", "balance_minor": 500},
                {"card_token": "card-2", "balance_minor": 500, "decline_code": "LIMIT_EXCEEDED"}]"#,
        )
        .unwrap();
        let sim = BankSim::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_seed(&path)
            .unwrap();
        let mut sim = spawn(sim).await;
        assert_eq!(sim.charge("ch-1", "card-1", 500).await, succeeded());
        assert_eq!(
            sim.charge("ch-2", "card-2", 1).await,
            declined("LIMIT_EXCEEDED")
        );

        for bad in [
            r#"[{"card_token": "card-1"}]"#,
            r#"[{"card_token": "card-1", "balance_minor": -1}]"#,
            r#"[{"card_token": "card-1", "balance_minor": 1, "colour": "red"}]"#,
            r#"{"card_token": "card-1", "balance_minor": 1}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = BankSim::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap()
                .with_seed(&path)
                .err()
                .unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad}");
        }
    }

    /// A simulator on its own thread serves from its return on (no wait), also to a caller
    /// outside any runtime, and stops serving when dropped.
    #[test]
    fn a_thread_serves_until_dropped() {
        let bank = BankSimThread::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bank.local_addr();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut simulator = BankSimulatorServiceClient::new(channel.clone());
            simulator.set_card(card("card-1", 500)).await.unwrap();
            let answer = BankGatewayServiceClient::new(channel)
                .charge(charge_req("ch-1", "card-1", 500))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status, ChargeStatus::Succeeded as i32);
        });

        drop(bank);
        runtime.block_on(async {
            // Bounded: the simulator gives calls in flight a grace period before it stops.
            let deadline = Instant::now() + DRAIN_GRACE + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                assert!(Instant::now() < deadline, "still serving on {addr}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
}
