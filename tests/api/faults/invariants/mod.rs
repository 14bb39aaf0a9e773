//! The checks of a fault run (DESIGN §9), made from the database itself (read with plain SQL and
//! the stored documents decoded into domain types), the bank simulator's own ledger, and what
//! the clients were told. Each violation is a line naming its invariant; none stops the others.

mod durable;
mod ledger;
mod limits;
mod once;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tonic::Code;
use withholding::domain::deduction::{
    AttemptOutcome, CardCharge, Deduction, DeductionStatus, Refund, period_key,
};
use withholding::domain::ids::PayerId;
use withholding::domain::ledger::Account;
use withholding::domain::mandate::Mandate;
use withholding::domain::money::Currency;
use withholding::pb::{self, bank as bank_pb};

use super::workload::{Answer, MandatePlan, Records};
use durable::durable;
use ledger::ledger;
use limits::limits;
use once::once;

/// How long the resolvers get, after the last kill, to settle every charge the kills left
/// without a definite outcome: IN_FLIGHT ones are looked at after twice the bank deadline,
/// UNKNOWN ones after the resolver's 5 s backoff.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

#[derive(Default)]
pub struct Report {
    /// What each invariant covered, for the summary.
    pub checked: Vec<String>,
    pub violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, invariant: &str, text: String) {
        self.violations.push(format!("{invariant}: {text}"));
    }
}

/// Deductions that hold a reservation against the limits (DESIGN §4, rule 6).
fn counts_against_limits(status: DeductionStatus) -> bool {
    match status {
        DeductionStatus::Succeeded
        | DeductionStatus::Processing
        | DeductionStatus::PendingConfirmation
        | DeductionStatus::Refunded
        | DeductionStatus::PartiallyRefunded => true,
        DeductionStatus::Declined | DeductionStatus::Failed => false,
    }
}

/// Deductions whose money moved.
fn paid(status: DeductionStatus) -> bool {
    match status {
        DeductionStatus::Succeeded
        | DeductionStatus::Refunded
        | DeductionStatus::PartiallyRefunded => true,
        DeductionStatus::Processing
        | DeductionStatus::PendingConfirmation
        | DeductionStatus::Declined
        | DeductionStatus::Failed => false,
    }
}

/// The kind of source that paid a deduction (`WALLET`, `BANK_CARD`) and its card charge id.
fn paid_by(d: &Deduction) -> Option<(&str, &str)> {
    let index = d.paid_by?;
    d.attempts
        .iter()
        .find(|a| a.source_index == index && a.outcome == AttemptOutcome::Succeeded)
        .map(|a| (a.source_kind.as_str(), a.charge_id.as_str()))
}

struct ChargeRow {
    deduction_id: String,
    status: String,
    decline_code: Option<String>,
    charge: CardCharge,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    chain_id: String,
    action: String,
    mandate_id: Option<String>,
    deduction_id: Option<String>,
    request_id: Option<String>,
}

/// The database after the run.
struct Stored {
    mandates: BTreeMap<String, Mandate>,
    /// By id, with the merchant and request id columns.
    deductions: BTreeMap<String, (String, String, Deduction)>,
    usage: BTreeMap<(String, String), (i64, i64)>,
    charges: BTreeMap<String, ChargeRow>,
    /// (merchant, request id, refund).
    refunds: Vec<(String, String, Refund)>,
    /// Account id → (kind, balance).
    accounts: BTreeMap<String, (String, i64)>,
    /// Movement id → (kind, request id).
    movements: BTreeMap<String, (String, Option<String>)>,
    /// (movement id, account id, amount).
    entries: Vec<(String, String, i64)>,
    audit: Vec<AuditRow>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, document: &str) -> T {
    serde_json::from_str(document).unwrap_or_else(|e| panic!("stored {what} unreadable: {e}"))
}

