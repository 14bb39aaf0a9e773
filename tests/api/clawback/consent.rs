//! A clawback with the payer's consent (DESIGN §5): a declined clawback, in either form, is
//! collectable only with the payer's one-off approval, exactly once, and audited step by step.

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

/// The clawback expected in the audit trail: declined REFUND_CLAWBACK_FORBIDDEN, put to the
/// payer, approved, collected once, and a second try declined.
fn clawback_steps() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("REFUND_CLAWBACK_FORBIDDEN"),
        ),
        ("ONE_OFF_APPROVAL_REQUESTED", "OK", None),
        ("ONE_OFF_APPROVED", "OK", None),
        ("DEDUCTION_APPROVED", "OK", None),
        ("FUNDING_ATTEMPT", "SUCCEEDED", None),
        ("DEDUCTION_SUCCEEDED", "OK", None),
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("ONE_OFF_APPROVAL_INVALID"),
        ),
    ]
}

/// Runs the compliant path for a declined clawback `claw` (collected again as `purpose` on
/// `bill` for `amount`) and checks it is collected exactly once.
async fn clawback_with_consent(
    app: &TestApp,
    m: &pb::Mandate,
    claw: &pb::Deduction,
    purpose: pb::Purpose,
    amount: &str,
    bill: &str,
) -> pb::Deduction {
    let approval = app
        .request_approval("m-1", "ap-claw", &claw.deduction_id)
        .await
        .unwrap();
    assert_eq!(
        (
            approval.amount.clone(),
            approval.purpose,
            approval.bill_reference.as_str()
        ),
        (money(amount), purpose as i32, bill)
    );
    let approved = app.approve("p-1", &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    let m_id = &m.mandate_id;
    let ok = app
        .deduct_expect(
            "m-1",
            with_approval(
                "r-claw-ok",
                m_id,
                amount,
                purpose,
                bill,
                &approval.approval_id,
            ),
            D::Succeeded,
            "",
        )
        .await;
    app.deduct_expect(
        "m-1",
        with_approval(
            "r-claw-again",
            m_id,
            amount,
            purpose,
            bill,
            &approval.approval_id,
        ),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    ok
}

/// Form one: purpose REFUND_RECOVERY is declined under any mandate, audited, and collectable
/// only with the payer's one-off approval, once.
async fn clawback_by_purpose(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-purpose").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let recovery = || pb::CreateDeductionRequest {
        purpose: pb::Purpose::RefundRecovery as i32,
        ..collect("r-claw", &m.mandate_id, "60.00", "b-rr")
    };
    let check = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("60.00"),
            purpose: pb::Purpose::RefundRecovery as i32,
            bill_reference: "b-rr".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(
        check
            .violations
            .iter()
            .map(|v| v.reason_code.as_str())
            .collect::<Vec<_>>(),
        vec!["REFUND_CLAWBACK_FORBIDDEN"]
    );

    let mark = app.mandate_chain(&m.mandate_id).await.len();
    let claw = app
        .deduct_expect("m-1", recovery(), D::Declined, "REFUND_CLAWBACK_FORBIDDEN")
        .await;
    assert_eq!(app.balance("p-1").await, "500.00");
    let ok = clawback_with_consent(
        &app,
        &m,
        &claw,
        pb::Purpose::RefundRecovery,
        "60.00",
        "b-rr",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "440.00");

    let events = app.mandate_chain(&m.mandate_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 1].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(events[mark + 2].actor_role, "payer");
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// Form two: collecting a bill again after refunding it (fully or in part) is a clawback,
/// whatever the amount; with the payer's approval it is collected once.
async fn clawback_by_refunded_bill(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-bill").await;
    app.credit("p-1", "500.00").await;
    let m_id = m.mandate_id.as_str();
    let d = app
        .deduct_expect(
            "m-1",
            collect("r-1", m_id, "120.00", "b-bill"),
            D::Succeeded,
            "",
        )
        .await;
    app.refund("m-1", "rf-1", &d.deduction_id, "120.00")
        .await
        .unwrap();
    assert_eq!(app.balance("p-1").await, "500.00");

    let mark = app.mandate_chain(m_id).await.len();
    let claw = app
        .deduct_expect(
            "m-1",
            collect("r-claw", m_id, "120.00", "b-bill"),
            D::Declined,
            "REFUND_CLAWBACK_FORBIDDEN",
        )
        .await;
    let ok = clawback_with_consent(&app, &m, &claw, pb::Purpose::Utility, "120.00", "b-bill").await;
    assert_eq!(app.balance("p-1").await, "380.00");
    let events = app.mandate_chain(m_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );

    // Another amount on the refunded bill is still a clawback; so is a partly refunded bill.
    app.deduct_expect(
        "m-1",
        collect("r-claw-2", m_id, "5.00", "b-bill"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    let part = app
        .deduct_expect(
            "m-1",
            collect("r-2", m_id, "100.00", "b-part"),
            D::Succeeded,
            "",
        )
        .await;
    app.refund("m-1", "rf-2", &part.deduction_id, "0.01")
        .await
        .unwrap();
    app.deduct_expect(
        "m-1",
        collect("r-claw-3", m_id, "0.01", "b-part"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "280.01");
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

both_backends!(clawback_by_purpose, clawback_by_refunded_bill);
