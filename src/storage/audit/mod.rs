//! The audit trail's storage: events appended at the end of their hash chain inside the
//! transaction of the change they record, and chains read back whole for verification.

pub mod reads;

use std::collections::BTreeMap;

use super::backend::{self, Backend, StoredRow};
use super::plan::{Bind, Plan, Planned};
use super::rows::{micros, timestamp};
use super::{ChainHead, StoreError, StoredChain, TableCounts};
use crate::domain::audit::{AuditDraft, AuditEvent, GENESIS_HASH, event_hash};

/// Creates the chain's head, or advances it by `$2` positions, returning the new last position
/// and the hash before the run (the genesis hash for a new chain). On PostgreSQL the upsert
/// holds the head row's lock until commit.
const RESERVE_CHAIN_RUN: &str = "INSERT INTO audit_chain_heads (chain_id, last_seq, last_hash) \
    VALUES ($1, $2, $3) ON CONFLICT (chain_id) DO UPDATE \
    SET last_seq = audit_chain_heads.last_seq + $2 RETURNING last_seq, last_hash";
/// Sets a chain head read earlier in the same transaction (where no other write can come
/// between, under SQLite's single writer).
const PUT_CHAIN_HEAD: &str = "INSERT INTO audit_chain_heads (chain_id, last_seq, last_hash) \
    VALUES ($1, $2, $3) ON CONFLICT (chain_id) DO UPDATE SET last_seq = excluded.last_seq, \
    last_hash = excluded.last_hash";
const SET_CHAIN_HASH: &str = "UPDATE audit_chain_heads SET last_hash = $1 WHERE chain_id = $2";
/// Followed by `VALUES (…), (…)`, one row per event.
const INSERT_AUDIT_ROWS: &str = "INSERT INTO audit_events \
    (chain_id, chain_seq, at_us, actor_role, actor_subject, merchant_id, payer_id, mandate_id, \
     deduction_id, action, outcome, reason_code, request_id, details, prev_hash, hash) ";
const AUDIT_CHAIN: &str = "SELECT seq, chain_id, chain_seq, at_us, actor_role, actor_subject, \
    merchant_id, payer_id, mandate_id, deduction_id, action, outcome, reason_code, request_id, \
    details, prev_hash, hash FROM audit_events WHERE chain_id = $1 ORDER BY chain_seq";
pub const CHAIN_HEAD: &str =
    "SELECT last_seq, last_hash FROM audit_chain_heads WHERE chain_id = $1";
const CHAIN_IDS: &str = "SELECT chain_id FROM audit_chain_heads ORDER BY chain_id";
const COUNTS: &str = "SELECT \
    (SELECT COUNT(*) FROM mandates), (SELECT COUNT(*) FROM mandate_versions), \
    (SELECT COUNT(*) FROM audit_events), (SELECT COUNT(*) FROM idempotency_keys)";

/// Places `drafts` at the end of their chains inside the transaction on `conn`, in order.
pub async fn append<B: Backend>(
    conn: &mut B::Conn,
    drafts: &[AuditDraft],
) -> Result<(), StoreError> {
    let mut plan = Plan::default();
    plan_appends::<B>(conn, drafts, &mut plan, &mut None).await?;
    // New rows, and chain heads `plan_appends` has locked: the order cannot matter.
    B::run_plan_at_once(conn, plan).await
}

/// Takes the positions for `drafts` at the end of their chains and plans their rows. Each run
/// of events on one chain takes the chain head's row first (creating it, or advancing it by the
/// run's length, in one statement run now: the hashes need its answer), so concurrent appends
/// to one chain queue on its lock (PostgreSQL) or on the single writer (SQLite) while other
/// chains proceed; the run's rows (one multi-row insert) and the head's new hash go into
/// `plan`. A run on the chain of `known` (a head read earlier in this transaction, with nothing
/// able to write between: SQLite's single writer) takes its positions from it and only plans
/// the head's new value, one trip fewer.
pub async fn plan_appends<B: Backend>(
    conn: &mut B::Conn,
    drafts: &[AuditDraft],
    plan: &mut Plan,
    known: &mut Option<ChainHead>,
) -> Result<(), StoreError> {
    for run in drafts.chunk_by(|a, b| a.chain_id() == b.chain_id()) {
        let chain_id = run[0].chain_id();
        let length = i64::try_from(run.len()).unwrap_or(i64::MAX);
        let head = known.as_mut().filter(|head| head.chain_id == chain_id);
        let (last_seq, mut prev_hash) = match &head {
            Some(head) => {
                let last_seq = head
                    .last_seq
                    .checked_add(length)
                    .ok_or_else(|| StoreError::Corrupt(format!("chain {chain_id} is full")))?;
                (last_seq, head.last_hash.clone())
            }
            None => {
                let binds = vec![chain_id.clone().into(), length.into(), GENESIS_HASH.into()];
                let row = backend::fetch_one::<B>(conn, RESERVE_CHAIN_RUN, binds).await?;
                (row.int(0)?, row.text(1)?)
            }
        };
        let mut rows = Vec::with_capacity(run.len());
        prev_hash = chain_rows(&mut rows, &chain_id, last_seq - length, prev_hash, run);
        plan.push_rows(INSERT_AUDIT_ROWS, rows, "");
        if let Some(head) = head {
            head.last_seq = last_seq;
            head.last_hash.clone_from(&prev_hash);
            plan.push(
                PUT_CHAIN_HEAD,
                vec![chain_id.into(), last_seq.into(), prev_hash.into()],
                1,
            );
        } else {
            plan.push(SET_CHAIN_HASH, vec![prev_hash.into(), chain_id.into()], 1);
        }
    }
    Ok(())
}

