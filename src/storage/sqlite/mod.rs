//! SQLite, the embedded default: one file, WAL, `synchronous=FULL` (an answered write survives a
//! power cut), one writer connection taking `BEGIN IMMEDIATE` so writers never deadlock or
//! interleave, and a small pool of read-only connections beside it. Writes share transactions
//! and fsyncs through the group-commit writer (`group_commit.rs`).

mod group_commit;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use tokio::sync::{Mutex, Notify};

pub use group_commit::WriteTx;
use group_commit::{Writer, checkpoints};

use super::StoreError;
use super::backend::{Backend, Sql};
use super::plan::{self, Bind, Plan};

/// Readers run beside the writer thanks to WAL.
const READ_CONNECTIONS: u32 = 4;
/// How long a connection waits for a lock before failing (another process holding the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL pages past which the writer checkpoints itself (SQLite's default is 1000): the
/// checkpointer's connection normally keeps the WAL copied well before that.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 4000;

pub struct Sqlite {
    writer: Arc<Mutex<Writer>>,
    /// The writer's pool (one connection), for metrics; writes go through `writer`.
    writer_pool: SqlitePool,
    reader: SqlitePool,
    /// Checkpoints after each commit; stopped with the store.
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

impl Sqlite {
    /// Opens the file named by `url` (`sqlite://./data/withholding.db`), creating it and its
    /// folder if needed, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
        // A file that cannot be opened is named with the reason: SQLite's own message ("unable
        // to open database file") names neither.
        let path = options.get_filename().to_owned();
        let cannot_open = |kind: std::io::ErrorKind, why: String| {
            StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                kind,
                format!("cannot open the SQLite database {}: {why}", path.display()),
            )))
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                cannot_open(
                    e.kind(),
                    format!("creating its folder {}: {e}", dir.display()),
                )
            })?;
        }
        // Migrations run on a connection of their own, with SQLite's default temp store: an
        // index built over a large table may sort through temporary files.
        let mut migrator = match sqlx::ConnectOptions::connect(&options).await {
            Ok(connection) => connection,
            Err(sqlx::Error::Io(e)) => return Err(cannot_open(e.kind(), e.to_string())),
            Err(sqlx::Error::Database(e)) => {
                return Err(cannot_open(
                    std::io::ErrorKind::Other,
                    e.message().to_owned(),
                ));
            }
            Err(e) => return Err(cannot_open(std::io::ErrorKind::Other, e.to_string())),
        };
        sqlx::migrate!("migrations/sqlite")
            .run(&mut migrator)
            .await?;
        sqlx::Connection::close(migrator).await?;
        // Each member's savepoint keeps the pages it changes in a sub-journal so it can be
        // rolled back alone. With a file-backed temp store that sub-journal spills to a
        // temporary file past 64 KiB — most members — and writing it cost the writer more
        // than the WAL (docs/PERFORMANCE.md). In memory it holds at most one member's pages
        // (it is emptied when the member's savepoint is released); crash safety does not
        // depend on it, the WAL does.
        let writer_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("temp_store", "memory"))
            .await?;
        let checkpoint_conn = sqlx::ConnectOptions::connect(&options).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        let committed = Arc::new(Notify::new());
        let writer = Writer::new(writer_pool.clone(), committed.clone());
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            writer_pool,
            reader,
            checkpointer: tokio::spawn(checkpoints(checkpoint_conn, committed)),
        })
    }
}

impl Backend for Sqlite {
    type Conn = SqliteConnection;
    type Row = SqliteRow;
    type Tx = WriteTx;
    type Reader = PoolConnection<sqlx::Sqlite>;
    type Snapshot = sqlx::Transaction<'static, sqlx::Sqlite>;

    /// One writer serialises every write transaction: nothing to lock.
    const ROW_LOCK: &'static str = "";
    const SERIAL_WRITER: bool = true;
    const AUDIT_APPEND_FENCE: &'static str = "";

