//! DeductionService and WalletService over real gRPC: refunds (§4.2), one-off approvals and the
//! clawback rule (§5), the wallet ledger (§4.1, §9.4) and bad input on the new RPCs (§7).

use jiff::SignedDuration;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

// ---------------------------------------------------------------------------------------------
// 4. One-off approvals and the clawback rule.
// ---------------------------------------------------------------------------------------------

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

/// The clawback expected in the audit trail: declined REFUND_CLAWBACK_FORBIDDEN, put to the
/// payer, approved, collected once, and a second try declined.
fn clawback_steps() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("REFUND_CLAWBACK_FORBIDDEN"),
        ),
        ("ONE_OFF_APPROVAL_REQUESTED", "OK", None),
        ("ONE_OFF_APPROVED", "OK", None),
        ("DEDUCTION_APPROVED", "OK", None),
        ("FUNDING_ATTEMPT", "SUCCEEDED", None),
        ("DEDUCTION_SUCCEEDED", "OK", None),
        (
            "DEDUCTION_DECLINED",
            "DENIED",
            Some("ONE_OFF_APPROVAL_INVALID"),
        ),
    ]
}

/// Runs the compliant path for a declined clawback `claw` (collected again as `purpose` on
/// `bill` for `amount`) and checks it is collected exactly once.
async fn clawback_with_consent(
    app: &TestApp,
    m: &pb::Mandate,
    claw: &pb::Deduction,
    purpose: pb::Purpose,
    amount: &str,
    bill: &str,
) -> pb::Deduction {
    let approval = app
        .request_approval("m-1", "ap-claw", &claw.deduction_id)
        .await
        .unwrap();
    assert_eq!(
        (
            approval.amount.clone(),
            approval.purpose,
            approval.bill_reference.as_str()
        ),
        (money(amount), purpose as i32, bill)
    );
    let approved = app.approve("p-1", &approval.approval_id).await.unwrap();
    assert_eq!(approval_status(&approved), pb::ApprovalStatus::Approved);
    let m_id = &m.mandate_id;
    let ok = app
        .deduct_expect(
            "m-1",
            with_approval(
                "r-claw-ok",
                m_id,
                amount,
                purpose,
                bill,
                &approval.approval_id,
            ),
            D::Succeeded,
            "",
        )
        .await;
    app.deduct_expect(
        "m-1",
        with_approval(
            "r-claw-again",
            m_id,
            amount,
            purpose,
            bill,
            &approval.approval_id,
        ),
        D::Declined,
        "ONE_OFF_APPROVAL_INVALID",
    )
    .await;
    ok
}

