//! GetBlockedAttempts: refused and flagged attempts counted by merchant × reason × day in the
//! asked time zone, clawbacks first — a refunded bill collected again, a suspected refund
//! recovery, and clawback authority asked for in a mandate or an amendment (refused as
//! malformed, and recorded so an auditor sees it).

use jiff::{SignedDuration, Timestamp};

use super::{History, query_all};
use crate::both_backends;
use crate::harness::*;

fn range(days: i64) -> (Timestamp, Timestamp) {
    let start: Timestamp = START.parse().unwrap();
    (
        start - SignedDuration::from_hours(24),
        start + SignedDuration::from_hours(24 * days),
    )
}

async fn blocked(
    client: &mut AuditClient,
    merchant: &str,
    time_zone: &str,
) -> Result<pb::GetBlockedAttemptsResponse, tonic::Status> {
    let (from, to) = range(3);
    client
        .get_blocked_attempts(pb::GetBlockedAttemptsRequest {
            merchant_id: merchant.into(),
            from: pb_time(from),
            to: pb_time(to),
            time_zone: time_zone.into(),
            examples_per_row: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// (merchant, reason, day, clawback, denied, flagged) of each row.
fn rows(answer: &pb::GetBlockedAttemptsResponse) -> Vec<(&str, &str, &str, bool, i64, i64)> {
    answer
        .rows
        .iter()
        .map(|r| {
            (
                r.merchant_id.as_str(),
                r.reason_code.as_str(),
                r.day.as_str(),
                r.clawback,
                r.denied,
                r.flagged,
            )
        })
        .collect()
}

async fn clawbacks_come_first_counted_by_merchant_reason_and_day(backend: Backend) {
    let app = spawn_app(backend).await;
    let h = History::plant(&app).await;
    // m-1 asks for clawback authority in an amendment: refused as malformed, and recorded.
    let mut terms = roomy_terms();
    terms.purposes = vec![
        pb::Purpose::Utility as i32,
        pb::Purpose::RefundRecovery as i32,
    ];
    let err = app
        .merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: h.a.mandate_id.clone(),
            terms: Some(terms),
            reason: "recover refunds".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    // Days in Los Angeles (UTC−8): the m-1 debits at 04:00 UTC on 1 March fall on 28 February.
    let answer = blocked(&mut auditor, "", "America/Los_Angeles")
        .await
        .unwrap();
    let found = rows(&answer);
    let clawbacks: Vec<_> = found.iter().take_while(|r| r.3).cloned().collect();
    assert_eq!(
        clawbacks,
        [
            ("m-1", "REFUND_CLAWBACK_FORBIDDEN", "2026-02-28", true, 1, 0),
            ("m-1", "SUSPECTED_REFUND_RECOVERY", "2026-02-28", true, 0, 1),
            (
                "m-1",
                "REFUND_RECOVERY_NOT_MANDATABLE",
                "2026-03-01",
                true,
                1,
                0
            ),
            (
                "m-2",
                "REFUND_RECOVERY_NOT_MANDATABLE",
                "2026-03-01",
                true,
                1,
                0
            ),
        ]
    );
    let others = &found[clawbacks.len()..];
    let over_limit = &answer.rows[clawbacks.len()..]
        .iter()
        .find(|r| r.reason_code == "AMOUNT_ABOVE_PER_DEBIT_LIMIT")
        .unwrap()
        .examples[0];
    assert_eq!(over_limit.deduction_id, h.over_limit.deduction_id);
    assert!(others.iter().all(|r| !r.3));
    assert!(
        others.contains(&(
            "m-1",
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            "2026-02-28",
            false,
            1,
            0
        )),
        "{others:?}"
    );

    // The examples are the attempts themselves.
    let example = |row: usize| &answer.rows[row].examples[0];
    assert_eq!(example(0).deduction_id, h.clawback.deduction_id);
    assert_eq!(example(0).action, "DEDUCTION_DECLINED");
    assert_eq!(example(1).deduction_id, h.suspected.deduction_id);
    assert_eq!(example(1).outcome, "FLAGGED");
    assert_eq!(example(2).action, "CLAWBACK_AUTHORITY_REFUSED");
    assert_eq!(
        (
            example(3).actor_role.as_str(),
            example(3).merchant_id.as_str()
        ),
        ("merchant", "m-2")
    );
    assert!(answer.rows.iter().all(|r| r.examples.len() as i64 <= 3
        && r.examples.len() as i64 == (r.denied + r.flagged).min(3)));

    // The count is every refused or flagged event of the range, as QueryAuditEvents has them.
    let (from, to) = range(3);
    let mut counted = 0;
    for outcome in ["DENIED", "FLAGGED"] {
        let filter = pb::AuditEventFilter {
            outcome: outcome.into(),
            from: pb_time(from),
            to: pb_time(to),
            ..Default::default()
        };
        counted += query_all(&mut auditor, filter, false, 100).await.len() as i64;
    }
    assert_eq!(answer.events, counted);
    let summed: i64 = answer.rows.iter().map(|r| r.denied + r.flagged).sum();
    assert_eq!(summed, counted);

    // The refusals of clawback authority are policy events any query finds.
    let refusals = query_all(
        &mut auditor,
        pb::AuditEventFilter {
            reason_code: "REFUND_RECOVERY_NOT_MANDATABLE".into(),
            ..Default::default()
        },
        false,
        10,
    )
    .await;
    let asked: Vec<(&str, &str)> = refusals
        .iter()
        .map(|e| (e.merchant_id.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(asked, [("m-2", "DENIED"), ("m-1", "DENIED")]);
    let details: serde_json::Value = serde_json::from_str(&refusals[1].details).unwrap();
    assert_eq!(details["rpc"], "AmendMandate");
    assert_eq!(details["purpose"], "REFUND_RECOVERY");

    // Shanghai by default: the same attempts, on Shanghai's days.
    let shanghai = blocked(&mut auditor, "", "").await.unwrap();
    let days: Vec<&str> = shanghai
        .rows
        .iter()
        .take_while(|r| r.clawback)
        .map(|r| r.day.as_str())
        .collect();
    assert_eq!(
        days,
        ["2026-03-01", "2026-03-01", "2026-03-02", "2026-03-02"]
    );
    assert_eq!(shanghai.events, answer.events);
}

async fn blocked_attempts_are_scoped_and_bounded(backend: Backend) {
    let app = spawn_app(backend).await;
    History::plant(&app).await;
    for (who, token) in [
        ("auditor of m-2", app.auditor_token(Some("m-2"))),
        ("merchant m-2", app.merchant_token("m-2")),
    ] {
        let mut client = app.audit_as(token).await;
        let own = blocked(&mut client, "", "").await.unwrap();
        assert!(!own.rows.is_empty(), "{who}");
        assert!(own.rows.iter().all(|r| r.merchant_id == "m-2"), "{who}");
        assert!(
            own.rows
                .iter()
                .flat_map(|r| &r.examples)
                .all(|e| e.merchant_id == "m-2"),
            "{who}"
        );
        let other = blocked(&mut client, "m-1", "").await.unwrap();
        assert!(other.rows.is_empty() && other.events == 0, "{who}");
    }
    let mut payer = app.audit_as(app.payer_token("p-1")).await;
    let err = blocked(&mut payer, "", "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let (from, _) = range(0);
    let too_long = pb::GetBlockedAttemptsRequest {
        from: pb_time(from),
        to: pb_time(from + SignedDuration::from_hours(24 * 94)),
        ..Default::default()
    };
    let err = auditor.get_blocked_attempts(too_long).await.unwrap_err();
    assert_eq!(violated_field(&err).as_deref(), Ok("to"), "{err:?}");
    let (from, to) = range(1);
    let cases = [
        (
            "examples_per_row",
            pb::GetBlockedAttemptsRequest {
                from: pb_time(from),
                to: pb_time(to),
                examples_per_row: 21,
                ..Default::default()
            },
        ),
        (
            "time_zone",
            pb::GetBlockedAttemptsRequest {
                from: pb_time(from),
                to: pb_time(to),
                time_zone: "Mars/Olympus".into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let err = auditor.get_blocked_attempts(request).await.unwrap_err();
        assert_eq!(violated_field(&err).as_deref(), Ok(field), "{err:?}");
    }
}

both_backends!(
    clawbacks_come_first_counted_by_merchant_reason_and_day,
    blocked_attempts_are_scoped_and_bounded
);
