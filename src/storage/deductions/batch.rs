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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::execute::{
    self, ADVANCE_USAGE, ADVANCE_USAGE_CONFLICT, INSERT_CHARGES, INSERT_DEDUCTIONS, charge_row,
    deduction_row, usage_row,
};
use super::facts::Asked;
use super::{DeductionInput, DeductionWrites, Executed, Reservation};
use crate::domain::audit::mandate_chain_id;
use crate::domain::deduction::{BillHistory, Deduction, DeductionStatus, Facts, Usage, period_key};
use crate::domain::ledger::Account;
use crate::domain::mandate::Mandate;
use crate::storage::backend::{Backend, Sql, StoredRow};
use crate::storage::events::{self, EventRow};
use crate::storage::plan::{Bind, Plan, Planned};
use crate::storage::rows::{decode, micros};
use crate::storage::{StoreError, audit, ledger, mandates};

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

struct Job {
    input: DeductionInput,
    decide: Decision,
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
fn batchable(input: &DeductionInput, mandate: &Mandate) -> bool {
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
enum Outcome {
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

/// A merchant's request id.
type Key = (String, String);

/// The facts of a batch as its decisions so far left them.
#[derive(Default)]
struct Overlay {
    /// Request ids used, with the deduction and the fingerprint of the request that used them.
    used: HashMap<Key, (Deduction, String)>,
    /// Statuses of the deductions of a bill (mandate, bill key).
    bills: HashMap<Key, Vec<DeductionStatus>>,
    /// Usage rows (mandate, period key); absent ones are empty.
    usage: HashMap<Key, Usage>,
    /// Wallet balances by account; absent ones are 0.
    balances: HashMap<String, i64>,
}

impl Overlay {
    fn usage(&self, mandate_id: &str, key: &str) -> Usage {
        self.usage
            .get(&(mandate_id.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    fn facts(&self, input: &DeductionInput, mandate: &Mandate) -> Facts {
        let id = mandate.id.as_str();
        let bill_key = (
            id.to_owned(),
            input.request.bill_reference.key().as_str().to_owned(),
        );
        let statuses = self.bills.get(&bill_key).into_iter().flatten().copied();
        Facts {
            now: input.now,
            bill: BillHistory::of(statuses),
            notice: None,
            period_usage: period_key(mandate, input.now)
                .map(|period| self.usage(id, &period))
                .unwrap_or_default(),
            total_usage: self.usage(id, "total"),
            approval: None,
            recovery: None,
        }
    }

    /// Takes a decided deduction's effects into the facts of those after it.
    fn apply(&mut self, writes: &DeductionWrites, fingerprint: &str) -> Result<(), StoreError> {
        let d = &writes.deduction;
        let id = d.mandate_id.as_str();
        let key = (d.merchant_id.to_string(), d.request_id.clone());
        self.used.insert(key, (d.clone(), fingerprint.to_owned()));
        let bill_key = (
            id.to_owned(),
            d.request.bill_reference.key().as_str().to_owned(),
        );
        self.bills.entry(bill_key).or_default().push(d.status);
        let out_of_range = || StoreError::OutOfRange(format!("the usage of mandate {id}"));
        if let Reservation::Take { usage_keys, .. } = &writes.reservation {
            for period in usage_keys {
                let usage = self
                    .usage
                    .entry((id.to_owned(), period.clone()))
                    .or_default();
                usage.amount_minor = usage
                    .amount_minor
                    .checked_add(d.request.amount.minor())
                    .ok_or_else(out_of_range)?;
                usage.count = usage.count.checked_add(1).ok_or_else(out_of_range)?;
            }
        }
        if let Some(movement) = &writes.ledger {
            let amount = movement.amount_minor;
            for (account, delta) in [(&movement.from, -amount), (&movement.to, amount)] {
                if let Some(balance) = self.balances.get_mut(&account.id) {
                    *balance = balance.checked_add(delta).ok_or_else(out_of_range)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a decision writes only what a batch writes: a new deduction, its usage, its ledger
/// movement, a card charge to make, its collection time, its events, and audit events on its
/// mandate's chain.
fn writes_batch(writes: &DeductionWrites) -> bool {
    let reserved_alone = match &writes.reservation {
        Reservation::None => false,
        Reservation::Take {
            notice, approval, ..
        } => notice.is_some() || approval.is_some(),
        Reservation::Release { .. } => true,
    };
    let mandate_chain = mandate_chain_id(writes.deduction.mandate_id.as_str());
    !reserved_alone
        && writes.audits.iter().all(|a| a.chain_id() == mandate_chain)
        && writes.charge_update.is_none()
        && writes
            .collected
            .as_ref()
            .is_none_or(|collected| collected.consumed.is_none())
}

fn wallet_of(mandate: &Mandate) -> String {
    Account::wallet(&mandate.payer_id, mandate.terms.currency).id
}

/// `$1, …, $n`.
fn parameters(n: usize) -> String {
    (1..=n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const LOCK_MANDATES: &str = "SELECT document, last_collected_at_us, last_refunded_at_us, \
    mandate_id FROM mandates WHERE mandate_id IN (";
const USED_KEYS: &str = "SELECT merchant_id, request_id, document, fingerprint FROM deductions \
    WHERE (merchant_id, request_id) IN (";
const BILLS: &str =
    "SELECT mandate_id, bill_key, status FROM deductions WHERE (mandate_id, bill_key) IN (";
const USAGES: &str = "SELECT mandate_id, period_key, amount_minor, debit_count \
    FROM mandate_usage WHERE (mandate_id, period_key) IN (";
const LOCK_WALLETS: &str =
    "SELECT account_id, balance_minor FROM ledger_accounts WHERE account_id IN (";
/// Followed by `VALUES` of (mandate, collected at, expires at), one row per mandate.
const COLLECTED: &str = "UPDATE mandates SET last_collected_at_us = v.at, \
    expires_at_us = v.expires_at FROM (";
const COLLECTED_TAIL: &str =
    ") AS v (mandate_id, at, expires_at) WHERE mandates.mandate_id = v.mandate_id";

/// Runs a read of `head` with a `VALUES` list of `rows`, then `tail`; no rows, no read.
async fn read_rows<B: Backend>(
    conn: &mut B::Conn,
    head: &str,
    rows: Vec<Vec<Bind>>,
    tail: &str,
) -> Result<Vec<B::Row>, StoreError> {
    match Planned::rows(head, rows, tail) {
        Some(read) => B::fetch(conn, read.sql, read.binds).await,
        None => Ok(vec![]),
    }
}

/// Decides every job of a batch inside `tx` and writes what was decided.
async fn decide_all<B: Backend>(
    tx: &mut B::Tx,
    jobs: &[Job],
) -> Result<(Vec<Outcome>, u64), StoreError> {
    // 1. The mandates, locked in order; then the request ids, read once they are held: a
    // concurrent request with the same key on the same mandate either committed before
    // (visible now) or waits behind this batch.
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j.input.mandate_id.as_str()).collect();
    let lock = format!(
        "{LOCK_MANDATES}{}) ORDER BY mandate_id{}",
        parameters(ids.len()),
        B::ROW_LOCK
    );
    let binds = ids.iter().map(|&id| id.into()).collect();
    let mut current = HashMap::new();
    for row in B::fetch(tx, Sql::Owned(lock), binds).await? {
        current.insert(row.text(3)?, mandates::decode_current(&row)?);
    }
    let keys = jobs
        .iter()
        .map(|j| {
            let input = &j.input;
            vec![
                input.merchant_id.as_str().into(),
                input.request_id.as_str().into(),
            ]
        })
        .collect();
    let mut overlay = Overlay::default();
    for row in read_rows::<B>(tx, USED_KEYS, keys, ")").await? {
        let key = (row.text(0)?, row.text(1)?);
        overlay
            .used
            .insert(key, (decode(&row.text(2)?)?, row.text(3)?));
    }

    // 2. The facts of the deductions to decide, one statement per kind.
    let (mut bills, mut usages, mut wallets) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for job in jobs {
        let input = &job.input;
        let Some(mandate) = current.get(input.mandate_id.as_str()) else {
            continue;
        };
        let id = mandate.id.as_str().to_owned();
        bills.insert((
            id.clone(),
            input.request.bill_reference.key().as_str().to_owned(),
        ));
        usages.insert((id.clone(), "total".to_owned()));
        usages.extend(period_key(mandate, input.now).map(|period| (id.clone(), period)));
        wallets.insert(wallet_of(mandate));
    }
    let pairs = |set: BTreeSet<Key>| {
        set.into_iter()
            .map(|(a, b)| vec![a.into(), b.into()])
            .collect()
    };
    for row in read_rows::<B>(tx, BILLS, pairs(bills), ")").await? {
        let status = row.text(2)?;
        let status = DeductionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("deduction status {status}")))?;
        let key = (row.text(0)?, row.text(1)?);
        overlay.bills.entry(key).or_default().push(status);
    }
    for row in read_rows::<B>(tx, USAGES, pairs(usages), ")").await? {
        let usage = Usage {
            amount_minor: row.int(2)?,
            count: row.int(3)?,
        };
        overlay.usage.insert((row.text(0)?, row.text(1)?), usage);
    }
    if !wallets.is_empty() {
        let lock = format!(
            "{LOCK_WALLETS}{}) ORDER BY account_id{}",
            parameters(wallets.len()),
            B::ROW_LOCK
        );
        let binds = wallets.into_iter().map(Bind::from).collect();
        for row in B::fetch(tx, Sql::Owned(lock), binds).await? {
            overlay.balances.insert(row.text(0)?, row.int(1)?);
        }
    }

    // 3. Each deduction in arrival order, on the facts those before it left.
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut decided: Vec<(&Job, DeductionWrites)> = Vec::new();
    let mut repeats = 0;
    for job in jobs {
        let input = &job.input;
        let key = (input.merchant_id.to_string(), input.request_id.clone());
        if let Some((deduction, fingerprint)) = overlay.used.get(&key) {
            repeats += u64::from(decided.iter().any(|(earlier, _)| {
                earlier.input.merchant_id == input.merchant_id
                    && earlier.input.request_id == input.request_id
            }));
            outcomes.push(Outcome::Answer(Executed::Existing {
                deduction: Box::new(deduction.clone()),
                fingerprint: fingerprint.clone(),
            }));
            continue;
        }
        let Some(mandate) = current.get(input.mandate_id.as_str()) else {
            outcomes.push(Outcome::Answer(Executed::MandateNotFound));
            continue;
        };
        if !batchable(input, mandate) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        let balance = overlay
            .balances
            .get(&wallet_of(mandate))
            .copied()
            .unwrap_or(0);
        let writes = (job.decide)(mandate, &overlay.facts(input, mandate), balance);
        if !writes_batch(&writes) {
            outcomes.push(Outcome::Alone);
            continue;
        }
        overlay.apply(&writes, &input.fingerprint)?;
        outcomes.push(Outcome::Answer(Executed::New(
            Box::new(writes.deduction.clone()),
            writes.new_charge.as_ref().map(|new| new.charge.clone()),
        )));
        decided.push((job, writes));
    }

    // 4. What was decided, one statement per table.
    write_all::<B>(tx, &decided).await?;
    Ok((outcomes, repeats))
}

/// Writes the decisions of a batch: the rows under locks the batch holds (or new ones) in one
/// statement, the ledger after them (other accounts in order), the audit events last, as every
/// other write takes them.
async fn write_all<B: Backend>(
    tx: &mut B::Tx,
    decided: &[(&Job, DeductionWrites)],
) -> Result<(), StoreError> {
    if decided.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(decided.len());
    let mut usage: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
    let (mut charges, mut events, mut moves) = (vec![], vec![], vec![]);
    let mut collected: BTreeMap<&str, (i64, Option<i64>)> = BTreeMap::new();
    let out_of_range = |id: &str| StoreError::OutOfRange(format!("the usage of mandate {id}"));
    for (job, writes) in decided {
        let d = &writes.deduction;
        let id = d.mandate_id.as_str();
        rows.push(deduction_row(d, &job.input.fingerprint)?);
        if let Reservation::Take { usage_keys, .. } = &writes.reservation {
            for period in usage_keys {
                let (amount, debits) = usage.entry((id.to_owned(), period.clone())).or_default();
                *amount = amount
                    .checked_add(d.request.amount.minor())
                    .ok_or_else(|| out_of_range(id))?;
                *debits += 1;
            }
        }
        if let Some(new) = &writes.new_charge {
            charges.push(charge_row(new)?);
        }
        if let Some(movement) = &writes.ledger {
            moves.push((movement, d.updated_at));
        }
        if let Some(c) = &writes.collected {
            let (at, expires_at) = (micros(c.at), c.expires_at.map(micros));
            let latest = collected.entry(id).or_insert((at, expires_at));
            if at >= latest.0 {
                *latest = (at, expires_at);
            }
        }
        events.push(EventRow::deduction(d, d.updated_at));
    }
    let mut plan = Plan::default();
    plan.push_rows(INSERT_DEDUCTIONS, rows, "");
    let usage = usage
        .into_iter()
        .map(|((id, period), (amount, debits))| usage_row(&id, &period, amount, debits))
        .collect();
    plan.push_rows(ADVANCE_USAGE, usage, ADVANCE_USAGE_CONFLICT);
    plan.push_rows(INSERT_CHARGES, charges, "");
    let collected = collected
        .into_iter()
        .map(|(id, (at, expires_at))| vec![id.into(), at.into(), expires_at.into()])
        .collect();
    plan.push_rows(COLLECTED, collected, COLLECTED_TAIL);
    events::plan_rows(&mut plan, &events);
    let mut last = Plan::default();
    ledger::plan_moves(&mut plan, &mut last, &moves)?;
    // New rows, and rows whose locks the batch holds (the mandates, their usage under them,
    // the wallets): the order cannot matter, one trip.
    B::run_plan_at_once(tx, plan).await?;
    // The mandates' chain heads: every transaction appending to a mandate's chain holds the
    // mandate's lock first (`writes_batch` keeps other chains out), so these cannot be part
    // of a cycle whatever comes after them.
    let audits = decided.iter().flat_map(|(_, writes)| &writes.audits);
    audit::append_many::<B>(tx, audits).await?;
    // Last, the merchants' sub-accounts, which concurrent batches share: one upsert taking
    // them in id order, then the entries naming them, in one trip, held only until the commit.
    B::run_plan_at_once(tx, last).await
}
