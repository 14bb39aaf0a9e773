//! PostgreSQL, the production backend. Writers from any number of replicas serialise per row:
//! a mandate update is conditional on its version, and an audit append takes its chain head's row
//! lock, so different mandates never wait on each other.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::SqlSafeStr;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};

use super::StoreError;
use super::backend::{Backend, Sql};
use super::plan::{self, Bind, Plan};

/// Connections per replica; the database's `max_connections` bounds the sum over replicas.
const POOL_SIZE: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection: a batch of deductions sends its multi-row
/// statements with as many `VALUES` rows as it has members, each size a statement of its own,
/// and an evicted one costs a round trip and a plan to prepare again.
const STATEMENT_CACHE: usize = 1024;

/// Connections per replica to the read replica.
const REPLICA_POOL_SIZE: u32 = 8;
/// How long a compliance read that must be current waits for the read replica to apply what
/// the primary had committed, before it reads the primary instead.
const REPLICA_WAIT: Duration = Duration::from_secs(1);
/// How often the read replica's progress is asked for meanwhile.
const REPLICA_POLL: Duration = Duration::from_millis(5);
/// Which cluster a server belongs to (a standby shares its primary's identifier) and which of
/// its databases a connection is on.
const IDENTITY: &str =
    "SELECT system_identifier::text, current_database()::text FROM pg_control_system()";
/// A read transaction over one consistent snapshot.
const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
/// Where the primary's next WAL record goes: every transaction visible there is before it. Not
/// the write position (`pg_current_wal_lsn`): with `synchronous_commit = off` a transaction is
/// visible before its commit record is written out.
const PRIMARY_LSN: &str = "SELECT pg_current_wal_insert_lsn()::text";
/// Whether the standby has applied every record before `$1` (NULL when it is not a standby).
/// An insert position at the start of a WAL page points past the page's header (24 bytes; 40
/// at a segment's start) while replay ends at the page boundary, with no record between.
const REPLAYED: &str = "SELECT r >= $1::pg_lsn OR (pg_wal_lsn_diff($1::pg_lsn, r) <= 40 \
    AND pg_wal_lsn_diff(r, '0/0') % current_setting('wal_block_size')::numeric = 0) \
    FROM (SELECT pg_last_wal_replay_lsn() AS r) replay";

/// WAL bytes between the standby's replay position and `$1`, none when it has passed it.
const BEHIND: &str =
    "SELECT greatest(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()), 0)::bigint";

pub struct Postgres {
    pool: PgPool,
    /// A hot standby serving compliance reads, if configured.
    replica: Option<Replica>,
}

/// A hot standby and the schema it must have before it answers: the primary's WAL insert
/// position once this service's migrations were applied. A standby still replaying them has
/// tables or columns missing, so until it is past that position every read goes to the primary.
struct Replica {
    pool: PgPool,
    schema_lsn: String,
    /// Set once the standby has replayed `schema_lsn`; replay only moves forward.
    has_schema: AtomicBool,
}

impl Replica {
    /// Whether the standby on `conn` has applied every record before `lsn`.
    async fn replayed(conn: &mut PgConnection, lsn: &str) -> Result<bool, StoreError> {
        let replayed: Option<bool> = sqlx::query_scalar(REPLAYED)
            .bind(lsn)
            .fetch_one(conn)
            .await?;
        Ok(replayed == Some(true))
    }

    /// A connection to the standby if it has this service's schema.
    async fn with_schema(&self) -> Result<Option<PoolConnection<sqlx::Postgres>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.has_schema.load(Ordering::Relaxed) {
            return Ok(Some(conn));
        }
        if Self::replayed(&mut conn, &self.schema_lsn).await? {
            self.has_schema.store(true, Ordering::Relaxed);
            return Ok(Some(conn));
        }
        tracing::warn!(
            lsn = %self.schema_lsn,
            "the read replica has not replayed this service's migrations; reading the primary"
        );
        Ok(None)
    }
}

