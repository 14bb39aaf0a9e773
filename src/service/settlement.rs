//! Daily settlement and bank reconciliation (DESIGN §6b): settlement schedules, the summary
//! (scoped to the caller's tenancy; an auditor's read is itself audited), statement imports,
//! and the resolution of the discrepancies they find — each a new record with its audit event,
//! money moved through the ledger or the bank exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::deductions::new_id;
use super::{DeductionService, Error, MandateService, Rpc};
use crate::clock::Clock;
use crate::domain::FieldViolation;
use crate::domain::actor::{Actor, Tenancy};
use crate::domain::audit::AuditDraft;
use crate::domain::deduction::{BankOutcome, ChargeStatus};
use crate::domain::ids::MerchantId;
use crate::domain::ledger::{Account, LedgerMove, MovementKind};
use crate::domain::reconcile::{
    Discrepancy, OurCharge, Resolution, ResolutionAction, Statement, StatementImport, reconcile,
};
use crate::domain::settlement::{DayRange, SettlementRow, SettlementSchedule, Summary};
use crate::domain::terms::TimeZoneName;
use crate::funding::bank::RefundOutcome;
use crate::storage::settlement::{
    DiscrepancyQuery, Recorded, ResolutionWrite, Scanned, SettlementScan,
};
use crate::storage::{Database, Keyed, StoreError};

/// How often a schedule change that lost a race is retried.
const MAX_ATTEMPTS: usize = 3;
/// The most rows one summary answers; a wider one must name a merchant or fewer days.
pub const MAX_SUMMARY_ROWS: usize = 20_000;

/// A discrepancy with every step taken on it.
pub type DiscrepancyView = (Discrepancy, Vec<Resolution>);

/// What an import found.
#[derive(Debug, Clone)]
pub struct Imported {
    pub import: StatementImport,
    /// True when this very statement had been imported before.
    pub replayed: bool,
}

/// An operator's resolution request, parsed.
#[derive(Debug, Clone)]
pub struct ResolveRequest {
    pub request_id: String,
    pub fingerprint: String,
    pub discrepancy_id: String,
    pub action: ResolutionAction,
    pub note: String,
}

#[derive(Clone)]
pub struct SettlementService {
    db: Database,
    mandates: MandateService,
    deductions: DeductionService,
    clock: Arc<dyn Clock>,
}

fn precondition(kind: &'static str, subject: &str, description: impl Into<String>) -> Error {
    Error::FailedPrecondition {
        kind,
        subject: subject.to_owned(),
        description: description.into(),
    }
}

