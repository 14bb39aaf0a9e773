//! Deductions (DESIGN §4, §5): the checks a debit must pass, in order, with a reason code for
//! each; the clawback rule; one-off approvals; the funding waterfall over the payer's sources.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::bill::BillReference;
use super::funding::{FundingSources, Instrument};
use super::ids::{MandateId, MerchantId, PayerId};
use super::mandate::{Mandate, MandateStatus};
use super::money::Money;
use super::period::{day_of_unit, period_containing};
use super::policy::RecoveryPolicy;
use super::terms::{AmountType, Purpose};

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

fn violation(code: ReasonCode, description: impl Into<String>) -> Violation {
    Violation {
        code,
        description: description.into(),
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

/// Whether the debit is suspected of recovering a refund (DESIGN §5): on a mandate that
/// refunded the amount asked for within the look-back window, under a bill never collected on
/// it, and not announced by a notice before that refund. A debit under a one-off approval is the
/// payer's own consent and is never suspected; one whose purpose is refund recovery, or whose
/// bill was refunded, is declined as a clawback outright.
pub fn suspected_refund_recovery(request: &DebitRequest, facts: &Facts) -> bool {
    let Some(recovery) = &facts.recovery else {
        return false;
    };
    let Some(refund_at) = recovery.matching_refund_at else {
        return false;
    };
    request.approval_id.is_none()
        && request.purpose != Purpose::RefundRecovery
        && facts.bill == BillHistory::New
        && recovery
            .bill_announced_at
            .is_none_or(|announced| announced > refund_at)
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

/// Every rule of DESIGN §4 (1–6) the request breaks, in that order. Empty means allowed.
///
/// With a one-off approval, the approval stands in for the mandate's scope and limits (rules
/// 2–6): it must be APPROVED, unexpired and for exactly this amount, purpose and bill.
pub fn check(mandate: &Mandate, request: &DebitRequest, facts: &Facts) -> Vec<Violation> {
    let mut out = vec![];
    let terms = &mandate.terms;
    let now = facts.now;

    // 1. Status and validity.
    match mandate.status {
        MandateStatus::Active => {}
        MandateStatus::Expired => out.push(violation(
            ReasonCode::MandateExpired,
            "the mandate has expired",
        )),
        other => out.push(violation(
            ReasonCode::MandateNotActive,
            format!("the mandate is {other}"),
        )),
    }
    if now < terms.valid_from {
        out.push(violation(
            ReasonCode::MandateNotYetValid,
            "the mandate is not valid yet",
        ));
    }
    if terms.valid_until.is_some_and(|until| now >= until)
        && mandate.status != MandateStatus::Expired
    {
        out.push(violation(
            ReasonCode::MandateExpired,
            "the mandate's validity has ended",
        ));
    }

    if request.approval_id.is_some() {
        out.extend(check_approval(request, facts));
        return out;
    }

    // 2. Purpose, and the clawback rule in both of its forms.
    if request.purpose == Purpose::RefundRecovery {
        out.push(violation(
            ReasonCode::RefundClawbackForbidden,
            "recovering a refund needs the payer's one-off approval",
        ));
    } else if facts.bill == BillHistory::Refunded {
        out.push(violation(
            ReasonCode::RefundClawbackForbidden,
            "this bill was collected and refunded; collecting it again recovers the refund",
        ));
    } else if !terms.purposes.contains(&request.purpose) {
        out.push(violation(
            ReasonCode::PurposeNotAllowed,
            "the mandate does not allow this purpose",
        ));
    }
    if suspected_refund_recovery(request, facts)
        && facts
            .recovery
            .as_ref()
            .is_some_and(|r| r.policy == RecoveryPolicy::Decline)
    {
        out.push(violation(
            ReasonCode::SuspectedRefundRecovery,
            "a refunded amount, soon after the refund, under a bill never collected or announced: \
             collecting it needs the payer's one-off approval",
        ));
    }

    // 3. Currency and amount rule.
    let amount = &request.amount;
    if amount.currency() != terms.currency {
        out.push(violation(
            ReasonCode::CurrencyMismatch,
            format!("the mandate collects {}", terms.currency.code()),
        ));
    } else {
        match terms.amount_type {
            AmountType::Fixed if *amount != terms.per_debit_limit => out.push(violation(
                ReasonCode::AmountNotFixedAmount,
                format!("the mandate collects exactly {}", terms.per_debit_limit),
            )),
            AmountType::Maximum if amount.minor() > terms.per_debit_limit.minor() => {
                out.push(violation(
                    ReasonCode::AmountAbovePerDebitLimit,
                    format!(
                        "the mandate collects at most {} a debit",
                        terms.per_debit_limit
                    ),
                ))
            }
            AmountType::Fixed | AmountType::Maximum => {}
        }
    }

    // 4. Collection window and pre-debit notice.
    if let (Some(window), Some(limits)) = (&terms.collection_window, &terms.period_limits) {
        let day = day_of_unit(limits.period.unit, &terms.timezone.zone(), now);
        if day.abs_diff(window.day_of_period) > window.tolerance_days {
            out.push(violation(
                ReasonCode::OutsideCollectionWindow,
                format!(
                    "collections are on day {} ± {} of the period",
                    window.day_of_period, window.tolerance_days
                ),
            ));
        }
    }
    if let Some(rule) = &terms.pre_notification {
        let covered = facts.notice.as_ref().is_some_and(|n| {
            !n.used
                && n.amount.currency() == amount.currency()
                && n.amount.minor() >= amount.minor()
                && n.created_at.as_second().saturating_add(rule.lead_time_s) <= now.as_second()
        });
        if !covered {
            out.push(violation(
                ReasonCode::PreNotificationMissing,
                format!(
                    "needs an unused notice covering the amount, made at least {} s before",
                    rule.lead_time_s
                ),
            ));
        }
    }

    // 5. A bill is collected once.
    if facts.bill == BillHistory::Collected {
        out.push(violation(
            ReasonCode::DuplicateBillReference,
            "this bill was already collected on this mandate",
        ));
    }

    // 6. Period and lifetime limits, counting what is collected or still in flight.
    if amount.currency() == terms.currency {
        let minor = amount.minor();
        if let Some(limits) = &terms.period_limits {
            if let Some(limit) = &limits.amount_limit
                && facts.period_usage.amount_minor.saturating_add(minor) > limit.minor()
            {
                out.push(violation(
                    ReasonCode::PeriodAmountLimitExceeded,
                    format!("at most {limit} a period"),
                ));
            }
            if let Some(limit) = limits.debit_limit
                && facts.period_usage.count.saturating_add(1) > i64::from(limit)
            {
                out.push(violation(
                    ReasonCode::PeriodCountLimitExceeded,
                    format!("at most {limit} debits a period"),
                ));
            }
        }
        // A lifetime total that would not fit the usage counter is over any limit there is.
        let over_amount = match facts.total_usage.amount_minor.checked_add(minor) {
            Some(total) => terms
                .total_amount_limit
                .as_ref()
                .is_some_and(|limit| total > limit.minor()),
            None => true,
        };
        let over_count = terms
            .total_debit_limit
            .is_some_and(|limit| facts.total_usage.count.saturating_add(1) > i64::from(limit));
        if over_amount || over_count {
            out.push(violation(
                ReasonCode::TotalLimitExceeded,
                "the mandate's lifetime limit is used up",
            ));
        }
    }
    out
}

fn check_approval(request: &DebitRequest, facts: &Facts) -> Vec<Violation> {
    let problem = match &facts.approval {
        None => Some("no such one-off approval on this mandate"),
        Some(a) if a.status != ApprovalStatus::Approved => {
            Some("the one-off approval is not approved, or was used")
        }
        Some(a) if facts.now >= a.expires_at => Some("the one-off approval has expired"),
        Some(a)
            if a.amount != request.amount
                || a.purpose != request.purpose
                || a.bill_reference.key() != request.bill_reference.key() =>
        {
            Some("the deduction differs from what the payer approved")
        }
        Some(_) => None,
    };
    problem
        .map(|p| violation(ReasonCode::OneOffApprovalInvalid, p))
        .into_iter()
        .collect()
}

/// Whether a successful debit of `amount` after `usage` leaves nothing more to collect, so the
/// mandate is consumed.
pub fn consumes_mandate(mandate: &Mandate, total_after: Usage) -> bool {
    let terms = &mandate.terms;
    terms.single_use
        || terms
            .total_debit_limit
            .is_some_and(|limit| total_after.count >= i64::from(limit))
        || terms
            .total_amount_limit
            .as_ref()
            .is_some_and(|limit| total_after.amount_minor >= limit.minor())
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

/// One try of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingAttempt {
    pub source_index: usize,
    pub source_kind: String,
    /// SUCCEEDED, DECLINED, SKIPPED (over the source's cap) or UNKNOWN (the bank did not say).
    pub outcome: String,
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
        let kind = match source.instrument {
            Instrument::Wallet => "WALLET",
            Instrument::BankCard { .. } => "BANK_CARD",
        };
        let attempt = |outcome: &str, reason: &str| FundingAttempt {
            source_index: index,
            source_kind: kind.to_owned(),
            outcome: outcome.to_owned(),
            reason_code: reason.to_owned(),
            charge_id: String::new(),
        };
        if source
            .cap_per_debit
            .as_ref()
            .is_some_and(|cap| cap.minor() < amount.minor())
        {
            attempts.push(attempt("SKIPPED", "OVER_SOURCE_CAP"));
            continue;
        }
        match source.instrument {
            Instrument::Wallet if wallet_balance_minor >= amount.minor() => {
                attempts.push(attempt("SUCCEEDED", ""));
                return Waterfall {
                    attempts,
                    next: Next::Wallet(index),
                };
            }
            Instrument::Wallet => attempts.push(attempt("DECLINED", "INSUFFICIENT_FUNDS")),
            Instrument::BankCard { .. } if cards_connected => {
                return Waterfall {
                    attempts,
                    next: Next::Card(index),
                };
            }
            Instrument::BankCard { .. } => attempts.push(attempt("DECLINED", "CARD_NOT_CONNECTED")),
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
        .find(|a| a.outcome == "DECLINED")
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

    fn attempt(outcome: &str, reason: &str) -> FundingAttempt {
        FundingAttempt {
            source_index: 0,
            source_kind: "WALLET".into(),
            outcome: outcome.into(),
            reason_code: reason.into(),
            charge_id: String::new(),
        }
    }

    #[test]
    fn a_failure_reports_the_last_refusal() {
        let poor = attempt("DECLINED", "INSUFFICIENT_FUNDS");
        let dnh = attempt("DECLINED", "DO_NOT_HONOUR");
        let skipped = attempt("SKIPPED", "OVER_SOURCE_CAP");
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
