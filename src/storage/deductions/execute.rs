//! A deduction's transaction: the mandate locked, the request id checked, the facts read, the
//! decision made (by the caller's `decide`), and everything it decided written — one trip for
//! the reads and one for the writes where nothing forces more.

use super::facts::{Asked, Extra};
use super::{Decide, DeductionInput, DeductionWrites, Executed, NewCharge, Reservation};
use crate::domain::deduction::{ChargeStatus, Deduction};
use crate::domain::event::EventKind;
use crate::domain::ledger::Account;
use crate::domain::mandate::Mandate;
use crate::storage::backend::{self, Backend, StoredRow};
use crate::storage::events::{self, EventRow};
use crate::storage::plan::{Bind, Plan};
use crate::storage::rows::{decode, encode, micros};
use crate::storage::{ChainHead, StoreError, approvals, audit, ledger, mandates, notices};

const EXISTING_DEDUCTION: &str =
    "SELECT document, fingerprint FROM deductions WHERE merchant_id = $1 AND request_id = $2";
/// Followed by `VALUES`, one row per deduction ([`deduction_row`]).
pub const INSERT_DEDUCTIONS: &str = "INSERT INTO deductions \
    (deduction_id, merchant_id, request_id, fingerprint, mandate_id, payer_id, status, \
     bill_reference, created_at_us, updated_at_us, document, bill_key) ";
pub const DEDUCTION: &str = "SELECT document FROM deductions WHERE deduction_id = $1";
pub const UPDATE_DEDUCTION: &str = "UPDATE deductions \
    SET status = $1, updated_at_us = $2, document = $3 WHERE deduction_id = $4";
/// Advances usage rows by amounts and debit counts; the rows (mandate, period key, amount,
/// debits), at most one per usage row, are listed after it, all in one statement.
pub const ADVANCE_USAGE: &str =
    "INSERT INTO mandate_usage (mandate_id, period_key, amount_minor, debit_count) ";
pub const ADVANCE_USAGE_CONFLICT: &str = " ON CONFLICT (mandate_id, period_key) DO UPDATE SET \
    amount_minor = mandate_usage.amount_minor + excluded.amount_minor, \
    debit_count = mandate_usage.debit_count + excluded.debit_count";
const RELEASE_USAGE: &str = "UPDATE mandate_usage SET amount_minor = amount_minor - $1, \
    debit_count = debit_count - 1 WHERE mandate_id = $2 AND period_key = $3";
/// Followed by `VALUES`, one row per charge ([`charge_row`]).
pub const INSERT_CHARGES: &str = "INSERT INTO card_charges \
    (charge_id, deduction_id, mandate_id, source_index, status, checks, next_check_at_us, \
     created_at_us, updated_at_us, document) ";
const UPDATE_CHARGE: &str = "UPDATE card_charges SET status = $1, decline_code = $2, \
    checks = checks + $3, next_check_at_us = $4, updated_at_us = $5 WHERE charge_id = $6";
const COLLECTED: &str =
    "UPDATE mandates SET last_collected_at_us = $1, expires_at_us = $2 WHERE mandate_id = $3";

fn wallet_of(mandate: &Mandate) -> String {
    Account::wallet(&mandate.payer_id, mandate.terms.currency).id
}

