//! `withholding.v1.DeductionService` and `WalletService` handlers. Writes run in a spawned task
//! so a client that goes away cannot cancel a decision halfway.

use tonic::{Request, Response, Status};

use super::{authorize, bad, convert, decode_page_token, detached, encode_page_token, fingerprint};
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::bill::BillReference;
use crate::domain::deduction::DebitRequest;
use crate::domain::ids::{MandateId, PayerId};
use crate::domain::text::check_text;
use crate::pb;
use crate::pb::deduction_service_server::DeductionService as DeductionRpc;
use crate::pb::wallet_service_server::WalletService as WalletRpc;
use crate::service::{
    CollectRequest, DeductionService, MandateService, NoticeRequest, RefundRequest, Rpc,
};
use crate::storage::DeductionQuery;

fn required_request_id(value: &str) -> Result<String, Status> {
    if value.is_empty() {
        return Err(bad(FieldViolation::new(
            "request_id",
            "is required: it makes the write idempotent",
        )));
    }
    convert::identifier("request_id", value).map_err(bad)
}

fn debit(
    amount: Option<pb::Money>,
    purpose: i32,
    bill_reference: &str,
    notice_id: &str,
    approval_id: &str,
) -> Result<DebitRequest, Status> {
    Ok(DebitRequest {
        amount: convert::money("amount", amount).map_err(bad)?,
        purpose: convert::purpose("purpose", purpose).map_err(bad)?,
        bill_reference: BillReference::parse("bill_reference", bill_reference).map_err(bad)?,
        notice_id: convert::optional_identifier("notice_id", notice_id).map_err(bad)?,
        approval_id: convert::optional_identifier("one_off_approval_id", approval_id)
            .map_err(bad)?,
    })
}

#[derive(Clone)]
pub struct DeductionApi {
    deductions: DeductionService,
    mandates: MandateService,
}

impl DeductionApi {
    pub fn new(deductions: DeductionService, mandates: MandateService) -> Self {
        Self {
            deductions,
            mandates,
        }
    }

    async fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
        mandate_id: Option<&str>,
    ) -> Result<Actor, Status> {
        authorize(&self.mandates, request, rpc, mandate_id).await
    }

    /// Like `authorize`, for RPCs that name a deduction or an approval: a refusal is recorded
    /// against the caller when the named resource exists.
    async fn authorize_on<T>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
        named: Named<'_>,
    ) -> Result<Actor, Status> {
        let actor = super::auth::actor(request)?;
        if rpc.permits(&actor) {
            return Ok(actor);
        }
        let named = match named {
            Named::Deduction(id) => self
                .deductions
                .deduction_exists(id)
                .await?
                .then(|| ("deduction", id.to_owned())),
            Named::Approval(id) => self
                .deductions
                .approval_exists(id)
                .await?
                .then(|| ("one-off approval", id.to_owned())),
        };
        Err(self
            .mandates
            .refuse_role_on(&actor, rpc, named)
            .await
            .into())
    }
}

