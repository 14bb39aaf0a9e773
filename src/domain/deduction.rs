//! Deductions (DESIGN §4, §5): the checks a debit must pass, in order, with a reason code for
//! each; the clawback rule; one-off approvals; the funding waterfall over the payer's sources.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::bill::BillReference;
use super::funding::{FundingSources, Instrument};
use super::ids::{MandateId, MerchantId, PayerId};
use super::mandate::Mandate;
use super::money::Money;
use super::period::period_containing;
use super::policy::RecoveryPolicy;
use super::terms::Purpose;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeductionStatus {
    Declined,
    Processing,
    Succeeded,
    Failed,
    PendingConfirmation,
    Refunded,
    PartiallyRefunded,
}

impl DeductionStatus {
    pub const ALL: [Self; 7] = [
        Self::Declined,
        Self::Processing,
        Self::Succeeded,
        Self::Failed,
        Self::PendingConfirmation,
        Self::Refunded,
        Self::PartiallyRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declined => "DECLINED",
            Self::Processing => "PROCESSING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::PendingConfirmation => "PENDING_CONFIRMATION",
            Self::Refunded => "REFUNDED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Why a deduction was declined (DESIGN §4, in check order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    MandateNotActive,
    MandateExpired,
    MandateNotYetValid,
    PurposeNotAllowed,
    RefundClawbackForbidden,
    SuspectedRefundRecovery,
    CurrencyMismatch,
    AmountAbovePerDebitLimit,
    AmountNotFixedAmount,
    OutsideCollectionWindow,
    PreNotificationMissing,
    DuplicateBillReference,
    PeriodAmountLimitExceeded,
    PeriodCountLimitExceeded,
    TotalLimitExceeded,
    OneOffApprovalInvalid,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MandateNotActive => "MANDATE_NOT_ACTIVE",
            Self::MandateExpired => "MANDATE_EXPIRED",
            Self::MandateNotYetValid => "MANDATE_NOT_YET_VALID",
            Self::PurposeNotAllowed => "PURPOSE_NOT_ALLOWED",
            Self::RefundClawbackForbidden => "REFUND_CLAWBACK_FORBIDDEN",
            Self::SuspectedRefundRecovery => "SUSPECTED_REFUND_RECOVERY",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::AmountAbovePerDebitLimit => "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            Self::AmountNotFixedAmount => "AMOUNT_NOT_FIXED_AMOUNT",
            Self::OutsideCollectionWindow => "OUTSIDE_COLLECTION_WINDOW",
            Self::PreNotificationMissing => "PRE_NOTIFICATION_MISSING",
            Self::DuplicateBillReference => "DUPLICATE_BILL_REFERENCE",
            Self::PeriodAmountLimitExceeded => "PERIOD_AMOUNT_LIMIT_EXCEEDED",
            Self::PeriodCountLimitExceeded => "PERIOD_COUNT_LIMIT_EXCEEDED",
            Self::TotalLimitExceeded => "TOTAL_LIMIT_EXCEEDED",
            Self::OneOffApprovalInvalid => "ONE_OFF_APPROVAL_INVALID",
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub code: ReasonCode,
    pub description: String,
}

impl Violation {
    pub fn new(code: ReasonCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

/// Something compliance should look at in a deduction that was not declined for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeductionFlag {
    /// A debit of a refunded amount, soon after the refund, under a bill never collected or
    /// announced before it (DESIGN §5): perhaps the refund taken back under a new name.
    SuspectedRefundRecovery,
}

impl DeductionFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuspectedRefundRecovery => "SUSPECTED_REFUND_RECOVERY",
        }
    }
}

/// What the merchant asks to collect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitRequest {
    pub amount: Money,
    pub purpose: Purpose,
    pub bill_reference: BillReference,
    pub notice_id: Option<String>,
    pub approval_id: Option<String>,
}

