//! Deductions decided together (PostgreSQL; DESIGN §8). Where writers run in parallel and lock
//! rows, a deduction alone is a transaction of about ten statements, and statements — not
//! fsyncs, which PostgreSQL already groups — are what it costs. So the deductions that arrive
//! while earlier ones are being written wait in a queue, and each free worker takes up to
//! [`MAX_BATCH`] of them and decides them in one transaction:
//!
//! 1. their mandates locked in one statement, in mandate order (so batches on any number of
//!    replicas never wait on each other in a cycle), then their request ids read;
//! 2. the facts read with one statement per kind: bill histories, usage rows, and the payers'
//!    wallets (locked, in account order);
//! 3. each deduction decided in arrival order by the caller's own `decide`, on the facts as the
//!    deductions before it in the batch left them (usage, bills, wallet balances, request ids):
//!    two debits on one mandate see each other exactly as if committed one after the other;
//! 4. everything decided written with one multi-row statement per table (usage and balances
//!    summed per row): the rows under the batch's locks and new rows in one trip, then the audit
//!    events, then the merchants' settlement sub-accounts (shared by concurrent batches, so
//!    held for the shortest time) with the ledger entries, and one commit.
//!
//! A lone deduction goes at once, on the path of one transaction per deduction
//! ([`super::execute::execute`]), as does any deduction whose facts this path does not read (a
//! notice, a one-off approval, a mandate that refunded within the look-back window) or whose
//! decision changes more than these rows (a single-use mandate consumed): those are decided
//! alone after the batch commits. When a batch fails for any reason (a request id taken by
//! another replica meanwhile, a deadlock the database still reports, a constraint), it is rolled
//! back and each of its deductions is decided alone, so one bad member never fails the others.
//! Every limit still holds under the database's row locks, across replicas, as before.
//!
//! The bank's answers about card charges queue the same way and are settled together
//! ([`settle`]).

mod overlay;
mod settle;
mod transaction;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::execute;
use super::facts::Asked;
use super::{DeductionInput, DeductionWrites, Executed, SettleDecision, Settled};
use crate::domain::deduction::Facts;
use crate::domain::mandate::Mandate;
use crate::storage::StoreError;
use crate::storage::backend::Backend;
use transaction::decide_all;

/// At most this many deductions are decided in one transaction.
pub const MAX_BATCH: usize = 32;
/// Batches in flight at once per replica, each on one pooled connection.
pub const WORKERS: usize = 4;
/// Deductions waiting for a worker at most; callers past it wait to join the queue.
const QUEUE: usize = 4096;

/// Decides a deduction from the mandate, the facts and the payer's wallet balance (minor
/// units), all read under the mandate's lock; owned, so that a worker can run it.
pub type Decision = Arc<dyn Fn(&Mandate, &Facts, i64) -> DeductionWrites + Send + Sync>;

/// How this replica's deductions were decided together, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Transactions that decided two or more deductions together.
    pub batches: u64,
    /// Deductions those transactions decided.
    pub deductions: u64,
    /// The most deductions one transaction decided.
    pub largest: u64,
    /// Batches rolled back and decided member by member.
    pub failed: u64,
    /// Requests answered with a deduction decided earlier in the same batch (one request id
    /// sent twice at once).
    pub repeats: u64,
    /// Transactions that settled two or more bank answers together.
    pub settle_batches: u64,
    /// Bank answers those transactions settled.
    pub settled: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    deductions: AtomicU64,
    largest: AtomicU64,
    failed: AtomicU64,
    repeats: AtomicU64,
    settle_batches: AtomicU64,
    settled: AtomicU64,
}

impl Counters {
    fn decided(&self, size: usize, repeats: u64) {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.deductions.fetch_add(size, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
        self.repeats.fetch_add(repeats, Ordering::Relaxed);
    }

    fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.batches.load(Ordering::Relaxed),
            deductions: self.deductions.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            repeats: self.repeats.load(Ordering::Relaxed),
            settle_batches: self.settle_batches.load(Ordering::Relaxed),
            settled: self.settled.load(Ordering::Relaxed),
        }
    }
}

pub(super) struct Job {
    pub(super) input: DeductionInput,
    pub(super) decide: Decision,
    reply: oneshot::Sender<Result<Executed, StoreError>>,
}

/// A bank answer waiting to be settled.
pub(super) struct SettleJob {
    pub(super) charge_id: String,
    pub(super) decide: SettleDecision,
    reply: oneshot::Sender<Result<Settled, StoreError>>,
}