    /// A write transaction: a savepoint in the open batch (group commit, see `group_commit.rs`).
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_deferred().await?;
        Self::read_batch_first(&mut tx, Plan::default()).await?;
        Ok(tx)
    }

    /// A write transaction whose savepoint opens with its first reads, in the same query
    /// ([`Backend::read_batch_first`]): one trip fewer.
    async fn begin_deferred(&self) -> Result<WriteTx, StoreError> {
        WriteTx::join(self.writer.clone()).await
    }

    async fn commit(tx: WriteTx) -> Result<(), StoreError> {
        tx.commit().await
    }

    async fn rollback(tx: WriteTx) -> Result<(), StoreError> {
        tx.rollback().await
    }

    async fn reader(&self) -> Result<Self::Reader, StoreError> {
        Ok(self.reader.acquire().await?)
    }

    /// A read transaction over one consistent snapshot (WAL gives each transaction its own).
    async fn begin_snapshot(&self) -> Result<Self::Snapshot, StoreError> {
        Ok(self.reader.begin().await?)
    }

    async fn end_snapshot(snapshot: Self::Snapshot) -> Result<(), StoreError> {
        Ok(snapshot.commit().await?)
    }

    async fn execute(
        conn: &mut SqliteConnection,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> Result<u64, StoreError> {
        let done = plan::query::<sqlx::Sqlite>(sql, binds)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn fetch(
        conn: &mut SqliteConnection,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        Ok(plan::query::<sqlx::Sqlite>(sql, binds)
            .fetch_all(conn)
            .await?)
    }

    /// Runs reads as one multi-statement query and returns each statement's rows: sqlx ends
    /// each statement's rows with its result, which is where one statement's rows stop.
    async fn read_batch(
        conn: &mut SqliteConnection,
        reads: Plan,
    ) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        let count = reads.statements.len();
        let (done, failed) = run_statements(conn, reads).await;
        if let Some(error) = failed {
            return Err(error.into());
        }
        if done.len() != count {
            return Err(StoreError::Corrupt(format!(
                "{count} reads gave {} results",
                done.len()
            )));
        }
        Ok(done.into_iter().map(|(rows, _)| rows).collect())
    }

    /// The first reads of a transaction begun with [`Backend::begin_deferred`], run in one
    /// query with what the last member left and the transaction's own savepoint
    /// (`WriteTx::first_reads`).
    async fn read_batch_first(
        tx: &mut WriteTx,
        reads: Plan,
    ) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        tx.first_reads(reads).await
    }

    /// Runs a plan as one multi-statement query: one trip to the connection thread for all of
    /// it. The rows it changed must add up to what the plan says.
    async fn run_plan(conn: &mut SqliteConnection, plan: Plan) -> Result<(), StoreError> {
        if plan.is_empty() {
            return Ok(());
        }
        let (sql, binds, rows) = plan.combined();
        let done = plan::query::<sqlx::Sqlite>(sql.into(), binds)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() != rows {
            return Err(StoreError::Corrupt(format!(
                "a planned write changed {} rows instead of {rows}",
                done.rows_affected()
            )));
        }
        Ok(())
    }

    /// The same as `run_plan` here (PostgreSQL saves trips with it).
    async fn run_plan_at_once(conn: &mut SqliteConnection, plan: Plan) -> Result<(), StoreError> {
        Self::run_plan(conn, plan).await
    }

    /// Leaves a plan to run with the next statement on the writer (see `WriteTx::defer`).
    async fn defer_plan(tx: &mut WriteTx, plan: Plan) -> Result<(), StoreError> {
        tx.defer(plan);
        Ok(())
    }

    fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        [
            ("sqlite_writer", &self.writer_pool),
            ("sqlite_reader", &self.reader),
        ]
        .into_iter()
        .map(|(name, pool)| (name, pool.size(), pool.num_idle()))
        .collect()
    }
}

/// Runs statements as one query. Returns, for each statement that completed, its rows and
/// the rows it changed (meaningful for writes only: SQLite reports the last write's count
/// after a read), and the error that stopped the query, if one did.
async fn run_statements(
    conn: &mut SqliteConnection,
    statements: Plan,
) -> (Vec<(Vec<SqliteRow>, u64)>, Option<sqlx::Error>) {
    use sqlx::Either;
    use sqlx::Executor as _;
    if statements.is_empty() {
        return (vec![], None);
    }
    let (sql, binds, _) = statements.combined();
    let query = plan::query::<sqlx::Sqlite>(sql.into(), binds);
    let mut stream = conn.fetch_many(query);
    let (mut done, mut rows) = (vec![], vec![]);
    while let Some(item) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await
    {
        match item {
            Ok(Either::Right(row)) => rows.push(row),
            Ok(Either::Left(result)) => {
                done.push((std::mem::take(&mut rows), result.rows_affected()));
            }
            Err(error) => return (done, Some(error)),
        }
    }
    (done, None)
}