/// Whether this bill (by its canonical key) was collected on this mandate before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillHistory {
    New,
    /// Collected (or being collected) and not refunded.
    Collected,
    /// Collected and then refunded, fully or in part: collecting it again recovers the refund.
    Refunded,
}

impl BillHistory {
    /// What the earlier deductions of one bill (by its canonical key) on one mandate say: any
    /// refunded makes it refunded; else any succeeded or still open makes it collected; declined
    /// and failed ones collected nothing.
    pub fn of(earlier: impl IntoIterator<Item = DeductionStatus>) -> Self {
        let mut bill = Self::New;
        for status in earlier {
            match status {
                DeductionStatus::Refunded | DeductionStatus::PartiallyRefunded => {
                    return Self::Refunded;
                }
                DeductionStatus::Succeeded
                | DeductionStatus::Processing
                | DeductionStatus::PendingConfirmation => bill = Self::Collected,
                DeductionStatus::Declined | DeductionStatus::Failed => {}
            }
        }
        bill
    }
}

/// A notice as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeFacts {
    pub amount: Money,
    pub created_at: Timestamp,
    pub used: bool,
}

/// Usage so far of one limit scope (a period, or the lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub amount_minor: i64,
    pub count: i64,
}

/// A one-off approval as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFacts {
    pub status: ApprovalStatus,
    pub amount: Money,
    pub purpose: Purpose,
    pub bill_reference: BillReference,
    pub expires_at: Timestamp,
}

/// What the suspected-refund-recovery rule reads, for a mandate that refunded within the
/// look-back window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFacts {
    /// The earliest refund on the mandate within the window whose amount, or whose deduction's
    /// refunded total after it, equals the amount asked for.
    pub matching_refund_at: Option<Timestamp>,
    /// When a notice on the mandate first announced this bill.
    pub bill_announced_at: Option<Timestamp>,
    /// The merchant's policy.
    pub policy: RecoveryPolicy,
}

/// Everything besides the mandate that the checks read, all from the deduction's transaction.
#[derive(Debug, Clone)]
pub struct Facts {
    pub now: Timestamp,
    pub bill: BillHistory,
    /// The notice named by the request, if it exists on this mandate.
    pub notice: Option<NoticeFacts>,
    pub period_usage: Usage,
    pub total_usage: Usage,
    /// The approval named by the request, if it exists on this mandate.
    pub approval: Option<ApprovalFacts>,
    /// `None` when the mandate refunded nothing within the look-back window.
    pub recovery: Option<RecoveryFacts>,
}

/// The limit period of the mandate at `at`, as a storage key (`None` without a period).
pub fn period_key(mandate: &Mandate, at: Timestamp) -> Option<String> {
    let limits = mandate.terms.period_limits.as_ref()?;
    let window = period_containing(
        limits.period,
        &mandate.terms.timezone.zone(),
        mandate.terms.valid_from,
        at,
    )?;
    Some(format!("p{}", window.index))
}

/// Where a one-off approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Used,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Used => "USED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Rejected, Self::Used]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The kind of a funding source, as attempts record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SourceKind {
    Wallet,
    BankCard,
}

impl SourceKind {
    pub fn of(instrument: &Instrument) -> Self {
        match instrument {
            Instrument::Wallet => Self::Wallet,
            Instrument::BankCard { .. } => Self::BankCard,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wallet => "WALLET",
            Self::BankCard => "BANK_CARD",
        }
    }
}

/// How one try of one source went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptOutcome {
    Succeeded,
    Declined,
    /// Passed over: the amount is over the source's cap.
    Skipped,
    /// A card charge recorded, the bank not yet answered.
    InFlight,
    /// The bank did not say (a timeout, or PROCESSING).
    Unknown,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Skipped => "SKIPPED",
            Self::InFlight => "IN_FLIGHT",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// One try of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingAttempt {
    pub source_index: usize,
    pub source_kind: SourceKind,
    pub outcome: AttemptOutcome,
    pub reason_code: String,
    /// The bank charge id of a card attempt.
    #[serde(default)]
    pub charge_id: String,
}

