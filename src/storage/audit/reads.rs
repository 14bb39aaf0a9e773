//! Reading the trail back: selections for compliance (keyset pages by `seq`), chains page by
//! page for verification, the chains of a scope, and every chain's head as of an append
//! position for checkpoints. Every read is bounded by its `limit`.

use super::event_from;
use crate::domain::audit::{AuditEvent, AuditFilter, BLOCKED_OUTCOMES};
use crate::domain::ids::MandateId;
use crate::domain::mandate::Mandate;
use crate::storage::StoreError;
use crate::storage::backend::{self, Backend, StoredRow};
use crate::storage::queries::Select;
use crate::storage::rows::{decode_mandate, micros, timestamp};
use jiff::Timestamp;

const EVENT_COLUMNS: &str = "SELECT seq, chain_id, chain_seq, at_us, actor_role, actor_subject, \
    merchant_id, payer_id, mandate_id, deduction_id, action, outcome, reason_code, request_id, \
    details, prev_hash, hash FROM audit_events";
const CHAIN_PAGE: &str = "SELECT seq, chain_id, chain_seq, at_us, actor_role, actor_subject, \
    merchant_id, payer_id, mandate_id, deduction_id, action, outcome, reason_code, request_id, \
    details, prev_hash, hash FROM audit_events WHERE chain_id = $1 AND chain_seq > $2 \
    ORDER BY chain_seq LIMIT $3";
const ALL_CHAINS: &str =
    "SELECT chain_id FROM audit_chain_heads WHERE chain_id > $1 ORDER BY chain_id LIMIT $2";
const MERCHANT_MANDATE_CHAINS: &str = "SELECT 'mandate:' || mandate_id FROM mandates \
    WHERE merchant_id = $1 AND mandate_id > $2 ORDER BY mandate_id LIMIT $3";
const COUNT_CHAINS: &str = "SELECT COUNT(*) FROM audit_chain_heads";
const COUNT_MERCHANT_MANDATES: &str = "SELECT COUNT(*) FROM mandates WHERE merchant_id = $1";
/// A chain with events and no head: events written around the service.
const HEADLESS_CHAIN: &str = "SELECT e.chain_id FROM audit_events e WHERE NOT EXISTS \
    (SELECT 1 FROM audit_chain_heads h WHERE h.chain_id = e.chain_id) LIMIT 1";
const VERSIONS: &str = "SELECT version, recorded_at_us, document FROM mandate_versions \
    WHERE mandate_id = $1 ORDER BY version LIMIT $2";
const LAST_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM audit_events";
/// Each chain's last event at or before append position `$1`, in chain order after `$2`.
const HEADS_AS_OF: &str = "SELECT e.chain_id, e.chain_seq, e.hash FROM audit_events e JOIN \
    (SELECT chain_id, MAX(chain_seq) AS last_seq FROM audit_events \
     WHERE seq <= $1 AND chain_id > $2 GROUP BY chain_id ORDER BY chain_id LIMIT $3) h \
    ON e.chain_id = h.chain_id AND e.chain_seq = h.last_seq ORDER BY e.chain_id";

/// One page of a selection, in `seq` order.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    pub newest_first: bool,
    /// The `seq` the previous page ended at (the page cursor).
    pub after: Option<i64>,
    /// No event past this `seq`.
    pub until: Option<i64>,
    pub limit: u32,
}

/// Whose chains to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainScope {
    All,
    /// The merchant's own chain and its mandates' chains.
    Merchant(String),
}

/// A chain's head as of a position: its id, last position and last hash.
pub type HeadAt = (String, i64, String);

pub async fn events<B: Backend>(
    backend: &B,
    q: &AuditQuery,
) -> Result<Vec<AuditEvent>, StoreError> {
    let f = &q.filter;
    let mut select = Select::new(EVENT_COLUMNS);
    select
        .and("merchant_id =", f.merchant_id.as_deref())
        .and("payer_id =", f.payer_id.as_deref())
        .and("mandate_id =", f.mandate_id.as_deref())
        .and("deduction_id =", f.deduction_id.as_deref())
        .and("action =", f.action.as_deref())
        .and("outcome =", f.outcome.as_deref())
        .and("reason_code =", f.reason_code.as_deref())
        .and("actor_role =", f.actor_role.as_deref())
        .and("actor_subject =", f.actor_subject.as_deref())
        .and("at_us >=", f.from.map(micros))
        .and("at_us <", f.to.map(micros))
        .and(
            "action LIKE",
            f.action_prefix.as_ref().map(|p| format!("{p}%")),
        )
        .and("seq <=", q.until);
    if f.blocked_only {
        // The service's own constants, not caller input.
        let [denied, flagged] = BLOCKED_OUTCOMES;
        select.condition(&format!("outcome IN ('{denied}', '{flagged}')"));
    }
    let cursor = if q.newest_first { "seq <" } else { "seq >" };
    select.and(cursor, q.after);
    let (sql, binds) = select.ordered("seq", q.newest_first, q.limit);
    // Bounded by a settled position fixed on the primary: read where everything up to it is.
    let rows = backend::read_compliance(backend, true, sql, binds).await?;
    rows.iter().map(event_from).collect()
}

