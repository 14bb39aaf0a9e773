//! Mandate use cases: create, read, list, and every lifecycle change, each stored with its
//! audit event in one transaction.

use std::sync::Arc;

use jiff::{Span, Timestamp};
use serde_json::json;

use super::refusals::{Refusal, RefusalLog, RefusalReason};
use super::{Error, Rpc};
use crate::clock::Clock;
use crate::domain::FieldViolation;
use crate::domain::actor::{Actor, TenantFilter};
use crate::domain::audit::{AuditDraft, REFUND_RECOVERY_NOT_MANDATABLE};
use crate::domain::consent::{ConsentEvidence, ConsentInput};
use crate::domain::funding::{FundingSource, FundingSources};
use crate::domain::ids::{ContractId, MandateId, MerchantId, PayerId, RequestId};
use crate::domain::mandate::{Mandate, MandateStatus, NewMandate, Transition};
use crate::domain::terms::{Purpose, TermsDraft};
use crate::storage::{
    IdempotencyRecord, Inserted, MandateInsert, MandateQuery, MandateUpdate, Store, StoreError,
};

/// How often one request re-reads and retries a mandate that others changed under it.
const MAX_ATTEMPTS: usize = 5;
/// Largest and default page of `ListMandates`.
pub const MAX_PAGE_SIZE: u32 = 500;
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// Policy knobs of the mandate lifecycle.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a created mandate waits for the payer's consent (default 24 h).
    pub consent_window: Span,
    /// A mandate with no collection for this long expires (default 36 months).
    pub dormancy: Span,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consent_window: Span::new().hours(24),
            dormancy: Span::new().months(36),
        }
    }
}

/// A merchant's request to create a mandate.
pub struct CreateMandate {
    pub contract_id: ContractId,
    pub payer_id: PayerId,
    pub terms: TermsDraft,
    /// SHA-256 of the request as sent: a retry with the same contract id must match it.
    pub fingerprint: String,
}

/// A caller's idempotency key and the fingerprint of the request that carries it.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub request_id: RequestId,
    pub fingerprint: String,
}

/// One lifecycle change, with the caller's parsed input.
#[derive(Debug, Clone)]
pub enum Change {
    Confirm {
        shown_version: i64,
        consent: ConsentInput,
        sources: Vec<FundingSource>,
    },
    SetFundingSources {
        sources: Vec<FundingSource>,
    },
    Pause {
        reason: String,
    },
    Resume {
        reason: String,
    },
    Suspend {
        reason: String,
    },
    Reinstate {
        reason: String,
    },
    Revoke {
        reason: String,
    },
    Terminate {
        reason: String,
    },
    Amend {
        terms: TermsDraft,
        reason: String,
    },
    ConfirmAmendment {
        shown_version: i64,
        consent: ConsentInput,
    },
}

impl Change {
    /// The RPC that asks for this change.
    pub fn rpc(&self) -> Rpc {
        match self {
            Self::Confirm { .. } => Rpc::ConfirmMandate,
            Self::SetFundingSources { .. } => Rpc::SetFundingSources,
            Self::Pause { .. } => Rpc::PauseMandate,
            Self::Resume { .. } => Rpc::ResumeMandate,
            Self::Suspend { .. } => Rpc::SuspendMandate,
            Self::Reinstate { .. } => Rpc::ReinstateMandate,
            Self::Revoke { .. } => Rpc::RevokeMandate,
            Self::Terminate { .. } => Rpc::TerminateMandate,
            Self::Amend { .. } => Rpc::AmendMandate,
            Self::ConfirmAmendment { .. } => Rpc::ConfirmAmendment,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Pause { reason }
            | Self::Resume { reason }
            | Self::Suspend { reason }
            | Self::Reinstate { reason }
            | Self::Revoke { reason }
            | Self::Terminate { reason }
            | Self::Amend { reason, .. } => reason,
            Self::Confirm { .. }
            | Self::SetFundingSources { .. }
            | Self::ConfirmAmendment { .. } => "",
        }
    }

