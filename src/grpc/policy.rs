//! `withholding.v1.MerchantPolicyService` handlers.

use tonic::{Request, Response, Status};

use super::{authorize, bad, convert, detached};
use crate::domain::FieldViolation;
use crate::domain::ids::MerchantId;
use crate::domain::policy::{MerchantPolicy, RecoveryPolicy};
use crate::pb;
use crate::pb::merchant_policy_service_server::MerchantPolicyService as PolicyRpc;
use crate::service::{MandateService, PolicyService, Rpc};

#[derive(Clone)]
pub struct PolicyApi {
    policies: PolicyService,
    mandates: MandateService,
}

impl PolicyApi {
    pub fn new(policies: PolicyService, mandates: MandateService) -> Self {
        Self { policies, mandates }
    }
}

fn recovery_policy(value: i32) -> Result<RecoveryPolicy, FieldViolation> {
    use pb::RecoveryPolicy as P;
    let field = "suspected_refund_recovery";
    match P::try_from(value) {
        Ok(P::Flag) => Ok(RecoveryPolicy::Flag),
        Ok(P::Decline) => Ok(RecoveryPolicy::Decline),
        Ok(P::Unspecified) => Err(FieldViolation::new(
            field,
            "is required (UNSPECIFIED is not a value)",
        )),
        Err(_) => Err(FieldViolation::new(field, format!("unknown value {value}"))),
    }
}

fn to_policy(policy: &MerchantPolicy) -> pb::MerchantPolicy {
    let MerchantPolicy {
        merchant_id,
        suspected_refund_recovery,
        version,
        updated_at,
        updated_by,
    } = policy;
    pb::MerchantPolicy {
        merchant_id: merchant_id.to_string(),
        suspected_refund_recovery: match suspected_refund_recovery {
            RecoveryPolicy::Flag => pb::RecoveryPolicy::Flag,
            RecoveryPolicy::Decline => pb::RecoveryPolicy::Decline,
        } as i32,
        version: *version,
        updated_at: updated_at.map(convert::to_timestamp),
        updated_by: updated_by.clone(),
    }
}

#[tonic::async_trait]
impl PolicyRpc for PolicyApi {
    #[tracing::instrument(skip_all, fields(rpc = "GetMerchantPolicy"))]
    async fn get_merchant_policy(
        &self,
        request: Request<pb::GetMerchantPolicyRequest>,
    ) -> Result<Response<pb::GetMerchantPolicyResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetMerchantPolicy, None).await?;
        let pb::GetMerchantPolicyRequest { merchant_id } = request.into_inner();
        let merchant_id = (!merchant_id.is_empty())
            .then(|| MerchantId::parse("merchant_id", &merchant_id))
            .transpose()
            .map_err(bad)?;
        let policy = self.policies.get(&actor, merchant_id).await?;
        Ok(Response::new(pb::GetMerchantPolicyResponse {
            policy: Some(to_policy(&policy)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SetMerchantPolicy"))]
    async fn set_merchant_policy(
        &self,
        request: Request<pb::SetMerchantPolicyRequest>,
    ) -> Result<Response<pb::SetMerchantPolicyResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::SetMerchantPolicy, None).await?;
        let pb::SetMerchantPolicyRequest {
            merchant_id,
            suspected_refund_recovery,
            reason,
        } = request.into_inner();
        let merchant_id = MerchantId::parse("merchant_id", &merchant_id).map_err(bad)?;
        let recovery = recovery_policy(suspected_refund_recovery).map_err(bad)?;
        crate::domain::text::check_required_text("reason", &reason).map_err(bad)?;
        let service = self.policies.clone();
        let (policy, changed) =
            detached(async move { service.set(&actor, merchant_id, recovery, &reason).await })
                .await?;
        Ok(Response::new(pb::SetMerchantPolicyResponse {
            policy: Some(to_policy(&policy)),
            changed,
        }))
    }
}
