//! A deduction's decision as a value (DESIGN §4, §5): the rules, then the funding waterfall,
//! from the mandate, the facts read for it under its lock, and the request; and what a bank's
//! answer about a card charge decides next. Nothing here reads or writes anything: the service
//! records a decision (its deduction, audit events and writes) and storage applies it.

use super::deduction::{
    AttemptOutcome, BankOutcome, ChargeStatus, DebitRequest, Facts, FundingAttempt, Next, Usage,
    Violation, waterfall,
};
use super::mandate::Mandate;
use super::money::Money;
use super::rules::{check, consumes_mandate, suspected_refund_recovery};

/// What a new deduction is decided on.
pub struct Inputs<'a> {
    pub mandate: &'a Mandate,
    pub request: &'a DebitRequest,
    pub facts: &'a Facts,
    pub wallet_balance_minor: i64,
    /// Whether the service can reach a bank to charge cards.
    pub cards_connected: bool,
}

/// Where funding stands after walking the payer's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Funding {
    /// The wallet at `source` paid; `consumes` when this debit leaves the mandate nothing more
    /// to collect.
    Paid { source: usize, consumes: bool },
    /// The card at `source` is to be charged at the bank, outside any transaction.
    ChargeCard { source: usize },
    /// Every source refused, for `code`.
    Failed { code: String },
}

/// Funding, with the attempts made on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Funded {
    pub attempts: Vec<FundingAttempt>,
    pub funding: Funding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Refused by the rules (in their order): nothing is reserved and nothing moves.
    Declined { violations: Vec<Violation> },
    /// Allowed by the rules, and funded (or to be) as `funded` says.
    Approved(Funded),
}

/// A new deduction's decision and what comes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub decision: Decision,
    /// Suspected of recovering a refund (DESIGN §5): flagged, whether collected or declined.
    pub suspected_recovery: bool,
    /// Whether the debit counts against the mandate's limits (not under a one-off approval,
    /// which is the payer's own consent).
    pub counted: bool,
}

/// Decides a new deduction: every rule, then (if none is broken) the waterfall from the first
/// source.
pub fn decide(inputs: &Inputs<'_>) -> Decided {
    let Inputs {
        mandate,
        request,
        facts,
        ..
    } = inputs;
    let suspected_recovery = suspected_refund_recovery(request, facts);
    let counted = request.approval_id.is_none();
    let violations = check(mandate, request, facts);
    let decision = if violations.is_empty() {
        let total_after = if counted {
            usage_after(facts.total_usage, &request.amount)
        } else {
            facts.total_usage
        };
        let walk = Walk {
            mandate,
            amount: &request.amount,
            wallet_balance_minor: inputs.wallet_balance_minor,
            cards_connected: inputs.cards_connected,
            consumes_if_paid: counted && consumes_mandate(mandate, total_after),
        };
        Decision::Approved(walk.from(0, &[]))
    } else {
        Decision::Declined { violations }
    };
    Decided {
        decision,
        suspected_recovery,
        counted,
    }
}

/// Usage after one more debit of `amount` (saturating: the limits refuse long before).
fn usage_after(usage: Usage, amount: &Money) -> Usage {
    Usage {
        amount_minor: usage.amount_minor.saturating_add(amount.minor()),
        count: usage.count.saturating_add(1),
    }
}

/// One walk of the payer's sources for one debit.
pub struct Walk<'a> {
    pub mandate: &'a Mandate,
    pub amount: &'a Money,
    pub wallet_balance_minor: i64,
    pub cards_connected: bool,
    /// Whether a payment now consumes the mandate (judged on usage after this debit).
    pub consumes_if_paid: bool,
}

