//! Identical writes racing (DESIGN §9.2, §9.8): the same request sent many times at once, to
//! one replica or to two, moves money once, and every caller gets the original answer — never
//! INTERNAL, whichever writer wins the race for the request id.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Barrier;

use tonic::Status;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

/// How many copies of one request are sent at once.
const COPIES: usize = 50;

/// Runs `COPIES` calls at once, each on its own connection to one of `apps` in turn, and
/// returns every answer. Each call connects, then waits at `start` until all have connected,
/// so the requests really are in flight together.
async fn at_once<T, F, Fut>(apps: &[&TestApp], call: F) -> Vec<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(Arc<Barrier>, &TestApp) -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let start = Arc::new(Barrier::new(COPIES));
    let mut calls = Vec::with_capacity(COPIES);
    for i in 0..COPIES {
        calls.push(call(start.clone(), apps[i % apps.len()]));
    }
    let tasks: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    let mut answers = Vec::with_capacity(COPIES);
    for task in tasks {
        answers.push(task.await.expect("call task"));
    }
    answers
}

/// Every answer succeeded; panics naming the first failure otherwise.
fn all_ok<T: std::fmt::Debug>(what: &str, answers: Vec<Result<T, Status>>) -> Vec<T> {
    answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|status| panic!("{what}: {status:?}")))
        .collect()
}

/// A second server on the same database.
async fn replica(app: &TestApp) -> TestApp {
    spawn_on(app.backend, app.db.shared(), default_keys()).await
}