/// The queues of deductions waiting to be decided and of bank answers waiting to be settled,
/// and the workers that take them.
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    settles: mpsc::Sender<SettleJob>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts the workers on the current runtime; they stop when the batcher is dropped.
    pub fn start<B: Backend>(backend: Arc<B>) -> Self {
        let counters = Arc::new(Counters::default());
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let (settles, waiting_settles) = mpsc::channel(QUEUE);
        let waiting_settles = Arc::new(Mutex::new(waiting_settles));
        for _ in 0..WORKERS {
            let (decider, counted) = (backend.clone(), counters.clone());
            tokio::spawn(work(waiting.clone(), move |jobs| {
                run(decider.clone(), jobs, counted.clone())
            }));
            let (settler, counted) = (backend.clone(), counters.clone());
            tokio::spawn(work(waiting_settles.clone(), move |jobs| {
                run(settler.clone(), jobs, counted.clone())
            }));
        }
        Self {
            queue,
            settles,
            counters,
        }
    }

    /// Records what the bank said about a charge, with whichever other answers are waiting.
    pub async fn settle(
        &self,
        charge_id: &str,
        decide: SettleDecision,
    ) -> Result<Settled, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = SettleJob {
            charge_id: charge_id.to_owned(),
            decide,
            reply,
        };
        let stopped = || StoreError::Unavailable("the charge's batch ended unanswered".into());
        self.settles.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub fn stats(&self) -> BatchStats {
        self.counters.stats()
    }

    /// Decides and records a deduction, with whichever others are waiting.
    pub async fn execute<B: Backend>(
        &self,
        backend: &B,
        input: DeductionInput,
        decide: Decision,
    ) -> Result<Executed, StoreError> {
        if !batchable(&input, &input.seen) {
            return execute::execute(backend, &input, &*decide).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            decide,
            reply,
        };
        let stopped = || StoreError::Unavailable("the deduction's batch ended unanswered".into());
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Whether the facts a deduction needs on `mandate` are the ones a batch reads.
pub(super) fn batchable(input: &DeductionInput, mandate: &Mandate) -> bool {
    let asked = asked(input);
    input.request.notice_id.is_none()
        && input.request.approval_id.is_none()
        && !asked.reads_recovery(mandate)
}

fn asked(input: &DeductionInput) -> Asked<'_> {
    Asked {
        request: &input.request,
        now: input.now,
        refunds_since: input.refunds_since,
    }
}

/// Takes up to [`MAX_BATCH`] waiting jobs at a time and runs them together, until the queue
/// closes.
async fn work<J, F, Fut>(waiting: Arc<Mutex<mpsc::Receiver<J>>>, run: F)
where
    F: Fn(Vec<J>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let mut jobs = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                let Ok(next) = waiting.try_recv() else {
                    break;
                };
                jobs.push(next);
            }
        }
        // A panic in a decision loses that batch's answers (their callers are told to retry),
        // never the worker.
        if let Err(panic) = tokio::spawn(run(jobs)).await {
            tracing::error!(%panic, "a batch panicked");
        }
    }
}

/// What became of one member of a batch.
pub(super) enum Outcome<T> {
    Answer(T),
    /// To be decided alone, after the batch.
    Alone,
}

/// What became of each member of a batch, and how many repeated a request decided earlier in
/// it.
type Decided<T> = (Vec<Outcome<T>>, u64);

/// A request waiting in one of the queues: what deciding it alone, and with others, is.
trait Member: Send + Sync + Sized + 'static {
    type Answer: Send + 'static;
    /// What a failed batch is named as in the log.
    const KIND: &'static str;

    /// Decides it on the one-transaction path.
    fn alone<B: Backend>(
        &self,
        backend: &B,
    ) -> impl Future<Output = Result<Self::Answer, StoreError>> + Send;

    /// Decides `jobs` inside `tx` and writes what was decided: each one's outcome, and how
    /// many were repeats of a request decided earlier in the batch.
    fn together<B: Backend>(
        tx: &mut B::Tx,
        jobs: &[Self],
    ) -> impl Future<Output = Result<Decided<Self::Answer>, StoreError>> + Send;

    /// Counts a batch of `size` decided together.
    fn counted(counters: &Counters, size: usize, repeats: u64);

    /// Tells the caller.
    fn reply(self, answer: Result<Self::Answer, StoreError>);
}

impl Member for Job {
    type Answer = Executed;
    const KIND: &'static str = "deductions";

    fn alone<B: Backend>(
        &self,
        backend: &B,
    ) -> impl Future<Output = Result<Executed, StoreError>> + Send {
        execute::execute(backend, &self.input, &*self.decide)
    }

    fn together<B: Backend>(
        tx: &mut B::Tx,
        jobs: &[Self],
    ) -> impl Future<Output = Result<Decided<Executed>, StoreError>> + Send {
        decide_all::<B>(tx, jobs)
    }

    fn counted(counters: &Counters, size: usize, repeats: u64) {
        counters.decided(size, repeats);
    }

    fn reply(self, answer: Result<Executed, StoreError>) {
        let _ = self.reply.send(answer);
    }
}

async fn run<B: Backend, M: Member>(backend: Arc<B>, mut jobs: Vec<M>, counters: Arc<Counters>) {
    if jobs.len() == 1 {
        let job = jobs.pop().expect("one job");
        alone(&*backend, job).await;
        return;
    }
    let outcomes = match together(&*backend, &jobs).await {
        Ok((outcomes, repeats)) => {
            M::counted(&counters, jobs.len(), repeats);
            outcomes
        }
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, size = jobs.len(), kind = M::KIND, "a batch failed; deciding each member alone");
            jobs.iter().map(|_| Outcome::Alone).collect()
        }
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Answer(answer) => job.reply(Ok(answer)),
            Outcome::Alone => {
                tokio::spawn({
                    let backend = backend.clone();
                    async move { alone(&*backend, job).await }
                });
            }
        }
    }
}

async fn alone<B: Backend, M: Member>(backend: &B, job: M) {
    let answer = job.alone(backend).await;
    job.reply(answer);
}

/// Decides the jobs in one transaction.
async fn together<B: Backend, M: Member>(
    backend: &B,
    jobs: &[M],
) -> Result<Decided<M::Answer>, StoreError> {
    let mut tx = backend.begin_write().await?;
    match M::together::<B>(&mut tx, jobs).await {
        Ok(outcomes) => {
            B::commit(tx).await?;
            Ok(outcomes)
        }
        Err(error) => {
            // The error is what counts; a failed rollback ends the connection anyway.
            let _ = B::rollback(tx).await;
            Err(error)
        }
    }
}
