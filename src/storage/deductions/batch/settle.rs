//! Bank answers about card charges settled together (PostgreSQL). A card debit is two write
//! transactions around its bank call: the reservation, which is a new deduction and goes through
//! the deductions' batch, and the settlement of the answer, which goes here. The answers that
//! arrive while earlier ones are being written wait in their own queue, and each free worker
//! settles up to [`super::MAX_BATCH`] of them in one transaction:
//!
//! 1. the charges' mandates looked up, locked in one statement in mandate order, as a
//!    deduction's batch takes them, then the charges read under those locks (every writer of
//!    a charge holds its mandate's lock);
//! 2. the deductions, the payers' wallets (locked, in account order) and the mandates' total
//!    usage read with one statement each;
//! 3. each answer decided in arrival order by the caller's own decision, on exactly what the
//!    one-transaction path reads: an answer whose charge, deduction, mandate or wallet an
//!    earlier member of the batch already settled is settled alone after the batch commits, so
//!    no decision here depends on another's writes;
//! 4. what was decided written with one multi-row statement per table, the audit events after
//!    them, and the ledger accounts shared with every other card payment (the card clearing
//!    account, the merchants' sub-accounts) last, in id order, held only until the commit.
//!
//! A lone answer, and one whose writes this path does not make (a notice given back, a
//! single-use mandate consumed), is settled on the one-transaction path
//! ([`crate::storage::deductions::settle::settle`]); a batch that fails for any reason is rolled
//! back and each of its answers settled alone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;

use super::overlay::wallet_of;
use super::transaction::{COLLECTED, COLLECTED_TAIL, lock_mandates, lock_wallets, read_rows};
use super::{Counters, Decided, Member, Outcome, SettleJob};
use crate::domain::audit::mandate_chain_id;
use crate::domain::deduction::{CardCharge, ChargeStatus, Deduction, Usage};
use crate::storage::backend::{Backend, StoredRow};
use crate::storage::deductions::execute::{INSERT_CHARGES, charge_row};
use crate::storage::deductions::{DeductionWrites, Reservation, SettleContext, Settled, settle};
use crate::storage::events::{self, EventRow};
use crate::storage::plan::{Bind, Plan};
use crate::storage::rows::{decode, encode, micros};
use crate::storage::{StoreError, audit, ledger};

const CHARGE_MANDATES: &str = "SELECT DISTINCT mandate_id FROM card_charges WHERE charge_id IN (";
const CHARGES: &str =
    "SELECT charge_id, document, status, checks FROM card_charges WHERE charge_id IN (";
const DEDUCTIONS: &str = "SELECT deduction_id, document FROM deductions WHERE deduction_id IN (";
const TOTAL_USAGES: &str = "SELECT mandate_id, amount_minor, debit_count FROM mandate_usage \
    WHERE period_key = 'total' AND mandate_id IN (";
/// Followed by `VALUES` of (deduction, status, updated at, document).
const UPDATE_DEDUCTIONS: &str = "UPDATE deductions SET status = v.status, \
    updated_at_us = v.at, document = v.document FROM (";
const UPDATE_DEDUCTIONS_TAIL: &str = ") AS v (deduction_id, status, at, document) \
    WHERE deductions.deduction_id = v.deduction_id";
/// Followed by `VALUES` of (charge, status, decline code, 1 if the bank was queried, next
/// check, updated at).
const UPDATE_CHARGES: &str = "UPDATE card_charges SET status = v.status, \
    decline_code = v.decline_code, checks = card_charges.checks + v.checked, \
    next_check_at_us = v.next_check_at, updated_at_us = v.at FROM (";
const UPDATE_CHARGES_TAIL: &str = ") AS v (charge_id, status, decline_code, checked, \
    next_check_at, at) WHERE card_charges.charge_id = v.charge_id";
/// Followed by `VALUES` of (mandate, period key, amount, debits) to give back.
const RELEASE_USAGES: &str = "UPDATE mandate_usage SET \
    amount_minor = mandate_usage.amount_minor - v.amount, \
    debit_count = mandate_usage.debit_count - v.debits FROM (";
const RELEASE_USAGES_TAIL: &str = ") AS v (mandate_id, period_key, amount, debits) \
    WHERE mandate_usage.mandate_id = v.mandate_id AND mandate_usage.period_key = v.period_key";

impl Member for SettleJob {
    type Answer = Settled;
    const KIND: &'static str = "bank answers";

    fn alone<B: Backend>(
        &self,
        backend: &B,
    ) -> impl Future<Output = Result<Settled, StoreError>> + Send {
        settle::settle(backend, &self.charge_id, &*self.decide)
    }

