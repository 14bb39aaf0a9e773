//! The checks of a fault run (DESIGN §9), made from the database itself (read with plain SQL and
//! the stored documents decoded into domain types), the bank simulator's own ledger, and what
//! the clients were told. Each violation is a line naming its invariant; none stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tonic::Code;
use withholding::domain::deduction::{CardCharge, Deduction, DeductionStatus, Refund, period_key};
use withholding::domain::ids::PayerId;
use withholding::domain::mandate::Mandate;
use withholding::domain::money::Currency;
use withholding::pb::{self, bank as bank_pb};
use withholding::storage::Account;

use super::workload::{Answer, MandatePlan, Records};

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
        .find(|a| a.source_index == index && a.outcome == "SUCCEEDED")
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

/// §9.1: approved debits within every limit of every mandate, and the usage rows equal to the
/// debits they count.
fn limits(stored: &Stored, plans: &[MandatePlan], report: &mut Report) {
    const I: &str = "I1 limits";
    let mut expected: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut counted = 0;
    for (id, (_, _, d)) in &stored.deductions {
        let mandate_id = d.mandate_id.to_string();
        let Some(mandate) = stored.mandates.get(&mandate_id) else {
            report.violation(
                I,
                format!("deduction {id} names mandate {mandate_id}, which is not stored"),
            );
            continue;
        };
        let exempt = d.request.approval_id.is_some();
        if counts_against_limits(d.status) && !exempt {
            counted += 1;
            let mut keys = vec!["total".to_owned()];
            keys.extend(period_key(mandate, d.created_at));
            let held: BTreeSet<&String> = d.usage_keys.iter().collect();
            if held != keys.iter().collect() {
                report.violation(I, format!(
                    "deduction {id} ({}) is counted under {:?}, its period and lifetime are {keys:?}",
                    d.status.as_str(), d.usage_keys
                ));
            }
            for key in &d.usage_keys {
                let e = expected
                    .entry((mandate_id.clone(), key.clone()))
                    .or_default();
                e.0 += d.request.amount.minor();
                e.1 += 1;
            }
        } else if !d.usage_keys.is_empty() {
            report.violation(
                I,
                format!(
                    "deduction {id} is {} and still holds usage {:?}",
                    d.status.as_str(),
                    d.usage_keys
                ),
            );
        }
    }
    let keys: BTreeSet<&(String, String)> = expected.keys().chain(stored.usage.keys()).collect();
    for key in &keys {
        let want = expected.get(*key).copied().unwrap_or_default();
        let have = stored.usage.get(*key).copied().unwrap_or_default();
        if want != have {
            report.violation(I, format!(
                "usage row {key:?} holds (amount, count) {have:?}; its deductions add up to {want:?}"
            ));
        }
    }
    for ((mandate_id, key), (amount, count)) in &expected {
        let Some(mandate) = stored.mandates.get(mandate_id) else {
            continue;
        };
        let terms = &mandate.terms;
        let (amount_limit, count_limit) = if key == "total" {
            (
                terms.total_amount_limit.map(|m| m.minor()),
                terms.total_debit_limit,
            )
        } else {
            let period = terms.period_limits.as_ref();
            (
                period.and_then(|p| p.amount_limit).map(|m| m.minor()),
                period.and_then(|p| p.debit_limit),
            )
        };
        if amount_limit.is_some_and(|limit| *amount > limit)
            || count_limit.is_some_and(|limit| *count > i64::from(limit))
        {
            report.violation(I, format!(
                "mandate {mandate_id} {key}: {amount} minor in {count} debits approved, over the limits {amount_limit:?} / {count_limit:?}"
            ));
        }
    }
    // The limits in force are the ones the merchant asked for: nothing loosened them.
    for plan in plans {
        let Some(mandate) = stored.mandates.get(&plan.mandate_id) else {
            report.violation(
                I,
                format!("confirmed mandate {} is not stored", plan.mandate_id),
            );
            continue;
        };
        let terms = &mandate.terms;
        let period = terms.period_limits.as_ref();
        let stored_limits = (
            period.and_then(|p| p.amount_limit).map(|m| m.minor()),
            period.and_then(|p| p.debit_limit),
            terms.total_amount_limit.map(|m| m.minor()),
            terms.total_debit_limit,
        );
        let asked = (
            Some(plan.period_amount_minor),
            Some(plan.period_count),
            plan.total_amount_minor,
            plan.total_count,
        );
        if stored_limits != asked {
            report.violation(
                I,
                format!(
                    "mandate {} has limits {stored_limits:?}, created with {asked:?}",
                    plan.mandate_id
                ),
            );
        }
    }
    report.checked.push(format!(
        "I1 limits: {counted} approved debits on {} mandates; {} usage rows equal their debits and within period and lifetime limits",
        stored.mandates.len(),
        keys.len()
    ));
}

