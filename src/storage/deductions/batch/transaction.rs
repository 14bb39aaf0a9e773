//! A batch's transaction: the mandates locked, the facts read one statement per kind, each
//! member decided on the overlay, and what was decided written one statement per table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::overlay::{Key, Overlay, wallet_of, writes_batch};
use super::{Decided, Job, Outcome, batchable};
use crate::domain::deduction::{DeductionStatus, Usage, period_key};
use crate::domain::mandate::Mandate;
use crate::storage::backend::{Backend, Sql, StoredRow};
use crate::storage::deductions::execute::{
    ADVANCE_USAGE, ADVANCE_USAGE_CONFLICT, INSERT_CHARGES, INSERT_DEDUCTIONS, charge_row,
    deduction_row, usage_row,
};
use crate::storage::deductions::{DeductionWrites, Executed, Reservation};
use crate::storage::events::{self, EventRow};
use crate::storage::plan::{Bind, Plan, Planned};
use crate::storage::rows::{decode, micros};
use crate::storage::{StoreError, audit, ledger, mandates};

/// `$1, …, $n`.
fn parameters(n: usize) -> String {
    (1..=n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const LOCK_MANDATES: &str = "SELECT document, last_collected_at_us, last_refunded_at_us, \
    mandate_id FROM mandates WHERE mandate_id IN (";
const USED_KEYS: &str = "SELECT merchant_id, request_id, document, fingerprint FROM deductions \
    WHERE (merchant_id, request_id) IN (";
const BILLS: &str =
    "SELECT mandate_id, bill_key, status FROM deductions WHERE (mandate_id, bill_key) IN (";
const USAGES: &str = "SELECT mandate_id, period_key, amount_minor, debit_count \
    FROM mandate_usage WHERE (mandate_id, period_key) IN (";
const LOCK_WALLETS: &str =
    "SELECT account_id, balance_minor FROM ledger_accounts WHERE account_id IN (";
/// Followed by `VALUES` of (mandate, collected at, expires at), one row per mandate.
pub(super) const COLLECTED: &str = "UPDATE mandates SET last_collected_at_us = v.at, \
    expires_at_us = v.expires_at FROM (";
pub(super) const COLLECTED_TAIL: &str =
    ") AS v (mandate_id, at, expires_at) WHERE mandates.mandate_id = v.mandate_id";

/// Runs a read of `head` with a `VALUES` list of `rows`, then `tail`; no rows, no read.
pub(super) async fn read_rows<B: Backend>(
    conn: &mut B::Conn,
    head: &str,
    rows: Vec<Vec<Bind>>,
    tail: &str,
) -> Result<Vec<B::Row>, StoreError> {
    match Planned::rows(head, rows, tail) {
        Some(read) => B::fetch(conn, read.sql, read.binds).await,
        None => Ok(vec![]),
    }
}

/// The rows of `head` with the ids listed, locked in `key` order (the order every batch takes
/// them in); none for no ids.
async fn lock_in_order<B: Backend>(
    conn: &mut B::Conn,
    head: &str,
    key: &str,
    ids: Vec<Bind>,
) -> Result<Vec<B::Row>, StoreError> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let lock = format!(
        "{head}{}) ORDER BY {key}{}",
        parameters(ids.len()),
        B::ROW_LOCK
    );
    B::fetch(conn, Sql::Owned(lock), ids).await
}

/// Locks the mandates in id order; the current ones, by id (absent ones do not exist).
pub(super) async fn lock_mandates<B: Backend>(
    conn: &mut B::Conn,
    ids: Vec<Bind>,
) -> Result<HashMap<String, Mandate>, StoreError> {
    let mut current = HashMap::new();
    for row in lock_in_order::<B>(conn, LOCK_MANDATES, "mandate_id", ids).await? {
        current.insert(row.text(3)?, mandates::decode_current(&row)?);
    }
    Ok(current)
}

/// Locks the wallets in account order; their balances (absent ones do not exist yet).
pub(super) async fn lock_wallets<B: Backend>(
    conn: &mut B::Conn,
    wallets: BTreeSet<String>,
) -> Result<HashMap<String, i64>, StoreError> {
    let ids = wallets.into_iter().map(Bind::from).collect();
    let mut balances = HashMap::new();
    for row in lock_in_order::<B>(conn, LOCK_WALLETS, "account_id", ids).await? {
        balances.insert(row.text(0)?, row.int(1)?);
    }
    Ok(balances)
}

/// Decides every job of a batch inside `tx` and writes what was decided.
pub(super) async fn decide_all<B: Backend>(
    tx: &mut B::Tx,
    jobs: &[Job],
) -> Result<Decided<Executed>, StoreError> {
    // 1. The mandates, locked in order; then the request ids, read once they are held: a
    // concurrent request with the same key on the same mandate either committed before
    // (visible now) or waits behind this batch.
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j.input.mandate_id.as_str()).collect();
    let current = lock_mandates::<B>(tx, ids.into_iter().map(Bind::from).collect()).await?;
    let keys = jobs
        .iter()
        .map(|j| {
            let input = &j.input;
            vec![
                input.merchant_id.as_str().into(),
                input.request_id.as_str().into(),
            ]
        })
        .collect();
    let mut overlay = Overlay::default();
    for row in read_rows::<B>(tx, USED_KEYS, keys, ")").await? {
        let key = (row.text(0)?, row.text(1)?);
        overlay
            .used
            .insert(key, (decode(&row.text(2)?)?, row.text(3)?));
    }

    // 2. The facts of the deductions to decide, one statement per kind.
    let (mut bills, mut usages, mut wallets) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for job in jobs {
        let input = &job.input;
        let Some(mandate) = current.get(input.mandate_id.as_str()) else {
            continue;
        };
        let id = mandate.id.as_str().to_owned();
        bills.insert((
            id.clone(),
            input.request.bill_reference.key().as_str().to_owned(),
        ));
        usages.insert((id.clone(), "total".to_owned()));
        usages.extend(period_key(mandate, input.now).map(|period| (id.clone(), period)));
        wallets.insert(wallet_of(mandate));
    }
    let pairs = |set: BTreeSet<Key>| {
        set.into_iter()
            .map(|(a, b)| vec![a.into(), b.into()])
            .collect()
    };
    for row in read_rows::<B>(tx, BILLS, pairs(bills), ")").await? {
        let status = row.text(2)?;
        let status = DeductionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("deduction status {status}")))?;
        let key = (row.text(0)?, row.text(1)?);
        overlay.bills.entry(key).or_default().push(status);
    }
    for row in read_rows::<B>(tx, USAGES, pairs(usages), ")").await? {
        let usage = Usage {
            amount_minor: row.int(2)?,
            count: row.int(3)?,
        };
        overlay.usage.insert((row.text(0)?, row.text(1)?), usage);
    }
    overlay.balances = lock_wallets::<B>(tx, wallets).await?;

    // 3. Each deduction in arrival order, on the facts those before it left.
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut decided: Vec<(&Job, DeductionWrites)> = Vec::new();
    let mut repeats = 0;
    for job in jobs {
        let input = &job.input;
        let key = (input.merchant_id.to_string(), input.request_id.clone());
        if let Some((deduction, fingerprint)) = overlay.used.get(&key) {
            repeats += u64::from(decided.iter().any(|(earlier, _)| {
                earlier.input.merchant_id == input.merchant_id
                    && earlier.input.request_id == input.request_id
            }));
            outcomes.push(Outcome::Answer(Executed::Existing {
                deduction: Box::new(deduction.clone()),
                fingerprint: fingerprint.clone(),
            }));
            continue;
        }
        let Some(mandate) = current.get(input.mandate_id.as_str()) else {
            outcomes.push(Outcome::Answer(Executed::MandateNotFound));
            continue;
        };
        if !batchable(input, mandate) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        let balance = overlay
            .balances
            .get(&wallet_of(mandate))
            .copied()
            .unwrap_or(0);
        let writes = (job.decide)(mandate, &overlay.facts(input, mandate), balance);
        if !writes_batch(&writes) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        overlay.apply(&writes, &input.fingerprint)?;
        outcomes.push(Outcome::Answer(Executed::New(
            Box::new(writes.deduction.clone()),
            writes.new_charge.as_ref().map(|new| new.charge.clone()),
        )));
        decided.push((job, writes));
    }

    // 4. What was decided, one statement per table.
    write_all::<B>(tx, &decided).await?;
    Ok((outcomes, repeats))
}

