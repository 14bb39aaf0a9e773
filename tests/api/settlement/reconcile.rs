//! Reconciliation (DESIGN §6b, §9.9): card deductions run through the bank simulator with
//! planted hidden outcomes and refusals, its statement exported, then a missing line, an altered
//! amount and a duplicate line planted in it; the import finds exactly what was planted, and
//! importing it again — or an overlapping statement — changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use tonic::Code;

use super::*;
use crate::both_backends;
use crate::harness::*;

/// The deductions of the planted day: name → (deduction id, charge id).
pub type Charges = BTreeMap<&'static str, (String, String)>;

pub struct Planted {
    pub app: TestApp,
    pub bank: TestBank,
    /// The statement's UTC day.
    pub day: String,
    /// The statement as the bank exported it.
    pub exported: String,
    /// The statement with a missing line (ok-1, ok-4), an altered amount (ok-2) and a duplicate
    /// line (ok-3).
    pub planted: String,
    pub charges: Charges,
}

/// (kind, deduction name) of what the planted statement must show, and nothing else.
pub fn expected(charges: &Charges) -> BTreeSet<(String, String)> {
    [
        ("DISCREPANCY_KIND_LONG", "hidden-1"),
        ("DISCREPANCY_KIND_LONG", "hidden-2"),
        ("DISCREPANCY_KIND_SHORT", "ok-1"),
        ("DISCREPANCY_KIND_SHORT", "ok-4"),
        ("DISCREPANCY_KIND_AMOUNT_MISMATCH", "ok-2"),
        ("DISCREPANCY_KIND_DUPLICATE_LINE", "ok-3"),
    ]
    .into_iter()
    .map(|(kind, name)| (kind.to_owned(), charges[name].1.clone()))
    .collect()
}

pub fn kinds(found: &[pb::Discrepancy]) -> BTreeSet<(String, String)> {
    found
        .iter()
        .map(|d| (d.kind().as_str_name().to_owned(), d.charge_id.clone()))
        .collect()
}

/// Card deductions of m-1 through the bank simulator, on today's UTC day (the simulator's
/// statement is by its own clock, so the service's clock is set to now).
pub async fn plant(backend: Backend) -> Planted {
    let bank = TestBank::start().await;
    bank.card("tok_ok", 1_000_000).await;
    bank.card("tok_poor", 0).await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_hidden".into(),
        balance_minor: 1_000_000,
        timeout_after_apply_next: 2,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_lost".into(),
        balance_minor: 1_000_000,
        timeout_without_apply_next: 1,
        hang_ms: HANG_MS,
        ..Default::default()
    })
    .await;
    let app = spawn_app_with_bank(backend, &bank, DEADLINE).await;
    app.clock.set(Timestamp::now());
    let mut mandates = BTreeMap::new();
    for (payer, token) in [
        ("p-ok", "tok_ok"),
        ("p-hidden", "tok_hidden"),
        ("p-lost", "tok_lost"),
        ("p-poor", "tok_poor"),
    ] {
        let m = app
            .mandate_with(
                "m-1",
                payer,
                &format!("c-{token}"),
                roomy_terms(),
                vec![card_funding(token, None)],
            )
            .await;
        mandates.insert(token, m.mandate_id);
    }
    use pb::DeductionStatus as S;
    let plan = [
        ("ok-1", "tok_ok", "10.00", S::Succeeded),
        ("ok-2", "tok_ok", "11.00", S::Succeeded),
        ("ok-3", "tok_ok", "12.00", S::Succeeded),
        ("ok-4", "tok_ok", "13.00", S::Succeeded),
        ("ok-5", "tok_ok", "14.00", S::Succeeded),
        ("hidden-1", "tok_hidden", "15.00", S::PendingConfirmation),
        ("hidden-2", "tok_hidden", "16.00", S::PendingConfirmation),
        ("lost", "tok_lost", "17.00", S::PendingConfirmation),
        ("poor", "tok_poor", "18.00", S::Failed),
    ];
    let mut charges = Charges::new();
    for (name, token, amount, status) in plan {
        let d = app
            .deduct(
                "m-1",
                collect(
                    &format!("r-{name}"),
                    &mandates[token],
                    amount,
                    &format!("b-{name}"),
                ),
            )
            .await;
        assert_eq!(deduction_status(&d), status, "{name}: {d:?}");
        let [charge] = &charge_ids(&d)[..] else {
            panic!("{name}: one charge expected: {d:?}")
        };
        charges.insert(name, (d.deduction_id.clone(), charge.clone()));
    }
    let day = app
        .clock_now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let exported = bank
        .control()
        .await
        .get_statement(bank_pb::GetStatementRequest { day: day.clone() })
        .await
        .unwrap()
        .into_inner()
        .csv;
    let charge = |name: &str| charges[name].1.clone();
    let mut planted = String::new();
    for line in exported.lines() {
        let id = line.split(',').next().unwrap();
        if id == charge("ok-1") || id == charge("ok-4") {
            continue;
        }
        if id == charge("ok-2") {
            planted.push_str(&line.replacen(",11.00,", ",11.50,", 1));
        } else {
            planted.push_str(line);
        }
        planted.push('\n');
        if id == charge("ok-3") {
            planted.push_str(line);
            planted.push('\n');
        }
    }
    // What the bank really did is in the export: the hidden charges were collected, the lost
    // one never reached it.
    assert!(exported.contains(&format!("{},15.00,CNY,SUCCEEDED,", charge("hidden-1"))));
    assert!(!exported.contains(&charge("lost")));
    assert!(exported.contains(&format!("{},18.00,CNY,DECLINED,", charge("poor"))));
    Planted {
        app,
        bank,
        day,
        exported,
        planted,
        charges,
    }
}

