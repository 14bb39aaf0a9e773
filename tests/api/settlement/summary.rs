//! The settlement summary (DESIGN §6b, §9.9): totals per merchant × source × business day that
//! equal the deductions and refunds they sum, days cut where the merchant's schedule says, and
//! each caller seeing only its own tenancy.

use std::time::Duration;

use tonic::Code;

use super::*;
use crate::both_backends;
use crate::harness::*;

fn set_schedule(
    merchant: &str,
    cutoff_minute: u32,
    zone: &str,
) -> pb::SetSettlementScheduleRequest {
    pb::SetSettlementScheduleRequest {
        merchant_id: merchant.into(),
        cutoff_minute,
        timezone: zone.into(),
        reason: "bank cut-off".into(),
    }
}

/// m-1 collects from a wallet (up to 200.00) then a card: two wallet debits a second either
/// side of 22:00 in Shanghai, one over the wallet's cap that the card declines (FAILED), one
/// whose card answer times out (PENDING_CONFIRMATION), and a refund the next day.
struct Day {
    app: TestApp,
    _bank: TestBank,
    before_cutoff: pb::Deduction,
    after_cutoff: pb::Deduction,
}

async fn collect_around_the_cutoff(backend: Backend) -> Day {
    let bank = TestBank::start().await;
    bank.card("tok_poor", 0).await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 1_000_000,
        timeout_without_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    app.credit("p-1", "1000.00").await;
    let sources = |card: &str| vec![wallet_funding(Some("200.00")), card_funding(card, None)];
    let poor = app
        .mandate_with("m-1", "p-1", "c-poor", roomy_terms(), sources("tok_poor"))
        .await;
    let slow = app
        .mandate_with("m-1", "p-1", "c-slow", roomy_terms(), sources("tok_slow"))
        .await;
    // 21:59:59 and 22:00:01 in Shanghai (UTC+8) on 2026-03-01.
    app.clock.set(at("2026-03-01T13:59:59Z"));
    let before_cutoff = app
        .deduct_expect(
            "m-1",
            collect("r-1", &poor.mandate_id, "10.00", "b-1"),
            pb::DeductionStatus::Succeeded,
            "",
        )
        .await;
    app.clock.set(at("2026-03-01T14:00:01Z"));
    let after_cutoff = app
        .deduct_expect(
            "m-1",
            collect("r-2", &poor.mandate_id, "20.00", "b-2"),
            pb::DeductionStatus::Succeeded,
            "",
        )
        .await;
    app.deduct_expect(
        "m-1",
        collect("r-3", &poor.mandate_id, "300.00", "b-3"),
        pb::DeductionStatus::Failed,
        "INSUFFICIENT_FUNDS",
    )
    .await;
    app.deduct_expect(
        "m-1",
        collect("r-4", &slow.mandate_id, "250.00", "b-4"),
        pb::DeductionStatus::PendingConfirmation,
        "",
    )
    .await;
    // The next morning in Shanghai: 5.00 of the 21:59:59 debit back.
    app.clock.set(at("2026-03-02T01:00:00Z"));
    app.refund("m-1", "rf-1", &before_cutoff.deduction_id, "5.00")
        .await
        .unwrap();
    Day {
        app,
        _bank: bank,
        before_cutoff,
        after_cutoff,
    }
}

fn row(
    day: &str,
    source: &'static str,
    collected: &str,
    refunded: &str,
    pending: &str,
    failed: &str,
    net: &str,
) -> RowView {
    (
        "m-1".into(),
        day.into(),
        source,
        collected.into(),
        refunded.into(),
        pending.into(),
        failed.into(),
        net.into(),
    )
}

