//! SQLite, the embedded default: one file, WAL, `synchronous=FULL` (an answered write survives a
//! power cut), one writer connection taking `BEGIN IMMEDIATE` so writers never deadlock or
//! interleave, and a small pool of read-only connections beside it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::StoreError;
use super::deduction_sql::impl_deduction_store;
use super::sql::impl_store;

/// Readers run beside the writer thanks to WAL.
const READ_CONNECTIONS: u32 = 4;
/// How long a connection waits for a lock before failing (another process holding the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens the file named by `url` (`sqlite://./data/withholding.db`), creating it and its
    /// folder if needed, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    fn pools(&self) -> [(&'static str, &SqlitePool); 2] {
        [
            ("sqlite_writer", &self.writer),
            ("sqlite_reader", &self.reader),
        ]
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// A read transaction over one consistent snapshot (WAL gives each transaction its own).
    async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.reader.begin().await?)
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl_store!(SqliteStore, sqlx::Sqlite);
impl_deduction_store!(SqliteStore, sqlx::Sqlite, "");