/// The rows of `run`, events placed on `chain_id` after position `after` whose hash is
/// `prev_hash`, added to `rows`; returns the hash of the run's last event.
fn chain_rows<'a>(
    rows: &mut Vec<Vec<Bind>>,
    chain_id: &str,
    after: i64,
    mut prev_hash: String,
    run: impl IntoIterator<Item = &'a AuditDraft>,
) -> String {
    for (offset, draft) in (1..).zip(run) {
        let chain_seq = after + offset;
        let hash = event_hash(chain_id, chain_seq, draft, &prev_hash);
        let prev = std::mem::replace(&mut prev_hash, hash.clone());
        rows.push(vec![
            chain_id.into(),
            chain_seq.into(),
            micros(draft.at).into(),
            draft.actor_role.clone().into(),
            draft.actor_subject.clone().into(),
            draft.merchant_id.clone().into(),
            draft.payer_id.clone().into(),
            draft.mandate_id.clone().into(),
            draft.deduction_id.clone().into(),
            draft.action.clone().into(),
            draft.outcome.clone().into(),
            draft.reason_code.clone().into(),
            draft.request_id.clone().into(),
            draft.details.clone().into(),
            prev.into(),
            hash.into(),
        ]);
    }
    prev_hash
}

/// Creates chain heads or advances them, in chain order: (chain, events, genesis hash) rows
/// follow it. Returns each chain's new last position and the hash before its run.
const RESERVE_CHAIN_RUNS: &str = "INSERT INTO audit_chain_heads (chain_id, last_seq, last_hash) ";
const RESERVE_CHAIN_RUNS_TAIL: &str = " ON CONFLICT (chain_id) DO UPDATE \
    SET last_seq = audit_chain_heads.last_seq + excluded.last_seq \
    RETURNING chain_id, last_seq, last_hash";
/// Followed by `VALUES` of (chain, hash): each chain's new last hash.
const SET_CHAIN_HASHES: &str = "UPDATE audit_chain_heads SET last_hash = v.last_hash FROM (";
const SET_CHAIN_HASHES_TAIL: &str =
    ") AS v (chain_id, last_hash) WHERE audit_chain_heads.chain_id = v.chain_id";

/// Places the events of many changes at the end of their chains inside the transaction on
/// `conn` (where rows are locked: PostgreSQL), each chain's events in the order given: the
/// chain heads are taken in one statement in chain order (so concurrent appends never wait
/// on each other in a cycle), then every event goes in one insert and every head's new hash
/// in one update.
pub async fn append_many<B: Backend>(
    conn: &mut B::Conn,
    drafts: impl IntoIterator<Item = &AuditDraft>,
) -> Result<(), StoreError> {
    let mut chains: BTreeMap<String, Vec<&AuditDraft>> = BTreeMap::new();
    for draft in drafts {
        chains.entry(draft.chain_id()).or_default().push(draft);
    }
    let runs = chains
        .iter()
        .map(|(chain_id, run)| {
            let length = i64::try_from(run.len()).unwrap_or(i64::MAX);
            vec![chain_id.clone().into(), length.into(), GENESIS_HASH.into()]
        })
        .collect();
    let Some(reserve) = Planned::rows(RESERVE_CHAIN_RUNS, runs, RESERVE_CHAIN_RUNS_TAIL) else {
        return Ok(());
    };
    let heads = B::fetch(conn, reserve.sql, reserve.binds).await?;
    let mut placed = BTreeMap::new();
    for row in &heads {
        placed.insert(row.text(0)?, (row.int(1)?, row.text(2)?));
    }
    let (mut rows, mut hashes) = (vec![], vec![]);
    for (chain_id, run) in chains {
        let (last_seq, prev_hash) = placed
            .remove(&chain_id)
            .ok_or_else(|| StoreError::Corrupt(format!("chain {chain_id} was not reserved")))?;
        let length = i64::try_from(run.len()).unwrap_or(i64::MAX);
        let last_hash = chain_rows(&mut rows, &chain_id, last_seq - length, prev_hash, run);
        hashes.push(vec![chain_id.into(), last_hash.into()]);
    }
    let mut plan = Plan::default();
    plan.push_rows(INSERT_AUDIT_ROWS, rows, "");
    plan.push_rows(SET_CHAIN_HASHES, hashes, SET_CHAIN_HASHES_TAIL);
    // New rows, and chain heads taken above: the order cannot matter.
    B::run_plan_at_once(conn, plan).await
}

