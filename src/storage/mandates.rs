//! Mandates: the current row, every version, and the idempotency records of mandate writes.
//! Every write that changes a mandate writes its version row and its audit event in the same
//! transaction.

use jiff::Timestamp;

use super::backend::{self, Backend, StoredRow};
use super::events::{self, EventRow};
use super::plan::{Bind, Plan};
use super::rows::{decode_current_mandate, decode_mandate, encode_mandate, micros, timestamp};
use super::{IdempotencyRecord, Inserted, MandateInsert, MandateUpdate, StoreError, audit};
use crate::domain::event::EventKind;
use crate::domain::ids::MandateId;
use crate::domain::mandate::Mandate;

const INSERT_MANDATE: &str = "INSERT INTO mandates \
    (mandate_id, merchant_id, contract_id, payer_id, status, version, create_fingerprint, \
     expires_at_us, created_at_us, updated_at_us, document) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
    ON CONFLICT (merchant_id, contract_id) DO NOTHING";
const MANDATE_BY_CONTRACT: &str = "SELECT document, create_fingerprint FROM mandates \
    WHERE merchant_id = $1 AND contract_id = $2";
const UPDATE_MANDATE: &str = "UPDATE mandates SET status = $1, version = $2, \
    expires_at_us = $3, updated_at_us = $4, document = $5 \
    WHERE mandate_id = $6 AND version = $7";
const INSERT_VERSION: &str = "INSERT INTO mandate_versions \
    (mandate_id, version, recorded_at_us, document) VALUES ($1, $2, $3, $4)";
/// The current mandate with the columns folded into it (see `decode_current`).
pub const MANDATE: &str = "SELECT document, last_collected_at_us, last_refunded_at_us \
    FROM mandates WHERE mandate_id = $1";
const MANDATE_AS_OF: &str = "SELECT document FROM mandate_versions \
    WHERE mandate_id = $1 AND recorded_at_us <= $2 ORDER BY version DESC LIMIT 1";
const MANDATE_VERSION: &str =
    "SELECT document FROM mandate_versions WHERE mandate_id = $1 AND version = $2";
const EXPIRING: &str = "SELECT mandate_id FROM mandates \
    WHERE expires_at_us IS NOT NULL AND expires_at_us <= $1 ORDER BY expires_at_us LIMIT $2";
const INSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency_keys \
    (scope, request_id, fingerprint, mandate_id, mandate_version, created_at_us) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, request_id) DO NOTHING";
const IDEMPOTENCY: &str = "SELECT scope, request_id, fingerprint, mandate_id, \
    mandate_version, created_at_us FROM idempotency_keys WHERE scope = $1 AND request_id = $2";

/// The current mandate from a row of [`MANDATE`] (or a read of the same columns).
pub fn decode_current(row: &impl StoredRow) -> Result<Mandate, StoreError> {
    decode_current_mandate(&row.text(0)?, row.opt_int(1)?, row.opt_int(2)?)
}

/// The mandate's row as read inside a write transaction, locked with the backend's row lock
/// when `lock` (PostgreSQL holds it until the transaction ends).
pub fn read_current<B: Backend>(reads: &mut Plan, id: &MandateId, lock: bool) {
    let sql = if lock {
        backend::locked::<B>(MANDATE)
    } else {
        MANDATE.into()
    };
    reads.read(sql, vec![id.as_str().into()]);
}

pub async fn insert<B: Backend>(
    backend: &B,
    insert: MandateInsert<'_>,
) -> Result<Inserted, StoreError> {
    let MandateInsert {
        mandate,
        expires_at,
        fingerprint,
        audit,
    } = insert;
    let document = encode_mandate(mandate)?;
    let mut tx = backend.begin_write().await?;
    let binds = vec![
        mandate.id.as_str().into(),
        mandate.merchant_id.as_str().into(),
        mandate.contract_id.as_str().into(),
        mandate.payer_id.as_str().into(),
        mandate.status.as_str().into(),
        mandate.version.into(),
        fingerprint.into(),
        expires_at.map(micros).into(),
        micros(mandate.created_at).into(),
        micros(mandate.updated_at).into(),
        document.clone().into(),
    ];
    if B::execute(&mut tx, INSERT_MANDATE.into(), binds).await? == 0 {
        let binds = vec![
            mandate.merchant_id.as_str().into(),
            mandate.contract_id.as_str().into(),
        ];
        let row = backend::fetch_one::<B>(&mut tx, MANDATE_BY_CONTRACT, binds).await?;
        B::rollback(tx).await?;
        return Ok(Inserted::Existing {
            mandate: Box::new(decode_mandate(&row.text(0)?)?),
            fingerprint: row.text(1)?,
        });
    }
    let event = EventRow::mandate(mandate, EventKind::MandateCreated);
    insert_version::<B>(&mut tx, mandate, document, event).await?;
    audit::append::<B>(&mut tx, std::slice::from_ref(audit)).await?;
    B::commit(tx).await?;
    Ok(Inserted::New)
}

