//! The audit trail (DESIGN §6): how it is recorded, and what compliance asks of it through
//! `AuditService` — selections and their export, a mandate's history, blocked attempts, chain
//! verification against tampering, signed checkpoints, and who may see what.

mod blocked;
mod checkpoints;
mod history;
mod queries;
mod recording;
mod scoping;
mod tampering;

use jiff::{SignedDuration, Timestamp};
use tokio_stream::StreamExt;
use withholding::domain::audit::AuditEvent;

use crate::harness::*;

/// A history two merchants made: collections, a refund, a blocked clawback, a suspected refund
/// recovery, an over-limit debit, clawback authority asked for, and a refused read.
pub struct History {
    /// m-1's mandate for p-1 (wallet only).
    pub a: pb::Mandate,
    /// m-2's mandate for p-2 (wallet only).
    pub b: pb::Mandate,
    /// A's first debit, refunded.
    pub refunded: pb::Deduction,
    /// The same bill collected again on A: declined REFUND_CLAWBACK_FORBIDDEN.
    pub clawback: pb::Deduction,
    /// The refunded amount under a new bill on A: collected, flagged.
    pub suspected: pb::Deduction,
    /// Above A's per-debit limit: declined.
    pub over_limit: pb::Deduction,
}

impl History {
    pub async fn plant(app: &TestApp) -> Self {
        let a = app
            .mandate_with("m-1", "p-1", "c-a", roomy_terms(), wallet_only())
            .await;
        let b = app
            .mandate_with("m-2", "p-2", "c-b", roomy_terms(), wallet_only())
            .await;
        app.credit("p-1", "2000.00").await;
        app.credit("p-2", "2000.00").await;
        app.clock.advance(SignedDuration::from_hours(1));

        let refunded = app
            .deduct("m-1", collect("r-1", &a.mandate_id, "100.00", "BILL-1"))
            .await;
        app.refund("m-1", "rf-1", &refunded.deduction_id, "100.00")
            .await
            .unwrap();
        app.clock.advance(SignedDuration::from_hours(1));
        let clawback = app
            .deduct_expect(
                "m-1",
                collect("r-2", &a.mandate_id, "100.00", "bill_1"),
                pb::DeductionStatus::Declined,
                "REFUND_CLAWBACK_FORBIDDEN",
            )
            .await;
        let suspected = app
            .deduct_expect(
                "m-1",
                collect("r-3", &a.mandate_id, "100.00", "BILL-NEW"),
                pb::DeductionStatus::Succeeded,
                "",
            )
            .await;
        let over_limit = app
            .deduct_expect(
                "m-1",
                collect("r-4", &a.mandate_id, "600.00", "BILL-BIG"),
                pb::DeductionStatus::Declined,
                "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            )
            .await;
        // A day later in Shanghai: m-2 collects, asks for clawback authority, and reads a
        // mandate that is not its own.
        app.clock.advance(SignedDuration::from_hours(24));
        app.deduct_expect(
            "m-2",
            collect("r-5", &b.mandate_id, "50.00", "GAS-1"),
            pb::DeductionStatus::Succeeded,
            "",
        )
        .await;
        let mut recovery = create_request("c-recovery", "p-2");
        recovery.terms.as_mut().unwrap().purposes = vec![pb::Purpose::RefundRecovery as i32];
        let refused = app
            .merchant("m-2")
            .await
            .create_mandate(recovery)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let hidden = app
            .merchant("m-2")
            .await
            .get_mandate(pb::GetMandateRequest {
                mandate_id: a.mandate_id.clone(),
                as_of: None,
            })
            .await
            .unwrap_err();
        assert_eq!(hidden.code(), tonic::Code::NotFound);
        app.clock.advance(SignedDuration::from_hours(1));
        Self {
            a,
            b,
            refunded,
            clawback,
            suspected,
            over_limit,
        }
    }
}

/// Every page of a selection, following page tokens to the end.
pub async fn query_all(
    client: &mut AuditClient,
    filter: pb::AuditEventFilter,
    newest_first: bool,
    page_size: u32,
) -> Vec<pb::AuditEvent> {
    let mut events = vec![];
    let mut page_token = String::new();
    loop {
        let page = client
            .query_audit_events(pb::QueryAuditEventsRequest {
                filter: Some(filter.clone()),
                newest_first,
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= page_size as usize);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// The whole export stream.
pub async fn export_all(
    client: &mut AuditClient,
    filter: pb::AuditEventFilter,
    newest_first: bool,
) -> Vec<pb::AuditEvent> {
    let mut stream = client
        .export_audit_events(pb::ExportAuditEventsRequest {
            filter: Some(filter),
            newest_first,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = vec![];
    while let Some(event) = stream.next().await {
        events.push(event.unwrap().event.expect("an event"));
    }
    events
}

/// A verification's progress messages, the last one being its result.
pub async fn verify(
    client: &mut AuditClient,
    request: pb::VerifyAuditChainRequest,
) -> Result<Vec<pb::VerifyAuditChainResponse>, tonic::Status> {
    let mut stream = client.verify_audit_chain(request).await?.into_inner();
    let mut messages = vec![];
    while let Some(message) = stream.next().await {
        messages.push(message?);
    }
    let last = messages
        .last()
        .expect("a verification ends with its result");
    assert!(last.done, "{last:?}");
    assert_eq!(messages.iter().filter(|m| m.done).count(), 1);
    Ok(messages)
}

/// The result of verifying every chain.
pub async fn verify_everything(app: &TestApp) -> pb::VerifyAuditChainResponse {
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    verify(&mut auditor, pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .pop()
        .unwrap()
}

pub fn seconds(at: &Option<prost_types::Timestamp>) -> Timestamp {
    let at = at.as_ref().expect("a time");
    Timestamp::new(at.seconds, at.nanos).unwrap()
}

/// The statements that let someone with database access edit and delete audit rows.
pub fn drop_guards(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        Backend::Postgres => {
            &["ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete"]
        }
    }
}

/// Runs raw SQL as someone with direct database access would, stopping at the first error.
pub async fn raw(app: &TestApp, statements: &[&str]) -> Result<(), sqlx::Error> {
    let raw = Raw::open(app).await;
    for sql in statements {
        raw.execute(sql).await?;
    }
    raw.close().await;
    Ok(())
}

/// A chain's events as stored, read around the service.
pub async fn stored_chain(app: &TestApp, chain_id: &str) -> Vec<AuditEvent> {
    app.store.audit_chain(chain_id).await.unwrap().events
}

/// A SQL string literal.
pub fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