/// Form one: purpose REFUND_RECOVERY is declined under any mandate, audited, and collectable
/// only with the payer's one-off approval, once.
async fn clawback_by_purpose(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-purpose").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let recovery = || pb::CreateDeductionRequest {
        purpose: pb::Purpose::RefundRecovery as i32,
        ..collect("r-claw", &m.mandate_id, "60.00", "b-rr")
    };
    let check = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("60.00"),
            purpose: pb::Purpose::RefundRecovery as i32,
            bill_reference: "b-rr".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.allowed);
    assert_eq!(
        check
            .violations
            .iter()
            .map(|v| v.reason_code.as_str())
            .collect::<Vec<_>>(),
        vec!["REFUND_CLAWBACK_FORBIDDEN"]
    );

    let mark = app.mandate_chain(&m.mandate_id).await.len();
    let claw = app
        .deduct_expect("m-1", recovery(), D::Declined, "REFUND_CLAWBACK_FORBIDDEN")
        .await;
    assert_eq!(app.balance("p-1").await, "500.00");
    let ok = clawback_with_consent(
        &app,
        &m,
        &claw,
        pb::Purpose::RefundRecovery,
        "60.00",
        "b-rr",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "440.00");

    let events = app.mandate_chain(&m.mandate_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 1].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(events[mark + 2].actor_role, "payer");
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// Form two: collecting a bill again after refunding it (fully or in part) is a clawback,
/// whatever the amount; with the payer's approval it is collected once.
async fn clawback_by_refunded_bill(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-claw-bill").await;
    app.credit("p-1", "500.00").await;
    let m_id = m.mandate_id.as_str();
    let d = app
        .deduct_expect(
            "m-1",
            collect("r-1", m_id, "120.00", "b-bill"),
            D::Succeeded,
            "",
        )
        .await;
    app.refund("m-1", "rf-1", &d.deduction_id, "120.00")
        .await
        .unwrap();
    assert_eq!(app.balance("p-1").await, "500.00");

    let mark = app.mandate_chain(m_id).await.len();
    let claw = app
        .deduct_expect(
            "m-1",
            collect("r-claw", m_id, "120.00", "b-bill"),
            D::Declined,
            "REFUND_CLAWBACK_FORBIDDEN",
        )
        .await;
    let ok = clawback_with_consent(&app, &m, &claw, pb::Purpose::Utility, "120.00", "b-bill").await;
    assert_eq!(app.balance("p-1").await, "380.00");
    let events = app.mandate_chain(m_id).await;
    assert_eq!(steps(&events[mark..]), clawback_steps());
    assert_eq!(
        events[mark].deduction_id.as_deref(),
        Some(claw.deduction_id.as_str())
    );
    assert_eq!(
        events[mark + 5].deduction_id.as_deref(),
        Some(ok.deduction_id.as_str())
    );

    // Another amount on the refunded bill is still a clawback; so is a partly refunded bill.
    app.deduct_expect(
        "m-1",
        collect("r-claw-2", m_id, "5.00", "b-bill"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    let part = app
        .deduct_expect(
            "m-1",
            collect("r-2", m_id, "100.00", "b-part"),
            D::Succeeded,
            "",
        )
        .await;
    app.refund("m-1", "rf-2", &part.deduction_id, "0.01")
        .await
        .unwrap();
    app.deduct_expect(
        "m-1",
        collect("r-claw-3", m_id, "0.01", "b-part"),
        D::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;
    assert_eq!(app.balance("p-1").await, "280.01");
    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Wallet.
// ---------------------------------------------------------------------------------------------

/// CreditWallet is idempotent on its request id; an unknown payer's balance is 0.00.
async fn credit_wallet_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let mut operator = app.wallet_as(app.operator_token()).await;

    let first = operator
        .credit_wallet(credit_request("cw-1", "p-9", "100.00"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    assert_eq!(first.balance, money("100.00"));

    let before = app.state(&raw).await;
    let again = operator
        .credit_wallet(credit_request("cw-1", "p-9", "100.00"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.balance, money("100.00"));
    assert_unchanged(&before, &app.state(&raw).await, "a replayed credit");

    // The same id for another amount, or another payer (with a wallet; one without comes last).
    app.credit("p-1", "1.00").await;
    for (payer, amount) in [("p-9", "100.01"), ("p-1", "100.00")] {
        let before = app.state(&raw).await;
        let err = operator
            .credit_wallet(credit_request("cw-1", payer, amount))
            .await
            .unwrap_err();
        let what = format!("credit key cw-1 reused for {amount} to {payer}");
        assert_key_reused(&err, &what);
        assert_unchanged(&before, &app.state(&raw).await, &what);
    }
    assert_eq!(app.balance("p-9").await, "100.00");

    // Balances: unknown payers hold 0.00; a payer reads its own.
    let balance = |payer: &str| pb::GetWalletBalanceRequest {
        payer_id: payer.into(),
        currency_code: "CNY".into(),
    };
    let unknown = operator
        .get_wallet_balance(balance("p-unknown"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.balance, money("0.00"));
    let mut p9 = app.wallet_as(app.payer_token("p-9")).await;
    let own = p9
        .get_wallet_balance(balance(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("100.00"));
    let own = p9
        .get_wallet_balance(balance("p-9"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance, money("100.00"));
    let mut p7 = app.wallet_as(app.payer_token("p-7")).await;
    assert_eq!(
        p7.get_wallet_balance(balance(""))
            .await
            .unwrap()
            .into_inner()
            .balance,
        money("0.00")
    );
    assert_eq!(app.balance("p-9").await, "100.00");

    // The same id for a payer that has no wallet yet is a reused key too, and creates no wallet.
    let before = app.state(&raw).await;
    let err = operator
        .credit_wallet(credit_request("cw-1", "p-8", "100.00"))
        .await
        .unwrap_err();
    let what = "credit key cw-1 reused for 100.00 to p-8 (no wallet yet)";
    assert_key_reused(&err, what);
    assert_unchanged(&before, &app.state(&raw).await, what);
    assert_eq!(app.balance("p-8").await, "0.00");
}

/// After credits, debits (paid and refused) and refunds, every wallet holds what it should, the
/// ledger sums to zero and no wallet is negative.
async fn ledger_is_conserved(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let a = app
        .mandate_for("m-1", "p-1", "c-ledger-a", utility_terms())
        .await;
    let b = app
        .mandate_for("m-2", "p-2", "c-ledger-b", utility_terms())
        .await;
    app.credit("p-1", "300.00").await;
    app.credit("p-2", "50.00").await;

    let a1 = app
        .deduct_expect(
            "m-1",
            collect("r-a1", &a.mandate_id, "120.00", "b-a1"),
            D::Succeeded,
            "",
        )
        .await;
    app.deduct_expect(
        "m-1",
        collect("r-a2", &a.mandate_id, "250.00", "b-a2"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    // p-2 has 50.00: the wallet refuses 80.00 rather than go negative.
    app.deduct_expect(
        "m-2",
        collect("r-b1", &b.mandate_id, "80.00", "b-b1"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    app.deduct_expect(
        "m-2",
        collect("r-b2", &b.mandate_id, "50.00", "b-b2"),
        D::Succeeded,
        "",
    )
    .await;
    app.deduct_expect(
        "m-2",
        collect("r-b3", &b.mandate_id, "0.01", "b-b3"),
        D::Failed,
        "CARD_NOT_CONNECTED",
    )
    .await;
    app.refund("m-1", "rf-a1", &a1.deduction_id, "20.00")
        .await
        .unwrap();
    app.refund("m-1", "rf-a1b", &a1.deduction_id, "0.50")
        .await
        .unwrap();
    app.credit("p-2", "0.99").await;

    assert_eq!(app.balance("p-1").await, "200.50");
    assert_eq!(app.balance("p-2").await, "0.99");
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_ledger_balanced(totals);
    assert_eq!(totals.min_wallet_minor, 99);
    assert_eq!(
        raw.totals_by_kind().await,
        vec![
            ("CLEARING".to_owned(), -35_099),
            ("MERCHANT".to_owned(), 9_950 + 5_000),
            ("WALLET".to_owned(), 20_050 + 99),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input.
// ---------------------------------------------------------------------------------------------

type Edit<T> = Box<dyn Fn(&mut T) + Send + Sync>;

enum BadCall {
    Create(Edit<pb::CreateDeductionRequest>),
    Notify(Edit<pb::NotifyUpcomingDebitRequest>),
    Refund(Edit<pb::RefundDeductionRequest>),
    Credit(Edit<pb::CreditWalletRequest>),
    List(Edit<pb::ListDeductionsRequest>),
}

/// Bad fields on the new RPCs: INVALID_ARGUMENT with a BadRequest naming the field, and nothing
/// written; the untouched requests go through.
async fn bad_input_is_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    let m = active_mandate(&app, "c-bad").await;
    app.credit("p-1", "500.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut operator = app.wallet_as(app.operator_token()).await;
    let paid = app
        .deduct_expect(
            "m-1",
            collect("r-paid", &m.mandate_id, "100.00", "b-paid"),
            D::Succeeded,
            "",
        )
        .await;

    let create_base = collect("r-bad", &m.mandate_id, "10.00", "b-bad");
    let notify_base = pb::NotifyUpcomingDebitRequest {
        mandate_id: m.mandate_id.clone(),
        amount: money("10.00"),
        due_at: Some(proto_time("2026-03-05T02:00:00Z".parse().unwrap())),
        bill_reference: "b-ntc".into(),
        request_id: "ntc-bad".into(),
    };
    let refund_base = refund_request("rf-bad", &paid.deduction_id, "1.00");
    let credit_base = credit_request("cw-bad", "p-1", "1.00");
    let list_base = pb::ListDeductionsRequest {
        page_size: 500,
        ..Default::default()
    };

    let cases: Vec<(&str, BadCall, &str)> = vec![
        (
            "CreateDeduction without request_id",
            BadCall::Create(Box::new(|r| r.request_id.clear())),
            "request_id",
        ),
        (
            "CreateDeduction of 0",
            BadCall::Create(Box::new(|r| r.amount = money("0"))),
            "amount.amount",
        ),
        (
            "CreateDeduction of 1.001",
            BadCall::Create(Box::new(|r| r.amount = money("1.001"))),
            "amount.amount",
        ),
        (
            "CreateDeduction without amount",
            BadCall::Create(Box::new(|r| r.amount = None)),
            "amount",
        ),
        (
            "CreateDeduction of purpose UNSPECIFIED",
            BadCall::Create(Box::new(|r| r.purpose = pb::Purpose::Unspecified as i32)),
            "purpose",
        ),
        (
            "CreateDeduction without bill",
            BadCall::Create(Box::new(|r| r.bill_reference.clear())),
            "bill_reference",
        ),
        (
            "CreateDeduction of a malformed mandate id",
            BadCall::Create(Box::new(|r| r.mandate_id = "not a mandate!".into())),
            "mandate_id",
        ),
        (
            "CreateDeduction with a 257-character description",
            BadCall::Create(Box::new(|r| r.description = "é".repeat(257))),
            "description",
        ),
        (
            "NotifyUpcomingDebit without due_at",
            BadCall::Notify(Box::new(|r| r.due_at = None)),
            "due_at",
        ),
        (
            "RefundDeduction of -1",
            BadCall::Refund(Box::new(|r| r.amount = money("-1"))),
            "amount.amount",
        ),
        (
            "CreditWallet in an unknown currency",
            BadCall::Credit(Box::new(|r| {
                r.amount = Some(pb::Money {
                    currency_code: "XXX".into(),
                    amount: "1.00".into(),
                })
            })),
            "amount.currency_code",
        ),
        (
            "ListDeductions of 501",
            BadCall::List(Box::new(|r| r.page_size = 501)),
            "page_size",
        ),
    ];
    let mut failures = vec![];
    for (name, bad, field) in cases {
        let before = app.state(&raw).await;
        let result = match &bad {
            BadCall::Create(edit) => {
                let mut r = create_base.clone();
                edit(&mut r);
                merchant.create_deduction(r).await.map(drop)
            }
            BadCall::Notify(edit) => {
                let mut r = notify_base.clone();
                edit(&mut r);
                merchant.notify_upcoming_debit(r).await.map(drop)
            }
            BadCall::Refund(edit) => {
                let mut r = refund_base.clone();
                edit(&mut r);
                merchant.refund_deduction(r).await.map(drop)
            }
            BadCall::Credit(edit) => {
                let mut r = credit_base.clone();
                edit(&mut r);
                operator.credit_wallet(r).await.map(drop)
            }
            BadCall::List(edit) => {
                let mut r = list_base.clone();
                edit(&mut r);
                merchant.list_deductions(r).await.map(drop)
            }
        };
        let after = app.state(&raw).await;
        match result {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(status) => match violated_field(&status) {
                Ok(got) if got == field => {}
                Ok(got) => failures.push(format!("{name}: names {got:?}, want {field:?}")),
                Err(why) => failures.push(format!("{name}: {why}")),
            },
        }
        if before != after {
            failures.push(format!("{name}: wrote {}", before.diff(&after)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The untouched requests are fine, and 256 characters of description are allowed.
    let d = app
        .deduct_expect(
            "m-1",
            pb::CreateDeductionRequest {
                description: "é".repeat(256),
                ..create_base
            },
            D::Succeeded,
            "",
        )
        .await;
    assert_eq!(d.description.chars().count(), 256);
    merchant.notify_upcoming_debit(notify_base).await.unwrap();
    merchant.refund_deduction(refund_base).await.unwrap();
    operator.credit_wallet(credit_base).await.unwrap();
    merchant.list_deductions(list_base).await.unwrap();
    assert_eq!(app.balance("p-1").await, "392.00");
}

both_backends!(
    one_off_needs_a_decline_and_a_yes,
    one_off_collects_exactly_once,
    one_off_expires,
    clawback_by_purpose,
    clawback_by_refunded_bill,
    credit_wallet_is_idempotent,
    ledger_is_conserved,
    bad_input_is_invalid_argument,
);
