//! A decision recorded: the deduction as it now stands, its audit events in order, and the
//! writes storage applies in the decision's transaction. The decisions themselves are the
//! domain's (`domain::decision`); this turns each into what is kept of it.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{DeductionSettings, new_id};
use crate::domain::actor::Actor;
use crate::domain::audit::AuditDraft;
use crate::domain::decision::{AfterBank, Decided, Decision, Funded, Funding, mark_attempt};
use crate::domain::deduction::{
    AttemptOutcome, CardCharge, ChargeStatus, Deduction, DeductionFlag, DeductionStatus, Facts,
    FundingAttempt, ReasonCode, SourceKind, Violation, period_key,
};
use crate::domain::funding::Instrument;
use crate::domain::ledger::{Account, LedgerMove, MovementKind};
use crate::domain::mandate::Mandate;
use crate::storage::{
    ChargeUpdate, Collected, DeductionWrites, NewCharge, Reservation, SettleContext,
};

/// Who decided, when, under which settings.
pub(super) struct Recorder<'a> {
    pub actor: &'a Actor,
    pub now: Timestamp,
    pub settings: &'a DeductionSettings,
}

impl Recorder<'_> {
    /// A new deduction's decision: declined with its violations, or approved with the debit
    /// reserved and funding as decided. A suspected refund recovery is never silent (DESIGN
    /// §9.5): flagged on the deduction, with an event of its own, whether collected or declined.
    pub fn decided(
        &self,
        deduction: Deduction,
        mandate: &Mandate,
        facts: &Facts,
        decided: Decided,
    ) -> DeductionWrites {
        let mut writes = DeductionWrites::only(deduction);
        if decided.suspected_recovery {
            writes
                .deduction
                .flags
                .push(DeductionFlag::SuspectedRefundRecovery);
        }
        let violations = match &decided.decision {
            Decision::Declined { violations } => violations.as_slice(),
            Decision::Approved(_) => &[],
        };
        let recovery = decided
            .suspected_recovery
            .then(|| self.recovery_event(&writes.deduction, facts, violations));
        let mut summary = self.summary(&writes.deduction, mandate);
        let funded = match decided.decision {
            Decision::Declined { violations } => {
                let code = violations.first().map(|v| v.code.as_str().to_owned());
                let codes: Vec<&str> = violations.iter().map(|v| v.code.as_str()).collect();
                summary["violations"] = json!(codes);
                let d = &writes.deduction;
                let declined = self.event(d, "DEDUCTION_DECLINED", "DENIED", code.as_deref());
                writes.audits.push(declined.details(summary));
                writes.audits.extend(recovery);
                writes.deduction.reason_code = code;
                writes.deduction.violations = violations;
                return writes;
            }
            Decision::Approved(funded) => funded,
        };
        let approved = self.event(&writes.deduction, "DEDUCTION_APPROVED", "OK", None);
        writes.audits.push(approved.details(summary));
        writes.audits.extend(recovery);
        self.reserve(&mut writes, mandate, facts, decided.counted);
        self.funded(&mut writes, mandate, funded);
        if writes.deduction.status == DeductionStatus::Failed {
            // Nobody could pay: nothing was reserved after all.
            writes.reservation = Reservation::None;
        }
        writes
    }

    /// What a deduction's decision event says of it.
    fn summary(&self, d: &Deduction, mandate: &Mandate) -> Value {
        let request = &d.request;
        json!({
            "amount": request.amount.amount_text(), "currency": request.amount.currency().code(),
            "purpose": request.purpose, "bill_reference": request.bill_reference.as_str(),
            "mandate_version": mandate.version, "one_off_approval_id": request.approval_id,
            "flags": d.flags,
        })
    }

    /// Reserves the debit: it counts against the limits from now until it ends FAILED (a
    /// debit under a one-off approval is the payer's own consent, outside the limits), and
    /// takes the notice and approval it names.
    fn reserve(
        &self,
        writes: &mut DeductionWrites,
        mandate: &Mandate,
        facts: &Facts,
        counted: bool,
    ) {
        let request = &writes.deduction.request;
        let mut usage_keys = vec![];
        if counted {
            usage_keys.push("total".to_owned());
            usage_keys.extend(period_key(mandate, self.now));
        }
        writes.reservation = Reservation::Take {
            usage_keys: usage_keys.clone(),
            notice: request.notice_id.clone().filter(|_| facts.notice.is_some()),
            approval: request.approval_id.clone(),
        };
        writes.deduction.usage_keys = usage_keys;
    }

    /// Records the attempts made on the sources and what follows: the wallet paid, a card is to
    /// be charged, or every source refused.
    fn funded(&self, writes: &mut DeductionWrites, mandate: &Mandate, funded: Funded) {
        for attempt in &funded.attempts {
            let reason = (!attempt.reason_code.is_empty()).then_some(attempt.reason_code.as_str());
            let details = json!({
                "source_index": attempt.source_index, "source_kind": attempt.source_kind.as_str(),
            });
            let event = self.event(
                &writes.deduction,
                "FUNDING_ATTEMPT",
                attempt.outcome.as_str(),
                reason,
            );
            writes.audits.push(event.details(details));
        }
        writes.deduction.attempts.extend(funded.attempts);
        match funded.funding {
            Funding::Paid { source, consumes } => {
                let d = &writes.deduction;
                let currency = d.request.amount.currency();
                let ledger = LedgerMove {
                    movement_id: new_id("mvt"),
                    kind: MovementKind::Deduction,
                    from: Account::wallet(&mandate.payer_id, currency),
                    to: Account::merchant(&mandate.merchant_id, currency, &d.id),
                    amount_minor: d.request.amount.minor(),
                };
                self.succeed(writes, mandate, (source, consumes), ledger);
            }
            Funding::ChargeCard { source } => self.start_charge(writes, mandate, source),
            Funding::Failed { code } => self.fail(writes, &code),
        }
    }

    /// The source at `paid.0` paid: the money moves to the merchant, the mandate collected (and
    /// is consumed when `paid.1`).
    fn succeed(
        &self,
        writes: &mut DeductionWrites,
        mandate: &Mandate,
        paid: (usize, bool),
        ledger: LedgerMove,
    ) {
        let (source, consumes) = paid;
        writes.deduction.status = DeductionStatus::Succeeded;
        writes.deduction.reason_code = None;
        writes.deduction.paid_by = Some(source);
        let mut after = mandate.clone();
        after.last_activity_at = Some(self.now);
        let expires_at = after.next_expiry(self.settings.dormancy).map(|(at, _)| at);
        let details =
            json!({ "paid_by_source_index": source, "ledger_movement_id": ledger.movement_id });
        writes.ledger = Some(ledger);
        let succeeded = self.event(&writes.deduction, "DEDUCTION_SUCCEEDED", "OK", None);
        writes.audits.push(succeeded.details(details));
        let mut consumed = None;
        if consumes && after.consume(self.now).is_ok() {
            let mut event = self
                .event(&writes.deduction, "MANDATE_CONSUMED", "OK", None)
                .details(json!({ "from": "ACTIVE", "to": "CONSUMED", "version": after.version }));
            event.deduction_id = None;
            writes.audits.push(event);
            consumed = Some(after);
        }
        writes.collected = Some(Collected {
            at: self.now,
            expires_at,
            consumed,
        });
    }

    /// The card at `source` is to be charged: the charge is recorded before the bank is called,
    /// and the deduction is PROCESSING until the bank answers.
    fn start_charge(&self, writes: &mut DeductionWrites, mandate: &Mandate, source: usize) {
        let instrument = mandate
            .funding_sources
            .as_ref()
            .map(|sources| &sources.as_slice()[source].instrument);
        let Some(Instrument::BankCard { vault_token, .. }) = instrument else {
            unreachable!("the waterfall stops for cards only");
        };
        let d = &mut writes.deduction;
        let charge = CardCharge {
            id: new_id("chg"),
            deduction_id: d.id.clone(),
            mandate_id: mandate.id.clone(),
            merchant_id: mandate.merchant_id.clone(),
            source_index: source,
            card_token: vault_token.clone(),
            amount: d.request.amount,
            created_at: self.now,
        };
        d.attempts.push(FundingAttempt {
            source_index: source,
            source_kind: SourceKind::BankCard,
            outcome: AttemptOutcome::InFlight,
            reason_code: String::new(),
            charge_id: charge.id.clone(),
        });
        d.status = DeductionStatus::Processing;
        d.reason_code = None;
        let details = json!({ "source_index": source, "charge_id": charge.id });
        let started = self.event(d, "CARD_CHARGE_STARTED", "OK", None);
        writes.audits.push(started.details(details));
        writes.new_charge = Some(NewCharge {
            charge,
            // If nobody records the bank's answer in time (a crash), the resolver asks.
            check_at: self
                .now
                .checked_add(self.settings.resolver.first_check_after)
                .ok(),
        });
    }

    /// Every source refused: FAILED, and whatever was reserved is given back.
    fn fail(&self, writes: &mut DeductionWrites, code: &str) {
        let d = &mut writes.deduction;
        d.status = DeductionStatus::Failed;
        d.reason_code = Some(code.to_owned());
        writes.reservation = Reservation::Release {
            usage_keys: std::mem::take(&mut d.usage_keys),
            notice: d.request.notice_id.clone(),
        };
        let failed = self.event(d, "DEDUCTION_FAILED", "FAILED", Some(code));
        writes.audits.push(failed.details(json!({})));
    }

    /// What the bank's answer about a charge changes, as `after` decided it.
    pub fn settled(&self, ctx: &SettleContext<'_>, after: AfterBank) -> DeductionWrites {
        let charge = ctx.charge;
        let mut deduction = ctx.deduction.clone();
        deduction.updated_at = self.now;
        let mut writes = DeductionWrites::only(deduction);
        let answer = BankAnswer {
            ctx,
            details: json!({
                "charge_id": charge.id, "source_index": charge.source_index, "checks": ctx.checks,
            }),
        };
        match after {
            AfterBank::Paid { consumes } => {
                answer.record(self, &mut writes, ChargeStatus::Succeeded, None);
                let currency = charge.amount.currency();
                let ledger = LedgerMove {
                    movement_id: new_id("mvt"),
                    kind: MovementKind::Deduction,
                    from: Account::card_clearing(
                        &charge.merchant_id,
                        currency,
                        &charge.deduction_id,
                    ),
                    to: Account::merchant(&charge.merchant_id, currency, &charge.deduction_id),
                    amount_minor: charge.amount.minor(),
                };
                self.succeed(
                    &mut writes,
                    ctx.mandate,
                    (charge.source_index, consumes),
                    ledger,
                );
            }
            AfterBank::Declined { code, then } => {
                answer.record(self, &mut writes, ChargeStatus::Declined, Some(&code));
                self.funded(&mut writes, ctx.mandate, then);
            }
            AfterBank::NotFound => {
                // The bank never received it (a crash before the call, or a timeout that did
                // nothing): nothing was taken.
                let code = "CHARGE_NOT_FOUND";
                answer.record(self, &mut writes, ChargeStatus::Declined, Some(code));
                self.fail(&mut writes, code);
            }
            AfterBank::Unknown => answer.unknown(self, &mut writes),
        }
        writes
    }

    /// The audit event of a suspected refund recovery: DENIED when the merchant's policy
    /// declined it, FLAGGED otherwise.
    fn recovery_event(&self, d: &Deduction, facts: &Facts, violations: &[Violation]) -> AuditDraft {
        let declined = violations
            .iter()
            .any(|v| v.code == ReasonCode::SuspectedRefundRecovery);
        let recovery = facts.recovery.as_ref();
        let details = json!({
            "amount": d.request.amount.amount_text(),
            "currency": d.request.amount.currency().code(),
            "bill_reference": d.request.bill_reference.as_str(),
            "refund_at": recovery.and_then(|r| r.matching_refund_at).map(|t| t.to_string()),
            "bill_announced_at": recovery.and_then(|r| r.bill_announced_at).map(|t| t.to_string()),
            "policy": recovery.map(|r| r.policy.as_str()),
            "window_s": self.settings.recovery_window.as_secs(),
        });
        let outcome = if declined { "DENIED" } else { "FLAGGED" };
        let reason = Some(ReasonCode::SuspectedRefundRecovery.as_str());
        self.event(d, "SUSPECTED_REFUND_RECOVERY", outcome, reason)
            .details(details)
    }

    /// An audit event about one deduction, on its mandate's chain (details empty until set).
    fn event(
        &self,
        d: &Deduction,
        action: &str,
        outcome: &str,
        reason: Option<&str>,
    ) -> AuditDraft {
        let mut audit = AuditDraft::new(self.now, self.actor, action, outcome);
        audit.mandate_id = Some(d.mandate_id.to_string());
        audit.merchant_id = Some(d.merchant_id.to_string());
        audit.payer_id = Some(d.payer_id.to_string());
        audit.deduction_id = Some(d.id.clone());
        audit.request_id = Some(d.request_id.clone());
        audit.reason_code = reason.map(str::to_owned);
        audit
    }
}