/// What the waterfall does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The wallet (this source) pays now.
    Wallet(usize),
    /// This card source is to be charged at the bank.
    Card(usize),
    /// Every source refused: INSUFFICIENT_FUNDS when any lacked money, else the last refusal.
    Failed(String),
}

/// The attempts made on the way, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waterfall {
    pub attempts: Vec<FundingAttempt>,
    pub next: Next,
}

/// Walks the sources in the payer's order from `start` (DESIGN §4.1): a source over its cap is
/// skipped, a wallet that cannot pay is a definite refusal and the walk moves on, the first
/// wallet that can pay pays the whole amount, and a card stops the walk so the bank can be asked
/// (outside any transaction). Without a bank connection a card is a definite refusal
/// (`CARD_NOT_CONNECTED`). `earlier` are the attempts already made, for the failure code.
pub fn waterfall(
    sources: &FundingSources,
    start: usize,
    earlier: &[FundingAttempt],
    amount: &Money,
    wallet_balance_minor: i64,
    cards_connected: bool,
) -> Waterfall {
    let mut attempts = vec![];
    for (index, source) in sources.as_slice().iter().enumerate().skip(start) {
        let attempt = |outcome, reason: &str| FundingAttempt {
            source_index: index,
            source_kind: SourceKind::of(&source.instrument),
            outcome,
            reason_code: reason.to_owned(),
            charge_id: String::new(),
        };
        if source
            .cap_per_debit
            .as_ref()
            .is_some_and(|cap| cap.minor() < amount.minor())
        {
            attempts.push(attempt(AttemptOutcome::Skipped, "OVER_SOURCE_CAP"));
            continue;
        }
        match source.instrument {
            Instrument::Wallet if wallet_balance_minor >= amount.minor() => {
                attempts.push(attempt(AttemptOutcome::Succeeded, ""));
                return Waterfall {
                    attempts,
                    next: Next::Wallet(index),
                };
            }
            Instrument::Wallet => {
                attempts.push(attempt(AttemptOutcome::Declined, "INSUFFICIENT_FUNDS"))
            }
            Instrument::BankCard { .. } if cards_connected => {
                return Waterfall {
                    attempts,
                    next: Next::Card(index),
                };
            }
            Instrument::BankCard { .. } => {
                attempts.push(attempt(AttemptOutcome::Declined, "CARD_NOT_CONNECTED"))
            }
        }
    }
    let all: Vec<&FundingAttempt> = earlier.iter().chain(&attempts).collect();
    let code = failure_code(&all);
    Waterfall {
        attempts,
        next: Next::Failed(code),
    }
}

/// Why every source refused: the last refusal (a DECLINED attempt), else the last reason a
/// source was passed over (over its cap), else that there was no source at all.
pub fn failure_code(attempts: &[&FundingAttempt]) -> String {
    attempts
        .iter()
        .rev()
        .find(|a| a.outcome == AttemptOutcome::Declined)
        .or_else(|| attempts.last())
        .map_or_else(|| "NO_FUNDING_SOURCE".to_owned(), |a| a.reason_code.clone())
}

/// One charge of one card for one deduction: the bank's idempotency key is `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardCharge {
    pub id: String,
    pub deduction_id: String,
    pub mandate_id: MandateId,
    pub merchant_id: MerchantId,
    pub source_index: usize,
    pub card_token: String,
    pub amount: Money,
    pub created_at: Timestamp,
}

/// Where a card charge stands on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChargeStatus {
    /// Recorded before the bank call; the bank has not answered (yet).
    InFlight,
    Succeeded,
    Declined,
    /// The bank timed out or said PROCESSING: it may have taken the money.
    Unknown,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "IN_FLIGHT",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::InFlight,
            Self::Succeeded,
            Self::Declined,
            Self::Unknown,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What the bank said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankOutcome {
    Succeeded,
    Declined(String),
    /// QueryCharge: the bank never received it.
    NotFound,
    /// Timeout, unavailable, or PROCESSING: not known yet.
    Unknown,
}

