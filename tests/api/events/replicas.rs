//! Changes made through another server on the same database arrive, and on PostgreSQL a
//! transaction still in flight when later ones commit loses nothing.

use std::time::{Duration, Instant};

use pb::EventKind as K;
use withholding::service::EventSettings;

use super::{Watch, kind_of};
use crate::both_backends;
use crate::harness::*;

/// Two servers on one database, each with the default event settings (100 ms polls): what
/// either one writes arrives on a stream opened on the other. Prints the delivery latency, from
/// the write's answer to the event's arrival.
async fn changes_through_either_server_arrive_on_the_other(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let shared = db.shared();
    let spawn = |db| {
        spawn_full(
            backend,
            db,
            default_keys(),
            None,
            withholding::service::DeductionSettings::default(),
            EventSettings::default(),
        )
    };
    let a = spawn(db).await;
    let b = spawn(shared).await;
    let mut on_a = a.events_as(a.merchant_token("m-1")).await;
    let mut on_b = b.events_as(b.merchant_token("m-1")).await;
    let mut watch_a = Watch::open(&mut on_a, "").await;
    let mut watch_b = Watch::open(&mut on_b, "").await;
    let mut latencies = vec![];
    for i in 0..20 {
        let (writer, watch, other) = if i % 2 == 0 {
            (&a, &mut watch_b, &mut watch_a)
        } else {
            (&b, &mut watch_a, &mut watch_b)
        };
        let made = create_mandate(writer, &format!("c-{i}")).await;
        let written = Instant::now();
        let event = watch.next().await;
        latencies.push(written.elapsed());
        assert_eq!(
            (kind_of(&event), event.mandate_id.as_str()),
            (K::MandateCreated, made.mandate_id.as_str())
        );
        // The writer's own server delivers it too, at the same cursor.
        let mine = other.next().await;
        assert_eq!(mine, event);
    }
    latencies.sort();
    println!(
        "event delivery across servers ({backend:?}, 100 ms polls): median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(2));
}

/// PostgreSQL: a writer's transaction that took its event row first but commits last (held on
/// a lock the test takes) is delivered after the later ones, not passed over: positions are
/// given after commit, so no reader can move past a row still in flight. A reader of the
/// insert's sequence ("seq > cursor") fails here: it waits in vain for the held event.
async fn an_in_flight_transaction_leaves_no_gap(backend: Backend) {
    if backend == Backend::Sqlite {
        // One writer: commits happen in the order rows are numbered.
        return;
    }
    let app = spawn_app(backend).await;
    let slow = active_mandate(&app, "c-slow").await;
    let quick = active_mandate(&app, "c-quick").await;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut watch = Watch::open(&mut client, "").await;
    let _ = watch.take(4).await;

    // Hold the slow mandate's audit chain head: its next change inserts its event row, then
    // waits here before it can commit.
    let Raw::Postgres(pool) = Raw::open(&app).await else {
        unreachable!()
    };
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM audit_chain_heads WHERE chain_id = $1 FOR UPDATE")
        .bind(format!("mandate:{}", slow.mandate_id))
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let payer = app.payer_token("p-1");
    let addr = app.addr;
    let slow_id = slow.mandate_id.clone();
    let paused = tokio::spawn(async move {
        mandates_at(addr, payer)
            .await
            .pause_mandate(pb::PauseMandateRequest {
                mandate_id: slow_id,
                reason: "held".into(),
                request_id: String::new(),
            })
            .await
    });
    eventually(
        "the slow change to wait on the lock",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    let in_flight: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE mandate_id = $1")
        .bind(&slow.mandate_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_flight, 2, "the held row is not visible yet");

    // Later changes commit and are delivered meanwhile.
    let mut payer = app.payer("p-1").await;
    payer
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: quick.mandate_id.clone(),
            reason: "quick".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let later = watch.next().await;
    assert_eq!(
        (kind_of(&later), later.mandate_id.as_str()),
        (K::MandatePaused, quick.mandate_id.as_str())
    );

    // The held transaction commits last; its event still arrives, after the later one.
    holder.commit().await.unwrap();
    paused.await.unwrap().unwrap();
    let held = watch.next().await;
    assert_eq!(
        (kind_of(&held), held.mandate_id.as_str()),
        (K::MandatePaused, slow.mandate_id.as_str())
    );
    let position = |e: &pb::Event| e.cursor[1..].parse::<i64>().unwrap();
    assert!(position(&held) > position(&later));
}

both_backends!(
    changes_through_either_server_arrive_on_the_other,
    an_in_flight_transaction_leaves_no_gap,
);
