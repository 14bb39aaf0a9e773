//! The storage contract of deductions, notices, refunds, one-off approvals and the wallet ledger
//! (DESIGN §4, §5, §8): the `DeductionStore` trait and the values it takes and returns. Each
//! decision is made inside the transaction that reads its facts under the mandate's lock and
//! writes its results, so limits hold across replicas: `execute.rs` (a new deduction),
//! `facts.rs` (what it is judged on), `settle.rs` (a card charge's answer).

pub mod batch;
pub mod execute;
pub mod facts;
pub mod settle;

use jiff::Timestamp;

use super::StoreError;
use crate::domain::audit::AuditDraft;
use crate::domain::deduction::{
    Approval, CardCharge, ChargeStatus, DebitRequest, Deduction, DeductionStatus, Facts, Notice,
    Refund, Usage,
};
use crate::domain::ids::{MandateId, MerchantId, PayerId};
use crate::domain::ledger::{Account, LedgerMove};
use crate::domain::mandate::Mandate;
use crate::domain::policy::MerchantPolicy;

/// Everything one decision (a new deduction, or a card charge's settlement) writes, in its
/// transaction; storage applies it in one place (`execute::apply`).
#[derive(Debug, Clone)]
pub struct DeductionWrites {
    pub deduction: Deduction,
    pub reservation: Reservation,
    /// The money: wallet → merchant, or card clearing → merchant.
    pub ledger: Option<LedgerMove>,
    pub collected: Option<Collected>,
    /// The answer recorded for the card charge being settled.
    pub charge_update: Option<ChargeUpdate>,
    /// A card to charge next, recorded before the bank is called.
    pub new_charge: Option<NewCharge>,
    pub audits: Vec<AuditDraft>,
}

impl DeductionWrites {
    /// Writes nothing but the deduction itself.
    pub fn only(deduction: Deduction) -> Self {
        Self {
            deduction,
            reservation: Reservation::None,
            ledger: None,
            collected: None,
            charge_update: None,
            new_charge: None,
            audits: vec![],
        }
    }
}

/// What a debit holds against the mandate while it is not FAILED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    None,
    /// Usage rows advanced by the amount and one debit; the notice and the one-off approval the
    /// debit uses (each taken conditionally: another debit may have taken it first).
    Take {
        usage_keys: Vec<String>,
        notice: Option<String>,
        approval: Option<String>,
    },
    /// Usage rows given back and the notice freed: a reserved deduction ended FAILED.
    Release {
        usage_keys: Vec<String>,
        notice: Option<String>,
    },
}

/// A successful collection.
#[derive(Debug, Clone)]
pub struct Collected {
    pub at: Timestamp,
    /// When the mandate would now expire for dormancy.
    pub expires_at: Option<Timestamp>,
    /// The mandate after the debit, when the debit consumed it: stored conditional on the
    /// version the decision read.
    pub consumed: Option<Mandate>,
}

/// A card charge to record before the bank is called.
#[derive(Debug, Clone)]
pub struct NewCharge {
    pub charge: CardCharge,
    /// When the resolver may ask the bank if nobody settles the charge first (a crash).
    pub check_at: Option<Timestamp>,
}

/// A change of a card charge's state.
#[derive(Debug, Clone)]
pub struct ChargeUpdate {
    pub charge_id: String,
    pub status: ChargeStatus,
    pub decline_code: Option<String>,
    /// When to ask the bank again; `None` once definite or past the horizon.
    pub next_check_at: Option<Timestamp>,
    /// Whether this update follows a query of the bank (counted for backoff).
    pub checked: bool,
}

/// What settling a card charge decides on, read under the mandate's lock.
pub struct SettleContext<'a> {
    pub deduction: &'a Deduction,
    pub charge: &'a CardCharge,
    pub charge_status: ChargeStatus,
    /// How often the bank was queried about it so far.
    pub checks: i64,
    pub mandate: &'a Mandate,
    pub wallet_balance_minor: i64,
    pub total_usage: Usage,
}

