//! A first walk through collecting: wallet-paid success, duplicate bill, refund, clawback, and
//! the one-off approval that makes the clawback legitimate.

use withholding::pb;

use crate::both_backends;
use crate::harness::*;

async fn collect_refund_clawback_and_one_off(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    app.credit("p-1", "1000.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // Wallet first (cap 200.00): 150.00 is paid from the wallet.
    let d = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "150.00", "bill-2026-03"))
        .await
        .unwrap()
        .into_inner();
    assert!(!d.replayed);
    let d = d.deduction.unwrap();
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.paid_by_source_index, Some(0));
    assert_eq!(app.balance("p-1").await, "850.00");

    // The same request again is a replay; the same bill under a new request id is a duplicate.
    let again = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "150.00", "bill-2026-03"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.deduction.unwrap(), d);
    let dup = merchant
        .create_deduction(collect("r-2", &m.mandate_id, "150.00", "bill-2026-03"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&dup), pb::DeductionStatus::Declined);
    assert_eq!(dup.reason_code, "DUPLICATE_BILL_REFERENCE");

    // Refund part of it, then try to collect the bill again: a clawback.
    let refunded = merchant
        .refund_deduction(pb::RefundDeductionRequest {
            request_id: "rf-1".into(),
            deduction_id: d.deduction_id.clone(),
            amount: money("50.00"),
            reason: "overcharged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deduction_status(refunded.deduction.as_ref().unwrap()),
        pb::DeductionStatus::PartiallyRefunded
    );
    assert_eq!(app.balance("p-1").await, "900.00");
    let claw = merchant
        .create_deduction(collect("r-3", &m.mandate_id, "50.00", "bill-2026-03"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&claw), pb::DeductionStatus::Declined);
    assert_eq!(claw.reason_code, "REFUND_CLAWBACK_FORBIDDEN");

    // The compliant path: the payer approves this one debit.
    let approval = merchant
        .request_one_off_approval(pb::RequestOneOffApprovalRequest {
            request_id: "ap-1".into(),
            deduction_id: claw.deduction_id.clone(),
            reason: "refunded by mistake".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;
    payer
        .approve_one_off(pb::ApproveOneOffRequest {
            approval_id: approval.approval_id.clone(),
        })
        .await
        .unwrap();
    let mut with_approval = collect("r-4", &m.mandate_id, "50.00", "bill-2026-03");
    with_approval.one_off_approval_id = approval.approval_id.clone();
    let ok = merchant
        .create_deduction(with_approval.clone())
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(
        deduction_status(&ok),
        pb::DeductionStatus::Succeeded,
        "{ok:?}"
    );
    with_approval.request_id = "r-5".into();
    let twice = merchant
        .create_deduction(with_approval)
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(twice.reason_code, "ONE_OFF_APPROVAL_INVALID");
    assert_eq!(app.balance("p-1").await, "850.00");

    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!((totals.sum_minor, totals.entries_sum_minor), (0, 0));
    app.verify_audit().await;
}

async fn empty_wallet_then_card_fails_insufficient(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&d), pb::DeductionStatus::Failed);
    assert_eq!(d.reason_code, "CARD_NOT_CONNECTED");
    // A failed debit does not count: the period still admits two debits.
    app.credit("p-1", "500.00").await;
    for (i, bill) in ["b-1", "b-2"].iter().enumerate() {
        let d = merchant
            .create_deduction(collect(&format!("r-ok-{i}"), &m.mandate_id, "100.00", bill))
            .await
            .unwrap()
            .into_inner()
            .deduction
            .unwrap();
        assert_eq!(
            deduction_status(&d),
            pb::DeductionStatus::Succeeded,
            "{d:?}"
        );
    }
    let third = merchant
        .create_deduction(collect("r-3", &m.mandate_id, "100.00", "b-3"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(third.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED");
}

both_backends!(
    collect_refund_clawback_and_one_off,
    empty_wallet_then_card_fails_insufficient
);
