//! The bare cap-checked transaction, `bench`'s third phase: the database work no deduction can do
//! without (lock a cap row, check it, raise it, log the debit, commit), sent by the bench process
//! straight to PostgreSQL with no gRPC, token, service rules or audit trail in the way. The
//! issue's PostgreSQL target, CreateDeduction at ≥ 1.5× this rate on the same cluster in the same
//! run, is the ratio of the two phases.
//!
//! It runs in two tables made for the run (`bench_bare_caps_<tag>`, `bench_bare_log_<tag>`) and
//! dropped at the end, also when the phase fails or is interrupted with Ctrl-C; only a bench
//! killed outright leaves them behind, and it has named them on stderr.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};

use super::{CONNECT_TIMEOUT, Console, Outcome, PhaseReport, Shape, run_phase};

/// Most connections the phase opens: the cluster's `max_connections` is shared with the server
/// under test.
pub(super) const MAX_POOL_SIZE: u32 = 64;
/// Bound on creating, filling and dropping the tables (a million rows take seconds), longer than
/// the per-call `--request-timeout-s` that bounds each measured transaction.
const SETUP_TIMEOUT_S: u32 = 300;
/// Every row's cap: never reached, so every transaction commits, as every seeded debit succeeds.
/// `used + amount` is checked in Rust, so it cannot overflow either.
const ROW_CAP_MINOR: i64 = i64::MAX;
/// How errors are grouped in the report.
pub(super) const ERRORS_BY: &str = "SQLSTATE or client error";

/// `--bare-database-url`, checked, with the pool to open on it.
pub(super) struct BareTarget {
    options: PgConnectOptions,
    pool_size: u32,
    request_timeout: Duration,
}

impl BareTarget {
    /// Checks the URL without connecting, so a wrong one fails before the first phase. Errors
    /// never repeat the URL: it may hold a password.
    pub(super) fn parse(url: &str, pool_size: u32, request_timeout_s: u64) -> Result<Self, String> {
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => {}
            Some("sqlite") => {
                return Err("--bare-database-url: SQLite is not supported; the bare \
                            transaction is the yardstick of the PostgreSQL target (on SQLite, \
                            compare with the Health/Check ceiling)"
                    .into());
            }
            _ => return Err("--bare-database-url: expected postgres://…".into()),
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| format!("--bare-database-url: {e}"))?
            .application_name("withholding-bench-bare")
            // A transaction stuck on a lock fails like a gRPC call past its deadline.
            .options([("statement_timeout", format!("{request_timeout_s}s"))]);
        Ok(Self {
            options,
            pool_size: pool_size.clamp(1, MAX_POOL_SIZE),
            request_timeout: Duration::from_secs(request_timeout_s),
        })
    }

    /// Connects once on its own, so a wrong host or password fails before the first phase
    /// rather than after the last, with the database's own reason (a pool would only report
    /// that it timed out); then opens the pool.
    pub(super) async fn connect(self) -> Result<BareDatabase, String> {
        let shown = format!(
            "{}:{}/{}",
            self.options.get_host(),
            self.options.get_port(),
            self.options
                .get_database()
                .unwrap_or(self.options.get_username())
        );
        let failed = |e: String| format!("--bare-database-url: connecting to {shown}: {e}");
        let probe =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| failed(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs())))?
                .map_err(|e| failed(e.to_string()))?;
        probe.close().await.map_err(|e| failed(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(self.pool_size)
            .acquire_timeout(self.request_timeout)
            .connect_with(self.options)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(BareDatabase {
            pool,
            pool_size: self.pool_size,
            shown,
        })
    }
}

/// A connected bare-phase database.
pub(super) struct BareDatabase {
    pool: PgPool,
    pool_size: u32,
    /// Host, port and database: what the report may show (no user, no password).
    shown: String,
}

/// What the phase runs: on which rows, adding how much each time.
pub(super) struct BareWork<'a> {
    /// Rows of the caps table: one per mandate of the bench.
    pub rows: u64,
    /// One row only, taking every transaction, as every debit goes to the first mandate with
    /// `--hot`.
    pub hot: bool,
    pub amount_minor: i64,
    /// The run's tag (hex), which names the tables.
    pub tag: &'a str,
}

