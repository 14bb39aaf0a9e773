//! The fault test (DESIGN §8, §9): three `withholding serve` replicas of the real binary on one
//! throwaway PostgreSQL database, cards at the bank simulator, and concurrent clients over
//! real gRPC — mandates with period and lifetime limits funded by wallets and cards, wallet
//! credits, deductions, refunds, pauses and resumes, a share of every write sent again under
//! its request id (same body) to another replica, after the answer or at the same time — while
//! one replica at a time is killed with SIGKILL at a random moment and started again on its
//! port. Afterwards every invariant of §9 that applies is checked from the database and the
//! bank's own ledger (see `invariants/`): limits and usage rows (1), one deduction per request
//! id and one charge per deduction (2), every acknowledged write stored with its audit event
//! (3), the wallet ledger conserved (4), every audit chain intact (7), and every answer definite
//! and never INTERNAL or UNKNOWN from a server (8). A client sees connection errors from a dead
//! replica and ABORTED; it retries those elsewhere and they are counted, not failures.
//!
//! PostgreSQL only (`scripts/test` starts a throwaway server):
//!
//! ```sh
//! nice -n 10 scripts/test --test api faults::replicas -- --nocapture
//! ```
//!
//! Environment:
//! - `WITHHOLDING_FAULT_CYCLES`: how many kills (default 10, about 20 s on two cores). The
//!   long run, 1,000 kills (about 27 minutes on two cores):
//!   `WITHHOLDING_FAULT_CYCLES=1000 nice -n 10 scripts/test --test api faults::replicas -- --nocapture`
//! - `WITHHOLDING_FAULT_SEED`: the seed a run prints first; it fixes the run's choices (the
//!   operations, amounts, deliveries, which replica dies after how long). The interleaving of
//!   processes is the machine's, so a replay makes the same kind of run, not the same one.
//! - `WITHHOLDING_FAULT_KEEP=1`: keep the run's folder (replica logs) after a pass; it
//!   is always kept after a failure, and its path printed.

mod cluster;
mod invariants;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Backend, TestDatabase};
use cluster::{Cluster, REPLICAS};
use workload::World;

const DEFAULT_CYCLES: u64 = 10;
/// Concurrent clients: enough to keep every replica busy when it dies.
const WORKERS: usize = 8;
/// Time between two kills, in ms: a random moment in this range.
const KILL_EVERY_MS: std::ops::Range<u64> = 500..2_000;
/// How long the workers may take to finish their last operation once told to stop: a request
/// and its resend, each with the whole retry budget, and a margin.
const WORKERS_STOP_WITHIN: Duration = Duration::from_secs(150);
/// How many violations of each invariant the summary lists in full.
const SHOWN_PER_INVARIANT: usize = 12;