    fn apply(&self, m: &mut Mandate, now: Timestamp) -> Result<Transition, Error> {
        let subject = m.id.to_string();
        let sources = |list: &[FundingSource], m: &Mandate| {
            FundingSources::new("funding_sources", list.to_vec(), m.terms.currency)
        };
        let result = match self {
            Self::Confirm {
                shown_version,
                consent,
                sources: list,
            } => {
                let evidence = ConsentEvidence::new(consent.clone(), now, *shown_version)?;
                let list = sources(list, m)?;
                m.confirm(*shown_version, evidence, list, now)
            }
            Self::SetFundingSources { sources: list } => {
                let list = sources(list, m)?;
                m.set_funding_sources(list, now)
            }
            Self::Pause { reason } => m.pause(reason, now),
            Self::Resume { reason } => m.resume(reason, now),
            Self::Suspend { reason } => m.suspend(reason, now),
            Self::Reinstate { reason } => m.reinstate(reason, now),
            Self::Revoke { reason } => m.revoke(reason, now),
            Self::Terminate { reason } => m.terminate(reason, now),
            Self::Amend { terms, reason } => {
                let terms = terms.clone().complete(m.terms.valid_from)?;
                check_still_valid(&terms.valid_until, now)?;
                m.amend(terms, reason, now)
            }
            Self::ConfirmAmendment {
                shown_version,
                consent,
            } => {
                let evidence = ConsentEvidence::new(consent.clone(), now, *shown_version)?;
                m.confirm_amendment(*shown_version, evidence, now)
            }
        };
        result.map_err(|e| Error::from_mandate(&subject, e))
    }
}

/// The result of a change.
#[derive(Debug, Clone)]
pub struct Changed {
    pub mandate: Mandate,
    /// True when a request id was replayed and the original result returned.
    pub replayed: bool,
}

/// `ListMandates` filters as the caller sent them.
#[derive(Debug, Clone, Default)]
pub struct MandateFilter {
    pub merchant_id: Option<MerchantId>,
    pub payer_id: Option<PayerId>,
    pub status: Option<MandateStatus>,
    pub contract_id: Option<ContractId>,
}

pub struct ListPage {
    pub mandates: Vec<Mandate>,
    /// The last mandate of a full page: the next page starts after it.
    pub next: Option<MandateId>,
}

/// Mandate use cases. Cheap to clone; every clone shares the store, clock and refusal log.
#[derive(Clone)]
pub struct MandateService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    refusals: Arc<RefusalLog>,
}

