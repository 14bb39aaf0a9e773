//! Pre-debit notices (DESIGN §4): a notice lets one debit of up to its amount through, no sooner
//! than the lead time after it; NotifyUpcomingDebit is idempotent on its request id; only the
//! mandate's tenants see its notices.

use jiff::SignedDuration;
use tonic::Code;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::harness::*;

async fn a_notice_lets_one_debit_through(backend: Backend) {
    let app = spawn_app(backend).await;
    app.credit("p-1", "1000.00").await;
    app.credit("p-2", "1000.00").await;
    let terms = pb::MandateTerms {
        pre_notification: Some(pb::PreNotification {
            lead_time_s: 86_400,
        }),
        ..utility_terms()
    };
    let m = app
        .mandate_with("m-1", "p-1", "c-1", terms, wallet_only())
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let due = app
        .clock_now()
        .checked_add(SignedDuration::from_hours(48))
        .unwrap();
    let notice = notify(&mut merchant, "n-1", &m.mandate_id, "300.00", "b-1", due).await;
    assert_eq!(notice.mandate_id, m.mandate_id);
    assert_eq!(notice.amount, money("300.00"));
    assert_eq!(notice.bill_reference, "b-1");
    assert_eq!(notice.used_by_deduction_id, "");
    assert_eq!(notice.due_at, pb_time(due));

    // Idempotent on request_id: the same request is the same notice; another is refused.
    let again = notify(&mut merchant, "n-1", &m.mandate_id, "300.00", "b-1", due).await;
    assert_eq!(again, notice);
    let reused = merchant
        .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("301.00"),
            due_at: pb_time(due),
            bill_reference: "b-1".into(),
            request_id: "n-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert_eq!(
        reused.get_details_error_info().unwrap().reason,
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(
        list_notices(&mut merchant, &m.mandate_id).await.unwrap(),
        vec![notice.clone()]
    );

    // One second short of the lead time: not yet.
    app.clock.advance(DAY - SignedDuration::from_secs(1));
    let early = with_notice(collect("r-1", &m.mandate_id, "300.00", "b-1"), &notice);
    let d = new_deduction(&mut merchant, early).await;
    assert_declined(&d, &["PRE_NOTIFICATION_MISSING"], m.version, "too early");
    // Without the notice, or above its amount: never.
    app.clock.advance(SignedDuration::from_secs(1));
    let bare = collect("r-2", &m.mandate_id, "300.00", "b-1");
    let d = new_deduction(&mut merchant, bare).await;
    assert_declined(&d, &["PRE_NOTIFICATION_MISSING"], m.version, "no notice");
    let above = with_notice(collect("r-3", &m.mandate_id, "300.01", "b-1"), &notice);
    let d = new_deduction(&mut merchant, above).await;
    assert_declined(
        &d,
        &["PRE_NOTIFICATION_MISSING"],
        m.version,
        "above the notice",
    );
    assert_eq!(app.balance("p-1").await, "1000.00");

    // Exactly the lead time after it, the notice covers a debit up to its amount, once.
    let ok = with_notice(collect("r-4", &m.mandate_id, "250.00", "b-1"), &notice);
    let paid = succeeded_deduction(&mut merchant, ok).await;
    assert_eq!(paid.notice_id, notice.notice_id);
    assert_eq!(app.balance("p-1").await, "750.00");
    let listed = list_notices(&mut merchant, &m.mandate_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].notice_id, notice.notice_id);
    assert_eq!(listed[0].used_by_deduction_id, paid.deduction_id);
    let twice = with_notice(collect("r-5", &m.mandate_id, "50.00", "b-2"), &notice);
    let d = new_deduction(&mut merchant, twice).await;
    assert_declined(&d, &["PRE_NOTIFICATION_MISSING"], m.version, "used notice");
    assert_eq!(app.balance("p-1").await, "750.00");

    // The payer sees the notices of its mandate; nobody else learns the mandate exists.
    let mut payer = app.deductions_as(app.payer_token("p-1")).await;
    assert_eq!(
        list_notices(&mut payer, &m.mandate_id).await.unwrap(),
        listed
    );
    let mut stranger = app.deductions_as(app.payer_token("p-2")).await;
    let err = list_notices(&mut stranger, &m.mandate_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut other_merchant = app.deductions_as(app.merchant_token("m-2")).await;
    let err = list_notices(&mut other_merchant, &m.mandate_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    app.finish().await;
}

both_backends!(a_notice_lets_one_debit_through);
