//! The rules a debit is checked against (DESIGN §4 and §5): one function per rule, in the
//! order `check` applies them, the clawback rule among them; and when a debit consumes its
//! mandate.

use jiff::Timestamp;

use super::deduction::{
    ApprovalStatus, BillHistory, DebitRequest, Facts, ReasonCode, Usage, Violation,
};
use super::mandate::{Mandate, MandateStatus};
use super::money::Money;
use super::period::day_of_unit;
use super::policy::RecoveryPolicy;
use super::terms::{AmountType, Purpose, Terms};

/// Every rule of DESIGN §4 (1–6) the request breaks, in that order. Empty means allowed.
///
/// With a one-off approval, the approval stands in for the mandate's scope and limits (rules
/// 2–6): it must be APPROVED, unexpired and for exactly this amount, purpose and bill.
pub fn check(mandate: &Mandate, request: &DebitRequest, facts: &Facts) -> Vec<Violation> {
    let mut out = vec![];
    status_and_validity(mandate, facts.now, &mut out);
    if request.approval_id.is_some() {
        out.extend(check_approval(request, facts));
        return out;
    }
    purpose_and_clawback(mandate, request, facts, &mut out);
    amount(&mandate.terms, &request.amount, &mut out);
    window_and_notice(&mandate.terms, &request.amount, facts, &mut out);
    bill_once(facts, &mut out);
    usage_limits(&mandate.terms, &request.amount, facts, &mut out);
    out
}

/// Rule 1: the mandate is ACTIVE and within its validity.
fn status_and_validity(mandate: &Mandate, now: Timestamp, out: &mut Vec<Violation>) {
    let terms = &mandate.terms;
    match mandate.status {
        MandateStatus::Active => {}
        MandateStatus::Expired => out.push(Violation::new(
            ReasonCode::MandateExpired,
            "the mandate has expired",
        )),
        other => out.push(Violation::new(
            ReasonCode::MandateNotActive,
            format!("the mandate is {other}"),
        )),
    }
    if now < terms.valid_from {
        out.push(Violation::new(
            ReasonCode::MandateNotYetValid,
            "the mandate is not valid yet",
        ));
    }
    if terms.valid_until.is_some_and(|until| now >= until)
        && mandate.status != MandateStatus::Expired
    {
        out.push(Violation::new(
            ReasonCode::MandateExpired,
            "the mandate's validity has ended",
        ));
    }
}

/// Rule 2: the purpose is allowed, and no use recovers a refund: not the refund-recovery purpose,
/// not a refunded bill again, nor (under a `decline` policy) a suspected refund recovery.
fn purpose_and_clawback(
    mandate: &Mandate,
    request: &DebitRequest,
    facts: &Facts,
    out: &mut Vec<Violation>,
) {
    let terms = &mandate.terms;
    if request.purpose == Purpose::RefundRecovery {
        out.push(Violation::new(
            ReasonCode::RefundClawbackForbidden,
            "recovering a refund needs the payer's one-off approval",
        ));
    } else if facts.bill == BillHistory::Refunded {
        out.push(Violation::new(
            ReasonCode::RefundClawbackForbidden,
            "this bill was collected and refunded; collecting it again recovers the refund",
        ));
    } else if !terms.purposes.contains(&request.purpose) {
        out.push(Violation::new(
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
        out.push(Violation::new(
            ReasonCode::SuspectedRefundRecovery,
            "a refunded amount, soon after the refund, under a bill never collected or announced: \
             collecting it needs the payer's one-off approval",
        ));
    }
}

/// Rule 3: the mandate's currency, and its amount rule (fixed, or at most the per-debit limit).
fn amount(terms: &Terms, amount: &Money, out: &mut Vec<Violation>) {
    if amount.currency() != terms.currency {
        out.push(Violation::new(
            ReasonCode::CurrencyMismatch,
            format!("the mandate collects {}", terms.currency.code()),
        ));
    } else {
        match terms.amount_type {
            AmountType::Fixed if *amount != terms.per_debit_limit => out.push(Violation::new(
                ReasonCode::AmountNotFixedAmount,
                format!("the mandate collects exactly {}", terms.per_debit_limit),
            )),
            AmountType::Maximum if amount.minor() > terms.per_debit_limit.minor() => {
                out.push(Violation::new(
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
}

/// Rule 4: within the collection window, and announced by a notice where the mandate needs one.
fn window_and_notice(terms: &Terms, amount: &Money, facts: &Facts, out: &mut Vec<Violation>) {
    let now = facts.now;
    if let (Some(window), Some(limits)) = (&terms.collection_window, &terms.period_limits) {
        let day = day_of_unit(limits.period.unit, &terms.timezone.zone(), now);
        if day.abs_diff(window.day_of_period) > window.tolerance_days {
            out.push(Violation::new(
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
            out.push(Violation::new(
                ReasonCode::PreNotificationMissing,
                format!(
                    "needs an unused notice covering the amount, made at least {} s before",
                    rule.lead_time_s
                ),
            ));
        }
    }
}

/// Rule 5: a bill is collected once.
fn bill_once(facts: &Facts, out: &mut Vec<Violation>) {
    if facts.bill == BillHistory::Collected {
        out.push(Violation::new(
            ReasonCode::DuplicateBillReference,
            "this bill was already collected on this mandate",
        ));
    }
}

/// Rule 6: period and lifetime limits, counting what is collected or still in flight.
fn usage_limits(terms: &Terms, amount: &Money, facts: &Facts, out: &mut Vec<Violation>) {
    if amount.currency() == terms.currency {
        let minor = amount.minor();
        if let Some(limits) = &terms.period_limits {
            if let Some(limit) = &limits.amount_limit
                && facts.period_usage.amount_minor.saturating_add(minor) > limit.minor()
            {
                out.push(Violation::new(
                    ReasonCode::PeriodAmountLimitExceeded,
                    format!("at most {limit} a period"),
                ));
            }
            if let Some(limit) = limits.debit_limit
                && facts.period_usage.count.saturating_add(1) > i64::from(limit)
            {
                out.push(Violation::new(
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
            out.push(Violation::new(
                ReasonCode::TotalLimitExceeded,
                "the mandate's lifetime limit is used up",
            ));
        }
    }
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
        .map(|p| Violation::new(ReasonCode::OneOffApprovalInvalid, p))
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
