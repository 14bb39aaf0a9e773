//! The model of one mandate, its period usage and the wallet, which predicts every answer.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::scenario::{LimitChange, Purpose};
use crate::harness::*;

use pb::DeductionStatus as D;
use pb::MandateStatus as S;

pub(super) fn cny(minor: i64) -> Option<pb::Money> {
    money(&fmt_minor(minor))
}

/// "12.3", "12.30" and "12" as minor units of a two-decimal currency.
pub(super) fn parse_minor(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').unwrap_or((amount, ""));
    assert!(cents.len() <= 2, "amount {amount:?}");
    let cents = format!("{cents:0<2}");
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

pub(super) fn money_minor(m: &Option<pb::Money>) -> i64 {
    let m = m.as_ref().expect("money");
    assert_eq!(m.currency_code, "CNY");
    parse_minor(&m.amount)
}

pub(super) fn timestamp(t: &Option<prost_types::Timestamp>) -> Timestamp {
    let t = t.as_ref().expect("timestamp");
    Timestamp::new(t.seconds, t.nanos).unwrap()
}

/// The Asia/Shanghai calendar month of an instant: the mandate's limit period.
pub(super) fn month(at: Timestamp) -> (i16, i8) {
    let zoned = at.to_zoned_datetime(TimeZone::get("Asia/Shanghai").unwrap());
    (zoned.year(), zoned.month())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) per_debit: i64,
    pub(super) period_amount: Option<i64>,
    pub(super) period_count: Option<u32>,
}

impl Limits {
    pub(super) fn of(terms: &pb::MandateTerms) -> Self {
        Self {
            per_debit: money_minor(&terms.per_debit_limit),
            period_amount: terms
                .period_amount_limit
                .as_ref()
                .map(|m| parse_minor(&m.amount)),
            period_count: terms.period_debit_limit,
        }
    }

    pub(super) fn with(self, change: LimitChange) -> Self {
        match change {
            LimitChange::PerDebit(v) => Self {
                per_debit: v,
                ..self
            },
            LimitChange::PeriodAmount(v) => Self {
                period_amount: Some(v),
                ..self
            },
            LimitChange::PeriodCount(v) => Self {
                period_count: Some(v),
                ..self
            },
        }
    }