/// §9.2: one deduction per request id (and the same one in every answer), at most one
/// successful charge per deduction, every bank charge ours, ours and the bank's agreeing on
/// every charge and refund.
fn once(
    stored: &Stored,
    bank: &[bank_pb::SimulatedCharge],
    records: &Records,
    report: &mut Report,
) {
    const I: &str = "I2 once";
    let mut by_request: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (id, (merchant, request, _)) in &stored.deductions {
        by_request.entry((merchant, request)).or_default().push(id);
    }
    for ((merchant, request), ids) in &by_request {
        if ids.len() > 1 {
            report.violation(
                I,
                format!(
                    "request {merchant}/{request} made {} deductions: {ids:?}",
                    ids.len()
                ),
            );
        }
    }
    let sent: BTreeSet<(&str, &str)> = records
        .deductions
        .iter()
        .map(|s| (s.merchant, s.request_id.as_str()))
        .collect();
    for key in by_request.keys() {
        if !sent.contains(key) {
            report.violation(
                I,
                format!("deduction for request {key:?} that no client sent"),
            );
        }
    }
    let mut resent = 0;
    for s in &records.deductions {
        let stored_ids = by_request.get(&(s.merchant, s.request_id.as_str()));
        let oks: Vec<&pb::CreateDeductionResponse> =
            s.answers.iter().filter_map(Answer::ok).collect();
        if s.answers.len() > 1 {
            resent += 1;
        }
        let ids: BTreeSet<&str> = oks
            .iter()
            .filter_map(|r| r.deduction.as_ref())
            .map(|d| d.deduction_id.as_str())
            .collect();
        if ids.len() > 1 {
            report.violation(
                I,
                format!(
                    "request {} was answered with deductions {ids:?}",
                    s.request_id
                ),
            );
        }
        let fresh = oks.iter().filter(|r| !r.replayed).count();
        if fresh > 1 {
            report.violation(
                I,
                format!("request {} was answered as new {fresh} times", s.request_id),
            );
        }
        for r in &oks {
            let Some(d) = &r.deduction else {
                report.violation(
                    I,
                    format!("request {} answered without a deduction", s.request_id),
                );
                continue;
            };
            let amount = d.amount.as_ref().map(|m| m.amount.clone());
            if d.request_id != s.request_id
                || d.mandate_id != s.mandate_id
                || amount != super::workload::cny(s.amount_minor).map(|m| m.amount)
            {
                report.violation(
                    I,
                    format!(
                        "request {} was answered with another request's deduction {d:?}",
                        s.request_id
                    ),
                );
            }
        }
        if let Some(id) = ids.iter().next()
            && stored_ids.is_none_or(|stored| stored.as_slice() != [*id])
        {
            report.violation(
                I,
                format!(
                    "request {} was answered with {id}; the database holds {stored_ids:?}",
                    s.request_id
                ),
            );
        }
    }

    // Charges: ours and the bank's.
    let bank_by_id: BTreeMap<&str, &bank_pb::SimulatedCharge> =
        bank.iter().map(|c| (c.charge_id.as_str(), c)).collect();
    for c in bank {
        match stored.charges.get(&c.charge_id) {
            None => report.violation(
                I,
                format!(
                    "the bank holds charge {} that no deduction recorded",
                    c.charge_id
                ),
            ),
            Some(ours) => {
                if ours.charge.amount.minor() != c.amount_minor
                    || ours.charge.card_token != c.card_token
                {
                    report.violation(
                        I,
                        format!(
                            "charge {}: we recorded {} on {}, the bank took {} on {}",
                            c.charge_id,
                            ours.charge.amount.minor(),
                            ours.charge.card_token,
                            c.amount_minor,
                            c.card_token
                        ),
                    );
                }
            }
        }
    }
    let mut succeeded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, ours) in &stored.charges {
        if ours.deduction_id != ours.charge.deduction_id {
            report.violation(
                I,
                format!("charge {id} row and document name different deductions"),
            );
        }
        let at_bank = bank_by_id.get(id.as_str());
        let agrees = match (ours.status.as_str(), at_bank) {
            ("SUCCEEDED", Some(c)) => c.status() == bank_pb::ChargeStatus::Succeeded,
            ("DECLINED", None) => ours.decline_code.as_deref() == Some("CHARGE_NOT_FOUND"),
            ("DECLINED", Some(c)) => {
                c.status() == bank_pb::ChargeStatus::Declined
                    && ours.decline_code.as_deref() == Some(c.decline_code.as_str())
            }
            _ => false,
        };
        if !agrees {
            report.violation(
                I,
                format!(
                    "charge {id} is {} ({:?}) here and {:?} at the bank",
                    ours.status,
                    ours.decline_code,
                    at_bank.map(|c| (c.status(), c.decline_code.as_str()))
                ),
            );
        }
        if ours.status == "SUCCEEDED" {
            succeeded.entry(&ours.deduction_id).or_default().push(id);
        }
    }
    for (deduction, charges) in &succeeded {
        if charges.len() > 1 {
            report.violation(
                I,
                format!(
                    "deduction {deduction} was charged {} times: {charges:?}",
                    charges.len()
                ),
            );
        }
    }
    // A deduction and its charges tell one story; refunds too.
    let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, refund) in &stored.refunds {
        *refunded.entry(&refund.deduction_id).or_default() += refund.amount.minor();
    }
    for (id, (_, _, d)) in &stored.deductions {
        let charged = succeeded
            .get(id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let by = paid_by(d);
        match (paid(d.status), by) {
            (true, Some(("BANK_CARD", charge))) => {
                if charged != [charge] {
                    report.violation(I, format!("deduction {id} paid by card charge {charge}; succeeded charges {charged:?}"));
                }
                let at_bank = bank_by_id.get(charge).map(|c| c.refunded_minor);
                if at_bank != Some(d.refunded_minor) {
                    report.violation(
                        I,
                        format!(
                            "deduction {id}: {} minor refunded here, {at_bank:?} at the bank",
                            d.refunded_minor
                        ),
                    );
                }
            }
            (true, Some(("WALLET", _))) => {
                if !charged.is_empty() {
                    report.violation(
                        I,
                        format!(
                            "deduction {id} paid by the wallet and by card charges {charged:?}"
                        ),
                    );
                }
            }
            (false, None) => {
                if !charged.is_empty() {
                    report.violation(
                        I,
                        format!(
                            "deduction {id} is {} but card charges {charged:?} succeeded",
                            d.status.as_str()
                        ),
                    );
                }
            }
            (paid, by) => report.violation(
                I,
                format!(
                    "deduction {id} is {} (paid: {paid}) with paying source {by:?}",
                    d.status.as_str()
                ),
            ),
        }
        let refunds = refunded.get(id.as_str()).copied().unwrap_or_default();
        let amount = d.request.amount.minor();
        let status_fits = match d.status {
            DeductionStatus::Refunded => refunds == amount,
            DeductionStatus::PartiallyRefunded => refunds > 0 && refunds < amount,
            DeductionStatus::Succeeded
            | DeductionStatus::Processing
            | DeductionStatus::PendingConfirmation
            | DeductionStatus::Declined
            | DeductionStatus::Failed => refunds == 0,
        };
        if refunds != d.refunded_minor || refunds > amount || !status_fits {
            report.violation(I, format!(
                "deduction {id} ({}, {amount} minor) records {} refunded; its refunds add up to {refunds}",
                d.status.as_str(), d.refunded_minor
            ));
        }
    }
    // Refund request ids.
    let mut refund_rows: BTreeMap<(&str, &str), Vec<&Refund>> = BTreeMap::new();
    for (merchant, request, refund) in &stored.refunds {
        refund_rows
            .entry((merchant, request))
            .or_default()
            .push(refund);
    }
    for (key, rows) in &refund_rows {
        if rows.len() > 1 {
            report.violation(
                I,
                format!("refund request {key:?} made {} refunds", rows.len()),
            );
        }
    }
    for s in &records.refunds {
        let rows = refund_rows.get(&(s.merchant, s.request_id.as_str()));
        let oks: Vec<&pb::RefundDeductionResponse> =
            s.answers.iter().filter_map(Answer::ok).collect();
        let ids: BTreeSet<&str> = oks
            .iter()
            .filter_map(|r| r.refund.as_ref())
            .map(|r| r.refund_id.as_str())
            .collect();
        let refused = s.answers.len() - oks.len();
        if ids.len() > 1 || (!oks.is_empty() && refused > 0) {
            report.violation(
                I,
                format!(
                    "refund request {} (to {}) was answered differently: {:?}",
                    s.request_id,
                    s.deduction_id,
                    s.answers
                        .iter()
                        .map(|a| match a {
                            Answer::Ok(r) =>
                                format!("OK {:?}", r.refund.as_ref().map(|r| &r.refund_id)),
                            Answer::Refused(code, message) => format!("{code:?} {message}"),
                        })
                        .collect::<Vec<_>>()
                ),
            );
        }
        if oks.is_empty() && !s.gave_up && rows.is_some() {
            report.violation(
                I,
                format!("refund request {} was refused but recorded", s.request_id),
            );
        }
        if let Some(r) = oks.iter().find_map(|r| r.refund.as_ref()) {
            let matches = rows.is_some_and(|rows| {
                rows.iter().any(|row| {
                    row.id == r.refund_id
                        && row.deduction_id == s.deduction_id
                        && row.amount.minor() == s.amount_minor
                })
            });
            if !matches {
                report.violation(
                    I,
                    format!(
                        "refund request {} was answered with {}; the database holds {:?}",
                        s.request_id, r.refund_id, rows
                    ),
                );
            }
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, d) in stored.deductions.values() {
        let outcome = match &d.reason_code {
            Some(reason) => format!("{} {reason}", d.status.as_str()),
            None => d.status.as_str().to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    report
        .checked
        .push(format!("deductions by outcome: {outcomes:?}"));
    report.checked.push(format!(
        "I2 once: {} request ids ({resent} sent twice) → one deduction each; {} card charges here, {} at the bank, agreeing on outcome, amount and refunds; {} refund request ids",
        records.deductions.len(),
        stored.charges.len(),
        bank.len(),
        records.refunds.len()
    ));
}

/// §9.3: everything a client was told succeeded is stored after the kills, with its audit
/// event; every stored deduction's events match its outcome.
fn durable(stored: &Stored, records: &Records, report: &mut Report) {
    const I: &str = "I3 durable";
    let mut by_deduction: BTreeMap<&str, Vec<&AuditRow>> = BTreeMap::new();
    let mut by_request: BTreeMap<(&str, &str), Vec<&AuditRow>> = BTreeMap::new();
    for e in &stored.audit {
        if let Some(d) = &e.deduction_id {
            by_deduction.entry(d).or_default().push(e);
        }
        if let Some(r) = &e.request_id {
            by_request
                .entry((r, e.action.as_str()))
                .or_default()
                .push(e);
        }
    }
    let count = |events: Option<&Vec<&AuditRow>>, action: &str| {
        events.map_or(0, |events| {
            events.iter().filter(|e| e.action == action).count()
        })
    };
    let mut charge_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in stored.charges.values() {
        *charge_counts.entry(&c.deduction_id).or_default() += 1;
    }
    let mut refund_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, r) in &stored.refunds {
        *refund_counts.entry(&r.deduction_id).or_default() += 1;
    }
    let charges_of = |deduction: &str| charge_counts.get(deduction).copied().unwrap_or_default();
    let refunds_of = |deduction: &str| refund_counts.get(deduction).copied().unwrap_or_default();
    let created: BTreeSet<&str> = stored
        .audit
        .iter()
        .filter(|e| e.action == "MANDATE_CREATED")
        .filter_map(|e| e.mandate_id.as_deref())
        .collect();
    for (id, (_, _, d)) in &stored.deductions {
        let events = by_deduction.get(id.as_str());
        let chain = format!("mandate:{}", d.mandate_id);
        if events.is_some_and(|events| events.iter().any(|e| e.chain_id != chain)) {
            report.violation(
                I,
                format!("deduction {id} has events outside its mandate's chain"),
            );
        }
        let decided = (
            count(events, "DEDUCTION_APPROVED"),
            count(events, "DEDUCTION_DECLINED"),
        );
        let ended = (
            count(events, "DEDUCTION_SUCCEEDED"),
            count(events, "DEDUCTION_FAILED"),
        );
        let fits = match d.status {
            DeductionStatus::Declined => decided == (0, 1) && ended == (0, 0),
            DeductionStatus::Succeeded
            | DeductionStatus::Refunded
            | DeductionStatus::PartiallyRefunded => decided == (1, 0) && ended == (1, 0),
            DeductionStatus::Failed => decided == (1, 0) && ended == (0, 1),
            DeductionStatus::Processing | DeductionStatus::PendingConfirmation => {
                decided == (1, 0) && ended == (0, 0)
            }
        };
        let started = count(events, "CARD_CHARGE_STARTED");
        let refunds = count(events, "REFUND_RECORDED");
        if !fits || started != charges_of(id) || refunds != refunds_of(id) {
            report.violation(
                I,
                format!(
                    "deduction {id} is {} with {} card charges and {} refunds; its events: {:?}",
                    d.status.as_str(),
                    charges_of(id),
                    refunds_of(id),
                    events
                        .map(|events| events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
                ),
            );
        }
    }
    let mut acknowledged = 0;
    for s in &records.deductions {
        for r in s.answers.iter().filter_map(Answer::ok) {
            let Some(answered) = &r.deduction else {
                continue;
            };
            acknowledged += 1;
            let Some((_, _, d)) = stored.deductions.get(&answered.deduction_id) else {
                report.violation(
                    I,
                    format!(
                        "deduction {} answered to {} is not stored",
                        answered.deduction_id, s.request_id
                    ),
                );
                continue;
            };
            let answered_status = pb::DeductionStatus::try_from(answered.status)
                .unwrap_or(pb::DeductionStatus::Unspecified);
            let now = d.status;
            let still_true = match answered_status {
                pb::DeductionStatus::Succeeded => paid(now),
                pb::DeductionStatus::Refunded | pb::DeductionStatus::PartiallyRefunded => {
                    matches!(
                        now,
                        DeductionStatus::Refunded | DeductionStatus::PartiallyRefunded
                    )
                }
                pb::DeductionStatus::Declined => now == DeductionStatus::Declined,
                pb::DeductionStatus::Failed => now == DeductionStatus::Failed,
                pb::DeductionStatus::Processing | pb::DeductionStatus::PendingConfirmation => {
                    paid(now) || now == DeductionStatus::Failed
                }
                pb::DeductionStatus::Unspecified => false,
            };
            if !still_true {
                report.violation(
                    I,
                    format!(
                        "deduction {} was answered {answered_status:?} and is now {}",
                        answered.deduction_id,
                        now.as_str()
                    ),
                );
            }
        }
    }
    for s in &records.refunds {
        if let Some(r) = s
            .answers
            .iter()
            .find_map(|a| a.ok().and_then(|r| r.refund.as_ref()))
        {
            acknowledged += 1;
            let events = by_request.get(&(s.request_id.as_str(), "REFUND_RECORDED"));
            let here = events.is_some_and(|events| {
                events.len() == 1
                    && events[0].deduction_id.as_deref() == Some(s.deduction_id.as_str())
            });
            if !here {
                report.violation(
                    I,
                    format!(
                        "refund {} (request {}) answered OK has {} REFUND_RECORDED events",
                        r.refund_id,
                        s.request_id,
                        events.map_or(0, Vec::len)
                    ),
                );
            }
        }
    }
    for s in &records.changes {
        let ok = s.answers.iter().filter_map(Answer::ok).count();
        let events = by_request.get(&(s.request_id.as_str(), s.action));
        let on_chain = events.map_or(0, |events| {
            events
                .iter()
                .filter(|e| e.mandate_id.as_deref() == Some(s.mandate_id.as_str()))
                .count()
        });
        if ok > 0 {
            acknowledged += 1;
        }
        // A refused change writes nothing; an answered one wrote its event once.
        let expected = usize::from(ok > 0);
        if (ok > 0 || !s.gave_up) && on_chain != expected {
            report.violation(
                I,
                format!(
                    "{} request {} on {}: {ok} OK answers, {on_chain} events",
                    s.action, s.request_id, s.mandate_id
                ),
            );
        }
    }
    for s in &records.mandates {
        let ids: BTreeSet<&str> = s
            .answers
            .iter()
            .filter_map(|a| a.ok().and_then(|r| r.mandate.as_ref()))
            .map(|m| m.mandate_id.as_str())
            .collect();
        if ids.len() > 1 {
            report.violation(
                I,
                format!("contract {} answered with mandates {ids:?}", s.contract_id),
            );
        }
        for id in ids {
            acknowledged += 1;
            let created = created.contains(id);
            let ours = stored
                .mandates
                .get(id)
                .is_some_and(|m| m.merchant_id.as_str() == s.merchant);
            if !ours || !created {
                report.violation(
                    I,
                    format!(
                        "mandate {id} answered to contract {} is not stored with its event",
                        s.contract_id
                    ),
                );
            }
        }
    }
    for s in &records.credits {
        if s.answers.iter().any(|a| a.ok().is_some()) {
            acknowledged += 1;
            let events = by_request
                .get(&(s.request_id.as_str(), "WALLET_CREDITED"))
                .map_or(0, Vec::len);
            if events != 1 {
                report.violation(
                    I,
                    format!(
                        "credit {} answered OK has {events} WALLET_CREDITED events",
                        s.request_id
                    ),
                );
            }
        }
    }
    report.checked.push(format!(
        "I3 durable: {acknowledged} acknowledged writes stored with their audit events; {} deductions' events match their outcome",
        stored.deductions.len()
    ));
}

/// §9.4: double entry, balances that sum to zero, no negative wallet, and every account equal
/// to the money the deductions, refunds and credits moved through it.
fn ledger(stored: &Stored, records: &Records, report: &mut Report) {
    const I: &str = "I4 ledger";
    let mut movement_sums: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    let mut account_sums: BTreeMap<&str, i64> = BTreeMap::new();
    let mut credited: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for (movement, account, amount) in &stored.entries {
        let m = movement_sums.entry(movement).or_default();
        m.0 += amount;
        m.1 += 1;
        *account_sums.entry(account).or_default() += amount;
        if let Some((kind, Some(request))) = stored.movements.get(movement)
            && kind == "WALLET_CREDIT"
            && *amount > 0
        {
            credited.insert(request, (*amount, account));
        }
    }
    for (movement, (kind, _)) in &stored.movements {
        let (sum, n) = movement_sums
            .get(movement.as_str())
            .copied()
            .unwrap_or_default();
        if sum != 0 || n != 2 {
            report.violation(
                I,
                format!("movement {movement} ({kind}) has {n} entries summing to {sum}"),
            );
        }
    }
    let mut total = 0i64;
    for (account, (kind, balance)) in &stored.accounts {
        total += balance;
        let entries = account_sums
            .get(account.as_str())
            .copied()
            .unwrap_or_default();
        if *balance != entries {
            report.violation(
                I,
                format!("account {account} holds {balance}; its entries add up to {entries}"),
            );
        }
        if kind == "WALLET" && *balance < 0 {
            report.violation(I, format!("wallet {account} is negative: {balance}"));
        }
    }
    if total != 0 {
        report.violation(I, format!("all balances add up to {total}, not zero"));
    }
    // What each account should hold, from the deductions, refunds and credits.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut add = |account: String, amount: i64| *expected.entry(account).or_default() += amount;
    let mut refunded: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, _, refund) in &stored.refunds {
        *refunded.entry(&refund.deduction_id).or_default() += refund.amount.minor();
    }
    let mut deduction_moves = 0;
    for (id, (merchant, _, d)) in &stored.deductions {
        if !paid(d.status) {
            continue;
        }
        deduction_moves += 1;
        let kept =
            d.request.amount.minor() - refunded.get(id.as_str()).copied().unwrap_or_default();
        add(format!("merchant:{merchant}"), kept);
        let source = match paid_by(d) {
            Some(("WALLET", _)) => format!("wallet:{}:CNY", d.payer_id),
            // Card money enters through the merchant's card-clearing sub-account of the
            // deduction.
            _ => Account::card_clearing(&d.merchant_id, Currency::Cny, &d.id).id,
        };
        add(source, -kept);
    }
    let sent_credits: BTreeMap<&str, &super::workload::CreditSent> = records
        .credits
        .iter()
        .map(|c| (c.request_id.as_str(), c))
        .collect();
    for (request, (amount, account)) in &credited {
        add((*account).to_owned(), *amount);
        // A payer's top-ups come from its own clearing account.
        let payer = account
            .strip_prefix("wallet:")
            .and_then(|rest| rest.strip_suffix(":CNY"))
            .and_then(|payer| PayerId::parse("payer_id", payer).ok());
        match payer {
            Some(payer) => add(Account::clearing(&payer, Currency::Cny).id, -amount),
            None => report.violation(I, format!("credit {request} went to {account}")),
        }
        match sent_credits.get(request) {
            None => report.violation(I, format!("credit {request} that no client sent")),
            Some(c)
                if c.amount_minor != *amount || format!("wallet:{}:CNY", c.payer) != *account =>
            {
                report.violation(
                    I,
                    format!(
                        "credit {request}: {amount} to {account}, sent {} to {}",
                        c.amount_minor, c.payer
                    ),
                );
            }
            Some(_) => {}
        }
    }
    for c in &records.credits {
        if c.answers.iter().any(|a| a.ok().is_some())
            && !credited.contains_key(c.request_id.as_str())
        {
            report.violation(
                I,
                format!("credit {} answered OK is not in the ledger", c.request_id),
            );
        }
    }
    let mut actual: BTreeMap<String, i64> = BTreeMap::new();
    for (account, (_, balance)) in &stored.accounts {
        // A merchant's sub-accounts are one settlement balance.
        let key = match account.strip_prefix("merchant:") {
            Some(rest) => format!("merchant:{}", rest.split(':').next().unwrap_or_default()),
            None => account.clone(),
        };
        *actual.entry(key).or_default() += balance;
    }
    for key in expected
        .keys()
        .chain(actual.keys())
        .collect::<BTreeSet<_>>()
    {
        let want = expected.get(key).copied().unwrap_or_default();
        let have = actual.get(key).copied().unwrap_or_default();
        if want != have {
            report.violation(
                I,
                format!("{key} holds {have}; the deductions, refunds and credits make {want}"),
            );
        }
    }
    let kinds = |kind: &str| stored.movements.values().filter(|(k, _)| k == kind).count();
    if kinds("DEDUCTION") != deduction_moves || kinds("REFUND") != stored.refunds.len() {
        report.violation(I, format!(
            "{} DEDUCTION and {} REFUND movements for {deduction_moves} paid deductions and {} refunds",
            kinds("DEDUCTION"), kinds("REFUND"), stored.refunds.len()
        ));
    }
    report.checked.push(format!(
        "I4 ledger: {} movements of two entries each, {} accounts summing to zero, none negative, each equal to what moved through it",
        stored.movements.len(),
        stored.accounts.len()
    ));
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
