//! Who sees what through AuditService (DESIGN §2, §6): an auditor with a merchant sees that
//! merchant, one without sees everything, merchants read their own, payers their own mandates'
//! history; a filter outside the caller's tenancy matches nothing, a mandate outside it is
//! NOT_FOUND; and every auditor's read is itself an event naming what was looked at.

use tonic::Code;

use super::{History, export_all, query_all, verify};
use crate::both_backends;
use crate::harness::*;

fn for_merchant(merchant: &str) -> pb::AuditEventFilter {
    pb::AuditEventFilter {
        merchant_id: merchant.into(),
        ..Default::default()
    }
}

async fn history_of(
    client: &mut AuditClient,
    mandate_id: &str,
) -> Result<pb::GetMandateHistoryResponse, tonic::Status> {
    client
        .get_mandate_history(pb::GetMandateHistoryRequest {
            mandate_id: mandate_id.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn each_caller_sees_its_own_tenancy(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    let (a, b) = (h.a.mandate_id.as_str(), h.b.mandate_id.as_str());
    let mut everyone = app.audit_as(app.auditor_token(None)).await;
    let all = query_all(&mut everyone, Default::default(), false, 1000).await;
    let last = all.last().unwrap().seq;
    let of = |merchant: &str| -> Vec<pb::AuditEvent> {
        all.iter()
            .filter(|e| e.merchant_id == merchant)
            .cloned()
            .collect()
    };
    assert!(!of("m-1").is_empty() && !of("m-2").is_empty());
    let seen = |events: Vec<pb::AuditEvent>| -> Vec<pb::AuditEvent> {
        events.into_iter().filter(|e| e.seq <= last).collect()
    };

    // The institution's auditor: both merchants, any filter.
    assert_eq!(
        seen(query_all(&mut everyone, for_merchant("m-2"), false, 50).await),
        of("m-2")
    );
    // An auditor of m-1 and merchant m-1: m-1's events whatever the filter says.
    for (who, token) in [
        ("auditor of m-1", app.auditor_token(Some("m-1"))),
        ("merchant m-1", app.merchant_token("m-1")),
    ] {
        let mut client = app.audit_as(token).await;
        let unfiltered = seen(query_all(&mut client, Default::default(), false, 50).await);
        assert_eq!(unfiltered, of("m-1"), "{who}");
        assert_eq!(
            seen(export_all(&mut client, Default::default(), true).await)
                .into_iter()
                .rev()
                .collect::<Vec<_>>(),
            of("m-1"),
            "{who}: export"
        );
        assert!(
            query_all(&mut client, for_merchant("m-2"), false, 50)
                .await
                .is_empty(),
            "{who}: another merchant's filter matches nothing"
        );
        let by_mandate = pb::AuditEventFilter {
            mandate_id: b.into(),
            ..Default::default()
        };
        assert!(
            query_all(&mut client, by_mandate, false, 50)
                .await
                .is_empty(),
            "{who}: another merchant's mandate matches nothing"
        );
        assert!(history_of(&mut client, a).await.is_ok(), "{who}");
        let err = history_of(&mut client, b).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{who}: {err:?}");
    }

    // Payers read their own mandates' history and nothing else of the trail.
    let mut p1 = app.audit_as(app.payer_token("p-1")).await;
    let own = history_of(&mut p1, a).await.unwrap();
    assert!(own.events.iter().all(|e| e.mandate_id == a));
    assert!(!own.versions.is_empty());
    let err = history_of(&mut p1, b).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = p1
        .query_audit_events(pb::QueryAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Operators read histories (they act on mandates), not the trail at large.
    let mut operator = app.audit_as(app.operator_token()).await;
    assert!(history_of(&mut operator, b).await.is_ok());
    let err = operator
        .query_audit_events(pb::QueryAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Verification: auditors only, within their tenancy.
    let mut merchant = app.audit_as(app.merchant_token("m-1")).await;
    let err = verify(&mut merchant, Default::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut scoped = app.audit_as(app.auditor_token(Some("m-1"))).await;
    let of_m2 = pb::VerifyAuditChainRequest {
        merchant_id: "m-2".into(),
        ..Default::default()
    };
    let err = verify(&mut scoped, of_m2).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let of_b = pb::VerifyAuditChainRequest {
        mandate_id: b.into(),
        ..Default::default()
    };
    let err = verify(&mut scoped, of_b).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let own = verify(&mut scoped, Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    let institution = verify(&mut everyone, Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(own.intact && institution.intact);
    assert!(
        own.chains_total < institution.chains_total,
        "m-1's auditor verifies m-1's chains: {own:?} vs {institution:?}"
    );
}

async fn every_auditor_read_is_an_audit_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    let mut auditor = app.audit_as(app.auditor_token(Some("m-1"))).await;
    let merchant_m1 = for_merchant("m-1");
    query_all(&mut auditor, merchant_m1.clone(), false, 1000).await;
    export_all(&mut auditor, merchant_m1, false).await;
    history_of(&mut auditor, &h.a.mandate_id).await.unwrap();
    verify(&mut auditor, Default::default()).await.unwrap();
    // A refused read is recorded too: it names what was asked for.
    let err = history_of(&mut auditor, &h.b.mandate_id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let reads: Vec<_> = app
        .chain_events(&caller_chain("auditor:compliance"))
        .await
        .into_iter()
        .filter(|e| e.action == "AUDIT_READ")
        .collect();
    let rpcs: Vec<String> = reads
        .iter()
        .map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            details["rpc"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        rpcs[..4],
        [
            "QueryAuditEvents",
            "ExportAuditEvents",
            "GetMandateHistory",
            "VerifyAuditChain"
        ],
        "{reads:?}"
    );
    assert!(
        reads
            .iter()
            .all(|e| e.actor_role == "auditor" && e.merchant_id.as_deref() == Some("m-1"))
    );
    let history: serde_json::Value = serde_json::from_str(&reads[2].details).unwrap();
    assert_eq!(history["read"]["filter"]["mandate_id"], h.a.mandate_id);
    // The refused look at another merchant's mandate is on the same chain.
    let refused = app
        .chain_events(&caller_chain("auditor:compliance"))
        .await
        .into_iter()
        .find(|e| e.action == "ACCESS_DENIED");
    assert!(refused.is_some());

    // Other callers' reads of their own data are not events.
    let before = app.counts().await;
    let mut merchant = app.audit_as(app.merchant_token("m-1")).await;
    query_all(&mut merchant, Default::default(), false, 10).await;
    assert_eq!(app.counts().await, before);
    // The auditor's reads are themselves visible to an institution-wide query.
    let mut everyone = app.audit_as(app.auditor_token(None)).await;
    let reads = query_all(
        &mut everyone,
        pb::AuditEventFilter {
            action: "AUDIT_READ".into(),
            actor_subject: "compliance".into(),
            merchant_id: "m-1".into(),
            ..Default::default()
        },
        false,
        100,
    )
    .await;
    assert!(reads.len() >= 4, "{reads:?}");
}

both_backends!(
    each_caller_sees_its_own_tenancy,
    every_auditor_read_is_an_audit_event
);
