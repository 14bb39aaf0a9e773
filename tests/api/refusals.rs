//! Access refusals on real resources (DESIGN §2, §9.6): recorded against the caller, on its own
//! chain, never on the chain of the resource it named, and coalesced so that a flood of probes
//! costs one event when it starts and one summary when its window ends.

use serde_json::Value;
use tonic::Code;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

fn get(mandate_id: &str) -> pb::GetMandateRequest {
    pb::GetMandateRequest {
        mandate_id: mandate_id.into(),
        as_of: None,
    }
}

/// (action, outcome, reason, actor role) of each event.
fn steps(
    events: &[withholding::domain::audit::AuditDraft],
) -> Vec<(&str, &str, Option<&str>, &str)> {
    events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.outcome.as_str(),
                e.reason_code.as_deref(),
                e.actor_role.as_str(),
            )
        })
        .collect()
}

fn details(event: &withholding::domain::audit::AuditDraft) -> Value {
    serde_json::from_str(&event.details).unwrap()
}

async fn refusals_are_recorded_against_the_caller(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let victim = format!("mandate:{}", m.mandate_id);
    let victim_events = app.chain_events(&victim).await;

    // Another merchant's GetMandate: NOT_FOUND; a role the matrix refuses: PERMISSION_DENIED.
    let err = app
        .merchant("m-2")
        .await
        .get_mandate(get(&m.mandate_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .merchant("m-1")
        .await
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: m.mandate_id.clone(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    assert_eq!(
        app.chain_events(&victim).await,
        victim_events,
        "the mandate's chain is the owners' alone"
    );
    let probe = app.chain_events(&caller_chain("merchant:m-2")).await;
    assert_eq!(
        steps(&probe),
        [("ACCESS_DENIED", "DENIED", Some("OTHER_TENANT"), "merchant")]
    );
    assert_eq!(probe[0].merchant_id.as_deref(), Some("m-2"));
    assert_eq!(
        probe[0].mandate_id, None,
        "the victim's mandate is named only in details"
    );
    let named = details(&probe[0]);
    assert_eq!(named["resource"], "mandate");
    assert_eq!(named["resource_id"], m.mandate_id.as_str());
    assert_eq!(named["rpc"], "GetMandate");
    assert_eq!(named["refusals"], 1);
    let role = app.chain_events(&caller_chain("merchant:m-1")).await;
    assert_eq!(
        steps(&role),
        [(
            "ACCESS_DENIED",
            "DENIED",
            Some("ROLE_NOT_ALLOWED"),
            "merchant"
        )]
    );
    app.verify_audit().await;
}

/// 300 probes of another tenant's mandates by one caller: the victim's chain and rows do not
/// change, the caller's chain gets one event at once and one summary (299 refusals) when the
/// window ends; the next window starts with one event again.
async fn a_flood_of_probes_is_coalesced(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let victim = format!("mandate:{}", m.mandate_id);
    let victim_events = app.chain_events(&victim).await;
    let before = app.counts().await;
    let mut prober = app.payer("p-9").await;
    for _ in 0..300 {
        let err = prober.get_mandate(get(&m.mandate_id)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let after = app.counts().await;
    assert_eq!(after.audit_events, before.audit_events + 1);
    assert_eq!(app.chain_events(&victim).await, victim_events);
    let chain = caller_chain("payer:p-9");
    assert_eq!(app.chain_events(&chain).await.len(), 1);

    // Before the window ends, flushing closes nothing; after it, one summary of the rest.
    let refusals = app.service.refusals();
    assert_eq!(refusals.flush(false).await.unwrap(), 0);
    app.next_refusal_window();
    assert_eq!(refusals.flush(false).await.unwrap(), 1);
    let events = app.chain_events(&chain).await;
    assert_eq!(events.len(), 2);
    let summary = details(&events[1]);
    assert_eq!(summary["refusals"], 299);
    assert_eq!(summary["coalesced"], true);
    assert_eq!(summary["resource_id"], m.mandate_id.as_str());

    // The next probe opens a new window: recorded at once.
    prober.get_mandate(get(&m.mandate_id)).await.unwrap_err();
    assert_eq!(app.chain_events(&chain).await.len(), 3);
    // Nothing else was written, and the victim's mandate is as it was.
    let end = app.counts().await;
    assert_eq!(
        (end.mandates, end.mandate_versions, end.idempotency_keys),
        (
            before.mandates,
            before.mandate_versions,
            before.idempotency_keys
        )
    );
    assert_eq!(app.chain_events(&victim).await, victim_events);
    app.verify_audit().await;
}

/// A window still open when the server stops is summarised then.
async fn open_windows_are_summarised_at_shutdown(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let mut prober = app.merchant("m-7").await;
    for _ in 0..5 {
        prober.get_mandate(get(&m.mandate_id)).await.unwrap_err();
    }
    let refusals = app.service.refusals();
    assert_eq!(refusals.flush(true).await.unwrap(), 1);
    let events = app.chain_events(&caller_chain("merchant:m-7")).await;
    assert_eq!(events.len(), 2);
    assert_eq!(details(&events[1])["refusals"], 4);
}

both_backends!(
    refusals_are_recorded_against_the_caller,
    a_flood_of_probes_is_coalesced,
    open_windows_are_summarised_at_shutdown
);
