//! Every decline reason of DESIGN §4, table-driven: each case's bad debit is declined with its
//! violations, replays as the same decision, is found by a dry run, charges nothing and uses no
//! limit; then the case is put right and the limits prove whole.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use crate::both_backends;
use crate::harness::*;

/// Every decline reason of DESIGN §4 (one-off approvals aside), in check order.
const REASONS: [&str; 14] = [
    "MANDATE_NOT_ACTIVE",
    "MANDATE_EXPIRED",
    "MANDATE_NOT_YET_VALID",
    "PURPOSE_NOT_ALLOWED",
    "REFUND_CLAWBACK_FORBIDDEN",
    "CURRENCY_MISMATCH",
    "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
    "AMOUNT_NOT_FIXED_AMOUNT",
    "OUTSIDE_COLLECTION_WINDOW",
    "PRE_NOTIFICATION_MISSING",
    "DUPLICATE_BILL_REFERENCE",
    "PERIOD_AMOUNT_LIMIT_EXCEEDED",
    "PERIOD_COUNT_LIMIT_EXCEEDED",
    "TOTAL_LIMIT_EXCEEDED",
];

const HOUR: SignedDuration = SignedDuration::from_hours(1);

/// "12.34" → 1234 (every amount in these tests has two decimals).
fn minor(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').expect("two decimals");
    assert_eq!(cents.len(), 2, "{amount}");
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Paused,
    PendingConsent,
    Expired,
    NotYetValid,
    PurposeNotAllowed,
    RefundRecoveryPurpose,
    RefundedBill,
    CurrencyMismatch,
    AbovePerDebitLimit,
    NotFixedAmount,
    NoNotice,
    NoticeTooRecent,
    NoticeTooSmall,
    NoticeUsed,
    DuplicateBill,
    PeriodAmount,
    PeriodCount,
    TotalAmount,
    TotalCount,
    // Moves the clock a day: last.
    OutsideWindow,
}

/// Each case and the violations its bad debit must be declined with, in order.
const TABLE: &[(Case, &[&str])] = &[
    (Case::Paused, &["MANDATE_NOT_ACTIVE"]),
    (Case::PendingConsent, &["MANDATE_NOT_ACTIVE"]),
    (Case::Expired, &["MANDATE_EXPIRED"]),
    (Case::NotYetValid, &["MANDATE_NOT_YET_VALID"]),
    (Case::PurposeNotAllowed, &["PURPOSE_NOT_ALLOWED"]),
    (Case::RefundRecoveryPurpose, &["REFUND_CLAWBACK_FORBIDDEN"]),
    (Case::RefundedBill, &["REFUND_CLAWBACK_FORBIDDEN"]),
    (Case::CurrencyMismatch, &["CURRENCY_MISMATCH"]),
    (Case::AbovePerDebitLimit, &["AMOUNT_ABOVE_PER_DEBIT_LIMIT"]),
    (Case::NotFixedAmount, &["AMOUNT_NOT_FIXED_AMOUNT"]),
    (Case::NoNotice, &["PRE_NOTIFICATION_MISSING"]),
    (Case::NoticeTooRecent, &["PRE_NOTIFICATION_MISSING"]),
    (Case::NoticeTooSmall, &["PRE_NOTIFICATION_MISSING"]),
    (Case::NoticeUsed, &["PRE_NOTIFICATION_MISSING"]),
    (Case::DuplicateBill, &["DUPLICATE_BILL_REFERENCE"]),
    (Case::PeriodAmount, &["PERIOD_AMOUNT_LIMIT_EXCEEDED"]),
    (Case::PeriodCount, &["PERIOD_COUNT_LIMIT_EXCEEDED"]),
    (Case::TotalAmount, &["TOTAL_LIMIT_EXCEEDED"]),
    (Case::TotalCount, &["TOTAL_LIMIT_EXCEEDED"]),
    (Case::OutsideWindow, &["OUTSIDE_COLLECTION_WINDOW"]),
];

/// Lead time of the notice cases.
const LEAD_S: i64 = 3600;

