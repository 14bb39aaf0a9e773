//! The clawback rule in its three forms (DESIGN §5, §9.5): a refunded bill collected again
//! whatever the spelling of its reference, the refund-recovery purpose, and the suspected
//! recovery of a refund under a new bill reference — never silent, and declined under the
//! merchant's DECLINE policy.

use jiff::SignedDuration;
use serde_json::Value;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

const SUSPECTED: i32 = pb::DeductionFlag::SuspectedRefundRecovery as i32;

fn status_and_reason(d: &pb::Deduction) -> (D, &str) {
    (deduction_status(d), d.reason_code.as_str())
}

/// A mandate of m-1 for p-1 with room for many debits, and 2000.00 in p-1's wallet.
async fn funded(app: &TestApp, contract: &str) -> pb::Mandate {
    let m = app.mandate_for("m-1", "p-1", contract, roomy_terms()).await;
    app.credit("p-1", "2000.00").await;
    m
}

/// Actions and outcomes of the events about one deduction, on its mandate's chain.
async fn events_of(app: &TestApp, mandate_id: &str, deduction_id: &str) -> Vec<(String, String)> {
    app.deduction_events(mandate_id, deduction_id)
        .await
        .into_iter()
        .map(|(action, outcome, _)| (action, outcome))
        .collect()
}

async fn a_refunded_bill_is_the_same_bill_in_any_spelling(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    let first = app
        .deduct("m-1", collect("r-1", id, "100.00", "ELEC-2026-10"))
        .await;
    assert_eq!(status_and_reason(&first), (D::Succeeded, ""));
    app.refund("m-1", "rf-1", &first.deduction_id, "100.00")
        .await
        .unwrap();

    for (i, spelling) in [
        "elec-2026-10",
        "Elec-2026-10",
        "ELEC_2026_10",
        "elec.2026.10.",
        "ELEC:2026:10",
        "-elec2026-10-",
        "ELEC-2026-10",
    ]
    .into_iter()
    .enumerate()
    {
        let again = app
            .deduct(
                "m-1",
                collect(&format!("r-again-{i}"), id, "100.00", spelling),
            )
            .await;
        assert_eq!(
            status_and_reason(&again),
            (D::Declined, "REFUND_CLAWBACK_FORBIDDEN"),
            "{spelling}: {again:?}"
        );
        assert_eq!(again.bill_reference, spelling, "kept as sent");
        let check = app.check("m-1", id, "100.00", spelling).await;
        assert_eq!(
            violation_codes(&check.violations)[..1],
            ["REFUND_CLAWBACK_FORBIDDEN"],
            "{spelling}"
        );
    }
    // A different bill is not this one.
    let other = app
        .deduct("m-1", collect("r-other", id, "100.00", "ELEC-2026-100"))
        .await;
    assert_eq!(status_and_reason(&other), (D::Succeeded, ""));
    app.verify_audit().await;
}