    async fn together<B: Backend>(
        tx: &mut B::Tx,
        jobs: &[Self],
    ) -> Result<Decided<Settled>, StoreError> {
        Ok((settle_all::<B>(tx, jobs).await?, 0))
    }

    fn counted(counters: &Counters, size: usize, _repeats: u64) {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        counters.settle_batches.fetch_add(1, Ordering::Relaxed);
        counters.settled.fetch_add(size, Ordering::Relaxed);
    }

    fn reply(self, answer: Result<Settled, StoreError>) {
        let _ = self.reply.send(answer);
    }
}

/// A charge as read: its record, and its status and bank queries so far.
struct ChargeNow {
    charge: CardCharge,
    status: ChargeStatus,
    checks: i64,
}

async fn read_charges<B: Backend>(
    conn: &mut B::Conn,
    ids: BTreeSet<&str>,
) -> Result<HashMap<String, ChargeNow>, StoreError> {
    let rows = ids.into_iter().map(|id| vec![id.into()]).collect();
    let mut charges = HashMap::new();
    for row in read_rows::<B>(conn, CHARGES, rows, ")").await? {
        let status = row.text(2)?;
        let status = ChargeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("charge status {status}")))?;
        let charge = ChargeNow {
            charge: decode(&row.text(1)?)?,
            status,
            checks: row.int(3)?,
        };
        charges.insert(row.text(0)?, charge);
    }
    Ok(charges)
}

/// Settles every job of a batch inside `tx` and writes what was decided.
async fn settle_all<B: Backend>(
    tx: &mut B::Tx,
    jobs: &[SettleJob],
) -> Result<Vec<Outcome<Settled>>, StoreError> {
    // 1. The charges' mandates (a charge's never changes) locked in order, then the charges
    // read under those locks.
    let charge_ids: BTreeSet<&str> = jobs.iter().map(|j| j.charge_id.as_str()).collect();
    let rows = charge_ids.iter().map(|&id| vec![id.into()]).collect();
    let mut mandate_ids = BTreeSet::new();
    for row in read_rows::<B>(tx, CHARGE_MANDATES, rows, ")").await? {
        mandate_ids.insert(row.text(0)?);
    }
    let current = lock_mandates::<B>(tx, mandate_ids.into_iter().map(Bind::from).collect()).await?;
    let charges = read_charges::<B>(tx, charge_ids).await?;

    // 2. The deductions, the wallets (locked in order) and the total usage.
    let deduction_ids: BTreeSet<&str> = charges
        .values()
        .map(|c| c.charge.deduction_id.as_str())
        .collect();
    let rows = deduction_ids.iter().map(|&id| vec![id.into()]).collect();
    let mut deductions: HashMap<String, Deduction> = HashMap::new();
    for row in read_rows::<B>(tx, DEDUCTIONS, rows, ")").await? {
        deductions.insert(row.text(0)?, decode(&row.text(1)?)?);
    }
    let wallets: BTreeSet<String> = current.values().map(wallet_of).collect();
    let balances = lock_wallets::<B>(tx, wallets).await?;
    let rows = current.keys().map(|id| vec![id.as_str().into()]).collect();
    let mut totals: HashMap<String, Usage> = HashMap::new();
    for row in read_rows::<B>(tx, TOTAL_USAGES, rows, ")").await? {
        let usage = Usage {
            amount_minor: row.int(1)?,
            count: row.int(2)?,
        };
        totals.insert(row.text(0)?, usage);
    }

    // 3. Each answer in arrival order; what an earlier one settled is left to settle alone.
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut decided: Vec<DeductionWrites> = Vec::new();
    let mut settled: HashSet<String> = HashSet::new();
    for job in jobs {
        let Some(now) = charges.get(&job.charge_id) else {
            outcomes.push(Outcome::Answer(None));
            continue;
        };
        let charge = &now.charge;
        let (Some(mandate), Some(deduction)) = (
            current.get(charge.mandate_id.as_str()),
            deductions.get(&charge.deduction_id),
        ) else {
            // The one-transaction path names what is missing.
            outcomes.push(Outcome::Alone);
            continue;
        };
        let wallet = wallet_of(mandate);
        let touched = [
            format!("charge {}", charge.id),
            format!("deduction {}", deduction.id),
            format!("mandate {}", mandate.id.as_str()),
            format!("wallet {wallet}"),
        ];
        if touched.iter().any(|key| settled.contains(key)) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        let context = SettleContext {
            deduction,
            charge,
            charge_status: now.status,
            checks: now.checks,
            mandate,
            wallet_balance_minor: balances.get(&wallet).copied().unwrap_or(0),
            total_usage: totals.get(mandate.id.as_str()).copied().unwrap_or_default(),
        };
        let Some(writes) = (job.decide)(&context) else {
            outcomes.push(Outcome::Answer(None));
            continue;
        };
        if !settles_batch(&writes) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        settled.extend(touched);
        outcomes.push(Outcome::Answer(Some((
            writes.deduction.clone(),
            writes.new_charge.as_ref().map(|new| new.charge.clone()),
        ))));
        decided.push(writes);
    }

    // 4. What was decided, one statement per table.
    write_all::<B>(tx, &decided).await?;
    Ok(outcomes)
}