impl Postgres {
    /// The primary's WAL insert position now ([`PRIMARY_LSN`]).
    async fn primary_lsn(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar(PRIMARY_LSN)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Connects to `url` (`postgres://…`) and applies pending migrations. A server that cannot
    /// be reached is named (host, port, database) with the reason, never with the password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.statement_cache_capacity(STATEMENT_CACHE);
        // One connection first, on its own: the pool retries until its acquire timeout and then
        // reports only "pool timed out", losing the reason (refused, unknown host, bad password).
        let target = format!(
            "PostgreSQL at {}:{} (database {})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("named after the user"),
        );
        let unreachable = |kind: std::io::ErrorKind, why: String| {
            StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                kind,
                format!("cannot connect to {target}: {why}"),
            )))
        };
        match tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(probe)) => probe.close().await?,
            Ok(Err(sqlx::Error::Io(e))) => return Err(unreachable(e.kind(), e.to_string())),
            Ok(Err(sqlx::Error::Database(e))) => {
                return Err(unreachable(
                    std::io::ErrorKind::Other,
                    e.message().to_owned(),
                ));
            }
            Ok(Err(e)) => return Err(unreachable(std::io::ErrorKind::Other, e.to_string())),
            Err(_) => {
                return Err(unreachable(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", ACQUIRE_TIMEOUT.as_secs()),
                ));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            replica: None,
        })
    }

    /// Serves compliance reads from the hot standby `url` names: reachable, in recovery (a
    /// standby is read-only, and only a standby's progress can be compared with the primary's),
    /// of the primary's cluster and on the primary's database. Nothing is migrated there: it
    /// replays the primary's schema.
    pub async fn with_replica(self, url: &str) -> Result<Self, StoreError> {
        let refused = |why: String| StoreError::ReadReplica(why);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| refused(e.to_string()))?
            .statement_cache_capacity(STATEMENT_CACHE);
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let replica = PgPoolOptions::new()
            .max_connections(REPLICA_POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| refused(format!("cannot connect to {target}: {e}")))?;
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&replica)
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !standby {
            return Err(refused(format!(
                "{target} is not a hot standby (pg_is_in_recovery() is false); name a \
                 streaming replica of the primary"
            )));
        }
        // A standby of another cluster, or another database on this one's, would answer
        // auditors with someone else's records.
        let primary: (String, String) = sqlx::query_as(IDENTITY).fetch_one(&self.pool).await?;
        let standby: (String, String) = sqlx::query_as(IDENTITY)
            .fetch_one(&replica)
            .await
            .map_err(|e| refused(e.to_string()))?;
        if standby.0 != primary.0 {
            return Err(refused(format!(
                "{target} is a standby of another cluster (system identifier {}, the \
                 primary's {})",
                standby.0, primary.0
            )));
        }
        if standby.1 != primary.1 {
            return Err(refused(format!(
                "the read URL names database {} and the primary URL {}: name the same database",
                standby.1, primary.1
            )));
        }
        // The migrations `connect` applied are before this position.
        let schema_lsn = self.primary_lsn().await?;
        Ok(Self {
            replica: Some(Replica {
                pool: replica,
                schema_lsn,
                has_schema: AtomicBool::new(false),
            }),
            ..self
        })
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

impl Backend for Postgres {
    type Conn = PgConnection;
    type Row = PgRow;
    type Tx = Tx;
    type Reader = PoolConnection<sqlx::Postgres>;
    type Snapshot = Tx;

    const ROW_LOCK: &'static str = " FOR UPDATE";
    /// Writers run in parallel and lock rows: the order in which rows are locked matters.
    const SERIAL_WRITER: bool = false;
    /// Sequence values are taken at insert and seen at commit, so a seq can become visible
    /// after a higher one; SHARE mode conflicts with the inserts' ROW EXCLUSIVE lock.
    const AUDIT_APPEND_FENCE: &'static str = "LOCK TABLE audit_events IN SHARE MODE";

    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// The same as `begin_write` here (SQLite saves a trip with it).
    async fn begin_deferred(&self) -> Result<Tx, StoreError> {
        self.begin_write().await
    }

