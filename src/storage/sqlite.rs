//! SQLite, the embedded default: one file, WAL, `synchronous=FULL` (an answered write survives a
//! power cut), one writer connection taking `BEGIN IMMEDIATE` so writers never deadlock or
//! interleave, and a small pool of read-only connections beside it.
//!
//! **Group commit.** With `synchronous=FULL` every commit waits for an fsync, and one writer
//! means one commit at a time: committing each write on its own left the writer idle for about
//! half of each deduction's time (docs/PERFORMANCE.md). Writes therefore share transactions:
//! each runs inside a savepoint of the open *batch* transaction, under the single writer exactly
//! as before (it sees every earlier member's writes, and its checks — versions, idempotency
//! keys, limits — are made against them). The first member to end queues a commit turn at the
//! writer, behind everyone waiting for it then: they join the batch, and the turn commits
//! every write that ran meanwhile with one fsync (`Writer::queue_commit`).
//! Nobody is answered before the batch holding its writes, or the writes it read, is durable,
//! so a conflict is reported only once the write it lost to can be read back. A member that
//! fails rolls back to its own savepoint without touching the others. The pages a savepoint
//! would restore are kept in memory on the writer (`temp_store=MEMORY`), not in a temporary
//! file: they are needed only to roll a member back, never to recover from a crash.
//!
//! **Fewer trips.** Each statement is a round trip to sqlx's connection thread, and the writer
//! is held for all of them, so a member's savepoint costs no trip of its own: a committed
//! member leaves its savepoint to be released by the next holder's first statement (or by the
//! batch's `COMMIT`, which releases every savepoint), and a deduction opens its savepoint in
//! the same query as its first reads (`begin_deferred`, `read_batch_first`). A deduction's
//! writes (its plan) need no answer and nothing can come between them and its reads under the
//! one writer, so they are not sent on their own either: they go at the head of the next
//! holder's first query (`WriteTx::defer`), and the member is told how they went with the
//! batch's outcome. If they fail, they are undone alone and that member alone gets the error;
//! the next holder's query then runs again without them.
//!
//! **Checkpoints off the writer.** SQLite copies the WAL back into the database file
//! (checkpoints) inside the commit that crosses `wal_autocheckpoint`, while every other write
//! waits. Here a connection of its own checkpoints (`PASSIVE`: it never blocks the writer or a
//! reader) after each batch commits, and the writer's own automatic checkpoint is left for a
//! WAL that has grown past `WAL_AUTOCHECKPOINT_PAGES` — where it finds little left to copy
//! and lets the WAL start over. Durability is unchanged: a commit is durable in the WAL.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, oneshot, watch};

use super::StoreError;
use super::deduction_sql::impl_deduction_store;
use super::plan::{self, Plan};
use super::sql::impl_store;

/// Readers run beside the writer thanks to WAL.
const READ_CONNECTIONS: u32 = 4;
/// How long a connection waits for a lock before failing (another process holding the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// WAL pages past which the writer checkpoints itself (SQLite's default is 1000): the
/// checkpointer's connection normally keeps the WAL copied well before that.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 4000;

pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
    /// The writer's pool (one connection), for metrics; writes go through `writer`.
    writer_pool: SqlitePool,
    reader: SqlitePool,
    /// Checkpoints after each commit; stopped with the store.
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// Copies committed WAL pages into the database file each time `committed` is notified, on
/// its own connection. A failed checkpoint is logged and left to the next one (or to the
/// writer's own past `WAL_AUTOCHECKPOINT_PAGES`): nothing committed depends on it.
async fn checkpoints(mut conn: SqliteConnection, committed: Arc<Notify>) {
    loop {
        committed.notified().await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(%error, "background checkpoint failed");
        }
    }
}

/// The one writer connection and the batch open on it. Whoever holds the mutex owns the
/// connection; tokio's mutex is fair (first come, first served), which is what makes batches
/// form: a member queues behind everyone who arrived while it ran, and they join its batch.
struct Writer {
    pool: SqlitePool,
    batch: Option<Batch>,
    /// What the last member left open in the batch, finished by the next holder's first
    /// statement.
    left: Left,
    next_batch: u64,
    /// Told after each commit (see `checkpoints`).
    committed: Arc<Notify>,
}

