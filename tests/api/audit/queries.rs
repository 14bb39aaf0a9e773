//! QueryAuditEvents and ExportAuditEvents: each filter selects exactly its events, pages are
//! keyset cursors that stay correct while events are appended (a late committer on PostgreSQL
//! included), and an export is the query's selection, complete and in order.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{History, export_all, query_all, seconds};
use crate::both_backends;
use crate::harness::*;

type Predicate = Box<dyn Fn(&pb::AuditEvent) -> bool>;

fn after_start(minutes: i64) -> Timestamp {
    START.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

async fn every_filter_selects_exactly_its_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let all = query_all(&mut auditor, pb::AuditEventFilter::default(), false, 1000).await;
    // Oldest first, each event with its place on its chain and its hash.
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        all.iter()
            .all(|e| e.chain_seq >= 1 && e.hash.len() == 64 && e.prev_hash.len() == 64)
    );
    let chain_a = format!("mandate:{}", h.a.mandate_id);
    let stored: Vec<(i64, String)> = super::stored_chain(&app, &chain_a)
        .await
        .into_iter()
        .map(|e| (e.chain_seq, e.hash))
        .collect();
    let answered: Vec<(i64, String)> = all
        .iter()
        .filter(|e| e.chain_id == chain_a)
        .map(|e| (e.chain_seq, e.hash.clone()))
        .collect();
    assert_eq!(answered, stored);
    // Events the queries below append (the auditor's reads) are past this one.
    let last = all.last().unwrap().seq;

    let a = h.a.mandate_id.clone();
    let refunded = h.refunded.deduction_id.clone();
    let (from, to) = (after_start(90), after_start(25 * 60));
    let filter = pb::AuditEventFilter::default;
    let cases: Vec<(&str, pb::AuditEventFilter, Predicate)> = vec![
        (
            "merchant",
            pb::AuditEventFilter {
                merchant_id: "m-2".into(),
                ..filter()
            },
            Box::new(|e| e.merchant_id == "m-2"),
        ),
        (
            "payer",
            pb::AuditEventFilter {
                payer_id: "p-1".into(),
                ..filter()
            },
            Box::new(|e| e.payer_id == "p-1"),
        ),
        (
            "mandate",
            pb::AuditEventFilter {
                mandate_id: a.clone(),
                ..filter()
            },
            Box::new(move |e| e.mandate_id == a),
        ),
        (
            "deduction",
            pb::AuditEventFilter {
                deduction_id: refunded.clone(),
                ..filter()
            },
            Box::new(move |e| e.deduction_id == refunded),
        ),
        (
            "action",
            pb::AuditEventFilter {
                action: "DEDUCTION_DECLINED".into(),
                ..filter()
            },
            Box::new(|e| e.action == "DEDUCTION_DECLINED"),
        ),
        (
            "outcome",
            pb::AuditEventFilter {
                outcome: "FLAGGED".into(),
                ..filter()
            },
            Box::new(|e| e.outcome == "FLAGGED"),
        ),
        (
            "reason",
            pb::AuditEventFilter {
                reason_code: "REFUND_CLAWBACK_FORBIDDEN".into(),
                ..filter()
            },
            Box::new(|e| e.reason_code == "REFUND_CLAWBACK_FORBIDDEN"),
        ),
        (
            "actor role",
            pb::AuditEventFilter {
                actor_role: "payer".into(),
                ..filter()
            },
            Box::new(|e| e.actor_role == "payer"),
        ),
        (
            "actor subject",
            pb::AuditEventFilter {
                actor_subject: "p-2".into(),
                ..filter()
            },
            Box::new(|e| e.actor_subject == "p-2"),
        ),
        (
            "from",
            pb::AuditEventFilter {
                from: pb_time(from),
                ..filter()
            },
            Box::new(move |e| seconds(&e.at) >= from),
        ),
        (
            "to",
            pb::AuditEventFilter {
                to: pb_time(to),
                ..filter()
            },
            Box::new(move |e| seconds(&e.at) < to),
        ),
        (
            "every one at once",
            pb::AuditEventFilter {
                merchant_id: "m-1".into(),
                outcome: "DENIED".into(),
                actor_role: "merchant".into(),
                from: pb_time(from),
                to: pb_time(to),
                ..filter()
            },
            Box::new(move |e| {
                e.merchant_id == "m-1"
                    && e.outcome == "DENIED"
                    && e.actor_role == "merchant"
                    && (from..to).contains(&seconds(&e.at))
            }),
        ),
    ];
    for (what, filter, matches) in cases {
        let expected: Vec<&pb::AuditEvent> = all.iter().filter(|e| matches(e)).collect();
        assert!(!expected.is_empty(), "{what}: the history has such events");
        assert!(expected.len() < all.len(), "{what}: and others");
        let mut oldest_first = query_all(&mut auditor, filter.clone(), false, 3).await;
        oldest_first.retain(|e| e.seq <= last);
        assert_eq!(oldest_first.iter().collect::<Vec<_>>(), expected, "{what}");
        let mut newest_first = query_all(&mut auditor, filter, true, 2).await;
        newest_first.retain(|e| e.seq <= last);
        newest_first.reverse();
        assert_eq!(newest_first, oldest_first, "{what}, newest first");
    }
}

