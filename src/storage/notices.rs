//! Pre-debit notices (DESIGN §5): recorded under the merchant's request id, used by at most one
//! deduction.

use super::backend::Backend;
use super::deductions::{Keyed, KeyedWrite};
use super::rows::{encode, micros};
use super::{StoreError, keyed};
use crate::domain::deduction::Notice;

const INSERT_NOTICE: &str = "INSERT INTO notices \
    (notice_id, mandate_id, merchant_id, request_id, fingerprint, used_by, created_at_us, \
     document, bill_key) \
    VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8) ON CONFLICT (merchant_id, request_id) DO NOTHING";
const EXISTING_NOTICE: &str =
    "SELECT document, fingerprint FROM notices WHERE merchant_id = $1 AND request_id = $2";
/// A notice's `used_by` column is authoritative (its document keeps the value at creation).
pub const NOTICE_ON_MANDATE: &str =
    "SELECT document, used_by FROM notices WHERE notice_id = $1 AND mandate_id = $2";
/// Marks a notice used by deduction `$1`, unless another took it first.
pub const USE_NOTICE: &str =
    "UPDATE notices SET used_by = $1 WHERE notice_id = $2 AND used_by IS NULL";
/// Gives a notice back (its deduction `$2` ended FAILED).
pub const RELEASE_NOTICE: &str =
    "UPDATE notices SET used_by = NULL WHERE notice_id = $1 AND used_by = $2";

pub async fn insert<B: Backend>(
    backend: &B,
    write: KeyedWrite<'_, Notice>,
) -> Result<Keyed<Notice>, StoreError> {
    let (notice, request_id, fingerprint) = (write.value, write.request_id, write.fingerprint);
    let row = vec![
        notice.id.clone().into(),
        notice.mandate_id.as_str().into(),
        notice.merchant_id.as_str().into(),
        request_id.into(),
        fingerprint.into(),
        micros(notice.created_at).into(),
        encode(notice)?.into(),
        notice.bill_reference.key().as_str().into(),
    ];
    let key = vec![notice.merchant_id.as_str().into(), request_id.into()];
    let statements = ((INSERT_NOTICE, row), (EXISTING_NOTICE, key));
    keyed::insert(backend, write, statements.0, statements.1).await
}
