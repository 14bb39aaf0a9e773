//! Refunds of card-paid deductions (DESIGN §4.2): they go back to the card at the bank, in parts
//! up to what was charged, are refused before the bank when over, and replay forever.

use tonic::Code;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::harness::*;

/// The refusal of a refund is about the deduction (decided here, before any bank call).
fn assert_refused_before_the_bank(err: &tonic::Status) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = err
        .get_details_precondition_failure()
        .expect("a PreconditionFailure detail");
    assert_eq!(failure.violations.len(), 1, "{failure:?}");
    assert_eq!(
        failure.violations[0].r#type, "DEDUCTION_STATUS",
        "{failure:?}"
    );
}

/// A card-paid deduction of 300.00 on a fresh app: (app, bank, mandate, deduction, charge id).
async fn card_paid(backend: Backend) -> (TestApp, TestBank, pb::Mandate, pb::Deduction, String) {
    let bank = TestBank::start().await;
    bank.card("tok_r", 100_000).await;
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    app.credit("p-1", "500.00").await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            utility_terms(),
            vec![wallet_funding(Some("200.00")), card_funding("tok_r", None)],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = new_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "300.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.paid_by_source_index, Some(1));
    assert_eq!(
        attempts(&d),
        [
            (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP"),
            (1, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    let charge_id = charge_ids(&d).pop().unwrap();
    (app, bank, m, d, charge_id)
}

async fn card_refunds_go_back_to_the_card(backend: Backend) {
    let (app, bank, m, d, charge_id) = card_paid(backend).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let q = bank.query(&charge_id).await;
    assert_eq!(
        (q.status(), q.amount_minor, q.refunded_minor),
        (bank_pb::ChargeStatus::Succeeded, 30_000, 0)
    );

    // First part.
    let r1 = app
        .refund("m-1", "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    assert!(!r1.replayed);
    let after1 = r1.deduction.clone().unwrap();
    assert_eq!(
        deduction_status(&after1),
        pb::DeductionStatus::PartiallyRefunded
    );
    assert_eq!(refunded(&after1), "100.00");
    let refund1 = r1.refund.clone().unwrap();
    assert_eq!(refund1.amount, money("100.00"));
    assert_eq!(refund1.deduction_id, d.deduction_id);
    assert_eq!(bank.query(&charge_id).await.refunded_minor, 10_000);

    // Its replay returns it and refunds nothing more.
    let r1_again = app
        .refund("m-1", "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    assert!(r1_again.replayed);
    assert_eq!(r1_again.refund, r1.refund);
    assert_eq!(refunded(r1_again.deduction.as_ref().unwrap()), "100.00");
    assert_eq!(bank.query(&charge_id).await.refunded_minor, 10_000);

    // More than is left is refused here; the bank is not asked.
    let err = app
        .refund("m-1", "rf-big", &d.deduction_id, "200.01")
        .await
        .unwrap_err();
    assert_refused_before_the_bank(&err);
    assert_eq!(bank.query(&charge_id).await.refunded_minor, 10_000);

    // Second part: the rest.
    let r2 = app
        .refund("m-1", "rf-2", &d.deduction_id, "200.00")
        .await
        .unwrap();
    assert!(!r2.replayed);
    let after2 = r2.deduction.unwrap();
    assert_eq!(deduction_status(&after2), pb::DeductionStatus::Refunded);
    assert_eq!(refunded(&after2), "300.00");
    assert_ne!(r2.refund.unwrap().refund_id, refund1.refund_id);
    let q = bank.query(&charge_id).await;
    assert_eq!(
        (q.status(), q.amount_minor, q.refunded_minor),
        (bank_pb::ChargeStatus::Succeeded, 30_000, 30_000)
    );

    // Over-refunded: refused before the bank; the bank's refunded total is unchanged.
    let err = app
        .refund("m-1", "rf-3", &d.deduction_id, "0.01")
        .await
        .unwrap_err();
    assert_refused_before_the_bank(&err);
    assert_eq!(bank.query(&charge_id).await.refunded_minor, 30_000);
    let stored = get_deduction(&mut merchant, &d.deduction_id).await;
    assert_eq!(deduction_status(&stored), pb::DeductionStatus::Refunded);
    assert_eq!(refunded(&stored), "300.00");
    let e = app.deduction_events(&m.mandate_id, &d.deduction_id).await;
    assert_eq!(count_action(&e, "REFUND_RECORDED"), 2, "{e:?}");

    // Card refunds never touch the wallet; a wallet-paid deduction refunds to the wallet.
    assert_eq!(app.balance("p-1").await, "500.00");
    let w = new_deduction(
        &mut merchant,
        collect("r-2", &m.mandate_id, "150.00", "b-2"),
    )
    .await;
    assert_eq!(
        deduction_status(&w),
        pb::DeductionStatus::Succeeded,
        "{w:?}"
    );
    assert_eq!(w.paid_by_source_index, Some(0));
    assert_eq!(app.balance("p-1").await, "350.00");
    let rw = app
        .refund("m-1", "rf-w", &w.deduction_id, "50.00")
        .await
        .unwrap();
    assert_eq!(
        deduction_status(rw.deduction.as_ref().unwrap()),
        pb::DeductionStatus::PartiallyRefunded
    );
    assert_eq!(app.balance("p-1").await, "400.00");

    // The bank saw one charge, refunded in full.
    assert_eq!(
        bank.charges()
            .await
            .iter()
            .map(bank_row)
            .collect::<Vec<_>>(),
        [(
            "tok_r",
            30_000,
            bank_pb::ChargeStatus::Succeeded,
            "",
            30_000
        )]
    );
    app.finish().await;

    // The card's whole balance (1000.00) is available again: the refunds went back to it.
    let probe = bank
        .gateway()
        .await
        .charge(bank_pb::ChargeRequest {
            charge_id: "probe-1".into(),
            card_token: "tok_r".into(),
            currency_code: "CNY".into(),
            amount_minor: 100_000,
            merchant_id: "m-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        probe.status(),
        bank_pb::ChargeStatus::Succeeded,
        "{probe:?}"
    );
}

async fn card_refund_replay_after_full_refund(backend: Backend) {
    let (app, bank, _m, d, charge_id) = card_paid(backend).await;
    let r1 = app
        .refund("m-1", "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    let r2 = app
        .refund("m-1", "rf-2", &d.deduction_id, "200.00")
        .await
        .unwrap();
    assert_eq!(
        deduction_status(r2.deduction.as_ref().unwrap()),
        pb::DeductionStatus::Refunded
    );
    // A request id returns its original result forever (§4): the replays of both parts still
    // answer, though nothing is left to refund.
    for (request_id, amount, original) in [("rf-1", "100.00", &r1), ("rf-2", "200.00", &r2)] {
        let again = app
            .refund("m-1", request_id, &d.deduction_id, amount)
            .await
            .unwrap_or_else(|e| panic!("replay of {request_id}: {e:?}"));
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.refund, original.refund);
        assert_eq!(
            deduction_status(again.deduction.as_ref().unwrap()),
            pb::DeductionStatus::Refunded
        );
    }
    assert_eq!(bank.query(&charge_id).await.refunded_minor, 30_000);
    app.finish().await;
}

both_backends!(
    card_refunds_go_back_to_the_card,
    card_refund_replay_after_full_refund,
);