/// A member's savepoint as the member leaves it.
#[derive(Debug)]
enum Left {
    Nothing,
    /// Committed: its writes stay, the savepoint is still to be released.
    Release,
    /// Open (a member holding the writer, or one that ended without commit or rollback: an
    /// error or a panic returned early): whoever comes next undoes it.
    Undo,
    /// Committed with writes still to run (`WriteTx::defer`), then to be released; the member
    /// waits on `done` to learn whether they ran.
    Deferred {
        plan: Plan,
        done: Done,
    },
}

/// Where a member that deferred writes learns whether they ran.
type Done = oneshot::Sender<Result<(), StoreError>>;

impl Left {
    /// The statements that finish what was left and, for deferred writes, the rows each
    /// must change and where to tell the member how they went.
    fn statements(self) -> (Plan, Option<(Vec<u64>, Done)>) {
        let fixed = |statements: &[&'static str]| {
            let mut plan = Plan::default();
            for statement in statements {
                plan.read(*statement, vec![]);
            }
            plan
        };
        match self {
            Left::Nothing => (Plan::default(), None),
            Left::Release => (fixed(&["RELEASE member"]), None),
            Left::Undo => (fixed(&["ROLLBACK TO member", "RELEASE member"]), None),
            Left::Deferred { mut plan, done } => {
                let rows = plan.statements.iter().map(|s| s.rows).collect();
                plan.read("RELEASE member", vec![]);
                (plan, Some((rows, done)))
            }
        }
    }
}

/// A transaction shared by concurrent writes, committed once for all of them.
struct Batch {
    id: u64,
    /// Writes that joined it (for the group-commit metric).
    members: u32,
    /// Whether a commit turn is queued for it (`queue_commit`).
    commit_queued: bool,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// `Some` once the batch is committed (`Ok`) or failed (`Err`, with the reason).
    outcome: watch::Sender<Option<Result<(), String>>>,
}

impl Writer {
    /// Runs what the last member left and then `then`, as one query, and returns the rows of
    /// each statement of `then`. Writes a member deferred that fail are undone alone (that
    /// member is told why) and the query runs again without them; any other failure, or
    /// deferred writes that changed other rows than planned, fail the batch.
    async fn lead(&mut self, then: Plan) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        loop {
            let (mut query, deferred) =
                std::mem::replace(&mut self.left, Left::Nothing).statements();
            let skip = query.statements.len();
            query.statements.extend(then.statements.iter().cloned());
            let Some(batch) = self.batch.as_mut() else {
                return Err(StoreError::GroupCommit("the batch has failed".into()));
            };
            let (done, failed) = SqliteStore::run_statements(&mut batch.tx, query).await;
            match (deferred, failed) {
                (Some((planned, member)), Some(error)) if done.len() < planned.len() => {
                    let undone = sqlx::raw_sql("ROLLBACK TO member; RELEASE member")
                        .execute(&mut *batch.tx)
                        .await;
                    // Its receiver may be gone (a member dropped while waiting): nobody to tell.
                    let _ = member.send(Err(StoreError::from(error)));
                    if let Err(error) = undone {
                        self.fail_batch(&error.to_string());
                        return Err(error.into());
                    }
                }
                (_, Some(error)) => {
                    self.fail_batch(&error.to_string());
                    return Err(error.into());
                }
                (deferred, None) => {
                    if let Some((planned, member)) = deferred {
                        let changed: Vec<u64> = done[..planned.len()]
                            .iter()
                            .map(|(_, changed)| *changed)
                            .collect();
                        if changed != planned {
                            let reason = format!(
                                "planned writes changed {changed:?} rows instead of {planned:?}"
                            );
                            let _ = member.send(Err(StoreError::Corrupt(reason.clone())));
                            self.fail_batch(&reason);
                            return Err(StoreError::Corrupt(reason));
                        }
                        let _ = member.send(Ok(()));
                    }
                    return Ok(done.into_iter().skip(skip).map(|(rows, _)| rows).collect());
                }
            }
        }
    }

    /// Commits the open batch, if any, and tells its members how it went. What the last
    /// member left is finished first — its deferred writes run, or what an abandoned member
    /// left is rolled back (if that fails the batch cannot be trusted and fails as a whole);
    /// a savepoint left to release is released by `COMMIT` itself.
    async fn commit_batch(&mut self) {
        if matches!(self.left, Left::Undo | Left::Deferred { .. }) && self.batch.is_some() {
            // On failure `lead` has failed the batch and told its members.
            let _ = self.lead(Plan::default()).await;
        }
        self.left = Left::Nothing;
        if let Some(batch) = self.batch.take() {
            let committed = batch.tx.commit().await.map_err(|e| e.to_string());
            if committed.is_ok() {
                crate::metrics::record_group_commit(batch.members);
                self.committed.notify_one();
            }
            batch.outcome.send_replace(Some(committed));
        }
    }

    /// Queues a turn at the writer that commits batch `batch` if it is still open then, unless
    /// one is queued already. The turn comes after everyone waiting for the writer now, who
    /// join the batch; whoever queues behind it starts the next. One turn per batch is enough,
    /// and every member ending queues behind the others only to find the batch committed — a
    /// hand-over of the writer each, on the path every write waits for. The turn is a task of
    /// its own, so a caller that goes away (a cancelled RPC) cannot leave the batch open.
    fn queue_commit(&mut self, batch: u64, shared: &Arc<Mutex<Writer>>) {
        let Some(open) = self.batch.as_mut().filter(|open| open.id == batch) else {
            return;
        };
        if std::mem::replace(&mut open.commit_queued, true) {
            return;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut writer = shared.lock().await;
            if writer.batch.as_ref().is_some_and(|open| open.id == batch) {
                writer.commit_batch().await;
            }
        });
    }

    /// Drops the open batch (its transaction rolls back, savepoints and all) and tells its
    /// members why.
    fn fail_batch(&mut self, reason: &str) {
        self.left = Left::Nothing;
        if let Some(batch) = self.batch.take() {
            batch.outcome.send_replace(Some(Err(reason.to_owned())));
        }
    }

    /// The open batch, beginning one if none is open.
    async fn open_batch(&mut self) -> Result<&mut Batch, StoreError> {
        if self.batch.is_none() {
            let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            self.left = Left::Nothing;
            self.next_batch += 1;
            self.batch = Some(Batch {
                id: self.next_batch,
                members: 0,
                commit_queued: false,
                tx,
                outcome: watch::Sender::new(None),
            });
        }
        Ok(self.batch.as_mut().expect("a batch was just opened"))
    }
}

