//! Deductions decided together on PostgreSQL (DESIGN §8, §9.1, §9.2, §9.4): bursts of debits
//! over two replicas of one database, mixing mandates (two of them drawing on one wallet), one
//! request id sent twice at once, two request ids for one bill, a wallet that runs dry mid-batch,
//! and one request id raced for on two mandates. Every answer and every balance must be what
//! deciding the debits one after another would give, and batches must have formed.

use std::collections::{HashMap, HashSet};

use tonic::Code;
use withholding::pb;
use withholding::storage::BatchStats;

use super::concurrency::{clients, create_retrying, terms};
use crate::harness::*;

/// Rounds of bursts at least, and at most while no request id has yet been sent twice into one
/// batch.
const ROUNDS: (usize, usize) = (2, 6);

fn stats(app: &TestApp) -> BatchStats {
    app.database
        .deductions
        .decision_batches()
        .expect("PostgreSQL decides deductions together")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_decisions_answer_as_one_after_another_postgres() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_on(Backend::Postgres, first.db.shared(), default_keys()).await;
    // m0–m3: a cap of 8 debits a month, two mandates per wallet; m4: a wallet of 25.00;
    // m5: one bill asked for under two request ids each round; m5 and m6: one request id.
    let payers = ["p-0", "p-0", "p-1", "p-1", "p-2", "p-3", "p-3"];
    let mut mandates = vec![];
    for (k, payer) in payers.iter().enumerate() {
        let cap = if k < 4 { 8 } else { 100 };
        let m = first
            .mandate_with(
                "m-1",
                payer,
                &format!("c-{k}"),
                terms("10.00", None, Some(cap)),
                wallet_only(),
            )
            .await;
        mandates.push(m.mandate_id);
    }
    for (payer, amount) in [
        ("p-0", "1000.00"),
        ("p-1", "1000.00"),
        ("p-2", "25.00"),
        ("p-3", "1000.00"),
    ] {
        first.credit(payer, amount).await;
    }
    let mut both = clients(&first, "m-1", 4).await;
    both.extend(clients(&second, "m-1", 4).await);

    let mut answers: HashMap<String, pb::Deduction> = HashMap::new();
    let mut rounds = 0;
    while rounds < ROUNDS.0
        || (rounds < ROUNDS.1 && stats(&first).repeats + stats(&second).repeats == 0)
    {
        let r = rounds;
        rounds += 1;
        // (tag, request): each tag names what the answer is checked against.
        let mut requests = vec![];
        for (k, m) in mandates.iter().enumerate().take(5) {
            for i in 0..6 {
                let id = format!("r{r}-m{k}-{i}");
                let request = collect(&id, m, "10.00", &format!("bill-{id}"));
                // The same request twice, one right after the other.
                requests.push((format!("pair:{id}:a"), request.clone()));
                requests.push((format!("pair:{id}:b"), request));
            }
        }
        for key in ["a", "b"] {
            let request = collect(
                &format!("r{r}-dup-{key}"),
                &mandates[5],
                "10.00",
                &format!("dup-{r}"),
            );
            requests.push((format!("bill:{r}"), request));
        }
        for k in [5, 6] {
            let request = collect(
                &format!("r{r}-clash"),
                &mandates[k],
                "10.00",
                &format!("clash-{r}-{k}"),
            );
            requests.push((format!("clash:{r}"), request));
        }

        let mut tasks = tokio::task::JoinSet::new();
        for (i, (tag, request)) in requests.into_iter().enumerate() {
            let mut client = both[i % both.len()].clone();
            tasks.spawn(async move { (tag, create_retrying(&mut client, request).await.0) });
        }
        let mut bill_answers = vec![];
        let mut clash_answers = vec![];
        while let Some(joined) = tasks.join_next().await {
            let (tag, answer) = joined.expect("request task");
            if tag.starts_with("clash:") {
                clash_answers.push(answer.map(|a| a.deduction.unwrap()));
                continue;
            }
            let d = answer
                .unwrap_or_else(|s| panic!("{tag}: {s:?}"))
                .deduction
                .unwrap();
            if tag.starts_with("bill:") {
                bill_answers.push(d);
            } else {
                answers.insert(tag, d);
            }
        }
        // One bill under two request ids: collected once, the other declined for it.
        let mut bill_outcomes: Vec<_> = bill_answers
            .iter()
            .map(|d| (deduction_status(d), d.reason_code.clone()))
            .collect();
        bill_outcomes.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            bill_outcomes,
            vec![
                (pb::DeductionStatus::Succeeded, String::new()),
                (
                    pb::DeductionStatus::Declined,
                    "DUPLICATE_BILL_REFERENCE".into()
                ),
            ],
            "round {r}"
        );
        // One request id on two mandates: one deduction, the other request refused.
        let (made, refused): (Vec<_>, Vec<_>) = clash_answers.into_iter().partition(Result::is_ok);
        assert_eq!((made.len(), refused.len()), (1, 1), "round {r}");
        let refused = refused.into_iter().next().unwrap().unwrap_err();
        assert_eq!(
            refused.code(),
            Code::AlreadyExists,
            "round {r}: {refused:?}"
        );
    }

    // The same request twice: one deduction, both answers alike.
    let mut decided: HashMap<usize, Vec<pb::Deduction>> = HashMap::new();
    for (tag, a) in &answers {
        let Some(id) = tag.strip_suffix(":a") else {
            continue;
        };
        let b = &answers[&format!("{id}:b")];
        assert_eq!(a, b, "{id}: the same request answered differently");
        let k: usize = id.split("-m").nth(1).unwrap()[..1].parse().unwrap();
        decided.entry(k).or_default().push(a.clone());
    }
    let ids: HashSet<&str> = answers.values().map(|d| d.deduction_id.as_str()).collect();
    assert_eq!(ids.len(), answers.len() / 2, "one deduction per request id");
    for (k, deductions) in &decided {
        let status = |s: pb::DeductionStatus| {
            deductions
                .iter()
                .filter(|d| deduction_status(d) == s)
                .collect::<Vec<_>>()
        };
        let (succeeded, expected, other, reason) = if *k < 4 {
            (
                8,
                6 * rounds - 8,
                pb::DeductionStatus::Declined,
                "PERIOD_COUNT_LIMIT_EXCEEDED",
            )
        } else {
            (
                2,
                6 * rounds - 2,
                pb::DeductionStatus::Failed,
                "INSUFFICIENT_FUNDS",
            )
        };
        assert_eq!(
            status(pb::DeductionStatus::Succeeded).len(),
            succeeded,
            "m{k}"
        );
        let others = status(other);
        assert_eq!(others.len(), expected, "m{k}");
        assert!(
            others.iter().all(|d| d.reason_code == reason),
            "m{k}: {others:?}"
        );
    }
    // Each wallet paid exactly what succeeded, whichever replica and batch decided it.
    assert_eq!(first.balance("p-0").await, "840.00");
    assert_eq!(second.balance("p-1").await, "840.00");
    assert_eq!(first.balance("p-2").await, "5.00");
    // A bill and a raced request id a round.
    let left = 1000 - 20 * i64::try_from(rounds).unwrap();
    assert_eq!(second.balance("p-3").await, format!("{left}.00"));
    assert_ledger_balanced(first.ledger_totals().await);
    first.verify_audit().await;

    let (one, two) = (stats(&first), stats(&second));
    assert!(
        one.batches > 0 && two.batches > 0 && one.largest.max(two.largest) >= 2,
        "batches formed on both replicas: {one:?} {two:?}"
    );
    assert!(
        one.repeats + two.repeats > 0,
        "a request id sent twice into one batch in {rounds} rounds: {one:?} {two:?}"
    );
}

