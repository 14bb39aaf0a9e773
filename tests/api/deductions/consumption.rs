//! What a debit consumes (DESIGN §3.1, §9.5): a single-use or lifetime-limited mandate is
//! consumed only by successes, and failed or declined debits use no period count.

use crate::both_backends;
use crate::harness::*;

async fn single_use_is_consumed_only_by_a_success(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // Single use, wallet (cap 200.00) then card; the wallet is empty.
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-once".into(),
            payer_id: "p-1".into(),
            terms: Some(pb::MandateTerms {
                single_use: true,
                ..utility_terms()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let once = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let failed = new_deduction(
        &mut merchant,
        collect("o-1", &once.mandate_id, "100.00", "o-b1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    assert!(failed.violations.is_empty());
    let declined = new_deduction(
        &mut merchant,
        with_purpose(
            collect("o-2", &once.mandate_id, "100.00", "o-b2"),
            pb::Purpose::Telecom,
        ),
    )
    .await;
    assert_declined(
        &declined,
        &["PURPOSE_NOT_ALLOWED"],
        once.version,
        "single use",
    );
    let still = app.mandate_now(&once.mandate_id).await;
    assert_eq!(status_of(&still), pb::MandateStatus::Active);
    assert_eq!(still.version, once.version);

    // The failed bill may be collected again once the wallet has money; that consumes it.
    app.credit("p-1", "300.00").await;
    succeeded_deduction(
        &mut merchant,
        collect("o-3", &once.mandate_id, "100.00", "o-b1"),
    )
    .await;
    let consumed = app.mandate_now(&once.mandate_id).await;
    assert_eq!(status_of(&consumed), pb::MandateStatus::Consumed);
    assert_eq!(consumed.version, once.version + 1);
    let after = new_deduction(
        &mut merchant,
        collect("o-4", &once.mandate_id, "100.00", "o-b3"),
    )
    .await;
    assert_declined(
        &after,
        &["MANDATE_NOT_ACTIVE"],
        consumed.version,
        "after consumption",
    );
    assert_eq!(app.balance("p-1").await, "200.00");

    // A lifetime count of 2 is consumed by the second success; a failure does not count.
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-twice".into(),
            payer_id: "p-2".into(),
            terms: Some(pb::MandateTerms {
                total_debit_limit: Some(2),
                period_debit_limit: Some(5),
                ..utility_terms()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let twice = app
        .payer("p-2")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let failed = new_deduction(
        &mut merchant,
        collect("t-1", &twice.mandate_id, "100.00", "t-b1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    app.credit("p-2", "300.00").await;
    succeeded_deduction(
        &mut merchant,
        collect("t-2", &twice.mandate_id, "100.00", "t-b1"),
    )
    .await;
    assert_eq!(
        status_of(&app.mandate_now(&twice.mandate_id).await),
        pb::MandateStatus::Active
    );
    succeeded_deduction(
        &mut merchant,
        collect("t-3", &twice.mandate_id, "100.00", "t-b2"),
    )
    .await;
    let consumed = app.mandate_now(&twice.mandate_id).await;
    assert_eq!(status_of(&consumed), pb::MandateStatus::Consumed);
    let after = new_deduction(
        &mut merchant,
        collect("t-4", &twice.mandate_id, "100.00", "t-b3"),
    )
    .await;
    assert_declined(
        &after,
        &["MANDATE_NOT_ACTIVE", "TOTAL_LIMIT_EXCEEDED"],
        consumed.version,
        "after the lifetime count",
    );
    assert_eq!(app.balance("p-2").await, "100.00");
    app.finish().await;
}

async fn failed_debits_consume_no_period_count(backend: Backend) {
    let app = spawn_app(backend).await;
    let usage = Raw::open(&app).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let failed = new_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    let kinds: Vec<(&str, &str, &str)> = failed
        .funding_attempts
        .iter()
        .map(|a| {
            (
                a.source_kind.as_str(),
                a.outcome.as_str(),
                a.reason_code.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            ("BANK_CARD", "DECLINED", "CARD_NOT_CONNECTED"),
        ]
    );
    let declined = new_deduction(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.01", "b-2"),
    )
    .await;
    assert_declined(
        &declined,
        &["AMOUNT_ABOVE_PER_DEBIT_LIMIT"],
        m.version,
        "above",
    );
    assert_eq!(usage.usage(&m.mandate_id).await, vec![]);

    // One funded debit, then one that fails on the emptied wallet, then another funded one.
    app.credit("p-1", "100.00").await;
    succeeded_deduction(
        &mut merchant,
        collect("r-3", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    let failed = new_deduction(
        &mut merchant,
        collect("r-4", &m.mandate_id, "100.00", "b-3"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert!(
        check_deduction(&mut merchant, &collect("x", &m.mandate_id, "100.00", "b-3"))
            .await
            .allowed
    );
    app.credit("p-1", "100.00").await;
    succeeded_deduction(
        &mut merchant,
        collect("r-5", &m.mandate_id, "100.00", "b-3"),
    )
    .await;
    let rows = usage.usage(&m.mandate_id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, amount, count)| (*amount, *count) == (20_000, 2)),
        "{rows:?}"
    );

    // The two debits of the month are used.
    let third = new_deduction(
        &mut merchant,
        collect("r-6", &m.mandate_id, "100.00", "b-4"),
    )
    .await;
    assert_declined(&third, &["PERIOD_COUNT_LIMIT_EXCEEDED"], m.version, "third");
    assert_eq!(app.balance("p-1").await, "0.00");
    usage.close().await;
    app.finish().await;
}

both_backends!(
    single_use_is_consumed_only_by_a_success,
    failed_debits_consume_no_period_count,
);