/// A write transaction: a savepoint in the open batch. It dereferences to the connection, so
/// the shared store code runs on it as on a plain transaction (once its savepoint is open: a
/// deferred one opens with `read_batch_first`). Dropped without `commit` or `rollback` (an
/// early error return), it leaves its savepoint to be rolled back by the writer's next holder,
/// and makes sure the batch has a commit turn queued (which undoes the savepoint first), so an
/// idle server never keeps the file's write lock.
pub struct WriteTx {
    /// `None` once ended.
    writer: Option<OwnedMutexGuard<Writer>>,
    batch: u64,
    /// Whether its savepoint is open.
    opened: bool,
    /// Writes to run at the head of the next holder's first query (`defer`).
    deferred: Option<Plan>,
    outcome: watch::Receiver<Option<Result<(), String>>>,
    shared: Arc<Mutex<Writer>>,
}

impl WriteTx {
    /// Keeps the transaction's writes (its savepoint is released by whoever comes next) and
    /// returns once the batch holding them is committed.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.end(false).await
    }

    /// Undoes the transaction's writes, and still waits for its batch: what it read (and may
    /// answer with) came partly from earlier members, not yet durable.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.end(true).await
    }

    /// Leaves `plan` — writes that need no answer and, under the one writer, cannot lose a
    /// race — to run at the head of the next holder's first query, or when the batch commits.
    /// The last thing a transaction does before `commit`, which reports how they went.
    pub fn defer(&mut self, plan: Plan) {
        self.assert_opened();
        self.deferred
            .get_or_insert_with(Plan::default)
            .statements
            .extend(plan.statements);
    }

    async fn end(mut self, undo: bool) -> Result<(), StoreError> {
        let mut writer = self.writer.take().expect("a write transaction ends once");
        let (batch, shared) = (self.batch, self.shared.clone());
        let mut deferred = None;
        // A failed batch (gone, or replaced by a new one) has nothing of this member's left.
        if self.opened && writer.batch.as_ref().is_some_and(|open| open.id == batch) {
            if let (false, Some(plan)) = (undo, self.deferred.take()) {
                let (done, ran) = oneshot::channel();
                writer.left = Left::Deferred { plan, done };
                deferred = Some(ran);
            } else if undo {
                let open = writer.batch.as_mut().expect("checked above");
                let undone = sqlx::raw_sql("ROLLBACK TO member; RELEASE member")
                    .execute(&mut *open.tx)
                    .await;
                writer.left = Left::Nothing;
                if let Err(error) = undone {
                    writer.fail_batch(&error.to_string());
                    return Err(error.into());
                }
            } else {
                writer.left = Left::Release;
            }
        }
        writer.queue_commit(batch, &shared);
        drop(writer);
        let outcome = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::GroupCommit("the writer went away".into()))?
            .clone();
        if let Some(ran) = deferred {
            // Settled before the batch ended (the writes run before its commit), so this does
            // not wait: one wake-up per member, and an error is answered, like every answer,
            // once the batch is. Writes that failed were undone alone: this member's answer is
            // their error. A sender dropped unanswered means the batch failed, writes and all.
            ran.await.unwrap_or_else(|_| {
                Err(StoreError::GroupCommit(
                    "the batch holding the writes failed".into(),
                ))
            })?;
        }
        outcome
            .unwrap_or_else(|| Err("no outcome".into()))
            .map_err(StoreError::GroupCommit)
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            writer.queue_commit(self.batch, &self.shared);
        }
    }
}