pub async fn execute<B: Backend>(
    backend: &B,
    input: &DeductionInput,
    decide: Decide<'_>,
) -> Result<Executed, StoreError> {
    let asked = Asked {
        request: &input.request,
        now: input.now,
        refunds_since: input.refunds_since,
    };
    // Under a single writer nothing can move the chain's head before the writes: read with the
    // facts, it saves the trip that would take it then.
    let extra = |wallet| Extra {
        wallet: Some(wallet),
        chain_head: B::SERIAL_WRITER,
    };
    let seen_wallet = wallet_of(&input.seen);
    let sent = asked.reads::<B>(&input.seen, extra(&seen_wallet));
    let mut tx = backend.begin_deferred().await?;
    // Lock the mandate first: a concurrent request with the same key then either committed
    // before (its deduction is visible to the second read) or waits behind this one. The facts
    // the mandate as the caller saw it calls for are read in the same batch: one trip, unless
    // the mandate has changed since.
    let mut reads = Plan::default();
    mandates::read_current::<B>(&mut reads, &input.mandate_id, true);
    let key = vec![
        input.merchant_id.as_str().into(),
        input.request_id.as_str().into(),
    ];
    reads.read(EXISTING_DEDUCTION, key);
    reads.statements.extend(sent.statements.iter().cloned());
    let mut results = B::read_batch_first(&mut tx, reads).await?.into_iter();
    let (Some(mandate), Some(existing)) = (results.next(), results.next()) else {
        return Err(StoreError::Corrupt("a read batch came back short".into()));
    };
    if let Some(row) = existing.first() {
        let (doc, fingerprint) = (row.text(0)?, row.text(1)?);
        B::rollback(tx).await?;
        return Ok(Executed::Existing {
            deduction: Box::new(decode(&doc)?),
            fingerprint,
        });
    }
    let Some(row) = mandate.first() else {
        B::rollback(tx).await?;
        return Ok(Executed::MandateNotFound);
    };
    let mandate = mandates::decode_current(row)?;
    let wallet = wallet_of(&mandate);
    let (facts, balance, head) = if asked.reads::<B>(&mandate, extra(&wallet)) == sent {
        asked.facts_from(&mut results, &mandate, extra(&wallet))?
    } else {
        // The mandate changed since the caller read it, and so did what its facts are: read
        // them again.
        asked.gather::<B>(&mut tx, &mandate, extra(&wallet)).await?
    };
    let writes = decide(&mandate, &facts, balance);
    let written = Written {
        mandate_version: mandate.version,
        fingerprint: Some(&input.fingerprint),
        chain_head: head,
    };
    apply::<B>(&mut tx, &writes, written).await?;
    B::commit(tx).await?;
    Ok(Executed::New(
        Box::new(writes.deduction),
        writes.new_charge.map(|new| new.charge),
    ))
}

/// How a decision's writes are made.
pub struct Written<'a> {
    /// The mandate's version the decision read: a change of the mandate is conditional on it.
    pub mandate_version: i64,
    /// Set for a new deduction (inserted); absent for one that is settled (updated).
    pub fingerprint: Option<&'a str>,
    /// The mandate chain's head, read in this transaction with nothing able to move it since.
    pub chain_head: Option<ChainHead>,
}

/// Writes everything a decision decided. The writes whose outcome is known in advance go out as
/// one plan (one trip on SQLite); the few that may find they lost a race (a notice or approval
/// used, the mandate's version) follow one by one. Where rows are locked the audit events come
/// last; under a single writer they go in the plan.
pub async fn apply<B: Backend>(
    tx: &mut B::Tx,
    writes: &DeductionWrites,
    written: Written<'_>,
) -> Result<(), StoreError> {
    let Written {
        mandate_version,
        fingerprint,
        mut chain_head,
    } = written;
    let d = &writes.deduction;
    let racy = Racy::of(writes);
    let mut plan = Plan::default();
    plan_known(&mut plan, writes, fingerprint)?;
    if B::SERIAL_WRITER {
        // No row locks to order: the audit rows ride in the same plan.
        audit::plan_appends::<B>(tx, &writes.audits, &mut plan, &mut chain_head).await?;
        if racy.notice_released.is_none() && racy.approval_used.is_none() {
            // Nothing can come between the facts and these writes under the one writer, so the
            // writes that could lose a race elsewhere cannot here: planned too, each to change
            // its one row, and the whole plan is left to run with the writer's next statement.
            if let Some(notice_id) = racy.notice_used {
                let binds = vec![d.id.clone().into(), notice_id.into()];
                plan.push(notices::USE_NOTICE, binds, 1);
            }
            if let Some(changed) = racy.consumed {
                mandates::plan_change(&mut plan, changed, mandate_version)?;
            }
            return B::defer_plan(tx, plan).await;
        }
    }
    if fingerprint.is_some() {
        // A new deduction's plan inserts new rows and changes rows this transaction has locked
        // (the mandate, its usage under the mandate's lock, the wallet read `FOR UPDATE`), but
        // for one: the merchant's settlement sub-account. With one lock to take, the order
        // cannot matter: one trip.
        B::run_plan_at_once(tx, plan).await?;
    } else {
        // A card settlement moves money between two accounts it has not locked (the card
        // clearing account, the merchant's sub-account): in the plan's order (wallet first,
        // then by id), statement by statement.
        B::run_plan(tx, plan).await?;
    }
    if let Some(notice_id) = racy.notice_used {
        let binds = vec![d.id.clone().into(), notice_id.into()];
        if B::execute(tx, notices::USE_NOTICE.into(), binds).await? != 1 {
            return Err(StoreError::Conflict);
        }
    }
    if let Some(notice_id) = racy.notice_released {
        let binds = vec![notice_id.into(), d.id.clone().into()];
        B::execute(tx, notices::RELEASE_NOTICE.into(), binds).await?;
    }
    if let Some(approval_id) = racy.approval_used {
        approvals::mark_used::<B>(tx, approval_id, d.mandate_id.as_str(), &d.id).await?;
    }
    if let Some(changed) = racy.consumed {
        // Conditional on the version read: a concurrent change makes it a conflict.
        let mut change = Plan::default();
        mandates::plan_change(&mut change, changed, mandate_version)?;
        for statement in change.statements {
            let done = B::execute(tx, statement.sql, statement.binds).await?;
            if done != statement.rows {
                return Err(StoreError::Conflict);
            }
        }
    }
    if !B::SERIAL_WRITER {
        // Audit chain heads are locked last, as by every other write (a refund takes the
        // ledger rows, then the chain): taken before the ledger rows, a deduction and a refund
        // on one mandate could each hold what the other waits for.
        audit::append::<B>(tx, &writes.audits).await?;
    }
    Ok(())
}

