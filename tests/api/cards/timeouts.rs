//! A bank timeout is no answer (DESIGN §9.2): the deduction is PENDING_CONFIRMATION, holds its
//! limits and stops the waterfall until the resolver asks the bank, which settles it as charged
//! or releases it as failed.

use std::time::Duration;

use jiff::SignedDuration;

use crate::both_backends;
use crate::harness::*;

/// Utility terms that allow one debit of up to the whole period amount (1000.00, 2 debits).
fn wide_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("1000.00"),
        ..utility_terms()
    }
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

async fn timeout_that_charged_holds_limits_and_stops_the_waterfall(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    bank.card("tok_b", 100_000).await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            wide_terms(),
            vec![
                wallet_funding(None),
                card_funding("tok_slow", None),
                card_funding("tok_b", None),
            ],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let d = new_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    assert_eq!(d.paid_by_source_index, None);
    assert_eq!(d.reason_code, "");
    // The unknown outcome stopped the waterfall: the second card was not tried.
    assert_eq!(
        attempts(&d),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "UNKNOWN", ""),
        ]
    );
    let charge_id = charge_ids(&d).pop().unwrap();
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 60_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    assert_eq!(charges[0].charge_id, charge_id);

    // It counts against the period: 600.00 + 500.00 is over 1000.00, while 500.00 alone fits.
    let over = new_deduction(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.00", "b-2"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");
    let dry = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("400.00"),
            purpose: pb::Purpose::Utility as i32,
            bill_reference: "b-3".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dry.allowed, "{dry:?}");

    // The resolver waits out the backoff (5 s), then asks once.
    app.clock.advance(SignedDuration::from_secs(4));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    app.clock.advance(SignedDuration::from_secs(2));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    let resolved = get_deduction(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&resolved),
        pb::DeductionStatus::Succeeded,
        "{resolved:?}"
    );
    assert_eq!(resolved.paid_by_source_index, Some(1));
    assert_eq!(
        attempts(&resolved),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    assert_eq!(charge_ids(&resolved), [charge_id.as_str()]);
    let replayed = replayed_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(replayed, resolved);

    // Exactly one charge at the bank, and still none on the second card.
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 60_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    let e = app.deduction_events(&m.mandate_id, &d.deduction_id).await;
    assert_eq!(count_action(&e, "FUNDING_OUTCOME_UNKNOWN"), 1, "{e:?}");
    assert_eq!(count_action(&e, "DEDUCTION_SUCCEEDED"), 1, "{e:?}");
    // Still counted once resolved.
    let still_over = new_deduction(
        &mut merchant,
        collect("r-4", &m.mandate_id, "500.00", "b-4"),
    )
    .await;
    assert_eq!(still_over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");
    app.finish().await;
}

async fn timeout_without_charge_fails_and_releases(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_lost".into(),
        balance_minor: 100_000,
        timeout_without_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            wide_terms(),
            vec![card_funding("tok_lost", None)],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let d = new_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    assert_eq!(attempts(&d), [(0, "BANK_CARD", "UNKNOWN", "")]);
    let charge_id = charge_ids(&d).pop().unwrap();
    assert!(bank.charges().await.is_empty());

    // While pending it holds its 600.00.
    let over = new_deduction(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.00", "b-2"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");

    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let failed = get_deduction(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CHARGE_NOT_FOUND");
    assert_eq!(failed.paid_by_source_index, None);
    assert_eq!(
        attempts(&failed),
        [(0, "BANK_CARD", "DECLINED", "CHARGE_NOT_FOUND")]
    );
    assert_eq!(charge_ids(&failed), [charge_id]);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    let e = app.deduction_events(&m.mandate_id, &d.deduction_id).await;
    assert!(
        e.contains(&(
            "DEDUCTION_FAILED".into(),
            "FAILED".into(),
            Some("CHARGE_NOT_FOUND".into())
        )),
        "{e:?}"
    );

    // Released: 500.00 now fits, and so does the failed bill, both counts of the month.
    let fits = new_deduction(
        &mut merchant,
        collect("r-3", &m.mandate_id, "500.00", "b-3"),
    )
    .await;
    assert_eq!(
        deduction_status(&fits),
        pb::DeductionStatus::Succeeded,
        "{fits:?}"
    );
    let again = new_deduction(
        &mut merchant,
        collect("r-4", &m.mandate_id, "500.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&again),
        pb::DeductionStatus::Succeeded,
        "{again:?}"
    );
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [
            ("tok_lost", 50_000, bank_pb::ChargeStatus::Succeeded, "", 0),
            ("tok_lost", 50_000, bank_pb::ChargeStatus::Succeeded, "", 0),
        ]
    );
    assert_eq!(
        charges
            .iter()
            .map(|c| c.charge_id.clone())
            .collect::<Vec<_>>(),
        [charge_ids(&fits), charge_ids(&again)].concat()
    );
    app.finish().await;
}

both_backends!(
    timeout_that_charged_is_pending_then_resolved,
    timeout_that_charged_holds_limits_and_stops_the_waterfall,
    timeout_without_charge_fails_and_releases,
);