/// A deduction as stored: the request, the decision and what happened since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduction {
    pub id: String,
    pub mandate_id: MandateId,
    pub merchant_id: MerchantId,
    pub payer_id: PayerId,
    pub request_id: String,
    pub request: DebitRequest,
    pub description: String,
    pub status: DeductionStatus,
    /// The first violation (DECLINED) or the funding refusal (FAILED).
    pub reason_code: Option<String>,
    pub violations: Vec<Violation>,
    pub mandate_version: i64,
    /// What compliance should look at (a suspected refund recovery that was collected).
    #[serde(default)]
    pub flags: Vec<DeductionFlag>,
    pub attempts: Vec<FundingAttempt>,
    pub paid_by: Option<usize>,
    pub refunded_minor: i64,
    /// The usage rows this deduction advanced (released again if it ends FAILED).
    #[serde(default)]
    pub usage_keys: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Why a refund was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    #[error("only a SUCCEEDED or PARTIALLY_REFUNDED deduction can be refunded; this one is {0}")]
    NotRefundable(&'static str),
    #[error("the refund is in {refund}, the deduction in {deduction}")]
    Currency {
        refund: &'static str,
        deduction: &'static str,
    },
    #[error(
        "refunds would total more than the {collected} collected ({refunded} refunded already)"
    )]
    MoreThanCollected { collected: String, refunded: String },
}

impl Deduction {
    /// A deduction of `request` on `mandate` as its decision starts: DECLINED, with no reason,
    /// violation or funding attempt yet.
    pub fn new(
        id: String,
        mandate: &Mandate,
        request_id: String,
        request: DebitRequest,
        description: String,
        at: Timestamp,
    ) -> Self {
        Self {
            id,
            mandate_id: mandate.id.clone(),
            merchant_id: mandate.merchant_id.clone(),
            payer_id: mandate.payer_id.clone(),
            request_id,
            request,
            description,
            status: DeductionStatus::Declined,
            reason_code: None,
            violations: vec![],
            mandate_version: mandate.version,
            flags: vec![],
            attempts: vec![],
            paid_by: None,
            refunded_minor: 0,
            usage_keys: vec![],
            created_at: at,
            updated_at: at,
        }
    }

    /// Whether it counts against the mandate's limits (DESIGN §4 rule 6).
    pub fn counts_against_limits(&self) -> bool {
        matches!(
            self.status,
            DeductionStatus::Succeeded
                | DeductionStatus::Processing
                | DeductionStatus::PendingConfirmation
        )
    }

    /// The attempt that paid, if one did.
    pub fn paid_attempt(&self) -> Option<&FundingAttempt> {
        let paid_by = self.paid_by?;
        self.attempts
            .iter()
            .find(|a| a.source_index == paid_by && a.outcome == AttemptOutcome::Succeeded)
    }

    /// Records a refund of `amount`: never more than collected in total.
    pub fn refund(&mut self, amount: &Money, at: Timestamp) -> Result<(), RefundError> {
        match self.status {
            DeductionStatus::Succeeded | DeductionStatus::PartiallyRefunded => {}
            other => return Err(RefundError::NotRefundable(other.as_str())),
        }
        let collected = &self.request.amount;
        if amount.currency() != collected.currency() {
            return Err(RefundError::Currency {
                refund: amount.currency().code(),
                deduction: collected.currency().code(),
            });
        }
        let total = self
            .refunded_minor
            .checked_add(amount.minor())
            .filter(|t| *t <= collected.minor());
        let Some(total) = total else {
            return Err(RefundError::MoreThanCollected {
                collected: collected.to_string(),
                refunded: format!(
                    "{} {}",
                    Money::minor_text(collected.currency(), self.refunded_minor),
                    collected.currency().code()
                ),
            });
        };
        self.refunded_minor = total;
        self.status = if total == collected.minor() {
            DeductionStatus::Refunded
        } else {
            DeductionStatus::PartiallyRefunded
        };
        self.updated_at = at;
        Ok(())
    }
}