    /// The terms in force with these limits instead.
    pub(super) fn apply(self, terms: &pb::MandateTerms) -> pb::MandateTerms {
        pb::MandateTerms {
            per_debit_limit: cny(self.per_debit),
            period_amount_limit: self.period_amount.map(|m| cny(m).unwrap()),
            period_debit_limit: self.period_count,
            ..terms.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Amendment {
    Unchanged,
    Tightening,
    Loosening,
}

pub(super) fn classify(old: Limits, new: Limits) -> Amendment {
    let narrower = new.per_debit <= old.per_debit
        && le(new.period_amount, old.period_amount)
        && le(new.period_count, old.period_count);
    if new == old {
        Amendment::Unchanged
    } else if narrower {
        Amendment::Tightening
    } else {
        Amendment::Loosening
    }
}

fn le<T: PartialOrd>(new: Option<T>, old: Option<T>) -> bool {
    match (new, old) {
        (_, None) => true,
        (Some(n), Some(o)) => n <= o,
        (None, Some(_)) => false,
    }
}

#[derive(Debug, Clone)]
pub(super) struct Debit {
    pub(super) id: String,
    pub(super) minor: i64,
    pub(super) bill: String,
    pub(super) status: D,
    pub(super) refunded: i64,
    pub(super) created_at: Timestamp,
    /// The limits in force when it was decided.
    pub(super) limits: Limits,
}

/// Whether a debit of this status was approved (and so used up limits: refunds give nothing
/// back).
pub(super) fn approved(status: D) -> bool {
    matches!(
        status,
        D::Succeeded | D::Processing | D::PendingConfirmation | D::Refunded | D::PartiallyRefunded
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bill {
    New,
    Collected,
    Refunded,
}

pub(super) struct Model {
    pub(super) now: Timestamp,
    pub(super) elapsed_s: i64,
    pub(super) status: S,
    pub(super) version: i64,
    pub(super) limits: Limits,
    pub(super) pending: Option<Limits>,
    pub(super) single_use: bool,
    pub(super) wallet_cap: Option<i64>,
    pub(super) wallet: i64,
    pub(super) debits: Vec<Debit>,
    /// Per Shanghai month: amount and count of approved debits.
    pub(super) usage: BTreeMap<(i16, i8), (i64, i64)>,
}

/// What the model expects of a debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expected {
    pub(super) status: D,
    pub(super) reason: String,
    pub(super) violations: Vec<String>,
    pub(super) attempts: Vec<(u32, String, String, String)>,
    pub(super) paid_by: Option<u32>,
}

impl Model {
    fn bill(&self, bill: &str) -> Bill {
        let mut out = Bill::New;
        for d in self.debits.iter().filter(|d| d.bill == bill) {
            match d.status {
                D::Refunded | D::PartiallyRefunded => out = Bill::Refunded,
                D::Succeeded | D::Processing | D::PendingConfirmation if out == Bill::New => {
                    out = Bill::Collected;
                }
                _ => {}
            }
        }
        out
    }

    /// DESIGN §4 rules 1–6 in order, then the waterfall: wallet (maybe capped), then a card
    /// that is not connected.
    pub(super) fn expect_debit(&self, minor: i64, bill: &str, purpose: Purpose) -> Expected {
        let mut violations: Vec<&str> = vec![];
        match self.status {
            S::Active => {}
            S::Expired => violations.push("MANDATE_EXPIRED"),
            _ => violations.push("MANDATE_NOT_ACTIVE"),
        }
        let history = self.bill(bill);
        if purpose == Purpose::RefundRecovery || history == Bill::Refunded {
            violations.push("REFUND_CLAWBACK_FORBIDDEN");
        } else if purpose != Purpose::Utility {
            violations.push("PURPOSE_NOT_ALLOWED");
        }
        if minor > self.limits.per_debit {
            violations.push("AMOUNT_ABOVE_PER_DEBIT_LIMIT");
        }
        if history == Bill::Collected {
            violations.push("DUPLICATE_BILL_REFERENCE");
        }
        let (used_amount, used_count) = self
            .usage
            .get(&month(self.now))
            .copied()
            .unwrap_or_default();
        if self
            .limits
            .period_amount
            .is_some_and(|l| used_amount + minor > l)
        {
            violations.push("PERIOD_AMOUNT_LIMIT_EXCEEDED");
        }
        if self
            .limits
            .period_count
            .is_some_and(|l| used_count + 1 > i64::from(l))
        {
            violations.push("PERIOD_COUNT_LIMIT_EXCEEDED");
        }
        let (status, reason, attempts, paid_by) = if let Some(first) = violations.first() {
            (D::Declined, *first, vec![], None)
        } else {
            let card = (1, "BANK_CARD", "DECLINED", "CARD_NOT_CONNECTED");
            if self.wallet_cap.is_some_and(|cap| cap < minor) {
                let skipped = (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP");
                (D::Failed, "CARD_NOT_CONNECTED", vec![skipped, card], None)
            } else if self.wallet >= minor {
                (
                    D::Succeeded,
                    "",
                    vec![(0, "WALLET", "SUCCEEDED", "")],
                    Some(0),
                )
            } else {
                let short = (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS");
                (D::Failed, "CARD_NOT_CONNECTED", vec![short, card], None)
            }
        };
        Expected {
            status,
            reason: reason.to_owned(),
            violations: violations.into_iter().map(str::to_owned).collect(),
            attempts: attempts
                .into_iter()
                .map(|(i, kind, outcome, code)| {
                    (i, kind.to_owned(), outcome.to_owned(), code.to_owned())
                })
                .collect(),
            paid_by,
        }
    }
}
