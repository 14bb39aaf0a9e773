//! The group-commit writer on its own, on a scratch table beside the real schema: members
//! share commits, fail alone, and are answered only once durable.

use tokio::sync::oneshot;

use super::*;

async fn store() -> (tempfile::TempDir, Arc<Sqlite>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Sqlite::connect(&url).await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    sqlx::query("CREATE TABLE scratch (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (dir, Arc::new(store))
}

async fn insert(tx: &mut WriteTx, k: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, 1)")
        .bind(k)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// What a fresh reader sees: only committed rows.
async fn committed(store: &Sqlite) -> Vec<String> {
    sqlx::query_scalar("SELECT k FROM scratch ORDER BY k")
        .fetch_all(&store.reader)
        .await
        .unwrap()
}

async fn batches(store: &Sqlite) -> u64 {
    store.writer.lock().await.next_batch
}

#[tokio::test]
async fn the_writer_keeps_savepoint_journals_in_memory_and_readers_do_not() {
    let (_dir, store) = store().await;
    let temp_store = "PRAGMA temp_store";
    let mut tx = store.begin_write().await.unwrap();
    let writer: i64 = sqlx::query_scalar(temp_store)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(writer, 2, "the writer's temp store is MEMORY");
    let reader: i64 = sqlx::query_scalar(temp_store)
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(reader, 0, "readers keep SQLite's default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_members_share_commits_and_are_answered_when_durable() {
    let (_dir, store) = store().await;
    let before = batches(&store).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            let key = format!("k{i:02}");
            let mut tx = store.begin_write().await.unwrap();
            insert(&mut tx, &key).await.unwrap();
            tx.commit().await.unwrap();
            // Answered: the row is durable, so any reader sees it now.
            assert!(committed(&store).await.contains(&key), "{key} not visible");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(committed(&store).await.len(), 64);
    let used = batches(&store).await - before;
    assert!(used < 64, "64 concurrent members took {used} commits");
}

/// Starts `members` one after another while the test holds the writer, so they queue in
/// this order; then lets them run. Each gets its index.
async fn in_one_batch<F, Fut>(store: &Arc<Sqlite>, members: usize, member: F) -> Vec<Fut::Output>
where
    F: Fn(Arc<Sqlite>, usize) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let gate = store.writer.clone().lock_owned().await;
    let mut tasks = vec![];
    for i in 0..members {
        tasks.push(tokio::spawn(member(store.clone(), i)));
        // Let it reach the writer's queue before the next one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(gate);
    let mut outputs = vec![];
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_member_rolls_back_alone() {
    let (_dir, store) = store().await;
    let before = batches(&store).await;
    let outcomes = in_one_batch(&store, 4, |store, i| async move {
        let mut tx = store.begin_write().await?;
        match i {
            // Writes a row and then fails on a duplicate key: returns early, dropped.
            1 => {
                insert(&mut tx, "b").await?;
                insert(&mut tx, "a").await?;
                tx.commit().await
            }
            // Changes its mind.
            2 => {
                insert(&mut tx, "c").await?;
                tx.rollback().await
            }
            _ => {
                insert(&mut tx, ["a", "", "", "d"][i]).await?;
                tx.commit().await
            }
        }
    })
    .await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
    assert!(
        matches!(&outcomes[1], Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation()),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(committed(&store).await, ["a", "d"]);
    assert_eq!(
        batches(&store).await - before,
        1,
        "the four shared one batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_member_is_undone_before_the_batch_commits() {
    let (_dir, store) = store().await;
    let before = batches(&store).await;
    in_one_batch(&store, 2, |store, i| async move {
        let mut tx = store.begin_write().await.unwrap();
        insert(&mut tx, ["kept", "abandoned"][i]).await.unwrap();
        if i == 0 {
            tx.commit().await.unwrap();
        }
        // The second member is dropped with its savepoint open; the first member's
        // commit of the batch must not carry its row.
    })
    .await;
    assert_eq!(committed(&store).await, ["kept"]);
    assert_eq!(batches(&store).await - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_returns_only_once_what_it_read_is_durable() {
    let (_dir, store) = store().await;
    in_one_batch(&store, 2, |store, i| async move {
        let mut tx = store.begin_write().await.unwrap();
        if i == 0 {
            insert(&mut tx, "earlier").await.unwrap();
            tx.commit().await.unwrap();
        } else {
            // Reads the earlier member's row before it is committed, as a replayed request
            // reads the deduction it answers with.
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM scratch")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(seen, 1);
            tx.rollback().await.unwrap();
            assert_eq!(committed(&store).await, ["earlier"]);
        }
    })
    .await;
}

/// Rows of `scratch` as a deferred member's first reads see them.
async fn first_read(tx: &mut WriteTx) -> Result<Vec<String>, StoreError> {
    let mut reads = Plan::default();
    reads.read("SELECT k FROM scratch ORDER BY k", vec![]);
    let [rows]: [Vec<_>; 1] = Sqlite::read_batch_first(tx, reads)
        .await?
        .try_into()
        .expect("one read, one result");
    Ok(rows.iter().map(|r| sqlx::Row::get(r, 0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_savepoints_keep_what_was_committed_and_undo_the_rest() {
    let (_dir, store) = store().await;
    let before = batches(&store).await;
    let seen = in_one_batch(&store, 5, |store, i| async move {
        if i == 0 {
            let mut tx = store.begin_write().await.unwrap();
            insert(&mut tx, "a").await.unwrap();
            tx.commit().await.unwrap();
            return vec![];
        }
        let mut tx = store.begin_deferred().await.unwrap();
        if i == 3 {
            // Dropped before its savepoint was ever opened.
            return vec![];
        }
        let seen = first_read(&mut tx).await.unwrap();
        insert(&mut tx, ["", "b", "c", "", "d"][i]).await.unwrap();
        match i {
            1 => drop(tx),
            2 => tx.rollback().await.unwrap(),
            _ => tx.commit().await.unwrap(),
        }
        seen
    })
    .await;
    // Each member after the first saw "a" (left for it to release) and nothing of the
    // abandoned or rolled-back members before it.
    assert_eq!(seen, [vec![], vec!["a"], vec!["a"], vec![], vec!["a"]]);
    assert_eq!(committed(&store).await, ["a", "d"]);
    assert_eq!(batches(&store).await - before, 1);
}

/// A plan inserting `keys` into scratch, each changing one row.
fn inserts(keys: &[&str]) -> Plan {
    let mut plan = Plan::default();
    for key in keys {
        plan.push(
            "INSERT INTO scratch (k, v) VALUES ($1, 1)",
            vec![(*key).into()],
            1,
        );
    }
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_writes_that_fail_are_undone_alone_and_reported_to_their_member() {
    let (_dir, store) = store().await;
    let before = batches(&store).await;
    let outcomes = in_one_batch(&store, 3, |store, i| async move {
        let mut tx = store.begin_deferred().await?;
        let seen = first_read(&mut tx).await?;
        // The second member's writes fail on their second row (a duplicate of "a").
        tx.defer(inserts([&["a"][..], &["x", "a"], &["c"]][i]));
        let answer = tx.commit().await.map(|()| seen);
        if i == 1 {
            // Its conflict is answered only once the write it lost to is durable.
            assert_eq!(committed(&store).await, ["a", "c"]);
        }
        answer
    })
    .await;
    assert_eq!(outcomes[0].as_ref().unwrap(), &Vec::<String>::new());
    // `scratch.k` is no request key two writers race for, so its violation is reported as
    // the database error it is (storage/errors.rs), to that member alone.
    assert!(
        matches!(&outcomes[1], Err(StoreError::Database(e)) if e.to_string().contains("UNIQUE")),
        "{:?}",
        outcomes[1]
    );
    // The third member's reads ran after the second's writes were undone (no "x"), and
    // its own writes, the batch's last, ran when the batch committed.
    assert_eq!(outcomes[2].as_ref().unwrap(), &["a"]);
    assert_eq!(committed(&store).await, ["a", "c"]);
    assert_eq!(batches(&store).await - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_writes_that_change_other_rows_than_planned_fail_the_batch() {
    let (_dir, store) = store().await;
    let outcomes = in_one_batch(&store, 2, |store, i| async move {
        let mut tx = store.begin_deferred().await?;
        first_read(&mut tx).await?;
        let mut plan = inserts(&[["a", "b"][i]]);
        if i == 0 {
            // Claims a row that does not exist.
            plan.push(
                "UPDATE scratch SET v = 2 WHERE k = $1",
                vec!["missing".into()],
                1,
            );
        }
        tx.defer(plan);
        tx.commit().await
    })
    .await;
    assert!(
        matches!(outcomes[0], Err(StoreError::Corrupt(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1].is_err(), "{:?}", outcomes[1]);
    assert!(committed(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pages_are_copied_into_the_database_file_off_the_writer() {
    let (dir, store) = store().await;
    let file = dir.path().join("w.db");
    let size = || std::fs::metadata(&file).unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = size();
    // About 100 pages: far below the writer's own checkpoint threshold, so only the
    // checkpointer can bring them into the file.
    let mut tx = store.begin_write().await.unwrap();
    for i in 0..400 {
        sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, 1)")
            .bind(format!("{i:04}{}", "x".repeat(1000)))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut copied = false;
    for _ in 0..100 {
        if size() > before + 100 * 4096 / 2 {
            copied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(copied, "the database file stayed at {} bytes", size());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reads_that_fail_fail_the_batch() {
    let (_dir, store) = store().await;
    let outcomes = in_one_batch(&store, 3, |store, i| async move {
        match i {
            1 => {
                let mut tx = store.begin_deferred().await?;
                let mut reads = Plan::default();
                reads.read("SELECT k FROM no_such_table", vec![]);
                Sqlite::read_batch_first(&mut tx, reads).await.map(drop)
            }
            _ => {
                let mut tx = store.begin_write().await?;
                insert(&mut tx, ["a", "", "z"][i]).await?;
                tx.commit().await
            }
        }
    })
    .await;
    // Where the failed query stopped is unknown, so the batch it was in is not committed
    // and its members are told; the next write starts a new batch.
    assert!(
        matches!(&outcomes[0], Err(StoreError::GroupCommit(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1].is_err());
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert_eq!(committed(&store).await, ["z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_runs_placed_from_a_known_head_keep_every_chain_whole() {
    use crate::domain::actor::Actor;
    use crate::domain::audit::{AuditDraft, verify_chain};
    use crate::storage::ChainHead;
    let (_dir, store) = store().await;
    let draft = |mandate: &str, action: &str| {
        let mut draft = AuditDraft::new(jiff::Timestamp::now(), &Actor::system(), action, "OK");
        draft.mandate_id = Some(mandate.to_owned());
        draft
    };
    // Chain a already has an event (its head is read below); chain b is taken as usual.
    let mut tx = store.begin_write().await.unwrap();
    crate::storage::audit::append::<Sqlite>(&mut tx, &[draft("a", "first")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let head = crate::storage::audit::chain(&*store, "mandate:a")
        .await
        .unwrap()
        .head
        .unwrap();
    let mut known = Some(ChainHead {
        chain_id: "mandate:a".into(),
        last_seq: head.0,
        last_hash: head.1,
    });
    let mut tx = store.begin_write().await.unwrap();
    let mut plan = Plan::default();
    let drafts = [
        draft("a", "x"),
        draft("a", "y"),
        draft("b", "z"),
        draft("a", "w"),
    ];
    crate::storage::audit::plan_appends::<Sqlite>(&mut tx, &drafts, &mut plan, &mut known)
        .await
        .unwrap();
    Sqlite::run_plan(&mut tx, plan).await.unwrap();
    tx.commit().await.unwrap();
    for (chain, length) in [("mandate:a", 4), ("mandate:b", 1)] {
        let stored = crate::storage::audit::chain(&*store, chain).await.unwrap();
        let head = stored
            .head
            .as_ref()
            .map(|(seq, hash)| (*seq, hash.as_str()));
        verify_chain(chain, &stored.events, head).unwrap();
        assert_eq!(stored.events.len(), length, "{chain}");
    }
    assert_eq!(
        known.unwrap().last_seq,
        4,
        "the known head follows the runs placed on it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_batch_keeps_each_statements_rows_apart() {
    let (_dir, store) = store().await;
    let mut tx = store.begin_write().await.unwrap();
    for k in ["a", "b", "c"] {
        insert(&mut tx, k).await.unwrap();
    }
    let mut reads = Plan::default();
    reads.read("SELECT k FROM scratch WHERE k = $1", vec!["b".into()]);
    reads.read("SELECT k FROM scratch WHERE k = $1", vec!["none".into()]);
    reads.read(
        "SELECT k FROM scratch WHERE k <> $1 ORDER BY k",
        vec!["b".into()],
    );
    let results = Sqlite::read_batch(&mut tx, reads).await.unwrap();
    let keys: Vec<Vec<String>> = results
        .iter()
        .map(|rows| rows.iter().map(|r| sqlx::Row::get(r, 0)).collect())
        .collect();
    assert_eq!(keys, [vec!["b"], vec![], vec!["a", "c"]]);
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_changes_other_rows_than_planned_is_refused() {
    let (_dir, store) = store().await;
    let mut tx = store.begin_write().await.unwrap();
    let mut plan = Plan::default();
    plan.push(
        "INSERT INTO scratch (k, v) VALUES ($1, 1)",
        vec!["x".into()],
        1,
    );
    // Claims one row but the key does not exist: nothing changes.
    plan.push(
        "UPDATE scratch SET v = 2 WHERE k = $1",
        vec!["missing".into()],
        1,
    );
    let refused = Sqlite::run_plan(&mut tx, plan).await.unwrap_err();
    assert!(matches!(refused, StoreError::Corrupt(_)), "{refused:?}");
    drop(tx);
    assert!(committed(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_committed_even_if_its_members_stop_waiting_for_it() {
    let (_dir, store) = store().await;
    let (ready, inserted) = oneshot::channel();
    let member = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin_write().await.unwrap();
            insert(&mut tx, "kept").await.unwrap();
            ready.send(()).unwrap();
            // Let the test queue for the writer first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.commit().await.unwrap();
        }
    });
    inserted.await.unwrap();
    // Holds the writer from the moment the member ends until after it has gone away (a
    // cancelled RPC), as another write would.
    let gate = store.writer.clone().lock_owned().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    member.abort();
    assert!(member.await.unwrap_err().is_cancelled());
    drop(gate);
    let mut kept = false;
    for _ in 0..100 {
        if committed(&store).await == ["kept"] {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(kept, "the batch was never committed");
    assert!(store.writer.lock().await.batch.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_abandoned_member_does_not_keep_the_batch_open() {
    let (_dir, store) = store().await;
    let mut tx = store.begin_write().await.unwrap();
    insert(&mut tx, "abandoned").await.unwrap();
    drop(tx);
    // No other write comes; the batch must still close (releasing the file's write lock)
    // without the abandoned row.
    let mut closed = false;
    for _ in 0..100 {
        if store.writer.lock().await.batch.is_none() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the batch stayed open");
    assert!(committed(&store).await.is_empty());
}
