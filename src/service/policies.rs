//! Merchant policies (DESIGN §5): operators set them, the merchant and its auditors read them.
//! Each change is stored with its audit event on the merchant's chain.

use std::sync::Arc;

use serde_json::json;

use super::{Error, MandateService, Rpc};
use crate::clock::Clock;
use crate::domain::actor::{Actor, Role};
use crate::domain::audit::AuditDraft;
use crate::domain::ids::MerchantId;
use crate::domain::policy::{MerchantPolicy, RecoveryPolicy};
use crate::storage::{Database, StoreError};

/// How often a policy change that lost a race is retried.
const MAX_ATTEMPTS: usize = 3;

#[derive(Clone)]
pub struct PolicyService {
    db: Database,
    mandates: MandateService,
    clock: Arc<dyn Clock>,
}

impl PolicyService {
    pub fn new(db: Database, mandates: MandateService, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            mandates,
            clock,
        }
    }

    /// The policy of `merchant_id` (a merchant's own when it names none): the default when
    /// nobody set one. Another tenant's is NOT_FOUND, the refusal recorded against the caller.
    pub async fn get(
        &self,
        actor: &Actor,
        merchant_id: Option<MerchantId>,
    ) -> Result<MerchantPolicy, Error> {
        let merchant_id = match (merchant_id, &actor.merchant_id) {
            (Some(named), _) => named,
            (None, Some(own)) => own.clone(),
            (None, None) => {
                return Err(
                    crate::domain::FieldViolation::new("merchant_id", "is required").into(),
                );
            }
        };
        let within_tenancy = match actor.role {
            Role::Merchant | Role::Auditor => actor
                .merchant_id
                .as_ref()
                .is_none_or(|own| *own == merchant_id),
            Role::Operator | Role::System => true,
            // The role matrix keeps payers out before this.
            Role::Payer => false,
        };
        if !within_tenancy {
            return Err(self
                .mandates
                .refuse_other_tenant(
                    actor,
                    Rpc::GetMerchantPolicy,
                    "merchant policy",
                    merchant_id.as_str(),
                )
                .await);
        }
        self.current(&merchant_id).await
    }

    /// Sets the merchant's suspected-refund-recovery policy; `false` when it already was.
    pub async fn set(
        &self,
        actor: &Actor,
        merchant_id: MerchantId,
        recovery: RecoveryPolicy,
        reason: &str,
    ) -> Result<(MerchantPolicy, bool), Error> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.current(&merchant_id).await?;
            let now = self.clock.now();
            let Some(changed) = current.with_recovery(recovery, &actor.subject, now) else {
                return Ok((current, false));
            };
            let mut audit = AuditDraft::new(now, actor, "MERCHANT_POLICY_SET", "OK");
            audit.merchant_id = Some(merchant_id.to_string());
            audit.details = json!({
                "suspected_refund_recovery": {
                    "from": current.suspected_refund_recovery.as_str(),
                    "to": changed.suspected_refund_recovery.as_str(),
                },
                "version": changed.version,
                "reason": reason,
            })
            .to_string();
            match self
                .db
                .deductions
                .put_merchant_policy(&changed, &audit)
                .await
            {
                Ok(()) => {
                    tracing::info!(merchant_id = %merchant_id, recovery = recovery.as_str(), version = changed.version, "merchant policy set");
                    return Ok((changed, true));
                }
                // Another operator changed it meanwhile: judge against what they stored.
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    async fn current(&self, merchant_id: &MerchantId) -> Result<MerchantPolicy, Error> {
        Ok(self
            .db
            .deductions
            .merchant_policy(merchant_id)
            .await?
            .unwrap_or_else(|| MerchantPolicy::default_for(merchant_id.clone())))
    }
}