/// The case's terms: the utility terms (UTILITY, at most 500.00 a debit, 1000.00 and 2 debits a
/// month) with the one change the case needs.
fn case_terms(case: Case, now: Timestamp) -> pb::MandateTerms {
    let mut terms = utility_terms();
    match case {
        Case::Expired => terms.valid_until = pb_time(now.checked_add(HOUR).unwrap()),
        Case::NotYetValid => terms.valid_from = pb_time(now.checked_add(HOUR).unwrap()),
        Case::NotFixedAmount => {
            terms.amount_type = pb::AmountType::Fixed as i32;
            terms.per_debit_limit = money("300.00");
        }
        Case::NoNotice | Case::NoticeTooRecent | Case::NoticeTooSmall | Case::NoticeUsed => {
            terms.pre_notification = Some(pb::PreNotification {
                lead_time_s: LEAD_S,
            });
        }
        Case::PeriodAmount => terms.period_debit_limit = Some(3),
        Case::TotalAmount => terms.total_amount_limit = money("600.00"),
        Case::TotalCount => terms.total_debit_limit = Some(3),
        Case::OutsideWindow => {
            // Today is two days before the window's day, one outside its tolerance.
            terms.collection_window = Some(pb::CollectionWindow {
                day_of_period: shanghai_day(now) + 2,
                tolerance_days: 1,
            });
        }
        _ => {}
    }
    terms
}

/// One case's mandate, payer and merchant client; tracks what the payer paid.
struct Ctx<'a> {
    app: &'a TestApp,
    merchant: DeductionClient,
    tag: String,
    payer: String,
    mandate_id: String,
    seq: usize,
    paid_minor: i64,
}

impl Ctx<'_> {
    fn next_id(&mut self, kind: &str) -> String {
        self.seq += 1;
        format!("{}-{kind}{}", self.tag, self.seq)
    }

    fn req(&mut self, amount: &str, bill: &str) -> pb::CreateDeductionRequest {
        let rid = self.next_id("r");
        collect(
            &rid,
            &self.mandate_id,
            amount,
            &format!("{}-{bill}", self.tag),
        )
    }

    async fn succeed(&mut self, req: pb::CreateDeductionRequest) -> pb::Deduction {
        let amount = req.amount.as_ref().unwrap().amount.clone();
        let d = succeeded_deduction(&mut self.merchant, req).await;
        self.paid_minor += minor(&amount);
        d
    }

    /// `count` more debits of `amount` on fresh bills, each of which must succeed.
    async fn fill(&mut self, count: usize, amount: &str) {
        for i in 0..count {
            let req = self.req(amount, &format!("fill-{i}"));
            self.succeed(req).await;
        }
    }

    async fn notify(&mut self, amount: &str, bill: &str) -> pb::Notice {
        let rid = self.next_id("n");
        let due = self.app.clock_now().checked_add(DAY).unwrap();
        let bill = format!("{}-{bill}", self.tag);
        notify(
            &mut self.merchant,
            &rid,
            &self.mandate_id,
            amount,
            &bill,
            due,
        )
        .await
    }
}

