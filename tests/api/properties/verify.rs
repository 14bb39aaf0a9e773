//! What is checked after every step, from the server's own answers: the mandate as the model has
//! it, every deduction, the limits in force at each debit, the wallet and the ledger.

use std::collections::{BTreeMap, HashMap};

use super::model::{Limits, Model, approved, money_minor, month, parse_minor, timestamp};
use crate::harness::*;

use pb::DeductionStatus as D;
use pb::MandateStatus as S;

pub(super) struct Clients {
    pub(super) mandates: Client,
    pub(super) payer: Client,
    pub(super) deductions: DeductionClient,
    pub(super) wallet: WalletClient,
}

async fn get_mandate(clients: &mut Clients, id: &str) -> pb::Mandate {
    clients
        .mandates
        .get_mandate(pb::GetMandateRequest {
            mandate_id: id.into(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// Everything checked after every step; returns the mandate as read.
pub(super) async fn verify(
    app: &TestApp,
    clients: &mut Clients,
    model: &Model,
    mandate_id: &str,
    page_size: u32,
    step: &str,
) -> pb::Mandate {
    // The mandate as the model has it.
    let mandate = get_mandate(clients, mandate_id).await;
    assert_eq!(status_of(&mandate), model.status, "{step}: status");
    assert_eq!(mandate.version, model.version, "{step}: version");
    assert_eq!(
        Limits::of(mandate.terms.as_ref().unwrap()),
        model.limits,
        "{step}: limits in force"
    );
    assert_eq!(
        mandate
            .pending_amendment
            .as_ref()
            .map(|p| Limits::of(p.terms.as_ref().unwrap())),
        model.pending,
        "{step}: pending amendment"
    );

    // Every deduction, read back page by page.
    let listed = list_pages(&mut clients.deductions, mandate_id, None, page_size).await;
    assert_eq!(
        listed.len(),
        model.debits.len(),
        "{step}: deductions listed"
    );
    let by_id: HashMap<&str, &pb::Deduction> = listed
        .iter()
        .map(|d| (d.deduction_id.as_str(), d))
        .collect();
    assert_eq!(
        by_id.len(),
        listed.len(),
        "{step}: a deduction listed twice"
    );
    for expected in &model.debits {
        let d = by_id
            .get(expected.id.as_str())
            .unwrap_or_else(|| panic!("{step}: {} not listed", expected.id));
        assert_eq!(deduction_status(d), expected.status, "{step}: {d:?}");
        assert_eq!(money_minor(&d.amount), expected.minor, "{step}: {d:?}");
        assert_eq!(
            money_minor(&d.refunded_amount),
            expected.refunded,
            "{step}: {d:?}"
        );
        assert_eq!(d.bill_reference, expected.bill, "{step}: {d:?}");
        assert_eq!(
            timestamp(&d.created_at),
            expected.created_at,
            "{step}: {d:?}"
        );
    }

    // DESIGN §9.1 from the server's own data, in decision order: per Shanghai month, what was
    // approved up to and including each approved debit stays within the limits GetMandate
    // reported in force when it was decided, and no debit exceeds the per-debit limit then.
    let mut running: BTreeMap<(i16, i8), (i64, i64)> = BTreeMap::new();
    for expected in &model.debits {
        let d = by_id[expected.id.as_str()];
        if !approved(deduction_status(d)) {
            continue;
        }
        let amount = money_minor(&d.amount);
        let used = running.entry(month(timestamp(&d.created_at))).or_default();
        used.0 += amount;
        used.1 += 1;
        let limits = expected.limits;
        assert!(
            amount <= limits.per_debit,
            "{step}: over the per-debit limit {limits:?}: {d:?}"
        );
        if let Some(cap) = limits.period_amount {
            assert!(
                used.0 <= cap,
                "{step}: period amount {} over {limits:?} at {d:?}",
                used.0
            );
        }
        if let Some(cap) = limits.period_count {
            assert!(
                used.1 <= i64::from(cap),
                "{step}: period count {} over {limits:?} at {d:?}",
                used.1
            );
        }
    }
    assert_eq!(running, model.usage, "{step}: period usage");
    // What counts now (SUCCEEDED + PROCESSING + PENDING_CONFIRMATION) in the current period is
    // at most what was approved in it.
    let current = month(model.now);
    let counting: i64 = listed
        .iter()
        .filter(|d| {
            matches!(
                deduction_status(d),
                D::Succeeded | D::Processing | D::PendingConfirmation
            )
        })
        .filter(|d| month(timestamp(&d.created_at)) == current)
        .map(|d| money_minor(&d.amount))
        .sum();
    assert!(
        counting <= running.get(&current).map_or(0, |u| u.0),
        "{step}: counting {counting}"
    );

    // A single-use mandate is consumed by a success, and only by one.
    if model.single_use {
        let any_success = listed.iter().any(|d| approved(deduction_status(d)));
        assert_eq!(
            status_of(&mandate) == S::Consumed,
            any_success,
            "{step}: single use"
        );
        assert!(
            listed
                .iter()
                .filter(|d| approved(deduction_status(d)))
                .count()
                <= 1,
            "{step}"
        );
    }

    // The wallet and the ledger.
    let balance = clients
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: "p-1".into(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
        .amount;
    assert_eq!(parse_minor(&balance), model.wallet, "{step}: wallet");
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!(totals.sum_minor, 0, "{step}: {totals:?}");
    assert_eq!(totals.entries_sum_minor, 0, "{step}: {totals:?}");
    assert!(totals.min_wallet_minor >= 0, "{step}: {totals:?}");
    mandate
}
