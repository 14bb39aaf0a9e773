//! Deduction use cases (DESIGN §4, §5): notices, collecting under a mandate (decided in the
//! store's transaction under the mandate's lock), dry runs, refunds, one-off approvals, and the
//! built-in wallet.

mod record;
mod refunds;

pub use refunds::RefundRequest;

use std::sync::Arc;

use jiff::{SignedDuration, Span, Timestamp};
use serde_json::json;

use super::{Error, MandateService, Rpc};
use crate::clock::Clock;
use crate::domain::FieldViolation;
use crate::domain::actor::{Actor, Role, TenantFilter};
use crate::domain::audit::AuditDraft;
use crate::domain::bill::BillReference;
use crate::domain::decision::{ChargeInputs, Inputs, after_bank, decide};
use crate::domain::deduction::{
    Approval, ApprovalStatus, BankOutcome, CardCharge, DebitRequest, Deduction, DeductionFlag,
    DeductionStatus, Facts, Notice, Violation,
};
use crate::domain::ids::{MandateId, MerchantId, PayerId};
use crate::domain::ledger::{Account, LedgerMove, MovementKind};
use crate::domain::mandate::Mandate;
use crate::domain::money::{Currency, Money};
use crate::domain::rules::{check, suspected_refund_recovery};
use crate::funding::bank::BankClient;
use crate::storage::{
    Asked, Database, DeductionInput, DeductionQuery, Executed, Keyed, KeyedRequest, KeyedWrite,
    SettleContext, SettleDecision, StoreError,
};
use record::Recorder;

/// How often a deduction that lost a race is retried before the caller is told to retry.
const MAX_ATTEMPTS: usize = 3;

/// Policy of deductions.
#[derive(Debug, Clone)]
pub struct DeductionSettings {
    /// How long an approved one-off approval may be collected (default 24 h from the request).
    pub approval_validity: Span,
    /// Mandates expire after this long without collecting (as `Settings::dormancy`).
    pub dormancy: Span,
    /// How long after a refund a debit of the refunded amount under a new bill is suspected of
    /// recovering it (DESIGN §5; default 30 days).
    pub recovery_window: SignedDuration,
    pub resolver: ResolverSettings,
}

impl Default for DeductionSettings {
    fn default() -> Self {
        Self {
            approval_validity: Span::new().hours(24),
            dormancy: Span::new().months(36),
            recovery_window: SignedDuration::from_hours(30 * 24),
            resolver: ResolverSettings::default(),
        }
    }
}

/// How card charges with no definite answer are followed up.
#[derive(Debug, Clone, Copy)]
pub struct ResolverSettings {
    /// The deadline of each bank call: a charge made longer ago than this has no call still
    /// running anywhere, so a restart may ask about it at once.
    pub bank_deadline: SignedDuration,
    /// When a charge recorded before its bank call is looked at if nobody records the answer:
    /// longer than the bank deadline, so a live call is never second-guessed.
    pub first_check_after: SignedDuration,
    /// Wait before the first query of an unknown outcome; doubles with each query.
    pub backoff: SignedDuration,
    /// Longest wait between two queries.
    pub max_backoff: SignedDuration,
    /// After this long since the charge, stop asking: reconciliation settles it.
    pub horizon: SignedDuration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            bank_deadline: SignedDuration::from_secs(3),
            first_check_after: SignedDuration::from_secs(30),
            backoff: SignedDuration::from_secs(5),
            max_backoff: SignedDuration::from_mins(10),
            horizon: SignedDuration::from_hours(24),
        }
    }
}

impl ResolverSettings {
    /// When to ask again after `checks` queries; `None` past the horizon.
    pub fn next_check(
        &self,
        charged_at: Timestamp,
        checks: i64,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let shift = u32::try_from(checks.clamp(0, 16)).unwrap_or(16);
        let wait = self
            .backoff
            .checked_mul(1 << shift)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        let next = now.checked_add(wait).ok()?;
        let end = charged_at.checked_add(self.horizon).ok()?;
        (next <= end).then_some(next)
    }
}

