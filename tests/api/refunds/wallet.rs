//! Refunds of wallet-paid deductions: a full refund gives the wallet everything back; partial
//! refunds add up to at most what was collected; only a collected deduction can be refunded;
//! RefundDeduction is idempotent on its request id; refunds give back no limit usage.

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

fn assert_bad_field(status: &tonic::Status, field: &str) {
    assert_eq!(violated_field(status).as_deref(), Ok(field), "{status:?}");
}

/// A full refund gives the wallet everything back; partial refunds add up to at most what was
/// collected, and the refund that would go over changes nothing. Refunds do not give back limit
/// usage.
async fn refunds_full_and_partial(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund").await;
    app.credit("p-1", "1000.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // Full.
    let d1 = app
        .deduct_expect(
            "m-1",
            collect("r-1", &m.mandate_id, "150.00", "b-1"),
            D::Succeeded,
            "",
        )
        .await;
    assert_eq!(refunded(&d1), "0.00");
    assert_eq!(app.balance("p-1").await, "850.00");
    let full = app
        .refund("m-1", "rf-1", &d1.deduction_id, "150.00")
        .await
        .unwrap();
    assert!(!full.replayed);
    let refund1 = full.refund.unwrap();
    assert_eq!(refund1.deduction_id, d1.deduction_id);
    assert_eq!(refund1.amount, money("150.00"));
    let after = full.deduction.unwrap();
    assert_eq!(
        (deduction_status(&after), refunded(&after)),
        (D::Refunded, "150.00")
    );
    assert_eq!(app.balance("p-1").await, "1000.00");
    // Nothing is left to refund.
    let before = app.state(&raw).await;
    let err = app
        .refund("m-1", "rf-1b", &d1.deduction_id, "0.01")
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &d1.deduction_id);
    assert_unchanged(
        &before,
        &app.state(&raw).await,
        "refunding a REFUNDED deduction",
    );

    // Partial, adding up.
    let d2 = app
        .deduct_expect(
            "m-1",
            collect("r-2", &m.mandate_id, "100.00", "b-2"),
            D::Succeeded,
            "",
        )
        .await;
    assert_eq!(app.balance("p-1").await, "900.00");
    for (rid, amount, total, balance) in [
        ("rf-2a", "30.00", "30.00", "930.00"),
        ("rf-2b", "50.00", "80.00", "980.00"),
    ] {
        let r = app
            .refund("m-1", rid, &d2.deduction_id, amount)
            .await
            .unwrap();
        let d = r.deduction.unwrap();
        assert_eq!(
            (deduction_status(&d), refunded(&d)),
            (D::PartiallyRefunded, total),
            "{rid}"
        );
        assert_eq!(r.refund.unwrap().amount, money(amount));
        assert_eq!(app.balance("p-1").await, balance, "{rid}");
    }
    // 20.01 more would be 100.01 of 100.00.
    let before = app.state(&raw).await;
    let err = app
        .refund("m-1", "rf-2c", &d2.deduction_id, "20.01")
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &d2.deduction_id);
    assert_unchanged(&before, &app.state(&raw).await, "an over-refund");
    let last = app
        .refund("m-1", "rf-2d", &d2.deduction_id, "20.00")
        .await
        .unwrap();
    assert!(!last.replayed);
    let d = last.deduction.unwrap();
    assert_eq!(
        (deduction_status(&d), refunded(&d)),
        (D::Refunded, "100.00")
    );
    assert_eq!(app.balance("p-1").await, "1000.00");
    let read = merchant
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: d2.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(read, d);

    // Every refund is an audit event.
    let events = app.mandate_chain(&m.mandate_id).await;
    let refunds: Vec<_> = events
        .iter()
        .filter(|e| e.action == "REFUND_RECORDED")
        .map(|e| {
            (
                e.deduction_id.clone().unwrap(),
                e.request_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refunds,
        vec![
            (d1.deduction_id.clone(), "rf-1".to_owned()),
            (d2.deduction_id.clone(), "rf-2a".to_owned()),
            (d2.deduction_id.clone(), "rf-2b".to_owned()),
            (d2.deduction_id.clone(), "rf-2d".to_owned()),
        ]
    );

    // Both debits still count: the month's two debits are used.
    app.deduct_expect(
        "m-1",
        collect("r-3", &m.mandate_id, "10.00", "b-3"),
        D::Declined,
        "PERIOD_COUNT_LIMIT_EXCEEDED",
    )
    .await;
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// Only a SUCCEEDED (or partly refunded) deduction can be refunded.
async fn refunding_declined_or_failed_is_a_precondition(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund-bad").await;
    let declined = app
        .deduct_expect(
            "m-1",
            collect("r-1", &m.mandate_id, "600.00", "b-1"),
            D::Declined,
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        )
        .await;
    // The wallet is empty and the card is not connected.
    let failed = app
        .deduct_expect(
            "m-1",
            collect("r-2", &m.mandate_id, "100.00", "b-2"),
            D::Failed,
            "CARD_NOT_CONNECTED",
        )
        .await;
    // Over the wallet's cap, straight to the card.
    let card = app
        .deduct_expect(
            "m-1",
            collect("r-3", &m.mandate_id, "300.00", "b-3"),
            D::Failed,
            "CARD_NOT_CONNECTED",
        )
        .await;
    for (i, d) in [&declined, &failed, &card].into_iter().enumerate() {
        let before = app.state(&raw).await;
        let err = app
            .refund("m-1", &format!("rf-{i}"), &d.deduction_id, "1.00")
            .await
            .unwrap_err();
        assert_precondition(&err, "DEDUCTION_STATUS", &d.deduction_id);
        assert_unchanged(
            &before,
            &app.state(&raw).await,
            "refunding an unpaid deduction",
        );
    }
    assert_eq!(app.balance("p-1").await, "0.00");
}

/// RefundDeduction is idempotent on its request id.
async fn refund_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-refund-idem").await;
    app.credit("p-1", "500.00").await;
    let d = app
        .deduct_expect(
            "m-1",
            collect("r-1", &m.mandate_id, "100.00", "b-1"),
            D::Succeeded,
            "",
        )
        .await;
    let other = app
        .deduct_expect(
            "m-1",
            collect("r-2", &m.mandate_id, "100.00", "b-2"),
            D::Succeeded,
            "",
        )
        .await;
    assert_eq!(app.balance("p-1").await, "300.00");

    let first = app
        .refund("m-1", "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(app.balance("p-1").await, "340.00");

    // The same request again: the same refund, no money moves, nothing is written.
    let before = app.state(&raw).await;
    let again = app
        .refund("m-1", "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.refund, first.refund);
    assert_eq!(again.deduction, first.deduction);
    assert_unchanged(&before, &app.state(&raw).await, "a replayed refund");
    assert_eq!(app.balance("p-1").await, "340.00");

    // The same id for another amount, or another deduction: ALREADY_EXISTS, nothing written.
    for (deduction, amount) in [(&d, "41.00"), (&other, "40.00")] {
        let before = app.state(&raw).await;
        let err = app
            .refund("m-1", "rf-1", &deduction.deduction_id, amount)
            .await
            .unwrap_err();
        let what = format!(
            "refund key rf-1 reused for {amount} on {}",
            deduction.deduction_id
        );
        assert_key_reused(&err, &what);
        assert_unchanged(&before, &app.state(&raw).await, &what);
    }

    // No request id.
    let before = app.state(&raw).await;
    let err = app
        .refund("m-1", "", &d.deduction_id, "10.00")
        .await
        .unwrap_err();
    assert_bad_field(&err, "request_id");
    assert_unchanged(
        &before,
        &app.state(&raw).await,
        "a refund without request_id",
    );

    // A replay after the deduction is fully refunded still answers with the original refund.
    let rest = app
        .refund("m-1", "rf-2", &d.deduction_id, "60.00")
        .await
        .unwrap();
    let rest_d = rest.deduction.clone().unwrap();
    assert_eq!(
        (deduction_status(&rest_d), refunded(&rest_d)),
        (D::Refunded, "100.00")
    );
    let before = app.state(&raw).await;
    let replay = app
        .refund("m-1", "rf-1", &d.deduction_id, "40.00")
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.refund, first.refund);
    let replay2 = app
        .refund("m-1", "rf-2", &d.deduction_id, "60.00")
        .await
        .unwrap();
    assert!(replay2.replayed);
    assert_eq!(replay2.refund, rest.refund);
    assert_unchanged(
        &before,
        &app.state(&raw).await,
        "replays after a full refund",
    );
    assert_eq!(app.balance("p-1").await, "400.00");
    assert_ledger_balanced(app.ledger_totals().await);
}

both_backends!(
    refunds_full_and_partial,
    refunding_declined_or_failed_is_a_precondition,
    refund_is_idempotent,
);
