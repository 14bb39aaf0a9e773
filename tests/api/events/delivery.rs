//! What arrives and for whom: every mandate and deduction state change, for the merchant that
//! owns the mandate and for its payer, in order, resumable from a cursor.

use std::time::Duration;

use jiff::SignedDuration;
use pb::EventKind as K;

use super::{Watch, kind_of, kinds};
use crate::both_backends;
use crate::harness::*;

/// Mandate lifecycle, wallet deductions (succeeded, declined, failed) and refunds: each is one
/// event, in order, on the merchant's and on the payer's stream, and on nobody else's.
async fn every_change_arrives_for_its_merchant_and_payer(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m1 = app.events_as(app.merchant_token("m-1")).await;
    let mut p1 = app.events_as(app.payer_token("p-1")).await;
    let mut m2 = app.events_as(app.merchant_token("m-2")).await;
    let mut p2 = app.events_as(app.payer_token("p-2")).await;
    let mut merchant = Watch::open(&mut m1, "").await;
    let mut payer = Watch::open(&mut p1, "").await;
    let mut other_merchant = Watch::open(&mut m2, "").await;
    let mut other_payer = Watch::open(&mut p2, "").await;

    app.credit("p-1", "150.00").await;
    let created = app.propose("m-1", "p-1", "c-1", utility_terms()).await;
    let m = app.confirm_with(&created, wallet_only()).await;
    let id = m.mandate_id.clone();
    let mut mandates = app.payer("p-1").await;
    mandates
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: id.clone(),
            reason: "away".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    mandates
        .resume_mandate(pb::ResumeMandateRequest {
            mandate_id: id.clone(),
            reason: "back".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let paid = app
        .deduct_expect(
            "m-1",
            collect("r-1", &id, "100.00", "b-1"),
            pb::DeductionStatus::Succeeded,
            "",
        )
        .await;
    let declined = app
        .deduct_expect(
            "m-1",
            collect("r-2", &id, "100000.00", "b-2"),
            pb::DeductionStatus::Declined,
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        )
        .await;
    let failed = app
        .deduct_expect(
            "m-1",
            collect("r-3", &id, "90.00", "b-3"),
            pb::DeductionStatus::Failed,
            "INSUFFICIENT_FUNDS",
        )
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "40.00")
        .await
        .unwrap();
    app.refund("m-1", "rf-2", &paid.deduction_id, "60.00")
        .await
        .unwrap();

    let d = |x: &pb::Deduction| x.deduction_id.clone();
    let expected = vec![
        (K::MandateCreated, id.clone(), String::new()),
        (K::MandateConfirmed, id.clone(), String::new()),
        (K::MandatePaused, id.clone(), String::new()),
        (K::MandateResumed, id.clone(), String::new()),
        (K::DeductionSucceeded, id.clone(), d(&paid)),
        (K::DeductionDeclined, id.clone(), d(&declined)),
        (K::DeductionFailed, id.clone(), d(&failed)),
        (K::DeductionPartiallyRefunded, id.clone(), d(&paid)),
        (K::DeductionRefunded, id.clone(), d(&paid)),
    ];
    let seen = merchant.take(expected.len()).await;
    assert_eq!(kinds(&seen), expected);
    assert_eq!(kinds(&payer.take(expected.len()).await), expected);

    // What each event says of its resource.
    assert!(
        seen.iter()
            .all(|e| e.merchant_id == "m-1" && e.payer_id == "p-1")
    );
    assert_eq!(
        pb::MandateStatus::try_from(seen[2].mandate_status),
        Ok(pb::MandateStatus::Paused)
    );
    assert_eq!(seen[3].mandate_version, 4, "{:?}", seen[3]);
    assert_eq!(
        pb::DeductionStatus::try_from(seen[4].deduction_status),
        Ok(pb::DeductionStatus::Succeeded)
    );
    assert_eq!(
        pb::MandateStatus::try_from(seen[4].mandate_status),
        Ok(pb::MandateStatus::Unspecified)
    );
    assert_eq!(seen[0].occurred_at, Some(proto_time(app.clock_now())));
    let positions: Vec<i64> = seen
        .iter()
        .map(|e| e.cursor[1..].parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    // Nobody else saw any of it; their own changes reach them.
    other_merchant.quiet_for(Duration::from_millis(300)).await;
    other_payer.quiet_for(Duration::from_millis(300)).await;
    let theirs = app.propose("m-2", "p-2", "c-2", utility_terms()).await;
    for watch in [&mut other_merchant, &mut other_payer] {
        let event = watch.next().await;
        assert_eq!(
            (kind_of(&event), event.mandate_id.as_str()),
            (K::MandateCreated, theirs.mandate_id.as_str())
        );
    }
    merchant.quiet_for(Duration::from_millis(200)).await;
    payer.quiet_for(Duration::from_millis(200)).await;
}

/// The expiry sweep's change and a debit that consumes a single-use mandate are events too.
async fn expiry_and_consumption_are_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut watch = Watch::open(&mut client, "").await;
    app.credit("p-1", "100.00").await;
    let waiting = app.propose("m-1", "p-1", "c-wait", utility_terms()).await;
    let single = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-once",
            pb::MandateTerms {
                single_use: true,
                ..utility_terms()
            },
            wallet_only(),
        )
        .await;
    let d = app
        .deduct_expect(
            "m-1",
            collect("r-1", &single.mandate_id, "10.00", "b-1"),
            pb::DeductionStatus::Succeeded,
            "",
        )
        .await;
    // The consent window (24 h) passes for the mandate nobody confirmed.
    app.clock.advance(SignedDuration::from_hours(25));
    assert_eq!(app.service.expire_due(10).await.unwrap(), 1);
    let events = watch.take(6).await;
    assert_eq!(
        kinds(&events),
        vec![
            (K::MandateCreated, waiting.mandate_id.clone(), String::new()),
            (K::MandateCreated, single.mandate_id.clone(), String::new()),
            (
                K::MandateConfirmed,
                single.mandate_id.clone(),
                String::new()
            ),
            (
                K::DeductionSucceeded,
                single.mandate_id.clone(),
                d.deduction_id.clone()
            ),
            (K::MandateConsumed, single.mandate_id.clone(), String::new()),
            (K::MandateExpired, waiting.mandate_id.clone(), String::new()),
        ]
    );
    assert_eq!(
        pb::MandateStatus::try_from(events[4].mandate_status),
        Ok(pb::MandateStatus::Consumed)
    );
}