/// Decides what a bank answer changes; `None` when it changes nothing (already settled).
pub type Settle<'a> = &'a (dyn Fn(&SettleContext<'_>) -> Option<DeductionWrites> + Send + Sync);

/// What settling a bank answer gives: the deduction and the next card to charge, or `None`
/// when the charge is unknown or the answer changed nothing.
pub type Settled = Option<(Deduction, Option<CardCharge>)>;

/// A [`Settle`] decision owned, so that a worker settling several answers together can run it.
pub type SettleDecision =
    std::sync::Arc<dyn Fn(&SettleContext<'_>) -> Option<DeductionWrites> + Send + Sync>;

/// A deduction to decide.
#[derive(Debug, Clone)]
pub struct DeductionInput {
    pub merchant_id: MerchantId,
    pub request_id: String,
    pub fingerprint: String,
    pub mandate_id: MandateId,
    /// The mandate as the caller read it before the transaction (possibly out of date): the
    /// facts it calls for are read together with the mandate itself, and read again only if
    /// the current mandate calls for others.
    pub seen: Mandate,
    pub request: DebitRequest,
    pub now: Timestamp,
    /// The start of the suspected-refund-recovery look-back window (DESIGN §5): refunds since
    /// then are read, if the mandate refunded at all since then.
    pub refunds_since: Timestamp,
}

/// Decides a deduction from the mandate, the facts and the payer's wallet balance (minor units),
/// all read under the mandate's lock.
pub type Decide<'a> = &'a (dyn Fn(&Mandate, &Facts, i64) -> DeductionWrites + Send + Sync);

#[derive(Debug)]
pub enum Executed {
    /// Decided; with the card charge to make next when a card is to pay.
    New(Box<Deduction>, Option<CardCharge>),
    /// The request id was used before, by the request with `fingerprint`.
    Existing {
        deduction: Box<Deduction>,
        fingerprint: String,
    },
    MandateNotFound,
}

/// A refund to record against a deduction.
#[derive(Debug, Clone)]
pub struct RefundWrites {
    pub refund: Refund,
    pub deduction: Deduction,
    pub ledger: Option<LedgerMove>,
    pub audit: AuditDraft,
}

pub type DecideRefund<'a> = &'a (dyn Fn(&Deduction) -> Result<RefundWrites, String> + Send + Sync);

#[derive(Debug)]
pub enum Refunded {
    New {
        refund: Refund,
        deduction: Box<Deduction>,
    },
    Existing {
        refund: Refund,
        deduction: Box<Deduction>,
        fingerprint: String,
    },
    DeductionNotFound,
    Refused(String),
}

/// A row keyed by a merchant's request id, with the audit event of its writing.
#[derive(Clone, Copy)]
pub struct KeyedWrite<'a, T> {
    pub value: &'a T,
    pub request_id: &'a str,
    /// SHA-256 of the request as sent.
    pub fingerprint: &'a str,
    pub audit: &'a AuditDraft,
}

/// The request a keyed write answers: its scope (whose request ids), id and fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct KeyedRequest<'a> {
    pub scope: &'a str,
    pub request_id: &'a str,
    pub fingerprint: &'a str,
}

/// A refund a merchant's request asks for, under its request id.
#[derive(Clone, Copy)]
pub struct RefundAsk<'a> {
    pub deduction_id: &'a str,
    pub merchant_id: &'a MerchantId,
    pub request_id: &'a str,
    pub fingerprint: &'a str,
}

/// A request-id-keyed insert that may find its key taken.
#[derive(Debug)]
pub enum Keyed<T> {
    New(T),
    Existing { value: T, fingerprint: String },
}

/// Filters for listing deductions, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeductionQuery {
    pub merchant_id: Option<MerchantId>,
    pub payer_id: Option<PayerId>,
    pub mandate_id: Option<MandateId>,
    pub status: Option<DeductionStatus>,
    pub created_from: Option<Timestamp>,
    pub created_until: Option<Timestamp>,
    pub before: Option<String>,
    pub limit: u32,
}

/// Ledger totals, for the conservation invariant (DESIGN §9.4). Sums are 128-bit: each
/// balance fits 64 bits, their sum need not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Sum of every account's balance: always zero.
    pub sum_minor: i128,
    /// Sum of every entry: always zero (each movement balances).
    pub entries_sum_minor: i128,
    /// Lowest wallet balance: never negative.
    pub min_wallet_minor: i64,
}