    async fn commit(tx: Tx) -> Result<(), StoreError> {
        Ok(tx.commit().await?)
    }

    async fn rollback(tx: Tx) -> Result<(), StoreError> {
        Ok(tx.rollback().await?)
    }

    async fn reader(&self) -> Result<Self::Reader, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// A read transaction over one consistent snapshot: READ COMMITTED would give each
    /// statement its own, so a chain's events and its head could come from different moments.
    async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with(SNAPSHOT).await?)
    }

    async fn compliance_reader(&self, current: bool) -> Result<Self::Reader, StoreError> {
        let Some(replica) = &self.replica else {
            return self.reader().await;
        };
        let Some(mut conn) = replica.with_schema().await? else {
            return self.reader().await;
        };
        if !current {
            return Ok(conn);
        }
        // Everything committed on the primary so far is before its WAL insert position.
        let lsn = self.primary_lsn().await?;
        let started = std::time::Instant::now();
        while !Replica::replayed(&mut conn, &lsn).await? {
            if started.elapsed() >= REPLICA_WAIT {
                tracing::warn!(%lsn, "the read replica is behind; reading the primary");
                return self.reader().await;
            }
            tokio::time::sleep(REPLICA_POLL).await;
        }
        Ok(conn)
    }

    async fn replica_lag_bytes(&self) -> Result<Option<u64>, StoreError> {
        let Some(replica) = &self.replica else {
            return Ok(None);
        };
        let lsn = self.primary_lsn().await?;
        let behind: Option<i64> = sqlx::query_scalar(BEHIND)
            .bind(&lsn)
            .fetch_one(&replica.pool)
            .await?;
        Ok(Some(behind.map_or(0, |b| u64::try_from(b).unwrap_or(0))))
    }

    async fn begin_compliance_snapshot(&self) -> Result<Tx, StoreError> {
        let Some(replica) = &self.replica else {
            return self.begin_snapshot().await;
        };
        match replica.with_schema().await? {
            Some(conn) => Ok(sqlx::Transaction::begin(conn, Some(SNAPSHOT.into_sql_str())).await?),
            None => self.begin_snapshot().await,
        }
    }

    async fn end_snapshot(snapshot: Tx) -> Result<(), StoreError> {
        Ok(snapshot.commit().await?)
    }

    async fn execute(
        conn: &mut PgConnection,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> Result<u64, StoreError> {
        let done = plan::query::<sqlx::Postgres>(sql, binds)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn fetch(
        conn: &mut PgConnection,
        sql: Sql,
        binds: Vec<Bind>,
    ) -> Result<Vec<PgRow>, StoreError> {
        Ok(plan::query::<sqlx::Postgres>(sql, binds)
            .fetch_all(conn)
            .await?)
    }

    /// Runs reads one after another (one statement per query on this protocol), in order: a
    /// read that locks (`FOR UPDATE`) holds its lock for those after it.
    async fn read_batch(
        conn: &mut PgConnection,
        reads: Plan,
    ) -> Result<Vec<Vec<PgRow>>, StoreError> {
        let mut results = Vec::with_capacity(reads.statements.len());
        for read in reads.statements {
            results.push(Self::fetch(conn, read.sql, read.binds).await?);
        }
        Ok(results)
    }

    /// No different from `read_batch` here.
    async fn read_batch_first(tx: &mut Tx, reads: Plan) -> Result<Vec<Vec<PgRow>>, StoreError> {
        Self::read_batch(tx, reads).await
    }

    /// Runs a plan statement by statement (the extended protocol takes one statement per
    /// query); each must change the rows the plan says.
    async fn run_plan(conn: &mut PgConnection, plan: Plan) -> Result<(), StoreError> {
        for statement in plan.statements {
            let done = Self::execute(conn, statement.sql, statement.binds).await?;
            if done != statement.rows {
                return Err(StoreError::Corrupt(format!(
                    "a planned write changed {done} rows instead of {}",
                    statement.rows
                )));
            }
        }
        Ok(())
    }

    /// Runs a plan as one statement (`Plan::into_one_statement`, which says when that is
    /// allowed): one round trip instead of one per statement. Each part must change the rows
    /// the plan says.
    async fn run_plan_at_once(conn: &mut PgConnection, plan: Plan) -> Result<(), StoreError> {
        use sqlx::Row as _;
        if plan.statements.len() < 2 {
            return Self::run_plan(conn, plan).await;
        }
        let (sql, binds, rows) = plan.into_one_statement();
        let changed = plan::query::<sqlx::Postgres>(sql.into(), binds)
            .fetch_one(&mut *conn)
            .await?;
        for (k, planned) in rows.into_iter().enumerate() {
            let changed: i64 = changed.try_get(k)?;
            if u64::try_from(changed).ok() != Some(planned) {
                return Err(StoreError::Corrupt(format!(
                    "a planned write changed {changed} rows instead of {planned}"
                )));
            }
        }
        Ok(())
    }

    /// Runs the plan now (SQLite leaves it to the next statement on its one writer).
    async fn defer_plan(tx: &mut Tx, plan: Plan) -> Result<(), StoreError> {
        Self::run_plan(tx, plan).await
    }

    fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        let mut pools = vec![("postgres", self.pool.size(), self.pool.num_idle())];
        if let Some(replica) = &self.replica {
            let pool = &replica.pool;
            pools.push(("postgres-replica", pool.size(), pool.num_idle()));
        }
        pools
    }
}

