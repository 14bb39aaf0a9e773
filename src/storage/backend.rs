//! What differs between the two databases, as a trait: how a write transaction begins and ends,
//! how a plan of writes and a batch of reads are sent, the row lock clause, and whether one
//! writer runs every write transaction in turn. The store's logic ([`super::store::SqlStore`]
//! and the aggregate files beside it) is written once over it.

use std::borrow::Cow;
use std::future::Future;
use std::ops::DerefMut;

use super::StoreError;
use super::plan::{Bind, Plan};

/// A statement's text: the store's own constants, or text built from them (renumbered
/// placeholders, `VALUES` lists); no caller data is ever part of it.
pub type Sql = Cow<'static, str>;

/// One row as read, its columns by position. The store reads only integers and text.
pub trait StoredRow: Send + Sync + 'static {
    fn int(&self, column: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, column: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, column: usize) -> Result<String, StoreError>;
    fn opt_text(&self, column: usize) -> Result<Option<String>, StoreError>;
}

impl<R> StoredRow for R
where
    R: sqlx::Row + 'static,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn int(&self, column: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: usize) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// A database the store runs on (SQLite or PostgreSQL).
pub trait Backend: Send + Sync + Sized + 'static {
    /// A connection statements run on.
    type Conn: Send;
    type Row: StoredRow;
    /// A write transaction, on its connection.
    type Tx: DerefMut<Target = Self::Conn> + Send;
    /// A connection of the read pool.
    type Reader: DerefMut<Target = Self::Conn> + Send;
    /// A read-only transaction over one consistent snapshot.
    type Snapshot: DerefMut<Target = Self::Conn> + Send;

    /// Appended to a read whose rows the transaction must hold until it ends (`" FOR UPDATE"`);
    /// empty where one writer already serialises every write transaction.
    const ROW_LOCK: &'static str;
    /// Whether one writer runs every write transaction in turn (SQLite): then nothing can come
    /// between a transaction's reads and its writes, and no row locks are taken, so their
    /// order cannot matter.
    const SERIAL_WRITER: bool;
    /// A statement that, run in a write transaction, waits for every transaction appending
    /// audit events to end and holds off new ones until it ends: after it, no event with a
    /// lower seq than the highest visible can still commit. Empty where one writer already
    /// commits events in seq order.
    const AUDIT_APPEND_FENCE: &'static str;

    fn begin_write(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// A write transaction whose beginning may travel with its first reads
    /// ([`Backend::read_batch_first`]): one trip fewer where the backend can.
    fn begin_deferred(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    fn commit(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn rollback(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn reader(&self) -> impl Future<Output = Result<Self::Reader, StoreError>> + Send;

    fn begin_snapshot(&self) -> impl Future<Output = Result<Self::Snapshot, StoreError>> + Send;

    /// A connection for a compliance read, which a read replica may serve: with `current`,
    /// only once the replica has applied everything the primary had committed when this was
    /// called (else the primary's read pool); without, as far as the replica has got. The
    /// primary's read pool where no replica is configured.
    fn compliance_reader(
        &self,
        current: bool,
    ) -> impl Future<Output = Result<Self::Reader, StoreError>> + Send {
        let _ = current;
        self.reader()
    }

    /// How many bytes of WAL the read replica has still to apply to reach the primary's insert
    /// position; `None` without a read replica.
    fn replica_lag_bytes(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        std::future::ready(Ok(None))
    }

    /// A read-only snapshot for a compliance read, on the read replica where one is
    /// configured (as far as it has got).
    fn begin_compliance_snapshot(
        &self,
    ) -> impl Future<Output = Result<Self::Snapshot, StoreError>> + Send {
        self.begin_snapshot()
    }

    fn end_snapshot(
        snapshot: Self::Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs one statement; the rows it changed.
    fn execute(
        conn: &mut Self::Conn,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs one statement; its rows.
    fn fetch(
        conn: &mut Self::Conn,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;

    /// Runs reads in order (a read that locks holds its lock for those after it) and returns
    /// each one's rows.
    fn read_batch(
        conn: &mut Self::Conn,
        reads: Plan,
    ) -> impl Future<Output = Result<Vec<Vec<Self::Row>>, StoreError>> + Send;

    /// The first reads of a transaction from [`Backend::begin_deferred`].
    fn read_batch_first(
        tx: &mut Self::Tx,
        reads: Plan,
    ) -> impl Future<Output = Result<Vec<Vec<Self::Row>>, StoreError>> + Send;

    /// Runs a plan in its order; each statement must change the rows it says.
    fn run_plan(
        conn: &mut Self::Conn,
        plan: Plan,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs a plan whose statements cannot depend on one another's order (new rows, and rows
    /// the transaction has locked already, but for at most one): in as few trips as the
    /// backend can.
    fn run_plan_at_once(
        conn: &mut Self::Conn,
        plan: Plan,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Leaves a plan for the backend to send when it likes before the transaction ends
    /// (SQLite: with the writer's next statement); its failure fails the transaction.
    fn defer_plan(
        tx: &mut Self::Tx,
        plan: Plan,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Each connection pool's name, open connections and idle connections (for metrics).
    fn pool_stats(&self) -> Vec<(&'static str, u32, usize)>;
}

/// `sql` followed by the backend's row lock clause: the text itself where the backend has none.
pub fn locked<B: Backend>(sql: &'static str) -> Sql {
    if B::ROW_LOCK.is_empty() {
        Sql::Borrowed(sql)
    } else {
        Sql::Owned(format!("{sql}{}", B::ROW_LOCK))
    }
}

/// The rows of one statement on the read pool.
pub async fn read<B: Backend>(
    backend: &B,
    sql: impl Into<Sql>,
    binds: Vec<Bind>,
) -> Result<Vec<B::Row>, StoreError> {
    let mut conn = backend.reader().await?;
    B::fetch(&mut conn, sql.into(), binds).await
}

/// The rows of one compliance read: on the read replica where one is configured, with
/// `current` only once it has caught up with the primary (see [`Backend::compliance_reader`]).
pub async fn read_compliance<B: Backend>(
    backend: &B,
    current: bool,
    sql: impl Into<Sql>,
    binds: Vec<Bind>,
) -> Result<Vec<B::Row>, StoreError> {
    let mut conn = backend.compliance_reader(current).await?;
    B::fetch(&mut conn, sql.into(), binds).await
}

/// The first row of one statement on the read pool, if any.
pub async fn read_optional<B: Backend>(
    backend: &B,
    sql: impl Into<Sql>,
    binds: Vec<Bind>,
) -> Result<Option<B::Row>, StoreError> {
    Ok(read(backend, sql, binds).await?.into_iter().next())
}

/// The first row of one statement inside a transaction, if any.
pub async fn fetch_optional<B: Backend>(
    conn: &mut B::Conn,
    sql: impl Into<Sql>,
    binds: Vec<Bind>,
) -> Result<Option<B::Row>, StoreError> {
    Ok(B::fetch(conn, sql.into(), binds).await?.into_iter().next())
}

/// The one row a statement must return inside a transaction.
pub async fn fetch_one<B: Backend>(
    conn: &mut B::Conn,
    sql: impl Into<Sql>,
    binds: Vec<Bind>,
) -> Result<B::Row, StoreError> {
    fetch_optional::<B>(conn, sql, binds)
        .await?
        .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
}