async fn a_collected_bill_is_a_duplicate_in_any_spelling(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    let first = app
        .deduct("m-1", collect("r-1", id, "50.00", "bill-2026-11"))
        .await;
    assert_eq!(status_and_reason(&first), (D::Succeeded, ""));
    for (i, spelling) in [
        "bill_2026_11",
        "BILL-2026-11",
        "Bill.2026.11.",
        "bill2026:11",
    ]
    .into_iter()
    .enumerate()
    {
        let again = app
            .deduct("m-1", collect(&format!("r-dup-{i}"), id, "50.00", spelling))
            .await;
        assert_eq!(
            status_and_reason(&again),
            (D::Declined, "DUPLICATE_BILL_REFERENCE"),
            "{spelling}"
        );
    }
    // A reference of separators alone names no bill.
    let err = app
        .deductions_as(app.merchant_token("m-1"))
        .await
        .create_deduction(collect("r-sep", id, "50.00", "-._:"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("bill_reference"), "{err:?}");
}

async fn a_refunded_amount_under_a_new_bill_is_flagged(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    let paid = app
        .deduct("m-1", collect("r-1", id, "120.00", "BILL-1"))
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "120.00")
        .await
        .unwrap();

    // CheckDeduction reports it; a different amount is not suspected.
    let check = app.check("m-1", id, "120.00", "BILL-NEW").await;
    assert!(check.allowed, "{check:?}");
    assert_eq!(check.flags, [SUSPECTED]);
    assert!(
        app.check("m-1", id, "119.99", "BILL-NEW")
            .await
            .flags
            .is_empty()
    );

    // Collected under the default FLAG policy, flagged, and its own audit event.
    let suspect = app
        .deduct("m-1", collect("r-2", id, "120.00", "BILL-NEW"))
        .await;
    assert_eq!(status_and_reason(&suspect), (D::Succeeded, ""));
    assert_eq!(suspect.flags, [SUSPECTED]);
    let events = events_of(&app, id, &suspect.deduction_id).await;
    assert!(
        events.contains(&("SUSPECTED_REFUND_RECOVERY".into(), "FLAGGED".into())),
        "{events:?}"
    );
    let event = app
        .chain_events(&format!("mandate:{id}"))
        .await
        .into_iter()
        .find(|e| e.action == "SUSPECTED_REFUND_RECOVERY")
        .unwrap();
    assert_eq!(
        event.reason_code.as_deref(),
        Some("SUSPECTED_REFUND_RECOVERY")
    );
    let details: Value = serde_json::from_str(&event.details).unwrap();
    assert_eq!(details["policy"], "FLAG");
    assert_eq!(details["bill_reference"], "BILL-NEW");

    // Once the bill was collected, it is no longer new: the duplicate rule takes over.
    let dup = app
        .deduct("m-1", collect("r-3", id, "120.00", "bill_new"))
        .await;
    assert_eq!(
        status_and_reason(&dup),
        (D::Declined, "DUPLICATE_BILL_REFERENCE")
    );
    // Other amounts are not suspected.
    let plain = app
        .deduct("m-1", collect("r-4", id, "80.00", "BILL-OTHER"))
        .await;
    assert!(plain.flags.is_empty(), "{plain:?}");

    // Past the 30-day look-back window, the same pattern is not suspected.
    app.clock.advance(SignedDuration::from_hours(30 * 24 + 1));
    let later = app.check("m-1", id, "120.00", "BILL-LATER").await;
    assert!(later.flags.is_empty(), "{later:?}");
    app.verify_audit().await;
}

async fn a_refund_in_parts_is_matched_by_each_part_and_the_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    let paid = app
        .deduct("m-1", collect("r-1", id, "100.00", "BILL-1"))
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "30.00")
        .await
        .unwrap();
    app.refund("m-1", "rf-2", &paid.deduction_id, "70.00")
        .await
        .unwrap();
    for amount in ["30.00", "70.00", "100.00"] {
        let check = app.check("m-1", id, amount, "BILL-NEW").await;
        assert_eq!(check.flags, [SUSPECTED], "{amount}");
    }
    for amount in ["40.00", "99.99"] {
        let check = app.check("m-1", id, amount, "BILL-NEW").await;
        assert!(check.flags.is_empty(), "{amount}");
    }
}

/// A bill the merchant announced before the refund was pending already: not suspected. One
/// announced after the refund is.
async fn a_bill_announced_before_the_refund_is_not_suspected(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let notify = |request_id: &str, bill: &str| pb::NotifyUpcomingDebitRequest {
        mandate_id: id.into(),
        amount: money("60.00"),
        due_at: Some(prost_types::Timestamp {
            seconds: app.clock_now().as_second() + 86_400,
            nanos: 0,
        }),
        bill_reference: bill.into(),
        request_id: request_id.into(),
    };
    merchant
        .notify_upcoming_debit(notify("n-1", "Bill-Before"))
        .await
        .unwrap();
    app.clock.advance(SignedDuration::from_secs(60));
    let paid = app
        .deduct("m-1", collect("r-1", id, "60.00", "BILL-PAID"))
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "60.00")
        .await
        .unwrap();
    app.clock.advance(SignedDuration::from_secs(60));
    merchant
        .notify_upcoming_debit(notify("n-2", "BILL-AFTER"))
        .await
        .unwrap();
    // Announced before the refund (spelled differently): not suspected.
    let before = app.check("m-1", id, "60.00", "bill_before").await;
    assert!(before.flags.is_empty(), "{before:?}");
    let after = app.check("m-1", id, "60.00", "BILL-AFTER").await;
    assert_eq!(after.flags, [SUSPECTED]);
}

