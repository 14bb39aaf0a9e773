//! How domain values are encoded in rows: the only place that knows. Times are integer
//! microseconds since the epoch (UTC); a mandate is stored as a JSON document whose amounts are
//! canonical decimal text, read back through `Money::parse` (the one scale check).

use jiff::Timestamp;

use super::{IdempotencyRecord, StoreError};
use crate::domain::audit::{AuditDraft, AuditEvent};
use crate::domain::ids::MandateId;
use crate::domain::mandate::Mandate;

pub fn micros(at: Timestamp) -> i64 {
    at.as_microsecond()
}

pub fn timestamp(micros: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_microsecond(micros)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {micros}: {e}")))
}

pub fn encode_mandate(mandate: &Mandate) -> Result<String, StoreError> {
    serde_json::to_string(mandate).map_err(|e| StoreError::Corrupt(format!("encode mandate: {e}")))
}

pub fn decode_mandate(document: &str) -> Result<Mandate, StoreError> {
    serde_json::from_str(document)
        .map_err(|e| StoreError::Corrupt(format!("mandate document: {e}")))
}

/// The current mandate: its document, with the last collection and the last refund (kept in
/// columns of their own so neither makes a version) folded in: the collection into
/// `last_activity_at`, the refund into `last_refund_at`.
pub fn decode_current_mandate(
    document: &str,
    last_collected_us: Option<i64>,
    last_refunded_us: Option<i64>,
) -> Result<Mandate, StoreError> {
    let mut mandate = decode_mandate(document)?;
    mandate.last_refund_at = last_refunded_us.map(timestamp).transpose()?;
    if let Some(us) = last_collected_us {
        let collected = timestamp(us)?;
        mandate.last_activity_at = Some(
            mandate
                .last_activity_at
                .map_or(collected, |a| a.max(collected)),
        );
    }
    Ok(mandate)
}

/// Any other stored document (deductions, notices, refunds, approvals) as JSON.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encode: {e}")))
}

pub fn decode<T: serde::de::DeserializeOwned>(document: &str) -> Result<T, StoreError> {
    serde_json::from_str(document).map_err(|e| StoreError::Corrupt(format!("stored document: {e}")))
}

