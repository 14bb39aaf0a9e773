//! Refunds: decided on the deduction as read under its mandate's and its own lock, recorded
//! with the ledger movement back and the time the mandate last refunded (what the
//! suspected-refund-recovery rule looks back to).

use super::backend::{self, Backend, StoredRow};
use super::deductions::execute::{DEDUCTION, UPDATE_DEDUCTION};
use super::deductions::{DecideRefund, RefundAsk, Refunded};
use super::events::{self, EventRow};
use super::plan::Plan;
use super::rows::{decode, encode, micros};
use super::{StoreError, audit, ledger};
use crate::domain::deduction::{Deduction, Refund};
use crate::domain::ids::MerchantId;

const EXISTING_REFUND: &str =
    "SELECT document, fingerprint FROM refunds WHERE merchant_id = $1 AND request_id = $2";
const INSERT_REFUND: &str = "INSERT INTO refunds \
    (refund_id, deduction_id, merchant_id, request_id, fingerprint, created_at_us, document, \
     mandate_id, amount_minor, refunded_total_minor) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const DEDUCTION_MANDATE: &str = "SELECT mandate_id FROM deductions WHERE deduction_id = $1";
const LOCK_MANDATE_ROW: &str = "SELECT 1 FROM mandates WHERE mandate_id = $1";
const REFUNDED: &str = "UPDATE mandates SET last_refunded_at_us = $1 WHERE mandate_id = $2";

pub async fn refund<B: Backend>(
    backend: &B,
    ask: RefundAsk<'_>,
    decide: DecideRefund<'_>,
) -> Result<Refunded, StoreError> {
    let mut tx = backend.begin_write().await?;
    // The mandate is locked first, as a deduction and a card settlement take it, then the
    // deduction: two refunds of one deduction queue here, so the second sees the first, and a
    // retry of one request finds the refund it recorded.
    let binds = vec![ask.deduction_id.into()];
    let Some(row) = backend::fetch_optional::<B>(&mut tx, DEDUCTION_MANDATE, binds).await? else {
        B::rollback(tx).await?;
        return Ok(Refunded::DeductionNotFound);
    };
    let mandate_id = row.text(0)?;
    let lock_mandate = backend::locked::<B>(LOCK_MANDATE_ROW);
    backend::fetch_one::<B>(&mut tx, lock_mandate, vec![mandate_id.into()]).await?;
    let lock_deduction = backend::locked::<B>(DEDUCTION);
    let binds = vec![ask.deduction_id.into()];
    let doc = backend::fetch_one::<B>(&mut tx, lock_deduction, binds)
        .await?
        .text(0)?;
    let binds = vec![ask.merchant_id.as_str().into(), ask.request_id.into()];
    if let Some(row) = backend::fetch_optional::<B>(&mut tx, EXISTING_REFUND, binds).await? {
        let refund: Refund = decode(&row.text(0)?)?;
        let binds = vec![refund.deduction_id.clone().into()];
        let deduction = backend::fetch_one::<B>(&mut tx, DEDUCTION, binds)
            .await?
            .text(0)?;
        B::rollback(tx).await?;
        return Ok(Refunded::Existing {
            refund,
            deduction: Box::new(decode(&deduction)?),
            fingerprint: row.text(1)?,
        });
    }
    let deduction: Deduction = decode(&doc)?;
    let writes = match decide(&deduction) {
        Ok(writes) => writes,
        Err(reason) => {
            B::rollback(tx).await?;
            return Ok(Refunded::Refused(reason));
        }
    };
    let (d, refund) = (&writes.deduction, &writes.refund);
    let binds = vec![
        d.status.as_str().into(),
        micros(d.updated_at).into(),
        encode(d)?.into(),
        d.id.clone().into(),
    ];
    B::execute(&mut tx, UPDATE_DEDUCTION.into(), binds).await?;
    let binds = vec![
        refund.id.clone().into(),
        d.id.clone().into(),
        ask.merchant_id.as_str().into(),
        ask.request_id.into(),
        ask.fingerprint.into(),
        micros(refund.created_at).into(),
        encode(refund)?.into(),
        d.mandate_id.as_str().into(),
        refund.amount.minor().into(),
        d.refunded_minor.into(),
    ];
    B::execute(&mut tx, INSERT_REFUND.into(), binds).await?;
    // The mandate's refund time and the callers' event, in one trip where the backend can.
    let mut plan = Plan::default();
    let binds = vec![
        micros(refund.created_at).into(),
        d.mandate_id.as_str().into(),
    ];
    plan.push(REFUNDED, binds, 1);
    events::plan_rows(&mut plan, &[EventRow::deduction(d, refund.created_at)]);
    // The mandate's row is locked already and the event is new: the order cannot matter.
    B::run_plan_at_once(&mut tx, plan).await?;
    if let Some(movement) = &writes.ledger {
        ledger::apply_move::<B>(&mut tx, movement, None, refund.created_at).await?;
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(&writes.audit)).await?;
    B::commit(tx).await?;
    Ok(Refunded::New {
        refund: writes.refund,
        deduction: Box::new(writes.deduction),
    })
}

/// The refund a merchant's request id already made, with its deduction and fingerprint.
pub async fn by_request<B: Backend>(
    backend: &B,
    merchant_id: &MerchantId,
    request_id: &str,
) -> Result<Option<(Refund, Deduction, String)>, StoreError> {
    let binds = vec![merchant_id.as_str().into(), request_id.into()];
    let Some(row) = backend::read_optional(backend, EXISTING_REFUND, binds).await? else {
        return Ok(None);
    };
    let refund: Refund = decode(&row.text(0)?)?;
    let binds = vec![refund.deduction_id.clone().into()];
    let deduction = backend::read_optional(backend, DEDUCTION, binds)
        .await?
        .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))?
        .text(0)?;
    Ok(Some((refund, decode(&deduction)?, row.text(1)?)))
}
