//! DESIGN §6 recording: every change is an event in the same transaction, chained per mandate;
//! the database refuses edits (what verification finds behind its back: `tampering.rs`).

use withholding::domain::audit::verify_chain;
use withholding::pb;

use super::raw;
use crate::both_backends;
use crate::harness::*;

async fn full_lifecycle(app: &TestApp) -> pb::Mandate {
    let m = active_mandate(app, "c-audit").await;
    let id = m.mandate_id.clone();
    let payer = app.payer("p-1").await;
    let none = String::new;
    payer
        .clone()
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: id.clone(),
            reason: "away".into(),
            request_id: none(),
        })
        .await
        .unwrap();
    payer
        .clone()
        .resume_mandate(pb::ResumeMandateRequest {
            mandate_id: id.clone(),
            reason: none(),
            request_id: none(),
        })
        .await
        .unwrap();
    app.operator()
        .await
        .suspend_mandate(pb::SuspendMandateRequest {
            mandate_id: id.clone(),
            reason: "aml".into(),
            request_id: none(),
        })
        .await
        .unwrap();
    app.operator()
        .await
        .reinstate_mandate(pb::ReinstateMandateRequest {
            mandate_id: id.clone(),
            reason: none(),
            request_id: none(),
        })
        .await
        .unwrap();
    let terms = pb::MandateTerms {
        per_debit_limit: money("300.00"),
        ..utility_terms()
    };
    app.merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: id.clone(),
            terms: Some(terms),
            reason: none(),
            request_id: none(),
        })
        .await
        .unwrap();
    payer
        .clone()
        .set_funding_sources(pb::SetFundingSourcesRequest {
            mandate_id: id.clone(),
            funding_sources: wallet_then_card(),
            request_id: none(),
        })
        .await
        .unwrap();
    payer
        .clone()
        .revoke_mandate(pb::RevokeMandateRequest {
            mandate_id: id.clone(),
            reason: "moved".into(),
            request_id: none(),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

async fn every_change_is_chained_and_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    let revoked = full_lifecycle(&app).await;
    let chain = app
        .store
        .audit_chain(&format!("mandate:{}", revoked.mandate_id))
        .await
        .unwrap();
    let actions: Vec<&str> = chain
        .events
        .iter()
        .map(|e| e.draft.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "MANDATE_CREATED",
            "MANDATE_CONFIRMED",
            "MANDATE_PAUSED",
            "MANDATE_RESUMED",
            "MANDATE_SUSPENDED",
            "MANDATE_REINSTATED",
            "MANDATE_AMENDED",
            "MANDATE_FUNDING_SOURCES_SET",
            "MANDATE_REVOKED",
        ]
    );
    // One event per version, in order, each naming who acted.
    assert_eq!(revoked.version, chain.events.len() as i64);
    let roles: Vec<&str> = chain
        .events
        .iter()
        .map(|e| e.draft.actor_role.as_str())
        .collect();
    assert_eq!(
        roles,
        [
            "merchant", "payer", "payer", "payer", "operator", "operator", "merchant", "payer",
            "payer"
        ]
    );
    assert!(
        chain
            .events
            .iter()
            .all(|e| e.draft.payer_id.as_deref() == Some("p-1")
                && e.draft.merchant_id.as_deref() == Some("m-1"))
    );
    let head = chain.head.as_ref().map(|(s, h)| (*s, h.as_str()));
    verify_chain(
        &format!("mandate:{}", revoked.mandate_id),
        &chain.events,
        head,
    )
    .unwrap();
    app.verify_audit().await;
}

async fn the_database_refuses_edits(backend: Backend) {
    let app = spawn_app(backend).await;
    full_lifecycle(&app).await;
    let before = app.counts().await;
    assert!(
        raw(&app, &["UPDATE audit_events SET outcome = 'DENIED'"])
            .await
            .is_err()
    );
    assert!(raw(&app, &["DELETE FROM audit_events"]).await.is_err());
    if backend == Backend::Postgres {
        assert!(raw(&app, &["TRUNCATE audit_events"]).await.is_err());
    }
    assert_eq!(app.counts().await, before);
    app.verify_audit().await;
}

both_backends!(
    every_change_is_chained_and_verifies,
    the_database_refuses_edits,
);
