//! Card charges after the bank call: what the bank said settled under the mandate's lock, and
//! the charges still waiting for a definite answer (the resolver's work list).

use jiff::Timestamp;

use super::execute::{self, DEDUCTION, Written};
use super::{Settle, SettleContext, Settled};
use crate::domain::deduction::{CardCharge, ChargeStatus, Deduction, Usage};
use crate::domain::ledger::Account;
use crate::storage::backend::{self, Backend, StoredRow};
use crate::storage::plan::Plan;
use crate::storage::rows::{decode, micros, timestamp};
use crate::storage::{StoreError, ledger, mandates};

const CHARGE: &str = "SELECT document, status, checks FROM card_charges WHERE charge_id = $1";
const TOTAL_USAGE: &str = "SELECT amount_minor, debit_count FROM mandate_usage \
    WHERE mandate_id = $1 AND period_key = 'total'";
const UNKNOWN_CHARGES: &str =
    "SELECT COUNT(*) FROM card_charges WHERE status IN ('UNKNOWN', 'IN_FLIGHT')";
const CHARGES_DUE: &str = "SELECT document FROM card_charges WHERE next_check_at_us IS NOT NULL \
    AND next_check_at_us <= $1 ORDER BY next_check_at_us LIMIT $2";
const CHARGES_OPEN_SINCE: &str = "SELECT document FROM card_charges \
    WHERE next_check_at_us IS NOT NULL AND created_at_us <= $1 ORDER BY next_check_at_us LIMIT $2";
const NEXT_CHARGE_CHECK: &str =
    "SELECT MIN(next_check_at_us) FROM card_charges WHERE next_check_at_us IS NOT NULL";

/// Records what the bank said about a charge, in one transaction under the mandate's lock.
pub async fn settle<B: Backend>(
    backend: &B,
    charge_id: &str,
    decide: Settle<'_>,
) -> Result<Settled, StoreError> {
    let mut tx = backend.begin_write().await?;
    let Some(row) = backend::fetch_optional::<B>(&mut tx, CHARGE, vec![charge_id.into()]).await?
    else {
        B::rollback(tx).await?;
        return Ok(None);
    };
    let charge: CardCharge = decode(&row.text(0)?)?;
    // Lock the mandate (usage, consumption) before reading anything else, as a new deduction
    // does; then read the charge's status again under that lock.
    let mut reads = Plan::default();
    mandates::read_current::<B>(&mut reads, &charge.mandate_id, true);
    let mut results = B::read_batch(&mut tx, reads).await?.into_iter();
    let Some(row) = results.next().and_then(|rows| rows.into_iter().next()) else {
        return Err(StoreError::Corrupt(format!(
            "charge {charge_id} names a missing mandate"
        )));
    };
    let mandate = mandates::decode_current(&row)?;
    let row = backend::fetch_one::<B>(&mut tx, CHARGE, vec![charge_id.into()]).await?;
    let (status, checks) = (row.text(1)?, row.int(2)?);
    let charge_status = ChargeStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("charge status {status}")))?;
    let binds = vec![charge.deduction_id.clone().into()];
    let deduction = backend::fetch_one::<B>(&mut tx, DEDUCTION, binds).await?;
    let deduction: Deduction = decode(&deduction.text(0)?)?;
    let wallet = Account::wallet(&mandate.payer_id, mandate.terms.currency);
    let mut reads = Plan::default();
    ledger::read_balance_locked::<B>(&mut reads, &wallet.id);
    reads.read(TOTAL_USAGE, vec![mandate.id.as_str().into()]);
    let results = B::read_batch(&mut tx, reads).await?;
    let [balance, total] = <[Vec<B::Row>; 2]>::try_from(results)
        .map_err(|_| StoreError::Corrupt("a read batch came back short".into()))?;
    let total_usage = match total.first() {
        Some(row) => Usage {
            amount_minor: row.int(0)?,
            count: row.int(1)?,
        },
        None => Usage::default(),
    };
    let context = SettleContext {
        deduction: &deduction,
        charge: &charge,
        charge_status,
        checks,
        mandate: &mandate,
        wallet_balance_minor: balance
            .first()
            .map(|row| row.int(0))
            .transpose()?
            .unwrap_or(0),
        total_usage,
    };
    let Some(writes) = decide(&context) else {
        B::rollback(tx).await?;
        return Ok(None);
    };
    let written = Written {
        mandate_version: mandate.version,
        fingerprint: None,
        chain_head: None,
    };
    execute::apply::<B>(&mut tx, &writes, written).await?;
    B::commit(tx).await?;
    Ok(Some((
        writes.deduction,
        writes.new_charge.map(|new| new.charge),
    )))
}

/// How many card charges have no definite outcome yet (for metrics).
pub async fn unknown_count<B: Backend>(backend: &B) -> Result<i64, StoreError> {
    let row = backend::read_optional(backend, UNKNOWN_CHARGES, vec![]).await?;
    row.map_or(Ok(0), |row| row.int(0))
}

/// Which charges still waiting for a definite answer to list.
pub enum Open {
    /// Those due to be asked about at this time.
    DueBy(Timestamp),
    /// Those made at or before this time, however long their next question is off.
    MadeBy(Timestamp),
}

/// Charges still to be asked about, at most `limit`, the soonest due first.
pub async fn open<B: Backend>(
    backend: &B,
    which: Open,
    limit: u32,
) -> Result<Vec<CardCharge>, StoreError> {
    let (sql, at) = match which {
        Open::DueBy(at) => (CHARGES_DUE, at),
        Open::MadeBy(at) => (CHARGES_OPEN_SINCE, at),
    };
    let binds = vec![micros(at).into(), i64::from(limit).into()];
    let rows = backend::read(backend, sql, binds).await?;
    rows.iter().map(|row| decode(&row.text(0)?)).collect()
}

pub async fn next_check<B: Backend>(backend: &B) -> Result<Option<Timestamp>, StoreError> {
    let row = backend::read_optional(backend, NEXT_CHARGE_CHECK, vec![]).await?;
    row.map(|row| row.opt_int(0))
        .transpose()?
        .flatten()
        .map(timestamp)
        .transpose()
}