impl MandateService {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        let refusals = Arc::new(RefusalLog::new(store.clone(), clock.clone()));
        Self {
            store,
            clock,
            settings,
            refusals,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Creates a mandate waiting for the payer's consent, or returns the one this merchant
    /// already created with the same contract id and the same request.
    pub async fn create(
        &self,
        actor: &Actor,
        req: CreateMandate,
    ) -> Result<(Mandate, bool), Error> {
        let merchant_id = actor
            .merchant_id
            .clone()
            .ok_or_else(|| Error::PermissionDenied("a merchant token needs merchant_id".into()))?;
        let now = self.now();
        if req.terms.purposes.contains(&Purpose::RefundRecovery) {
            self.refuse_clawback_authority(actor, Rpc::CreateMandate, req.contract_id.as_str())
                .await?;
        }
        let terms = req.terms.complete(now)?;
        check_still_valid(&terms.valid_until, now)?;
        let mandate = Mandate::create(
            NewMandate {
                id: MandateId::generate(),
                merchant_id,
                contract_id: req.contract_id,
                payer_id: req.payer_id,
                terms,
            },
            now,
            self.settings.consent_window,
        )?;
        let mut audit = self.audit_for(actor, &mandate, Transition::Created.action(), now);
        audit.details = json!({
            "to": mandate.status.as_str(),
            "version": mandate.version,
            "contract_id": mandate.contract_id.as_str(),
        })
        .to_string();
        let expires_at = self.expires_at(&mandate);
        match self
            .store
            .insert_mandate(MandateInsert {
                mandate: &mandate,
                expires_at,
                fingerprint: &req.fingerprint,
                audit: &audit,
            })
            .await?
        {
            Inserted::New => {
                tracing::info!(mandate_id = %mandate.id, merchant_id = %mandate.merchant_id, "mandate created");
                Ok((mandate, false))
            }
            Inserted::Existing {
                mandate,
                fingerprint,
            } if fingerprint == req.fingerprint => Ok((*mandate, true)),
            Inserted::Existing { .. } => Err(Error::AlreadyExists {
                reason: "CONTRACT_ID_REUSED",
                message:
                    "merchant_contract_id already names a mandate created with different parameters"
                        .into(),
            }),
        }
    }

    /// A mandate the caller may see, now or as it stood at `as_of`.
    pub async fn get(
        &self,
        actor: &Actor,
        rpc: Rpc,
        id: &MandateId,
        as_of: Option<Timestamp>,
    ) -> Result<Mandate, Error> {
        let current = self.visible(actor, rpc, id).await?;
        let Some(as_of) = as_of else {
            return Ok(current);
        };
        self.store
            .mandate_as_of(id, as_of)
            .await?
            .ok_or(Error::NotFound {
                what: "mandate version at as_of",
            })
    }

    /// A page of the mandates inside the caller's tenancy, newest first.
    pub async fn list(
        &self,
        actor: &Actor,
        filter: MandateFilter,
        page_size: u32,
        after: Option<MandateId>,
    ) -> Result<ListPage, Error> {
        let limit = page_limit(page_size)?;
        // Narrowed to the caller's tenancy; a filter outside it matches nothing.
        let asked = TenantFilter {
            merchant: filter.merchant_id,
            payer: filter.payer_id,
        };
        let Some(TenantFilter { merchant, payer }) = actor.narrow(asked) else {
            return Ok(ListPage {
                mandates: vec![],
                next: None,
            });
        };
        let query = MandateQuery {
            merchant_id: merchant,
            payer_id: payer,
            status: filter.status,
            contract_id: filter.contract_id,
            before: after,
            limit: limit + 1,
        };
        let mut mandates = self.store.list_mandates(&query).await?;
        let next = next_page(&mut mandates, limit, |m| m.id.clone());
        Ok(ListPage { mandates, next })
    }

    /// Applies one lifecycle change for `actor`, idempotently when `key` is given.
    pub async fn change(
        &self,
        actor: &Actor,
        id: &MandateId,
        key: Option<RequestKey>,
        change: Change,
    ) -> Result<Changed, Error> {
        let rpc = change.rpc();
        if let Change::Amend { terms, .. } = &change
            && terms.purposes.contains(&Purpose::RefundRecovery)
        {
            self.refuse_clawback_authority(actor, rpc, id.as_str())
                .await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            // The mandate is read before the key: a concurrent request with the same key commits
            // its change and its key together, so if this read already sees the change, the key
            // read after it sees the key too, and the answer is a replay rather than a refusal.
            let current = self.visible(actor, rpc, id).await?;
            if let Some(key) = &key
                && let Some(replayed) = self.replay(actor, id, key).await?
            {
                return Ok(Changed {
                    mandate: replayed,
                    replayed: true,
                });
            }
            let current = match self.expire_if_due(current).await {
                Ok(m) => m,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            };
            let now = self.now();
            let mut changed = current.clone();
            let transition = change.apply(&mut changed, now)?;
            let mut audit = self.audit_for(actor, &changed, transition.action(), now);
            audit.request_id = key.as_ref().map(|k| k.request_id.to_string());
            audit.details = json!({
                "from": current.status.as_str(),
                "to": changed.status.as_str(),
                "version": changed.version,
                "reason": change.reason(),
            })
            .to_string();
            let record = key.as_ref().map(|k| IdempotencyRecord {
                scope: actor.idempotency_scope(),
                request_id: k.request_id.to_string(),
                fingerprint: k.fingerprint.clone(),
                mandate_id: changed.id.clone(),
                mandate_version: changed.version,
                created_at: now,
            });
            let update = MandateUpdate {
                mandate: &changed,
                expected_version: current.version,
                expires_at: self.expires_at(&changed),
                audit: &audit,
                idempotency: record.as_ref(),
            };
            match self.store.update_mandate(update).await {
                Ok(()) => {
                    tracing::info!(mandate_id = %changed.id, action = transition.action(), version = changed.version, "mandate changed");
                    return Ok(Changed {
                        mandate: changed,
                        replayed: false,
                    });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the mandate kept changing concurrently; retry".into(),
        ))
    }

    /// PERMISSION_DENIED for `rpc`, recorded against the caller when the mandate it names
    /// exists (DESIGN §2: each refusal on a real resource is an audit event).
    pub async fn refuse_role(&self, actor: &Actor, rpc: Rpc, mandate_id: Option<&str>) -> Error {
        let Some(id) = mandate_id.and_then(|id| MandateId::parse("mandate_id", id).ok()) else {
            return self.refuse_role_on(actor, rpc, None).await;
        };
        match self.store.mandate(&id).await {
            Ok(found) => {
                let named = found.map(|m| ("mandate", m.id.to_string()));
                self.refuse_role_on(actor, rpc, named).await
            }
            Err(e) => e.into(),
        }
    }

    /// PERMISSION_DENIED for `rpc`, recorded against the caller when it named a resource that
    /// exists (`named`: its kind and id).
    pub async fn refuse_role_on(
        &self,
        actor: &Actor,
        rpc: Rpc,
        named: Option<(&'static str, String)>,
    ) -> Error {
        if let Some((resource, resource_id)) = named {
            let refusal = Refusal {
                rpc,
                reason: RefusalReason::RoleNotAllowed,
                resource,
                resource_id,
            };
            if let Err(e) = self.refusals.record(actor, refusal).await {
                return e;
            }
        }
        Error::PermissionDenied(format!(
            "role {} may not call {}",
            actor.role.as_str(),
            rpc.name()
        ))
    }

    /// NOT_FOUND for a resource of another tenant, exactly as for one that does not exist; the
    /// refusal is recorded against the caller (never on the resource's chain).
    pub async fn refuse_other_tenant(
        &self,
        actor: &Actor,
        rpc: Rpc,
        resource: &'static str,
        resource_id: &str,
    ) -> Error {
        let refusal = Refusal {
            rpc,
            reason: RefusalReason::OtherTenant,
            resource,
            resource_id: resource_id.to_owned(),
        };
        match self.refusals.record(actor, refusal).await {
            Ok(()) => Error::NotFound { what: resource },
            Err(e) => e,
        }
    }

    /// Where refusals are recorded (its windows are flushed by a background task).
    pub fn refusals(&self) -> Arc<RefusalLog> {
        self.refusals.clone()
    }

    /// Expires every mandate whose time has run out, at most `limit` per call; returns how many.
    pub async fn expire_due(&self, limit: u32) -> Result<usize, Error> {
        let due = self.store.mandates_expiring_by(self.now(), limit).await?;
        let mut expired = 0;
        for id in due {
            let Some(mandate) = self.store.mandate(&id).await? else {
                continue;
            };
            match self.expire_if_due(mandate).await {
                Ok(m) if m.status == MandateStatus::Expired => expired += 1,
                // Someone changed it meanwhile; the next sweep looks again.
                Ok(_) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(expired)
    }

    async fn replay(
        &self,
        actor: &Actor,
        id: &MandateId,
        key: &RequestKey,
    ) -> Result<Option<Mandate>, Error> {
        let scope = actor.idempotency_scope();
        let Some(record) = self
            .store
            .idempotency_record(&scope, key.request_id.as_str())
            .await?
        else {
            return Ok(None);
        };
        if record.fingerprint != key.fingerprint || record.mandate_id != *id {
            return Err(Error::AlreadyExists {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: "request_id was already used for a different request".into(),
            });
        }
        let mandate = self
            .store
            .mandate_version(&record.mandate_id, record.mandate_version)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("idempotency record names missing version of {id}"))
            })?;
        Ok(Some(mandate))
    }

    /// The mandate, if it exists inside the caller's tenancy. Outside it, the caller learns
    /// nothing (NOT_FOUND) and the attempt is recorded against the caller.
    pub(crate) async fn visible(
        &self,
        actor: &Actor,
        rpc: Rpc,
        id: &MandateId,
    ) -> Result<Mandate, Error> {
        let Some(mandate) = self.store.mandate(id).await? else {
            return Err(Error::NotFound { what: "mandate" });
        };
        if actor.can_see(&mandate) {
            return Ok(mandate);
        }
        Err(self
            .refuse_other_tenant(actor, rpc, "mandate", id.as_str())
            .await)
    }

    /// Stores the expiry of a mandate whose time ran out, and returns the mandate as it now is.
    async fn expire_if_due(&self, mandate: Mandate) -> Result<Mandate, StoreError> {
        let now = self.now();
        let Some(cause) = mandate.expiry_due(now, self.settings.dormancy) else {
            return Ok(mandate);
        };
        let mut expired = mandate.clone();
        let transition = expired
            .expire(cause, now)
            .map_err(|e| StoreError::Corrupt(format!("expiry of a live mandate refused: {e}")))?;
        let mut audit = self.audit_for(&Actor::system(), &expired, transition.action(), now);
        audit.reason_code = Some(cause.as_str().into());
        audit.details = json!({
            "from": mandate.status.as_str(),
            "to": expired.status.as_str(),
            "version": expired.version,
        })
        .to_string();
        self.store
            .update_mandate(MandateUpdate {
                mandate: &expired,
                expected_version: mandate.version,
                expires_at: None,
                audit: &audit,
                idempotency: None,
            })
            .await?;
        tracing::info!(mandate_id = %expired.id, cause = cause.as_str(), "mandate expired");
        Ok(expired)
    }

    fn expires_at(&self, mandate: &Mandate) -> Option<Timestamp> {
        mandate
            .next_expiry(self.settings.dormancy)
            .map(|(at, _)| at)
    }

    /// Records a mandate or amendment naming the `REFUND_RECOVERY` purpose, which the terms
    /// then refuse as malformed: an attempt to obtain clawback authority is a policy event an
    /// auditor sees (DESIGN §5), on the caller's own chain (the mandate named may be another
    /// tenant's).
    async fn refuse_clawback_authority(
        &self,
        actor: &Actor,
        rpc: Rpc,
        subject: &str,
    ) -> Result<(), Error> {
        let mut audit = AuditDraft::new(self.now(), actor, "CLAWBACK_AUTHORITY_REFUSED", "DENIED");
        audit.chain = Some(actor.own_chain_id());
        audit.merchant_id = actor.merchant_id.as_ref().map(ToString::to_string);
        audit.reason_code = Some(REFUND_RECOVERY_NOT_MANDATABLE.to_owned());
        audit.details = json!({
            "rpc": rpc.name(),
            "subject": subject,
            "purpose": "REFUND_RECOVERY",
        })
        .to_string();
        self.store.append_audit(&audit).await?;
        Ok(())
    }

    fn audit_for(
        &self,
        actor: &Actor,
        mandate: &Mandate,
        action: &str,
        at: Timestamp,
    ) -> AuditDraft {
        let mut audit = AuditDraft::new(at, actor, action, "OK");
        audit.merchant_id = Some(mandate.merchant_id.to_string());
        audit.payer_id = Some(mandate.payer_id.to_string());
        audit.mandate_id = Some(mandate.id.to_string());
        audit
    }
}

/// The page size to use: 0 means the default; above the maximum is refused.
pub(crate) fn page_limit(page_size: u32) -> Result<u32, Error> {
    page_limit_within(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

/// The page size to use where the default and maximum are `default` and `max`.
pub(crate) fn page_limit_within(page_size: u32, default: u32, max: u32) -> Result<u32, Error> {
    match page_size {
        0 => Ok(default),
        n if n > max => {
            Err(FieldViolation::new("page_size", format!("must be at most {max}")).into())
        }
        n => Ok(n),
    }
}

/// Trims a page fetched with one extra row; the cursor of the next page if there is one.
pub(crate) fn next_page<T, K>(rows: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(key)
    } else {
        None
    }
}

fn check_still_valid(
    valid_until: &Option<Timestamp>,
    now: Timestamp,
) -> Result<(), FieldViolation> {
    match valid_until {
        Some(until) if *until <= now => Err(FieldViolation::new(
            "terms.valid_until",
            "must be in the future",
        )),
        _ => Ok(()),
    }
}