#[cfg(test)]
mod tests {
    //! Plans run as one statement, on the server `WITHHOLDING_TEST_PG_URL` names (`scripts/test`
    //! starts one), in temporary tables of one connection.

    use sqlx::Connection as _;

    use super::*;

    async fn connection() -> sqlx::PgConnection {
        let url = std::env::var("WITHHOLDING_TEST_PG_URL").expect(
            "WITHHOLDING_TEST_PG_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
        );
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TEMP TABLE parent (k TEXT PRIMARY KEY, v BIGINT NOT NULL CHECK (v >= 0)); \
             CREATE TEMP TABLE child (k TEXT NOT NULL REFERENCES parent (k)); \
             INSERT INTO parent VALUES ('p', 5)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    }

    async fn count(conn: &mut sqlx::PgConnection, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
    }

    #[tokio::test]
    async fn a_plan_runs_as_one_statement_with_foreign_keys_checked_after_every_part() {
        let mut conn = connection().await;
        let mut plan = Plan::default();
        // The child comes first and names a parent inserted by a later part.
        plan.push(
            "INSERT INTO child (k) VALUES ($1), ($1)",
            vec!["q".into()],
            2,
        );
        plan.push("INSERT INTO parent VALUES ($1, 0)", vec!["q".into()], 1);
        plan.push(
            "UPDATE parent SET v = v - $1 WHERE k = $2",
            vec![5.into(), "p".into()],
            1,
        );
        Postgres::run_plan_at_once(&mut conn, plan).await.unwrap();
        assert_eq!(count(&mut conn, "SELECT count(*) FROM child").await, 2);
        assert_eq!(
            count(&mut conn, "SELECT sum(v)::bigint FROM parent").await,
            0
        );
    }

    #[tokio::test]
    async fn a_plan_as_one_statement_that_changes_other_rows_than_planned_is_refused() {
        let mut conn = connection().await;
        let mut plan = Plan::default();
        plan.push("INSERT INTO parent VALUES ($1, 1)", vec!["q".into()], 1);
        plan.push(
            "UPDATE parent SET v = v + 1 WHERE k = $1",
            vec!["missing".into()],
            1,
        );
        let refused = Postgres::run_plan_at_once(&mut conn, plan).await;
        assert!(
            matches!(&refused, Err(StoreError::Corrupt(reason)) if reason.contains("changed 0 rows instead of 1")),
            "{refused:?}"
        );
    }
}
