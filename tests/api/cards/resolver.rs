//! The resolver (DESIGN §9.3): a charge the bank keeps PROCESSING is asked about again with a
//! growing backoff until it settles; one still unknown past the horizon is left for
//! reconciliation.

use std::time::Duration;

use jiff::SignedDuration;
use withholding::service::{DeductionSettings, ResolverSettings};

use crate::both_backends;
use crate::harness::*;

async fn processing_at_the_bank_backs_off_then_succeeds(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        processing_ms: 600_000,
        ..Default::default()
    })
    .await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_quick".into(),
        balance_minor: 100_000,
        processing_ms: 300,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    let slow = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-slow",
            utility_terms(),
            vec![card_funding("tok_slow", None)],
        )
        .await;
    let quick = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-quick",
            utility_terms(),
            vec![card_funding("tok_quick", None)],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // t0: PROCESSING is no answer: pending, first check at t0+5 s.
    let d1 = new_deduction(
        &mut merchant,
        collect("r-1", &slow.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d1),
        pb::DeductionStatus::PendingConfirmation,
        "{d1:?}"
    );
    assert_eq!(attempts(&d1), [(0, "BANK_CARD", "UNKNOWN", "")]);

    // t0+6: asked; still processing; the next check is 10 s later.
    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let d1_now = get_deduction(&mut merchant, &d1.deduction_id).await;
    assert_eq!(
        deduction_status(&d1_now),
        pb::DeductionStatus::PendingConfirmation
    );
    assert_eq!(attempts(&d1_now), [(0, "BANK_CARD", "UNKNOWN", "")]);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    // t0+15: not yet due (t0+16).
    app.clock.advance(SignedDuration::from_secs(9));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);

    // t0+15: a charge that finishes processing shortly; first check at t0+20.
    let d2 = new_deduction(
        &mut merchant,
        collect("r-2", &quick.mandate_id, "100.00", "b-2"),
    )
    .await;
    assert_eq!(
        deduction_status(&d2),
        pb::DeductionStatus::PendingConfirmation,
        "{d2:?}"
    );
    let d2_charge = charge_ids(&d2).pop().unwrap();
    let mut gw = bank.gateway().await;
    eventually(
        "the bank to finish processing",
        Duration::from_secs(5),
        || {
            let mut gw = gw.clone();
            let id = d2_charge.clone();
            async move {
                let q = gw
                    .query_charge(bank_pb::QueryChargeRequest { charge_id: id })
                    .await
                    .unwrap()
                    .into_inner();
                (q.status() == bank_pb::ChargeStatus::Succeeded).then_some(())
            }
        },
    )
    .await;
    let q = gw
        .query_charge(bank_pb::QueryChargeRequest {
            charge_id: d2_charge.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.amount_minor, 10_000);

    // t0+20: both are due; the quick one succeeds, the slow one is still pending.
    app.clock.advance(SignedDuration::from_secs(5));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 2);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    let d2_now = get_deduction(&mut merchant, &d2.deduction_id).await;
    assert_eq!(
        deduction_status(&d2_now),
        pb::DeductionStatus::Succeeded,
        "{d2_now:?}"
    );
    assert_eq!(d2_now.paid_by_source_index, Some(0));
    assert_eq!(attempts(&d2_now), [(0, "BANK_CARD", "SUCCEEDED", "")]);
    let d1_now = get_deduction(&mut merchant, &d1.deduction_id).await;
    assert_eq!(
        deduction_status(&d1_now),
        pb::DeductionStatus::PendingConfirmation
    );
    let e1 = app
        .deduction_events(&slow.mandate_id, &d1.deduction_id)
        .await;
    assert_eq!(count_action(&e1, "FUNDING_OUTCOME_UNKNOWN"), 3, "{e1:?}");
    assert_eq!(count_action(&e1, "DEDUCTION_SUCCEEDED"), 0, "{e1:?}");

    let charges = bank.charges().await;
    use bank_pb::ChargeStatus::{Processing, Succeeded};
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [
            ("tok_slow", 10_000, Processing, "", 0),
            ("tok_quick", 10_000, Succeeded, "", 0),
        ]
    );
    assert_eq!(charges[1].charge_id, d2_charge);
    app.finish().await;
}

async fn unknown_past_the_horizon_is_left_for_reconciliation(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        processing_ms: 600_000,
        ..Default::default()
    })
    .await;
    let app = spawn_configured(
        backend,
        TestDatabase::new(backend).await,
        default_keys(),
        Some((bank.url(), DEADLINE)),
        DeductionSettings {
            resolver: ResolverSettings {
                horizon: SignedDuration::from_mins(1),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            utility_terms(),
            vec![card_funding("tok_slow", None)],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = new_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    // Checks at t0+6 (next +10 s), t0+16 (next +20 s), t0+36: the next (+40 s) would be past
    // the one-minute horizon.
    for step in [6, 10, 20] {
        app.clock.advance(SignedDuration::from_secs(step));
        assert_eq!(
            app.deductions.resolve_due(10).await.unwrap(),
            1,
            "at +{step}s"
        );
    }
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    app.clock.advance(SignedDuration::from_hours(1));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);

    let now = get_deduction(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&now),
        pb::DeductionStatus::PendingConfirmation,
        "{now:?}"
    );
    assert_eq!(attempts(&now), [(0, "BANK_CARD", "UNKNOWN", "")]);
    let e = app.deduction_events(&m.mandate_id, &d.deduction_id).await;
    let followed: Vec<&str> = e
        .iter()
        .map(|(a, _, _)| a.as_str())
        .filter(|a| a.starts_with("FUNDING_OUTCOME") || a.starts_with("FUNDING_LEFT"))
        .collect();
    assert_eq!(
        followed,
        [
            "FUNDING_OUTCOME_UNKNOWN",
            "FUNDING_OUTCOME_UNKNOWN",
            "FUNDING_OUTCOME_UNKNOWN",
            "FUNDING_LEFT_FOR_RECONCILIATION",
        ],
        "{e:?}"
    );
    let left = e
        .iter()
        .find(|(a, _, _)| a == "FUNDING_LEFT_FOR_RECONCILIATION")
        .unwrap();
    assert_eq!(left.1, "UNKNOWN");
    // The bank still has exactly the one charge, processing.
    assert_eq!(
        bank.charges()
            .await
            .iter()
            .map(bank_row)
            .collect::<Vec<_>>(),
        [("tok_slow", 10_000, bank_pb::ChargeStatus::Processing, "", 0)]
    );
    app.finish().await;
}

both_backends!(
    processing_at_the_bank_backs_off_then_succeeds,
    unknown_past_the_horizon_is_left_for_reconciliation,
);