/// The writes of a decision that may find they lost a race (rows another transaction could
/// have changed since the facts were read): each must change its one row.
struct Racy<'a> {
    notice_used: Option<&'a str>,
    notice_released: Option<&'a str>,
    approval_used: Option<&'a str>,
    consumed: Option<&'a Mandate>,
}

impl<'a> Racy<'a> {
    fn of(writes: &'a DeductionWrites) -> Self {
        let (notice_used, approval_used, notice_released) = match &writes.reservation {
            Reservation::None => (None, None, None),
            Reservation::Take {
                notice, approval, ..
            } => (notice.as_deref(), approval.as_deref(), None),
            Reservation::Release { notice, .. } => (None, None, notice.as_deref()),
        };
        Self {
            notice_used,
            notice_released,
            approval_used,
            consumed: writes.collected.as_ref().and_then(|c| c.consumed.as_ref()),
        }
    }
}

/// Plans the writes of a decision whose outcome is known in advance: the deduction, usage, the
/// ledger movement, card charge records and the collection time.
fn plan_known(
    plan: &mut Plan,
    writes: &DeductionWrites,
    fingerprint: Option<&str>,
) -> Result<(), StoreError> {
    let d = &writes.deduction;
    let mandate_id = d.mandate_id.as_str();
    let amount = d.request.amount.minor();
    match fingerprint {
        Some(fingerprint) => {
            plan.push_rows(INSERT_DEDUCTIONS, vec![deduction_row(d, fingerprint)?], "")
        }
        None => plan.push(
            UPDATE_DEDUCTION,
            vec![
                d.status.as_str().into(),
                micros(d.updated_at).into(),
                encode(d)?.into(),
                d.id.clone().into(),
            ],
            1,
        ),
    }
    let (taken, released): (&[String], &[String]) = match &writes.reservation {
        Reservation::None => (&[], &[]),
        Reservation::Take { usage_keys, .. } => (usage_keys, &[]),
        Reservation::Release { usage_keys, .. } => (&[], usage_keys),
    };
    let advanced = taken
        .iter()
        .map(|key| usage_row(mandate_id, key, amount, 1))
        .collect();
    plan.push_rows(ADVANCE_USAGE, advanced, ADVANCE_USAGE_CONFLICT);
    for key in released {
        let binds = vec![amount.into(), mandate_id.into(), key.clone().into()];
        plan.push(RELEASE_USAGE, binds, 1);
    }
    if let Some(movement) = &writes.ledger {
        ledger::plan_move(plan, movement, None, d.updated_at);
    }
    if let Some(new) = &writes.new_charge {
        plan.push_rows(INSERT_CHARGES, vec![charge_row(new)?], "");
    }
    if let Some(update) = &writes.charge_update {
        plan.push(
            UPDATE_CHARGE,
            vec![
                update.status.as_str().into(),
                update.decline_code.clone().into(),
                i64::from(update.checked).into(),
                update.next_check_at.map(micros).into(),
                micros(d.updated_at).into(),
                update.charge_id.clone().into(),
            ],
            1,
        );
    }
    if let Some(collected) = &writes.collected {
        let binds = vec![
            micros(collected.at).into(),
            collected.expires_at.map(micros).into(),
            mandate_id.into(),
        ];
        plan.push(COLLECTED, binds, 1);
    }
    // The callers' events: the deduction as it now stands, and the mandate if the debit
    // consumed it (whose change, conditional on its version, follows the plan), in one insert.
    let mut rows = vec![EventRow::deduction(d, d.updated_at)];
    if let Some(consumed) = writes.collected.as_ref().and_then(|c| c.consumed.as_ref()) {
        rows.push(EventRow::mandate(consumed, EventKind::MandateConsumed));
    }
    events::plan_rows(plan, &rows);
    Ok(())
}

