//! One-off approvals (DESIGN §5): a declined deduction put to the payer, who approves or rejects
//! it; an approval collects exactly what was approved, once, outside the mandate's limits, and
//! is good for 24 hours from the request.

use jiff::SignedDuration;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

/// Only a DECLINED deduction can be put to the payer; a rejected or undecided approval collects
/// nothing; a decided approval cannot be decided again.
async fn one_off_needs_a_decline_and_a_yes(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-oneoff").await;
    app.credit("p-1", "500.00").await;

    // A SUCCEEDED deduction needs no approval.
    let ok = app
        .deduct_expect(
            "m-1",
            collect("r-ok", &m.mandate_id, "50.00", "b-ok"),
            D::Succeeded,
            "",
        )
        .await;
    let before = app.state(&raw).await;
    let err = app
        .request_approval("m-1", "ap-ok", &ok.deduction_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "DEDUCTION_STATUS", &ok.deduction_id);
    assert_unchanged(
        &before,
        &app.state(&raw).await,
        "an approval for a SUCCEEDED deduction",
    );

    // TELECOM is outside the mandate.
    let declined = app
        .deduct_expect(
            "m-1",
            pb::CreateDeductionRequest {
                purpose: pb::Purpose::Telecom as i32,
                ..collect("r-tel", &m.mandate_id, "80.00", "b-tel")
            },
            D::Declined,
            "PURPOSE_NOT_ALLOWED",
        )
        .await;
    let mark = app.mandate_chain(&m.mandate_id).await.len();
    let approval = app
        .request_approval("m-1", "ap-1", &declined.deduction_id)
        .await
        .unwrap();
    assert_eq!(approval_status(&approval), pb::ApprovalStatus::Pending);
    assert_eq!(
        (
            approval.mandate_id.as_str(),
            approval.declined_deduction_id.as_str(),
            approval.amount.clone(),
            approval.purpose,
            approval.bill_reference.as_str(),
        ),
        (
            m.mandate_id.as_str(),
            declined.deduction_id.as_str(),
            money("80.00"),
            pb::Purpose::Telecom as i32,
            "b-tel",
        )
    );
    let requested = approval.requested_at.unwrap();
    assert_eq!(requested, proto_time(app.clock_now()));
    assert_eq!(
        approval.expires_at.unwrap().seconds,
        requested.seconds + 24 * 3600
    );
    assert_eq!(approval.decided_at, None);

    // Not decided yet: collecting with it is declined.
    let exact = |rid: &str| {
        with_approval(
            rid,
            &m.mandate_id,
            "80.00",
            pb::Purpose::Telecom,
            "b-tel",
            &approval.approval_id,
        )
    };
    app.deduct_expect(
        "m-1",
        exact("r-pending"),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;

    // The payer rejects it: collecting with it is declined.
    let rejected = app.reject("p-1", &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&rejected), pb::ApprovalStatus::Rejected);
    assert_eq!(rejected.decided_at, Some(proto_time(app.clock_now())));
    let d = app
        .deduct_expect(
            "m-1",
            exact("r-rejected"),
            D::Declined,
            "ONE_OFF_APPROVAL_INVALID",
        )
        .await;
    assert_eq!(d.one_off_approval_id, approval.approval_id);
    assert_eq!(app.balance("p-1").await, "450.00");

    // A decided approval stays decided: rejecting again answers with it as it is (a retry),
    // approving it is refused.
    let again = app.reject("p-1", &approval.approval_id).await.unwrap();
    assert_eq!(again, rejected);
    let err = app.approve("p-1", &approval.approval_id).await.unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &approval.approval_id);
    assert!(err.message().contains("REJECTED"), "{err:?}");

    let events = app.mandate_chain(&m.mandate_id).await;
    assert_eq!(
        steps(&events[mark..]),
        vec![
            ("ONE_OFF_APPROVAL_REQUESTED", "OK", None),
            (
                "DEDUCTION_DECLINED",
                "DENIED",
                Some("ONE_OFF_APPROVAL_INVALID")
            ),
            ("ONE_OFF_REJECTED", "OK", None),
            (
                "DEDUCTION_DECLINED",
                "DENIED",
                Some("ONE_OFF_APPROVAL_INVALID")
            ),
        ]
    );
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(declined.deduction_id.as_str())
    );
    assert_eq!(
        (
            events[mark + 2].actor_role.as_str(),
            events[mark + 2].actor_subject.as_str()
        ),
        ("payer", "p-1")
    );
    app.verify_audit().await;
}

