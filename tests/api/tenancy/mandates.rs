//! Tenancy on MandateService (DESIGN §2): another tenant's mandate is NOT_FOUND,
//! indistinguishable from a missing one, and audited against the caller; ListMandates shows
//! exactly what lies inside the caller's tenancy.

use std::collections::HashSet;

use tonic::Code;
use withholding::domain::ids::MandateId;
use withholding::service::Rpc;

use crate::both_backends;
use crate::harness::*;

/// A well-formed mandate id that names nothing.
fn missing_id() -> String {
    MandateId::generate().to_string()
}

/// Another tenant's mandate: NOT_FOUND, exactly as for an id that names nothing, the mandate
/// untouched, and the attempt recorded against the caller, never on the mandate's chain (the
/// missing id records nothing).
async fn other_tenants_mandate_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = create_mandate(&app, "c-tenancy-pending").await;
    let active = active_mandate(&app, "c-tenancy-active").await;
    let mut other_merchant = app.merchant("m-2").await;
    let mut other_payer = app.payer("p-2").await;
    let mut other_auditor = app.auditor(Some("m-2")).await;

    // GetMandate of an id that names nothing: the reference answer.
    let reference = call_mandate_rpc(
        &mut other_payer,
        Rpc::GetMandate,
        &MandateTarget {
            mandate_id: missing_id(),
            version: 1,
            contract: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reference.code(), Code::NotFound);

    let cases: [(&str, Rpc, &pb::Mandate); 9] = [
        ("merchant m-2", Rpc::GetMandate, &active),
        ("merchant m-2", Rpc::TerminateMandate, &active),
        ("merchant m-2", Rpc::AmendMandate, &active),
        ("payer p-2", Rpc::GetMandate, &active),
        ("payer p-2", Rpc::ConfirmMandate, &pending),
        ("payer p-2", Rpc::PauseMandate, &active),
        ("payer p-2", Rpc::RevokeMandate, &active),
        ("payer p-2", Rpc::SetFundingSources, &active),
        ("auditor of m-2", Rpc::GetMandate, &active),
    ];
    let mut failures: Vec<String> = vec![];
    for (who, rpc, mandate) in cases {
        let client = match who {
            "merchant m-2" => &mut other_merchant,
            "payer p-2" => &mut other_payer,
            "auditor of m-2" => &mut other_auditor,
            other => panic!("no client for {other}"),
        };
        let cell = format!("{} by {who}", rpc.name());
        let chain_id = format!("mandate:{}", mandate.mandate_id);
        let chain_before = app.store.audit_chain(&chain_id).await.unwrap().events.len();
        let caller = caller_chain(match who {
            "merchant m-2" => "merchant:m-2",
            "payer p-2" => "payer:p-2",
            _ => "auditor:compliance",
        });
        app.next_refusal_window();
        let before = app.counts().await;
        let refused = call_mandate_rpc(client, rpc, &MandateTarget::of(mandate, "unused")).await;
        let after = app.counts().await;
        let Err(refused) = refused else {
            failures.push(format!("{cell}: succeeded"));
            continue;
        };
        if refused.code() != Code::NotFound {
            failures.push(format!("{cell}: want NOT_FOUND, got {refused:?}"));
        }
        if (refused.code(), refused.message()) != (reference.code(), reference.message()) {
            failures.push(format!(
                "{cell}: {refused:?} differs from GetMandate of a missing id {reference:?}"
            ));
        }
        if after.audit_events != before.audit_events + 1 {
            failures.push(format!(
                "{cell}: wrote {} audit events, want 1",
                after.audit_events - before.audit_events
            ));
        }
        if (
            after.mandates,
            after.mandate_versions,
            after.idempotency_keys,
        ) != (
            before.mandates,
            before.mandate_versions,
            before.idempotency_keys,
        ) {
            failures.push(format!("{cell}: changed rows: {before:?} -> {after:?}"));
        }
        let chain = app.store.audit_chain(&chain_id).await.unwrap();
        if chain.events.len() != chain_before {
            failures.push(format!("{cell}: the refusal grew the mandate's chain"));
        }
        let events = app.chain_events(&caller).await;
        match events.last() {
            Some(last)
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    last.reason_code.as_deref(),
                ) == ("ACCESS_DENIED", "DENIED", Some("OTHER_TENANT")) => {}
            last => failures.push(format!("{cell}: the caller's chain ends with {last:?}")),
        }

        // The same request for an id that names nothing: the same answer, and no event.
        let client = match who {
            "merchant m-2" => &mut other_merchant,
            "payer p-2" => &mut other_payer,
            "auditor of m-2" => &mut other_auditor,
            other => panic!("no client for {other}"),
        };
        let missing = MandateTarget {
            mandate_id: missing_id(),
            version: mandate.version,
            contract: "unused".into(),
        };
        let before = app.counts().await;
        let absent = call_mandate_rpc(client, rpc, &missing).await;
        let after = app.counts().await;
        match absent {
            Err(absent) => {
                if (absent.code(), absent.message(), absent.details())
                    != (refused.code(), refused.message(), refused.details())
                {
                    failures.push(format!(
                        "{cell}: other tenant's {refused:?} differs from missing id's {absent:?}"
                    ));
                }
            }
            Ok(()) => failures.push(format!("{cell}: a missing id succeeded")),
        }
        if after != before {
            failures.push(format!(
                "{cell}: a missing id wrote rows: {before:?} -> {after:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing changed for the owners.
    for mandate in [&pending, &active] {
        let read = app
            .operator()
            .await
            .get_mandate(pb::GetMandateRequest {
                mandate_id: mandate.mandate_id.clone(),
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap();
        assert_eq!(&read, mandate);
    }
    app.verify_audit().await;
}

/// Lists every page of `request` with page size 1 and returns the mandate ids in order.
async fn walk_pages(client: &mut Client, request: pb::ListMandatesRequest) -> Vec<String> {
    let mut ids = vec![];
    let mut token = String::new();
    loop {
        let page = client
            .list_mandates(pb::ListMandatesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.mandates.len() <= 1, "page size 1 exceeded");
        ids.extend(page.mandates.into_iter().map(|m| m.mandate_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        assert!(ids.len() <= 10, "pagination does not end");
        token = page.next_page_token;
    }
}

async fn list(client: &mut Client, request: pb::ListMandatesRequest) -> Vec<pb::Mandate> {
    let page = client.list_mandates(request).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "expected a single page");
    page.mandates
}

fn ids(mandates: &[pb::Mandate]) -> Vec<String> {
    mandates.iter().map(|m| m.mandate_id.clone()).collect()
}

/// ListMandates returns exactly what lies inside the caller's tenancy, newest first.
async fn list_mandates_is_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let create = |merchant: &'static str, contract: &'static str, payer: &'static str| {
        let app = &app;
        async move {
            app.merchant(merchant)
                .await
                .create_mandate(create_request(contract, payer))
                .await
                .unwrap()
                .into_inner()
                .mandate
                .unwrap()
        }
    };
    let a = create("m-1", "c-list-a", "p-1").await; // (m-1, p-1)
    let b = create("m-1", "c-list-b", "p-2").await; // (m-1, p-2)
    let c = create("m-2", "c-list-c", "p-1").await; // (m-2, p-1)
    let all = |ms: &[&pb::Mandate]| ms.iter().map(|m| m.mandate_id.clone()).collect::<Vec<_>>();
    let everything = pb::ListMandatesRequest::default();

    let mut m1 = app.merchant("m-1").await;
    let mut m2 = app.merchant("m-2").await;
    let mut p1 = app.payer("p-1").await;
    let mut p2 = app.payer("p-2").await;
    let mut auditor_m2 = app.auditor(Some("m-2")).await;
    let mut auditor = app.auditor(None).await;
    let mut operator = app.operator().await;

    // Newest first.
    assert_eq!(
        ids(&list(&mut m1, everything.clone()).await),
        all(&[&b, &a])
    );
    assert_eq!(ids(&list(&mut m2, everything.clone()).await), all(&[&c]));
    assert_eq!(
        ids(&list(&mut p1, everything.clone()).await),
        all(&[&c, &a])
    );
    assert_eq!(ids(&list(&mut p2, everything.clone()).await), all(&[&b]));
    assert_eq!(
        ids(&list(&mut auditor_m2, everything.clone()).await),
        all(&[&c])
    );
    assert_eq!(
        ids(&list(&mut auditor, everything.clone()).await),
        all(&[&c, &b, &a])
    );
    assert_eq!(
        ids(&list(&mut operator, everything.clone()).await),
        all(&[&c, &b, &a])
    );
    // What is listed is the mandate as it is.
    assert_eq!(list(&mut m2, everything.clone()).await, vec![c.clone()]);

    // A filter outside the caller's tenancy matches nothing.
    let merchant_filter = |m: &str| pb::ListMandatesRequest {
        merchant_id: m.into(),
        ..Default::default()
    };
    let payer_filter = |p: &str| pb::ListMandatesRequest {
        payer_id: p.into(),
        ..Default::default()
    };
    assert!(list(&mut m1, merchant_filter("m-2")).await.is_empty());
    assert!(
        list(&mut auditor_m2, merchant_filter("m-1"))
            .await
            .is_empty()
    );
    assert!(list(&mut p1, payer_filter("p-2")).await.is_empty());
    // A filter inside it narrows.
    assert_eq!(ids(&list(&mut m1, payer_filter("p-2")).await), all(&[&b]));
    assert_eq!(
        ids(&list(&mut p1, merchant_filter("m-1")).await),
        all(&[&a])
    );
    assert_eq!(
        ids(&list(&mut operator, merchant_filter("m-1")).await),
        all(&[&b, &a])
    );
    assert_eq!(
        ids(&list(&mut auditor, payer_filter("p-1")).await),
        all(&[&c, &a])
    );

    // Page size 1 walks every page once, in order.
    for (client, want) in [
        (&mut operator, all(&[&c, &b, &a])),
        (&mut auditor, all(&[&c, &b, &a])),
        (&mut m1, all(&[&b, &a])),
        (&mut p1, all(&[&c, &a])),
    ] {
        let walked = walk_pages(client, everything.clone()).await;
        let distinct: HashSet<&String> = walked.iter().collect();
        assert_eq!(distinct.len(), walked.len(), "a page repeated: {walked:?}");
        assert_eq!(walked, want);
    }

    // Status filter.
    let mut payer1 = app.payer("p-1").await;
    payer1.confirm_mandate(confirm_request(&a)).await.unwrap();
    let status_filter = |s: pb::MandateStatus| pb::ListMandatesRequest {
        status: s as i32,
        ..Default::default()
    };
    let active = list(&mut operator, status_filter(pb::MandateStatus::Active)).await;
    assert_eq!(ids(&active), all(&[&a]));
    assert_eq!(status_of(&active[0]), pb::MandateStatus::Active);
    assert_eq!(
        ids(&list(
            &mut operator,
            status_filter(pb::MandateStatus::PendingConsent)
        )
        .await),
        all(&[&c, &b])
    );
    assert_eq!(
        ids(&list(&mut m1, status_filter(pb::MandateStatus::PendingConsent)).await),
        all(&[&b])
    );
    assert_eq!(
        ids(&list(&mut p1, status_filter(pb::MandateStatus::Active)).await),
        all(&[&a])
    );
    assert!(
        list(&mut m2, status_filter(pb::MandateStatus::Active))
            .await
            .is_empty()
    );
    assert!(
        list(&mut operator, status_filter(pb::MandateStatus::Revoked))
            .await
            .is_empty()
    );
    assert_eq!(
        walk_pages(
            &mut operator,
            status_filter(pb::MandateStatus::PendingConsent)
        )
        .await,
        all(&[&c, &b])
    );
}

both_backends!(
    other_tenants_mandate_is_not_found,
    list_mandates_is_isolated
);