/// Up to `limit` events of a chain after position `after`, in chain order.
pub async fn chain_page<B: Backend>(
    backend: &B,
    chain_id: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    let binds = vec![chain_id.into(), after.into(), i64::from(limit).into()];
    let rows = backend::read(backend, CHAIN_PAGE, binds).await?;
    rows.iter().map(event_from).collect()
}

/// Up to `limit` chain ids of the scope after `after`, in order. A merchant's own chain comes
/// first (`after` empty), then its mandates' chains.
pub async fn chains<B: Backend>(
    backend: &B,
    scope: &ChainScope,
    after: &str,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let rows = match scope {
        ChainScope::All => {
            backend::read(
                backend,
                ALL_CHAINS,
                vec![after.into(), i64::from(limit).into()],
            )
            .await?
        }
        ChainScope::Merchant(merchant) => {
            let binds = vec![
                merchant.as_str().into(),
                after.strip_prefix("mandate:").unwrap_or("").into(),
                i64::from(limit).into(),
            ];
            let mut ids = Vec::new();
            if after.is_empty() {
                ids.push(format!("merchant:{merchant}"));
            }
            for row in backend::read(backend, MERCHANT_MANDATE_CHAINS, binds).await? {
                ids.push(row.text(0)?);
            }
            return Ok(ids);
        }
    };
    rows.iter().map(|row| row.text(0)).collect()
}

/// How many chains the scope has (a merchant's: its mandates' and its own).
pub async fn chain_count<B: Backend>(backend: &B, scope: &ChainScope) -> Result<i64, StoreError> {
    let row = match scope {
        ChainScope::All => backend::read_optional(backend, COUNT_CHAINS, vec![]).await?,
        ChainScope::Merchant(merchant) => {
            let binds = vec![merchant.as_str().into()];
            backend::read_optional(backend, COUNT_MERCHANT_MANDATES, binds).await?
        }
    };
    let count = row.map(|row| row.int(0)).transpose()?.unwrap_or(0);
    Ok(match scope {
        ChainScope::All => count,
        ChainScope::Merchant(_) => count + 1,
    })
}

/// A chain that has events but no head, if any.
pub async fn headless_chain<B: Backend>(backend: &B) -> Result<Option<String>, StoreError> {
    let row = backend::read_optional(backend, HEADLESS_CHAIN, vec![]).await?;
    row.map(|row| row.text(0)).transpose()
}

/// The highest `seq` such that no event with a lower one can still commit: every event up to
/// it is visible from now on.
pub async fn settled_seq<B: Backend>(backend: &B) -> Result<i64, StoreError> {
    if B::AUDIT_APPEND_FENCE.is_empty() {
        let row = backend::read_optional(backend, LAST_SEQ, vec![]).await?;
        return row.map_or(Ok(0), |row| row.int(0));
    }
    let mut tx = backend.begin_write().await?;
    B::execute(&mut tx, B::AUDIT_APPEND_FENCE.into(), vec![]).await?;
    let last = backend::fetch_optional::<B>(&mut tx, LAST_SEQ, vec![])
        .await?
        .map_or(Ok(0), |row| row.int(0))?;
    B::commit(tx).await?;
    Ok(last)
}

/// Up to `limit` chain heads as of append position `seq`, in chain order after `after`.
pub async fn heads_as_of<B: Backend>(
    backend: &B,
    seq: i64,
    after: &str,
    limit: u32,
) -> Result<Vec<HeadAt>, StoreError> {
    let binds = vec![seq.into(), after.into(), i64::from(limit).into()];
    let rows = backend::read(backend, HEADS_AS_OF, binds).await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?, row.text(2)?)))
        .collect()
}

/// A mandate's first `limit` versions, each with when it was recorded.
pub async fn versions<B: Backend>(
    backend: &B,
    id: &MandateId,
    limit: u32,
) -> Result<Vec<(i64, Timestamp, Mandate)>, StoreError> {
    let binds = vec![id.as_str().into(), i64::from(limit).into()];
    let rows = backend::read_compliance(backend, true, VERSIONS, binds).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.int(0)?,
                timestamp(row.int(1)?)?,
                decode_mandate(&row.text(2)?)?,
            ))
        })
        .collect()
}
