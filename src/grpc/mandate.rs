//! `withholding.v1.MandateService` handlers: authorise, convert, call the service, convert back.
//! Writes run in a spawned task so a client that disconnects cannot cancel a transaction halfway.

use prost::Message;
use tonic::{Request, Response, Status};

use super::status::invalid_argument;
use super::{authorize, bad, convert, detached, fingerprint};
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::ids::{ContractId, MandateId, MerchantId, PayerId};
use crate::domain::mandate::Mandate;
use crate::pb;
use crate::pb::mandate_service_server::MandateService as MandateServiceRpc;
use crate::service::{Change, CreateMandate, MandateFilter, MandateService, RequestKey, Rpc};

/// The gRPC face of [`MandateService`].
#[derive(Clone)]
pub struct MandateApi {
    service: MandateService,
}

impl MandateApi {
    pub fn new(service: MandateService) -> Self {
        Self { service }
    }

    async fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
        mandate_id: Option<&str>,
    ) -> Result<Actor, Status> {
        authorize(&self.service, request, rpc, mandate_id).await
    }

    /// Runs a lifecycle change to completion even if the client goes away meanwhile.
    async fn change(
        &self,
        actor: Actor,
        mandate_id: &str,
        request_id: &str,
        fingerprint: String,
        change: Change,
    ) -> Result<pb::Mandate, Status> {
        let id = MandateId::parse("mandate_id", mandate_id).map_err(invalid_argument)?;
        let key = convert::request_id(request_id)
            .map_err(invalid_argument)?
            .map(|request_id| RequestKey {
                request_id,
                fingerprint,
            });
        let service = self.service.clone();
        let changed =
            detached(async move { service.change(&actor, &id, key, change).await }).await?;
        Ok(convert::to_mandate(&changed.mandate))
    }
}

/// Requests of the shape `{mandate_id, reason, request_id}`.
trait ReasonRequest: Message + Sized {
    const RPC: Rpc;
    fn into_parts(self) -> (String, String, String);
    fn change(reason: String) -> Change;
    fn mandate_id(&self) -> &str;
}

macro_rules! reason_request {
    ($request:ident, $rpc:ident, $change:ident) => {
        impl ReasonRequest for pb::$request {
            const RPC: Rpc = Rpc::$rpc;
            fn into_parts(self) -> (String, String, String) {
                let pb::$request {
                    mandate_id,
                    reason,
                    request_id,
                } = self;
                (mandate_id, reason, request_id)
            }
            fn change(reason: String) -> Change {
                Change::$change { reason }
            }
            fn mandate_id(&self) -> &str {
                &self.mandate_id
            }
        }
    };
}

reason_request!(PauseMandateRequest, PauseMandate, Pause);
reason_request!(ResumeMandateRequest, ResumeMandate, Resume);
reason_request!(SuspendMandateRequest, SuspendMandate, Suspend);
reason_request!(ReinstateMandateRequest, ReinstateMandate, Reinstate);
reason_request!(RevokeMandateRequest, RevokeMandate, Revoke);
reason_request!(TerminateMandateRequest, TerminateMandate, Terminate);

impl MandateApi {
    async fn reason_change<R: ReasonRequest>(
        &self,
        request: Request<R>,
    ) -> Result<pb::Mandate, Status> {
        let actor = self
            .authorize(&request, R::RPC, Some(request.get_ref().mandate_id()))
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(R::RPC, &message);
        let (mandate_id, reason, request_id) = message.into_parts();
        let reason = convert::reason(reason).map_err(bad)?;
        self.change(
            actor,
            &mandate_id,
            &request_id,
            fingerprint,
            R::change(reason),
        )
        .await
    }
}

fn one(mandate: &Mandate) -> Option<pb::Mandate> {
    Some(convert::to_mandate(mandate))
}

