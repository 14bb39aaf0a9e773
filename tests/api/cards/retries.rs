//! Clients that give up or try again (DESIGN §9.2): a client deadline during the bank call does
//! not stop the server recording the bank's answer, and retries of a pending deduction, one by
//! one or ten at once, never charge twice.

use std::time::Duration;

use jiff::SignedDuration;
use tonic::Code;

use crate::both_backends;
use crate::harness::*;

async fn client_deadline_during_bank_call_still_records(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_lag".into(),
        balance_minor: 100_000,
        latency_ms: 200,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            utility_terms(),
            vec![card_funding("tok_lag", None)],
        )
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    // Warm the connection, so the 20 ms go to the call itself.
    assert!(
        list_deductions(&mut merchant, &m.mandate_id)
            .await
            .is_empty()
    );

    let mut request = tonic::Request::new(collect("r-1", &m.mandate_id, "100.00", "b-1"));
    request.set_timeout(Duration::from_millis(20));
    let err = merchant.create_deduction(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );

    // The server carries on and records the bank's answer.
    let found = eventually("the deduction to succeed", Duration::from_secs(5), || {
        let mut merchant = merchant.clone();
        let mandate_id = m.mandate_id.clone();
        async move {
            let all = list_deductions(&mut merchant, &mandate_id).await;
            assert!(all.len() <= 1, "{all:?}");
            all.into_iter()
                .find(|d| deduction_status(d) == pb::DeductionStatus::Succeeded)
        }
    })
    .await;
    let d = get_deduction(&mut merchant, &found.deduction_id).await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.request_id, "r-1");
    assert_eq!(d.paid_by_source_index, Some(0));
    assert_eq!(attempts(&d), [(0, "BANK_CARD", "SUCCEEDED", "")]);
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_lag", 10_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    assert_eq!(vec![charges[0].charge_id.clone()], charge_ids(&d));

    // The retry is a replay of it, and charges nothing.
    let again = replayed_deduction(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(again, d);
    assert_eq!(bank.charges().await.len(), 1);
    assert_eq!(list_deductions(&mut merchant, &m.mandate_id).await.len(), 1);
    app.finish().await;
}

async fn retries_while_pending_never_charge_twice(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
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
            utility_terms(),
            vec![
                wallet_funding(Some("200.00")),
                card_funding("tok_slow", None),
            ],
        )
        .await;
    let merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let request = collect("r-1", &m.mandate_id, "300.00", "b-1");

    async fn at_once(
        merchant: &DeductionClient,
        request: &pb::CreateDeductionRequest,
    ) -> Vec<pb::CreateDeductionResponse> {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let mut merchant = merchant.clone();
            let request = request.clone();
            calls.spawn(async move { merchant.create_deduction(request).await });
        }
        let mut responses = vec![];
        while let Some(done) = calls.join_next().await {
            responses.push(done.unwrap().unwrap().into_inner());
        }
        responses
    }

    // Ten first tries at once: one deduction, one charge; the others see it in flight.
    let first = at_once(&merchant, &request).await;
    let originals: Vec<_> = first.iter().filter(|r| !r.replayed).collect();
    assert_eq!(originals.len(), 1, "{first:?}");
    let d = originals[0].deduction.clone().unwrap();
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    for r in &first {
        let seen = r.deduction.as_ref().unwrap();
        assert_eq!(seen.deduction_id, d.deduction_id);
        assert!(
            matches!(
                deduction_status(seen),
                pb::DeductionStatus::Processing | pb::DeductionStatus::PendingConfirmation
            ),
            "{seen:?}"
        );
    }
    assert_eq!(
        attempts(&d),
        [
            (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP"),
            (1, "BANK_CARD", "UNKNOWN", ""),
        ]
    );
    assert_eq!(bank.charges().await.len(), 1);

    // Ten retries at once while pending: all replays of the pending deduction.
    let retries = at_once(&merchant, &request).await;
    for r in &retries {
        assert!(r.replayed, "{r:?}");
        assert_eq!(r.deduction.as_ref().unwrap(), &d);
    }
    let mut one = merchant.clone();
    let again = replayed_deduction(&mut one, request.clone()).await;
    assert_eq!(again, d);
    // The same key with other parameters is refused.
    let err = one
        .create_deduction(collect("r-1", &m.mandate_id, "300.01", "b-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(list_deductions(&mut one, &m.mandate_id).await.len(), 1);
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 30_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    assert_eq!(vec![charges[0].charge_id.clone()], charge_ids(&d));

    // Resolved: the retry now returns the success, still with one charge.
    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let done = replayed_deduction(&mut one, request.clone()).await;
    assert_eq!(
        deduction_status(&done),
        pb::DeductionStatus::Succeeded,
        "{done:?}"
    );
    assert_eq!(done.deduction_id, d.deduction_id);
    assert_eq!(bank.charges().await.len(), 1);
    app.finish().await;
}

both_backends!(
    client_deadline_during_bank_call_still_records,
    retries_while_pending_never_charge_twice,
);
