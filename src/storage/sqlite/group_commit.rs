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
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, oneshot, watch};

use super::{Sqlite, run_statements};
use crate::storage::StoreError;
use crate::storage::backend::Backend;
use crate::storage::plan::Plan;

/// Copies committed WAL pages into the database file each time `committed` is notified, on
/// its own connection. A failed checkpoint is logged and left to the next one (or to the
/// writer's own past `WAL_AUTOCHECKPOINT_PAGES`): nothing committed depends on it.
pub async fn checkpoints(mut conn: SqliteConnection, committed: Arc<Notify>) {
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
pub struct Writer {
    pool: SqlitePool,
    pub(super) batch: Option<Batch>,
    /// What the last member left open in the batch, finished by the next holder's first
    /// statement.
    left: Left,
    pub(super) next_batch: u64,
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
pub(super) struct Batch {
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
    pub fn new(pool: SqlitePool, committed: Arc<Notify>) -> Self {
        Self {
            pool,
            batch: None,
            left: Left::Nothing,
            next_batch: 0,
            committed,
        }
    }

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
            let (done, failed) = run_statements(&mut batch.tx, query).await;
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
                crate::storage::group_committed(batch.members);
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

impl WriteTx {
    /// Joins the open batch, opening one if none is; the member's savepoint opens with its
    /// first reads ([`WriteTx::first_reads`]).
    pub async fn join(shared: Arc<Mutex<Writer>>) -> Result<Self, StoreError> {
        let mut writer = shared.clone().lock_owned().await;
        let batch = writer.open_batch().await?;
        batch.members += 1;
        let (id, outcome) = (batch.id, batch.outcome.subscribe());
        Ok(WriteTx {
            writer: Some(writer),
            batch: id,
            opened: false,
            deferred: None,
            outcome,
            shared,
        })
    }

    /// The first reads of a transaction begun with [`WriteTx::join`], run in one query
    /// after what the last member left (`Writer::lead`) and the transaction's own savepoint.
    /// If that query fails past what the last member left, where it stopped is unknown, so
    /// the whole batch fails (no member is answered with writes that may be gone).
    pub async fn first_reads(&mut self, reads: Plan) -> Result<Vec<Vec<SqliteRow>>, StoreError> {
        if self.opened {
            return Sqlite::read_batch(self, reads).await;
        }
        let writer = self.writer.as_mut().expect("a write transaction in use");
        let mut first = Plan::default();
        first.read("SAVEPOINT member", vec![]);
        first.statements.extend(reads.statements);
        let mut results = writer.lead(first).await?;
        writer.left = Left::Undo;
        self.opened = true;
        results.remove(0);
        Ok(results)
    }
}