/// The resource an RPC names.
enum Named<'a> {
    Deduction(&'a str),
    Approval(&'a str),
}

#[tonic::async_trait]
impl DeductionRpc for DeductionApi {
    #[tracing::instrument(skip_all, fields(rpc = "NotifyUpcomingDebit"))]
    async fn notify_upcoming_debit(
        &self,
        request: Request<pb::NotifyUpcomingDebitRequest>,
    ) -> Result<Response<pb::NotifyUpcomingDebitResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::NotifyUpcomingDebit,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::NotifyUpcomingDebit, &message);
        let pb::NotifyUpcomingDebitRequest {
            mandate_id,
            amount,
            due_at,
            bill_reference,
            request_id,
        } = message;
        let request_id = required_request_id(&request_id)?;
        let mandate_id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let amount = convert::money("amount", amount).map_err(bad)?;
        let due_at = convert::timestamp("due_at", due_at)
            .map_err(bad)?
            .ok_or_else(|| bad(FieldViolation::new("due_at", "is required")))?;
        let bill_reference =
            BillReference::parse("bill_reference", &bill_reference).map_err(bad)?;
        let notice = NoticeRequest {
            mandate_id,
            amount,
            due_at,
            bill_reference,
            request_id,
            fingerprint,
        };
        let service = self.deductions.clone();
        let (notice, _) = detached(async move { service.notify(&actor, notice).await }).await?;
        Ok(Response::new(pb::NotifyUpcomingDebitResponse {
            notice: Some(convert::to_notice(&notice)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListNotices"))]
    async fn list_notices(
        &self,
        request: Request<pb::ListNoticesRequest>,
    ) -> Result<Response<pb::ListNoticesResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::ListNotices,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let pb::ListNoticesRequest {
            mandate_id,
            page_size,
            page_token,
        } = request.into_inner();
        let mandate_id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let after = decode_page_token(&page_token).map_err(bad)?;
        let (notices, next) = self
            .deductions
            .list_notices(&actor, &mandate_id, page_size, after)
            .await?;
        Ok(Response::new(pb::ListNoticesResponse {
            notices: notices.iter().map(convert::to_notice).collect(),
            next_page_token: next.map(|id| encode_page_token(&id)).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateDeduction"))]
    async fn create_deduction(
        &self,
        request: Request<pb::CreateDeductionRequest>,
    ) -> Result<Response<pb::CreateDeductionResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::CreateDeduction,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::CreateDeduction, &message);
        let pb::CreateDeductionRequest {
            request_id,
            mandate_id,
            amount,
            purpose,
            bill_reference,
            description,
            notice_id,
            one_off_approval_id,
        } = message;
        let request_id = required_request_id(&request_id)?;
        let mandate_id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let debit = debit(
            amount,
            purpose,
            &bill_reference,
            &notice_id,
            &one_off_approval_id,
        )?;
        check_text("description", &description).map_err(bad)?;
        let collect = CollectRequest {
            request_id,
            fingerprint,
            mandate_id,
            debit,
            description,
        };
        let service = self.deductions.clone();
        let (deduction, replayed) =
            detached(async move { service.collect(&actor, collect).await }).await?;
        Ok(Response::new(pb::CreateDeductionResponse {
            deduction: Some(convert::to_deduction(&deduction)),
            replayed,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CheckDeduction"))]
    async fn check_deduction(
        &self,
        request: Request<pb::CheckDeductionRequest>,
    ) -> Result<Response<pb::CheckDeductionResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::CheckDeduction,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let pb::CheckDeductionRequest {
            mandate_id,
            amount,
            purpose,
            bill_reference,
            notice_id,
        } = request.into_inner();
        let mandate_id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let debit = debit(amount, purpose, &bill_reference, &notice_id, "")?;
        let (violations, flags, mandate_version) =
            self.deductions.dry_run(&actor, &mandate_id, &debit).await?;
        Ok(Response::new(pb::CheckDeductionResponse {
            allowed: violations.is_empty(),
            violations: violations.iter().map(convert::to_violation).collect(),
            mandate_version,
            flags: convert::to_flags(&flags),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetDeduction"))]
    async fn get_deduction(
        &self,
        request: Request<pb::GetDeductionRequest>,
    ) -> Result<Response<pb::GetDeductionResponse>, Status> {
        let actor = self
            .authorize_on(
                &request,
                Rpc::GetDeduction,
                Named::Deduction(&request.get_ref().deduction_id),
            )
            .await?;
        let pb::GetDeductionRequest { deduction_id } = request.into_inner();
        let id = convert::identifier("deduction_id", &deduction_id).map_err(bad)?;
        let deduction = self.deductions.get(&actor, Rpc::GetDeduction, &id).await?;
        Ok(Response::new(pb::GetDeductionResponse {
            deduction: Some(convert::to_deduction(&deduction)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListDeductions"))]
    async fn list_deductions(
        &self,
        request: Request<pb::ListDeductionsRequest>,
    ) -> Result<Response<pb::ListDeductionsResponse>, Status> {
        let actor = self.authorize(&request, Rpc::ListDeductions, None).await?;
        let pb::ListDeductionsRequest {
            mandate_id,
            status,
            created_from,
            created_until,
            page_size,
            page_token,
        } = request.into_inner();
        let query = DeductionQuery {
            mandate_id: (!mandate_id.is_empty())
                .then(|| MandateId::parse("mandate_id", &mandate_id))
                .transpose()
                .map_err(bad)?,
            status: (status != pb::DeductionStatus::Unspecified as i32)
                .then(|| convert::deduction_status("status", status))
                .transpose()
                .map_err(bad)?,
            created_from: convert::timestamp("created_from", created_from).map_err(bad)?,
            created_until: convert::timestamp("created_until", created_until).map_err(bad)?,
            before: decode_page_token(&page_token).map_err(bad)?,
            ..DeductionQuery::default()
        };
        let (deductions, next) = self.deductions.list(&actor, query, page_size).await?;
        Ok(Response::new(pb::ListDeductionsResponse {
            deductions: deductions.iter().map(convert::to_deduction).collect(),
            next_page_token: next.map(|id| encode_page_token(&id)).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RefundDeduction"))]
    async fn refund_deduction(
        &self,
        request: Request<pb::RefundDeductionRequest>,
    ) -> Result<Response<pb::RefundDeductionResponse>, Status> {
        let actor = self
            .authorize_on(
                &request,
                Rpc::RefundDeduction,
                Named::Deduction(&request.get_ref().deduction_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::RefundDeduction, &message);
        let pb::RefundDeductionRequest {
            request_id,
            deduction_id,
            amount,
            reason,
        } = message;
        let request_id = required_request_id(&request_id)?;
        let deduction_id = convert::identifier("deduction_id", &deduction_id).map_err(bad)?;
        let amount = convert::money("amount", amount).map_err(bad)?;
        let reason = convert::reason(reason).map_err(bad)?;
        let service = self.deductions.clone();
        let (refund, deduction, replayed) = detached(async move {
            let request = RefundRequest {
                deduction_id,
                amount,
                reason,
                request_id,
                fingerprint,
            };
            service.refund(&actor, request).await
        })
        .await?;
        Ok(Response::new(pb::RefundDeductionResponse {
            refund: Some(convert::to_refund(&refund)),
            deduction: Some(convert::to_deduction(&deduction)),
            replayed,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RequestOneOffApproval"))]
    async fn request_one_off_approval(
        &self,
        request: Request<pb::RequestOneOffApprovalRequest>,
    ) -> Result<Response<pb::RequestOneOffApprovalResponse>, Status> {
        let actor = self
            .authorize_on(
                &request,
                Rpc::RequestOneOffApproval,
                Named::Deduction(&request.get_ref().deduction_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::RequestOneOffApproval, &message);
        let pb::RequestOneOffApprovalRequest {
            request_id,
            deduction_id,
            reason,
        } = message;
        let request_id = required_request_id(&request_id)?;
        let deduction_id = convert::identifier("deduction_id", &deduction_id).map_err(bad)?;
        crate::domain::text::check_required_text("reason", &reason).map_err(bad)?;
        let service = self.deductions.clone();
        let approval = detached(async move {
            service
                .request_approval(&actor, &deduction_id, reason, request_id, fingerprint)
                .await
        })
        .await?;
        Ok(Response::new(pb::RequestOneOffApprovalResponse {
            approval: Some(convert::to_approval(&approval)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ApproveOneOff"))]
    async fn approve_one_off(
        &self,
        request: Request<pb::ApproveOneOffRequest>,
    ) -> Result<Response<pb::ApproveOneOffResponse>, Status> {
        let actor = self
            .authorize_on(
                &request,
                Rpc::ApproveOneOff,
                Named::Approval(&request.get_ref().approval_id),
            )
            .await?;
        let pb::ApproveOneOffRequest { approval_id } = request.into_inner();
        let approval_id = convert::identifier("approval_id", &approval_id).map_err(bad)?;
        let service = self.deductions.clone();
        let approval = detached(async move {
            service
                .decide_approval(&actor, &approval_id, true, "")
                .await
        })
        .await?;
        Ok(Response::new(pb::ApproveOneOffResponse {
            approval: Some(convert::to_approval(&approval)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RejectOneOff"))]
    async fn reject_one_off(
        &self,
        request: Request<pb::RejectOneOffRequest>,
    ) -> Result<Response<pb::RejectOneOffResponse>, Status> {
        let actor = self
            .authorize_on(
                &request,
                Rpc::RejectOneOff,
                Named::Approval(&request.get_ref().approval_id),
            )
            .await?;
        let pb::RejectOneOffRequest {
            approval_id,
            reason,
        } = request.into_inner();
        let approval_id = convert::identifier("approval_id", &approval_id).map_err(bad)?;
        let reason = convert::reason(reason).map_err(bad)?;
        let service = self.deductions.clone();
        let approval = detached(async move {
            service
                .decide_approval(&actor, &approval_id, false, &reason)
                .await
        })
        .await?;
        Ok(Response::new(pb::RejectOneOffResponse {
            approval: Some(convert::to_approval(&approval)),
        }))
    }
}

#[derive(Clone)]
pub struct WalletApi {
    deductions: DeductionService,
    mandates: MandateService,
}

impl WalletApi {
    pub fn new(deductions: DeductionService, mandates: MandateService) -> Self {
        Self {
            deductions,
            mandates,
        }
    }
}

#[tonic::async_trait]
impl WalletRpc for WalletApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreditWallet"))]
    async fn credit_wallet(
        &self,
        request: Request<pb::CreditWalletRequest>,
    ) -> Result<Response<pb::CreditWalletResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::CreditWallet, None).await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::CreditWallet, &message);
        let pb::CreditWalletRequest {
            request_id,
            payer_id,
            amount,
            reason,
        } = message;
        let request_id = required_request_id(&request_id)?;
        let payer_id = PayerId::parse("payer_id", &payer_id).map_err(bad)?;
        let amount = convert::money("amount", amount).map_err(bad)?;
        let reason = convert::reason(reason).map_err(bad)?;
        let service = self.deductions.clone();
        let currency = amount.currency();
        let (balance, replayed) = detached(async move {
            service
                .credit_wallet(
                    &actor,
                    &payer_id,
                    amount,
                    &reason,
                    &request_id,
                    &fingerprint,
                )
                .await
        })
        .await?;
        Ok(Response::new(pb::CreditWalletResponse {
            balance: Some(convert::to_money_minor(currency, balance)),
            replayed,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetWalletBalance"))]
    async fn get_wallet_balance(
        &self,
        request: Request<pb::GetWalletBalanceRequest>,
    ) -> Result<Response<pb::GetWalletBalanceResponse>, Status> {
        let actor = authorize(&self.mandates, &request, Rpc::GetWalletBalance, None).await?;
        let pb::GetWalletBalanceRequest {
            payer_id,
            currency_code,
        } = request.into_inner();
        let payer_id = (!payer_id.is_empty())
            .then(|| PayerId::parse("payer_id", &payer_id))
            .transpose()
            .map_err(bad)?;
        let currency = convert::currency("currency_code", &currency_code).map_err(bad)?;
        let balance = self
            .deductions
            .wallet_balance(&actor, payer_id, currency)
            .await?;
        Ok(Response::new(pb::GetWalletBalanceResponse {
            balance: Some(convert::to_money_minor(currency, balance)),
        }))
    }
}
