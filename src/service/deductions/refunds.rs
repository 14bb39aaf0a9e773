//! Refunds (DESIGN §5): card money goes back through the bank first, then the refund is
//! recorded against the deduction as read under its lock, with the money moved back in the
//! ledger. A request id names one refund forever.

use jiff::Timestamp;
use serde_json::json;

use super::{DeductionService, MAX_ATTEMPTS, key_reused, new_id, precondition};
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::audit::AuditDraft;
use crate::domain::deduction::{Deduction, Refund, SourceKind};
use crate::domain::ledger::{LedgerMove, MovementKind, refund_route};
use crate::domain::money::Money;
use crate::funding::bank::RefundOutcome;
use crate::service::{Error, Rpc};
use crate::storage::{RefundAsk, RefundWrites, Refunded, StoreError};

/// A merchant's refund request.
pub struct RefundRequest {
    pub deduction_id: String,
    pub amount: Money,
    pub reason: String,
    pub request_id: String,
    /// SHA-256 of the request as sent.
    pub fingerprint: String,
}

impl RefundRequest {
    /// The refund's id: one per (merchant, request id), so a retry after an unknown bank answer
    /// asks the bank about the same refund instead of making another.
    fn refund_id(&self, merchant: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{merchant}:{}", self.request_id));
        format!("rfd-{}", &hex::encode(digest)[..32])
    }
}

impl DeductionService {
    /// Refunds (part of) a deduction; `true` with a replayed request id.
    pub async fn refund(
        &self,
        actor: &Actor,
        req: RefundRequest,
    ) -> Result<(Refund, Deduction, bool), Error> {
        let current = self
            .get(actor, Rpc::RefundDeduction, &req.deduction_id)
            .await?;
        // A request id names one refund forever: answer a replay before checking anything
        // against the deduction as it is now (or asking the bank again).
        if let Some((refund, deduction, stored)) = self
            .db
            .deductions
            .refund_by_request(&current.merchant_id, &req.request_id)
            .await?
        {
            return if stored == req.fingerprint {
                Ok((refund, deduction, true))
            } else {
                Err(key_reused())
            };
        }
        let collected = current.request.amount.currency();
        if req.amount.currency() != collected {
            return Err(FieldViolation::new(
                "amount.currency_code",
                format!("the deduction was collected in {}", collected.code()),
            )
            .into());
        }
        let now = self.clock.now();
        let refund_id = req.refund_id(current.merchant_id.as_str());
        self.refund_at_bank(&current, &req, &refund_id, now).await?;
        let decide = |d: &Deduction| self.refund_writes(actor, d, &req, &refund_id, now);
        for _ in 0..MAX_ATTEMPTS {
            let refunded = self
                .db
                .deductions
                .refund(
                    RefundAsk {
                        deduction_id: &current.id,
                        merchant_id: &current.merchant_id,
                        request_id: &req.request_id,
                        fingerprint: &req.fingerprint,
                    },
                    &decide,
                )
                .await;
            return match refunded {
                Ok(Refunded::New { refund, deduction }) => Ok((refund, *deduction, false)),
                Ok(Refunded::Existing {
                    refund,
                    deduction,
                    fingerprint,
                }) if fingerprint == req.fingerprint => Ok((refund, *deduction, true)),
                Ok(Refunded::Existing { .. }) => Err(key_reused()),
                Ok(Refunded::DeductionNotFound) => Err(Error::NotFound { what: "deduction" }),
                Ok(Refunded::Refused(reason)) => {
                    Err(precondition("DEDUCTION_STATUS", &current.id, reason))
                }
                // A concurrent request took the request id (or the refund id derived from it)
                // first: the next try finds what it recorded.
                Err(StoreError::Conflict) => continue,
                Err(e) => Err(e.into()),
            };
        }
        Err(StoreError::Conflict.into())
    }

    /// Card money goes back through the bank, before anything is recorded here; the refund is
    /// checked against the deduction first, so the bank is never asked for more than may be
    /// refunded. Nothing to do for a deduction a wallet paid.
    async fn refund_at_bank(
        &self,
        current: &Deduction,
        req: &RefundRequest,
        refund_id: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        let Some(attempt) = current
            .paid_attempt()
            .filter(|a| a.source_kind == SourceKind::BankCard)
        else {
            return Ok(());
        };
        let mut check = current.clone();
        check
            .refund(&req.amount, now)
            .map_err(|e| precondition("DEDUCTION_STATUS", &current.id, e.to_string()))?;
        let bank = self.bank.as_ref().ok_or_else(|| {
            precondition(
                "BANK_GATEWAY",
                &current.id,
                "card refunds need the bank gateway, which is not configured",
            )
        })?;
        match bank
            .refund(refund_id, &attempt.charge_id, req.amount.minor())
            .await
        {
            RefundOutcome::Succeeded => Ok(()),
            RefundOutcome::Declined(code) => Err(precondition(
                "BANK_REFUND",
                &current.id,
                format!("the bank declined the refund: {code}"),
            )),
            RefundOutcome::Unknown => Err(Error::Aborted(
                "the bank did not answer the refund; retry with the same request_id".into(),
            )),
        }
    }

    /// The refund recorded on the deduction as read under its lock, or why it cannot be.
    fn refund_writes(
        &self,
        actor: &Actor,
        d: &Deduction,
        req: &RefundRequest,
        refund_id: &str,
        now: Timestamp,
    ) -> Result<RefundWrites, String> {
        let amount = req.amount;
        let mut after = d.clone();
        after.refund(&amount, now).map_err(|e| e.to_string())?;
        let kind = d
            .paid_attempt()
            .map(|a| a.source_kind)
            .ok_or("the deduction was not paid by any source")?;
        let (from, to) = refund_route(d, kind);
        let ledger = Some(LedgerMove {
            movement_id: new_id("mvt"),
            kind: MovementKind::Refund,
            from,
            to,
            amount_minor: amount.minor(),
        });
        let refund = Refund {
            id: refund_id.to_owned(),
            deduction_id: d.id.clone(),
            amount,
            reason: req.reason.clone(),
            created_at: now,
        };
        let mut audit = AuditDraft::new(now, actor, "REFUND_RECORDED", "OK");
        audit.mandate_id = Some(d.mandate_id.to_string());
        audit.merchant_id = Some(d.merchant_id.to_string());
        audit.payer_id = Some(d.payer_id.to_string());
        audit.deduction_id = Some(d.id.clone());
        audit.request_id = Some(req.request_id.clone());
        audit.details = json!({
            "refund_id": refund.id, "amount": amount.amount_text(),
            "currency": amount.currency().code(), "refunded_total_minor": after.refunded_minor,
            "status": after.status.as_str(), "reason": req.reason,
        })
        .to_string();
        Ok(RefundWrites {
            refund,
            deduction: after,
            ledger,
            audit,
        })
    }
}
