//! DeductionService and WalletService over real gRPC: refunds (§4.2), one-off approvals and the
//! clawback rule (§5), the wallet ledger (§4.1, §9.4) and bad input on the new RPCs (§7).

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

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
    credit_wallet_is_idempotent,
    ledger_is_conserved,
    bad_input_is_invalid_argument,
);