/// An approved request collects exactly what was approved, once, and outside the mandate's
/// limits; it cannot be approved twice.
async fn one_off_collects_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-oneoff-exact").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let declined = app
        .deduct_expect(
            "m-1",
            pb::CreateDeductionRequest {
                purpose: pb::Purpose::Telecom as i32,
                ..collect("r-tel", &m.mandate_id, "80.00", "b-tel")
            },
            D::Declined,
            "PURPOSE_NOT_ALLOWED",
        )
        .await;
    let approval = app
        .request_approval("m-1", "ap-1", &declined.deduction_id)
        .await
        .unwrap();
    let id = approval.approval_id.clone();
    let approved = app.approve("p-1", &id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    assert_eq!(approved.decided_at, Some(proto_time(app.clock_now())));

    // Approving twice answers with the approval as it is (a retry); rejecting after
    // approving is refused.
    assert_eq!(app.approve("p-1", &id).await.unwrap(), approved);
    assert_precondition(
        &app.reject("p-1", &id).await.unwrap_err(),
        "APPROVAL_STATUS",
        &id,
    );

    // Anything but exactly what was approved.
    let m_id = m.mandate_id.as_str();
    for (rid, request) in [
        (
            "r-amount",
            with_approval(
                "r-amount",
                m_id,
                "79.99",
                pb::Purpose::Telecom,
                "b-tel",
                &id,
            ),
        ),
        (
            "r-more",
            with_approval("r-more", m_id, "80.01", pb::Purpose::Telecom, "b-tel", &id),
        ),
        (
            "r-purpose",
            with_approval(
                "r-purpose",
                m_id,
                "80.00",
                pb::Purpose::Utility,
                "b-tel",
                &id,
            ),
        ),
        (
            "r-bill",
            with_approval(
                "r-bill",
                m_id,
                "80.00",
                pb::Purpose::Telecom,
                "b-other",
                &id,
            ),
        ),
    ] {
        let d = app.deduct("m-1", request).await;
        assert_eq!(
            (deduction_status(&d), d.reason_code.as_str()),
            (D::Declined, "ONE_OFF_APPROVAL_INVALID"),
            "{rid}: {d:?}"
        );
    }
    assert_eq!(app.balance("p-1").await, "500.00");

    // Exactly it: collected once.
    let exact = with_approval("r-exact", m_id, "80.00", pb::Purpose::Telecom, "b-tel", &id);
    let ok = app
        .deduct_expect("m-1", exact.clone(), D::Succeeded, "")
        .await;
    assert_eq!(ok.one_off_approval_id, id);
    assert_eq!(app.balance("p-1").await, "420.00");
    let stored = app.db().deductions.approval(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.used_by.as_deref()),
        ("USED", Some(ok.deduction_id.as_str()))
    );
    // A replay is the same deduction; a new request is declined.
    let replay = merchant.create_deduction(exact).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.deduction.unwrap(), ok);
    app.deduct_expect(
        "m-1",
        with_approval("r-again", m_id, "80.00", pb::Purpose::Telecom, "b-tel", &id),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "420.00");

    // The one-off debit did not count against the mandate: the month's two debits are free.
    for i in 0..2 {
        app.deduct_expect(
            "m-1",
            collect(&format!("r-u{i}"), m_id, "100.00", &format!("b-u{i}")),
            D::Succeeded,
            "",
        )
        .await;
    }
    assert_eq!(app.balance("p-1").await, "220.00");
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// An approval is good for 24 hours from the request: approved and expired collects nothing,
/// and an expired request cannot be approved.
async fn one_off_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-oneoff-expiry").await;
    app.credit("p-1", "500.00").await;
    let m_id = m.mandate_id.as_str();

    let expired = app.pending_approval(m_id, "late").await;
    app.approve("p-1", &expired.approval_id).await.unwrap();
    let undecided = app.pending_approval(m_id, "undecided").await;

    app.clock.advance(SignedDuration::from_hours(25));
    app.deduct_expect(
        "m-1",
        with_approval(
            "r-late",
            m_id,
            "600.00",
            pb::Purpose::Utility,
            "b-big-late",
            &expired.approval_id,
        ),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    let err = app
        .approve("p-1", &undecided.approval_id)
        .await
        .unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &undecided.approval_id);
    let err = app.reject("p-1", &undecided.approval_id).await.unwrap_err();
    assert_precondition(&err, "APPROVAL_STATUS", &undecided.approval_id);
    let stored = app
        .db()
        .deductions
        .approval(&undecided.approval_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status.as_str(), "PENDING");

    // Just inside the 24 hours it still collects (600.00 is over the wallet's cap and the card
    // is not connected, so take a bill the wallet can pay).
    let declined = app
        .deduct_expect(
            "m-1",
            pb::CreateDeductionRequest {
                purpose: pb::Purpose::Telecom as i32,
                ..collect("r-tel", m_id, "150.00", "b-tel")
            },
            D::Declined,
            "PURPOSE_NOT_ALLOWED",
        )
        .await;
    let fresh = app
        .request_approval("m-1", "ap-fresh", &declined.deduction_id)
        .await
        .unwrap();
    app.approve("p-1", &fresh.approval_id).await.unwrap();
    app.clock
        .advance(SignedDuration::from_hours(24) - SignedDuration::from_secs(1));
    app.deduct_expect(
        "m-1",
        with_approval(
            "r-fresh",
            m_id,
            "150.00",
            pb::Purpose::Telecom,
            "b-tel",
            &fresh.approval_id,
        ),
        D::Succeeded,
        "",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "350.00");
}

both_backends!(
    one_off_needs_a_decline_and_a_yes,
    one_off_collects_exactly_once,
    one_off_expires,
);
