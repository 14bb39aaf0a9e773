//! Persistence: the [`Store`] and [`DeductionStore`] traits, implemented once
//! ([`store::SqlStore`]) over a [`backend::Backend`] — SQLite (the embedded default) or
//! PostgreSQL (production), chosen by the database URL. The SQL lives with its aggregate:
//! `mandates`, `audit`, `ledger`, `deductions` (execute, facts, settle), `refunds`,
//! `approvals`, `notices`, `policies`, `queries`. Every write that changes a mandate writes its
//! version row and its audit event in the same transaction.

mod approvals;
mod audit;
pub mod backend;
mod deductions;
mod errors;
pub mod events;
mod keyed;
mod ledger;
mod mandates;
mod notices;
pub(crate) mod plan;
mod policies;
mod postgres;
mod queries;
mod refunds;
mod rows;
pub mod settlement;
mod sqlite;
mod store;

use std::sync::Arc;

use jiff::Timestamp;

use crate::domain::audit::{AuditDraft, AuditEvent};
use crate::domain::ids::{ContractId, MandateId, MerchantId, PayerId};
use crate::domain::mandate::{Mandate, MandateStatus};

pub use audit::reads::{AuditQuery, ChainScope, HeadAt};
pub use deductions::batch::{BatchStats, Decision, WORKERS as BATCH_WORKERS};
pub use deductions::facts::Asked;
pub use deductions::{
    ChargeUpdate, Collected, Decide, DecideRefund, DeductionInput, DeductionQuery, DeductionStore,
    DeductionWrites, Executed, Keyed, KeyedRequest, KeyedWrite, LedgerTotals, NewCharge, RefundAsk,
    RefundWrites, Refunded, Reservation, Settle, SettleContext, SettleDecision,
};
pub use postgres::Postgres;
pub use settlement::SettlementStore;
pub use sqlite::Sqlite;
pub use store::SqlStore;

/// Told the number of writes each SQLite group commit committed (metrics listen here); set once,
/// at start-up, by whoever reports them.
static GROUP_COMMIT_OBSERVER: std::sync::OnceLock<fn(u32)> = std::sync::OnceLock::new();

/// Sets what is told of each SQLite group commit (the first setting stays).
pub fn observe_group_commits(observer: fn(u32)) {
    let _ = GROUP_COMMIT_OBSERVER.set(observer);
}

fn group_committed(writes: u32) {
    if let Some(observe) = GROUP_COMMIT_OBSERVER.get() {
        observe(writes);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else changed the row (or took the idempotency key) first; read again and retry.
    #[error("concurrent change; read again and retry")]
    Conflict,
    /// A balance or counter would leave the range a 64-bit column holds; nothing was written.
    #[error("a stored amount would be out of range: {0}")]
    OutOfRange(String),
    /// No connection to the database could be had in time (all busy, or the database down), or
    /// it broke. The same request may be sent again: under its request id a retry finds what
    /// was written, if anything was.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back into the domain: a bug or tampering.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// The read replica named cannot serve (not PostgreSQL, not a hot standby, unreachable).
    #[error("the read database: {0}")]
    ReadReplica(String),
    /// Any other database error (see `errors.rs` for the ones that mean something else).
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The shared transaction a write joined (SQLite group commit) failed to commit; none of
    /// its writes happened.
    #[error("the group commit this write joined failed: {0}")]
    GroupCommit(String),
}

/// What a caller's request id was used for, and for which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub request_id: String,
    /// SHA-256 of the request as sent.
    pub fingerprint: String,
    pub mandate_id: MandateId,
    /// The mandate version the request produced.
    pub mandate_version: i64,
    pub created_at: Timestamp,
}

/// Result of inserting a mandate.
#[derive(Debug)]
pub enum Inserted {
    New,
    /// The merchant already has a mandate with this contract id, created by the request with
    /// `fingerprint`.
    Existing {
        mandate: Box<Mandate>,
        fingerprint: String,
    },
}

/// A new mandate to store, with its first version and audit event.
pub struct MandateInsert<'a> {
    pub mandate: &'a Mandate,
    /// When time ends the mandate, for the expiry sweep.
    pub expires_at: Option<Timestamp>,
    /// SHA-256 of the creating request, kept for replays under the contract id.
    pub fingerprint: &'a str,
    pub audit: &'a AuditDraft,
}

/// A changed mandate to store, conditional on nobody having changed it since `expected_version`.
pub struct MandateUpdate<'a> {
    pub mandate: &'a Mandate,
    pub expected_version: i64,
    /// When time ends the mandate, for the expiry sweep.
    pub expires_at: Option<Timestamp>,
    pub audit: &'a AuditDraft,
    pub idempotency: Option<&'a IdempotencyRecord>,
}

/// Filters for listing mandates, newest first.
#[derive(Debug, Clone, Default)]
pub struct MandateQuery {
    pub merchant_id: Option<MerchantId>,
    pub payer_id: Option<PayerId>,
    pub status: Option<MandateStatus>,
    pub contract_id: Option<ContractId>,
    /// Only mandates older than this one (the page cursor).
    pub before: Option<MandateId>,
    pub limit: u32,
}

/// Row counts, for operators and tests comparing the database before and after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    pub mandates: i64,
    pub mandate_versions: i64,
    pub audit_events: i64,
    pub idempotency_keys: i64,
}

/// One audit chain as stored: its events in order and its recorded head (last position, hash).
pub struct StoredChain {
    pub events: Vec<AuditEvent>,
    pub head: Option<(i64, String)>,
}