async fn totals_follow_the_cutoff_and_equal_the_deductions(backend: Backend) {
    let Day {
        app,
        before_cutoff,
        after_cutoff,
        ..
    } = collect_around_the_cutoff(backend).await;
    let mut operator = settlement_as(&app, app.operator_token()).await;
    let rows = |r: pb::GetSettlementSummaryResponse| r.rows.iter().map(view).collect::<Vec<_>>();

    // Midnight in Shanghai (the default): both debits fall on 2026-03-01; the refund on 03-02
    // (the day it was made, not the deduction's).
    let default = rows(
        operator
            .get_settlement_summary(summary("2026-03-01", "2026-03-02", "m-1"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        default,
        [
            row(
                "2026-03-01",
                "BANK_CARD",
                "0/0.00",
                "0/0.00",
                "1/250.00",
                "1/300.00",
                "0.00"
            ),
            row(
                "2026-03-01",
                "WALLET",
                "2/30.00",
                "0/0.00",
                "0/0.00",
                "0/0.00",
                "30.00"
            ),
            row(
                "2026-03-02",
                "WALLET",
                "0/0.00",
                "1/5.00",
                "0/0.00",
                "0/0.00",
                "-5.00"
            ),
        ]
    );

    // A 22:00 cut-off: the debit a second after it starts the next business day.
    let set = operator
        .set_settlement_schedule(set_schedule("m-1", 22 * 60, "asia/shanghai"))
        .await
        .unwrap()
        .into_inner();
    assert!(set.changed);
    let schedule = set.schedule.unwrap();
    assert_eq!(
        (
            schedule.cutoff_minute,
            schedule.timezone.as_str(),
            schedule.version
        ),
        (1320, "Asia/Shanghai", 1)
    );
    let again = operator
        .set_settlement_schedule(set_schedule("m-1", 22 * 60, "Asia/Shanghai"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    let sets: Vec<_> = app
        .chain_events("merchant:m-1")
        .await
        .into_iter()
        .filter(|e| e.action == "SETTLEMENT_SCHEDULE_SET")
        .collect();
    assert_eq!(sets.len(), 1);

    let cut = rows(
        operator
            .get_settlement_summary(summary("2026-03-01", "2026-03-02", "m-1"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        cut,
        [
            row(
                "2026-03-01",
                "WALLET",
                "1/10.00",
                "0/0.00",
                "0/0.00",
                "0/0.00",
                "10.00"
            ),
            row(
                "2026-03-02",
                "BANK_CARD",
                "0/0.00",
                "0/0.00",
                "1/250.00",
                "1/300.00",
                "0.00"
            ),
            row(
                "2026-03-02",
                "WALLET",
                "1/20.00",
                "1/5.00",
                "0/0.00",
                "0/0.00",
                "15.00"
            ),
        ]
    );
    // One day alone.
    let one = rows(
        operator
            .get_settlement_summary(summary("2026-03-01", "2026-03-01", "m-1"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(one, cut[..1]);

    // The totals are the sums of the deductions and refunds themselves.
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let all = list_pages(&mut merchant, "", None, 50).await;
    let sum = |statuses: &[pb::DeductionStatus]| -> i64 {
        all.iter()
            .filter(|d| statuses.contains(&deduction_status(d)))
            .map(|d| minor(&d.amount.as_ref().unwrap().amount))
            .sum()
    };
    let total = |pick: fn(&RowView) -> &String| -> i64 {
        cut.iter()
            .map(|r| minor(pick(r).split_once('/').unwrap().1))
            .sum()
    };
    use pb::DeductionStatus as S;
    assert_eq!(
        total(|r| &r.3),
        sum(&[S::Succeeded, S::PartiallyRefunded, S::Refunded])
    );
    assert_eq!(
        total(|r| &r.5),
        sum(&[S::Processing, S::PendingConfirmation])
    );
    assert_eq!(total(|r| &r.6), sum(&[S::Failed]));
    let refunded: i64 = all
        .iter()
        .map(refunded)
        .filter(|r| !r.is_empty())
        .map(minor)
        .sum();
    assert_eq!(total(|r| &r.4), refunded);
    assert_eq!(
        minor(&before_cutoff.amount.unwrap().amount) + minor(&after_cutoff.amount.unwrap().amount),
        3000
    );

    // Bad input names the field.
    for (request, field) in [
        (summary("2026-3-01", "2026-03-02", "m-1"), "from_day"),
        (summary("2026-03-02", "2026-03-01", "m-1"), "to_day"),
        (summary("2026-03-01", "2026-06-02", "m-1"), "to_day"),
        (summary("2026-03-01", "2026-03-02", "m 1"), "merchant_id"),
    ] {
        let err = operator.get_settlement_summary(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(violated_field(&err).unwrap(), field);
    }
    let err = operator
        .set_settlement_schedule(set_schedule("m-1", 1440, "Asia/Shanghai"))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "cutoff_minute");
    let err = operator
        .set_settlement_schedule(set_schedule("m-1", 0, "Mars/Olympus"))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "timezone");
    app.finish().await;
}

async fn each_caller_sees_its_own_tenancy(backend: Backend) {
    let Day { app, .. } = collect_around_the_cutoff(backend).await;
    // m-2 collects too, on 2026-03-02.
    app.credit("p-2", "100.00").await;
    let m2 = app
        .mandate_with("m-2", "p-2", "c-2", roomy_terms(), wallet_only())
        .await;
    app.deduct_expect(
        "m-2",
        collect("r-m2", &m2.mandate_id, "7.00", "b-m2"),
        pb::DeductionStatus::Succeeded,
        "",
    )
    .await;
    let range = |m: &str| summary("2026-03-01", "2026-03-02", m);
    let merchants = |r: &pb::GetSettlementSummaryResponse| {
        let mut m: Vec<String> = r.rows.iter().map(|r| r.merchant_id.clone()).collect();
        m.dedup();
        m
    };

    // A merchant: itself, whether it names itself or not; another is NOT_FOUND.
    let mut m1 = settlement_as(&app, app.merchant_token("m-1")).await;
    for named in ["", "m-1"] {
        let own = m1
            .get_settlement_summary(range(named))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(merchants(&own), ["m-1"]);
    }
    let err = m1.get_settlement_summary(range("m-2")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let own_schedule = m1
        .get_settlement_schedule(pb::GetSettlementScheduleRequest {
            merchant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(
        (
            own_schedule.cutoff_minute,
            own_schedule.timezone.as_str(),
            own_schedule.version
        ),
        (0, "Asia/Shanghai", 0)
    );

    // An auditor of m-2: m-2 only, and each read is an audit event on its own chain.
    let mut scoped = settlement_as(&app, app.auditor_token(Some("m-2"))).await;
    let seen = scoped
        .get_settlement_summary(range(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merchants(&seen), ["m-2"]);
    assert_eq!(view(&seen.rows[0]).3, "1/7.00");
    let err = scoped
        .get_settlement_summary(range("m-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let reads: Vec<_> = app
        .chain_events(&caller_chain("auditor:compliance"))
        .await
        .into_iter()
        .filter(|e| e.action == "AUDIT_READ")
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    let details: serde_json::Value = serde_json::from_str(&reads[0].details).unwrap();
    assert_eq!(details["rpc"], "GetSettlementSummary");
    assert_eq!(details["read"]["merchant_id"], "m-2");
    assert_eq!(reads[0].outcome, "OK");

    // Institution-wide auditors and operators: everyone, or the one named.
    for token in [app.auditor_token(None), app.operator_token()] {
        let mut client = settlement_as(&app, token).await;
        let all = client
            .get_settlement_summary(range(""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(merchants(&all), ["m-1", "m-2"]);
        let one = client
            .get_settlement_summary(range("m-2"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(merchants(&one), ["m-2"]);
    }

    // Payers do not read settlements; merchants and auditors do not set schedules.
    let mut payer = settlement_as(&app, app.payer_token("p-1")).await;
    let err = payer.get_settlement_summary(range("")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = m1
        .set_settlement_schedule(set_schedule("m-1", 60, "UTC"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = scoped
        .set_settlement_schedule(set_schedule("m-2", 60, "UTC"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // No token at all.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut anonymous = pb::settlement_service_client::SettlementServiceClient::with_interceptor(
        channel,
        Bearer(None),
    );
    let err = anonymous
        .get_settlement_summary(range(""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    app.finish().await;
}

both_backends!(
    totals_follow_the_cutoff_and_equal_the_deductions,
    each_caller_sees_its_own_tenancy
);
