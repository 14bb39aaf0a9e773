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

mod overlay;
mod transaction;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::execute;
use super::facts::Asked;
use super::{DeductionInput, DeductionWrites, Executed};
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
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    deductions: AtomicU64,
    largest: AtomicU64,
    failed: AtomicU64,
    repeats: AtomicU64,
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
        }
    }
}

pub(super) struct Job {
    pub(super) input: DeductionInput,
    pub(super) decide: Decision,
    reply: oneshot::Sender<Result<Executed, StoreError>>,
}

/// The queue of deductions waiting to be decided, and the workers that decide them.
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts the workers on the current runtime; they stop when the batcher is dropped.
    pub fn start<B: Backend>(backend: Arc<B>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let counters = Arc::new(Counters::default());
        for _ in 0..WORKERS {
            tokio::spawn(work(backend.clone(), waiting.clone(), counters.clone()));
        }
        Self { queue, counters }
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

async fn work<B: Backend>(
    backend: Arc<B>,
    waiting: Arc<Mutex<mpsc::Receiver<Job>>>,
    counters: Arc<Counters>,
) {
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
        if let Err(panic) = tokio::spawn(run(backend.clone(), jobs, counters.clone())).await {
            tracing::error!(%panic, "a batch of deductions panicked");
        }
    }
}

/// What became of one member of a batch.
pub(super) enum Outcome {
    Answer(Executed),
    /// To be decided alone, after the batch.
    Alone,
}

async fn run<B: Backend>(backend: Arc<B>, mut jobs: Vec<Job>, counters: Arc<Counters>) {
    if jobs.len() == 1 {
        let job = jobs.pop().expect("one job");
        alone(&*backend, job).await;
        return;
    }
    let outcomes = match together(&*backend, &jobs).await {
        Ok((outcomes, repeats)) => {
            counters.decided(jobs.len(), repeats);
            outcomes
        }
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, size = jobs.len(), "a batch of deductions failed; deciding each alone");
            jobs.iter().map(|_| Outcome::Alone).collect()
        }
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Answer(executed) => {
                let _ = job.reply.send(Ok(executed));
            }
            Outcome::Alone => {
                tokio::spawn({
                    let backend = backend.clone();
                    async move { alone(&*backend, job).await }
                });
            }
        }
    }
}

async fn alone<B: Backend>(backend: &B, job: Job) {
    let executed = execute::execute(backend, &job.input, &*job.decide).await;
    let _ = job.reply.send(executed);
}

/// Decides the jobs in one transaction: each one's outcome, and how many were repeats of a
/// request id used earlier in the batch.
async fn together<B: Backend>(
    backend: &B,
    jobs: &[Job],
) -> Result<(Vec<Outcome>, u64), StoreError> {
    let mut tx = backend.begin_write().await?;
    match decide_all::<B>(&mut tx, jobs).await {
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