/// Reads everything in one snapshot: the resolvers may still be settling charges.
async fn load(pool: &PgPool) -> Stored {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .expect("begin a snapshot");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT mandate_id, document FROM mandates")
        .fetch_all(&mut *tx)
        .await
        .expect("read mandates");
    let mandates = rows
        .into_iter()
        .map(|(id, doc)| (id, decode("mandate", &doc)))
        .collect();
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT deduction_id, merchant_id, request_id, document FROM deductions")
            .fetch_all(&mut *tx)
            .await
            .expect("read deductions");
    let deductions = rows
        .into_iter()
        .map(|(id, merchant, request, doc)| (id, (merchant, request, decode("deduction", &doc))))
        .collect();
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT mandate_id, period_key, amount_minor, debit_count FROM mandate_usage",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read usage");
    let usage = rows
        .into_iter()
        .map(|(m, k, amount, count)| ((m, k), (amount, count)))
        .collect();
    let rows: Vec<(String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT charge_id, deduction_id, status, decline_code, document FROM card_charges",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read card charges");
    let charges = rows
        .into_iter()
        .map(|(id, deduction_id, status, decline_code, doc)| {
            let row = ChargeRow {
                deduction_id,
                status,
                decline_code,
                charge: decode("card charge", &doc),
            };
            (id, row)
        })
        .collect();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT merchant_id, request_id, document FROM refunds")
            .fetch_all(&mut *tx)
            .await
            .expect("read refunds");
    let refunds = rows
        .into_iter()
        .map(|(m, r, doc)| (m, r, decode("refund", &doc)))
        .collect();
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT account_id, kind, balance_minor FROM ledger_accounts")
            .fetch_all(&mut *tx)
            .await
            .expect("read accounts");
    let accounts = rows.into_iter().map(|(a, k, b)| (a, (k, b))).collect();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT movement_id, kind, request_id FROM ledger_movements")
            .fetch_all(&mut *tx)
            .await
            .expect("read movements");
    let movements = rows.into_iter().map(|(m, k, r)| (m, (k, r))).collect();
    let entries =
        sqlx::query_as("SELECT movement_id, account_id, amount_minor FROM ledger_entries")
            .fetch_all(&mut *tx)
            .await
            .expect("read entries");
    let audit: Vec<AuditRow> = sqlx::query_as(
        "SELECT chain_id, action, mandate_id, deduction_id, request_id FROM audit_events ORDER BY seq",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("read audit events");
    tx.rollback().await.expect("end the snapshot");
    Stored {
        mandates,
        deductions,
        usage,
        charges,
        refunds,
        accounts,
        movements,
        entries,
        audit,
    }
}

/// What is allowed while the kills may have left charges open: the bank never holds a charge
/// we did not record before calling it (the charge id is written first), never two successful
/// charges for one deduction, and never a success we recorded as declined. A charge we hold as
/// IN_FLIGHT or UNKNOWN may or may not be at the bank; it is settled from the bank's record
/// later. Returns the violations and how many charges were open.
pub async fn while_open(pool: &PgPool, bank: &[bank_pb::SimulatedCharge]) -> (Vec<String>, usize) {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT charge_id, deduction_id, status FROM card_charges")
            .fetch_all(pool)
            .await
            .expect("read card charges");
    let ours: BTreeMap<String, (String, String)> =
        rows.into_iter().map(|(c, d, s)| (c, (d, s))).collect();
    let open = ours
        .values()
        .filter(|(_, s)| s == "IN_FLIGHT" || s == "UNKNOWN")
        .count();
    let mut violations = vec![];
    let mut succeeded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for charge in bank {
        let Some((deduction, status)) = ours.get(&charge.charge_id) else {
            violations.push(format!(
                "I2 (during the kills): the bank holds charge {} that no deduction recorded",
                charge.charge_id
            ));
            continue;
        };
        if charge.status() == bank_pb::ChargeStatus::Succeeded {
            succeeded
                .entry(deduction)
                .or_default()
                .push(&charge.charge_id);
            if status == "DECLINED" {
                violations.push(format!(
                    "I2 (during the kills): charge {} succeeded at the bank but is recorded DECLINED",
                    charge.charge_id
                ));
            }
        }
    }
    for (deduction, charges) in succeeded {
        if charges.len() > 1 {
            violations.push(format!(
                "I2 (during the kills): deduction {deduction} was charged {} times: {charges:?}",
                charges.len()
            ));
        }
    }
    (violations, open)
}

