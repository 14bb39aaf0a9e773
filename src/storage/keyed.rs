//! Writes keyed by a merchant's request id (notices, one-off approvals): the row and its audit
//! event, or — when the key is taken — what the key already holds, for the caller to replay.

use serde::de::DeserializeOwned;

use super::backend::{self, Backend, Sql, StoredRow};
use super::deductions::{Keyed, KeyedWrite};
use super::plan::Bind;
use super::rows::decode;
use super::{StoreError, audit};

/// A statement and its parameters.
pub type Statement = (&'static str, Vec<Bind>);

/// Runs `insert` (an `INSERT … ON CONFLICT DO NOTHING` on the request key) and appends the audit
/// event,
/// in one transaction; if the key was taken, reads `existing` (the stored document and the
/// fingerprint of the request that took the key) instead and writes nothing.
pub async fn insert<B: Backend, T: DeserializeOwned + Clone>(
    backend: &B,
    write: KeyedWrite<'_, T>,
    insert: Statement,
    existing: Statement,
) -> Result<Keyed<T>, StoreError> {
    let mut tx = backend.begin_write().await?;
    if B::execute(&mut tx, Sql::from(insert.0), insert.1).await? == 0 {
        let row = backend::fetch_one::<B>(&mut tx, existing.0, existing.1).await?;
        B::rollback(tx).await?;
        return Ok(Keyed::Existing {
            value: decode(&row.text(0)?)?,
            fingerprint: row.text(1)?,
        });
    }
    audit::append::<B>(&mut tx, std::slice::from_ref(write.audit)).await?;
    B::commit(tx).await?;
    Ok(Keyed::New(write.value.clone()))
}
