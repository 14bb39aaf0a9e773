//! What the service stored, read around it: rows of every table, audit events and ledger totals,
//! to show that a call wrote nothing, or that money is conserved.

use std::collections::BTreeSet;

use withholding::domain::audit::AuditDraft;
use withholding::storage::LedgerTotals;

use super::{Backend, TestApp};

/// One row per line of every table a deduction RPC can write, except the audit trail (counted
/// separately): comparing two snapshots shows whether anything at all was written.
const SNAPSHOT: [&str; 11] = [
    "SELECT 'mandate ' || mandate_id || ' ' || status || ' ' || CAST(version AS TEXT) || ' ' || COALESCE(CAST(last_collected_at_us AS TEXT), '-') || ' ' || CAST(document AS TEXT) FROM mandates",
    "SELECT 'mandate_version ' || mandate_id || ' ' || CAST(version AS TEXT) FROM mandate_versions",
    "SELECT 'idempotency ' || scope || ' ' || request_id FROM idempotency_keys",
    "SELECT 'deduction ' || deduction_id || ' ' || status || ' ' || CAST(document AS TEXT) FROM deductions",
    "SELECT 'usage ' || mandate_id || ' ' || period_key || ' ' || CAST(amount_minor AS TEXT) || ' ' || CAST(debit_count AS TEXT) FROM mandate_usage",
    "SELECT 'notice ' || notice_id || ' ' || COALESCE(used_by, '-') || ' ' || CAST(document AS TEXT) FROM notices",
    "SELECT 'refund ' || refund_id || ' ' || CAST(document AS TEXT) FROM refunds",
    "SELECT 'approval ' || approval_id || ' ' || status || ' ' || CAST(document AS TEXT) FROM approvals",
    "SELECT 'account ' || account_id || ' ' || CAST(balance_minor AS TEXT) FROM ledger_accounts",
    "SELECT 'movement ' || movement_id FROM ledger_movements",
    "SELECT 'entry ' || CAST(entry_id AS TEXT) FROM ledger_entries",
];

/// A direct connection to the test database, as someone with database access would read it.
pub enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    /// A connection to the app's database.
    pub async fn open(app: &TestApp) -> Self {
        Self::connect(app.backend, &app.db.url).await
    }

    pub async fn connect(backend: Backend, url: &str) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap()),
            Backend::Postgres => Self::Postgres(sqlx::PgPool::connect(url).await.unwrap()),
        }
    }

    /// Runs one statement straight against the database, around the service; the rows it
    /// changed.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            Self::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
        }
    }

    async fn rows(&self) -> Vec<String> {
        let mut rows = vec![];
        for sql in SNAPSHOT {
            let found: Vec<(String,)> = match self {
                Self::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
                Self::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
            };
            rows.extend(found.into_iter().map(|(row,)| row));
        }
        rows.sort();
        rows
    }

    /// (period key, amount in minor units, debit count) of every usage row of the mandate
    /// (DESIGN §8), to prove that a declined or failed deduction reserved nothing.
    pub async fn usage(&self, mandate_id: &str) -> Vec<(String, i64, i64)> {
        const SQL: &str = "SELECT period_key, amount_minor, debit_count FROM mandate_usage \
                           WHERE mandate_id = $1 ORDER BY period_key";
        match self {
            Self::Sqlite(pool) => sqlx::query_as(SQL)
                .bind(mandate_id.to_owned())
                .fetch_all(pool)
                .await
                .unwrap(),
            Self::Postgres(pool) => sqlx::query_as(SQL)
                .bind(mandate_id.to_owned())
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    pub async fn close(self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// Everything the service stores: the rows, the number of audit events, the ledger totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub rows: Vec<String>,
    pub audit_events: i64,
    pub ledger: LedgerTotals,
}

impl State {
    /// What differs between this state and a later one, for failure messages.
    pub fn diff(&self, after: &State) -> String {
        let b: BTreeSet<&String> = self.rows.iter().collect();
        let a: BTreeSet<&String> = after.rows.iter().collect();
        format!(
            "removed {:?}, added {:?}, audit events {} -> {}, ledger {:?} -> {:?}",
            b.difference(&a).collect::<Vec<_>>(),
            a.difference(&b).collect::<Vec<_>>(),
            self.audit_events,
            after.audit_events,
            self.ledger,
            after.ledger
        )
    }
}

pub fn assert_unchanged(before: &State, after: &State, what: &str) {
    assert!(
        before == after,
        "{what} changed the database: {}",
        before.diff(after)
    );
}

/// Money is conserved: balances and ledger entries each sum to zero, and no wallet is negative.
pub fn assert_ledger_balanced(totals: LedgerTotals) {
    assert_eq!(
        totals.sum_minor, 0,
        "account balances do not sum to zero: {totals:?}"
    );
    assert_eq!(
        totals.entries_sum_minor, 0,
        "ledger entries do not sum to zero: {totals:?}"
    );
    assert!(
        totals.min_wallet_minor >= 0,
        "a wallet went negative: {totals:?}"
    );
}

/// (action, outcome, reason code) of audit events.
pub fn steps(events: &[AuditDraft]) -> Vec<(&str, &str, Option<&str>)> {
    events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.outcome.as_str(),
                e.reason_code.as_deref(),
            )
        })
        .collect()
}

impl TestApp {
    /// The state of the database now, read through `raw` and the store.
    pub async fn state(&self, raw: &Raw) -> State {
        let counts = self.counts().await;
        State {
            rows: raw.rows().await,
            audit_events: counts.audit_events,
            ledger: self.db().deductions.ledger_totals().await.unwrap(),
        }
    }

    pub async fn ledger_totals(&self) -> LedgerTotals {
        self.db().deductions.ledger_totals().await.unwrap()
    }

    /// What every test may end with: money is conserved, no wallet is negative, and every audit
    /// chain verifies.
    pub async fn finish(&self) {
        assert_ledger_balanced(self.ledger_totals().await);
        self.verify_audit().await;
    }

    /// The events of a mandate's audit chain, oldest first.
    pub async fn mandate_chain(&self, mandate_id: &str) -> Vec<AuditDraft> {
        self.chain_events(&format!("mandate:{mandate_id}")).await
    }
}
