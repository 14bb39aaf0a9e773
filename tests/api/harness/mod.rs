//! The one fixture layer of the end-to-end tests: spawns the real server (real gRPC, real
//! database) on 127.0.0.1:0 for one test, on either backend, with a manual clock and known token
//! keys, and gives tests one call for what most of them do (`TestApp::mandate_for`, `deduct`,
//! `refund`, …). Test files `use crate::harness::*`.

mod app;
mod auth;
mod bank;
mod binary;
mod deductions;
mod fixture;
mod requests;
mod rpc;
mod state;
mod status;

pub use app::*;
pub use auth::*;
pub use bank::*;
pub use binary::*;
pub use deductions::*;
pub use fixture::*;
pub use requests::*;
pub use rpc::*;
pub use state::*;
pub use status::*;

use std::time::{Duration, Instant};

/// The generated code, named here once for every test file.
pub use withholding::pb::{self, bank as bank_pb};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one async test body on both backends: `both_backends!(name);` turns `async fn
/// name(backend: Backend)` into `name::sqlite` and `name::postgres` tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::harness::Backend::Postgres).await
            }
        }
    )*};
}

/// A fresh, empty database for one test.
pub struct TestDatabase {
    pub url: String,
    /// The same database on the streaming replica, for compliance reads (`with_replica`).
    pub read_url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// The same database again, for a second server ("replica") on it; the first keeps it alive.
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            read_url: self.read_url.clone(),
            _dir: None,
        }
    }

    /// This PostgreSQL database with its copy on the streaming replica scripts/test starts
    /// (WITHHOLDING_TEST_PG_REPLICA_URL) for compliance reads, once the replica has it.
    pub async fn with_replica(mut self) -> Self {
        let replica = std::env::var("WITHHOLDING_TEST_PG_REPLICA_URL").expect(
            "WITHHOLDING_TEST_PG_REPLICA_URL is not set: run the suite with scripts/test, which starts a streaming replica",
        );
        let base = replica.rsplit_once('/').expect("URL has a database").0;
        let name = self.url.rsplit_once('/').expect("URL has a database").1;
        let read_url = format!("{base}/{name}");
        eventually(
            "the replica to have the test database",
            Duration::from_secs(30),
            || {
                let read_url = read_url.clone();
                async move { sqlx::PgPool::connect(&read_url).await.ok().map(drop) }
            },
        )
        .await;
        self.read_url = Some(read_url);
        self
    }

    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    read_url: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = std::env::var("WITHHOLDING_TEST_PG_URL").expect(
                    "WITHHOLDING_TEST_PG_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
                );
                let name = format!("t_{}", uuid::Uuid::now_v7().simple());
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("connect to admin database");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create test database");
                pool.close().await;
                let base = admin.rsplit_once('/').expect("URL has a database").0;
                Self {
                    url: format!("{base}/{name}"),
                    read_url: None,
                    _dir: None,
                }
            }
        }
    }
}

/// Polls `probe` every 20 ms until it yields a value, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "gave up after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