async fn bad_queries_name_their_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let from = after_start(60);
    let cases = [
        (
            "page_token",
            pb::QueryAuditEventsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        ),
        (
            "page_size",
            pb::QueryAuditEventsRequest {
                page_size: 1001,
                ..Default::default()
            },
        ),
        (
            "filter.to",
            pb::QueryAuditEventsRequest {
                filter: Some(pb::AuditEventFilter {
                    from: pb_time(from),
                    to: pb_time(from),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let err = auditor.query_audit_events(request).await.unwrap_err();
        assert_eq!(violated_field(&err).as_deref(), Ok(field), "{err:?}");
    }
}

/// A writer of its own: `count` debits of m-1 on `mandates`, one after another, each declined
/// or collected.
fn keep_collecting(
    app: &TestApp,
    mandates: Vec<String>,
    tag: &'static str,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let (addr, token) = (app.addr, app.merchant_token("m-1"));
    tokio::spawn(async move { collect_on(addr, token, mandates, tag, count).await })
}

async fn collect_on(
    addr: std::net::SocketAddr,
    token: String,
    mandates: Vec<String>,
    tag: &str,
    count: usize,
) {
    let mut client = deductions_at(addr, token).await;
    for i in 0..count {
        let mandate = &mandates[i % mandates.len()];
        // Every third debit is above the per-debit limit (declined), the others collect.
        let amount = if i % 3 == 0 { "600.00" } else { "1.00" };
        client
            .create_deduction(collect(
                &format!("{tag}-{i}"),
                mandate,
                amount,
                &format!("{tag}-BILL-{i}"),
            ))
            .await
            .unwrap();
    }
}

async fn pages_stay_correct_while_events_are_appended(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut mandates = vec![];
    for i in 0..4 {
        let m = app
            .mandate_with(
                "m-1",
                "p-1",
                &format!("c-{i}"),
                roomy_terms(),
                wallet_only(),
            )
            .await;
        mandates.push(m.mandate_id);
    }
    app.credit("p-1", "5000.00").await;
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let before = query_all(&mut auditor, Default::default(), false, 1000).await;

    // Four writers append while two readers page through, one each way.
    let writers: Vec<_> = ["w0", "w1", "w2", "w3"]
        .into_iter()
        .map(|tag| keep_collecting(&app, mandates.clone(), tag, 60))
        .collect();
    let started = before.len() + 8;
    eventually("the writers to start", Duration::from_secs(30), || {
        let mut auditor = auditor.clone();
        async move {
            let now = query_all(&mut auditor, Default::default(), false, 1000).await;
            (now.len() > started).then_some(())
        }
    })
    .await;
    let mut forward = app.audit_as(app.auditor_token(None)).await;
    let mut backward = app.audit_as(app.merchant_token("m-1")).await;
    let merchant_filter = pb::AuditEventFilter::default;
    let (oldest_first, newest_first) = tokio::join!(
        query_all(&mut forward, Default::default(), false, 3),
        query_all(&mut backward, merchant_filter(), true, 5),
    );
    for writer in writers {
        writer.await.unwrap();
    }

    let after = query_all(&mut auditor, Default::default(), false, 1000).await;
    assert!(
        after.len() >= before.len() + 4 * 60,
        "the writers appended while the readers paged"
    );
    // Oldest first: in order, nothing twice, and nothing skipped up to where paging ended —
    // not even an event that committed after a later one had been read.
    assert!(oldest_first.windows(2).all(|w| w[0].seq < w[1].seq));
    let reached = oldest_first.last().unwrap().seq;
    let expected: Vec<&pb::AuditEvent> = after.iter().filter(|e| e.seq <= reached).collect();
    assert_eq!(oldest_first.iter().collect::<Vec<_>>(), expected);
    assert!(oldest_first.len() > before.len(), "paging saw appends");

    // Newest first: from the top when it started, back to the first event, nothing twice.
    assert!(newest_first.windows(2).all(|w| w[0].seq > w[1].seq));
    let top = newest_first.first().unwrap().seq;
    let expected: Vec<&pb::AuditEvent> = after
        .iter()
        .rev()
        .filter(|e| e.seq <= top && e.merchant_id == "m-1")
        .collect();
    assert_eq!(newest_first.iter().collect::<Vec<_>>(), expected);
    let distinct: BTreeSet<i64> = newest_first.iter().map(|e| e.seq).collect();
    assert_eq!(distinct.len(), newest_first.len());
    app.verify_audit().await;
}

async fn an_export_is_the_query_complete_and_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut mandates = vec![];
    for i in 0..5 {
        let m = app
            .mandate_with(
                "m-1",
                "p-1",
                &format!("c-{i}"),
                roomy_terms(),
                wallet_only(),
            )
            .await;
        mandates.push(m.mandate_id);
    }
    app.credit("p-1", "5000.00").await;
    // More events of m-1 than one page of the export (500), declined and collected.
    let writers: Vec<_> = ["x0", "x1", "x2", "x3"]
        .into_iter()
        .map(|tag| keep_collecting(&app, mandates.clone(), tag, 80))
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let m1 = pb::AuditEventFilter {
        merchant_id: "m-1".into(),
        ..Default::default()
    };
    let queried = query_all(&mut auditor, m1.clone(), false, 1000).await;
    assert!(queried.len() > 500, "{} events", queried.len());
    assert_eq!(export_all(&mut auditor, m1.clone(), false).await, queried);
    let mut newest_first = export_all(&mut auditor, m1, true).await;
    newest_first.reverse();
    assert_eq!(newest_first, queried);

    // A selection narrower than a page, and one that matches nothing.
    let declined = pb::AuditEventFilter {
        merchant_id: "m-1".into(),
        action: "DEDUCTION_DECLINED".into(),
        ..Default::default()
    };
    let queried = query_all(&mut auditor, declined.clone(), false, 10).await;
    assert!(!queried.is_empty());
    assert_eq!(export_all(&mut auditor, declined, false).await, queried);
    let nothing = pb::AuditEventFilter {
        merchant_id: "m-unknown".into(),
        ..Default::default()
    };
    assert!(export_all(&mut auditor, nothing, false).await.is_empty());
}

both_backends!(
    every_filter_selects_exactly_its_events,
    bad_queries_name_their_field,
    pages_stay_correct_while_events_are_appended,
    an_export_is_the_query_complete_and_in_order
);
