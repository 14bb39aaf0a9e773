//! Merchants' policies (the suspected-refund-recovery rule's setting, DESIGN §5), versioned.

use super::backend::{self, Backend, StoredRow};
use super::rows::{decode, encode, micros};
use super::{StoreError, audit};
use crate::domain::audit::AuditDraft;
use crate::domain::ids::MerchantId;
use crate::domain::policy::MerchantPolicy;

const MERCHANT_POLICY: &str = "SELECT document FROM merchant_policies WHERE merchant_id = $1";
const INSERT_POLICY: &str = "INSERT INTO merchant_policies \
    (merchant_id, version, updated_at_us, document) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (merchant_id) DO NOTHING";
const UPDATE_POLICY: &str = "UPDATE merchant_policies \
    SET version = $1, updated_at_us = $2, document = $3 WHERE merchant_id = $4 AND version = $5";

pub async fn get<B: Backend>(
    backend: &B,
    merchant_id: &MerchantId,
) -> Result<Option<MerchantPolicy>, StoreError> {
    let binds = vec![merchant_id.as_str().into()];
    let row = backend::read_optional(backend, MERCHANT_POLICY, binds).await?;
    row.map(|row| decode(&row.text(0)?)).transpose()
}

/// Stores a changed policy with its audit event, conditional on the stored version still being
/// `policy.version - 1` ([`StoreError::Conflict`] otherwise).
pub async fn put<B: Backend>(
    backend: &B,
    policy: &MerchantPolicy,
    audit: &AuditDraft,
) -> Result<(), StoreError> {
    let document = encode(policy)?;
    let at = policy.updated_at.map_or(0, micros);
    let merchant = policy.merchant_id.as_str();
    let (sql, binds) = if policy.version == 1 {
        let binds = vec![
            merchant.into(),
            policy.version.into(),
            at.into(),
            document.into(),
        ];
        (INSERT_POLICY, binds)
    } else {
        let binds = vec![
            policy.version.into(),
            at.into(),
            document.into(),
            merchant.into(),
            (policy.version - 1).into(),
        ];
        (UPDATE_POLICY, binds)
    };
    let mut tx = backend.begin_write().await?;
    if B::execute(&mut tx, sql.into(), binds).await? != 1 {
        B::rollback(tx).await?;
        return Err(StoreError::Conflict);
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(audit)).await?;
    B::commit(tx).await
}