impl WriteTx {
    /// Statements run before the savepoint is open would not be undone with it; statements
    /// run after `defer` would run before the deferred writes.
    fn assert_opened(&self) {
        assert!(
            self.opened,
            "a deferred write transaction starts with read_batch_first"
        );
        assert!(self.deferred.is_none(), "nothing runs after defer");
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.assert_opened();
        &self
            .writer
            .as_ref()
            .and_then(|writer| writer.batch.as_ref())
            .expect("a member keeps its batch open until it ends")
            .tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.assert_opened();
        &mut self
            .writer
            .as_mut()
            .and_then(|writer| writer.batch.as_mut())
            .expect("a member keeps its batch open until it ends")
            .tx
    }
}

impl SqliteStore {
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
        let writer = Writer {
            pool: writer_pool.clone(),
            batch: None,
            left: Left::Nothing,
            next_batch: 0,
            committed: committed.clone(),
        };
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            writer_pool,
            reader,
            checkpointer: tokio::spawn(checkpoints(checkpoint_conn, committed)),
        })
    }

    fn pools(&self) -> [(&'static str, &SqlitePool); 2] {
        [
            ("sqlite_writer", &self.writer_pool),
            ("sqlite_reader", &self.reader),
        ]
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// A read transaction over one consistent snapshot (WAL gives each transaction its own).
    async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.reader.begin().await?)
    }

    /// A write transaction: a savepoint in the open batch (group commit, see the module docs).
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_deferred().await?;
        Self::read_batch_first(&mut tx, Plan::default()).await?;
        Ok(tx)
    }

    /// A write transaction whose savepoint opens with its first reads, in the same query
    /// ([`Self::read_batch_first`]): one trip fewer.
    async fn begin_deferred(&self) -> Result<WriteTx, StoreError> {
        let mut writer = self.writer.clone().lock_owned().await;
        let batch = writer.open_batch().await?;
        batch.members += 1;
        let (id, outcome) = (batch.id, batch.outcome.subscribe());
        Ok(WriteTx {
            writer: Some(writer),
            batch: id,
            opened: false,
            deferred: None,
            outcome,
            shared: self.writer.clone(),
        })
    }

    /// The first reads of a transaction begun with [`Self::begin_deferred`], run in one query
    /// after what the last member left (`Writer::lead`) and the transaction's own savepoint.
    /// If that query fails past what the last member left, where it stopped is unknown, so
    /// the whole batch fails (no member is answered with writes that may be gone).
    async fn read_batch_first(
        tx: &mut WriteTx,
        reads: Plan,
    ) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        if tx.opened {
            return Self::read_batch(tx, reads).await;
        }
        let writer = tx.writer.as_mut().expect("a write transaction in use");
        let mut first = Plan::default();
        first.read("SAVEPOINT member", vec![]);
        first.statements.extend(reads.statements);
        let mut results = writer.lead(first).await?;
        writer.left = Left::Undo;
        tx.opened = true;
        results.remove(0);
        Ok(results)
    }

    /// Leaves a plan to run with the next statement on the writer (see `WriteTx::defer`).
    async fn defer_plan(tx: &mut WriteTx, plan: Plan) -> Result<(), StoreError> {
        tx.defer(plan);
        Ok(())
    }
}