/// The read of a mandate chain's head (for a transaction that will append to it).
pub fn head_read(reads: &mut Plan, chain_id: String) {
    reads.read(CHAIN_HEAD, vec![chain_id.into()]);
}

/// The head from the rows of [`head_read`]: position 0 and the genesis hash for a new chain.
pub fn head_from(chain_id: String, rows: &[impl StoredRow]) -> Result<ChainHead, StoreError> {
    let (last_seq, last_hash) = match rows.first() {
        Some(row) => (row.int(0)?, row.text(1)?),
        None => (0, GENESIS_HASH.to_owned()),
    };
    Ok(ChainHead {
        chain_id,
        last_seq,
        last_hash,
    })
}

/// Appends an event that changes nothing else (an access refusal), in a transaction of its own.
pub async fn append_alone<B: Backend>(backend: &B, draft: &AuditDraft) -> Result<(), StoreError> {
    let mut tx = backend.begin_write().await?;
    append::<B>(&mut tx, std::slice::from_ref(draft)).await?;
    B::commit(tx).await
}

/// One chain's events in order and its recorded head, read in one snapshot.
pub async fn chain<B: Backend>(backend: &B, chain_id: &str) -> Result<StoredChain, StoreError> {
    let mut reads = Plan::default();
    reads.read(AUDIT_CHAIN, vec![chain_id.into()]);
    reads.read(CHAIN_HEAD, vec![chain_id.into()]);
    let mut snapshot = backend.begin_snapshot().await?;
    let results = B::read_batch(&mut snapshot, reads).await?;
    B::end_snapshot(snapshot).await?;
    let [events, head] = <[Vec<B::Row>; 2]>::try_from(results)
        .map_err(|_| StoreError::Corrupt("a read batch came back short".into()))?;
    let head = match head.first() {
        Some(row) => Some((row.int(0)?, row.text(1)?)),
        None => None,
    };
    Ok(StoredChain {
        events: events.iter().map(event_from).collect::<Result<_, _>>()?,
        head,
    })
}

fn event_from(row: &impl StoredRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        seq: row.int(0)?,
        chain_id: row.text(1)?,
        chain_seq: row.int(2)?,
        draft: AuditDraft {
            at: timestamp(row.int(3)?)?,
            actor_role: row.text(4)?,
            actor_subject: row.text(5)?,
            merchant_id: row.opt_text(6)?,
            payer_id: row.opt_text(7)?,
            mandate_id: row.opt_text(8)?,
            deduction_id: row.opt_text(9)?,
            action: row.text(10)?,
            outcome: row.text(11)?,
            reason_code: row.opt_text(12)?,
            request_id: row.opt_text(13)?,
            details: row.text(14)?,
            // The stored event's own `chain_id` says where it is.
            chain: None,
        },
        prev_hash: row.text(15)?,
        hash: row.text(16)?,
    })
}

/// A chain's recorded head, if it has one.
pub async fn head<B: Backend>(
    backend: &B,
    chain_id: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    let row = backend::read_optional(backend, CHAIN_HEAD, vec![chain_id.into()]).await?;
    row.map(|row| Ok((row.int(0)?, row.text(1)?))).transpose()
}

pub async fn chain_ids<B: Backend>(backend: &B) -> Result<Vec<String>, StoreError> {
    let rows = backend::read(backend, CHAIN_IDS, vec![]).await?;
    rows.iter().map(|row| row.text(0)).collect()
}

pub async fn table_counts<B: Backend>(backend: &B) -> Result<TableCounts, StoreError> {
    let row = backend::read_optional(backend, COUNTS, vec![])
        .await?
        .ok_or_else(|| StoreError::Corrupt("the counts came back empty".into()))?;
    Ok(TableCounts {
        mandates: row.int(0)?,
        mandate_versions: row.int(1)?,
        audit_events: row.int(2)?,
        idempotency_keys: row.int(3)?,
    })
}