/// Test builds only: stop forever at the named point when `WITHHOLDING_FAILPOINT` names it, so
/// a test can kill the process there (a crash between two phases of a card charge).
fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("WITHHOLDING_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint reached; stopping here");
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A merchant's pre-debit notice, parsed.
#[derive(Debug, Clone)]
pub struct NoticeRequest {
    pub mandate_id: MandateId,
    pub amount: Money,
    pub due_at: Timestamp,
    pub bill_reference: BillReference,
    pub request_id: String,
    pub fingerprint: String,
}

/// A merchant's request to collect, parsed.
#[derive(Debug, Clone)]
pub struct CollectRequest {
    pub request_id: String,
    pub fingerprint: String,
    pub mandate_id: MandateId,
    pub debit: DebitRequest,
    pub description: String,
}

#[derive(Clone)]
pub struct DeductionService {
    db: Database,
    mandates: MandateService,
    clock: Arc<dyn Clock>,
    settings: DeductionSettings,
    /// The card gateway; without it cards are definite refusals (`CARD_NOT_CONNECTED`).
    bank: Option<BankClient>,
}

pub(super) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

fn key_reused() -> Error {
    Error::AlreadyExists {
        reason: "IDEMPOTENCY_KEY_REUSED",
        message: "request_id was already used for a different request".into(),
    }
}

/// The new value, or the one a request id already produced when the request is the same;
/// a different request under the same id is ALREADY_EXISTS.
fn replay_or_reused<T>(keyed: Keyed<T>, fingerprint: &str) -> Result<(T, bool), Error> {
    match keyed {
        Keyed::New(value) => Ok((value, false)),
        Keyed::Existing {
            value,
            fingerprint: stored,
        } if stored == fingerprint => Ok((value, true)),
        Keyed::Existing { .. } => Err(key_reused()),
    }
}

fn precondition(kind: &'static str, subject: &str, description: impl Into<String>) -> Error {
    Error::FailedPrecondition {
        kind,
        subject: subject.to_owned(),
        description: description.into(),
    }
}

impl DeductionService {
    pub fn new(
        db: Database,
        mandates: MandateService,
        clock: Arc<dyn Clock>,
        settings: DeductionSettings,
        bank: Option<BankClient>,
    ) -> Self {
        Self {
            db,
            mandates,
            clock,
            settings,
            bank,
        }
    }

    fn audit(&self, actor: &Actor, at: Timestamp, action: &str, outcome: &str) -> AuditDraft {
        AuditDraft::new(at, actor, action, outcome)
    }

    /// An audit draft on a mandate's chain.
    fn mandate_audit(
        &self,
        actor: &Actor,
        at: Timestamp,
        mandate: (&MandateId, &MerchantId, &PayerId),
        action: &str,
    ) -> AuditDraft {
        let mut audit = self.audit(actor, at, action, "OK");
        audit.mandate_id = Some(mandate.0.to_string());
        audit.merchant_id = Some(mandate.1.to_string());
        audit.payer_id = Some(mandate.2.to_string());
        audit
    }

    // ---- notices ----