/// Eight mandates of merchant m-1, mandate `k` for payer p-k funded by `funding(k)`.
async fn card_mandates(
    app: &TestApp,
    funding: impl Fn(usize) -> Vec<pb::FundingSource>,
) -> Vec<String> {
    let mut mandates = vec![];
    for k in 0..8 {
        let m = app
            .mandate_with(
                "m-1",
                &format!("p-{k}"),
                &format!("c-{k}"),
                terms("10.00", None, Some(1000)),
                funding(k),
            )
            .await;
        mandates.push(m.mandate_id);
    }
    mandates
}

/// Round `r` of card debits of 10.00, `debits(k)` of them on mandate `k`, all at once; each
/// answer with its mandate's index.
async fn card_burst(
    clients: &[DeductionClient],
    mandates: &[String],
    r: usize,
    debits: impl Fn(usize) -> usize,
) -> Vec<(usize, pb::Deduction)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (k, m) in mandates.iter().enumerate() {
        for i in 0..debits(k) {
            let id = format!("r{r}-m{k}-{i}");
            let request = collect(&id, m, "10.00", &format!("bill-{id}"));
            let mut client = clients[(k + i) % clients.len()].clone();
            tasks.spawn(async move { (k, create_retrying(&mut client, request).await.0) });
        }
    }
    let mut answers = vec![];
    while let Some(joined) = tasks.join_next().await {
        let (k, answer) = joined.expect("request task");
        let d = answer
            .unwrap_or_else(|s| panic!("m{k}: {s:?}"))
            .deduction
            .unwrap();
        answers.push((k, d));
    }
    answers
}

