//! The events outbox (DESIGN §6a): one small row per mandate or deduction state change, planned
//! into the change's own transaction (a deduction's rows ride in the plan it already sends, one
//! multi-row insert), and read back by position for `WatchEvents`.
//!
//! Positions are gap-free for readers. On SQLite one writer commits in turn, so the position
//! given at insert is commit order. On PostgreSQL a sequence value taken at insert becomes
//! visible only at commit, so a reader could see 11 before a slower transaction commits 10 and
//! pass it for ever; rows are therefore inserted without a position (`seq` orders them: taken
//! under the mandate's row lock, one mandate's rows are in commit order) and a sequencer, one
//! at a time across replicas (the row lock of `event_positions`), gives positions to committed
//! rows in `seq` order and commits them at once, above every earlier position.

use jiff::Timestamp;

use super::StoreError;
use super::backend::{self, Backend, StoredRow};
use super::plan::Plan;
use super::rows::{micros, timestamp};
use super::store::SqlStore;
use crate::domain::deduction::Deduction;
use crate::domain::event::{Event, EventCursor, EventKind, EventScope};
use crate::domain::mandate::Mandate;

/// Followed by `VALUES (…), (…)`, one row per event.
const INSERT_EVENTS: &str = "INSERT INTO events (at_us, merchant_id, payer_id, mandate_id, \
    deduction_id, kind, status, mandate_version) ";
const BY_MERCHANT: &str = "SELECT pos, at_us, merchant_id, payer_id, mandate_id, deduction_id, \
    kind, status, mandate_version FROM events WHERE merchant_id = $1 AND pos > $2 \
    ORDER BY pos LIMIT $3";
const BY_PAYER: &str = "SELECT pos, at_us, merchant_id, payer_id, mandate_id, deduction_id, \
    kind, status, mandate_version FROM events WHERE payer_id = $1 AND pos > $2 \
    ORDER BY pos LIMIT $3";
const DELETED_THROUGH: &str = "SELECT deleted_through FROM event_positions WHERE id = 1";
/// PostgreSQL: the last position the sequencer gave (committed).
const HEAD_SEQUENCED: &str = "SELECT last_pos FROM event_positions WHERE id = 1";
/// SQLite: the newest position, or the last deleted when every row is gone.
const HEAD_SERIAL: &str = "SELECT COALESCE((SELECT MAX(pos) FROM events), 0), deleted_through \
    FROM event_positions WHERE id = 1";
/// The sequencer's statements each need a snapshot of their own, taken after the turn: said
/// explicitly rather than trusted to the server's default.
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";
const ANY_UNSEQUENCED: &str = "SELECT 1 FROM events WHERE pos IS NULL LIMIT 1";
/// Takes the sequencer's turn; no row when another replica has it (it sequences for everyone).
const SEQUENCER_TURN: &str =
    "SELECT last_pos FROM event_positions WHERE id = 1 FOR UPDATE SKIP LOCKED";
/// Run after [`SEQUENCER_TURN`], in a statement of its own so that its snapshot sees every
/// commit before the turn was taken (READ COMMITTED): positions `$1 + 1…` to at most `$2`
/// committed rows without one, in `seq` order, and the new last position.
const SEQUENCE: &str = "WITH next AS (\
        SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM events \
        WHERE pos IS NULL ORDER BY seq LIMIT $2), \
    given AS (UPDATE events SET pos = $1 + next.n FROM next WHERE events.seq = next.seq \
        RETURNING 1) \
    UPDATE event_positions SET last_pos = $1 + (SELECT count(*) FROM given) WHERE id = 1 \
    RETURNING last_pos";
/// The newest of the oldest `$2` positioned rows older than `$1`.
const OLD_THROUGH: &str = "SELECT MAX(pos) FROM (SELECT pos FROM events \
    WHERE pos IS NOT NULL AND at_us < $1 ORDER BY pos LIMIT $2) AS old";
const DELETE_THROUGH: &str = "DELETE FROM events WHERE pos <= $1";
const SET_DELETED_THROUGH: &str = "UPDATE event_positions SET deleted_through = \
    CASE WHEN deleted_through < $1 THEN $1 ELSE deleted_through END WHERE id = 1";

/// One event row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub at: Timestamp,
    pub merchant_id: String,
    pub payer_id: String,
    pub mandate_id: String,
    pub deduction_id: Option<String>,
    pub kind: EventKind,
    pub status: &'static str,
    pub mandate_version: i64,
}

impl EventRow {
    /// The mandate as it now stands, changed by `kind`.
    pub fn mandate(mandate: &Mandate, kind: EventKind) -> Self {
        Self {
            at: mandate.updated_at,
            merchant_id: mandate.merchant_id.to_string(),
            payer_id: mandate.payer_id.to_string(),
            mandate_id: mandate.id.to_string(),
            deduction_id: None,
            kind,
            status: mandate.status.as_str(),
            mandate_version: mandate.version,
        }
    }

    /// The deduction as it now stands.
    pub fn deduction(deduction: &Deduction, at: Timestamp) -> Self {
        Self {
            at,
            merchant_id: deduction.merchant_id.to_string(),
            payer_id: deduction.payer_id.to_string(),
            mandate_id: deduction.mandate_id.to_string(),
            deduction_id: Some(deduction.id.clone()),
            kind: EventKind::of_deduction(deduction.status),
            status: deduction.status.as_str(),
            mandate_version: deduction.mandate_version,
        }
    }
}

