//! Sums are checked (DESIGN §7, §9.8): a credit that would take a balance past what the ledger
//! holds is refused with a reason, never an internal error, and no account shared by every
//! payer bounds what the others can hold.

use tonic::Code;
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

/// The largest amount one request may carry (15 integer digits).
const LARGEST: &str = "999999999999999.99";

async fn a_credit_past_the_largest_balance_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut operator = app.wallet_as(app.operator_token()).await;
    let credit = |i: usize, payer: &str| pb::CreditWalletRequest {
        request_id: format!("topup-{payer}-{i}"),
        payer_id: payer.into(),
        amount: money(LARGEST),
        reason: "top-up".into(),
    };
    // i64::MAX minor units hold 92 of the largest credits, not 93.
    for i in 0..92 {
        operator.credit_wallet(credit(i, "p-1")).await.unwrap();
    }
    let full = app.balance("p-1").await;
    let refused = operator.credit_wallet(credit(92, "p-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let violation = &refused
        .get_details_precondition_failure()
        .expect("a PreconditionFailure detail")
        .violations[0];
    assert_eq!(violation.r#type, "AMOUNT_RANGE");
    assert_eq!(app.balance("p-1").await, full, "nothing was credited");
    // The request id was not used up: the same request is refused again, not replayed.
    let again = operator.credit_wallet(credit(92, "p-1")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Another payer's top-ups come through clearing of their own: not bounded by p-1's.
    for i in 0..3 {
        operator.credit_wallet(credit(i, "p-2")).await.unwrap();
    }
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!((totals.sum_minor, totals.entries_sum_minor), (0, 0));
    assert!(totals.min_wallet_minor >= 0);
    app.verify_audit().await;
}

both_backends!(a_credit_past_the_largest_balance_is_refused);
