//! Tenancy on DeductionService and WalletService (DESIGN §2): another tenant's deduction,
//! approval, mandate or wallet is NOT_FOUND, audited, and changes nothing; ListDeductions shows
//! exactly what lies inside the caller's tenancy.

use std::collections::BTreeSet;

use tonic::Code;
use withholding::service::Rpc;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

/// Another tenant's deduction, approval or mandate: NOT_FOUND exactly as for an id that names
/// nothing, one ACCESS_DENIED / OTHER_TENANT event on the caller's own chain (never on the
/// mandate's) and nothing else written; the id that names nothing writes nothing at all.
async fn other_tenants_resources_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let mut owner = app.deductions_as(app.merchant_token("m-1")).await;
    let mut target = app.deduction_target("c-tenancy").await;
    let approval = app.pending_approval(&target.mandate_id, "tenancy").await;
    target.approval_id = approval.approval_id.clone();
    let original = owner
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: target.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();

    let mut m2 = Caller::new(&app, app.merchant_token("m-2")).await;
    let mut p2 = Caller::new(&app, app.payer_token("p-2")).await;
    let mut a2 = Caller::new(&app, app.auditor_token(Some("m-2"))).await;
    let cases: [(&str, Rpc); 16] = [
        ("merchant m-2", Rpc::GetDeduction),
        ("merchant m-2", Rpc::RefundDeduction),
        ("merchant m-2", Rpc::RequestOneOffApproval),
        ("merchant m-2", Rpc::CreateDeduction),
        ("merchant m-2", Rpc::CheckDeduction),
        ("merchant m-2", Rpc::NotifyUpcomingDebit),
        ("merchant m-2", Rpc::ListNotices),
        ("merchant m-2", Rpc::ListDeductions),
        ("payer p-2", Rpc::ApproveOneOff),
        ("payer p-2", Rpc::RejectOneOff),
        ("payer p-2", Rpc::GetDeduction),
        ("payer p-2", Rpc::ListNotices),
        ("payer p-2", Rpc::ListDeductions),
        ("auditor of m-2", Rpc::GetDeduction),
        ("auditor of m-2", Rpc::ListNotices),
        ("auditor of m-2", Rpc::ListDeductions),
    ];
    let mut failures: Vec<String> = vec![];
    for (who, rpc) in cases {
        let caller = match who {
            "merchant m-2" => &mut m2,
            "payer p-2" => &mut p2,
            "auditor of m-2" => &mut a2,
            other => panic!("no caller {other}"),
        };
        let cell = format!("{} by {who}", rpc.name());
        let tag = format!("x-{}-{}", rpc.name(), who.replace(' ', "-"));

        // The reference: the same call for ids that name nothing.
        let before = app.state(&raw).await;
        let absent = call_deduction_rpc(
            caller,
            rpc,
            &DeductionTarget::missing(&format!("{tag}-missing")),
        )
        .await;
        let after = app.state(&raw).await;
        let Err(absent) = absent else {
            failures.push(format!("{cell}: an id that names nothing succeeded"));
            continue;
        };
        if absent.code() != Code::NotFound {
            failures.push(format!("{cell}: a missing id gave {absent:?}"));
        }
        if before != after {
            failures.push(format!(
                "{cell}: a missing id wrote {}",
                before.diff(&after)
            ));
        }

        let chain_before = app.mandate_chain(&target.mandate_id).await.len();
        app.next_refusal_window();
        let before = app.state(&raw).await;
        let refused = call_deduction_rpc(
            caller,
            rpc,
            &DeductionTarget {
                tag: tag.clone(),
                ..target.clone()
            },
        )
        .await;
        let after = app.state(&raw).await;
        let Err(refused) = refused else {
            failures.push(format!("{cell}: succeeded on another tenant's resource"));
            continue;
        };
        if (refused.code(), refused.message()) != (absent.code(), absent.message()) {
            failures.push(format!(
                "{cell}: {refused:?} differs from the answer for a missing id {absent:?}"
            ));
        }
        if before.rows != after.rows || before.ledger != after.ledger {
            failures.push(format!("{cell}: wrote {}", before.diff(&after)));
        }
        if after.audit_events != before.audit_events + 1 {
            failures.push(format!(
                "{cell}: wrote {} audit events, want 1",
                after.audit_events - before.audit_events
            ));
        }
        if app.mandate_chain(&target.mandate_id).await.len() != chain_before {
            failures.push(format!("{cell}: the refusal grew the mandate's chain"));
        }
        let scope = match who {
            "merchant m-2" => "merchant:m-2",
            "payer p-2" => "payer:p-2",
            _ => "auditor:compliance",
        };
        let events = app.chain_events(&caller_chain(scope)).await;
        match events.last() {
            Some(last)
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    last.reason_code.as_deref(),
                ) == ("ACCESS_DENIED", "DENIED", Some("OTHER_TENANT")) => {}
            last => failures.push(format!("{cell}: the caller's chain ends with {last:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Another payer's wallet does not exist for p-2; its own (never credited) is empty.
    let before = app.state(&raw).await;
    let foreign = p2
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: "p-1".into(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");
    assert_eq!(app.state(&raw).await.rows, before.rows);
    let own = p2
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: String::new(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("0.00"));
    assert_eq!(app.balance("p-1").await, "400.00");

    // Nothing changed for the owners: the deduction is as it was, the approval still pending.
    let now = owner
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: target.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(now, original);
    let approved = app.approve("p-1", &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    app.verify_audit().await;
}

async fn list_ids(client: &mut DeductionClient, request: pb::ListDeductionsRequest) -> Vec<String> {
    let page = client.list_deductions(request).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "expected a single page");
    page.deductions
        .into_iter()
        .map(|d| d.deduction_id)
        .collect()
}

fn set(ids: &[&pb::Deduction]) -> BTreeSet<String> {
    ids.iter().map(|d| d.deduction_id.clone()).collect()
}

/// ListDeductions returns exactly what lies inside the caller's tenancy.
async fn list_deductions_is_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app
        .mandate_for("m-1", "p-1", "c-list-a", utility_terms())
        .await; // (m-1, p-1)
    let b = app
        .mandate_for("m-2", "p-2", "c-list-b", utility_terms())
        .await; // (m-2, p-2)
    let c = app
        .mandate_for("m-2", "p-1", "c-list-c", utility_terms())
        .await; // (m-2, p-1)
    app.credit("p-1", "300.00").await;
    app.credit("p-2", "50.00").await;
    let mut m1 = app.deductions_as(app.merchant_token("m-1")).await;
    let mut m2 = app.deductions_as(app.merchant_token("m-2")).await;

    let a1 = app
        .deduct_expect(
            "m-1",
            collect("r-a1", &a.mandate_id, "100.00", "b-a1"),
            D::Succeeded,
            "",
        )
        .await;
    let a2 = app
        .deduct_expect(
            "m-1",
            collect("r-a2", &a.mandate_id, "700.00", "b-a2"),
            D::Declined,
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        )
        .await;
    let b1 = app
        .deduct_expect(
            "m-2",
            collect("r-b1", &b.mandate_id, "40.00", "b-b1"),
            D::Succeeded,
            "",
        )
        .await;
    let b2 = app
        .deduct_expect(
            "m-2",
            collect("r-b2", &b.mandate_id, "80.00", "b-b2"),
            D::Failed,
            "CARD_NOT_CONNECTED",
        )
        .await;
    // The same request id as m-1's: a different merchant's key.
    let c1 = app
        .deduct_expect(
            "m-2",
            collect("r-a1", &c.mandate_id, "20.00", "b-c1"),
            D::Succeeded,
            "",
        )
        .await;

    let everything = pb::ListDeductionsRequest::default;
    let all = set(&[&a1, &a2, &b1, &b2, &c1]);
    let m1_set = set(&[&a1, &a2]);
    // (who, token, exactly what it sees, whether it is outside m-1's tenancy)
    for (who, token, want, outsider) in [
        (
            "merchant m-1",
            app.merchant_token("m-1"),
            m1_set.clone(),
            false,
        ),
        (
            "merchant m-2",
            app.merchant_token("m-2"),
            set(&[&b1, &b2, &c1]),
            true,
        ),
        (
            "payer p-1",
            app.payer_token("p-1"),
            set(&[&a1, &a2, &c1]),
            false,
        ),
        ("payer p-2", app.payer_token("p-2"), set(&[&b1, &b2]), true),
        (
            "auditor of m-2",
            app.auditor_token(Some("m-2")),
            set(&[&b1, &b2, &c1]),
            true,
        ),
        (
            "auditor of m-1",
            app.auditor_token(Some("m-1")),
            m1_set.clone(),
            false,
        ),
        (
            "institution-wide auditor",
            app.auditor_token(None),
            all.clone(),
            false,
        ),
        ("operator", app.operator_token(), all.clone(), false),
    ] {
        let mut client = app.deductions_as(token).await;
        let got: BTreeSet<String> = list_ids(&mut client, everything())
            .await
            .into_iter()
            .collect();
        if outsider {
            assert!(
                got.is_disjoint(&m1_set),
                "{who} sees m-1's deductions: {got:?}"
            );
        }
        assert_eq!(got, want, "{who}");
    }

    // Filters narrow inside the tenancy.
    let mut operator = app.deductions_as(app.operator_token()).await;
    let by_mandate = |id: &str| pb::ListDeductionsRequest {
        mandate_id: id.into(),
        ..Default::default()
    };
    let by_status = |s: D| pb::ListDeductionsRequest {
        status: s as i32,
        ..Default::default()
    };
    let ids_set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        ids_set(list_ids(&mut m1, by_mandate(&a.mandate_id)).await),
        m1_set
    );
    assert_eq!(
        ids_set(list_ids(&mut operator, by_mandate(&b.mandate_id)).await),
        set(&[&b1, &b2])
    );
    assert_eq!(
        ids_set(list_ids(&mut operator, by_status(D::Succeeded)).await),
        set(&[&a1, &b1, &c1])
    );
    assert_eq!(
        ids_set(list_ids(&mut m2, by_status(D::Declined)).await),
        BTreeSet::new()
    );
    let mut p1 = app.deductions_as(app.payer_token("p-1")).await;
    assert_eq!(
        ids_set(list_ids(&mut p1, by_mandate(&c.mandate_id)).await),
        set(&[&c1])
    );
    // Naming another tenant's mandate is NOT_FOUND.
    let err = m2
        .list_deductions(by_mandate(&a.mandate_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Page size 1 walks every page once, in the order of the single page.
    let mut auditor = app.deductions_as(app.auditor_token(None)).await;
    let single = list_ids(&mut auditor, everything()).await;
    let mut walked = vec![];
    let mut token = String::new();
    loop {
        let page = auditor
            .list_deductions(pb::ListDeductionsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deductions.len() <= 1);
        walked.extend(page.deductions.into_iter().map(|d| d.deduction_id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(walked.len() <= 10, "pagination does not end");
        token = page.next_page_token;
    }
    assert_eq!(walked, single);
}

both_backends!(
    other_tenants_resources_are_not_found,
    list_deductions_is_isolated,
);