impl SettlementService {
    pub fn new(
        db: Database,
        mandates: MandateService,
        deductions: DeductionService,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            db,
            mandates,
            deductions,
            clock,
        }
    }

    /// The merchant a read is about: the one named, or the caller's own; `None` for every
    /// merchant (operators and institution-wide auditors only). Another tenant's is NOT_FOUND,
    /// the refusal recorded against the caller.
    async fn scope(
        &self,
        actor: &Actor,
        rpc: Rpc,
        named: Option<MerchantId>,
        required: bool,
    ) -> Result<Option<MerchantId>, Error> {
        let merchant = match actor.tenancy() {
            Tenancy::Everything => named,
            Tenancy::Merchant(own) => match named {
                Some(other) if other != own => {
                    return Err(self
                        .mandates
                        .refuse_other_tenant(actor, rpc, "merchant", other.as_str())
                        .await);
                }
                _ => Some(own),
            },
            // The role matrix keeps payers out before this.
            Tenancy::Payer(_) | Tenancy::Nothing => {
                return Err(Error::PermissionDenied(format!(
                    "role {} may not call {}",
                    actor.role.as_str(),
                    rpc.name()
                )));
            }
        };
        if required && merchant.is_none() {
            return Err(FieldViolation::new("merchant_id", "is required").into());
        }
        Ok(merchant)
    }

    /// An auditor's read is itself an audit event (`AuditDraft::auditor_read`).
    async fn audit_read(
        &self,
        actor: &Actor,
        rpc: Rpc,
        filter: serde_json::Value,
    ) -> Result<(), Error> {
        match AuditDraft::auditor_read(self.clock.now(), actor, rpc.name(), filter) {
            Some(draft) => Ok(self.db.mandates.append_audit(&draft).await?),
            None => Ok(()),
        }
    }

    // ---- schedules ----

    async fn current_schedule(&self, merchant: &MerchantId) -> Result<SettlementSchedule, Error> {
        Ok(self
            .db
            .settlement
            .settlement_schedule(merchant)
            .await?
            .unwrap_or_else(|| SettlementSchedule::default_for(merchant.clone())))
    }

    pub async fn schedule(
        &self,
        actor: &Actor,
        merchant: Option<MerchantId>,
    ) -> Result<SettlementSchedule, Error> {
        let merchant = self
            .scope(actor, Rpc::GetSettlementSchedule, merchant, true)
            .await?
            .ok_or_else(|| FieldViolation::new("merchant_id", "is required"))?;
        self.audit_read(
            actor,
            Rpc::GetSettlementSchedule,
            json!({ "merchant_id": merchant.as_str() }),
        )
        .await?;
        self.current_schedule(&merchant).await
    }

    /// Sets a merchant's cut-off and zone; `false` when that was already in force.
    pub async fn set_schedule(
        &self,
        actor: &Actor,
        merchant: MerchantId,
        cutoff_minute: u32,
        timezone: TimeZoneName,
        reason: &str,
    ) -> Result<(SettlementSchedule, bool), Error> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.current_schedule(&merchant).await?;
            let now = self.clock.now();
            let Some(changed) =
                current.changed_to(cutoff_minute, timezone.clone(), &actor.subject, now)
            else {
                return Ok((current, false));
            };
            let mut audit = AuditDraft::new(now, actor, "SETTLEMENT_SCHEDULE_SET", "OK");
            audit.merchant_id = Some(merchant.to_string());
            audit.details = json!({
                "cutoff_minute": { "from": current.cutoff_minute, "to": changed.cutoff_minute },
                "timezone": { "from": current.timezone.as_str(), "to": changed.timezone.as_str() },
                "version": changed.version,
                "reason": reason,
            })
            .to_string();
            match self
                .db
                .settlement
                .put_settlement_schedule(&changed, &audit)
                .await
            {
                Ok(()) => {
                    tracing::info!(merchant_id = %merchant, cutoff_minute, timezone = changed.timezone.as_str(), "settlement schedule set");
                    return Ok((changed, true));
                }
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    // ---- the summary ----

    /// Totals per merchant × funding source × business day over `range`.
    pub async fn summary(
        &self,
        actor: &Actor,
        range: DayRange,
        merchant: Option<MerchantId>,
    ) -> Result<Vec<SettlementRow>, Error> {
        let merchant = self
            .scope(actor, Rpc::GetSettlementSummary, merchant, false)
            .await?;
        self.audit_read(
            actor,
            Rpc::GetSettlementSummary,
            json!({
                "from_day": range.from.to_string(),
                "to_day": range.to.to_string(),
                "merchant_id": merchant.as_ref().map(|m| m.as_str()),
            }),
        )
        .await?;
        self.rows(range, merchant).await
    }

    /// The summary's rows, for a caller already within its tenancy (the CLI runs as the
    /// operator of the database it opens).
    pub async fn rows(
        &self,
        range: DayRange,
        merchant: Option<MerchantId>,
    ) -> Result<Vec<SettlementRow>, Error> {
        let schedules: HashMap<MerchantId, SettlementSchedule> = match &merchant {
            Some(m) => self
                .db
                .settlement
                .settlement_schedule(m)
                .await?
                .into_iter()
                .map(|s| (s.merchant_id.clone(), s))
                .collect(),
            None => self
                .db
                .settlement
                .settlement_schedules()
                .await?
                .into_iter()
                .map(|s| (s.merchant_id.clone(), s))
                .collect(),
        };
        let schedule = |m: &MerchantId| {
            schedules
                .get(m)
                .cloned()
                .unwrap_or_else(|| SettlementSchedule::default_for(m.clone()))
        };
        let mut summary = Summary::new(range, &schedule);
        let (from, until) = range.utc_window();
        let scan = SettlementScan {
            from,
            until,
            merchant_id: merchant,
        };
        let mut too_many = false;
        let mut overflow = false;
        let mut visit = |row: Scanned| -> Result<(), StoreError> {
            let added = match &row {
                Scanned::Deduction(d) => summary.add_deduction(d),
                Scanned::Refund(r, d) => summary.add_refund(r, d),
            };
            if added.is_err() {
                overflow = true;
                return Err(StoreError::OutOfRange("a settlement total".into()));
            }
            if summary.len() > MAX_SUMMARY_ROWS {
                too_many = true;
                return Err(StoreError::OutOfRange("summary rows".into()));
            }
            Ok(())
        };
        let scanned = self.db.settlement.scan_settlement(&scan, &mut visit).await;
        if too_many {
            return Err(precondition(
                "SUMMARY_TOO_LARGE",
                "",
                format!(
                    "the summary would have more than {MAX_SUMMARY_ROWS} rows; name a merchant \
                     or ask for fewer days"
                ),
            ));
        }
        if overflow {
            return Err(precondition(
                "AMOUNT_RANGE",
                "",
                "a settlement total would pass the largest amount a 64-bit total holds",
            ));
        }
        scanned?;
        Ok(summary.rows())
    }

    // ---- reconciliation ----

    /// Matches the bank's statement of `day` against our card charges and records what no
    /// earlier import found, with an audit event; the same statement again answers the first
    /// import and records nothing.
    pub async fn import_statement(
        &self,
        actor: &Actor,
        day: Date,
        csv: &str,
    ) -> Result<Imported, Error> {
        let statement = Statement::parse(day, csv)?;
        let digest = hex::encode(Sha256::digest(csv.as_bytes()));
        let day_text = day.to_string();
        if let Some(import) = self
            .db
            .settlement
            .statement_import(&day_text, &digest)
            .await?
        {
            return Ok(Imported {
                import,
                replayed: true,
            });
        }
        let ids: Vec<String> = {
            let mut ids: Vec<String> = statement
                .lines
                .iter()
                .map(|l| l.charge_id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let ours: BTreeMap<String, OurCharge> = self
            .db
            .settlement
            .charges_by_id(&ids)
            .await?
            .into_iter()
            .map(|c| (c.charge_id.clone(), c))
            .collect();
        let (from, until) = utc_day(day)?;
        let succeeded = self.db.settlement.succeeded_charges(from, until).await?;
        let findings = reconcile(&statement, &ours, &succeeded);
        let now = self.clock.now();
        let import_id = new_id("imp");
        let found: Vec<Discrepancy> = findings
            .into_iter()
            .map(|finding| Discrepancy {
                id: new_id("dis"),
                finding,
                statement_day: day,
                import_id: import_id.clone(),
                created_at: now,
            })
            .collect();
        let import = StatementImport {
            id: import_id,
            day,
            digest: digest.clone(),
            lines: statement.lines.len(),
            found: found.len(),
            new: 0,
            actor_subject: actor.subject.clone(),
            created_at: now,
        };
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &found {
            *kinds.entry(d.finding.kind.as_str()).or_default() += 1;
        }
        let mut audit = AuditDraft::new(now, actor, "STATEMENT_IMPORTED", "OK");
        audit.details = json!({
            "import_id": import.id,
            "statement_day": day_text,
            "digest": digest,
            "lines": import.lines,
            "found": kinds,
        })
        .to_string();
        audit.chain = Some("reconciliation".into());
        match self
            .db
            .settlement
            .record_import(&import, &found, &audit)
            .await?
        {
            Keyed::New(import) => {
                tracing::info!(import_id = %import.id, statement_day = %day, lines = import.lines, found = import.found, new = import.new, "statement imported");
                Ok(Imported {
                    import,
                    replayed: false,
                })
            }
            Keyed::Existing { value, .. } => Ok(Imported {
                import: value,
                replayed: true,
            }),
        }
    }

    pub async fn list_discrepancies(
        &self,
        actor: &Actor,
        mut query: DiscrepancyQuery,
    ) -> Result<Vec<DiscrepancyView>, Error> {
        query.merchant_id = self
            .scope(actor, Rpc::ListDiscrepancies, query.merchant_id, false)
            .await?;
        self.audit_read(
            actor,
            Rpc::ListDiscrepancies,
            json!({
                "settled": query.settled,
                "statement_day": query.statement_day,
                "merchant_id": query.merchant_id.as_ref().map(|m| m.as_str()),
                "before": query.before,
            }),
        )
        .await?;
        Ok(self.db.settlement.list_discrepancies(&query).await?)
    }

    /// Resolves a discrepancy as the operator asks, once per request id: the same request again
    /// answers the first resolution (`true`); another request under the id is ALREADY_EXISTS.
    pub async fn resolve(
        &self,
        actor: &Actor,
        req: ResolveRequest,
    ) -> Result<(DiscrepancyView, Resolution, bool), Error> {
        let scope = actor.idempotency_scope();
        if let Some((resolution, fingerprint)) = self
            .db
            .settlement
            .resolution_by_request(&scope, &req.request_id)
            .await?
        {
            return self.replay(resolution, &fingerprint, &req).await;
        }
        let Some((discrepancy, resolutions)) =
            self.db.settlement.discrepancy(&req.discrepancy_id).await?
        else {
            return Err(Error::NotFound {
                what: "discrepancy",
            });
        };
        let kind = discrepancy.finding.kind;
        if !req.action.applies_to(kind) {
            return Err(precondition(
                "RESOLUTION_ACTION",
                &discrepancy.id,
                format!(
                    "{} does not resolve a {} discrepancy",
                    req.action.as_str(),
                    kind.as_str()
                ),
            ));
        }
        if resolutions.iter().any(|r| r.settles) {
            return Err(precondition(
                "DISCREPANCY_RESOLVED",
                &discrepancy.id,
                "the discrepancy is resolved already",
            ));
        }
        let now = self.clock.now();
        let (outcome, settles, movement) = self.act(actor, &discrepancy, &req).await?;
        let resolution = Resolution {
            id: new_id("res"),
            discrepancy_id: discrepancy.id.clone(),
            action: req.action,
            settles,
            outcome: outcome.to_owned(),
            movement_id: movement.as_ref().map(|m| m.movement_id.clone()),
            note: req.note.clone(),
            actor_subject: actor.subject.clone(),
            request_id: req.request_id.clone(),
            created_at: now,
        };
        let f = &discrepancy.finding;
        let mut audit = AuditDraft::new(now, actor, "DISCREPANCY_RESOLVED", "OK");
        audit.merchant_id = f.merchant_id.as_ref().map(|m| m.to_string());
        audit.deduction_id = f.deduction_id.clone();
        audit.request_id = Some(req.request_id.clone());
        audit.chain = Some("reconciliation".into());
        audit.details = json!({
            "discrepancy_id": discrepancy.id,
            "kind": kind.as_str(),
            "charge_id": f.charge_id,
            "action": req.action.as_str(),
            "outcome": outcome,
            "settles": settles,
            "movement_id": resolution.movement_id,
            "note": req.note,
        })
        .to_string();
        let write = ResolutionWrite {
            resolution: &resolution,
            scope: &scope,
            fingerprint: &req.fingerprint,
            movement: movement.as_ref(),
            audit: &audit,
        };
        match self.db.settlement.record_resolution(write).await? {
            Recorded::New(resolution) => {
                tracing::info!(discrepancy_id = %discrepancy.id, action = req.action.as_str(), outcome, "discrepancy resolution recorded");
                let view = self.view(&discrepancy.id).await?;
                Ok((view, resolution, false))
            }
            Recorded::Existing {
                resolution,
                fingerprint,
            } => self.replay(resolution, &fingerprint, &req).await,
            Recorded::AlreadySettled => Err(precondition(
                "DISCREPANCY_RESOLVED",
                &discrepancy.id,
                "the discrepancy is resolved already",
            )),
        }
    }

    /// Our charge's status now (`None`: we have no such charge).
    async fn charge_status(
        &self,
        f: &crate::domain::reconcile::Finding,
    ) -> Result<Option<ChargeStatus>, Error> {
        if f.deduction_id.is_none() {
            return Ok(None);
        }
        let ids = [f.charge_id.clone()];
        let ours = self.db.settlement.charges_by_id(&ids).await?;
        Ok(ours.first().map(|c| c.status))
    }

    async fn view(&self, id: &str) -> Result<DiscrepancyView, Error> {
        self.db
            .settlement
            .discrepancy(id)
            .await?
            .ok_or(Error::NotFound {
                what: "discrepancy",
            })
    }

    async fn replay(
        &self,
        resolution: Resolution,
        fingerprint: &str,
        req: &ResolveRequest,
    ) -> Result<(DiscrepancyView, Resolution, bool), Error> {
        if fingerprint != req.fingerprint {
            return Err(Error::AlreadyExists {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: "request_id was already used for a different request".into(),
            });
        }
        let view = self.view(&resolution.discrepancy_id).await?;
        Ok((view, resolution, true))
    }

    /// Does what the action does outside the resolution's own transaction (the bank, the
    /// charge's settlement), and answers its outcome, whether it settles the discrepancy, and
    /// the ledger movement to record with it. Each step is safe to repeat: the charge's
    /// settlement changes nothing once settled, and the bank refund is keyed by the request.
    async fn act(
        &self,
        actor: &Actor,
        discrepancy: &Discrepancy,
        req: &ResolveRequest,
    ) -> Result<(&'static str, bool, Option<LedgerMove>), Error> {
        let f = &discrepancy.finding;
        let subject = discrepancy.id.as_str();
        let bank = || {
            self.deductions.bank().ok_or_else(|| {
                precondition(
                    "BANK_NOT_CONNECTED",
                    subject,
                    "no bank gateway is configured",
                )
            })
        };
        // Our charge as it stands now, not as the import saw it: the resolver (or another
        // resolution) may have settled it since.
        let now_status = self.charge_status(f).await?;
        let open_at_ours = matches!(
            now_status,
            Some(ChargeStatus::Unknown | ChargeStatus::InFlight)
        );
        match req.action {
            ResolutionAction::AcceptCollected => {
                if !open_at_ours {
                    return Err(precondition(
                        "CHARGE_STATUS",
                        subject,
                        "only a charge whose outcome we never learnt can be accepted as \
                         collected; refund this one to the payer",
                    ));
                }
                if f.bank_amount != f.our_amount {
                    return Err(precondition(
                        "CHARGE_AMOUNT",
                        subject,
                        "the bank collected another amount than we charged; refund it",
                    ));
                }
                let settled = self
                    .deductions
                    .settle_reconciled(actor, &f.charge_id, BankOutcome::Succeeded)
                    .await?;
                // Settled meanwhile: fine if as collected (the resolver heard from the bank),
                // not if a refund to the payer settled it first.
                if settled.is_none()
                    && self.charge_status(f).await? != Some(ChargeStatus::Succeeded)
                {
                    return Err(precondition(
                        "CHARGE_STATUS",
                        subject,
                        "the charge was settled as not collected meanwhile",
                    ));
                }
                Ok(("COLLECTED", true, None))
            }
            ResolutionAction::RefundPayer => {
                let amount = f.bank_amount.ok_or_else(|| {
                    precondition("CHARGE_AMOUNT", subject, "the statement named no amount")
                })?;
                let bank = bank()?;
                // Our books first, under the mandate's lock: a charge we never learnt the
                // outcome of took nothing (its deduction fails). Once that holds, nobody can
                // accept the charge as collected, so the money can go back.
                if open_at_ours {
                    self.deductions
                        .settle_reconciled(actor, &f.charge_id, BankOutcome::NotFound)
                        .await?;
                }
                if self.charge_status(f).await? == Some(ChargeStatus::Succeeded) {
                    return Err(precondition(
                        "CHARGE_STATUS",
                        subject,
                        "the charge is recorded as collected; the bank's money is ours",
                    ));
                }
                // One refund per discrepancy at the bank, whoever asks and however often: a
                // retry after an unanswered refund sends the same one.
                let refund_id = format!("recon-{}", hash_id(&discrepancy.id));
                match bank.refund(&refund_id, &f.charge_id, amount.minor()).await {
                    RefundOutcome::Succeeded => {}
                    RefundOutcome::Declined(code) => {
                        return Err(precondition(
                            "BANK_REFUND_DECLINED",
                            subject,
                            format!("the bank declined the refund: {code}"),
                        ));
                    }
                    RefundOutcome::Unknown => {
                        return Err(Error::Unavailable(
                            "the bank did not answer the refund; send the same request again"
                                .into(),
                        ));
                    }
                }
                Ok(("REFUNDED", true, None))
            }
            ResolutionAction::WriteOff => {
                let (Some(merchant), Some(deduction), Some(amount)) =
                    (&f.merchant_id, &f.deduction_id, f.our_amount)
                else {
                    return Err(precondition(
                        "CHARGE_STATUS",
                        subject,
                        "the short names no charge of ours",
                    ));
                };
                let currency = amount.currency();
                let movement = LedgerMove {
                    movement_id: new_id("mov"),
                    kind: MovementKind::Reconciliation,
                    from: Account::reconciliation_loss(merchant, currency),
                    to: Account::card_clearing(merchant, currency, deduction),
                    amount_minor: amount.minor(),
                };
                Ok(("WRITTEN_OFF", true, Some(movement)))
            }
            ResolutionAction::Requery => Ok(match bank()?.query(&f.charge_id).await {
                BankOutcome::Succeeded => ("CONFIRMED_BY_BANK", true, None),
                BankOutcome::Declined(_) => ("BANK_DECLINED", false, None),
                BankOutcome::NotFound => ("BANK_NOT_FOUND", false, None),
                BankOutcome::Unknown => ("BANK_UNKNOWN", false, None),
            }),
            ResolutionAction::Acknowledge => Ok(("ACKNOWLEDGED", true, None)),
        }
    }
}

/// A bank refund id from a discrepancy id, within the bank's 64 characters.
fn hash_id(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// The UTC day as a window [start, end).
fn utc_day(day: Date) -> Result<(Timestamp, Timestamp), Error> {
    let start = day
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .map_err(|_| FieldViolation::new("statement_day", "out of range"))?;
    let end = day
        .tomorrow()
        .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC))
        .map_err(|_| FieldViolation::new("statement_day", "out of range"))?;
    Ok((start.timestamp(), end.timestamp()))
}