pub fn import(day: &str, csv: &str) -> pb::ImportStatementRequest {
    pb::ImportStatementRequest {
        statement_day: day.into(),
        csv: csv.into(),
    }
}

/// Every discrepancy, through pages of `page_size`.
pub async fn all_discrepancies(
    client: &mut SettlementClient,
    status: pb::DiscrepancyStatus,
    page_size: u32,
) -> Vec<pb::Discrepancy> {
    let mut out = vec![];
    let mut page_token = String::new();
    loop {
        let page = client
            .list_discrepancies(pb::ListDiscrepanciesRequest {
                status: status as i32,
                statement_day: String::new(),
                merchant_id: String::new(),
                page_size,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.discrepancies.len() <= page_size as usize);
        out.extend(page.discrepancies);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn the_import_finds_what_was_planted_and_nothing_else(backend: Backend) {
    let Planted {
        app,
        day,
        planted,
        exported,
        charges,
        ..
    } = plant(backend).await;
    let mut operator = settlement_as(&app, app.operator_token()).await;

    // The statement as exported agrees except for the charges whose outcome the bank hid.
    let clean = operator
        .import_statement(import(&day, &exported))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (clean.lines, clean.found, clean.new_discrepancies),
        (8, 2, 2)
    );
    let longs = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Unspecified, 100).await;
    let want_longs: BTreeSet<_> = expected(&charges)
        .into_iter()
        .filter(|(k, _)| k == "DISCREPANCY_KIND_LONG")
        .collect();
    assert_eq!(kinds(&longs), want_longs);

    // The planted statement adds the short, mismatch and duplicate lines; the longs are found
    // again and not recorded twice.
    let response = operator
        .import_statement(import(&day, &planted))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            response.lines,
            response.found,
            response.new_discrepancies,
            response.replayed
        ),
        (7, 6, 4, false)
    );
    let found = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Open, 100).await;
    assert_eq!(kinds(&found), expected(&charges));
    assert_eq!(found.len(), 6);
    let by_charge = |name: &str, kind: pb::DiscrepancyKind| {
        found
            .iter()
            .find(|d| d.charge_id == charges[name].1 && d.kind() == kind)
            .unwrap()
            .clone()
    };
    let mismatch = by_charge("ok-2", pb::DiscrepancyKind::AmountMismatch);
    assert_eq!(
        (
            mismatch.our_amount.as_str(),
            mismatch.bank_amount.as_str(),
            mismatch.our_status.as_str(),
            mismatch.deduction_id.as_str(),
            mismatch.merchant_id.as_str()
        ),
        (
            "11.00",
            "11.50",
            "SUCCEEDED",
            charges["ok-2"].0.as_str(),
            "m-1"
        )
    );
    let long = by_charge("hidden-1", pb::DiscrepancyKind::Long);
    assert_eq!(
        (
            long.our_status.as_str(),
            long.bank_status.as_str(),
            long.bank_amount.as_str()
        ),
        ("UNKNOWN", "SUCCEEDED", "15.00")
    );
    let short = by_charge("ok-1", pb::DiscrepancyKind::Short);
    assert_eq!((short.bank_amount.as_str(), short.lines), ("", 0));
    assert_eq!(
        by_charge("ok-3", pb::DiscrepancyKind::DuplicateLine).lines,
        2
    );
    let imports: Vec<_> = app
        .chain_events("reconciliation")
        .await
        .into_iter()
        .filter(|e| e.action == "STATEMENT_IMPORTED")
        .collect();
    assert_eq!(imports.len(), 2);
    let details: serde_json::Value = serde_json::from_str(&imports[1].details).unwrap();
    assert_eq!(details["new_discrepancies"], 4);
    assert_eq!(details["lines"], 7);

    // Filters: the statement day, the merchant.
    let filtered = |statement_day: &str, merchant_id: &str| pb::ListDiscrepanciesRequest {
        status: pb::DiscrepancyStatus::Unspecified as i32,
        statement_day: statement_day.into(),
        merchant_id: merchant_id.into(),
        page_size: 100,
        page_token: String::new(),
    };
    for (statement_day, merchant_id, count) in [
        (day.as_str(), "", 6),
        (day.as_str(), "m-1", 6),
        ("", "m-2", 0),
        ("1999-01-01", "", 0),
    ] {
        let page = operator
            .list_discrepancies(filtered(statement_day, merchant_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            page.discrepancies.len(),
            count,
            "{statement_day} {merchant_id}"
        );
    }
    let err = operator
        .list_discrepancies(pb::ListDiscrepanciesRequest {
            page_size: 501,
            ..filtered("", "")
        })
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "page_size");

    // Auditors list within their tenancy, and the listing is audited; merchants do not list.
    let mut scoped = settlement_as(&app, app.auditor_token(Some("m-2"))).await;
    assert!(
        all_discrepancies(&mut scoped, pb::DiscrepancyStatus::Unspecified, 10)
            .await
            .is_empty()
    );
    let mut m1_auditor = settlement_as(&app, app.auditor_token(Some("m-1"))).await;
    let seen = all_discrepancies(&mut m1_auditor, pb::DiscrepancyStatus::Unspecified, 4).await;
    assert_eq!(kinds(&seen), expected(&charges));
    let reads = app
        .chain_events(&caller_chain("auditor:compliance"))
        .await
        .into_iter()
        .filter(|e| e.action == "AUDIT_READ")
        .count();
    assert_eq!(reads, 3, "one per page read");
    let err = settlement_as(&app, app.merchant_token("m-1"))
        .await
        .list_discrepancies(pb::ListDiscrepanciesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = settlement_as(&app, app.merchant_token("m-1"))
        .await
        .import_statement(import(&day, &planted))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Malformed statements name the line and store nothing.
    for (csv, what) in [
        ("charge_id,amount_minor,status\n", "header"),
        (
            "charge_id,amount,currency,status,time\nc-1,1.001,CNY,SUCCEEDED,2026-01-01T00:00:00Z\n",
            "line 1",
        ),
        (
            "charge_id,amount,currency,status,time\nc-1,1.00,CNY,PAID,2026-01-01T00:00:00Z\n",
            "line 1",
        ),
    ] {
        let err = operator
            .import_statement(import(&day, csv))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert_eq!(violated_field(&err).unwrap(), "csv");
    }
    let err = operator
        .import_statement(import("today", &planted))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err).unwrap(), "statement_day");
    app.finish().await;
}

