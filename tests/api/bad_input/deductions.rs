//! Bad fields on DeductionService and WalletService (DESIGN §7): INVALID_ARGUMENT with a
//! BadRequest naming the field, and nothing written; the untouched requests go through.

use crate::both_backends;
use crate::harness::*;

use pb::DeductionStatus as D;

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

both_backends!(bad_input_is_invalid_argument);