impl SqliteStore {
    /// One writer runs every write transaction in turn: no row locks, so no lock order to keep.
    const SERIAL_WRITER: bool = true;

    /// Runs a plan as one multi-statement query: one trip to the connection thread for all of
    /// it. The rows it changed must add up to what the plan says.
    async fn run_plan(conn: &mut SqliteConnection, plan: Plan) -> Result<(), StoreError> {
        if plan.is_empty() {
            return Ok(());
        }
        let (sql, binds, rows) = plan.combined();
        let done = plan::query::<sqlx::Sqlite>(sql, binds)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
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
}

impl SqliteStore {
    /// Runs reads as one multi-statement query and returns each statement's rows: sqlx ends
    /// each statement's rows with its result, which is where one statement's rows stop.
    async fn read_batch(
        conn: &mut SqliteConnection,
        reads: Plan,
    ) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        let count = reads.statements.len();
        let (done, failed) = Self::run_statements(conn, reads).await;
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
        let query = plan::query::<sqlx::Sqlite>(sql, binds);
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
}

impl_store!(SqliteStore, sqlx::Sqlite, WriteTx);
impl_deduction_store!(SqliteStore, sqlx::Sqlite, WriteTx, "");

#[cfg(test)]
mod tests {
    //! The group-commit writer on its own, on a scratch table beside the real schema: members
    //! share commits, fail alone, and are answered only once durable.

    use super::*;

    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("CREATE TABLE scratch (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (dir, Arc::new(store))
    }

    async fn insert(tx: &mut WriteTx, k: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, 1)")
            .bind(k)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    /// What a fresh reader sees: only committed rows.
    async fn committed(store: &SqliteStore) -> Vec<String> {
        sqlx::query_scalar("SELECT k FROM scratch ORDER BY k")
            .fetch_all(&store.reader)
            .await
            .unwrap()
    }

    async fn batches(store: &SqliteStore) -> u64 {
        store.writer.lock().await.next_batch
    }