async fn importing_again_changes_nothing(backend: Backend) {
    let Planted {
        app, day, planted, ..
    } = plant(backend).await;
    let raw = Raw::open(&app).await;
    let mut operator = settlement_as(&app, app.operator_token()).await;
    let first = operator
        .import_statement(import(&day, &planted))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.new_discrepancies, first.replayed), (6, false));
    let listed = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Unspecified, 100).await;
    let before = app.state(&raw).await;

    // The same file again: the first import's answer, and not one row or event more.
    let again = operator
        .import_statement(import(&day, &planted))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            again.import_id.as_str(),
            again.found,
            again.new_discrepancies,
            again.replayed
        ),
        (first.import_id.as_str(), 6, 0, true)
    );
    assert_unchanged(&before, &app.state(&raw).await, "the same statement again");
    assert_eq!(
        all_discrepancies(&mut operator, pb::DiscrepancyStatus::Unspecified, 100).await,
        listed
    );

    // An overlapping statement (the same lines in another order, the duplicated one a third
    // time): a new import, audited, that finds only what is recorded already.
    let mut lines: Vec<&str> = planted.lines().collect();
    let header = lines.remove(0);
    lines.reverse();
    let repeated = lines
        .iter()
        .find(|l| lines.iter().filter(|m| m == l).count() == 2)
        .unwrap()
        .to_string();
    let overlapping = format!("{header}\n{}\n{repeated}\n", lines.join("\n"));
    let overlap = operator
        .import_statement(import(&day, &overlapping))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(overlap.import_id, first.import_id);
    assert_eq!(
        (overlap.new_discrepancies, overlap.replayed),
        (0, false),
        "{overlap:?}"
    );
    let after = app.state(&raw).await;
    assert_eq!(after.rows, before.rows, "{}", before.diff(&after));
    assert_eq!(after.ledger, before.ledger);
    assert_eq!(after.audit_events, before.audit_events + 1);
    assert_eq!(
        all_discrepancies(&mut operator, pb::DiscrepancyStatus::Unspecified, 100).await,
        listed
    );
    raw.close().await;
    app.finish().await;
}

both_backends!(
    the_import_finds_what_was_planted_and_nothing_else,
    importing_again_changes_nothing
);
