//! PostgreSQL, the production backend. Writers from any number of replicas serialise per row:
//! a mandate update is conditional on its version, and an audit append takes its chain head's row
//! lock, so different mandates never wait on each other.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::StoreError;
use super::deduction_sql::impl_deduction_store;
use super::plan::{self, Plan};
use super::sql::impl_store;

/// Connections per replica; the database's `max_connections` bounds the sum over replicas.
const POOL_SIZE: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    fn pools(&self) -> [(&'static str, &PgPool); 1] {
        [("postgres", &self.pool)]
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// A read transaction over one consistent snapshot: READ COMMITTED would give each statement
    /// its own, so a chain's events and its head could come from different moments.
    async fn begin_snapshot(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// The same as `begin_write` here (SQLite saves a trip with it).
    async fn begin_deferred(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.begin_write().await
    }
}

impl PostgresStore {
    /// Writers run in parallel and lock rows: the order in which rows are locked matters.
    const SERIAL_WRITER: bool = false;

    /// Runs a plan statement by statement (the extended protocol takes one statement per
    /// query); each must change the rows the plan says.
    async fn run_plan(conn: &mut sqlx::PgConnection, plan: Plan) -> Result<(), StoreError> {
        for statement in plan.statements {
            let done = plan::query::<sqlx::Postgres>(statement.sql.into_owned(), statement.binds)
                .execute(&mut *conn)
                .await
                .map_err(super::conflict_if_unique)?;
            if done.rows_affected() != statement.rows {
                return Err(StoreError::Corrupt(format!(
                    "a planned write changed {} rows instead of {}",
                    done.rows_affected(),
                    statement.rows
                )));
            }
        }
        Ok(())
    }
}

impl PostgresStore {
    /// Runs reads one after another (one statement per query on this protocol), in order:
    /// a read that locks (`FOR UPDATE`) holds its lock for those after it.
    async fn read_batch(
        conn: &mut sqlx::PgConnection,
        reads: Plan,
    ) -> Result<Vec<Vec<sqlx::postgres::PgRow>>, StoreError> {
        let mut results = Vec::with_capacity(reads.statements.len());
        for read in reads.statements {
            results.push(
                plan::query::<sqlx::Postgres>(read.sql.into_owned(), read.binds)
                    .fetch_all(&mut *conn)
                    .await?,
            );
        }
        Ok(results)
    }

    /// Runs the plan now (SQLite leaves it to the next statement on its one writer).
    async fn defer_plan(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        plan: Plan,
    ) -> Result<(), StoreError> {
        Self::run_plan(tx, plan).await
    }

    /// The first reads of a transaction from `begin_deferred`: no different here.
    async fn read_batch_first(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        reads: Plan,
    ) -> Result<Vec<Vec<sqlx::postgres::PgRow>>, StoreError> {
        Self::read_batch(tx, reads).await
    }
}

impl_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::Transaction<'static, sqlx::Postgres>
);
impl_deduction_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::Transaction<'static, sqlx::Postgres>,
    " FOR UPDATE"
);
