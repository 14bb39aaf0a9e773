//! Time in Asia/Shanghai (DESIGN §4): limit periods are calendar days, ISO weeks and months
//! there, and a collection window is a day of the month there, plus or minus its tolerance.

use crate::both_backends;
use crate::harness::*;

fn one_per(unit: pb::PeriodUnit) -> pb::MandateTerms {
    pb::MandateTerms {
        period: Some(pb::Period {
            unit: unit as i32,
            count: 1,
        }),
        period_amount_limit: None,
        period_debit_limit: Some(1),
        ..utility_terms()
    }
}

async fn periods_are_calendar_periods_in_shanghai(backend: Backend) {
    let app = spawn_app(backend).await;
    app.credit("p-1", "1000.00").await;
    // Created on Sunday 2026-03-01, 10:00 in Shanghai.
    let week = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-week",
            one_per(pb::PeriodUnit::Week),
            wallet_only(),
        )
        .await;
    let day = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-day",
            one_per(pb::PeriodUnit::Day),
            wallet_only(),
        )
        .await;
    let month = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-month",
            one_per(pb::PeriodUnit::Month),
            wallet_only(),
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut n = 0;
    // (local time, mandate, succeeds?) in time order.
    let steps: [(&str, &pb::Mandate, bool); 17] = [
        // Sunday's last second and Monday's first are different ISO weeks.
        ("2026-03-01T23:59:59+08:00", &week, true),
        ("2026-03-01T23:59:59+08:00", &week, false),
        ("2026-03-01T23:59:59+08:00", &day, true),
        ("2026-03-02T00:00:00+08:00", &week, true),
        ("2026-03-02T00:00:00+08:00", &day, true),
        // Midnight UTC is 08:00 in Shanghai: the same local day.
        ("2026-03-02T08:00:00+08:00", &day, false),
        ("2026-03-02T23:59:59+08:00", &day, false),
        ("2026-03-03T00:00:00+08:00", &day, true),
        ("2026-03-08T23:59:59+08:00", &week, false),
        ("2026-03-09T00:00:00+08:00", &week, true),
        // 2026-03-31T16:00:00Z is still March in UTC but April in Shanghai.
        ("2026-03-31T23:59:59+08:00", &month, true),
        ("2026-03-31T23:59:59+08:00", &month, false),
        ("2026-04-01T00:00:00+08:00", &month, true),
        ("2026-04-01T00:00:01+08:00", &month, false),
        ("2026-04-30T23:59:59+08:00", &month, false),
        ("2026-05-01T00:00:00+08:00", &month, true),
        ("2026-05-01T00:00:00+08:00", &day, true),
    ];
    let mut paid = 0;
    for (local, mandate, ok) in steps {
        app.clock.set(at(local));
        n += 1;
        let req = collect(
            &format!("r-{n}"),
            &mandate.mandate_id,
            "10.00",
            &format!("b-{n}"),
        );
        let d = new_deduction(&mut merchant, req).await;
        let what = format!("{local} on {}", mandate.merchant_contract_id);
        if ok {
            assert_eq!(
                deduction_status(&d),
                pb::DeductionStatus::Succeeded,
                "{what}: {d:?}"
            );
            paid += 1000;
        } else {
            assert_declined(&d, &["PERIOD_COUNT_LIMIT_EXCEEDED"], mandate.version, &what);
        }
    }
    assert_eq!(app.balance("p-1").await, fmt_minor(100_000 - paid));
    assert_eq!(paid, 10 * 1000);
    app.finish().await;
}

async fn collection_window_is_day_of_month_plus_or_minus(backend: Backend) {
    let app = spawn_app(backend).await;
    app.credit("p-1", "1000.00").await;
    let terms = pb::MandateTerms {
        period_amount_limit: None,
        period_debit_limit: Some(31),
        collection_window: Some(pb::CollectionWindow {
            day_of_period: 15,
            tolerance_days: 2,
        }),
        ..utility_terms()
    };
    let m = app
        .mandate_with("m-1", "p-1", "c-1", terms, wallet_only())
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let steps = [
        ("2026-03-12T23:59:59+08:00", false),
        // 2026-03-12T16:00:00Z: the 12th in UTC, the 13th in Shanghai.
        ("2026-03-13T00:00:00+08:00", true),
        ("2026-03-14T12:00:00+08:00", true),
        ("2026-03-15T12:00:00+08:00", true),
        ("2026-03-16T12:00:00+08:00", true),
        ("2026-03-17T23:59:59+08:00", true),
        // 2026-03-17T16:00:00Z: the 17th in UTC, the 18th in Shanghai.
        ("2026-03-18T00:00:00+08:00", false),
        ("2026-04-12T12:00:00+08:00", false),
        ("2026-04-13T12:00:00+08:00", true),
    ];
    let mut paid = 0;
    for (n, (local, ok)) in steps.into_iter().enumerate() {
        app.clock.set(at(local));
        let req = collect(&format!("r-{n}"), &m.mandate_id, "10.00", &format!("b-{n}"));
        let dry = check_deduction(&mut merchant, &req).await;
        assert_eq!(dry.allowed, ok, "{local}: {dry:?}");
        let d = new_deduction(&mut merchant, req).await;
        if ok {
            assert_eq!(
                deduction_status(&d),
                pb::DeductionStatus::Succeeded,
                "{local}: {d:?}"
            );
            paid += 1000;
        } else {
            assert_eq!(
                violation_codes(&dry.violations),
                ["OUTSIDE_COLLECTION_WINDOW"]
            );
            assert_declined(&d, &["OUTSIDE_COLLECTION_WINDOW"], m.version, local);
        }
    }
    assert_eq!(paid, 6 * 1000);
    assert_eq!(app.balance("p-1").await, fmt_minor(100_000 - paid));
    app.finish().await;
}

both_backends!(
    periods_are_calendar_periods_in_shanghai,
    collection_window_is_day_of_month_plus_or_minus,
);
