//! Property tests over the real server (DESIGN §3.1, §4, §9.1, §9.4): random sequences of
//! debits, refunds, amendments, pauses, wallet credits and clock moves against one mandate,
//! checked after every step against a model of the mandate, its period usage and the wallet.
//!
//! Each case spawns its own app (fresh database) in its own tokio runtime: proptest is sync.
//! The model predicts every answer exactly (status, every violated rule, funding attempts,
//! balances); independently of the model, the deductions read back with ListDeductions are
//! grouped by Asia/Shanghai calendar month and checked against the limits GetMandate reported
//! in force at each debit, and the ledger must balance.

mod model;
mod play;
mod scenario;
mod verify;

use proptest::test_runner::{Config, TestRunner};

use crate::harness::Backend;
use play::play;
use scenario::scenario;

/// Runs `cases` random scenarios of `ops` steps on `backend`, each in its own runtime and app.
fn run(backend: Backend, cases: u32, ops: std::ops::RangeInclusive<usize>) {
    let mut runner = TestRunner::new(Config {
        cases,
        // Every case is a real server; keep a failing run's shrinking bounded.
        max_shrink_iters: 24,
        // Failures print the minimal scenario; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&scenario(ops), |scenario| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(play(backend, scenario));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn random_operations_keep_limits_and_ledger_sqlite() {
    run(Backend::Sqlite, 8, 20..=40);
}

#[test]
fn random_operations_keep_limits_and_ledger_postgres() {
    run(Backend::Postgres, 4, 20..=30);
}