    pub async fn notify(&self, actor: &Actor, req: NoticeRequest) -> Result<(Notice, bool), Error> {
        let mandate = self
            .mandates
            .visible(actor, Rpc::NotifyUpcomingDebit, &req.mandate_id)
            .await?;
        let amount = req.amount;
        if mandate.status.is_terminal() {
            return Err(precondition(
                "MANDATE_STATUS",
                mandate.id.as_str(),
                format!("the mandate is {}", mandate.status),
            ));
        }
        if amount.currency() != mandate.terms.currency {
            return Err(FieldViolation::new(
                "amount.currency_code",
                format!("the mandate collects {}", mandate.terms.currency.code()),
            )
            .into());
        }
        let now = self.clock.now();
        let notice = Notice {
            id: new_id("ntc"),
            mandate_id: mandate.id.clone(),
            merchant_id: mandate.merchant_id.clone(),
            payer_id: mandate.payer_id.clone(),
            amount,
            due_at: req.due_at,
            bill_reference: req.bill_reference,
            created_at: now,
            used_by: None,
        };
        let mut audit = self.mandate_audit(
            actor,
            now,
            (&mandate.id, &mandate.merchant_id, &mandate.payer_id),
            "NOTICE_CREATED",
        );
        audit.request_id = Some(req.request_id.clone());
        audit.details = json!({
            "notice_id": notice.id, "amount": notice.amount.amount_text(), "currency": notice.amount.currency().code(),
            "due_at": notice.due_at.to_string(), "bill_reference": notice.bill_reference.as_str(),
        })
        .to_string();
        replay_or_reused(
            self.db
                .deductions
                .insert_notice(KeyedWrite {
                    value: &notice,
                    request_id: &req.request_id,
                    fingerprint: &req.fingerprint,
                    audit: &audit,
                })
                .await?,
            &req.fingerprint,
        )
    }

    pub async fn list_notices(
        &self,
        actor: &Actor,
        mandate_id: &MandateId,
        page_size: u32,
        after: Option<String>,
    ) -> Result<(Vec<Notice>, Option<String>), Error> {
        self.mandates
            .visible(actor, Rpc::ListNotices, mandate_id)
            .await?;
        let limit = super::mandates::page_limit(page_size)?;
        let mut notices = self
            .db
            .deductions
            .list_notices(mandate_id, after.as_deref(), limit + 1)
            .await?;
        let next = super::mandates::next_page(&mut notices, limit, |n| n.id.clone());
        Ok((notices, next))
    }

    // ---- deductions ----

