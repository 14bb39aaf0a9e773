//! The wallet and its ledger (DESIGN §4.1, §7, §9.4, §9.8): CreditWallet is idempotent on its
//! request id; after credits, debits and refunds every wallet holds what it should and the
//! ledger sums to zero; a credit past what the ledger holds is refused with a reason, never an
//! internal error, and no account shared by every payer bounds what the others can hold.

use tonic::Code;
use tonic_types::StatusExt;

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

/// Balance totals per account kind (CLEARING, MERCHANT, WALLET), in minor units.
async fn totals_by_kind(raw: &Raw) -> Vec<(String, i64)> {
    const SQL: &str = "SELECT kind, CAST(SUM(balance_minor) AS BIGINT) FROM ledger_accounts GROUP BY kind ORDER BY kind";
    match raw {
        Raw::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Raw::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
    }
}

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
        totals_by_kind(&raw).await,
        vec![
            ("CLEARING".to_owned(), -35_099),
            ("MERCHANT".to_owned(), 9_950 + 5_000),
            ("WALLET".to_owned(), 20_050 + 99),
        ]
    );
}

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
    app.finish().await;
}

both_backends!(
    credit_wallet_is_idempotent,
    ledger_is_conserved,
    a_credit_past_the_largest_balance_is_refused,
);
