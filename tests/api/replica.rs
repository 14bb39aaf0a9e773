//! Compliance reads from a streaming replica (`--read-database-url`, DESIGN §8): listings come
//! from the replica as far as it has got, audit queries only once it has everything the primary
//! had committed (else from the primary), and everything a write or a decision reads stays on
//! the primary. The replica is the hot standby scripts/test starts with `pg_basebackup -R`;
//! its replay is paused here, so these are the only tests that name it, one at a time.

use std::time::Duration;

use withholding::pb;
use withholding::storage::StoreError;

use crate::harness::*;

async fn listed_mandates(client: &mut Client) -> Vec<String> {
    let page = client
        .list_mandates(pb::ListMandatesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.mandates.into_iter().map(|m| m.mandate_id).collect()
}

/// Waits until the replica lists mandate `id`.
async fn until_listed(merchant: &Client, id: &str) {
    eventually(
        "the replica to list the mandate",
        Duration::from_secs(10),
        || {
            let (mut merchant, id) = (merchant.clone(), id.to_owned());
            async move {
                listed_mandates(&mut merchant)
                    .await
                    .contains(&id)
                    .then_some(())
            }
        },
    )
    .await;
}

async fn audit_actions(client: &mut AuditClient, mandate_id: &str) -> Vec<String> {
    let page = client
        .query_audit_events(pb::QueryAuditEventsRequest {
            filter: Some(pb::AuditEventFilter {
                mandate_id: mandate_id.into(),
                ..Default::default()
            }),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.events.into_iter().map(|e| e.action).collect()
}

/// Asks for merchant m-1's settlement summary, which `from` must answer.
async fn summarised(app: &TestApp, from: &str) {
    let summary = crate::settlement::settlement_as(app, app.operator_token())
        .await
        .get_settlement_summary(crate::settlement::summary(
            "2026-03-01",
            "2026-03-31",
            "m-1",
        ))
        .await;
    assert!(summary.is_ok(), "a summary from {from}: {summary:?}");
}

/// Runs `sql` on the replica's copy of the test database.
async fn on_replica(read_url: &str, sql: &'static str) {
    let replica = sqlx::PgPool::connect(read_url).await.unwrap();
    sqlx::query(sql).execute(&replica).await.unwrap();
    replica.close().await;
}

/// Waits until the standby itself has mandate `id` (not yet: its tables may still be replaying).
async fn until_replicated(read_url: &str, id: &str) {
    let replica = sqlx::PgPool::connect(read_url).await.unwrap();
    eventually(
        "the replica to have the mandate",
        Duration::from_secs(30),
        || {
            let (replica, id) = (replica.clone(), id.to_owned());
            async move {
                sqlx::query("SELECT 1 FROM mandates WHERE mandate_id = $1")
                    .bind(id)
                    .fetch_optional(&replica)
                    .await
                    .ok()
                    .flatten()
                    .map(drop)
            }
        },
    )
    .await;
    replica.close().await;
}

/// One test at a time pauses the one standby.
static PAUSING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The standby's replay paused; resumed when dropped, however the test ends, so that the
/// standby goes on serving the other tests' databases.
struct Paused {
    read_url: String,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Paused {
    async fn on(read_url: &str) -> Self {
        let alone = PAUSING.lock().await;
        on_replica(read_url, "SELECT pg_wal_replay_pause()").await;
        Self {
            read_url: read_url.to_owned(),
            _alone: alone,
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let url = self.read_url.clone();
        let resumed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(on_replica(&url, "SELECT pg_wal_replay_resume()"));
        });
        let _ = resumed.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_reads_come_from_the_replica_postgres() {
    let db = TestDatabase::new(Backend::Postgres)
        .await
        .with_replica()
        .await;
    let read_url = db.read_url.clone().unwrap();
    let app = spawn_on(Backend::Postgres, db, default_keys()).await;
    let first = app
        .mandate_with("m-1", "p-1", "c-1", utility_terms(), wallet_only())
        .await;
    app.credit("p-1", "100.00").await;
    let mut merchant = app.merchant("m-1").await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    until_replicated(&read_url, &first.mandate_id).await;
    until_listed(&merchant, &first.mandate_id).await;

    // The replica stops applying what the primary writes.
    let paused = Paused::on(&read_url).await;
    let second = {
        let second = app
            .mandate_with("m-1", "p-1", "c-2", utility_terms(), wallet_only())
            .await;
        // The metrics gauge: WAL the paused replica has yet to apply, growing with each write.
        let lag = app.store.replica_lag_bytes().await.unwrap().unwrap();
        assert!(lag > 0);
        // Writes, decisions and reads by id: the primary, current.
        let mut deductions = app.deductions_as(app.merchant_token("m-1")).await;
        let made = deductions
            .create_deduction(collect("r-1", &second.mandate_id, "10.00", "bill-1"))
            .await
            .unwrap()
            .into_inner()
            .deduction
            .unwrap();
        assert_eq!(deduction_status(&made), pb::DeductionStatus::Succeeded);
        let later = app.store.replica_lag_bytes().await.unwrap().unwrap();
        assert!(later > lag, "{later} after {lag}");
        let read = deductions
            .get_deduction(pb::GetDeductionRequest {
                deduction_id: made.deduction_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .deduction
            .unwrap();
        assert_eq!(read.deduction_id, made.deduction_id);
        // A listing is the replica's: it does not have the new mandate yet.
        let listed = listed_mandates(&mut merchant).await;
        assert!(listed.contains(&first.mandate_id), "{listed:?}");
        assert!(
            !listed.contains(&second.mandate_id),
            "served by the paused replica: {listed:?}"
        );
        // An audit query must be complete: the replica is behind, so the primary answers.
        let actions = audit_actions(&mut auditor, &second.mandate_id).await;
        for action in ["MANDATE_CREATED", "DEDUCTION_APPROVED"] {
            assert!(
                actions.iter().any(|a| a == action),
                "{action} in {actions:?}"
            );
        }
        second
    };
    drop(paused);

    until_listed(&merchant, &second.mandate_id).await;
    summarised(&app, "the replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_still_replaying_the_migrations_is_not_read_postgres() {
    let db = TestDatabase::new(Backend::Postgres)
        .await
        .with_replica()
        .await;
    let read_url = db.read_url.clone().unwrap();
    // The standby has the empty database and nothing the migrations create in it.
    let paused = Paused::on(&read_url).await;
    let app = spawn_on(Backend::Postgres, db, default_keys()).await;
    let made = app
        .mandate_with("m-1", "p-1", "c-1", utility_terms(), wallet_only())
        .await;
    let mut merchant = app.merchant("m-1").await;
    let listed = listed_mandates(&mut merchant).await;
    assert!(
        listed.contains(&made.mandate_id),
        "from the primary: {listed:?}"
    );
    summarised(&app, "the primary").await;
    drop(paused);
}

#[tokio::test]
async fn a_read_replica_must_be_a_hot_standby_of_the_same_database() {
    let sqlite = TestDatabase::new(Backend::Sqlite).await;
    let refused =
        withholding::storage::open_with_replica(&sqlite.url, Some("postgres://x/y")).await;
    assert!(
        matches!(&refused, Err(StoreError::ReadReplica(why)) if why.contains("PostgreSQL")),
        "{:?}",
        refused.err()
    );
    // The primary itself is no standby.
    let pg = TestDatabase::new(Backend::Postgres).await;
    let refused = withholding::storage::open_with_replica(&pg.url, Some(&pg.url)).await;
    assert!(
        matches!(&refused, Err(StoreError::ReadReplica(why)) if why.contains("not a hot standby")),
        "{:?}",
        refused.err()
    );
    // The standby, but another of its databases.
    let replica = std::env::var("WITHHOLDING_TEST_PG_REPLICA_URL").unwrap();
    let refused = withholding::storage::open_with_replica(&pg.url, Some(&replica)).await;
    assert!(
        matches!(&refused, Err(StoreError::ReadReplica(why)) if why.contains("name the same database")),
        "{:?}",
        refused.err()
    );
}