pub async fn update<B: Backend>(backend: &B, update: MandateUpdate<'_>) -> Result<(), StoreError> {
    let mandate = update.mandate;
    let document = encode_mandate(mandate)?;
    let mut tx = backend.begin_write().await?;
    let binds = vec![
        mandate.status.as_str().into(),
        mandate.version.into(),
        update.expires_at.map(micros).into(),
        micros(mandate.updated_at).into(),
        document.clone().into(),
        mandate.id.as_str().into(),
        update.expected_version.into(),
    ];
    if B::execute(&mut tx, UPDATE_MANDATE.into(), binds).await? == 0 {
        B::rollback(tx).await?;
        return Err(StoreError::Conflict);
    }
    if let Some(record) = update.idempotency {
        let binds = vec![
            record.scope.clone().into(),
            record.request_id.clone().into(),
            record.fingerprint.clone().into(),
            record.mandate_id.as_str().into(),
            record.mandate_version.into(),
            micros(record.created_at).into(),
        ];
        if B::execute(&mut tx, INSERT_IDEMPOTENCY.into(), binds).await? == 0 {
            B::rollback(tx).await?;
            return Err(StoreError::Conflict);
        }
    }
    let event = EventRow::mandate(mandate, EventKind::of_mandate_action(&update.audit.action));
    insert_version::<B>(&mut tx, mandate, document, event).await?;
    audit::append::<B>(&mut tx, std::slice::from_ref(update.audit)).await?;
    B::commit(tx).await
}

/// The version row and the change's event, in one trip where the backend can; before the
/// audit append, which takes the chain head's lock last.
async fn insert_version<B: Backend>(
    conn: &mut B::Conn,
    mandate: &Mandate,
    document: String,
    event: EventRow,
) -> Result<(), StoreError> {
    let mut plan = Plan::default();
    plan_version(&mut plan, mandate, document);
    events::plan_rows(&mut plan, std::slice::from_ref(&event));
    // Two new rows: their order cannot matter.
    B::run_plan_at_once(conn, plan).await
}

fn plan_version(plan: &mut Plan, mandate: &Mandate, document: String) {
    plan.push(
        INSERT_VERSION,
        vec![
            mandate.id.as_str().into(),
            mandate.version.into(),
            micros(mandate.updated_at).into(),
            document.into(),
        ],
        1,
    );
}

/// Plans a mandate's new state and its version row, the update conditional on the version the
/// caller read (`read_version`): each statement changes one row, or the mandate has moved on.
pub fn plan_change(
    plan: &mut Plan,
    changed: &Mandate,
    read_version: i64,
) -> Result<(), StoreError> {
    let document = encode_mandate(changed)?;
    plan.push(
        UPDATE_MANDATE,
        vec![
            changed.status.as_str().into(),
            changed.version.into(),
            Bind::OptInt(None),
            micros(changed.updated_at).into(),
            document.clone().into(),
            changed.id.as_str().into(),
            read_version.into(),
        ],
        1,
    );
    plan_version(plan, changed, document);
    Ok(())
}

pub async fn get<B: Backend>(backend: &B, id: &MandateId) -> Result<Option<Mandate>, StoreError> {
    let row = backend::read_optional(backend, MANDATE, vec![id.as_str().into()]).await?;
    row.as_ref().map(decode_current).transpose()
}

pub async fn as_of<B: Backend>(
    backend: &B,
    id: &MandateId,
    at: Timestamp,
) -> Result<Option<Mandate>, StoreError> {
    document(backend, MANDATE_AS_OF, id, micros(at)).await
}

pub async fn version<B: Backend>(
    backend: &B,
    id: &MandateId,
    version: i64,
) -> Result<Option<Mandate>, StoreError> {
    document(backend, MANDATE_VERSION, id, version).await
}

async fn document<B: Backend>(
    backend: &B,
    sql: &'static str,
    id: &MandateId,
    arg: i64,
) -> Result<Option<Mandate>, StoreError> {
    let row = backend::read_optional(backend, sql, vec![id.as_str().into(), arg.into()]).await?;
    row.map(|row| decode_mandate(&row.text(0)?)).transpose()
}

pub async fn expiring_by<B: Backend>(
    backend: &B,
    at: Timestamp,
    limit: u32,
) -> Result<Vec<MandateId>, StoreError> {
    let binds = vec![micros(at).into(), i64::from(limit).into()];
    let rows = backend::read(backend, EXPIRING, binds).await?;
    rows.iter()
        .map(|row| {
            MandateId::try_from(row.text(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

pub async fn idempotency_record<B: Backend>(
    backend: &B,
    scope: &str,
    request_id: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let binds = vec![scope.into(), request_id.into()];
    let Some(row) = backend::read_optional(backend, IDEMPOTENCY, binds).await? else {
        return Ok(None);
    };
    Ok(Some(IdempotencyRecord {
        scope: row.text(0)?,
        request_id: row.text(1)?,
        fingerprint: row.text(2)?,
        mandate_id: MandateId::try_from(row.text(3)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        mandate_version: row.int(4)?,
        created_at: timestamp(row.int(5)?)?,
    }))
}