async fn identical_refunds_refund_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = replica(&app).await;
    let m = app.mandate_for("m-1", "p-1", "c-1", roomy_terms()).await;
    app.credit("p-1", "500.00").await;
    let paid = app
        .deduct("m-1", collect("r-1", &m.mandate_id, "100.00", "B-1"))
        .await;
    let before = app.balance("p-1").await;
    let deduction_id = paid.deduction_id.clone();
    let answers = at_once(&[&app, &other], |start, app| {
        let token = app.merchant_token("m-1");
        let app_addr = app.addr;
        let deduction_id = deduction_id.clone();
        async move {
            let mut client = deductions_at(app_addr, token).await;
            start.wait().await;
            client
                .refund_deduction(pb::RefundDeductionRequest {
                    request_id: "rf-1".into(),
                    deduction_id,
                    amount: money("40.00"),
                    reason: "meter misread".into(),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    let answers = all_ok("RefundDeduction", answers);
    let first = answers.iter().find(|a| !a.replayed).expect("one original");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    for answer in &answers {
        assert_eq!(answer.refund, first.refund);
        assert_eq!(
            answer.deduction.as_ref().unwrap().refunded_amount,
            money("40.00")
        );
    }
    assert_eq!(before, "400.00");
    assert_eq!(app.balance("p-1").await, "440.00", "refunded once");
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!((totals.sum_minor, totals.entries_sum_minor), (0, 0));
    app.verify_audit().await;
}

async fn identical_credits_credit_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = replica(&app).await;
    let answers = at_once(&[&app, &other], |start, app| {
        let token = app.operator_token();
        let addr = app.addr;
        async move {
            let mut client = wallet_at(addr, token).await;
            start.wait().await;
            client
                .credit_wallet(pb::CreditWalletRequest {
                    request_id: "topup-1".into(),
                    payer_id: "p-1".into(),
                    amount: money("25.00"),
                    reason: "top-up".into(),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    let answers = all_ok("CreditWallet", answers);
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    // Every caller gets the original answer: the balance right after that one credit.
    assert!(
        answers.iter().all(|a| a.balance == money("25.00")),
        "{answers:?}"
    );
    assert_eq!(app.balance("p-1").await, "25.00");
    // A later credit does not change what a replay of the first answers.
    app.credit("p-1", "5.00").await;
    let replay = app
        .wallet_as(app.operator_token())
        .await
        .credit_wallet(pb::CreditWalletRequest {
            request_id: "topup-1".into(),
            payer_id: "p-1".into(),
            amount: money("25.00"),
            reason: "top-up".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.balance, money("25.00"));
    app.verify_audit().await;
}

async fn identical_notices_approvals_and_decisions_answer_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = replica(&app).await;
    let m = app.mandate_for("m-1", "p-1", "c-1", roomy_terms()).await;
    let mandate_id = m.mandate_id.clone();
    let notices = at_once(&[&app, &other], |start, app| {
        let addr = app.addr;
        let token = app.merchant_token("m-1");
        let mandate_id = mandate_id.clone();
        async move {
            let mut client = deductions_at(addr, token).await;
            start.wait().await;
            client
                .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
                    mandate_id,
                    amount: money("60.00"),
                    due_at: Some(prost_types::Timestamp {
                        seconds: 1_800_000_000,
                        nanos: 0,
                    }),
                    bill_reference: "B-9".into(),
                    request_id: "n-1".into(),
                })
                .await
                .map(|r| r.into_inner().notice.unwrap())
        }
    })
    .await;
    let notices = all_ok("NotifyUpcomingDebit", notices);
    assert!(notices.iter().all(|n| *n == notices[0]));

    let declined = app
        .deduct("m-1", collect("r-big", &m.mandate_id, "600.00", "B-BIG"))
        .await;
    let declined_id = declined.deduction_id.clone();
    let approvals = at_once(&[&app, &other], |start, app| {
        let addr = app.addr;
        let token = app.merchant_token("m-1");
        let declined_id = declined_id.clone();
        async move {
            let mut client = deductions_at(addr, token).await;
            start.wait().await;
            client
                .request_one_off_approval(pb::RequestOneOffApprovalRequest {
                    request_id: "ap-1".into(),
                    deduction_id: declined_id,
                    reason: "one large bill".into(),
                })
                .await
                .map(|r| r.into_inner().approval.unwrap())
        }
    })
    .await;
    let approvals = all_ok("RequestOneOffApproval", approvals);
    assert!(approvals.iter().all(|a| *a == approvals[0]));

    let approval_id = approvals[0].approval_id.clone();
    let decisions = at_once(&[&app, &other], |start, app| {
        let addr = app.addr;
        let token = app.payer_token("p-1");
        let approval_id = approval_id.clone();
        async move {
            let mut client = deductions_at(addr, token).await;
            start.wait().await;
            client
                .approve_one_off(pb::ApproveOneOffRequest { approval_id })
                .await
                .map(|r| r.into_inner().approval.unwrap())
        }
    })
    .await;
    let decisions = all_ok("ApproveOneOff", decisions);
    assert!(
        decisions
            .iter()
            .all(|a| a.status == pb::ApprovalStatus::Approved as i32 && *a == decisions[0]),
        "{decisions:?}"
    );
    let approvals_recorded = app
        .chain_events(&format!("mandate:{}", m.mandate_id))
        .await
        .into_iter()
        .filter(|e| e.action == "ONE_OFF_APPROVED")
        .count();
    assert_eq!(approvals_recorded, 1);
    app.verify_audit().await;
}

async fn identical_mandate_writes_answer_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = replica(&app).await;
    let created = at_once(&[&app, &other], |start, app| {
        let addr = app.addr;
        let token = app.merchant_token("m-1");
        async move {
            let mut client = mandates_at(addr, token).await;
            start.wait().await;
            client
                .create_mandate(create_request("c-race", "p-1"))
                .await
                .map(|r| r.into_inner().mandate.unwrap())
        }
    })
    .await;
    let created = all_ok("CreateMandate", created);
    assert!(
        created
            .iter()
            .all(|m| m.mandate_id == created[0].mandate_id)
    );
    let active = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created[0]))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mandate_id = active.mandate_id.clone();
    let paused = at_once(&[&app, &other], |start, app| {
        let addr = app.addr;
        let token = app.payer_token("p-1");
        let mandate_id = mandate_id.clone();
        async move {
            let mut client = mandates_at(addr, token).await;
            start.wait().await;
            client
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id,
                    reason: "holiday".into(),
                    request_id: "pause-1".into(),
                })
                .await
                .map(|r| r.into_inner().mandate.unwrap())
        }
    })
    .await;
    let paused = all_ok("PauseMandate", paused);
    assert!(paused.iter().all(|m| *m == paused[0]));
    assert_eq!(paused[0].version, active.version + 1, "paused once");
    app.verify_audit().await;
}

both_backends!(
    identical_refunds_refund_once,
    identical_credits_credit_once,
    identical_notices_approvals_and_decisions_answer_alike,
    identical_mandate_writes_answer_alike
);