    /// Decides and records a deduction, then charges a card if one is to pay; `true` with a
    /// replayed request id (which never charges again: it returns the stored deduction).
    pub async fn collect(
        &self,
        actor: &Actor,
        req: CollectRequest,
    ) -> Result<(Deduction, bool), Error> {
        let mandate = self
            .mandates
            .visible(actor, Rpc::CreateDeduction, &req.mandate_id)
            .await?;
        let merchant_id = mandate.merchant_id.clone();
        for _ in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let input = DeductionInput {
                merchant_id: merchant_id.clone(),
                request_id: req.request_id.clone(),
                fingerprint: req.fingerprint.clone(),
                mandate_id: req.mandate_id.clone(),
                seen: mandate.clone(),
                request: req.debit.clone(),
                now,
                refunds_since: self.refunds_since(now),
            };
            let deduction_id = new_id("ddn");
            // Owned: where deductions are decided together, another task may run it.
            let (asked, by) = (req.clone(), actor.clone());
            let (settings, cards_connected) = (self.settings.clone(), self.bank.is_some());
            let decide = move |mandate: &Mandate, facts: &Facts, wallet_balance_minor: i64| {
                let decided = decide(&Inputs {
                    mandate,
                    request: &asked.debit,
                    facts,
                    wallet_balance_minor,
                    cards_connected,
                });
                let deduction = Deduction::new(
                    deduction_id.clone(),
                    mandate,
                    asked.request_id.clone(),
                    asked.debit.clone(),
                    asked.description.clone(),
                    now,
                );
                let recorder = Recorder {
                    actor: &by,
                    now,
                    settings: &settings,
                };
                recorder.decided(deduction, mandate, facts, decided)
            };
            match self
                .db
                .deductions
                .execute_deduction(input, Arc::new(decide))
                .await
            {
                Ok(Executed::New(d, charge)) => {
                    tracing::info!(deduction_id = %d.id, mandate_id = %d.mandate_id, status = d.status.as_str(), reason = ?d.reason_code, "deduction decided");
                    let d = self.drive(actor, *d, charge).await?;
                    crate::metrics::record_decision(d.status.as_str(), d.reason_code.as_deref());
                    return Ok((d, false));
                }
                Ok(Executed::Existing {
                    deduction,
                    fingerprint,
                }) if fingerprint == req.fingerprint => {
                    return Ok((*deduction, true));
                }
                Ok(Executed::Existing { .. }) => return Err(key_reused()),
                Ok(Executed::MandateNotFound) => return Err(Error::NotFound { what: "mandate" }),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the deduction lost a race with a concurrent request; retry with the same request_id"
                .into(),
        ))
    }

    /// Charges cards until one answers definitely or the waterfall ends: each bank call is made
    /// outside any transaction, after its charge was recorded, and its answer is recorded in a
    /// transaction of its own.
    async fn drive(
        &self,
        actor: &Actor,
        mut deduction: Deduction,
        mut charge: Option<CardCharge>,
    ) -> Result<Deduction, Error> {
        while let Some(current) = charge.take() {
            failpoint("before-bank-call");
            let outcome = match &self.bank {
                Some(bank) => bank.charge(&current).await,
                None => BankOutcome::Declined("CARD_NOT_CONNECTED".into()),
            };
            failpoint("before-settle");
            let settle = self.settling(actor, &outcome, self.clock.now());
            match self
                .db
                .deductions
                .settle_charge(&current.id, settle)
                .await?
            {
                Some((settled, next)) => {
                    deduction = settled;
                    charge = next;
                }
                // Settled meanwhile (by the resolver): report what is stored.
                None => {
                    deduction = self
                        .db
                        .deductions
                        .deduction(&deduction.id)
                        .await?
                        .unwrap_or(deduction);
                }
            }
        }
        Ok(deduction)
    }

    /// Asks the bank about every charge whose outcome is due to be asked for (timeouts, and
    /// charges a crash left in flight), and records the answers. Returns how many it asked about.
    pub async fn resolve_due(&self, limit: u32) -> Result<usize, Error> {
        if self.bank.is_none() {
            return Ok(0);
        }
        let due = self
            .db
            .deductions
            .charges_due(self.clock.now(), limit)
            .await?;
        self.resolve(&due).await
    }

    /// What a restart does first: asks the bank at once about every charge left without a
    /// definite answer whose bank call cannot still be running (made longer ago than the bank
    /// deadline), instead of waiting out its backoff. Returns how many it asked about.
    pub async fn resume_open_charges(&self, limit: u32) -> Result<usize, Error> {
        if self.bank.is_none() {
            return Ok(0);
        }
        let made_by = self
            .clock
            .now()
            .checked_sub(self.settings.resolver.bank_deadline)
            .unwrap_or(Timestamp::MIN);
        let open = self
            .db
            .deductions
            .charges_open_since(made_by, limit)
            .await?;
        self.resolve(&open).await
    }

    /// The service's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// When the resolver has something to ask next (`None`: nothing is waiting).
    pub async fn next_charge_check(&self) -> Result<Option<Timestamp>, Error> {
        Ok(self.db.deductions.next_charge_check().await?)
    }

    /// Asks the bank about each charge and records the answers.
    async fn resolve(&self, charges: &[CardCharge]) -> Result<usize, Error> {
        let Some(bank) = &self.bank else { return Ok(0) };
        let actor = Actor::system();
        for charge in charges {
            let outcome = bank.query(&charge.id).await;
            let settle = self.settling(&actor, &outcome, self.clock.now());
            if let Some((deduction, next)) =
                self.db.deductions.settle_charge(&charge.id, settle).await?
            {
                tracing::info!(charge_id = %charge.id, deduction_id = %deduction.id, status = deduction.status.as_str(), "charge resolved");
                // A crash-left charge that was declined moves on to the next source.
                self.drive(&actor, deduction, next).await?;
            }
        }
        Ok(charges.len())
    }

    /// Settles a charge on what reconciliation established (an operator accepting the bank's
    /// collection, or the bank refunding it), exactly as the same answer from the bank would:
    /// `None` when the charge was settled already (by the resolver, say), so money moves once.
    pub async fn settle_reconciled(
        &self,
        actor: &Actor,
        charge_id: &str,
        outcome: BankOutcome,
    ) -> Result<Option<Deduction>, Error> {
        let settle = self.settling(actor, &outcome, self.clock.now());
        let Some((deduction, next)) = self.db.deductions.settle_charge(charge_id, settle).await?
        else {
            return Ok(None);
        };
        tracing::info!(charge_id, deduction_id = %deduction.id, status = deduction.status.as_str(), "charge settled by reconciliation");
        Ok(Some(self.drive(actor, deduction, next).await?))
    }

    /// The bank gateway, when cards are connected.
    pub fn bank(&self) -> Option<&BankClient> {
        self.bank.as_ref()
    }

    /// What a bank answer about a charge changes, decided on what is read under the mandate's
    /// lock (`None`: it was settled already). Owned: where answers are settled together,
    /// another task may run it.
    fn settling(&self, actor: &Actor, outcome: &BankOutcome, now: Timestamp) -> SettleDecision {
        let (actor, outcome) = (actor.clone(), outcome.clone());
        let (settings, cards_connected) = (self.settings.clone(), self.bank.is_some());
        Arc::new(move |ctx: &SettleContext<'_>| {
            let inputs = ChargeInputs {
                mandate: ctx.mandate,
                status: ctx.charge_status,
                source_index: ctx.charge.source_index,
                charge_id: &ctx.charge.id,
                attempts: &ctx.deduction.attempts,
                amount: &ctx.charge.amount,
                counted: ctx.deduction.request.approval_id.is_none(),
                total_usage: ctx.total_usage,
                wallet_balance_minor: ctx.wallet_balance_minor,
                cards_connected,
            };
            let after = after_bank(&inputs, &outcome)?;
            let recorder = Recorder {
                actor: &actor,
                now,
                settings: &settings,
            };
            Some(recorder.settled(ctx, after))
        })
    }

    /// The start of the suspected-refund-recovery look-back window at `now`.
    fn refunds_since(&self, now: Timestamp) -> Timestamp {
        now.checked_sub(self.settings.recovery_window)
            .unwrap_or(Timestamp::MIN)
    }

    /// The same checks as `collect`, reserving nothing: every violated rule, the flags the
    /// deduction would carry, and the version judged against.
    pub async fn dry_run(
        &self,
        actor: &Actor,
        mandate_id: &MandateId,
        debit: &DebitRequest,
    ) -> Result<(Vec<Violation>, Vec<DeductionFlag>, i64), Error> {
        self.mandates
            .visible(actor, Rpc::CheckDeduction, mandate_id)
            .await?;
        let now = self.clock.now();
        let (mandate, facts) = self
            .db
            .deductions
            .deduction_facts(
                mandate_id,
                &Asked {
                    request: debit,
                    now,
                    refunds_since: self.refunds_since(now),
                },
            )
            .await?
            .ok_or(Error::NotFound { what: "mandate" })?;
        let flags = if suspected_refund_recovery(debit, &facts) {
            vec![DeductionFlag::SuspectedRefundRecovery]
        } else {
            vec![]
        };
        Ok((check(&mandate, debit, &facts), flags, mandate.version))
    }

    pub async fn get(&self, actor: &Actor, rpc: Rpc, id: &str) -> Result<Deduction, Error> {
        let d = self.db.deductions.deduction(id).await?;
        let d = d.ok_or(Error::NotFound { what: "deduction" })?;
        let tenant = (&d.merchant_id, &d.payer_id);
        self.in_tenancy(actor, rpc, ("deduction", id), tenant)
            .await?;
        Ok(d)
    }

    pub async fn list(
        &self,
        actor: &Actor,
        mut query: DeductionQuery,
        page_size: u32,
    ) -> Result<(Vec<Deduction>, Option<String>), Error> {
        let limit = super::mandates::page_limit(page_size)?;
        query.limit = limit + 1;
        let Some(own) = actor.narrow(TenantFilter::default()) else {
            return Ok((vec![], None));
        };
        query.merchant_id = own.merchant;
        query.payer_id = own.payer;
        if let Some(mandate_id) = &query.mandate_id {
            // Listing by mandate names the mandate: it must be visible.
            self.mandates
                .visible(actor, Rpc::ListDeductions, mandate_id)
                .await?;
        }
        let mut deductions = self.db.deductions.list_deductions(&query).await?;
        let next = super::mandates::next_page(&mut deductions, limit, |d| d.id.clone());
        Ok((deductions, next))
    }

    // ---- one-off approvals ----

    pub async fn request_approval(
        &self,
        actor: &Actor,
        deduction_id: &str,
        reason: String,
        request_id: String,
        fingerprint: String,
    ) -> Result<Approval, Error> {
        let declined = self
            .get(actor, Rpc::RequestOneOffApproval, deduction_id)
            .await?;
        if declined.status != DeductionStatus::Declined {
            return Err(precondition(
                "DEDUCTION_STATUS",
                &declined.id,
                format!(
                    "only a DECLINED deduction needs a one-off approval; this one is {}",
                    declined.status.as_str()
                ),
            ));
        }
        let now = self.clock.now();
        let expires_at = now
            .checked_add(self.settings.approval_validity)
            .map_err(|e| Error::Internal(Box::new(e)))?;
        let approval = Approval {
            id: new_id("apv"),
            mandate_id: declined.mandate_id.clone(),
            merchant_id: declined.merchant_id.clone(),
            payer_id: declined.payer_id.clone(),
            declined_deduction_id: declined.id.clone(),
            amount: declined.request.amount,
            purpose: declined.request.purpose,
            bill_reference: declined.request.bill_reference.clone(),
            reason,
            status: ApprovalStatus::Pending,
            requested_at: now,
            decided_at: None,
            expires_at,
            used_by: None,
        };
        let mut audit = self.approval_audit(actor, now, &approval, "ONE_OFF_APPROVAL_REQUESTED");
        audit.deduction_id = Some(declined.id.clone());
        audit.request_id = Some(request_id.clone());
        audit.details = json!({
            "approval_id": approval.id, "amount": approval.amount.amount_text(), "currency": approval.amount.currency().code(),
            "purpose": approval.purpose, "bill_reference": approval.bill_reference, "declined_reason": declined.reason_code,
        })
        .to_string();
        replay_or_reused(
            self.db
                .deductions
                .insert_approval(KeyedWrite {
                    value: &approval,
                    request_id: &request_id,
                    fingerprint: &fingerprint,
                    audit: &audit,
                })
                .await?,
            &fingerprint,
        )
        .map(|(value, _)| value)
    }

    /// The payer approves (`true`) or rejects a pending one-off approval. Asking again for
    /// what was already decided answers with the approval as it is (a retry, or twin requests
    /// racing); asking for the opposite is FAILED_PRECONDITION.
    pub async fn decide_approval(
        &self,
        actor: &Actor,
        approval_id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, Error> {
        let rpc = if approve {
            Rpc::ApproveOneOff
        } else {
            Rpc::RejectOneOff
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut approval = self.approval_as(actor, rpc, approval_id).await?;
            if approval.already_decided(approve) {
                return Ok(approval);
            }
            let now = self.clock.now();
            approval
                .decide(approve, now)
                .map_err(|e| precondition("APPROVAL_STATUS", approval_id, e.to_string()))?;
            let action = if approve {
                "ONE_OFF_APPROVED"
            } else {
                "ONE_OFF_REJECTED"
            };
            let mut audit = self.approval_audit(actor, now, &approval, action);
            audit.details = json!({ "approval_id": approval.id, "reason": reason }).to_string();
            match self.db.deductions.update_approval(&approval, &audit).await {
                Ok(()) => return Ok(approval),
                // Decided meanwhile: read it again (the same decision is answered with it).
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// An audit draft about a one-off approval, on its mandate's chain.
    fn approval_audit(
        &self,
        actor: &Actor,
        at: Timestamp,
        approval: &Approval,
        action: &str,
    ) -> AuditDraft {
        let mandate = (
            &approval.mandate_id,
            &approval.merchant_id,
            &approval.payer_id,
        );
        self.mandate_audit(actor, at, mandate, action)
    }

    /// The approval, if it exists inside the caller's tenancy (NOT_FOUND otherwise, the refusal
    /// recorded against the caller).
    async fn approval_as(&self, actor: &Actor, rpc: Rpc, id: &str) -> Result<Approval, Error> {
        let what = "one-off approval";
        let approval = self.db.deductions.approval(id).await?;
        let approval = approval.ok_or(Error::NotFound { what })?;
        let tenant = (&approval.merchant_id, &approval.payer_id);
        self.in_tenancy(actor, rpc, (what, id), tenant).await?;
        Ok(approval)
    }

    /// `Ok` when a record of one mandate (`record`: its kind and id) lies in the caller's
    /// tenancy; otherwise the refusal is recorded and the record does not exist for the caller.
    async fn in_tenancy(
        &self,
        actor: &Actor,
        rpc: Rpc,
        record: (&'static str, &str),
        tenant: (&MerchantId, &PayerId),
    ) -> Result<(), Error> {
        if actor.can_see_tenant(tenant.0, tenant.1) {
            return Ok(());
        }
        let (what, id) = record;
        Err(self
            .mandates
            .refuse_other_tenant(actor, rpc, what, id)
            .await)
    }

    /// Whether a deduction with this id exists (a refused role is recorded only then).
    pub async fn deduction_exists(&self, id: &str) -> Result<bool, Error> {
        Ok(self.db.deductions.deduction(id).await?.is_some())
    }

    /// Whether a one-off approval with this id exists (a refused role is recorded only then).
    pub async fn approval_exists(&self, id: &str) -> Result<bool, Error> {
        Ok(self.db.deductions.approval(id).await?.is_some())
    }

    // ---- wallet ----

    /// Credits a payer's wallet from its clearing account; returns the balance right after the
    /// credit (a replay returns the same).
    pub async fn credit_wallet(
        &self,
        actor: &Actor,
        payer_id: &PayerId,
        amount: Money,
        reason: &str,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<(i64, bool), Error> {
        let now = self.clock.now();
        let credit = LedgerMove {
            movement_id: new_id("mvt"),
            kind: MovementKind::WalletCredit,
            from: Account::clearing(payer_id, amount.currency()),
            to: Account::wallet(payer_id, amount.currency()),
            amount_minor: amount.minor(),
        };
        let mut audit = self.audit(actor, now, "WALLET_CREDITED", "OK");
        audit.payer_id = Some(payer_id.to_string());
        audit.request_id = Some(request_id.to_owned());
        audit.details = json!({
            "movement_id": credit.movement_id, "amount": amount.amount_text(), "currency": amount.currency().code(), "reason": reason,
        })
        .to_string();
        let scope = actor.idempotency_scope();
        for _ in 0..MAX_ATTEMPTS {
            match self
                .db
                .deductions
                .credit_wallet(
                    &credit,
                    KeyedRequest {
                        scope: &scope,
                        request_id,
                        fingerprint,
                    },
                    &audit,
                )
                .await
            {
                Ok(keyed) => return replay_or_reused(keyed, fingerprint),
                // A concurrent request took the request id first: the next try finds its answer.
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    pub async fn wallet_balance(
        &self,
        actor: &Actor,
        payer_id: Option<PayerId>,
        currency: Currency,
    ) -> Result<i64, Error> {
        let payer = match (actor.role, payer_id) {
            (Role::Payer, None) => PayerId::parse("sub", &actor.subject)
                .map_err(|_| Error::PermissionDenied("bad payer token".into()))?,
            (Role::Payer, Some(p)) if p.as_str() == actor.subject => p,
            // Another payer's wallet does not exist for this payer.
            (Role::Payer, Some(_)) => return Err(Error::NotFound { what: "wallet" }),
            (_, Some(p)) => p,
            (_, None) => return Err(FieldViolation::new("payer_id", "is required").into()),
        };
        Ok(self
            .db
            .deductions
            .balance(&Account::wallet(&payer, currency))
            .await?)
    }
}
