//! Resolving discrepancies (DESIGN §6b): each kind of resolution moves money once — through the
//! ledger or the bank — is its own record and audit event, and a retry under the same request
//! id answers the first resolution without moving anything again.

use tonic::Code;
use withholding::domain::ids::MerchantId;
use withholding::domain::ledger::Account;
use withholding::domain::money::Currency;

use super::reconcile::{Planted, all_discrepancies, import, plant};
use super::*;
use crate::both_backends;
use crate::harness::*;

fn resolve(
    request_id: &str,
    discrepancy: &pb::Discrepancy,
    action: pb::ResolutionAction,
) -> pb::ResolveDiscrepancyRequest {
    pb::ResolveDiscrepancyRequest {
        request_id: request_id.into(),
        discrepancy_id: discrepancy.discrepancy_id.clone(),
        action: action as i32,
        note: "reviewed with the bank".into(),
    }
}

async fn each_resolution_moves_money_once_and_is_audited(backend: Backend) {
    let Planted {
        app,
        bank,
        day,
        planted,
        charges,
        ..
    } = plant(backend).await;
    let mut operator = settlement_as(&app, app.operator_token()).await;
    operator
        .import_statement(import(&day, &planted))
        .await
        .unwrap();
    let found = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Open, 100).await;
    let find = |name: &str, kind: pb::DiscrepancyKind| {
        found
            .iter()
            .find(|d| d.charge_id == charges[name].1 && d.kind() == kind)
            .unwrap()
            .clone()
    };
    let m1 = MerchantId::parse("merchant_id", "m-1").unwrap();
    let clearing = |name: &str| Account::card_clearing(&m1, Currency::Cny, &charges[name].0);
    let settlement = |name: &str| Account::merchant(&m1, Currency::Cny, &charges[name].0);
    let balance = |account: Account| {
        let db = app.db().deductions.clone();
        async move { db.balance(&account).await.unwrap() }
    };
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    use pb::DiscrepancyKind as K;
    use pb::ResolutionAction as A;

    // A long we hold as unknown, accepted as collected: the deduction succeeds and the money
    // moves card clearing → merchant, as a late success from the bank would; once.
    // Sub-accounts are shared by the deductions whose ids hash alike: each check is of what a
    // resolution changed.
    let long = find("hidden-1", K::Long);
    let (settled_before, clearing_before) = (
        balance(settlement("hidden-1")).await,
        balance(clearing("hidden-1")).await,
    );
    let accepted = operator
        .resolve_discrepancy(resolve("res-1", &long, A::AcceptCollected))
        .await
        .unwrap()
        .into_inner();
    assert!(!accepted.replayed);
    let resolution = accepted.resolution.unwrap();
    assert_eq!(
        (resolution.outcome.as_str(), resolution.settles),
        ("COLLECTED", true)
    );
    assert_eq!(
        accepted.discrepancy.unwrap().status(),
        pb::DiscrepancyStatus::Resolved
    );
    let hidden = get_deduction(&mut merchant, &charges["hidden-1"].0).await;
    assert_eq!(deduction_status(&hidden), pb::DeductionStatus::Succeeded);
    assert_eq!(balance(settlement("hidden-1")).await, settled_before + 1500);
    assert_eq!(balance(clearing("hidden-1")).await, clearing_before - 1500);
    let replay = operator
        .resolve_discrepancy(resolve("res-1", &long, A::AcceptCollected))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.resolution.unwrap(), resolution);
    assert_eq!(balance(settlement("hidden-1")).await, settled_before + 1500);
    let err = operator
        .resolve_discrepancy(resolve("res-1b", &long, A::RefundPayer))
        .await
        .unwrap_err();
    assert_precondition(&err, "DISCREPANCY_RESOLVED", &long.discrepancy_id);
    let err = operator
        .resolve_discrepancy(resolve("res-1", &long, A::RefundPayer))
        .await
        .unwrap_err();
    assert_key_reused(&err, "a request id used for another resolution");

    // A long refunded to the payer: the bank returns the money to the card once, and the
    // deduction we held as unknown fails, taking nothing.
    let long = find("hidden-2", K::Long);
    let clearing_before = balance(clearing("hidden-2")).await;
    let refunded = operator
        .resolve_discrepancy(resolve("res-2", &long, A::RefundPayer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.resolution.unwrap().outcome, "REFUNDED");
    operator
        .resolve_discrepancy(resolve("res-2", &long, A::RefundPayer))
        .await
        .unwrap();
    assert_eq!(
        bank.query(&charges["hidden-2"].1).await.refunded_minor,
        1600
    );
    let hidden = get_deduction(&mut merchant, &charges["hidden-2"].0).await;
    assert_eq!(deduction_status(&hidden), pb::DeductionStatus::Failed);
    assert_eq!(balance(clearing("hidden-2")).await, clearing_before);

    // A short written off: what card clearing expected from the bank goes to the merchant's
    // reconciliation-loss account, once.
    let short = find("ok-1", K::Short);
    let clearing_before = balance(clearing("ok-1")).await;
    assert!(clearing_before <= -1000, "{clearing_before}");
    let err = operator
        .resolve_discrepancy(resolve("res-3x", &short, A::AcceptCollected))
        .await
        .unwrap_err();
    assert_precondition(&err, "RESOLUTION_ACTION", &short.discrepancy_id);
    let written = operator
        .resolve_discrepancy(resolve("res-3", &short, A::WriteOff))
        .await
        .unwrap()
        .into_inner();
    let resolution = written.resolution.unwrap();
    assert_eq!(resolution.outcome, "WRITTEN_OFF");
    assert!(!resolution.movement_id.is_empty());
    for _ in 0..2 {
        assert_eq!(balance(clearing("ok-1")).await, clearing_before + 1000);
        assert_eq!(
            balance(Account::reconciliation_loss(&m1, Currency::Cny)).await,
            -1000
        );
        operator
            .resolve_discrepancy(resolve("res-3", &short, A::WriteOff))
            .await
            .unwrap();
    }

    // A short asked about again: the bank confirms the charge (the statement missed it).
    let short = find("ok-4", K::Short);
    let clearing_before = balance(clearing("ok-4")).await;
    let requeried = operator
        .resolve_discrepancy(resolve("res-4", &short, A::Requery))
        .await
        .unwrap()
        .into_inner();
    let resolution = requeried.resolution.unwrap();
    assert_eq!(
        (resolution.outcome.as_str(), resolution.settles),
        ("CONFIRMED_BY_BANK", true)
    );
    assert_eq!(balance(clearing("ok-4")).await, clearing_before);

    // The mismatch and the duplicate line are acknowledged; no money moves.
    for (i, (name, kind)) in [("ok-2", K::AmountMismatch), ("ok-3", K::DuplicateLine)]
        .into_iter()
        .enumerate()
    {
        let d = find(name, kind);
        let err = operator
            .resolve_discrepancy(resolve(&format!("res-w{i}"), &d, A::WriteOff))
            .await
            .unwrap_err();
        assert_precondition(&err, "RESOLUTION_ACTION", &d.discrepancy_id);
        let acked = operator
            .resolve_discrepancy(resolve(&format!("res-a{i}"), &d, A::Acknowledge))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acked.resolution.unwrap().outcome, "ACKNOWLEDGED");
    }

    // Everything is resolved, each step audited once on the reconciliation chain.
    assert!(
        all_discrepancies(&mut operator, pb::DiscrepancyStatus::Open, 100)
            .await
            .is_empty()
    );
    let resolved = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Resolved, 2).await;
    assert_eq!(resolved.len(), 6);
    assert!(resolved.iter().all(|d| d.resolutions.len() == 1));
    let events = app.chain_events("reconciliation").await;
    let mut resolutions: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.action == "DISCREPANCY_RESOLVED")
        .map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            (
                details["action"].as_str().unwrap().to_owned(),
                e.request_id.clone().unwrap(),
            )
        })
        .collect();
    resolutions.sort();
    assert_eq!(
        resolutions,
        [
            ("ACCEPT_COLLECTED", "res-1"),
            ("ACKNOWLEDGE", "res-a0"),
            ("ACKNOWLEDGE", "res-a1"),
            ("REFUND_PAYER", "res-2"),
            ("REQUERY", "res-4"),
            ("WRITE_OFF", "res-3"),
        ]
        .map(|(a, r)| (a.to_owned(), r.to_owned()))
    );

    // Who may resolve, and what is malformed.
    let d = find("ok-2", K::AmountMismatch);
    let err = settlement_as(&app, app.auditor_token(None))
        .await
        .resolve_discrepancy(resolve("res-z", &d, A::Acknowledge))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let missing = pb::Discrepancy {
        discrepancy_id: "dis-missing".into(),
        ..d.clone()
    };
    let err = operator
        .resolve_discrepancy(resolve("res-z", &missing, A::Acknowledge))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = operator
        .resolve_discrepancy(resolve("res-z", &d, A::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "action");
    let err = operator
        .resolve_discrepancy(pb::ResolveDiscrepancyRequest {
            note: String::new(),
            ..resolve("res-z", &d, A::Acknowledge)
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "note");
    app.finish().await;
}

both_backends!(each_resolution_moves_money_once_and_is_audited);