/// Whether a settlement writes only what a batch of them writes: the deduction, its charge,
/// usage given back, a next card to charge, the money, its collection time, its events, and
/// audit events on its mandate's chain.
fn settles_batch(writes: &DeductionWrites) -> bool {
    let alone = match &writes.reservation {
        Reservation::None => false,
        Reservation::Take { .. } => true,
        Reservation::Release { notice, .. } => notice.is_some(),
    };
    let mandate_chain = mandate_chain_id(writes.deduction.mandate_id.as_str());
    !alone
        && writes.audits.iter().all(|a| a.chain_id() == mandate_chain)
        && writes
            .collected
            .as_ref()
            .is_none_or(|collected| collected.consumed.is_none())
}

/// Writes the settlements of a batch: the rows under the batch's locks (and new ones) in one
/// trip, the audit events, then the shared ledger accounts and the entries in one trip.
async fn write_all<B: Backend>(
    tx: &mut B::Tx,
    decided: &[DeductionWrites],
) -> Result<(), StoreError> {
    if decided.is_empty() {
        return Ok(());
    }
    let (mut deductions, mut charges, mut new_charges, mut released) =
        (vec![], vec![], vec![], vec![]);
    let (mut collected, mut moves, mut events) = (vec![], vec![], vec![]);
    for writes in decided {
        let d = &writes.deduction;
        let (id, at) = (d.mandate_id.as_str(), micros(d.updated_at));
        deductions.push(vec![
            d.id.clone().into(),
            d.status.as_str().into(),
            at.into(),
            encode(d)?.into(),
        ]);
        if let Some(update) = &writes.charge_update {
            charges.push(vec![
                update.charge_id.clone().into(),
                update.status.as_str().into(),
                update.decline_code.clone().into(),
                i64::from(update.checked).into(),
                update.next_check_at.map(micros).into(),
                at.into(),
            ]);
        }
        if let Some(new) = &writes.new_charge {
            new_charges.push(charge_row(new)?);
        }
        if let Reservation::Release { usage_keys, .. } = &writes.reservation {
            for period in usage_keys {
                let amount = d.request.amount.minor();
                released.push(vec![
                    id.into(),
                    period.clone().into(),
                    amount.into(),
                    1.into(),
                ]);
            }
        }
        if let Some(c) = &writes.collected {
            collected.push(vec![
                id.into(),
                micros(c.at).into(),
                c.expires_at.map(micros).into(),
            ]);
        }
        if let Some(movement) = &writes.ledger {
            moves.push((movement, d.updated_at));
        }
        events.push(EventRow::deduction(d, d.updated_at));
    }
    let mut plan = Plan::default();
    plan.push_rows(UPDATE_DEDUCTIONS, deductions, UPDATE_DEDUCTIONS_TAIL);
    plan.push_rows(UPDATE_CHARGES, charges, UPDATE_CHARGES_TAIL);
    plan.push_rows(INSERT_CHARGES, new_charges, "");
    plan.push_rows(RELEASE_USAGES, released, RELEASE_USAGES_TAIL);
    plan.push_rows(COLLECTED, collected, COLLECTED_TAIL);
    events::plan_rows(&mut plan, &events);
    let mut last = Plan::default();
    ledger::plan_moves(&mut plan, &mut last, &moves)?;
    // Rows the batch holds (the mandates and what is under them, the wallets) and new rows.
    B::run_plan_at_once(tx, plan).await?;
    // Only holders of a mandate's lock append to its chain (`settles_batch` keeps other chains
    // out), so the chain heads cannot be part of a cycle.
    audit::append_many::<B>(tx, decided.iter().flat_map(|w| &w.audits)).await?;
    // Last, the accounts every card payment shares, in id order, held until the commit.
    B::run_plan_at_once(tx, last).await
}