/// A new deduction's row for [`INSERT_DEDUCTIONS`].
pub fn deduction_row(d: &Deduction, fingerprint: &str) -> Result<Vec<Bind>, StoreError> {
    Ok(vec![
        d.id.clone().into(),
        d.merchant_id.as_str().into(),
        d.request_id.clone().into(),
        fingerprint.into(),
        d.mandate_id.as_str().into(),
        d.payer_id.as_str().into(),
        d.status.as_str().into(),
        d.request.bill_reference.as_str().into(),
        micros(d.created_at).into(),
        micros(d.updated_at).into(),
        encode(d)?.into(),
        d.request.bill_reference.key().as_str().into(),
    ])
}

/// A usage row for [`ADVANCE_USAGE`]: `debits` more debits of `amount` in all.
pub fn usage_row(mandate_id: &str, key: &str, amount: i64, debits: i64) -> Vec<Bind> {
    vec![mandate_id.into(), key.into(), amount.into(), debits.into()]
}

/// A new card charge's row for [`INSERT_CHARGES`]: in flight, never asked about yet.
pub fn charge_row(new: &NewCharge) -> Result<Vec<Bind>, StoreError> {
    let NewCharge { charge, check_at } = new;
    let created = micros(charge.created_at);
    Ok(vec![
        charge.id.clone().into(),
        charge.deduction_id.clone().into(),
        charge.mandate_id.as_str().into(),
        i64::try_from(charge.source_index)
            .unwrap_or(i64::MAX)
            .into(),
        ChargeStatus::InFlight.as_str().into(),
        Bind::Int(0),
        check_at.map(micros).into(),
        created.into(),
        created.into(),
        encode(charge)?.into(),
    ])
}

/// The mandate and facts a deduction would be judged on now (a dry run; nothing is locked).
pub async fn dry_run<B: Backend>(
    backend: &B,
    mandate_id: &crate::domain::ids::MandateId,
    asked: &Asked<'_>,
) -> Result<Option<(Mandate, crate::domain::deduction::Facts)>, StoreError> {
    let mut conn = backend.reader().await?;
    let binds = vec![mandate_id.as_str().into()];
    let row = backend::fetch_optional::<B>(&mut conn, mandates::MANDATE, binds).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mandate = mandates::decode_current(&row)?;
    let extra = Extra {
        wallet: None,
        chain_head: false,
    };
    let (facts, _, _) = asked.gather::<B>(&mut conn, &mandate, extra).await?;
    Ok(Some((mandate, facts)))
}

pub async fn get<B: Backend>(backend: &B, id: &str) -> Result<Option<Deduction>, StoreError> {
    let row = backend::read_optional(backend, DEDUCTION, vec![id.into()]).await?;
    row.map(|row| decode(&row.text(0)?)).transpose()
}