/// A pre-debit notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub id: String,
    pub mandate_id: MandateId,
    pub merchant_id: MerchantId,
    pub payer_id: PayerId,
    pub amount: Money,
    pub due_at: Timestamp,
    pub bill_reference: BillReference,
    pub created_at: Timestamp,
    pub used_by: Option<String>,
}

/// A refund of (part of) a deduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub deduction_id: String,
    pub amount: Money,
    pub reason: String,
    pub created_at: Timestamp,
}

/// The payer's fresh consent to one debit the mandate does not cover (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub mandate_id: MandateId,
    pub merchant_id: MerchantId,
    pub payer_id: PayerId,
    pub declined_deduction_id: String,
    pub amount: Money,
    pub purpose: Purpose,
    pub bill_reference: BillReference,
    pub reason: String,
    pub status: ApprovalStatus,
    pub requested_at: Timestamp,
    pub decided_at: Option<Timestamp>,
    pub expires_at: Timestamp,
    pub used_by: Option<String>,
}

/// Why an approval could not move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the one-off approval is {current}{}", if *.expired { " and has expired" } else { "" })]
pub struct ApprovalError {
    pub current: &'static str,
    pub expired: bool,
}

impl Approval {
    pub fn facts(&self) -> ApprovalFacts {
        ApprovalFacts {
            status: self.status,
            amount: self.amount,
            purpose: self.purpose,
            bill_reference: self.bill_reference.clone(),
            expires_at: self.expires_at,
        }
    }

    /// Whether the payer already decided it the way `approve` asks (an approval since used was
    /// approved): asking again is answered with it as it is, not refused.
    pub fn already_decided(&self, approve: bool) -> bool {
        match self.status {
            ApprovalStatus::Approved | ApprovalStatus::Used => approve,
            ApprovalStatus::Rejected => !approve,
            ApprovalStatus::Pending => false,
        }
    }