impl Walk<'_> {
    /// Walks from source `start`; `earlier` are the attempts already made (for the failure
    /// code). A mandate without sources (never confirmed) fails with `NO_FUNDING_SOURCE`.
    pub fn from(&self, start: usize, earlier: &[FundingAttempt]) -> Funded {
        let Some(sources) = self.mandate.funding_sources.as_ref() else {
            return Funded {
                attempts: vec![],
                funding: Funding::Failed {
                    code: "NO_FUNDING_SOURCE".into(),
                },
            };
        };
        let plan = waterfall(
            sources,
            start,
            earlier,
            self.amount,
            self.wallet_balance_minor,
            self.cards_connected,
        );
        let funding = match plan.next {
            Next::Wallet(source) => Funding::Paid {
                source,
                consumes: self.consumes_if_paid,
            },
            Next::Card(source) => Funding::ChargeCard { source },
            Next::Failed(code) => Funding::Failed { code },
        };
        Funded {
            attempts: plan.attempts,
            funding,
        }
    }
}

/// What a card charge's settlement is decided on, read under the mandate's lock.
pub struct ChargeInputs<'a> {
    pub mandate: &'a Mandate,
    /// The charge's status as stored now.
    pub status: ChargeStatus,
    /// The charge's source and id, and the deduction's attempts so far.
    pub source_index: usize,
    pub charge_id: &'a str,
    pub attempts: &'a [FundingAttempt],
    pub amount: &'a Money,
    /// Whether the debit counts against the mandate's limits.
    pub counted: bool,
    /// Lifetime usage, this debit's reservation included.
    pub total_usage: Usage,
    pub wallet_balance_minor: i64,
    pub cards_connected: bool,
}

/// What a bank's answer about a card charge decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBank {
    /// The card paid; `consumes` as for a wallet.
    Paid { consumes: bool },
    /// The card refused definitely, for `code`: funding goes on from the next source when the
    /// charge was in flight, and fails when it had been left unknown (`then`).
    Declined { code: String, then: Funded },
    /// The bank never received the charge: nothing was taken, and the deduction fails.
    NotFound,
    /// The bank still does not say.
    Unknown,
}

/// Decides what the bank's `outcome` changes; `None` when the charge was settled already.
pub fn after_bank(inputs: &ChargeInputs<'_>, outcome: &BankOutcome) -> Option<AfterBank> {
    if matches!(
        inputs.status,
        ChargeStatus::Succeeded | ChargeStatus::Declined
    ) {
        return None;
    }
    Some(match outcome {
        BankOutcome::Succeeded => AfterBank::Paid {
            consumes: inputs.counted && consumes_mandate(inputs.mandate, inputs.total_usage),
        },
        BankOutcome::Declined(code) => {
            let mut attempts = inputs.attempts.to_vec();
            mark_attempt(
                &mut attempts,
                inputs.charge_id,
                AttemptOutcome::Declined,
                code,
            );
            let then = if inputs.status == ChargeStatus::InFlight {
                // A definite refusal moves on to the next source.
                let walk = Walk {
                    mandate: inputs.mandate,
                    amount: inputs.amount,
                    wallet_balance_minor: inputs.wallet_balance_minor,
                    cards_connected: inputs.cards_connected,
                    consumes_if_paid: inputs.counted
                        && consumes_mandate(inputs.mandate, inputs.total_usage),
                };
                walk.from(inputs.source_index + 1, &attempts)
            } else {
                // A charge left unknown that turned out refused ends the deduction.
                Funded {
                    attempts: vec![],
                    funding: Funding::Failed { code: code.clone() },
                }
            };
            AfterBank::Declined {
                code: code.clone(),
                then,
            }
        }
        BankOutcome::NotFound => AfterBank::NotFound,
        BankOutcome::Unknown => AfterBank::Unknown,
    })
}

/// Records how the attempt of charge `charge_id` went.
pub fn mark_attempt(
    attempts: &mut [FundingAttempt],
    charge_id: &str,
    outcome: AttemptOutcome,
    reason: &str,
) {
    if let Some(attempt) = attempts.iter_mut().find(|a| a.charge_id == charge_id) {
        attempt.outcome = outcome;
        reason.clone_into(&mut attempt.reason_code);
    }
}
