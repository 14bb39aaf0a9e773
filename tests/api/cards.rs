//! Bank-card funding through the bank simulator: the waterfall reaches a card when the wallet
//! cannot pay, and a timeout is held as PENDING_CONFIRMATION until the resolver asks the bank.

use std::time::Duration;

use jiff::SignedDuration;
use withholding::pb::{self, bank as bank_pb};

use crate::both_backends;
use crate::harness::*;

async fn card_pays_when_the_wallet_is_short(backend: Backend) {
    let bank = TestBank::start().await;
    bank.card("tok_9a8b7c", 100_000).await;
    let app = spawn_app_with_bank(backend, &bank, Duration::from_secs(2)).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    // 300.00 is over the wallet's 200.00 cap: the card pays.
    let d = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "300.00", "b-1"))
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
    assert_eq!(d.paid_by_source_index, Some(1));
    let charges = bank.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].amount_minor, charges[0].status),
        (30_000, bank_pb::ChargeStatus::Succeeded as i32)
    );
    assert_eq!(
        charges[0].charge_id,
        d.funding_attempts.last().unwrap().charge_id
    );
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!((totals.sum_minor, totals.entries_sum_minor), (0, 0));
    app.verify_audit().await;
}

async fn timeout_that_charged_is_pending_then_resolved(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_9a8b7c".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
        hang_ms: 1500,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, Duration::from_millis(300)).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "300.00", "b-1"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    // A retry returns the pending deduction; nothing is charged again.
    let again = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "300.00", "b-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(
        deduction_status(again.deduction.as_ref().unwrap()),
        pb::DeductionStatus::PendingConfirmation
    );
    // It counts against the period (2 debits a month): one more fits, the next would be a
    // third — it would fit only if the pending one did not count.
    let second = merchant
        .create_deduction(collect("r-2", &m.mandate_id, "100.00", "b-2"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(
        deduction_status(&second),
        pb::DeductionStatus::Succeeded,
        "{second:?}"
    );
    let third = merchant
        .create_deduction(collect("r-3", &m.mandate_id, "100.00", "b-3"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(third.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED");
    // The resolver asks once the backoff has passed.
    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let resolved = merchant
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: d.deduction_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(
        deduction_status(&resolved),
        pb::DeductionStatus::Succeeded,
        "{resolved:?}"
    );
    // Exactly one charge for the pending deduction (and one for the second debit).
    let charges = bank.charges().await;
    assert_eq!(
        charges
            .iter()
            .filter(|c| c.charge_id == d.funding_attempts.last().unwrap().charge_id)
            .count(),
        1
    );
    assert_eq!(charges.len(), 2);
    app.verify_audit().await;
}

both_backends!(
    card_pays_when_the_wallet_is_short,
    timeout_that_charged_is_pending_then_resolved
);