#[tonic::async_trait]
impl MandateServiceRpc for MandateApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateMandate"))]
    async fn create_mandate(
        &self,
        request: Request<pb::CreateMandateRequest>,
    ) -> Result<Response<pb::CreateMandateResponse>, Status> {
        let actor = self.authorize(&request, Rpc::CreateMandate, None).await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::CreateMandate, &message);
        let pb::CreateMandateRequest {
            merchant_contract_id,
            payer_id,
            terms,
        } = message;
        let create = CreateMandate {
            contract_id: crate::domain::ids::ContractId::parse(
                "merchant_contract_id",
                &merchant_contract_id,
            )
            .map_err(bad)?,
            payer_id: PayerId::parse("payer_id", &payer_id).map_err(bad)?,
            terms: convert::terms(terms).map_err(bad)?,
            fingerprint,
        };
        let service = self.service.clone();
        let (mandate, existing) =
            detached(async move { service.create(&actor, create).await }).await?;
        Ok(Response::new(pb::CreateMandateResponse {
            mandate: one(&mandate),
            existing,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetMandate"))]
    async fn get_mandate(
        &self,
        request: Request<pb::GetMandateRequest>,
    ) -> Result<Response<pb::GetMandateResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::GetMandate,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let pb::GetMandateRequest { mandate_id, as_of } = request.into_inner();
        let id = MandateId::parse("mandate_id", &mandate_id).map_err(bad)?;
        let as_of = convert::timestamp("as_of", as_of).map_err(bad)?;
        let mandate = self
            .service
            .get(&actor, Rpc::GetMandate, &id, as_of)
            .await?;
        Ok(Response::new(pb::GetMandateResponse {
            mandate: one(&mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListMandates"))]
    async fn list_mandates(
        &self,
        request: Request<pb::ListMandatesRequest>,
    ) -> Result<Response<pb::ListMandatesResponse>, Status> {
        let actor = self.authorize(&request, Rpc::ListMandates, None).await?;
        let pb::ListMandatesRequest {
            payer_id,
            merchant_id,
            status,
            page_size,
            page_token,
            merchant_contract_id,
        } = request.into_inner();
        let filter = MandateFilter {
            payer_id: (!payer_id.is_empty())
                .then(|| PayerId::parse("payer_id", &payer_id))
                .transpose()
                .map_err(bad)?,
            merchant_id: (!merchant_id.is_empty())
                .then(|| MerchantId::parse("merchant_id", &merchant_id))
                .transpose()
                .map_err(bad)?,
            status: (status != pb::MandateStatus::Unspecified as i32)
                .then(|| convert::mandate_status("status", status))
                .transpose()
                .map_err(bad)?,
            contract_id: (!merchant_contract_id.is_empty())
                .then(|| ContractId::parse("merchant_contract_id", &merchant_contract_id))
                .transpose()
                .map_err(bad)?,
        };
        let after = decode_page_token(&page_token).map_err(bad)?;
        let page = self.service.list(&actor, filter, page_size, after).await?;
        Ok(Response::new(pb::ListMandatesResponse {
            mandates: page.mandates.iter().map(convert::to_mandate).collect(),
            next_page_token: page
                .next
                .map(|id| encode_page_token(&id))
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ConfirmMandate"))]
    async fn confirm_mandate(
        &self,
        request: Request<pb::ConfirmMandateRequest>,
    ) -> Result<Response<pb::ConfirmMandateResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::ConfirmMandate,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::ConfirmMandate, &message);
        let pb::ConfirmMandateRequest {
            mandate_id,
            mandate_version,
            consent,
            funding_sources,
            request_id,
        } = message;
        let change = Change::Confirm {
            shown_version: convert::shown_version(mandate_version).map_err(bad)?,
            consent: convert::consent(consent).map_err(bad)?,
            sources: convert::funding_sources(funding_sources).map_err(bad)?,
        };
        let mandate = self
            .change(actor, &mandate_id, &request_id, fingerprint, change)
            .await?;
        Ok(Response::new(pb::ConfirmMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SetFundingSources"))]
    async fn set_funding_sources(
        &self,
        request: Request<pb::SetFundingSourcesRequest>,
    ) -> Result<Response<pb::SetFundingSourcesResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::SetFundingSources,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::SetFundingSources, &message);
        let pb::SetFundingSourcesRequest {
            mandate_id,
            funding_sources,
            request_id,
        } = message;
        let change = Change::SetFundingSources {
            sources: convert::funding_sources(funding_sources).map_err(bad)?,
        };
        let mandate = self
            .change(actor, &mandate_id, &request_id, fingerprint, change)
            .await?;
        Ok(Response::new(pb::SetFundingSourcesResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "PauseMandate"))]
    async fn pause_mandate(
        &self,
        request: Request<pb::PauseMandateRequest>,
    ) -> Result<Response<pb::PauseMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::PauseMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResumeMandate"))]
    async fn resume_mandate(
        &self,
        request: Request<pb::ResumeMandateRequest>,
    ) -> Result<Response<pb::ResumeMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::ResumeMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SuspendMandate"))]
    async fn suspend_mandate(
        &self,
        request: Request<pb::SuspendMandateRequest>,
    ) -> Result<Response<pb::SuspendMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::SuspendMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReinstateMandate"))]
    async fn reinstate_mandate(
        &self,
        request: Request<pb::ReinstateMandateRequest>,
    ) -> Result<Response<pb::ReinstateMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::ReinstateMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RevokeMandate"))]
    async fn revoke_mandate(
        &self,
        request: Request<pb::RevokeMandateRequest>,
    ) -> Result<Response<pb::RevokeMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::RevokeMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "TerminateMandate"))]
    async fn terminate_mandate(
        &self,
        request: Request<pb::TerminateMandateRequest>,
    ) -> Result<Response<pb::TerminateMandateResponse>, Status> {
        let mandate = self.reason_change(request).await?;
        Ok(Response::new(pb::TerminateMandateResponse {
            mandate: Some(mandate),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "AmendMandate"))]
    async fn amend_mandate(
        &self,
        request: Request<pb::AmendMandateRequest>,
    ) -> Result<Response<pb::AmendMandateResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::AmendMandate,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::AmendMandate, &message);
        let pb::AmendMandateRequest {
            mandate_id,
            terms,
            reason,
            request_id,
        } = message;
        let change = Change::Amend {
            terms: convert::terms(terms).map_err(bad)?,
            reason: convert::reason(reason).map_err(bad)?,
        };
        let mandate = self
            .change(actor, &mandate_id, &request_id, fingerprint, change)
            .await?;
        let outcome = if mandate.pending_amendment.is_some() {
            pb::AmendmentOutcome::PendingPayerConfirmation
        } else {
            pb::AmendmentOutcome::Applied
        };
        Ok(Response::new(pb::AmendMandateResponse {
            mandate: Some(mandate),
            outcome: outcome as i32,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ConfirmAmendment"))]
    async fn confirm_amendment(
        &self,
        request: Request<pb::ConfirmAmendmentRequest>,
    ) -> Result<Response<pb::ConfirmAmendmentResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Rpc::ConfirmAmendment,
                Some(&request.get_ref().mandate_id),
            )
            .await?;
        let message = request.into_inner();
        let fingerprint = fingerprint(Rpc::ConfirmAmendment, &message);
        let pb::ConfirmAmendmentRequest {
            mandate_id,
            mandate_version,
            request_id,
            consent,
        } = message;
        let change = Change::ConfirmAmendment {
            shown_version: convert::shown_version(mandate_version).map_err(bad)?,
            consent: convert::consent(consent).map_err(bad)?,
        };
        let mandate = self
            .change(actor, &mandate_id, &request_id, fingerprint, change)
            .await?;
        Ok(Response::new(pb::ConfirmAmendmentResponse {
            mandate: Some(mandate),
        }))
    }
}

fn encode_page_token(last: &MandateId) -> String {
    super::encode_page_token(last.as_str())
}

fn decode_page_token(token: &str) -> Result<Option<MandateId>, FieldViolation> {
    super::decode_page_token(token)?
        .map(|text| {
            MandateId::parse("page_token", &text).map_err(|_| {
                FieldViolation::new("page_token", "is not a token this service issued")
            })
        })
        .transpose()
}