/// SplitMix64: small, seedable, and all a run needs to choose operations and moments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0); the modulo bias is immaterial for these small `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn index(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("usize fits u64");
        usize::try_from(self.below(n)).expect("below a usize")
    }

    /// An independent stream (for one worker).
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// A seed from the operating system (63 bits, so it reads back as any integer type).
pub fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    u64::from_le_bytes(bytes) >> 1
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_at_random_keep_every_invariant() {
    let cycles = env_number("WITHHOLDING_FAULT_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_number("WITHHOLDING_FAULT_SEED").unwrap_or_else(random_seed);
    eprintln!(
        "fault run: seed {seed}, {cycles} kills (replay its choices with WITHHOLDING_FAULT_SEED={seed})"
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    // Removed only after a pass: the logs of a failed or aborted run stay for reading.
    let dir = tempfile::Builder::new()
        .prefix("withholding-faults-")
        .tempdir()
        .expect("a folder for the run")
        .keep();
    eprintln!("fault run folder: {}", dir.display());
    let db = TestDatabase::new(Backend::Postgres).await;
    let secret: Vec<u8> = (0..4).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
    let mut cluster = Cluster::start(&db.url, &dir, &secret).await;
    let world = Arc::new(World::new(&cluster.ports(), cluster.bank_url(), &secret));
    world.setup(&mut rng).await;

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(world.clone().work(rng.fork())))
        .collect();
    let chaos_started = Instant::now();
    let mut kills = [0u32; REPLICAS];
    for _ in 0..cycles {
        let wait = KILL_EVERY_MS.start + rng.below(KILL_EVERY_MS.end - KILL_EVERY_MS.start);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = rng.index(REPLICAS);
        cluster.kill(victim);
        kills[victim] += 1;
        // Now and then it stays down a while: clients then meet refused connections too, not
        // only broken ones.
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        }
        cluster.restart(victim).await;
    }
    let chaos = chaos_started.elapsed();
    world.stop();
    for worker in workers {
        tokio::time::timeout(WORKERS_STOP_WITHIN, worker)
            .await
            .expect("a worker did not finish its last operation")
            .expect("a worker panicked");
    }

    // Right after the kills, charges may still be open; what must already hold, holds.
    let pool = sqlx::PgPool::connect(&db.url)
        .await
        .expect("connect to the run's database");
    let (mut early, open) = invariants::while_open(&pool, &cluster.bank_charges().await).await;
    let plans = world.mandates.lock().unwrap().clone();
    let open_limits = invariants::limits_now(&pool, &plans).await;
    early.extend(
        open_limits
            .violations
            .into_iter()
            .map(|v| format!("{v} (with charges open)")),
    );
    let settled = invariants::settle(&pool).await;
    pool.close().await;
    if let Err(stragglers) = &settled {
        early.push(format!("I2 settle: {stragglers}"));
    }
    // One last crash of everything: only what the database kept counts.
    cluster.kill_all();
    let bank = cluster.bank_charges().await;
    let records = std::mem::take(&mut *world.records.lock().unwrap());
    let mut report = invariants::check(&db.url, &bank, &records, &plans).await;
    report.violations.splice(0..0, early);
    for (error, n) in world.server_errors.lock().unwrap().iter() {
        report
            .violations
            .push(format!("I8 answers: servers answered {error} {n} times"));
    }

    // The summary.
    let mut out = String::new();
    let starts: Vec<u32> = cluster.replicas.iter().map(|r| r.starts).collect();
    out.push_str(&format!(
        "fault run: seed {seed}; {cycles} kills (per replica {kills:?}, starts {starts:?}) during {:.1} s; {WORKERS} workers; {:.1} s in all\n",
        chaos.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    out.push_str(&format!(
        "after the kills: {open} card charges open, settled in {settled:?}\n"
    ));
    out.push_str(&format!(
        "deliveries of writes: {:?}\n",
        world.deliveries.lock().unwrap()
    ));
    out.push_str("answers (every attempt), by rpc and status:\n");
    let mut by_rpc: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((rpc, label), n) in world.tally.lock().unwrap().iter() {
        by_rpc.entry(rpc).or_default().push(format!("{label} {n}"));
    }
    for (rpc, labels) in by_rpc {
        out.push_str(&format!("  {rpc}: {}\n", labels.join(", ")));
    }
    let causes = internal_errors_logged(&dir);
    if !causes.is_empty() {
        out.push_str("internal errors in the replicas' logs, by cause:\n");
        for (cause, n) in causes {
            out.push_str(&format!("  {n} × {cause}\n"));
        }
    }
    out.push_str("checked:\n");
    for line in &report.checked {
        out.push_str(&format!("  {line}\n"));
    }
    if report.violations.is_empty() {
        out.push_str("violations: none\n");
    } else {
        // By invariant, so that many of one kind cannot hide another.
        let mut by_invariant: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for v in &report.violations {
            let invariant = v.split_once(':').map_or(v.as_str(), |(i, _)| i);
            by_invariant.entry(invariant).or_default().push(v);
        }
        out.push_str(&format!("violations: {}\n", report.violations.len()));
        for (invariant, vs) in by_invariant {
            out.push_str(&format!("  {invariant}: {}\n", vs.len()));
            for v in vs.iter().take(SHOWN_PER_INVARIANT) {
                out.push_str(&format!("    {v}\n"));
            }
        }
    }
    eprint!("{out}");

    let keep = std::env::var("WITHHOLDING_FAULT_KEEP").is_ok_and(|v| v == "1");
    if keep || !report.violations.is_empty() {
        eprintln!("fault run folder kept: {}", dir.display());
    } else {
        drop(cluster);
        std::fs::remove_dir_all(&dir).expect("remove the run folder");
    }
    assert!(
        report.violations.is_empty(),
        "{} invariant violations in the fault run (seed {seed}); the first: {:#?}",
        report.violations.len(),
        report.violations.iter().take(10).collect::<Vec<_>>()
    );
}

/// The causes the replicas logged with "internal error" (what a server answered INTERNAL for),
/// counted.
fn internal_errors_logged(dir: &std::path::Path) -> BTreeMap<String, usize> {
    let mut causes = BTreeMap::new();
    for i in 0..REPLICAS {
        let log = std::fs::read_to_string(dir.join(format!("replica-{i}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("internal error")) {
            let cause = line.split_once("error=").map_or(line, |(_, cause)| cause);
            *causes.entry(cause.trim().to_owned()).or_default() += 1;
        }
    }
    causes
}
