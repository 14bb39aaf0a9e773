//! The audit trail for compliance (DESIGN §6): selections and their export, a mandate's
//! history, blocked attempts, chain verification and signed checkpoints. Who sees what is the
//! tenancy rule of every other read (`Actor::tenancy`); every read by an auditor is itself an
//! audit event, on the auditor's own chain.

mod blocked;
mod key;
mod verify;

pub use blocked::{BlockedAttempts, BlockedQuery};
pub use key::{AuditKey, AuditPublicKey, SignatureError, SignedCheckpoint};
pub use verify::{Progress, VerifyOutcome, VerifyScope, verify_database, verify_store};

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::json;

use super::{Error, MandateService, Rpc};
use crate::clock::Clock;
use crate::domain::actor::{Actor, Tenancy};
use crate::domain::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::domain::ids::MandateId;
use crate::domain::mandate::Mandate;
use crate::storage::{AuditQuery, AuditStore, Store};

/// Events per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Events read per trip by an export: what the server holds of one export at a time.
pub const EXPORT_PAGE_SIZE: u32 = 500;
/// Versions of one mandate a history returns (each amendment or state change is one).
pub const MAX_VERSIONS: u32 = 1000;

/// One page of events and the cursor of the next.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<AuditEvent>,
    /// The `seq` to continue after; `None` on the last page.
    pub next: Option<i64>,
}

/// One version of a mandate and the event that recorded it.
#[derive(Debug)]
pub struct MandateVersion {
    pub version: i64,
    pub recorded_at: Timestamp,
    pub mandate: Mandate,
    pub event: Option<AuditEvent>,
}

#[derive(Debug)]
pub struct MandateHistory {
    /// Empty after the first page.
    pub versions: Vec<MandateVersion>,
    pub events: EventPage,
}

#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn Store>,
    audit: Arc<dyn AuditStore>,
    mandates: MandateService,
    clock: Arc<dyn Clock>,
    key: Arc<AuditKey>,
}

impl AuditService {
    pub fn new(
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditStore>,
        mandates: MandateService,
        clock: Arc<dyn Clock>,
        key: Arc<AuditKey>,
    ) -> Self {
        Self {
            store,
            audit,
            mandates,
            clock,
            key,
        }
    }