#[derive(sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub chain_id: String,
    pub chain_seq: i64,
    pub at_us: i64,
    pub actor_role: String,
    pub actor_subject: String,
    pub merchant_id: Option<String>,
    pub payer_id: Option<String>,
    pub mandate_id: Option<String>,
    pub deduction_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub reason_code: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRow {
    pub fn into_event(self) -> Result<AuditEvent, StoreError> {
        Ok(AuditEvent {
            seq: self.seq,
            chain_id: self.chain_id,
            chain_seq: self.chain_seq,
            draft: AuditDraft {
                at: timestamp(self.at_us)?,
                actor_role: self.actor_role,
                actor_subject: self.actor_subject,
                merchant_id: self.merchant_id,
                payer_id: self.payer_id,
                mandate_id: self.mandate_id,
                deduction_id: self.deduction_id,
                action: self.action,
                outcome: self.outcome,
                reason_code: self.reason_code,
                request_id: self.request_id,
                details: self.details,
                // The stored event's own `chain_id` says where it is.
                chain: None,
            },
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct IdempotencyRow {
    pub scope: String,
    pub request_id: String,
    pub fingerprint: String,
    pub mandate_id: String,
    pub mandate_version: i64,
    pub created_at_us: i64,
}

impl IdempotencyRow {
    pub fn into_record(self) -> Result<IdempotencyRecord, StoreError> {
        Ok(IdempotencyRecord {
            scope: self.scope,
            request_id: self.request_id,
            fingerprint: self.fingerprint,
            mandate_id: MandateId::try_from(self.mandate_id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            mandate_version: self.mandate_version,
            created_at: timestamp(self.created_at_us)?,
        })
    }
}

/// SQL both backends accept (`$n` placeholders work in SQLite too).
pub mod query {
    pub const INSERT_MANDATE: &str = "INSERT INTO mandates \
        (mandate_id, merchant_id, contract_id, payer_id, status, version, create_fingerprint, \
         expires_at_us, created_at_us, updated_at_us, document) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
        ON CONFLICT (merchant_id, contract_id) DO NOTHING";
    pub const MANDATE_BY_CONTRACT: &str = "SELECT document, create_fingerprint FROM mandates WHERE merchant_id = $1 AND contract_id = $2";
    pub const UPDATE_MANDATE: &str = "UPDATE mandates SET status = $1, version = $2, \
        expires_at_us = $3, updated_at_us = $4, document = $5 \
        WHERE mandate_id = $6 AND version = $7";
    pub const INSERT_VERSION: &str = "INSERT INTO mandate_versions \
        (mandate_id, version, recorded_at_us, document) VALUES ($1, $2, $3, $4)";
    pub const MANDATE: &str = "SELECT document, last_collected_at_us, last_refunded_at_us \
        FROM mandates WHERE mandate_id = $1";
    pub const MANDATE_AS_OF: &str = "SELECT document FROM mandate_versions \
        WHERE mandate_id = $1 AND recorded_at_us <= $2 ORDER BY version DESC LIMIT 1";
    pub const MANDATE_VERSION: &str =
        "SELECT document FROM mandate_versions WHERE mandate_id = $1 AND version = $2";
    pub const EXPIRING: &str = "SELECT mandate_id FROM mandates \
        WHERE expires_at_us IS NOT NULL AND expires_at_us <= $1 ORDER BY expires_at_us LIMIT $2";
    pub const INSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency_keys \
        (scope, request_id, fingerprint, mandate_id, mandate_version, created_at_us) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, request_id) DO NOTHING";
    pub const IDEMPOTENCY: &str = "SELECT scope, request_id, fingerprint, mandate_id, \
        mandate_version, created_at_us FROM idempotency_keys WHERE scope = $1 AND request_id = $2";
    /// Creates the chain's head, or advances it by `$2` positions, returning the new last
    /// position and the hash before the run (the genesis hash for a new chain). On PostgreSQL
    /// the upsert holds the head row's lock until commit.
    pub const RESERVE_CHAIN_RUN: &str = "INSERT INTO audit_chain_heads (chain_id, last_seq, last_hash) \
        VALUES ($1, $2, $3) ON CONFLICT (chain_id) DO UPDATE SET last_seq = audit_chain_heads.last_seq + $2 \
        RETURNING last_seq, last_hash";
    /// Sets a chain head read earlier in the same transaction (where no other write can come
    /// between, under SQLite's single writer).
    pub const PUT_CHAIN_HEAD: &str = "INSERT INTO audit_chain_heads (chain_id, last_seq, last_hash) \
        VALUES ($1, $2, $3) ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, \
        last_hash = excluded.last_hash";
    pub const SET_CHAIN_HASH: &str =
        "UPDATE audit_chain_heads SET last_hash = $1 WHERE chain_id = $2";
    /// Followed by `VALUES (…), (…)`, one row per event.
    pub const INSERT_AUDIT_ROWS: &str = "INSERT INTO audit_events \
        (chain_id, chain_seq, at_us, actor_role, actor_subject, merchant_id, payer_id, mandate_id, \
         deduction_id, action, outcome, reason_code, request_id, details, prev_hash, hash) ";
    pub const AUDIT_CHAIN: &str = "SELECT seq, chain_id, chain_seq, at_us, actor_role, actor_subject, \
        merchant_id, payer_id, mandate_id, deduction_id, action, outcome, reason_code, request_id, \
        details, prev_hash, hash FROM audit_events WHERE chain_id = $1 ORDER BY chain_seq";
    pub const CHAIN_HEAD: &str =
        "SELECT last_seq, last_hash FROM audit_chain_heads WHERE chain_id = $1";
    pub const CHAIN_IDS: &str = "SELECT chain_id FROM audit_chain_heads ORDER BY chain_id";
    pub const COUNTS: &str = "SELECT \
        (SELECT COUNT(*) FROM mandates), (SELECT COUNT(*) FROM mandate_versions), \
        (SELECT COUNT(*) FROM audit_events), (SELECT COUNT(*) FROM idempotency_keys)";
}
