//! How domain values are encoded in rows: the only place that knows. Times are integer
//! microseconds since the epoch (UTC); a mandate is stored as a JSON document whose amounts are
//! canonical decimal text, read back through `Money::parse` (the one scale check).

use jiff::Timestamp;

use super::StoreError;
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