    #[tokio::test]
    async fn the_writer_keeps_savepoint_journals_in_memory_and_readers_do_not() {
        let (_dir, store) = store().await;
        let temp_store = "PRAGMA temp_store";
        let mut tx = store.begin_write().await.unwrap();
        let writer: i64 = sqlx::query_scalar(temp_store)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(writer, 2, "the writer's temp store is MEMORY");
        let reader: i64 = sqlx::query_scalar(temp_store)
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(reader, 0, "readers keep SQLite's default");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_members_share_commits_and_are_answered_when_durable() {
        let (_dir, store) = store().await;
        let before = batches(&store).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.spawn(async move {
                let key = format!("k{i:02}");
                let mut tx = store.begin_write().await.unwrap();
                insert(&mut tx, &key).await.unwrap();
                tx.commit().await.unwrap();
                // Answered: the row is durable, so any reader sees it now.
                assert!(committed(&store).await.contains(&key), "{key} not visible");
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        assert_eq!(committed(&store).await.len(), 64);
        let used = batches(&store).await - before;
        assert!(used < 64, "64 concurrent members took {used} commits");
    }

    /// Starts `members` one after another while the test holds the writer, so they queue in
    /// this order; then lets them run. Each gets its index.
    async fn in_one_batch<F, Fut>(
        store: &Arc<SqliteStore>,
        members: usize,
        member: F,
    ) -> Vec<Fut::Output>
    where
        F: Fn(Arc<SqliteStore>, usize) -> Fut,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let gate = store.writer.clone().lock_owned().await;
        let mut tasks = vec![];
        for i in 0..members {
            tasks.push(tokio::spawn(member(store.clone(), i)));
            // Let it reach the writer's queue before the next one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(gate);
        let mut outputs = vec![];
        for task in tasks {
            outputs.push(task.await.unwrap());
        }
        outputs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_member_rolls_back_alone() {
        let (_dir, store) = store().await;
        let before = batches(&store).await;
        let outcomes = in_one_batch(&store, 4, |store, i| async move {
            let mut tx = store.begin_write().await?;
            match i {
                // Writes a row and then fails on a duplicate key: returns early, dropped.
                1 => {
                    insert(&mut tx, "b").await?;
                    insert(&mut tx, "a").await?;
                    tx.commit().await
                }
                // Changes its mind.
                2 => {
                    insert(&mut tx, "c").await?;
                    tx.rollback().await
                }
                _ => {
                    insert(&mut tx, ["a", "", "", "d"][i]).await?;
                    tx.commit().await
                }
            }
        })
        .await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
        assert!(
            matches!(&outcomes[1], Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation()),
            "{:?}",
            outcomes[1]
        );
        assert_eq!(committed(&store).await, ["a", "d"]);
        assert_eq!(
            batches(&store).await - before,
            1,
            "the four shared one batch"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_member_is_undone_before_the_batch_commits() {
        let (_dir, store) = store().await;
        let before = batches(&store).await;
        in_one_batch(&store, 2, |store, i| async move {
            let mut tx = store.begin_write().await.unwrap();
            insert(&mut tx, ["kept", "abandoned"][i]).await.unwrap();
            if i == 0 {
                tx.commit().await.unwrap();
            }
            // The second member is dropped with its savepoint open; the first member's
            // commit of the batch must not carry its row.
        })
        .await;
        assert_eq!(committed(&store).await, ["kept"]);
        assert_eq!(batches(&store).await - before, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rollback_returns_only_once_what_it_read_is_durable() {
        let (_dir, store) = store().await;
        in_one_batch(&store, 2, |store, i| async move {
            let mut tx = store.begin_write().await.unwrap();
            if i == 0 {
                insert(&mut tx, "earlier").await.unwrap();
                tx.commit().await.unwrap();
            } else {
                // Reads the earlier member's row before it is committed, as a replayed request
                // reads the deduction it answers with.
                let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM scratch")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                assert_eq!(seen, 1);
                tx.rollback().await.unwrap();
                assert_eq!(committed(&store).await, ["earlier"]);
            }
        })
        .await;
    }

    /// Rows of `scratch` as a deferred member's first reads see them.
    async fn first_read(tx: &mut WriteTx) -> Result<Vec<String>, StoreError> {
        let mut reads = Plan::default();
        reads.read("SELECT k FROM scratch ORDER BY k", vec![]);
        let [rows]: [Vec<_>; 1] = SqliteStore::read_batch_first(tx, reads)
            .await?
            .try_into()
            .expect("one read, one result");
        Ok(rows.iter().map(|r| sqlx::Row::get(r, 0)).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_savepoints_keep_what_was_committed_and_undo_the_rest() {
        let (_dir, store) = store().await;
        let before = batches(&store).await;
        let seen = in_one_batch(&store, 5, |store, i| async move {
            if i == 0 {
                let mut tx = store.begin_write().await.unwrap();
                insert(&mut tx, "a").await.unwrap();
                tx.commit().await.unwrap();
                return vec![];
            }
            let mut tx = store.begin_deferred().await.unwrap();
            if i == 3 {
                // Dropped before its savepoint was ever opened.
                return vec![];
            }
            let seen = first_read(&mut tx).await.unwrap();
            insert(&mut tx, ["", "b", "c", "", "d"][i]).await.unwrap();
            match i {
                1 => drop(tx),
                2 => tx.rollback().await.unwrap(),
                _ => tx.commit().await.unwrap(),
            }
            seen
        })
        .await;
        // Each member after the first saw "a" (left for it to release) and nothing of the
        // abandoned or rolled-back members before it.
        assert_eq!(seen, [vec![], vec!["a"], vec!["a"], vec![], vec!["a"]]);
        assert_eq!(committed(&store).await, ["a", "d"]);
        assert_eq!(batches(&store).await - before, 1);
    }

    /// A plan inserting `keys` into scratch, each changing one row.
    fn inserts(keys: &[&str]) -> Plan {
        let mut plan = Plan::default();
        for key in keys {
            plan.push(
                "INSERT INTO scratch (k, v) VALUES ($1, 1)",
                vec![(*key).into()],
                1,
            );
        }
        plan
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_writes_that_fail_are_undone_alone_and_reported_to_their_member() {
        let (_dir, store) = store().await;
        let before = batches(&store).await;
        let outcomes = in_one_batch(&store, 3, |store, i| async move {
            let mut tx = store.begin_deferred().await?;
            let seen = first_read(&mut tx).await?;
            // The second member's writes fail on their second row (a duplicate of "a").
            tx.defer(inserts([&["a"][..], &["x", "a"], &["c"]][i]));
            let answer = tx.commit().await.map(|()| seen);
            if i == 1 {
                // Its conflict is answered only once the write it lost to is durable.
                assert_eq!(committed(&store).await, ["a", "c"]);
            }
            answer
        })
        .await;
        assert_eq!(outcomes[0].as_ref().unwrap(), &Vec::<String>::new());
        // `scratch.k` is no request key two writers race for, so its violation is reported as
        // the database error it is (storage/errors.rs), to that member alone.
        assert!(
            matches!(&outcomes[1], Err(StoreError::Database(e)) if e.to_string().contains("UNIQUE")),
            "{:?}",
            outcomes[1]
        );
        // The third member's reads ran after the second's writes were undone (no "x"), and
        // its own writes, the batch's last, ran when the batch committed.
        assert_eq!(outcomes[2].as_ref().unwrap(), &["a"]);
        assert_eq!(committed(&store).await, ["a", "c"]);
        assert_eq!(batches(&store).await - before, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_writes_that_change_other_rows_than_planned_fail_the_batch() {
        let (_dir, store) = store().await;
        let outcomes = in_one_batch(&store, 2, |store, i| async move {
            let mut tx = store.begin_deferred().await?;
            first_read(&mut tx).await?;
            let mut plan = inserts(&[["a", "b"][i]]);
            if i == 0 {
                // Claims a row that does not exist.
                plan.push(
                    "UPDATE scratch SET v = 2 WHERE k = $1",
                    vec!["missing".into()],
                    1,
                );
            }
            tx.defer(plan);
            tx.commit().await
        })
        .await;
        assert!(
            matches!(outcomes[0], Err(StoreError::Corrupt(_))),
            "{:?}",
            outcomes[0]
        );
        assert!(outcomes[1].is_err(), "{:?}", outcomes[1]);
        assert!(committed(&store).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_are_copied_into_the_database_file_off_the_writer() {
        let (dir, store) = store().await;
        let file = dir.path().join("w.db");
        let size = || std::fs::metadata(&file).unwrap().len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = size();
        // About 100 pages: far below the writer's own checkpoint threshold, so only the
        // checkpointer can bring them into the file.
        let mut tx = store.begin_write().await.unwrap();
        for i in 0..400 {
            sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, 1)")
                .bind(format!("{i:04}{}", "x".repeat(1000)))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let mut copied = false;
        for _ in 0..100 {
            if size() > before + 100 * 4096 / 2 {
                copied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(copied, "the database file stayed at {} bytes", size());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_reads_that_fail_fail_the_batch() {
        let (_dir, store) = store().await;
        let outcomes = in_one_batch(&store, 3, |store, i| async move {
            match i {
                1 => {
                    let mut tx = store.begin_deferred().await?;
                    let mut reads = Plan::default();
                    reads.read("SELECT k FROM no_such_table", vec![]);
                    SqliteStore::read_batch_first(&mut tx, reads)
                        .await
                        .map(drop)
                }
                _ => {
                    let mut tx = store.begin_write().await?;
                    insert(&mut tx, ["a", "", "z"][i]).await?;
                    tx.commit().await
                }
            }
        })
        .await;
        // Where the failed query stopped is unknown, so the batch it was in is not committed
        // and its members are told; the next write starts a new batch.
        assert!(
            matches!(&outcomes[0], Err(StoreError::GroupCommit(_))),
            "{:?}",
            outcomes[0]
        );
        assert!(outcomes[1].is_err());
        assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
        assert_eq!(committed(&store).await, ["z"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_runs_placed_from_a_known_head_keep_every_chain_whole() {
        use crate::domain::actor::Actor;
        use crate::domain::audit::{AuditDraft, verify_chain};
        use crate::storage::{ChainHead, Store as _};
        let (_dir, store) = store().await;
        let draft = |mandate: &str, action: &str| {
            let mut draft = AuditDraft::new(jiff::Timestamp::now(), &Actor::system(), action, "OK");
            draft.mandate_id = Some(mandate.to_owned());
            draft
        };
        // Chain a already has an event (its head is read below); chain b is taken as usual.
        let mut tx = store.begin_write().await.unwrap();
        SqliteStore::append_audits_in(&mut tx, &[draft("a", "first")])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let head = store.audit_chain("mandate:a").await.unwrap().head.unwrap();
        let mut known = Some(ChainHead {
            chain_id: "mandate:a".into(),
            last_seq: head.0,
            last_hash: head.1,
        });
        let mut tx = store.begin_write().await.unwrap();
        let mut plan = Plan::default();
        let drafts = [
            draft("a", "x"),
            draft("a", "y"),
            draft("b", "z"),
            draft("a", "w"),
        ];
        SqliteStore::plan_audits(&mut tx, &drafts, &mut plan, &mut known)
            .await
            .unwrap();
        SqliteStore::run_plan(&mut tx, plan).await.unwrap();
        tx.commit().await.unwrap();
        for (chain, length) in [("mandate:a", 4), ("mandate:b", 1)] {
            let stored = store.audit_chain(chain).await.unwrap();
            let head = stored
                .head
                .as_ref()
                .map(|(seq, hash)| (*seq, hash.as_str()));
            verify_chain(chain, &stored.events, head).unwrap();
            assert_eq!(stored.events.len(), length, "{chain}");
        }
        assert_eq!(
            known.unwrap().last_seq,
            4,
            "the known head follows the runs placed on it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_batch_keeps_each_statements_rows_apart() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write().await.unwrap();
        for k in ["a", "b", "c"] {
            insert(&mut tx, k).await.unwrap();
        }
        let mut reads = Plan::default();
        reads.read("SELECT k FROM scratch WHERE k = $1", vec!["b".into()]);
        reads.read("SELECT k FROM scratch WHERE k = $1", vec!["none".into()]);
        reads.read(
            "SELECT k FROM scratch WHERE k <> $1 ORDER BY k",
            vec!["b".into()],
        );
        let results = SqliteStore::read_batch(&mut tx, reads).await.unwrap();
        let keys: Vec<Vec<String>> = results
            .iter()
            .map(|rows| rows.iter().map(|r| sqlx::Row::get(r, 0)).collect())
            .collect();
        assert_eq!(keys, [vec!["b"], vec![], vec!["a", "c"]]);
        tx.commit().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_that_changes_other_rows_than_planned_is_refused() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write().await.unwrap();
        let mut plan = Plan::default();
        plan.push(
            "INSERT INTO scratch (k, v) VALUES ($1, 1)",
            vec!["x".into()],
            1,
        );
        // Claims one row but the key does not exist: nothing changes.
        plan.push(
            "UPDATE scratch SET v = 2 WHERE k = $1",
            vec!["missing".into()],
            1,
        );
        let refused = SqliteStore::run_plan(&mut tx, plan).await.unwrap_err();
        assert!(matches!(refused, StoreError::Corrupt(_)), "{refused:?}");
        drop(tx);
        assert!(committed(&store).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_committed_even_if_its_members_stop_waiting_for_it() {
        let (_dir, store) = store().await;
        let (ready, inserted) = oneshot::channel();
        let member = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.begin_write().await.unwrap();
                insert(&mut tx, "kept").await.unwrap();
                ready.send(()).unwrap();
                // Let the test queue for the writer first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.commit().await.unwrap();
            }
        });
        inserted.await.unwrap();
        // Holds the writer from the moment the member ends until after it has gone away (a
        // cancelled RPC), as another write would.
        let gate = store.writer.clone().lock_owned().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        member.abort();
        assert!(member.await.unwrap_err().is_cancelled());
        drop(gate);
        let mut kept = false;
        for _ in 0..100 {
            if committed(&store).await == ["kept"] {
                kept = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(kept, "the batch was never committed");
        assert!(store.writer.lock().await.batch.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_abandoned_member_does_not_keep_the_batch_open() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write().await.unwrap();
        insert(&mut tx, "abandoned").await.unwrap();
        drop(tx);
        // No other write comes; the batch must still close (releasing the file's write lock)
        // without the abandoned row.
        let mut closed = false;
        for _ in 0..100 {
            if store.writer.lock().await.batch.is_none() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "the batch stayed open");
        assert!(committed(&store).await.is_empty());
    }
}