/// A card charge the bank answers late: PROCESSING, then PENDING when the bank's deadline
/// passes, then SUCCEEDED when the resolver hears from the bank.
async fn a_card_charge_settled_later_is_an_event(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_late".into(),
        balance_minor: 100_000,
        processing_ms: 300,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-card",
            utility_terms(),
            vec![card_funding("tok_late", None)],
        )
        .await;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut watch = Watch::open(&mut client, "").await;
    assert_eq!(kind_of(&watch.next().await), K::MandateCreated);
    assert_eq!(kind_of(&watch.next().await), K::MandateConfirmed);
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
    let charge = charge_ids(&d).pop().unwrap();
    eventually(
        "the bank to finish the charge",
        Duration::from_secs(10),
        || async {
            let status = bank.query(&charge).await.status;
            (status == bank_pb::ChargeStatus::Succeeded as i32).then_some(())
        },
    )
    .await;
    app.clock.advance(SignedDuration::from_secs(60));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let events = watch.take(3).await;
    let id = m.mandate_id.clone();
    assert_eq!(
        kinds(&events),
        vec![
            (K::DeductionProcessing, id.clone(), d.deduction_id.clone()),
            (K::DeductionPending, id.clone(), d.deduction_id.clone()),
            (K::DeductionSucceeded, id, d.deduction_id.clone()),
        ]
    );
}

/// A stream dropped halfway resumes from the cursor of the last event read: the rest arrive,
/// in order, and none twice.
async fn a_stream_resumes_from_its_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut first = Watch::open(&mut client, "").await;
    let mut made = vec![];
    for i in 0..5 {
        made.push(create_mandate(&app, &format!("c-{i}")).await.mandate_id);
    }
    let read = first.take(3).await;
    let cursor = read[2].cursor.clone();
    drop(first);
    for i in 5..8 {
        made.push(create_mandate(&app, &format!("c-{i}")).await.mandate_id);
    }
    let mut resumed = Watch::open(&mut client, &cursor).await;
    let rest = resumed.take(5).await;
    let ids: Vec<String> = read
        .iter()
        .chain(&rest)
        .map(|e| e.mandate_id.clone())
        .collect();
    assert_eq!(ids, made);
    resumed.quiet_for(Duration::from_millis(300)).await;
}

both_backends!(
    every_change_arrives_for_its_merchant_and_payer,
    expiry_and_consumption_are_events,
    a_card_charge_settled_later_is_an_event,
    a_stream_resumes_from_its_cursor,
);