/// A mandate's total usage as stored: amount (minor units) and debits.
async fn total_usage(pool: &sqlx::PgPool, mandate_id: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT amount_minor, debit_count FROM mandate_usage \
         WHERE mandate_id = $1 AND period_key = 'total'",
    )
    .bind(mandate_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Locks not granted in the test's database: transactions waiting for another's rows.
async fn waiting(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A batch whose member loses its request id to another transaction (another replica's, held
/// open here) fails at the insert; it is rolled back and every member is decided alone: the
/// others are collected, the loser is told its id is taken, nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_loses_a_race_is_decided_member_by_member_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    let mut mandates = vec![];
    for k in 0..8 {
        let payer = format!("p-{k}");
        let m = app
            .mandate_with(
                "m-1",
                &payer,
                &format!("c-{k}"),
                terms("10.00", None, Some(100)),
                wallet_only(),
            )
            .await;
        app.credit(&payer, "500.00").await;
        mandates.push(m.mandate_id);
    }
    let mut client = app.deductions_as(app.merchant_token("m-1")).await;
    client
        .create_deduction(collect("seed", &mandates[0], "10.00", "bill-seed"))
        .await
        .unwrap();
    let Raw::Postgres(pool) = Raw::open(&app).await else {
        unreachable!()
    };
    let clients = clients(&app, "m-1", 4).await;
    let send = |tasks: &mut tokio::task::JoinSet<_>, i: usize, id: String, mandate: &str| {
        let request = collect(&id, mandate, "10.00", &format!("bill-{id}"));
        let mut client = clients[i % clients.len()].clone();
        tasks.spawn(async move { (id, create_retrying(&mut client, request).await.0) });
    };

    // Another transaction takes request id `race` (a copy of the seed deduction under it) and
    // stays open.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO deductions (deduction_id, merchant_id, request_id, fingerprint, \
         mandate_id, payer_id, status, bill_reference, created_at_us, updated_at_us, document, \
         bill_key) SELECT 'ddn-held', merchant_id, 'race', fingerprint, mandate_id, payer_id, \
         status, bill_reference || '-held', created_at_us, updated_at_us, document, \
         bill_key || '-held' FROM deductions WHERE request_id = 'seed'",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let held: String = sqlx::query_scalar("SELECT pg_current_xact_id()::xid::text")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    // Every worker busy, waiting on a held mandate, so that what comes next queues and is
    // taken as one batch.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM mandates WHERE mandate_id = $1 FOR UPDATE")
        .bind(&mandates[7])
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = i64::try_from(withholding::storage::BATCH_WORKERS).unwrap();
    for i in 0..2 * withholding::storage::BATCH_WORKERS {
        send(&mut tasks, i, format!("held-{i}"), &mandates[7]);
    }
    let within = std::time::Duration::from_secs(10);
    eventually("every worker to wait on the held mandate", within, || {
        let pool = pool.clone();
        async move { (waiting(&pool).await >= workers).then_some(()) }
    })
    .await;
    // With the held ones left in the queue, fewer than a batch's worth; none on the seed's
    // mandate, whose row the held insert's foreign key has share-locked.
    for i in 0..20 {
        send(&mut tasks, i, format!("queued-{i}"), &mandates[1 + i % 6]);
    }
    send(&mut tasks, 0, "race".into(), &mandates[1]);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    blocker.commit().await.unwrap();
    eventually("the batch to wait on the held request id", within, || {
        let (pool, held) = (pool.clone(), held.clone());
        async move {
            let on_held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE NOT granted \
                 AND locktype = 'transactionid' AND transactionid::text = $1",
            )
            .bind(held)
            .fetch_one(&pool)
            .await
            .unwrap();
            (on_held > 0).then_some(())
        }
    })
    .await;
    holder.commit().await.unwrap();

    let mut collected = 1;
    while let Some(joined) = tasks.join_next().await {
        let (id, answer) = joined.expect("request task");
        if id == "race" {
            let status = answer.expect_err("the held request id is taken");
            assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        } else {
            let d = answer
                .unwrap_or_else(|s| panic!("{id}: {s:?}"))
                .deduction
                .unwrap();
            assert_eq!(deduction_status(&d), pb::DeductionStatus::Succeeded, "{id}");
            collected += 1;
        }
    }
    let stats = stats(&app);
    assert!(
        stats.failed > 0,
        "the batch with the raced id failed: {stats:?}"
    );
    // Every wallet paid exactly the debits collected (all whole amounts), none twice.
    let mut paid = 0;
    for k in 0..8 {
        let balance = app.balance(&format!("p-{k}")).await;
        let whole: i64 = balance.strip_suffix(".00").unwrap().parse().unwrap();
        paid += 500 - whole;
    }
    assert_eq!(paid, 10 * collected);
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// Card debits in bursts on PostgreSQL: the bank's answers are settled together. m0–m5 each pay
/// by a card of their own (m0 with four debits at once, whose answers meet in one batch and are
/// settled one after another); m6's first card refuses (DO_NOT_HONOUR), so each of its answers
/// plans the next card's charge; m7's only card refuses, so each debit ends FAILED and gives its
/// usage back. Every debit ends as it would alone, the bank holds exactly the charges made, and
/// the usage, ledger and audit chains agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_answers_are_settled_together_postgres() {
    let bank = TestBank::start().await;
    let refusing = |token: &str| bank_pb::SetCardRequest {
        card_token: token.into(),
        balance_minor: 10_000_000,
        decline_code: "DO_NOT_HONOUR".into(),
        ..Default::default()
    };
    for k in 0..7 {
        bank.card(&format!("tok_{k}"), 10_000_000).await;
    }
    bank.program(refusing("tok_dnh")).await;
    let app = spawn_app_with_bank(Backend::Postgres, &bank, PROMPT).await;
    let mandates = card_mandates(&app, |k| match k {
        6 => vec![card_funding("tok_dnh", None), card_funding("tok_6", None)],
        7 => vec![card_funding("tok_dnh", None)],
        _ => vec![card_funding(&format!("tok_{k}"), None)],
    })
    .await;
    let clients = clients(&app, "m-1", 8).await;
    let debits = |k: usize| if k == 0 { 4 } else { 2 };

    let mut answers: Vec<(usize, pb::Deduction)> = vec![];
    let mut rounds = 0;
    while rounds < ROUNDS.0 || (rounds < ROUNDS.1 && stats(&app).settle_batches == 0) {
        answers.extend(card_burst(&clients, &mandates, rounds, debits).await);
        rounds += 1;
    }

    for (k, d) in &answers {
        let (status, source) = match k {
            7 => (pb::DeductionStatus::Failed, None),
            6 => (pb::DeductionStatus::Succeeded, Some(1)),
            _ => (pb::DeductionStatus::Succeeded, Some(0)),
        };
        assert_eq!(
            (deduction_status(d), d.paid_by_source_index),
            (status, source),
            "m{k}: {d:?}"
        );
    }
    // The bank took what succeeded, once each, and refused m6's and m7's first cards.
    let charges = bank.charges().await;
    let count = |s: bank_pb::ChargeStatus| charges.iter().filter(|c| c.status == s as i32).count();
    let per_round: usize = (0..8).map(debits).sum();
    let refused_per_round = debits(6) + debits(7);
    assert_eq!(
        count(bank_pb::ChargeStatus::Succeeded),
        rounds * (per_round - debits(7))
    );
    assert_eq!(
        count(bank_pb::ChargeStatus::Declined),
        rounds * refused_per_round
    );
    // Usage counts what succeeded; m7's FAILED debits gave theirs back.
    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    for (k, m) in mandates.iter().enumerate() {
        let (amount, debit_count) = total_usage(&pool, m).await;
        let succeeded = if k == 7 { 0 } else { rounds * debits(k) };
        let succeeded = i64::try_from(succeeded).unwrap();
        assert_eq!((amount, debit_count), (succeeded * 1000, succeeded), "m{k}");
    }
    pool.close().await;
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
    let stats = stats(&app);
    assert!(
        stats.settle_batches > 0 && stats.settled >= 2 * stats.settle_batches,
        "answers settled together in {rounds} rounds: {stats:?}"
    );
    // No batch fell back to settling member by member: the batches' own writes did the work.
    assert_eq!(stats.failed, 0, "{stats:?}");
}