/// Writes the decisions of a batch: the rows under locks the batch holds (or new ones) in one
/// statement, the ledger after them (other accounts in order), the audit events last, as every
/// other write takes them.
async fn write_all<B: Backend>(
    tx: &mut B::Tx,
    decided: &[(&Job, DeductionWrites)],
) -> Result<(), StoreError> {
    if decided.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(decided.len());
    let mut usage: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
    let (mut charges, mut events, mut moves) = (vec![], vec![], vec![]);
    let mut collected: BTreeMap<&str, (i64, Option<i64>)> = BTreeMap::new();
    let out_of_range = |id: &str| StoreError::OutOfRange(format!("the usage of mandate {id}"));
    for (job, writes) in decided {
        let d = &writes.deduction;
        let id = d.mandate_id.as_str();
        rows.push(deduction_row(d, &job.input.fingerprint)?);
        if let Reservation::Take { usage_keys, .. } = &writes.reservation {
            for period in usage_keys {
                let (amount, debits) = usage.entry((id.to_owned(), period.clone())).or_default();
                *amount = amount
                    .checked_add(d.request.amount.minor())
                    .ok_or_else(|| out_of_range(id))?;
                *debits += 1;
            }
        }
        if let Some(new) = &writes.new_charge {
            charges.push(charge_row(new)?);
        }
        if let Some(movement) = &writes.ledger {
            moves.push((movement, d.updated_at));
        }
        if let Some(c) = &writes.collected {
            let (at, expires_at) = (micros(c.at), c.expires_at.map(micros));
            let latest = collected.entry(id).or_insert((at, expires_at));
            if at >= latest.0 {
                *latest = (at, expires_at);
            }
        }
        events.push(EventRow::deduction(d, d.updated_at));
    }
    let mut plan = Plan::default();
    plan.push_rows(INSERT_DEDUCTIONS, rows, "");
    let usage = usage
        .into_iter()
        .map(|((id, period), (amount, debits))| usage_row(&id, &period, amount, debits))
        .collect();
    plan.push_rows(ADVANCE_USAGE, usage, ADVANCE_USAGE_CONFLICT);
    plan.push_rows(INSERT_CHARGES, charges, "");
    let collected = collected
        .into_iter()
        .map(|(id, (at, expires_at))| vec![id.into(), at.into(), expires_at.into()])
        .collect();
    plan.push_rows(COLLECTED, collected, COLLECTED_TAIL);
    events::plan_rows(&mut plan, &events);
    let mut last = Plan::default();
    ledger::plan_moves(&mut plan, &mut last, &moves)?;
    // New rows, and rows whose locks the batch holds (the mandates, their usage under them,
    // the wallets): the order cannot matter, one trip.
    B::run_plan_at_once(tx, plan).await?;
    // The mandates' chain heads: every transaction appending to a mandate's chain holds the
    // mandate's lock first (`writes_batch` keeps other chains out), so these cannot be part
    // of a cycle whatever comes after them.
    let audits = decided.iter().flat_map(|(_, writes)| &writes.audits);
    audit::append_many::<B>(tx, audits).await?;
    // Last, the merchants' sub-accounts, which concurrent batches share: one upsert taking
    // them in id order, then the entries naming them, in one trip, held only until the commit.
    B::run_plan_at_once(tx, last).await
}
