//! CheckDeduction (DESIGN §4): it lists every violation, in check order, as the deduction itself
//! would; a good debit is allowed as often as it is checked; checks reserve nothing.

use crate::both_backends;
use crate::harness::*;

async fn check_lists_every_violation_and_reserves_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let usage = Raw::open(&app).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // A: both debits of the month used (800.00 of 1000.00).
    app.credit("p-a", "2000.00").await;
    let a = app
        .mandate_with("m-1", "p-a", "c-a", utility_terms(), wallet_only())
        .await;
    for (rid, bill) in [("a-1", "a-b1"), ("a-2", "a-b2")] {
        succeeded_deduction(&mut merchant, collect(rid, &a.mandate_id, "400.00", bill)).await;
    }
    let a_version = app.mandate_now(&a.mandate_id).await.version;
    let wrong = with_purpose(
        collect("a-3", &a.mandate_id, "600.00", "a-b1"),
        pb::Purpose::Telecom,
    );
    let expected = [
        "PURPOSE_NOT_ALLOWED",
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        "DUPLICATE_BILL_REFERENCE",
        "PERIOD_AMOUNT_LIMIT_EXCEEDED",
        "PERIOD_COUNT_LIMIT_EXCEEDED",
    ];
    let answer = check_deduction(&mut merchant, &wrong).await;
    assert!(!answer.allowed);
    assert_eq!(violation_codes(&answer.violations), expected);
    assert_eq!(answer.mandate_version, a_version);
    // The deduction itself carries the same full list.
    let d = new_deduction(&mut merchant, wrong).await;
    assert_declined(&d, &expected, a_version, "wrong everything");
    let clawback = with_purpose(
        collect("a-4", &a.mandate_id, "600.00", "a-b3"),
        pb::Purpose::RefundRecovery,
    );
    let answer = check_deduction(&mut merchant, &clawback).await;
    assert_eq!(
        violation_codes(&answer.violations),
        [
            "REFUND_CLAWBACK_FORBIDDEN",
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            "PERIOD_AMOUNT_LIMIT_EXCEEDED",
            "PERIOD_COUNT_LIMIT_EXCEEDED",
        ]
    );
    assert_eq!(app.balance("p-a").await, "1200.00");

    // B: every rule of one mandate broken at once.
    app.credit("p-b", "2000.00").await;
    let today = shanghai_day(app.clock_now());
    let b_terms = pb::MandateTerms {
        period_amount_limit: money("500.00"),
        period_debit_limit: Some(1),
        total_amount_limit: money("800.00"),
        collection_window: Some(pb::CollectionWindow {
            day_of_period: today,
            tolerance_days: 0,
        }),
        pre_notification: Some(pb::PreNotification { lead_time_s: 0 }),
        ..utility_terms()
    };
    let b = app
        .mandate_with("m-1", "p-b", "c-b", b_terms, wallet_only())
        .await;
    let notice = notify(
        &mut merchant,
        "b-n1",
        &b.mandate_id,
        "500.00",
        "b-b1",
        app.clock_now().checked_add(DAY).unwrap(),
    )
    .await;
    let good = with_notice(collect("b-1", &b.mandate_id, "500.00", "b-b1"), &notice);
    // Checking with the notice does not use it up.
    for _ in 0..2 {
        let answer = check_deduction(&mut merchant, &good).await;
        assert!(answer.allowed, "{answer:?}");
        assert!(answer.violations.is_empty());
        assert_eq!(answer.mandate_version, b.version);
    }
    let list = list_notices(&mut merchant, &b.mandate_id).await.unwrap();
    assert_eq!(list[0].used_by_deduction_id, "");
    succeeded_deduction(&mut merchant, good).await;
    app.clock.advance(DAY);
    app.payer("p-b")
        .await
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: b.mandate_id.clone(),
            reason: "away".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let b_version = app.mandate_now(&b.mandate_id).await.version;
    let everything = with_notice(
        with_purpose(
            collect("b-2", &b.mandate_id, "600.00", "b-b1"),
            pb::Purpose::Telecom,
        ),
        &notice,
    );
    let expected = [
        "MANDATE_NOT_ACTIVE",
        "PURPOSE_NOT_ALLOWED",
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        "OUTSIDE_COLLECTION_WINDOW",
        "PRE_NOTIFICATION_MISSING",
        "DUPLICATE_BILL_REFERENCE",
        "PERIOD_AMOUNT_LIMIT_EXCEEDED",
        "PERIOD_COUNT_LIMIT_EXCEEDED",
        "TOTAL_LIMIT_EXCEEDED",
    ];
    let answer = check_deduction(&mut merchant, &everything).await;
    assert!(!answer.allowed);
    assert_eq!(violation_codes(&answer.violations), expected);
    assert_eq!(answer.mandate_version, b_version);
    let d = new_deduction(&mut merchant, everything).await;
    assert_declined(&d, &expected, b_version, "every rule");
    assert_eq!(app.balance("p-b").await, "1500.00");

    // C: not consented and not valid yet.
    let c_terms = pb::MandateTerms {
        valid_from: pb_time(app.clock_now().checked_add(DAY).unwrap()),
        ..utility_terms()
    };
    let c = app.propose("m-1", "p-c", "c-c", c_terms).await;
    let answer = check_deduction(
        &mut merchant,
        &collect("c-1", &c.mandate_id, "100.00", "c-b1"),
    )
    .await;
    assert_eq!(
        violation_codes(&answer.violations),
        ["MANDATE_NOT_ACTIVE", "MANDATE_NOT_YET_VALID"]
    );
    assert_eq!(answer.mandate_version, c.version);

    // D: a good debit is allowed as often as it is checked; checks reserve nothing.
    app.credit("p-d", "1000.00").await;
    let d_mandate = app
        .mandate_with("m-1", "p-d", "c-d", utility_terms(), wallet_only())
        .await;
    for bill in ["d-b1", "d-b1", "d-b2"] {
        let answer = check_deduction(
            &mut merchant,
            &collect("unused", &d_mandate.mandate_id, "500.00", bill),
        )
        .await;
        assert!(answer.allowed, "{answer:?}");
        assert!(answer.violations.is_empty());
        assert_eq!(answer.mandate_version, d_mandate.version);
    }
    assert_eq!(usage.usage(&d_mandate.mandate_id).await, vec![]);
    assert_eq!(app.balance("p-d").await, "1000.00");
    succeeded_deduction(
        &mut merchant,
        collect("d-1", &d_mandate.mandate_id, "500.00", "d-b1"),
    )
    .await;
    let answer = check_deduction(
        &mut merchant,
        &collect("unused", &d_mandate.mandate_id, "500.00", "d-b2"),
    )
    .await;
    assert!(answer.allowed, "{answer:?}");
    succeeded_deduction(
        &mut merchant,
        collect("d-2", &d_mandate.mandate_id, "500.00", "d-b2"),
    )
    .await;
    let answer = check_deduction(
        &mut merchant,
        &collect("unused", &d_mandate.mandate_id, "0.01", "d-b3"),
    )
    .await;
    assert_eq!(
        violation_codes(&answer.violations),
        [
            "PERIOD_AMOUNT_LIMIT_EXCEEDED",
            "PERIOD_COUNT_LIMIT_EXCEEDED"
        ]
    );
    assert_eq!(app.balance("p-d").await, "0.00");

    usage.close().await;
    app.finish().await;
}

both_backends!(check_lists_every_violation_and_reserves_nothing);
