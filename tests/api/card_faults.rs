//! Bank-card funding under faults (DESIGN §4.1, §4.2, §9.2, §9.3): the waterfall over several
//! cards, bank timeouts that did and did not take the money, charges the bank keeps PROCESSING,
//! the resolver's backoff and horizon, a client that gives up during the bank call, retries of a
//! pending deduction, card refunds, and a `kill -9` of the real binary between the bank's answer
//! and its record.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use withholding::pb::deduction_service_client::DeductionServiceClient;
use withholding::pb::mandate_service_client::MandateServiceClient;
use withholding::pb::wallet_service_client::WalletServiceClient;
use withholding::pb::{self, bank as bank_pb};
use withholding::service::{DeductionSettings, ResolverSettings};

use crate::both_backends;
use crate::harness::*;

/// The bank deadline for tests whose bank hangs: short, so a hang is a timeout quickly.
const DEADLINE: Duration = Duration::from_millis(300);
/// How long a programmed hang lasts: longer than `DEADLINE`.
const HANG_MS: u32 = 1_000;
/// Deadline for tests whose bank answers promptly.
const PROMPT: Duration = Duration::from_secs(2);

// ---- helpers ----

fn wallet(cap: Option<&str>) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
        cap_per_debit: cap.and_then(money),
    }
}

fn card(token: &str, cap: Option<&str>) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::BankCard(
            pb::BankCardSource {
                vault_token: token.into(),
                bank_name: "ICBC".into(),
                last_four: "4242".into(),
            },
        )),
        cap_per_debit: cap.and_then(money),
    }
}

/// Utility terms that allow one debit of up to the whole period amount (1000.00, 2 debits).
fn wide_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("1000.00"),
        ..utility_terms()
    }
}

/// Creates (as merchant m-1) and confirms (as `payer`) a mandate with these terms and sources.
async fn mandate_for(
    app: &TestApp,
    contract: &str,
    payer: &str,
    terms: pb::MandateTerms,
    sources: Vec<pb::FundingSource>,
) -> pb::Mandate {
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: contract.into(),
            payer_id: payer.into(),
            terms: Some(terms),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mut confirm = confirm_request(&created);
    confirm.funding_sources = sources;
    let mandate = app
        .payer(payer)
        .await
        .confirm_mandate(confirm)
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&mandate), pb::MandateStatus::Active);
    mandate
}

async fn create(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let response = client.create_deduction(request).await.unwrap().into_inner();
    assert!(!response.replayed, "{response:?}");
    response.deduction.unwrap()
}

async fn replay(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let response = client.create_deduction(request).await.unwrap().into_inner();
    assert!(response.replayed, "{response:?}");
    response.deduction.unwrap()
}