/// Brings the case's mandate to where the bad debit is tried; returns the bad debit(s).
async fn prepare(ctx: &mut Ctx<'_>, case: Case) -> Vec<pb::CreateDeductionRequest> {
    let app = ctx.app;
    match case {
        Case::Paused => {
            app.payer(&ctx.payer)
                .await
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id: ctx.mandate_id.clone(),
                    reason: "holiday".into(),
                    request_id: String::new(),
                })
                .await
                .unwrap();
            vec![ctx.req("100.00", "bad")]
        }
        Case::PendingConsent | Case::NotYetValid => vec![ctx.req("100.00", "bad")],
        Case::AbovePerDebitLimit => vec![ctx.req("500.01", "bad")],
        Case::Expired => {
            // The last second of validity still collects; valid_until itself does not.
            app.clock.advance(HOUR - SignedDuration::from_secs(1));
            let early = ctx.req("100.00", "early");
            ctx.succeed(early).await;
            app.clock.advance(SignedDuration::from_secs(1));
            vec![ctx.req("100.00", "bad")]
        }
        Case::PurposeNotAllowed => {
            vec![with_purpose(ctx.req("100.00", "bad"), pb::Purpose::Telecom)]
        }
        Case::RefundRecoveryPurpose => vec![with_purpose(
            ctx.req("100.00", "bad"),
            pb::Purpose::RefundRecovery,
        )],
        Case::RefundedBill => {
            let first = ctx.req("100.00", "bill");
            let d = ctx.succeed(first).await;
            let rid = ctx.next_id("rf");
            let refunded = ctx
                .merchant
                .refund_deduction(pb::RefundDeductionRequest {
                    request_id: rid,
                    deduction_id: d.deduction_id,
                    amount: money("100.00"),
                    reason: "paid twice".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                deduction_status(refunded.deduction.as_ref().unwrap()),
                pb::DeductionStatus::Refunded
            );
            ctx.paid_minor -= 10_000;
            vec![ctx.req("100.00", "bill")]
        }
        Case::CurrencyMismatch => {
            let mut req = ctx.req("100.00", "bad");
            req.amount = Some(pb::Money {
                currency_code: "USD".into(),
                amount: "100.00".into(),
            });
            vec![req]
        }
        Case::NotFixedAmount => vec![ctx.req("299.99", "bad"), ctx.req("300.01", "bad")],
        Case::NoNotice => vec![ctx.req("100.00", "bad")],
        Case::NoticeTooRecent => {
            let notice = ctx.notify("100.00", "bill").await;
            // Made one second less than the lead time before.
            app.clock.advance(SignedDuration::from_secs(LEAD_S - 1));
            vec![with_notice(ctx.req("100.00", "bill"), &notice)]
        }
        Case::NoticeTooSmall => {
            let notice = ctx.notify("100.00", "bill").await;
            app.clock.advance(SignedDuration::from_secs(LEAD_S));
            vec![with_notice(ctx.req("100.01", "bill"), &notice)]
        }
        Case::NoticeUsed => {
            let notice = ctx.notify("100.00", "b-1").await;
            app.clock.advance(SignedDuration::from_secs(LEAD_S));
            let first = with_notice(ctx.req("100.00", "b-1"), &notice);
            let d = ctx.succeed(first).await;
            assert_eq!(d.notice_id, notice.notice_id);
            vec![with_notice(ctx.req("100.00", "b-2"), &notice)]
        }
        Case::DuplicateBill => {
            let first = ctx.req("100.00", "bill");
            ctx.succeed(first).await;
            vec![ctx.req("100.00", "bill")]
        }
        Case::PeriodAmount => {
            // 900.00 of 1000.00 used, one debit of three left.
            for (amount, bill) in [("500.00", "b-1"), ("400.00", "b-2")] {
                let req = ctx.req(amount, bill);
                ctx.succeed(req).await;
            }
            vec![ctx.req("100.01", "b-3")]
        }
        Case::PeriodCount => {
            // Both debits of the month used, 400.00 of the amount left.
            for bill in ["b-1", "b-2"] {
                let req = ctx.req("300.00", bill);
                ctx.succeed(req).await;
            }
            vec![ctx.req("400.00", "b-3")]
        }
        Case::TotalAmount => {
            let first = ctx.req("500.00", "b-1");
            ctx.succeed(first).await;
            vec![ctx.req("100.01", "b-2")]
        }
        Case::TotalCount => {
            let first = ctx.req("100.00", "b-1");
            ctx.succeed(first).await;
            // Tightening the lifetime count to the one debit already made applies at once.
            amend_total_debit_limit(ctx, 1, pb::AmendmentOutcome::Applied).await;
            vec![ctx.req("100.00", "b-2")]
        }
        Case::OutsideWindow => vec![ctx.req("100.00", "bad")],
    }
}

async fn amend_total_debit_limit(
    ctx: &Ctx<'_>,
    limit: u32,
    outcome: pb::AmendmentOutcome,
) -> pb::Mandate {
    let current = ctx.app.mandate_now(&ctx.mandate_id).await;
    let terms = pb::MandateTerms {
        total_debit_limit: Some(limit),
        ..current.terms.clone().unwrap()
    };
    let amended = ctx
        .app
        .merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: ctx.mandate_id.clone(),
            terms: Some(terms),
            reason: "lifetime count".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amended.outcome, outcome as i32);
    amended.mandate.unwrap()
}