#[async_trait::async_trait]
pub trait DeductionStore: Send + Sync + 'static {
    /// Decides and records a deduction in one transaction, unless its request id was used;
    /// where writers run in parallel, together with others arriving meanwhile (`batch/`).
    async fn execute_deduction(
        &self,
        input: DeductionInput,
        decide: batch::Decision,
    ) -> Result<Executed, StoreError>;

    /// How concurrent deductions were decided together (`None` where each is its own
    /// transaction: SQLite, whose single writer groups commits instead).
    fn decision_batches(&self) -> Option<batch::BatchStats>;

    /// Records what the bank said about a charge, in one transaction under the mandate's lock.
    /// `None` when the charge is unknown or `decide` found nothing to change.
    /// Where writers run in parallel, together with other answers arriving meanwhile (`batch/`).
    async fn settle_charge(
        &self,
        charge_id: &str,
        decide: SettleDecision,
    ) -> Result<Settled, StoreError>;

    /// How many card charges have no definite outcome yet (for metrics).
    async fn unknown_charges(&self) -> Result<i64, StoreError>;

    /// Charges whose outcome is still to be asked for, due at `now`, at most `limit`.
    async fn charges_due(&self, now: Timestamp, limit: u32) -> Result<Vec<CardCharge>, StoreError>;

    /// Charges still to be asked for that were made at or before `made_by`, however long
    /// their next question is off (what a restart resumes), at most `limit`.
    async fn charges_open_since(
        &self,
        made_by: Timestamp,
        limit: u32,
    ) -> Result<Vec<CardCharge>, StoreError>;

    /// When the next charge is due to be asked about, if any is.
    async fn next_charge_check(&self) -> Result<Option<Timestamp>, StoreError>;

    /// The mandate and facts a deduction would be judged on now (a dry run; nothing is locked).
    async fn deduction_facts(
        &self,
        mandate_id: &MandateId,
        asked: &facts::Asked<'_>,
    ) -> Result<Option<(Mandate, Facts)>, StoreError>;

    async fn deduction(&self, id: &str) -> Result<Option<Deduction>, StoreError>;

    async fn list_deductions(&self, query: &DeductionQuery) -> Result<Vec<Deduction>, StoreError>;

    async fn insert_notice(
        &self,
        write: KeyedWrite<'_, Notice>,
    ) -> Result<Keyed<Notice>, StoreError>;

    async fn list_notices(
        &self,
        mandate_id: &MandateId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notice>, StoreError>;

    /// Records a refund decided on the deduction as read under its lock.
    async fn refund(
        &self,
        ask: RefundAsk<'_>,
        decide: DecideRefund<'_>,
    ) -> Result<Refunded, StoreError>;

    /// The refund a merchant's request id already made, with its deduction and fingerprint.
    async fn refund_by_request(
        &self,
        merchant_id: &MerchantId,
        request_id: &str,
    ) -> Result<Option<(Refund, Deduction, String)>, StoreError>;

    async fn insert_approval(
        &self,
        write: KeyedWrite<'_, Approval>,
    ) -> Result<Keyed<Approval>, StoreError>;

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError>;

    /// Stores a decided approval, conditional on it still being PENDING.
    async fn update_approval(
        &self,
        approval: &Approval,
        audit: &AuditDraft,
    ) -> Result<(), StoreError>;

    /// Moves money from the clearing account to a wallet, idempotently on (scope, request id);
    /// returns the wallet's balance right after the credit (the stored one for a replay).
    async fn credit_wallet(
        &self,
        credit: &LedgerMove,
        request: KeyedRequest<'_>,
        audit: &AuditDraft,
    ) -> Result<Keyed<i64>, StoreError>;

    async fn balance(&self, account: &Account) -> Result<i64, StoreError>;

    /// The merchant's policy, if one was ever set.
    async fn merchant_policy(
        &self,
        merchant_id: &MerchantId,
    ) -> Result<Option<MerchantPolicy>, StoreError>;

    /// Stores a changed policy with its audit event, conditional on the stored version still
    /// being `policy.version - 1` ([`StoreError::Conflict`] otherwise).
    async fn put_merchant_policy(
        &self,
        policy: &MerchantPolicy,
        audit: &AuditDraft,
    ) -> Result<(), StoreError>;

    async fn ledger_totals(&self) -> Result<LedgerTotals, StoreError>;
}