async fn get(client: &mut DeductionClient, id: &str) -> pb::Deduction {
    client
        .get_deduction(pb::GetDeductionRequest {
            deduction_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap()
}

async fn list(client: &mut DeductionClient, mandate_id: &str) -> Vec<pb::Deduction> {
    client
        .list_deductions(pb::ListDeductionsRequest {
            mandate_id: mandate_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deductions
}

/// (source index, kind, outcome, reason) of every funding attempt, in order.
fn attempts(d: &pb::Deduction) -> Vec<(u32, &str, &str, &str)> {
    d.funding_attempts
        .iter()
        .map(|a| {
            (
                a.source_index,
                a.source_kind.as_str(),
                a.outcome.as_str(),
                a.reason_code.as_str(),
            )
        })
        .collect()
}

/// The charge ids of the attempts that went to the bank, in order; checks that exactly those
/// attempts (cards not skipped) carry one.
fn charge_ids(d: &pb::Deduction) -> Vec<String> {
    for a in &d.funding_attempts {
        let to_bank = a.source_kind == "BANK_CARD" && a.outcome != "SKIPPED";
        assert_eq!(!a.charge_id.is_empty(), to_bank, "{a:?}");
    }
    d.funding_attempts
        .iter()
        .filter(|a| !a.charge_id.is_empty())
        .map(|a| a.charge_id.clone())
        .collect()
}

/// (card, amount, status, decline code, refunded) of a charge as the bank recorded it.
fn bank_row(c: &bank_pb::SimulatedCharge) -> (&str, i64, bank_pb::ChargeStatus, &str, i64) {
    (
        c.card_token.as_str(),
        c.amount_minor,
        c.status(),
        c.decline_code.as_str(),
        c.refunded_minor,
    )
}

type Gateway = bank_pb::bank_gateway_service_client::BankGatewayServiceClient<Channel>;

async fn gateway(bank: &TestBank) -> Gateway {
    Gateway::connect(bank.url())
        .await
        .expect("connect bank gateway")
}

async fn query(bank: &TestBank, charge_id: &str) -> bank_pb::QueryChargeResponse {
    gateway(bank)
        .await
        .query_charge(bank_pb::QueryChargeRequest {
            charge_id: charge_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls `probe` every 20 ms until it yields a value, for at most `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "gave up after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (action, outcome, reason) of a deduction's audit events, in chain order.
async fn events(
    app: &TestApp,
    mandate_id: &str,
    deduction_id: &str,
) -> Vec<(String, String, Option<String>)> {
    app.store
        .audit_chain(&format!("mandate:{mandate_id}"))
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.draft.deduction_id.as_deref() == Some(deduction_id))
        .map(|e| (e.draft.action, e.draft.outcome, e.draft.reason_code))
        .collect()
}

fn count_action(events: &[(String, String, Option<String>)], action: &str) -> usize {
    events.iter().filter(|(a, _, _)| a == action).count()
}

async fn assert_ledger_balances(db: &withholding::storage::Database) {
    let totals = db.deductions.ledger_totals().await.unwrap();
    assert_eq!(
        (totals.sum_minor, totals.entries_sum_minor),
        (0, 0),
        "{totals:?}"
    );
    assert!(totals.min_wallet_minor >= 0, "{totals:?}");
}

async fn finish(app: &TestApp) {
    assert_ledger_balances(app.db()).await;
    app.verify_audit().await;
}

// ---- 1. the waterfall over cards ----

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
    let m1 = mandate_for(
        &app,
        "c-1",
        "p-1",
        utility_terms(),
        vec![
            wallet(Some("200.00")),
            card("tok_a", None),
            card("tok_b", None),
        ],
    )
    .await;
    let d1 = create(
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
    let m2 = mandate_for(
        &app,
        "c-2",
        "p-2",
        utility_terms(),
        vec![
            wallet(Some("200.00")),
            card("tok_dnh", None),
            card("tok_b", None),
        ],
    )
    .await;
    let d2 = create(
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
    let m3 = mandate_for(
        &app,
        "c-3",
        "p-3",
        utility_terms(),
        vec![wallet(None), card("tok_poor", None), card("tok_dnh", None)],
    )
    .await;
    let d3 = create(
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
    let e3 = events(&app, &m3.mandate_id, &d3.deduction_id).await;
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
    let again = create(
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
    let next = create(
        &mut merchant,
        collect("r-3-next", &m3.mandate_id, "100.00", "b-3x"),
    )
    .await;
    assert_eq!(
        deduction_status(&next),
        pb::DeductionStatus::Succeeded,
        "{next:?}"
    );
    let over = create(
        &mut merchant,
        collect("r-3-over", &m3.mandate_id, "100.00", "b-3y"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED");
    assert_eq!(app.balance("p-3").await, "750.00");

    // A per-source cap skips a source without asking it; the next one pays.
    app.credit("p-4", "1000.00").await;
    let m4 = mandate_for(
        &app,
        "c-4",
        "p-4",
        utility_terms(),
        vec![
            wallet(Some("200.00")),
            card("tok_capped", Some("100.00")),
            card("tok_c", None),
        ],
    )
    .await;
    let d4 = create(
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
    finish(&app).await;
}

// ---- 2. a timeout after the bank took the money ----

async fn timeout_that_charged_holds_limits_and_stops_the_waterfall(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    bank.card("tok_b", 100_000).await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        wide_terms(),
        vec![wallet(None), card("tok_slow", None), card("tok_b", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let d = create(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    assert_eq!(d.paid_by_source_index, None);
    assert_eq!(d.reason_code, "");
    // The unknown outcome stopped the waterfall: the second card was not tried.
    assert_eq!(
        attempts(&d),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "UNKNOWN", ""),
        ]
    );
    let charge_id = charge_ids(&d).pop().unwrap();
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 60_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    assert_eq!(charges[0].charge_id, charge_id);

    // It counts against the period: 600.00 + 500.00 is over 1000.00, while 500.00 alone fits.
    let over = create(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.00", "b-2"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");
    let dry = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("400.00"),
            purpose: pb::Purpose::Utility as i32,
            bill_reference: "b-3".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dry.allowed, "{dry:?}");

    // The resolver waits out the backoff (5 s), then asks once.
    app.clock.advance(SignedDuration::from_secs(4));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    app.clock.advance(SignedDuration::from_secs(2));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    let resolved = get(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&resolved),
        pb::DeductionStatus::Succeeded,
        "{resolved:?}"
    );
    assert_eq!(resolved.paid_by_source_index, Some(1));
    assert_eq!(
        attempts(&resolved),
        [
            (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            (1, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    assert_eq!(charge_ids(&resolved), [charge_id.as_str()]);
    let replayed = replay(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(replayed, resolved);

    // Exactly one charge at the bank, and still none on the second card.
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 60_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    let e = events(&app, &m.mandate_id, &d.deduction_id).await;
    assert_eq!(count_action(&e, "FUNDING_OUTCOME_UNKNOWN"), 1, "{e:?}");
    assert_eq!(count_action(&e, "DEDUCTION_SUCCEEDED"), 1, "{e:?}");
    // Still counted once resolved.
    let still_over = create(
        &mut merchant,
        collect("r-4", &m.mandate_id, "500.00", "b-4"),
    )
    .await;
    assert_eq!(still_over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");
    finish(&app).await;
}

// ---- 3. a timeout where nothing was charged ----

async fn timeout_without_charge_fails_and_releases(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_lost".into(),
        balance_minor: 100_000,
        timeout_without_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        wide_terms(),
        vec![card("tok_lost", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let d = create(
        &mut merchant,
        collect("r-1", &m.mandate_id, "600.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::PendingConfirmation,
        "{d:?}"
    );
    assert_eq!(attempts(&d), [(0, "BANK_CARD", "UNKNOWN", "")]);
    let charge_id = charge_ids(&d).pop().unwrap();
    assert!(bank.charges().await.is_empty());

    // While pending it holds its 600.00.
    let over = create(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.00", "b-2"),
    )
    .await;
    assert_eq!(deduction_status(&over), pb::DeductionStatus::Declined);
    assert_eq!(over.reason_code, "PERIOD_AMOUNT_LIMIT_EXCEEDED");

    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let failed = get(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CHARGE_NOT_FOUND");
    assert_eq!(failed.paid_by_source_index, None);
    assert_eq!(
        attempts(&failed),
        [(0, "BANK_CARD", "DECLINED", "CHARGE_NOT_FOUND")]
    );
    assert_eq!(charge_ids(&failed), [charge_id]);
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 0);
    let e = events(&app, &m.mandate_id, &d.deduction_id).await;
    assert!(
        e.contains(&(
            "DEDUCTION_FAILED".into(),
            "FAILED".into(),
            Some("CHARGE_NOT_FOUND".into())
        )),
        "{e:?}"
    );

    // Released: 500.00 now fits, and so does the failed bill, both counts of the month.
    let fits = create(
        &mut merchant,
        collect("r-3", &m.mandate_id, "500.00", "b-3"),
    )
    .await;
    assert_eq!(
        deduction_status(&fits),
        pb::DeductionStatus::Succeeded,
        "{fits:?}"
    );
    let again = create(
        &mut merchant,
        collect("r-4", &m.mandate_id, "500.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&again),
        pb::DeductionStatus::Succeeded,
        "{again:?}"
    );
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [
            ("tok_lost", 50_000, bank_pb::ChargeStatus::Succeeded, "", 0),
            ("tok_lost", 50_000, bank_pb::ChargeStatus::Succeeded, "", 0),
        ]
    );
    assert_eq!(
        charges
            .iter()
            .map(|c| c.charge_id.clone())
            .collect::<Vec<_>>(),
        [charge_ids(&fits), charge_ids(&again)].concat()
    );
    finish(&app).await;
}

// ---- 4. PROCESSING at the bank ----

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
    let slow = mandate_for(
        &app,
        "c-slow",
        "p-1",
        utility_terms(),
        vec![card("tok_slow", None)],
    )
    .await;
    let quick = mandate_for(
        &app,
        "c-quick",
        "p-1",
        utility_terms(),
        vec![card("tok_quick", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // t0: PROCESSING is no answer: pending, first check at t0+5 s.
    let d1 = create(
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
    let d1_now = get(&mut merchant, &d1.deduction_id).await;
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
    let d2 = create(
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
    let mut gw = gateway(&bank).await;
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
    let d2_now = get(&mut merchant, &d2.deduction_id).await;
    assert_eq!(
        deduction_status(&d2_now),
        pb::DeductionStatus::Succeeded,
        "{d2_now:?}"
    );
    assert_eq!(d2_now.paid_by_source_index, Some(0));
    assert_eq!(attempts(&d2_now), [(0, "BANK_CARD", "SUCCEEDED", "")]);
    let d1_now = get(&mut merchant, &d1.deduction_id).await;
    assert_eq!(
        deduction_status(&d1_now),
        pb::DeductionStatus::PendingConfirmation
    );
    let e1 = events(&app, &slow.mandate_id, &d1.deduction_id).await;
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
    finish(&app).await;
}

// ---- 5. the resolver's horizon ----

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
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        utility_terms(),
        vec![card("tok_slow", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = create(
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

    let now = get(&mut merchant, &d.deduction_id).await;
    assert_eq!(
        deduction_status(&now),
        pb::DeductionStatus::PendingConfirmation,
        "{now:?}"
    );
    assert_eq!(attempts(&now), [(0, "BANK_CARD", "UNKNOWN", "")]);
    let e = events(&app, &m.mandate_id, &d.deduction_id).await;
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
    finish(&app).await;
}

// ---- 6. the client gives up during the bank call ----

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
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        utility_terms(),
        vec![card("tok_lag", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    // Warm the connection, so the 20 ms go to the call itself.
    assert!(list(&mut merchant, &m.mandate_id).await.is_empty());

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
            let all = list(&mut merchant, &mandate_id).await;
            assert!(all.len() <= 1, "{all:?}");
            all.into_iter()
                .find(|d| deduction_status(d) == pb::DeductionStatus::Succeeded)
        }
    })
    .await;
    let d = get(&mut merchant, &found.deduction_id).await;
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
    let again = replay(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(again, d);
    assert_eq!(bank.charges().await.len(), 1);
    assert_eq!(list(&mut merchant, &m.mandate_id).await.len(), 1);
    finish(&app).await;
}

// ---- 7. retries of a pending deduction ----

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
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        utility_terms(),
        vec![wallet(Some("200.00")), card("tok_slow", None)],
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
    let again = replay(&mut one, request.clone()).await;
    assert_eq!(again, d);
    // The same key with other parameters is refused.
    let err = one
        .create_deduction(collect("r-1", &m.mandate_id, "300.01", "b-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(list(&mut one, &m.mandate_id).await.len(), 1);
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_slow", 30_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    assert_eq!(vec![charges[0].charge_id.clone()], charge_ids(&d));

    // Resolved: the retry now returns the success, still with one charge.
    app.clock.advance(SignedDuration::from_secs(6));
    assert_eq!(app.deductions.resolve_due(10).await.unwrap(), 1);
    let done = replay(&mut one, request.clone()).await;
    assert_eq!(
        deduction_status(&done),
        pb::DeductionStatus::Succeeded,
        "{done:?}"
    );
    assert_eq!(done.deduction_id, d.deduction_id);
    assert_eq!(bank.charges().await.len(), 1);
    finish(&app).await;
}

// ---- 8. card refunds ----

async fn refund(
    client: &mut DeductionClient,
    request_id: &str,
    deduction_id: &str,
    amount: &str,
) -> Result<pb::RefundDeductionResponse, tonic::Status> {
    client
        .refund_deduction(pb::RefundDeductionRequest {
            request_id: request_id.into(),
            deduction_id: deduction_id.into(),
            amount: money(amount),
            reason: "overcharged".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn refunded(d: &pb::Deduction) -> String {
    d.refunded_amount
        .as_ref()
        .map(|m| m.amount.clone())
        .unwrap_or_default()
}

/// The refusal of a refund is about the deduction (decided here, before any bank call).
fn assert_refused_before_the_bank(err: &tonic::Status) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = err
        .get_details_precondition_failure()
        .expect("a PreconditionFailure detail");
    assert_eq!(failure.violations.len(), 1, "{failure:?}");
    assert_eq!(
        failure.violations[0].r#type, "DEDUCTION_STATUS",
        "{failure:?}"
    );
}

/// A card-paid deduction of 300.00 on a fresh app: (app, bank, mandate, deduction, charge id).
async fn card_paid(backend: Backend) -> (TestApp, TestBank, pb::Mandate, pb::Deduction, String) {
    let bank = TestBank::start().await;
    bank.card("tok_r", 100_000).await;
    let app = spawn_app_with_bank(backend, &bank, PROMPT).await;
    app.credit("p-1", "500.00").await;
    let m = mandate_for(
        &app,
        "c-1",
        "p-1",
        utility_terms(),
        vec![wallet(Some("200.00")), card("tok_r", None)],
    )
    .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let d = create(
        &mut merchant,
        collect("r-1", &m.mandate_id, "300.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.paid_by_source_index, Some(1));
    assert_eq!(
        attempts(&d),
        [
            (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP"),
            (1, "BANK_CARD", "SUCCEEDED", ""),
        ]
    );
    let charge_id = charge_ids(&d).pop().unwrap();
    (app, bank, m, d, charge_id)
}

async fn card_refunds_go_back_to_the_card(backend: Backend) {
    let (app, bank, m, d, charge_id) = card_paid(backend).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let q = query(&bank, &charge_id).await;
    assert_eq!(
        (q.status(), q.amount_minor, q.refunded_minor),
        (bank_pb::ChargeStatus::Succeeded, 30_000, 0)
    );

    // First part.
    let r1 = refund(&mut merchant, "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    assert!(!r1.replayed);
    let after1 = r1.deduction.clone().unwrap();
    assert_eq!(
        deduction_status(&after1),
        pb::DeductionStatus::PartiallyRefunded
    );
    assert_eq!(refunded(&after1), "100.00");
    let refund1 = r1.refund.clone().unwrap();
    assert_eq!(refund1.amount, money("100.00"));
    assert_eq!(refund1.deduction_id, d.deduction_id);
    assert_eq!(query(&bank, &charge_id).await.refunded_minor, 10_000);

    // Its replay returns it and refunds nothing more.
    let r1_again = refund(&mut merchant, "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    assert!(r1_again.replayed);
    assert_eq!(r1_again.refund, r1.refund);
    assert_eq!(refunded(r1_again.deduction.as_ref().unwrap()), "100.00");
    assert_eq!(query(&bank, &charge_id).await.refunded_minor, 10_000);

    // More than is left is refused here; the bank is not asked.
    let err = refund(&mut merchant, "rf-big", &d.deduction_id, "200.01")
        .await
        .unwrap_err();
    assert_refused_before_the_bank(&err);
    assert_eq!(query(&bank, &charge_id).await.refunded_minor, 10_000);

    // Second part: the rest.
    let r2 = refund(&mut merchant, "rf-2", &d.deduction_id, "200.00")
        .await
        .unwrap();
    assert!(!r2.replayed);
    let after2 = r2.deduction.unwrap();
    assert_eq!(deduction_status(&after2), pb::DeductionStatus::Refunded);
    assert_eq!(refunded(&after2), "300.00");
    assert_ne!(r2.refund.unwrap().refund_id, refund1.refund_id);
    let q = query(&bank, &charge_id).await;
    assert_eq!(
        (q.status(), q.amount_minor, q.refunded_minor),
        (bank_pb::ChargeStatus::Succeeded, 30_000, 30_000)
    );

    // Over-refunded: refused before the bank; the bank's refunded total is unchanged.
    let err = refund(&mut merchant, "rf-3", &d.deduction_id, "0.01")
        .await
        .unwrap_err();
    assert_refused_before_the_bank(&err);
    assert_eq!(query(&bank, &charge_id).await.refunded_minor, 30_000);
    let stored = get(&mut merchant, &d.deduction_id).await;
    assert_eq!(deduction_status(&stored), pb::DeductionStatus::Refunded);
    assert_eq!(refunded(&stored), "300.00");
    let e = events(&app, &m.mandate_id, &d.deduction_id).await;
    assert_eq!(count_action(&e, "REFUND_RECORDED"), 2, "{e:?}");

    // Card refunds never touch the wallet; a wallet-paid deduction refunds to the wallet.
    assert_eq!(app.balance("p-1").await, "500.00");
    let w = create(
        &mut merchant,
        collect("r-2", &m.mandate_id, "150.00", "b-2"),
    )
    .await;
    assert_eq!(
        deduction_status(&w),
        pb::DeductionStatus::Succeeded,
        "{w:?}"
    );
    assert_eq!(w.paid_by_source_index, Some(0));
    assert_eq!(app.balance("p-1").await, "350.00");
    let rw = refund(&mut merchant, "rf-w", &w.deduction_id, "50.00")
        .await
        .unwrap();
    assert_eq!(
        deduction_status(rw.deduction.as_ref().unwrap()),
        pb::DeductionStatus::PartiallyRefunded
    );
    assert_eq!(app.balance("p-1").await, "400.00");

    // The bank saw one charge, refunded in full.
    assert_eq!(
        bank.charges()
            .await
            .iter()
            .map(bank_row)
            .collect::<Vec<_>>(),
        [(
            "tok_r",
            30_000,
            bank_pb::ChargeStatus::Succeeded,
            "",
            30_000
        )]
    );
    finish(&app).await;

    // The card's whole balance (1000.00) is available again: the refunds went back to it.
    let probe = gateway(&bank)
        .await
        .charge(bank_pb::ChargeRequest {
            charge_id: "probe-1".into(),
            card_token: "tok_r".into(),
            currency_code: "CNY".into(),
            amount_minor: 100_000,
            merchant_id: "m-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        probe.status(),
        bank_pb::ChargeStatus::Succeeded,
        "{probe:?}"
    );
}

async fn card_refund_replay_after_full_refund(backend: Backend) {
    let (app, bank, _m, d, charge_id) = card_paid(backend).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let r1 = refund(&mut merchant, "rf-1", &d.deduction_id, "100.00")
        .await
        .unwrap();
    let r2 = refund(&mut merchant, "rf-2", &d.deduction_id, "200.00")
        .await
        .unwrap();
    assert_eq!(
        deduction_status(r2.deduction.as_ref().unwrap()),
        pb::DeductionStatus::Refunded
    );
    // A request id returns its original result forever (§4): the replays of both parts still
    // answer, though nothing is left to refund.
    for (request_id, amount, original) in [("rf-1", "100.00", &r1), ("rf-2", "200.00", &r2)] {
        let again = refund(&mut merchant, request_id, &d.deduction_id, amount)
            .await
            .unwrap_or_else(|e| panic!("replay of {request_id}: {e:?}"));
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.refund, original.refund);
        assert_eq!(
            deduction_status(again.deduction.as_ref().unwrap()),
            pb::DeductionStatus::Refunded
        );
    }
    assert_eq!(query(&bank, &charge_id).await.refunded_minor, 30_000);
    finish(&app).await;
}

// ---- 9. kill -9 between the bank's answer and its record ----

const BIN: &str = env!("CARGO_BIN_EXE_withholding");

/// The real binary serving on 127.0.0.1:0; killed (SIGKILL) when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    async fn start(database_url: &str, data: &Path, bank: &str, failpoint: Option<&str>) -> Self {
        Self::start_with(database_url, data, bank, failpoint, "1").await
    }

    /// As `start`, with the resolver's pass interval in seconds.
    async fn start_with(
        database_url: &str,
        data: &Path,
        bank: &str,
        failpoint: Option<&str>,
        resolver_interval_s: &str,
    ) -> Self {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .arg("--data-dir")
            .arg(data)
            .args(["--bank-gateway-url", bank, "--bank-deadline-ms", "500"])
            .args(["--resolver-interval-s", resolver_interval_s])
            .env("RUST_LOG", "warn")
            .env_remove("WITHHOLDING_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(name) = failpoint {
            command.env("WITHHOLDING_FAILPOINT", name);
        }
        let mut child = command.spawn().expect("start withholding serve");
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
            stderr,
        };
        let line = server
            .wait_for("withholding listening on ", Duration::from_secs(30))
            .await;
        server.addr = line
            .strip_prefix("withholding listening on ")
            .unwrap()
            .to_owned();
        server
    }

    /// Reads stderr until a line containing `needle`; panics after `within` or at EOF.
    async fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = String::new();
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(line)) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Ok(None) => panic!("server exited before {needle:?}:\n{seen}"),
                Err(_) => panic!("no {needle:?} within {within:?}:\n{seen}"),
            }
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server")
    }

    /// `kill -9`, and reap it.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mint(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Clients {
    mandates_merchant: Client,
    mandates_payer: Client,
    merchant: DeductionClient,
    operator: WalletClient,
}

struct Tokens {
    merchant: String,
    payer: String,
    operator: String,
}

async fn clients(server: &Server, tokens: &Tokens) -> Clients {
    let channel = server.channel().await;
    Clients {
        mandates_merchant: MandateServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.merchant.clone())),
        ),
        mandates_payer: MandateServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.payer.clone())),
        ),
        merchant: DeductionServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.merchant.clone())),
        ),
        operator: WalletServiceClient::with_interceptor(
            channel,
            Bearer(Some(tokens.operator.clone())),
        ),
    }
}

async fn confirmed(
    c: &mut Clients,
    contract: &str,
    sources: Vec<pb::FundingSource>,
) -> pb::Mandate {
    let created = c
        .mandates_merchant
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mut confirm = confirm_request(&created);
    confirm.funding_sources = sources;
    c.mandates_payer
        .confirm_mandate(confirm)
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// A restart asks the bank at once about a charge left without an answer, instead of waiting
/// out its backoff (5 s, doubling) or the resolver's next pass (an hour here).
async fn a_restart_asks_at_once_about_charges_left_open(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
        ..Default::default()
    })
    .await;
    let db = TestDatabase::new(backend).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&db.url, data.path(), &bank.url(), None, "3600").await;
    let tokens = Tokens {
        merchant: mint(data.path(), &["--role", "merchant", "--merchant-id", "m-1"]),
        payer: mint(data.path(), &["--role", "payer", "--sub", "p-1"]),
        operator: mint(data.path(), &["--role", "operator"]),
    };
    let mut c = clients(&server, &tokens).await;
    let mandate = confirmed(&mut c, "c-slow", vec![card("tok_slow", None)]).await;
    let pending = create(
        &mut c.merchant,
        collect("r-slow", &mandate.mandate_id, "250.00", "b-slow"),
    )
    .await;
    assert_eq!(
        deduction_status(&pending),
        pb::DeductionStatus::PendingConfirmation,
        "{pending:?}"
    );
    server.kill();
    drop(c);

    let server = Server::start_with(&db.url, data.path(), &bank.url(), None, "3600").await;
    let c = clients(&server, &tokens).await;
    let merchant = c.merchant.clone();
    let resolved = eventually(
        "the open charge to be asked about at start-up",
        Duration::from_secs(3),
        || {
            let mut merchant = merchant.clone();
            let id = pending.deduction_id.clone();
            async move {
                let d = get(&mut merchant, &id).await;
                (deduction_status(&d) != pb::DeductionStatus::PendingConfirmation).then_some(d)
            }
        },
    )
    .await;
    assert_eq!(
        deduction_status(&resolved),
        pb::DeductionStatus::Succeeded,
        "{resolved:?}"
    );
    assert_eq!(bank.charges().await.len(), 1, "asked, never charged again");
}

async fn crash_between_bank_answer_and_record(backend: Backend) {
    let bank = TestBank::start().await;
    bank.card("tok_crash", 100_000).await;
    let db = TestDatabase::new(backend).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&db.url, data.path(), &bank.url(), Some("before-settle")).await;
    let tokens = Tokens {
        merchant: mint(data.path(), &["--role", "merchant", "--merchant-id", "m-1"]),
        payer: mint(data.path(), &["--role", "payer", "--sub", "p-1"]),
        operator: mint(data.path(), &["--role", "operator"]),
    };
    let mut c = clients(&server, &tokens).await;

    // An approval answered before the crash (the wallet pays: no failpoint on that path).
    c.operator
        .credit_wallet(pb::CreditWalletRequest {
            request_id: "credit-1".into(),
            payer_id: "p-1".into(),
            amount: money("100.00"),
            reason: "top-up".into(),
        })
        .await
        .unwrap();
    let mw = confirmed(&mut c, "c-wallet", vec![wallet(None)]).await;
    let answered = create(
        &mut c.merchant,
        collect("r-w", &mw.mandate_id, "60.00", "b-w"),
    )
    .await;
    assert_eq!(
        deduction_status(&answered),
        pb::DeductionStatus::Succeeded,
        "{answered:?}"
    );

    // A card-paid one: the bank charges, then the server stops before recording the answer.
    let mc = confirmed(&mut c, "c-card", vec![card("tok_crash", None)]).await;
    let card_request = collect("r-c", &mc.mandate_id, "250.00", "b-c");
    let mut request = tonic::Request::new(card_request.clone());
    request.set_timeout(Duration::from_secs(1));
    let err = c.merchant.create_deduction(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    server
        .wait_for("failpoint reached", Duration::from_secs(5))
        .await;
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_crash", 25_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    let bank_charge_id = charges[0].charge_id.clone();

    server.kill();
    drop(c);
    let mut server = Server::start(&db.url, data.path(), &bank.url(), None).await;
    let mut c = clients(&server, &tokens).await;

    // The resolver finds the charge left in flight and asks the bank: SUCCEEDED.
    let merchant = c.merchant.clone();
    let found = eventually(
        "the crashed deduction to be resolved",
        Duration::from_secs(15),
        || {
            let mut merchant = merchant.clone();
            let mandate_id = mc.mandate_id.clone();
            async move {
                let all = list(&mut merchant, &mandate_id).await;
                assert_eq!(all.len(), 1, "{all:?}");
                let d = all.into_iter().next().unwrap();
                (deduction_status(&d) != pb::DeductionStatus::Processing).then_some(d)
            }
        },
    )
    .await;
    let d = get(&mut c.merchant, &found.deduction_id).await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.request_id, "r-c");
    assert_eq!(d.paid_by_source_index, Some(0));
    assert_eq!(attempts(&d), [(0, "BANK_CARD", "SUCCEEDED", "")]);
    assert_eq!(charge_ids(&d), [bank_charge_id.as_str()]);
    // The retry is a replay; still one charge.
    let again = replay(&mut c.merchant, card_request).await;
    assert_eq!(again, d);
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_crash", 25_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );

    // The approval answered before the kill is still there.
    let durable = get(&mut c.merchant, &answered.deduction_id).await;
    assert_eq!(durable, answered);
    let balance = c
        .operator
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
    assert_eq!(balance, "40.00");

    server.kill();
    drop(c);

    // The database on its own: chains verify, events are there, the ledger balances.
    let store = withholding::storage::open(&db.url).await.unwrap();
    let ids = store.mandates.audit_chain_ids().await.unwrap();
    assert!(
        ids.contains(&format!("mandate:{}", mc.mandate_id)),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("mandate:{}", mw.mandate_id)),
        "{ids:?}"
    );
    for id in &ids {
        let chain = store.mandates.audit_chain(id).await.unwrap();
        let head = chain.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
        withholding::domain::audit::verify_chain(id, &chain.events, head)
            .unwrap_or_else(|broken| panic!("{broken}"));
    }
    let actions = |chain: withholding::storage::StoredChain, deduction_id: &str| -> Vec<String> {
        chain
            .events
            .into_iter()
            .filter(|e| e.draft.deduction_id.as_deref() == Some(deduction_id))
            .map(|e| e.draft.action)
            .collect()
    };
    let card_chain = store
        .mandates
        .audit_chain(&format!("mandate:{}", mc.mandate_id))
        .await
        .unwrap();
    assert_eq!(
        actions(card_chain, &d.deduction_id),
        [
            "DEDUCTION_APPROVED",
            "CARD_CHARGE_STARTED",
            "FUNDING_ATTEMPT",
            "DEDUCTION_SUCCEEDED"
        ]
    );
    let wallet_chain = store
        .mandates
        .audit_chain(&format!("mandate:{}", mw.mandate_id))
        .await
        .unwrap();
    assert_eq!(
        actions(wallet_chain, &answered.deduction_id),
        [
            "DEDUCTION_APPROVED",
            "FUNDING_ATTEMPT",
            "DEDUCTION_SUCCEEDED"
        ]
    );
    assert_ledger_balances(&store).await;
}

both_backends!(
    waterfall_over_wallet_and_cards,
    timeout_that_charged_holds_limits_and_stops_the_waterfall,
    timeout_without_charge_fails_and_releases,
    processing_at_the_bank_backs_off_then_succeeds,
    unknown_past_the_horizon_is_left_for_reconciliation,
    client_deadline_during_bank_call_still_records,
    retries_while_pending_never_charge_twice,
    card_refunds_go_back_to_the_card,
    card_refund_replay_after_full_refund,
    a_restart_asks_at_once_about_charges_left_open,
    crash_between_bank_answer_and_record,
);