impl BareDatabase {
    /// How the report heads the phase.
    pub(super) fn title(&self, work: &BareWork<'_>) -> String {
        let scenario = if work.hot {
            "hot: every transaction on one row".to_owned()
        } else {
            format!("spread over {} rows", work.rows)
        };
        format!(
            "bare cap-checked transaction on PostgreSQL {} ({scenario}, pool {}; no gRPC, no \
             service)",
            self.shown, self.pool_size
        )
    }

    /// Runs the phase in tables made for it, then drops them whatever happened and closes the
    /// pool.
    pub(super) async fn run(
        self,
        work: BareWork<'_>,
        shape: &Shape,
        lanes: usize,
        console: &Console,
    ) -> Result<PhaseReport, String> {
        let tables = Tables::named(work.tag)?;
        console.err(format_args!(
            "bare transaction: tables {} and {} on {} (dropped at the end)",
            tables.caps, tables.log, self.shown
        ));
        let result = tokio::select! {
            result = self.fill_and_run(&tables, &work, shape, lanes, console) => result,
            () = console.interrupted() => Err("bare transaction: interrupted".to_owned()),
        };
        // Transactions cut at the deadline still hold row locks; the drop waits for them.
        let dropped = tables.drop(&self.pool).await;
        self.pool.close().await;
        match (result, dropped) {
            (Ok(report), Ok(())) => Ok(report),
            (Err(e), Ok(())) => Err(e),
            (Ok(_), Err(d)) => Err(d),
            (Err(e), Err(d)) => Err(format!("{e}; then {d}")),
        }
    }

    async fn fill_and_run(
        &self,
        tables: &Tables,
        work: &BareWork<'_>,
        shape: &Shape,
        lanes: usize,
        console: &Console,
    ) -> Result<PhaseReport, String> {
        let rows = if work.hot { 1 } else { work.rows.max(1) };
        tables.create(&self.pool, rows).await?;
        let context = Arc::new(CapChecked {
            pool: self.pool.clone(),
            statements: tables.statements(),
            rows,
            amount_minor: work.amount_minor,
        });
        let lanes = vec![context; lanes.max(1)];
        run_phase("bare transaction", &lanes, shape, console, |context, n| {
            context.call(n)
        })
        .await
    }
}

/// The two throwaway tables of one run.
struct Tables {
    caps: String,
    log: String,
}

impl Tables {
    /// The tag is spliced into SQL, so it must be what [`super::run_tag`] makes: hex only.
    fn named(tag: &str) -> Result<Self, String> {
        if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bare transaction: run tag {tag:?} is not hex"));
        }
        Ok(Self {
            caps: format!("bench_bare_caps_{tag}"),
            log: format!("bench_bare_log_{tag}"),
        })
    }

    /// Creates both tables and gives the caps table `rows` rows, in one transaction: a failure
    /// leaves nothing behind.
    async fn create(&self, pool: &PgPool, rows: u64) -> Result<(), String> {
        let Self { caps, log } = self;
        let rows = i64::try_from(rows).map_err(|_| format!("bare transaction: {rows} rows"))?;
        let statements = [
            format!(
                "CREATE TABLE {caps} (id BIGINT PRIMARY KEY, used_minor BIGINT NOT NULL, \
                 cap_minor BIGINT NOT NULL)"
            ),
            format!(
                "CREATE TABLE {log} (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 cap_id BIGINT NOT NULL, amount_minor BIGINT NOT NULL)"
            ),
        ];
        let failed = |e: sqlx::Error| format!("bare transaction: creating the tables: {e}");
        let mut tx = pool.begin().await.map_err(failed)?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = '{SETUP_TIMEOUT_S}s'"
        )))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        for statement in statements {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {caps} (id, used_minor, cap_minor) \
             SELECT g, 0, $1 FROM generate_series(0, $2 - 1) AS g"
        )))
        .bind(ROW_CAP_MINOR)
        .bind(rows)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        // Planner statistics, as the server's long-lived tables have.
        sqlx::query(AssertSqlSafe(format!("ANALYZE {caps}")))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    /// Drops both tables if they exist.
    async fn drop(&self, pool: &PgPool) -> Result<(), String> {
        let Self { caps, log } = self;
        let failed = |e: sqlx::Error| {
            format!("bare transaction: dropping {caps} and {log} (drop them by hand): {e}")
        };
        let mut tx = pool.begin().await.map_err(failed)?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = '{SETUP_TIMEOUT_S}s'"
        )))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {caps}, {log}")))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    fn statements(&self) -> Statements {
        let Self { caps, log } = self;
        Statements {
            lock: format!("SELECT used_minor, cap_minor FROM {caps} WHERE id = $1 FOR UPDATE")
                .into(),
            raise: format!("UPDATE {caps} SET used_minor = used_minor + $2 WHERE id = $1").into(),
            log: format!("INSERT INTO {log} (cap_id, amount_minor) VALUES ($1, $2)").into(),
        }
    }
}