/// A batch of bank answers that fails is rolled back and each answer settled alone: a trigger
/// installed here refuses any statement that updates two deductions at once (a settle batch's
/// update; the one-answer path updates one), so a settle batch fails at its writes, and every
/// debit must still end exactly as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_batch_that_fails_is_settled_answer_by_answer_postgres() {
    let bank = TestBank::start().await;
    for k in 0..8 {
        bank.card(&format!("tok_{k}"), 10_000_000).await;
    }
    let app = spawn_app_with_bank(Backend::Postgres, &bank, PROMPT).await;
    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    for sql in [
        "CREATE FUNCTION one_deduction_at_a_time() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF (SELECT count(*) FROM changed) > 1 THEN \
         RAISE EXCEPTION 'two deductions updated by one statement'; END IF; RETURN NULL; END $$",
        "CREATE TRIGGER one_deduction_at_a_time AFTER UPDATE ON deductions \
         REFERENCING NEW TABLE AS changed FOR EACH STATEMENT \
         EXECUTE FUNCTION one_deduction_at_a_time()",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let mandates = card_mandates(&app, |k| vec![card_funding(&format!("tok_{k}"), None)]).await;
    let clients = clients(&app, "m-1", 8).await;

    let mut answers = vec![];
    let mut rounds = 0;
    while rounds < ROUNDS.1 && stats(&app).failed == 0 {
        answers.extend(card_burst(&clients, &mandates, rounds, |_| 2).await);
        rounds += 1;
    }

    let stats = stats(&app);
    // (A batch with one deduction to update passes the trigger: one whose other answers go
    // alone, for a mandate met twice.)
    assert!(
        stats.failed > 0,
        "settle batches failed in {rounds} rounds: {stats:?}"
    );
    for (k, d) in &answers {
        assert_eq!(
            (deduction_status(d), d.paid_by_source_index),
            (pb::DeductionStatus::Succeeded, Some(0)),
            "m{k}: {d:?}"
        );
    }
    let charges = bank.charges().await;
    assert_eq!(charges.len(), answers.len(), "one charge per debit");
    assert!(
        charges
            .iter()
            .all(|c| c.status == bank_pb::ChargeStatus::Succeeded as i32)
    );
    for (k, m) in mandates.iter().enumerate() {
        let (amount, debit_count) = total_usage(&pool, m).await;
        let debits = i64::try_from(2 * rounds).unwrap();
        assert_eq!((amount, debit_count), (debits * 1000, debits), "m{k}");
    }
    pool.close().await;
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}
