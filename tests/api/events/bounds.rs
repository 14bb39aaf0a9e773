//! The bounds of `WatchEvents`: who may watch, which cursors are taken, how many streams, a
//! slow consumer cut off with its buffer bounded, and retention.

use std::time::Duration;

use jiff::SignedDuration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use withholding::service::EventSettings;

use super::{Watch, kind_of};
use crate::both_backends;
use crate::harness::*;

async fn open(client: &mut EventClient, cursor: &str) -> Result<(), tonic::Status> {
    client
        .watch_events(pb::WatchEventsRequest {
            cursor: cursor.into(),
        })
        .await
        .map(drop)
}

/// Merchants and payers watch; auditors and operators are PERMISSION_DENIED, no token is
/// UNAUTHENTICATED; a cursor this service did not issue is INVALID_ARGUMENT naming `cursor`.
async fn who_may_watch_and_which_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    create_mandate(&app, "c-1").await;
    for token in [app.auditor_token(None), app.operator_token()] {
        let err = open(&mut app.events_as(token).await, "").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let mut anonymous = pb::event_service_client::EventServiceClient::with_interceptor(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        Bearer(None),
    );
    let err = open(&mut anonymous, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let mut merchant = app.events_as(app.merchant_token("m-1")).await;
    for bad in ["zzz", "e-1", "e01", "e999999"] {
        let err = open(&mut merchant, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        let details = err.get_details_bad_request().expect("a BadRequest");
        assert_eq!(details.field_violations[0].field, "cursor", "{bad}");
    }
    let issued = Watch::open(&mut merchant, "").await.next().await.cursor;
    open(&mut merchant, &issued).await.unwrap();
}

/// At most `max_watchers_per_caller` streams per caller: one more is RESOURCE_EXHAUSTED, other
/// callers are not affected, and a stream closed gives its place back.
async fn streams_per_caller_are_bounded(backend: Backend) {
    let app = spawn_app(backend).await;
    let most = EventSettings::default().max_watchers_per_caller;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut open_streams = vec![];
    for _ in 0..most {
        open_streams.push(Watch::open(&mut client, "").await);
    }
    let err = open(&mut client, "").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let mut other = app.events_as(app.merchant_token("m-2")).await;
    let _theirs = Watch::open(&mut other, "").await;
    assert_eq!(app.events.watchers(), most + 1);
    open_streams.pop();
    eventually(
        "the closed stream's place",
        Duration::from_secs(10),
        || async { (app.events.watchers() == most).then_some(()) },
    )
    .await;
    let _again = Watch::open(&mut client, "").await;
}

/// A caller that does not read: its stream's buffer fills (the service never holds more than
/// `buffer` events and one read of `batch` for it), stays
/// full for `stall`, and the stream is cut off with RESOURCE_EXHAUSTED naming the cursor of
/// the last event handed on, which the caller then resumes from without a gap.
async fn a_slow_consumer_is_cut_off_with_bounded_buffering(backend: Backend) {
    const BUFFER: usize = 8;
    const EVENTS: i64 = 3000;
    let settings = EventSettings {
        buffer: BUFFER,
        batch: BUFFER as u32,
        stall: Duration::from_millis(300),
        ..test_event_settings()
    };
    let db = TestDatabase::new(backend).await;
    let app = spawn_full(
        backend,
        db,
        default_keys(),
        None,
        withholding::service::DeductionSettings::default(),
        settings,
    )
    .await;
    // Many events at once, written around the service (the outbox is what is under test).
    let raw = Raw::open(&app).await;
    raw.execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {EVENTS}) \
         INSERT INTO events (at_us, merchant_id, payer_id, mandate_id, deduction_id, kind, \
         status, mandate_version) SELECT 1772330400000000, 'm-1', 'p-1', 'mdt-bulk', NULL, \
         'MANDATE_CREATED', 'PENDING_CONSENT', i FROM n"
    ))
    .await
    .unwrap();
    // A client whose HTTP/2 window (64 KiB) fills long before 3000 events are sent.
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = pb::event_service_client::EventServiceClient::with_interceptor(
        channel,
        Bearer(Some(app.merchant_token("m-1"))),
    );
    let mut stream = client
        .watch_events(pb::WatchEventsRequest { cursor: "".into() })
        .await
        .unwrap()
        .into_inner();
    let mut most_buffered = 0;
    let mut filled = false;
    eventually(
        "the slow stream to be cut off",
        Duration::from_secs(30),
        || {
            let buffered = app.events.buffered_events();
            most_buffered = most_buffered.max(buffered);
            filled |= buffered >= BUFFER;
            let watchers = app.events.watchers();
            async move { (watchers == 0).then_some(()) }
        },
    )
    .await;
    assert!(filled, "the buffer never filled");
    assert!(most_buffered <= 2 * BUFFER, "{most_buffered} held");
    assert_eq!(
        app.events.buffered_events(),
        0,
        "the cut stream's buffer is freed"
    );
    println!(
        "slow watcher: at most {most_buffered} events held by the service \
         ({BUFFER} buffered + {BUFFER} read allowed), freed when cut off"
    );

    // What was sent before the cut-off arrives, then the status naming where to resume.
    let mut last = String::new();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert!(message.event.is_some());
                last = message.cursor;
                received += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(received > 0 && received < EVENTS, "{received}");
    assert!(
        status.message().contains(&format!("cursor {last}")),
        "{status:?} after {last}"
    );
    // Resuming from it: the next event is the one after it.
    let mut again = app.events_as(app.merchant_token("m-1")).await;
    let mut watch = Watch::open(&mut again, &last).await;
    let next = watch.next().await;
    assert_eq!(next.mandate_version, received + 1, "{next:?}");
}

/// Events older than the retention are deleted by the sweep; a cursor from before them is
/// OUT_OF_RANGE, and an empty cursor starts after them.
async fn retention_expires_old_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.events_as(app.merchant_token("m-1")).await;
    let mut watch = Watch::open(&mut client, "").await;
    create_mandate(&app, "c-1").await;
    create_mandate(&app, "c-2").await;
    let first = watch.next().await;
    let _ = watch.next().await;
    drop(watch);

    app.clock.advance(SignedDuration::from_hours(7 * 24 + 1));
    assert_eq!(app.events.sweep_once().await.unwrap(), 2);
    let err = open(&mut client, &first.cursor).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains(&first.cursor), "{err:?}");

    let mut fresh = Watch::open(&mut client, "").await;
    let made = create_mandate(&app, "c-3").await;
    let event = fresh.next().await;
    assert_eq!(
        (kind_of(&event), event.mandate_id.as_str()),
        (pb::EventKind::MandateCreated, made.mandate_id.as_str())
    );
    // Nothing younger than the retention was deleted.
    assert_eq!(app.events.sweep_once().await.unwrap(), 0);
}

both_backends!(
    who_may_watch_and_which_cursors,
    streams_per_caller_are_bounded,
    a_slow_consumer_is_cut_off_with_bounded_buffering,
    retention_expires_old_cursors,
);