/// The three statements of the transaction, shared by every call (and prepared once per
/// connection, as the server's are).
struct Statements {
    lock: Arc<str>,
    raise: Arc<str>,
    log: Arc<str>,
}

/// What every transaction of the phase shares.
struct CapChecked {
    pool: PgPool,
    statements: Statements,
    rows: u64,
    amount_minor: i64,
}

/// How one transaction ended.
enum Decision {
    Committed,
    /// `used + amount` was over the cap: rolled back, nothing written.
    OverCap,
}

impl CapChecked {
    /// Transaction number `n`, on the next row round robin.
    async fn call(self: Arc<Self>, n: u64) -> Outcome {
        let row = i64::try_from(n % self.rows).unwrap_or(0);
        // A task of its own: the phase drops a call at its deadline, and a transaction dropped
        // mid-way can go back to the pool still open (sqlx#4393).
        match tokio::spawn(async move { self.transact(row).await }).await {
            Ok(Ok(Decision::Committed)) => Outcome::Answered {
                status: "COMMITTED",
                reason: String::new(),
            },
            Ok(Ok(Decision::OverCap)) => Outcome::Answered {
                status: "ROLLED_BACK",
                reason: "OVER_CAP".into(),
            },
            Ok(Err(e)) => Outcome::error(error_kind(&e), &e.to_string()),
            Err(e) => Outcome::error("TASK_FAILED".into(), &e.to_string()),
        }
    }

    /// `BEGIN; SELECT … FOR UPDATE; UPDATE; INSERT; COMMIT`, or a rollback when the amount does
    /// not fit under the cap.
    async fn transact(&self, row: i64) -> Result<Decision, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (used, cap): (i64, i64) = sqlx::query_as(AssertSqlSafe(self.statements.lock.clone()))
            .bind(row)
            .fetch_one(&mut *tx)
            .await?;
        let fits = used
            .checked_add(self.amount_minor)
            .is_some_and(|total| total <= cap);
        if !fits {
            tx.rollback().await?;
            return Ok(Decision::OverCap);
        }
        for statement in [&self.statements.raise, &self.statements.log] {
            sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(row)
                .bind(self.amount_minor)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Decision::Committed)
    }
}

/// How an error is grouped in the report: its SQLSTATE when the database answered.
fn error_kind(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => format!("SQLSTATE {}", e.code().as_deref().unwrap_or("?")),
        sqlx::Error::PoolTimedOut => "POOL_TIMED_OUT".into(),
        sqlx::Error::Io(_) => "IO".into(),
        _ => "CLIENT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls() {
        for (url, expected) in [
            ("sqlite://./data/w.db", "SQLite is not supported"),
            ("mysql://h/db", "expected postgres://"),
            ("127.0.0.1:5432", "expected postgres://"),
        ] {
            let error = BareTarget::parse(url, 4, 10).err().unwrap();
            assert!(error.starts_with("--bare-database-url: "), "{error}");
            assert!(error.contains(expected), "{url}: {error}");
        }
        assert!(BareTarget::parse("postgres://u:pw@127.0.0.1:5432/db", 4, 10).is_ok());
        assert!(BareTarget::parse("postgresql://127.0.0.1/db", 4, 10).is_ok());
    }

    #[test]
    fn errors_never_show_the_password() {
        let error = BareTarget::parse("postgres://u:s3cret@127.0.0.1:5432/db?sslmode=bogus", 4, 10)
            .err()
            .unwrap();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn table_names_take_only_hex_tags() {
        let tables = Tables::named("0a1b2c3d4e").unwrap();
        assert_eq!(
            (tables.caps.as_str(), tables.log.as_str()),
            ("bench_bare_caps_0a1b2c3d4e", "bench_bare_log_0a1b2c3d4e")
        );
        assert!(Tables::named("x; DROP TABLE t").is_err());
        assert!(Tables::named("").is_err());
    }
}