    /// One page of the selection, narrowed to what the caller may see.
    #[tracing::instrument(skip_all, fields(role = actor.role.as_str()))]
    pub async fn query(
        &self,
        actor: &Actor,
        filter: AuditFilter,
        newest_first: bool,
        page_size: u32,
        after: Option<i64>,
    ) -> Result<EventPage, Error> {
        let limit =
            super::mandates::page_limit_within(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        self.record_read(actor, Rpc::QueryAuditEvents, &filter, None)
            .await?;
        let Some(filter) = scoped(actor, filter) else {
            return Ok(EventPage {
                events: vec![],
                next: None,
            });
        };
        self.page(filter, newest_first, after, limit).await
    }

    /// The selection page by page, for an export: call [`Export::next_page`] until it is empty.
    pub async fn export(
        &self,
        actor: &Actor,
        filter: AuditFilter,
        newest_first: bool,
    ) -> Result<Export, Error> {
        self.record_read(actor, Rpc::ExportAuditEvents, &filter, None)
            .await?;
        Ok(Export {
            service: self.clone(),
            filter: scoped(actor, filter),
            newest_first,
            after: None,
            done: false,
        })
    }

    /// Every version of a mandate with the event that made it (first page only), and one page
    /// of all its events.
    pub async fn history(
        &self,
        actor: &Actor,
        id: &MandateId,
        page_size: u32,
        after: Option<i64>,
    ) -> Result<MandateHistory, Error> {
        let limit =
            super::mandates::page_limit_within(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        // NOT_FOUND outside the caller's tenancy (and that refusal recorded).
        self.mandates
            .get(actor, Rpc::GetMandateHistory, id, None)
            .await?;
        let filter = AuditFilter {
            mandate_id: Some(id.to_string()),
            ..AuditFilter::default()
        };
        self.record_read(actor, Rpc::GetMandateHistory, &filter, None)
            .await?;
        let versions = match after {
            Some(_) => vec![],
            None => self.versions(id).await?,
        };
        let events = self.page(filter, false, after, limit).await?;
        Ok(MandateHistory { versions, events })
    }

    async fn versions(&self, id: &MandateId) -> Result<Vec<MandateVersion>, Error> {
        let stored = self.audit.mandate_versions(id, MAX_VERSIONS).await?;
        // The events that recorded versions: the mandate's own actions, each naming the
        // version it produced.
        let recorded = self
            .audit
            .audit_events(&AuditQuery {
                filter: AuditFilter {
                    mandate_id: Some(id.to_string()),
                    action_prefix: Some("MANDATE_".into()),
                    ..AuditFilter::default()
                },
                newest_first: false,
                after: None,
                until: None,
                limit: MAX_VERSIONS.saturating_mul(2),
            })
            .await?;
        let version_of = |event: &AuditEvent| {
            serde_json::from_str::<serde_json::Value>(&event.draft.details)
                .ok()?
                .get("version")?
                .as_i64()
        };
        Ok(stored
            .into_iter()
            .map(|(version, recorded_at, mandate)| MandateVersion {
                version,
                recorded_at,
                mandate,
                event: recorded
                    .iter()
                    .find(|e| version_of(e) == Some(version))
                    .cloned(),
            })
            .collect())
    }

    /// One page in `seq` order, read only up to the settled append position so that no event
    /// can later appear behind a page already returned.
    async fn page(
        &self,
        filter: AuditFilter,
        newest_first: bool,
        after: Option<i64>,
        limit: u32,
    ) -> Result<EventPage, Error> {
        // Walking back from a cursor is walking through settled events already.
        let until = match (newest_first, after) {
            (true, Some(_)) => None,
            _ => Some(self.audit.settled_audit_seq().await?),
        };
        let mut events = self
            .audit
            .audit_events(&AuditQuery {
                filter,
                newest_first,
                after,
                until,
                limit: limit + 1,
            })
            .await?;
        let next = super::mandates::next_page(&mut events, limit, |e| e.seq);
        Ok(EventPage { events, next })
    }

    /// Records a person's view of a console page (`AuditDraft::console_view`).
    pub async fn record_view(&self, actor: &Actor, page: &str) -> Result<(), Error> {
        let draft = AuditDraft::console_view(self.clock.now(), actor, page);
        self.store.append_audit(&draft).await?;
        Ok(())
    }

    /// Records that an auditor looked at something (`AuditDraft::auditor_read`).
    async fn record_read(
        &self,
        actor: &Actor,
        rpc: Rpc,
        filter: &AuditFilter,
        extra: Option<serde_json::Value>,
    ) -> Result<(), Error> {
        let what = json!({ "filter": filter_json(filter), "more": extra });
        if let Some(draft) = AuditDraft::auditor_read(self.clock.now(), actor, rpc.name(), what) {
            self.store.append_audit(&draft).await?;
        }
        Ok(())
    }
}

/// The export of one selection, read a page at a time.
pub struct Export {
    service: AuditService,
    /// `None`: the filter asks outside the caller's tenancy, so it matches nothing.
    filter: Option<AuditFilter>,
    newest_first: bool,
    after: Option<i64>,
    done: bool,
}

impl Export {
    /// The next page; empty when the selection is exhausted.
    pub async fn next_page(&mut self) -> Result<Vec<AuditEvent>, Error> {
        let Some(filter) = self.filter.clone().filter(|_| !self.done) else {
            return Ok(vec![]);
        };
        let page = self
            .service
            .page(filter, self.newest_first, self.after, EXPORT_PAGE_SIZE)
            .await?;
        self.after = page.next;
        self.done = page.next.is_none();
        Ok(page.events)
    }
}

/// The filter narrowed to the caller's tenancy: its own merchant (or payer) forced, and `None`
/// when it names another.
fn scoped(actor: &Actor, mut filter: AuditFilter) -> Option<AuditFilter> {
    match actor.tenancy() {
        Tenancy::Everything => Some(filter),
        Tenancy::Merchant(own) => match &filter.merchant_id {
            Some(asked) if asked != own.as_str() => None,
            _ => {
                filter.merchant_id = Some(own.to_string());
                Some(filter)
            }
        },
        Tenancy::Payer(own) => match &filter.payer_id {
            Some(asked) if *asked != own => None,
            _ => {
                filter.payer_id = Some(own);
                Some(filter)
            }
        },
        Tenancy::Nothing => None,
    }
}

fn filter_json(f: &AuditFilter) -> serde_json::Value {
    json!({
        "merchant_id": f.merchant_id,
        "payer_id": f.payer_id,
        "mandate_id": f.mandate_id,
        "deduction_id": f.deduction_id,
        "action": f.action,
        "outcome": f.outcome,
        "reason_code": f.reason_code,
        "actor_role": f.actor_role,
        "actor_subject": f.actor_subject,
        "from": f.from.map(|t| t.to_string()),
        "to": f.to.map(|t| t.to_string()),
    })
}