/// Plans `rows` as one multi-row insert (nothing for none).
pub fn plan_rows(plan: &mut Plan, rows: &[EventRow]) {
    let rows = rows
        .iter()
        .map(|row| {
            vec![
                micros(row.at).into(),
                row.merchant_id.clone().into(),
                row.payer_id.clone().into(),
                row.mandate_id.clone().into(),
                row.deduction_id.clone().into(),
                row.kind.as_str().into(),
                row.status.into(),
                row.mandate_version.into(),
            ]
        })
        .collect();
    plan.push_rows(INSERT_EVENTS, rows, "");
}

/// A page of one scope's events and what retention had deleted when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Every event up to this position had been deleted by retention, read after the events:
    /// a page read from before it may lack events.
    pub deleted_through: i64,
}

/// Reading the outbox and keeping it.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Gives positions to committed events that have none, at most `limit` of them (PostgreSQL;
    /// nothing to do on SQLite, or while another replica sequences). Returns how many.
    async fn sequence_events(&self, limit: u32) -> Result<u64, StoreError>;

    /// The last position given: every event at or before it is readable.
    async fn event_head(&self) -> Result<EventCursor, StoreError>;

    /// The events of `scope` after `after`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        scope: &EventScope,
        after: EventCursor,
        limit: u32,
    ) -> Result<EventPage, StoreError>;

    /// Deletes positioned events older than `before`, at most about `limit`; how many.
    async fn delete_events_before(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;
}

#[async_trait::async_trait]
impl<B: Backend> EventStore for SqlStore<B> {
    async fn sequence_events(&self, limit: u32) -> Result<u64, StoreError> {
        if B::SERIAL_WRITER {
            return Ok(0);
        }
        let backend = self.backend();
        if backend::read_optional(backend, ANY_UNSEQUENCED, vec![])
            .await?
            .is_none()
        {
            return Ok(0);
        }
        let mut tx = backend.begin_write().await?;
        B::execute(&mut tx, READ_COMMITTED.into(), vec![]).await?;
        let Some(turn) = backend::fetch_optional::<B>(&mut tx, SEQUENCER_TURN, vec![]).await?
        else {
            B::rollback(tx).await?;
            return Ok(0);
        };
        let last = turn.int(0)?;
        let binds = vec![last.into(), i64::from(limit).into()];
        let now = backend::fetch_one::<B>(&mut tx, SEQUENCE, binds)
            .await?
            .int(0)?;
        B::commit(tx).await?;
        Ok(u64::try_from(now - last).unwrap_or(0))
    }

    async fn event_head(&self) -> Result<EventCursor, StoreError> {
        let sql = if B::SERIAL_WRITER {
            HEAD_SERIAL
        } else {
            HEAD_SEQUENCED
        };
        let row = backend::read_optional(self.backend(), sql, vec![])
            .await?
            .ok_or_else(|| StoreError::Corrupt("event_positions has no row".into()))?;
        let head = if B::SERIAL_WRITER {
            row.int(0)?.max(row.int(1)?)
        } else {
            row.int(0)?
        };
        Ok(EventCursor::at(head))
    }

    async fn events_after(
        &self,
        scope: &EventScope,
        after: EventCursor,
        limit: u32,
    ) -> Result<EventPage, StoreError> {
        let (sql, owner) = match scope {
            EventScope::Merchant(id) => (BY_MERCHANT, id),
            EventScope::Payer(id) => (BY_PAYER, id),
        };
        let mut conn = self.backend().reader().await?;
        let binds = vec![
            owner.clone().into(),
            after.position().into(),
            i64::from(limit).into(),
        ];
        let rows = B::fetch(&mut conn, sql.into(), binds).await?;
        // After the rows: a sweep that committed before them shows here.
        let deleted = backend::fetch_one::<B>(&mut conn, DELETED_THROUGH, vec![]).await?;
        Ok(EventPage {
            events: rows.iter().map(event_from).collect::<Result<_, _>>()?,
            deleted_through: deleted.int(0)?,
        })
    }

    async fn delete_events_before(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.backend().begin_write().await?;
        let binds = vec![micros(before).into(), i64::from(limit).into()];
        let through = backend::fetch_one::<B>(&mut tx, OLD_THROUGH, binds)
            .await?
            .opt_int(0)?;
        let Some(through) = through else {
            B::rollback(tx).await?;
            return Ok(0);
        };
        let deleted = B::execute(&mut tx, DELETE_THROUGH.into(), vec![through.into()]).await?;
        B::execute(&mut tx, SET_DELETED_THROUGH.into(), vec![through.into()]).await?;
        B::commit(tx).await?;
        Ok(deleted)
    }
}

fn event_from(row: &impl StoredRow) -> Result<Event, StoreError> {
    let kind = row.text(6)?;
    Ok(Event {
        cursor: EventCursor::at(row.int(0)?),
        at: timestamp(row.int(1)?)?,
        merchant_id: row.text(2)?,
        payer_id: row.text(3)?,
        mandate_id: row.text(4)?,
        deduction_id: row.opt_text(5)?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("event kind {kind}")))?,
        status: row.text(7)?,
        mandate_version: row.int(8)?,
    })
}