/// Under the merchant's DECLINE policy a suspected recovery is declined with its own reason;
/// the payer's one-off approval is the compliant path, and collects it unflagged.
async fn the_decline_policy_declines_and_an_approval_collects(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = funded(&app, "c-1").await;
    let id = m.mandate_id.as_str();
    app.set_recovery_policy("m-1", pb::RecoveryPolicy::Decline)
        .await;
    let paid = app
        .deduct("m-1", collect("r-1", id, "150.00", "BILL-1"))
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "150.00")
        .await
        .unwrap();
    let check = app.check("m-1", id, "150.00", "BILL-2").await;
    assert!(!check.allowed);
    assert_eq!(
        violation_codes(&check.violations),
        ["SUSPECTED_REFUND_RECOVERY"]
    );
    assert_eq!(check.flags, [SUSPECTED]);
    let declined = app
        .deduct("m-1", collect("r-2", id, "150.00", "BILL-2"))
        .await;
    assert_eq!(
        status_and_reason(&declined),
        (D::Declined, "SUSPECTED_REFUND_RECOVERY")
    );
    assert_eq!(declined.flags, [SUSPECTED]);
    let events = events_of(&app, id, &declined.deduction_id).await;
    assert!(
        events.contains(&("SUSPECTED_REFUND_RECOVERY".into(), "DENIED".into())),
        "{events:?}"
    );
    assert!(events.contains(&("DEDUCTION_DECLINED".into(), "DENIED".into())));

    // The payer's fresh consent to that one debit.
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let approval = merchant
        .request_one_off_approval(pb::RequestOneOffApprovalRequest {
            request_id: "ap-1".into(),
            deduction_id: declined.deduction_id.clone(),
            reason: "the refund was a mistake".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    app.deductions_as(app.payer_token("p-1"))
        .await
        .approve_one_off(pb::ApproveOneOffRequest {
            approval_id: approval.approval_id.clone(),
        })
        .await
        .unwrap();
    let approved = app
        .deduct(
            "m-1",
            pb::CreateDeductionRequest {
                one_off_approval_id: approval.approval_id,
                ..collect("r-3", id, "150.00", "bill_2")
            },
        )
        .await;
    assert_eq!(status_and_reason(&approved), (D::Succeeded, ""));
    assert!(approved.flags.is_empty());

    // Another merchant's policy is its own: m-2 still collects (flagged).
    let other = app.mandate_for("m-2", "p-2", "c-2", roomy_terms()).await;
    app.credit("p-2", "500.00").await;
    let paid = app
        .deduct("m-2", collect("r-1", &other.mandate_id, "150.00", "X-1"))
        .await;
    app.refund("m-2", "rf-1", &paid.deduction_id, "150.00")
        .await
        .unwrap();
    let flagged = app
        .deduct("m-2", collect("r-2", &other.mandate_id, "150.00", "X-2"))
        .await;
    assert_eq!(status_and_reason(&flagged), (D::Succeeded, ""));
    assert_eq!(flagged.flags, [SUSPECTED]);
    app.verify_audit().await;
}

/// Asking for clawback authority is refused as malformed, in a mandate and in an amendment.
async fn refund_recovery_can_never_be_granted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    let mut terms = roomy_terms();
    terms.purposes.push(pb::Purpose::RefundRecovery as i32);
    let err = merchant
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-claw".into(),
            payer_id: "p-1".into(),
            terms: Some(terms.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let m = funded(&app, "c-1").await;
    let err = merchant
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: m.mandate_id.clone(),
            terms: Some(terms),
            reason: "recover refunds".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let recovery = app
        .deduct(
            "m-1",
            pb::CreateDeductionRequest {
                purpose: pb::Purpose::RefundRecovery as i32,
                ..collect("r-1", &m.mandate_id, "10.00", "B-1")
            },
        )
        .await;
    assert_eq!(
        status_and_reason(&recovery),
        (D::Declined, "REFUND_CLAWBACK_FORBIDDEN")
    );
}

both_backends!(
    a_refunded_bill_is_the_same_bill_in_any_spelling,
    a_collected_bill_is_a_duplicate_in_any_spelling,
    a_refunded_amount_under_a_new_bill_is_flagged,
    a_refund_in_parts_is_matched_by_each_part_and_the_whole,
    a_bill_announced_before_the_refund_is_not_suspected,
    the_decline_policy_declines_and_an_approval_collects,
    refund_recovery_can_never_be_granted
);