/// After the declines: put right what the case broke and show that the limits are whole, i.e.
/// the declined debits used none of them.
async fn follow_up(ctx: &mut Ctx<'_>, case: Case, judged: &pb::Mandate, expected: &[&str]) {
    let app = ctx.app;
    match case {
        Case::Paused => {
            app.payer(&ctx.payer)
                .await
                .resume_mandate(pb::ResumeMandateRequest {
                    mandate_id: ctx.mandate_id.clone(),
                    reason: "back".into(),
                    request_id: String::new(),
                })
                .await
                .unwrap();
            ctx.fill(2, "500.00").await;
        }
        Case::PendingConsent => {
            app.confirm_with(judged, wallet_only()).await;
            ctx.fill(2, "500.00").await;
        }
        Case::Expired => {
            // Declined before the sweep (ACTIVE past valid_until) and after it (EXPIRED).
            assert_eq!(status_of(judged), pb::MandateStatus::Active);
            assert_eq!(app.service.expire_due(100).await.unwrap(), 1);
            let expired = app.mandate_now(&ctx.mandate_id).await;
            assert_eq!(status_of(&expired), pb::MandateStatus::Expired);
            assert_eq!(expired.version, judged.version + 1);
            let req = ctx.req("100.00", "bad-after-sweep");
            let d = new_deduction(&mut ctx.merchant, req).await;
            assert_declined(&d, expected, expired.version, "Expired after the sweep");
        }
        Case::NotYetValid => {
            // valid_from itself collects.
            app.clock.advance(HOUR);
            ctx.fill(2, "500.00").await;
        }
        Case::PurposeNotAllowed
        | Case::RefundRecoveryPurpose
        | Case::CurrencyMismatch
        | Case::AbovePerDebitLimit => ctx.fill(2, "500.00").await,
        Case::NotFixedAmount => ctx.fill(2, "300.00").await,
        Case::RefundedBill | Case::DuplicateBill => {
            // A refund gives no usage back: one debit of the month is left, and still is.
            ctx.fill(1, "500.00").await;
        }
        Case::NoNotice => {
            let first = ctx.notify("500.00", "n-1").await;
            let second = ctx.notify("500.00", "n-2").await;
            app.clock.advance(SignedDuration::from_secs(LEAD_S));
            for (notice, bill) in [(first, "n-1"), (second, "n-2")] {
                let req = with_notice(ctx.req("500.00", bill), &notice);
                ctx.succeed(req).await;
            }
        }
        Case::NoticeTooRecent => {
            // Exactly the lead time later the same notice (unused by the decline) covers it.
            app.clock.advance(SignedDuration::from_secs(1));
            let notices = list_notices(&mut ctx.merchant, &ctx.mandate_id)
                .await
                .unwrap();
            assert_eq!(notices.len(), 1);
            assert_eq!(notices[0].used_by_deduction_id, "");
            let req = with_notice(ctx.req("100.00", "bill"), &notices[0]);
            ctx.succeed(req).await;
        }
        Case::NoticeTooSmall => {
            let notices = list_notices(&mut ctx.merchant, &ctx.mandate_id)
                .await
                .unwrap();
            assert_eq!(notices.len(), 1);
            assert_eq!(notices[0].used_by_deduction_id, "");
            let req = with_notice(ctx.req("100.00", "bill"), &notices[0]);
            ctx.succeed(req).await;
        }
        Case::NoticeUsed => {
            // The second debit of the month is still available.
            let notice = ctx.notify("100.00", "b-2").await;
            app.clock.advance(SignedDuration::from_secs(LEAD_S));
            let req = with_notice(ctx.req("100.00", "b-2"), &notice);
            ctx.succeed(req).await;
        }
        Case::PeriodAmount => {
            // Exactly the 100.00 left.
            let req = ctx.req("100.00", "b-3");
            ctx.succeed(req).await;
        }
        Case::PeriodCount => {
            // Only the count is used up: 400.00 more would still fit the amount limit.
            let req = ctx.req("400.00", "b-3");
            let answer = check_deduction(&mut ctx.merchant, &req).await;
            assert!(!answer.allowed);
            assert_eq!(
                violation_codes(&answer.violations),
                ["PERIOD_COUNT_LIMIT_EXCEEDED"]
            );
        }
        Case::TotalAmount => {
            // Exactly the 100.00 left, which uses the mandate up.
            let req = ctx.req("100.00", "b-2");
            ctx.succeed(req).await;
            let m = app.mandate_now(&ctx.mandate_id).await;
            assert_eq!(status_of(&m), pb::MandateStatus::Consumed);
        }
        Case::TotalCount => {
            // Raising the lifetime count to 2 waits for the payer; then one debit fits, and
            // it uses the mandate up.
            let pending =
                amend_total_debit_limit(ctx, 2, pb::AmendmentOutcome::PendingPayerConfirmation)
                    .await;
            app.payer(&ctx.payer)
                .await
                .confirm_amendment(pb::ConfirmAmendmentRequest {
                    consent: Some(consent()),
                    mandate_id: ctx.mandate_id.clone(),
                    mandate_version: pending.version,
                    request_id: String::new(),
                })
                .await
                .unwrap();
            let req = ctx.req("100.00", "b-2");
            ctx.succeed(req).await;
            let m = app.mandate_now(&ctx.mandate_id).await;
            assert_eq!(status_of(&m), pb::MandateStatus::Consumed);
        }
        Case::OutsideWindow => {
            app.clock.advance(DAY);
            ctx.fill(2, "500.00").await;
        }
    }
}