/// Waits until no charge or deduction is waiting for an outcome; the stragglers otherwise.
pub async fn settle(pool: &PgPool) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let (charges, deductions): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM card_charges WHERE status IN ('IN_FLIGHT', 'UNKNOWN')), \
             (SELECT COUNT(*) FROM deductions WHERE status IN ('PROCESSING', 'PENDING_CONFIRMATION'))",
        )
        .fetch_one(pool)
        .await
        .expect("count open outcomes");
        if charges == 0 && deductions == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE_WITHIN {
            let open: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT deduction_id, status, '' FROM deductions WHERE status IN ('PROCESSING', 'PENDING_CONFIRMATION') \
                 UNION ALL SELECT charge_id, status, deduction_id FROM card_charges WHERE status IN ('IN_FLIGHT', 'UNKNOWN')",
            )
            .fetch_all(pool)
            .await
            .expect("list open outcomes");
            return Err(format!(
                "after {SETTLE_WITHIN:?} these still have no definite outcome: {open:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// §9.1 on the database as it is now, while charges may still hold reservations: a debit over
/// a limit must never be approved, not even one that is released later.
pub async fn limits_now(pool: &PgPool, plans: &[MandatePlan]) -> Report {
    let stored = load(pool).await;
    let mut report = Report::default();
    limits(&stored, plans, &mut report);
    report
}

/// Every check, on the database at `url` once every outcome is settled and every replica is
/// dead, against the bank's charges and what the clients were told.
pub async fn check(
    url: &str,
    bank: &[bank_pb::SimulatedCharge],
    records: &Records,
    plans: &[MandatePlan],
) -> Report {
    let pool = PgPool::connect(url)
        .await
        .expect("connect to the run's database");
    let stored = load(&pool).await;
    pool.close().await;
    let mut report = Report::default();
    limits(&stored, plans, &mut report);
    once(&stored, bank, records, &mut report);
    durable(&stored, records, &mut report);
    ledger(&stored, records, &mut report);
    chains(url, &mut report).await;
    answers(records, &mut report);
    report
}

/// §9.7: every audit chain verifies.
async fn chains(url: &str, report: &mut Report) {
    let db = withholding::storage::open(url)
        .await
        .expect("open the run's database");
    let ids = db.mandates.audit_chain_ids().await.expect("chain ids");
    let mut events = 0;
    for id in &ids {
        let chain = db.mandates.audit_chain(id).await.expect("read a chain");
        events += chain.events.len();
        let head = chain.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
        if let Err(broken) = withholding::domain::audit::verify_chain(id, &chain.events, head) {
            report.violation("I7 audit", format!("chain {id}: {broken}"));
        }
    }
    report.checked.push(format!(
        "I7 audit: {} chains of {events} events verify",
        ids.len()
    ));
}

/// §9.8: every request got a definite answer, and the answer is one the operation allows:
/// OK, or FAILED_PRECONDITION where the state may refuse (a refund of more than is left, a
/// pause of a paused mandate). INTERNAL and UNKNOWN from a server are counted where they were
/// seen (`server_errors`).
fn answers(records: &Records, report: &mut Report) {
    const I: &str = "I8 answers";
    let mut check = |rpc: &str,
                     id: &str,
                     answers: Vec<Option<(Code, &str)>>,
                     gave_up: bool,
                     refusable: bool| {
        if gave_up {
            report.violation(
                I,
                format!("{rpc} {id}: no definite answer within the retry budget"),
            );
        }
        for (code, message) in answers.into_iter().flatten() {
            if !(refusable && code == Code::FailedPrecondition) {
                report.violation(I, format!("{rpc} {id}: {code:?} {message}"));
            }
        }
    };
    fn refused<T>(a: &Answer<T>) -> Option<(Code, &str)> {
        match a {
            Answer::Ok(_) => None,
            Answer::Refused(code, message) => Some((*code, message.as_str())),
        }
    }
    for s in &records.mandates {
        check(
            "CreateMandate",
            &s.contract_id,
            s.answers.iter().map(refused).collect(),
            s.gave_up,
            false,
        );
    }
    for s in &records.changes {
        let refusable = s.action != "MANDATE_CONFIRMED";
        check(
            s.action,
            &s.request_id,
            s.answers.iter().map(refused).collect(),
            s.gave_up,
            refusable,
        );
    }
    for s in &records.deductions {
        check(
            "CreateDeduction",
            &s.request_id,
            s.answers.iter().map(refused).collect(),
            s.gave_up,
            false,
        );
    }
    for s in &records.refunds {
        check(
            "RefundDeduction",
            &s.request_id,
            s.answers.iter().map(refused).collect(),
            s.gave_up,
            true,
        );
    }
    for s in &records.credits {
        check(
            "CreditWallet",
            &s.request_id,
            s.answers.iter().map(refused).collect(),
            s.gave_up,
            false,
        );
    }
    for (rpc, failed) in &records.failed_reads {
        report.violation(I, format!("{rpc}: {failed}"));
    }
    report.checked.push(format!(
        "I8 answers: {} writes and every read answered definitely, with a status their operation allows",
        records.mandates.len()
            + records.changes.len()
            + records.deductions.len()
            + records.refunds.len()
            + records.credits.len()
    ));
}
