//! One-off approvals (DESIGN §5): requested by a merchant under its request id, approved or
//! rejected by the payer once, used by at most one deduction.

use super::backend::{self, Backend, StoredRow};
use super::deductions::{Keyed, KeyedWrite};
use super::rows::{decode, encode, micros};
use super::{StoreError, audit, keyed};
use crate::domain::audit::AuditDraft;
use crate::domain::deduction::{Approval, ApprovalStatus};

const INSERT_APPROVAL: &str = "INSERT INTO approvals \
    (approval_id, mandate_id, merchant_id, payer_id, request_id, fingerprint, status, \
     created_at_us, document) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (merchant_id, request_id) DO NOTHING";
const EXISTING_APPROVAL: &str =
    "SELECT document, fingerprint FROM approvals WHERE merchant_id = $1 AND request_id = $2";
const APPROVAL: &str = "SELECT document FROM approvals WHERE approval_id = $1";
pub const APPROVAL_ON_MANDATE: &str =
    "SELECT document FROM approvals WHERE approval_id = $1 AND mandate_id = $2";
/// Changes an approval's status, conditional on the status it was read with (`$4`).
pub const SET_APPROVAL: &str =
    "UPDATE approvals SET status = $1, document = $2 WHERE approval_id = $3 AND status = $4";

pub async fn insert<B: Backend>(
    backend: &B,
    write: KeyedWrite<'_, Approval>,
) -> Result<Keyed<Approval>, StoreError> {
    let (approval, request_id, fingerprint) = (write.value, write.request_id, write.fingerprint);
    let row = vec![
        approval.id.clone().into(),
        approval.mandate_id.as_str().into(),
        approval.merchant_id.as_str().into(),
        approval.payer_id.as_str().into(),
        request_id.into(),
        fingerprint.into(),
        approval.status.as_str().into(),
        micros(approval.requested_at).into(),
        encode(approval)?.into(),
    ];
    let key = vec![approval.merchant_id.as_str().into(), request_id.into()];
    let statements = ((INSERT_APPROVAL, row), (EXISTING_APPROVAL, key));
    keyed::insert(backend, write, statements.0, statements.1).await
}

pub async fn get<B: Backend>(backend: &B, id: &str) -> Result<Option<Approval>, StoreError> {
    let row = backend::read_optional(backend, APPROVAL, vec![id.into()]).await?;
    row.map(|row| decode(&row.text(0)?)).transpose()
}

/// Stores a decided approval, conditional on it still being PENDING.
pub async fn decide<B: Backend>(
    backend: &B,
    approval: &Approval,
    audit: &AuditDraft,
) -> Result<(), StoreError> {
    let mut tx = backend.begin_write().await?;
    let binds = vec![
        approval.status.as_str().into(),
        encode(approval)?.into(),
        approval.id.clone().into(),
        ApprovalStatus::Pending.as_str().into(),
    ];
    if B::execute(&mut tx, SET_APPROVAL.into(), binds).await? != 1 {
        B::rollback(tx).await?;
        return Err(StoreError::Conflict);
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(audit)).await?;
    B::commit(tx).await
}

/// Marks the approval a deduction used as USED by it, conditional on it being APPROVED
/// ([`StoreError::Conflict`] if another deduction used it first). Nothing happens for an
/// approval that is not on the mandate (the decision declined it).
pub async fn mark_used<B: Backend>(
    conn: &mut B::Conn,
    approval_id: &str,
    mandate_id: &str,
    deduction_id: &str,
) -> Result<(), StoreError> {
    let binds = vec![approval_id.into(), mandate_id.into()];
    let Some(row) = backend::fetch_optional::<B>(conn, APPROVAL_ON_MANDATE, binds).await? else {
        return Ok(());
    };
    let mut approval: Approval = decode(&row.text(0)?)?;
    approval.status = ApprovalStatus::Used;
    approval.used_by = Some(deduction_id.to_owned());
    let binds = vec![
        approval.status.as_str().into(),
        encode(&approval)?.into(),
        approval_id.into(),
        ApprovalStatus::Approved.as_str().into(),
    ];
    if B::execute(conn, SET_APPROVAL.into(), binds).await? != 1 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}
