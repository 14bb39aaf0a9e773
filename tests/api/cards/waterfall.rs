//! The waterfall reaches the cards: the wallet first, then each card in turn until one pays;
//! a per-source cap skips a source without asking it; when every source refuses, the deduction
//! fails with the last refusal and reserves nothing.

use std::time::Duration;

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

async fn waterfall_over_wallet_and_cards(backend: Backend) {
    let bank = TestBank::start().await;
    bank.card("tok_a", 100_000).await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_dnh".into(),
        balance_minor: 100_000,
        decline_code: "DO_NOT_HONOUR".into(),
        ..Default::default()
    })
    .await;
    bank.card("tok_b", 100_000).await;
    bank.card("tok_poor", 1_000).await;
    bank.card("tok_c", 100_000).await;
    // "tok_capped" is never programmed: a charge on it would be recorded as CARD_INVALID.
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut expected_charges = vec![];

    // The wallet is short: the first card pays.
    app.credit("p-1", "50.00").await;
    let m1 = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            utility_terms(),
            vec![
                wallet_funding(Some("200.00")),
                card_funding("tok_a", None),
                card_funding("tok_b", None),
            ],
        )
        .await;
    let d1 = new_deduction(
        &mut merchant,
        collect("r-1", &m1.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d1),
        pb::DeductionStatus::Succeeded,
        "{d1:?}"
    );
    assert_eq!(d1.paid_by_source_index, Some(1));
    assert_eq!(d1.reason_code, "");
    assert_eq!(
        attempts(&d1),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    expected_charges.extend(charge_ids(&d1));
    assert_eq!(app.balance("p-1").await, "50.00");

    // The first card is declined: the second pays.
    app.credit("p-2", "50.00").await;
    let m2 = app
        .mandate_with(
            "m-1",
            "p-2",
            "c-2",
            utility_terms(),
            vec![
                wallet_funding(Some("200.00")),
                card_funding("tok_dnh", None),
                card_funding("tok_b", None),
            ],
        )
        .await;
    let d2 = new_deduction(
        &mut merchant,
        collect("r-2", &m2.mandate_id, "120.00", "b-2"),
    )
    .await;
    assert_eq!(
        deduction_status(&d2),
        pb::DeductionStatus::Succeeded,
        "{d2:?}"
    );
    assert_eq!(d2.paid_by_source_index, Some(2));
    assert_eq!(
        attempts(&d2),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "DECLINED", "DO_NOT_HONOUR"),
            (2, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    let ids = charge_ids(&d2);
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "each card attempt has its own charge id");
    expected_charges.extend(ids);
    assert_eq!(app.balance("p-2").await, "50.00");

    // Every source refuses: FAILED with the last refusal, nothing reserved.
    let m3 = app
        .mandate_with(
            "m-1",
            "p-3",
            "c-3",
            utility_terms(),
            vec![
                wallet_funding(None),
                card_funding("tok_poor", None),
                card_funding("tok_dnh", None),
            ],
        )
        .await;
    let d3 = new_deduction(
        &mut merchant,
        collect("r-3", &m3.mandate_id, "150.00", "b-3"),
    )
    .await;
    assert_eq!(deduction_status(&d3), pb::DeductionStatus::Failed, "{d3:?}");
    assert_eq!(d3.reason_code, "DO_NOT_HONOUR");
    assert_eq!(d3.paid_by_source_index, None);
    assert_eq!(
        attempts(&d3),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "DECLINED", "INSUFFICIENT_FUNDS"),
            (2, "BANK_CARD", "DECLINED", "DO_NOT_HONOUR"),
        ]
    );
    expected_charges.extend(charge_ids(&d3));
    let e3 = app.deduction_events(&m3.mandate_id, &d3.deduction_id).await;
    assert!(
        e3.contains(&(
            "DEDUCTION_FAILED".into(),
            "FAILED".into(),
            Some("DO_NOT_HONOUR".into())
        )),
        "{e3:?}"
    );
    // Nothing was reserved: the same bill may be collected again, and the month still admits
    // two debits (2 a month), the third being the one over.
    app.credit("p-3", "1000.00").await;
    let again = new_deduction(
        &mut merchant,
        collect("r-3-again", &m3.mandate_id, "150.00", "b-3"),
    )
    .await;
    assert_eq!(
        deduction_status(&again),
        pb::DeductionStatus::Succeeded,
        "{again:?}"
    );
    assert_eq!(again.paid_by_source_index, Some(0));
    let next = new_deduction(
        &mut merchant,
        collect("r-3-next", &m3.mandate_id, "100.00", "b-3x"),
    )
    .await;
    assert_eq!(
        deduction_status(&next),
        pb::DeductionStatus::Succeeded,
        "{next:?}"
    );
    let over = new_deduction(
        &mut merchant,
        collect("r-3-over", &m3.mandate_id, "100.00", "b-3y"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED");
    assert_eq!(app.balance("p-3").await, "750.00");

    // A per-source cap skips a source without asking it; the next one pays.
    app.credit("p-4", "1000.00").await;
    let m4 = app
        .mandate_with(
            "m-1",
            "p-4",
            "c-4",
            utility_terms(),
            vec![
                wallet_funding(Some("200.00")),
                card_funding("tok_capped", Some("100.00")),
                card_funding("tok_c", None),
            ],
        )
        .await;
    let d4 = new_deduction(
        &mut merchant,
        collect("r-4", &m4.mandate_id, "300.00", "b-4"),
    )
    .await;
    assert_eq!(
        deduction_status(&d4),
        pb::DeductionStatus::Succeeded,
        "{d4:?}"
    );
    assert_eq!(d4.paid_by_source_index, Some(2));
    assert_eq!(
        attempts(&d4),
        [
            (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP"),
            (1, "BANK_CARD", "SKIPPED", "OVER_SOURCE_CAP"),
            (2, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    expected_charges.extend(charge_ids(&d4));
    assert_eq!(app.balance("p-4").await, "1000.00");

    // The bank's own books: exactly these charges, in this order.
    let charges = bank.charges().await;
    use bank_pb::ChargeStatus::{Declined, Succeeded};
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [
            ("tok_a", 10_000, Succeeded, "", 0),
            ("tok_dnh", 12_000, Declined, "DO_NOT_HONOUR", 0),
            ("tok_b", 12_000, Succeeded, "", 0),
            ("tok_poor", 15_000, Declined, "INSUFFICIENT_FUNDS", 0),
            ("tok_dnh", 15_000, Declined, "DO_NOT_HONOUR", 0),
            ("tok_c", 30_000, Succeeded, "", 0),
        ]
    );
    assert_eq!(
        charges
            .iter()
            .map(|c| c.charge_id.clone())
            .collect::<Vec<_>>(),
        expected_charges
    );
    app.finish().await;
}

both_backends!(
    card_pays_when_the_wallet_is_short,
    waterfall_over_wallet_and_cards,
);