/// One answer of the bank about one charge, as recorded on the charge, its attempt and the
/// trail.
struct BankAnswer<'a> {
    ctx: &'a SettleContext<'a>,
    details: Value,
}

impl BankAnswer<'_> {
    /// The charge's new status (`ChargeStatus::Unknown` with when to ask again).
    fn update(
        &self,
        status: ChargeStatus,
        decline_code: Option<&str>,
        next_check_at: Option<Timestamp>,
    ) -> ChargeUpdate {
        ChargeUpdate {
            charge_id: self.ctx.charge.id.clone(),
            status,
            decline_code: decline_code.map(str::to_owned),
            next_check_at,
            checked: self.ctx.charge_status == ChargeStatus::Unknown || self.ctx.checks > 0,
        }
    }

    /// A definite answer: SUCCEEDED, or DECLINED for `code`.
    fn record(
        &self,
        recorder: &Recorder<'_>,
        writes: &mut DeductionWrites,
        status: ChargeStatus,
        code: Option<&str>,
    ) {
        let outcome = match status {
            ChargeStatus::Succeeded => AttemptOutcome::Succeeded,
            _ => AttemptOutcome::Declined,
        };
        let charge_id = &self.ctx.charge.id;
        mark_attempt(
            &mut writes.deduction.attempts,
            charge_id,
            outcome,
            code.unwrap_or(""),
        );
        writes.charge_update = Some(self.update(status, code, None));
        let event = recorder.event(&writes.deduction, "FUNDING_ATTEMPT", outcome.as_str(), code);
        writes.audits.push(event.details(self.details.clone()));
    }

    /// No definite answer: PENDING_CONFIRMATION, asked again on the resolver's backoff, or left
    /// for reconciliation past its horizon.
    fn unknown(&self, recorder: &Recorder<'_>, writes: &mut DeductionWrites) {
        let ctx = self.ctx;
        let checks = ctx.checks + i64::from(ctx.charge_status == ChargeStatus::Unknown);
        let next =
            recorder
                .settings
                .resolver
                .next_check(ctx.charge.created_at, checks, recorder.now);
        let attempts = &mut writes.deduction.attempts;
        mark_attempt(attempts, &ctx.charge.id, AttemptOutcome::Unknown, "");
        writes.charge_update = Some(self.update(ChargeStatus::Unknown, None, next));
        writes.deduction.status = DeductionStatus::PendingConfirmation;
        let action = if next.is_some() {
            "FUNDING_OUTCOME_UNKNOWN"
        } else {
            "FUNDING_LEFT_FOR_RECONCILIATION"
        };
        let event = recorder.event(&writes.deduction, action, "UNKNOWN", None);
        writes.audits.push(event.details(self.details.clone()));
    }
}

/// Sets an audit draft's details.
trait WithDetails {
    fn details(self, details: Value) -> Self;
}

impl WithDetails for AuditDraft {
    fn details(mut self, details: Value) -> Self {
        self.details = details.to_string();
        self
    }
}