async fn run_case(app: &TestApp, usage: &Raw, index: usize, case: Case, expected: &[&str]) {
    let what = format!("{case:?}");
    let payer = format!("p-{index}");
    app.credit(&payer, "5000.00").await;
    let terms = case_terms(case, app.clock_now());
    let contract = format!("c-{index}");
    let mandate = if case == Case::PendingConsent {
        app.propose("m-1", &payer, &contract, terms).await
    } else {
        app.mandate_with("m-1", &payer, &contract, terms, wallet_only())
            .await
    };
    let mut ctx = Ctx {
        app,
        merchant: app.deductions_as(app.merchant_token("m-1")).await,
        tag: format!("t{index}"),
        payer: payer.clone(),
        mandate_id: mandate.mandate_id.clone(),
        seq: 0,
        paid_minor: 0,
    };
    let bad = prepare(&mut ctx, case).await;
    let judged = app.mandate_now(&mandate.mandate_id).await;
    let balance = app.balance(&payer).await;
    assert_eq!(balance, fmt_minor(500_000 - ctx.paid_minor), "{what}");
    let used = usage.usage(&mandate.mandate_id).await;
    for req in bad {
        let d = new_deduction(&mut ctx.merchant, req.clone()).await;
        assert_declined(&d, expected, judged.version, &what);
        assert_eq!(d.mandate_id, mandate.mandate_id);
        assert_eq!(d.request_id, req.request_id);
        // The same request again is the same decision.
        let again = ctx
            .merchant
            .create_deduction(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(again.replayed, "{what}");
        assert_eq!(again.deduction.as_ref(), Some(&d), "{what}");
        // A dry run of it finds the same violations.
        let dry = check_deduction(&mut ctx.merchant, &req).await;
        assert!(!dry.allowed, "{what}");
        assert_eq!(violation_codes(&dry.violations), expected, "{what}");
        assert_eq!(dry.mandate_version, judged.version, "{what}");
    }
    assert_eq!(
        app.balance(&payer).await,
        balance,
        "{what}: nothing charged"
    );
    assert_eq!(
        usage.usage(&mandate.mandate_id).await,
        used,
        "{what}: no usage consumed"
    );
    follow_up(&mut ctx, case, &judged, expected).await;
    assert_eq!(
        app.balance(&payer).await,
        fmt_minor(500_000 - ctx.paid_minor),
        "{what}"
    );
}

async fn every_reason_code_declines_without_charging(backend: Backend) {
    let app = spawn_app(backend).await;
    let covered: BTreeSet<&str> = TABLE.iter().map(|(_, expected)| expected[0]).collect();
    assert_eq!(covered, REASONS.into_iter().collect::<BTreeSet<_>>());
    let usage = Raw::open(&app).await;
    for (index, (case, expected)) in TABLE.iter().enumerate() {
        run_case(&app, &usage, index, *case, expected).await;
    }
    usage.close().await;
    app.finish().await;
}

both_backends!(every_reason_code_declines_without_charging);