/// An audit chain's head as read inside a write transaction: where its next event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub chain_id: String,
    /// 0 for a chain with no events yet.
    pub last_seq: i64,
    pub last_hash: String,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new mandate with its first version and audit event, unless the merchant's
    /// contract id is taken.
    async fn insert_mandate(&self, insert: MandateInsert<'_>) -> Result<Inserted, StoreError>;

    /// Stores a changed mandate, its version row, its audit event and the idempotency record
    /// atomically; [`StoreError::Conflict`] if the version moved or the key was taken meanwhile.
    async fn update_mandate(&self, update: MandateUpdate<'_>) -> Result<(), StoreError>;

    async fn mandate(&self, id: &MandateId) -> Result<Option<Mandate>, StoreError>;

    /// The version recorded last at or before `at`.
    async fn mandate_as_of(
        &self,
        id: &MandateId,
        at: Timestamp,
    ) -> Result<Option<Mandate>, StoreError>;

    async fn mandate_version(
        &self,
        id: &MandateId,
        version: i64,
    ) -> Result<Option<Mandate>, StoreError>;

    async fn list_mandates(&self, query: &MandateQuery) -> Result<Vec<Mandate>, StoreError>;

    /// Live mandates whose time runs out at or before `at`, at most `limit`.
    async fn mandates_expiring_by(
        &self,
        at: Timestamp,
        limit: u32,
    ) -> Result<Vec<MandateId>, StoreError>;

    /// Appends an event that changes nothing else (an access refusal).
    async fn append_audit(&self, draft: &AuditDraft) -> Result<(), StoreError>;

    async fn idempotency_record(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    async fn audit_chain(&self, chain_id: &str) -> Result<StoredChain, StoreError>;

    async fn audit_chain_ids(&self) -> Result<Vec<String>, StoreError>;

    async fn table_counts(&self) -> Result<TableCounts, StoreError>;

    /// Each connection pool's name, open connections and idle connections (for metrics).
    fn pool_stats(&self) -> Vec<(&'static str, u32, usize)>;

    /// WAL bytes the read replica has still to apply (for metrics); `None` without one.
    async fn replica_lag_bytes(&self) -> Result<Option<u64>, StoreError>;
}

/// The audit trail read back for compliance; every read is bounded by its `limit`.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// One page of a selection, in `seq` order.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// Up to `limit` events of a chain after position `after`, in chain order.
    async fn audit_chain_page(
        &self,
        chain_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// A chain's recorded head (last position and hash), if it has one.
    async fn audit_chain_head(&self, chain_id: &str) -> Result<Option<(i64, String)>, StoreError>;

    /// Up to `limit` chain ids of the scope after `after`, in order.
    async fn audit_chains(
        &self,
        scope: &ChainScope,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    async fn audit_chain_count(&self, scope: &ChainScope) -> Result<i64, StoreError>;

    /// A chain with events and no head (written around the service), if any.
    async fn headless_audit_chain(&self) -> Result<Option<String>, StoreError>;

    /// The highest `seq` below which no event can still appear.
    async fn settled_audit_seq(&self) -> Result<i64, StoreError>;

    /// Up to `limit` chain heads as of append position `seq`, in chain order after `after`.
    async fn audit_heads_as_of(
        &self,
        seq: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<HeadAt>, StoreError>;

    /// A mandate's first `limit` versions, each with when it was recorded.
    async fn mandate_versions(
        &self,
        id: &MandateId,
        limit: u32,
    ) -> Result<Vec<(i64, Timestamp, Mandate)>, StoreError>;
}

/// One database, seen through its store traits.
#[derive(Clone)]
pub struct Database {
    pub mandates: Arc<dyn Store>,
    pub deductions: Arc<dyn DeductionStore>,
    pub events: Arc<dyn events::EventStore>,
    pub settlement: Arc<dyn SettlementStore>,
    pub audit: Arc<dyn AuditStore>,
}

/// Opens (creating if needed) and migrates the database the URL names.
pub async fn open(url: &str) -> Result<Database, StoreError> {
    open_with_replica(url, None).await
}

/// Opens the database the URL names, with compliance reads served by the hot standby
/// `read_url` names, if any (PostgreSQL only).
pub async fn open_with_replica(url: &str, read_url: Option<&str>) -> Result<Database, StoreError> {
    let postgres = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
    if let Some(read_url) = read_url
        && (!postgres(url) || !postgres(read_url))
    {
        return Err(StoreError::ReadReplica(
            "a read replica serves a PostgreSQL database only; both URLs must be postgres://"
                .into(),
        ));
    }
    if url.starts_with("sqlite:") {
        let store = Arc::new(SqlStore::new(Sqlite::connect(url).await?));
        Ok(Database {
            mandates: store.clone(),
            deductions: store.clone(),
            events: store.clone(),
            settlement: store.clone(),
            audit: store,
        })
    } else if postgres(url) {
        let mut primary = Postgres::connect(url).await?;
        if let Some(read_url) = read_url {
            primary = primary.with_replica(read_url).await?;
        }
        let store = Arc::new(SqlStore::new(primary));
        Ok(Database {
            mandates: store.clone(),
            deductions: store.clone(),
            events: store.clone(),
            settlement: store.clone(),
            audit: store,
        })
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// The mandate store of the database the URL names (opened and migrated).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(open(url).await?.mandates)
}

/// Applies pending migrations to the database the URL names, and nothing else.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    open(url).await.map(drop)
}