    /// PENDING → APPROVED or REJECTED by the payer, before it expires.
    pub fn decide(&mut self, approve: bool, at: Timestamp) -> Result<(), ApprovalError> {
        let expired = at >= self.expires_at;
        if self.status != ApprovalStatus::Pending || expired {
            return Err(ApprovalError {
                current: self.status.as_str(),
                expired,
            });
        }
        self.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        self.decided_at = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jiff::Span;

    use super::*;
    use crate::domain::mandate::MandateStatus;
    use crate::domain::rules::{check, suspected_refund_recovery};

    #[test]
    fn a_bill_is_refunded_once_any_collection_of_it_was_refunded() {
        use DeductionStatus::{Declined, Failed, PartiallyRefunded, Processing, Succeeded};
        assert_eq!(BillHistory::of([]), BillHistory::New);
        assert_eq!(BillHistory::of([Declined, Failed]), BillHistory::New);
        assert_eq!(
            BillHistory::of([Failed, Processing]),
            BillHistory::Collected
        );
        assert_eq!(
            BillHistory::of([Succeeded, PartiallyRefunded, Succeeded]),
            BillHistory::Refunded
        );
    }
    use crate::domain::ids::ContractId;
    use crate::domain::mandate::NewMandate;
    use crate::domain::terms::tests::{cny, sample_terms};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request(amount: &str, bill: &str) -> DebitRequest {
        DebitRequest {
            amount: cny(amount),
            purpose: Purpose::Utility,
            bill_reference: BillReference::parse("bill_reference", bill).unwrap(),
            notice_id: None,
            approval_id: None,
        }
    }

    fn facts(now: Timestamp) -> Facts {
        Facts {
            now,
            bill: BillHistory::New,
            notice: None,
            period_usage: Usage::default(),
            total_usage: Usage::default(),
            approval: None,
            recovery: None,
        }
    }

    fn active_mandate() -> Mandate {
        let mut m = Mandate::create(
            NewMandate {
                id: MandateId::generate(),
                merchant_id: MerchantId::parse("m", "m1").unwrap(),
                contract_id: ContractId::parse("c", "c1").unwrap(),
                payer_id: PayerId::parse("p", "p1").unwrap(),
                terms: sample_terms(),
            },
            at("2026-01-02T00:00:00Z"),
            Span::new().hours(24),
        )
        .unwrap();
        m.status = MandateStatus::Active;
        m
    }

    fn attempt(outcome: AttemptOutcome, reason: &str) -> FundingAttempt {
        FundingAttempt {
            source_index: 0,
            source_kind: SourceKind::Wallet,
            outcome,
            reason_code: reason.into(),
            charge_id: String::new(),
        }
    }

    #[test]
    fn a_failure_reports_the_last_refusal() {
        let poor = attempt(AttemptOutcome::Declined, "INSUFFICIENT_FUNDS");
        let dnh = attempt(AttemptOutcome::Declined, "DO_NOT_HONOUR");
        let skipped = attempt(AttemptOutcome::Skipped, "OVER_SOURCE_CAP");
        assert_eq!(failure_code(&[&poor, &dnh]), "DO_NOT_HONOUR");
        assert_eq!(failure_code(&[&dnh, &poor]), "INSUFFICIENT_FUNDS");
        assert_eq!(failure_code(&[&poor, &skipped]), "INSUFFICIENT_FUNDS");
        assert_eq!(failure_code(&[&skipped]), "OVER_SOURCE_CAP");
        assert_eq!(failure_code(&[]), "NO_FUNDING_SOURCE");
    }

    #[test]
    fn a_lifetime_total_past_64_bits_is_over_the_limit() {
        let mandate = active_mandate();
        let now = at("2026-03-01T00:00:00Z");
        let mut full = facts(now);
        full.total_usage.amount_minor = i64::MAX - 100;
        let codes: Vec<ReasonCode> = check(&mandate, &request("1.01", "b-1"), &full)
            .into_iter()
            .map(|v| v.code)
            .collect();
        assert!(codes.contains(&ReasonCode::TotalLimitExceeded), "{codes:?}");
        assert!(check(&mandate, &request("1.00", "b-1"), &full).is_empty());
    }

    #[test]
    fn suspicion_needs_a_matching_refund_a_new_bill_and_no_earlier_notice() {
        let now = at("2026-03-10T00:00:00Z");
        let refund_at = at("2026-03-05T00:00:00Z");
        let suspected = |bill: BillHistory, announced: Option<&str>, approval: bool| {
            let mut f = facts(now);
            f.bill = bill;
            f.recovery = Some(RecoveryFacts {
                matching_refund_at: Some(refund_at),
                bill_announced_at: announced.map(at),
                policy: RecoveryPolicy::Flag,
            });
            let mut r = request("10.00", "b-new");
            if approval {
                r.approval_id = Some("apv-1".into());
            }
            suspected_refund_recovery(&r, &f)
        };
        assert!(suspected(BillHistory::New, None, false));
        assert!(suspected(
            BillHistory::New,
            Some("2026-03-06T00:00:00Z"),
            false
        ));
        assert!(!suspected(
            BillHistory::New,
            Some("2026-03-04T00:00:00Z"),
            false
        ));
        assert!(!suspected(BillHistory::Collected, None, false));
        assert!(!suspected(BillHistory::New, None, true));
        let mut no_match = facts(now);
        no_match.recovery = Some(RecoveryFacts {
            matching_refund_at: None,
            bill_announced_at: None,
            policy: RecoveryPolicy::Decline,
        });
        assert!(!suspected_refund_recovery(
            &request("10.00", "b"),
            &no_match
        ));
        assert!(!suspected_refund_recovery(
            &request("10.00", "b"),
            &facts(now)
        ));
    }
}
