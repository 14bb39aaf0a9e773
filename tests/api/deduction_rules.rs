//! The deduction rules of DESIGN §4 through gRPC: every decline reason (table-driven), the full
//! violation list of `CheckDeduction`, calendar periods and collection windows in
//! Asia/Shanghai, pre-debit notices, single-use and lifetime-limited mandates, and the rule that
//! a declined or failed deduction charges nothing and consumes no limit (§3.1, §9.5).

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tonic::Code;
use tonic_types::StatusExt;
use withholding::pb;

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
const DAY: SignedDuration = SignedDuration::from_hours(24);

// ---- helpers ----

fn at(text: &str) -> Timestamp {
    text.parse().expect("an RFC 3339 time")
}

fn pb_time(at: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: at.subsec_nanosecond(),
    })
}

fn shanghai_day(at: Timestamp) -> u32 {
    let zone = TimeZone::get("Asia/Shanghai").unwrap();
    u32::try_from(at.to_zoned_datetime(zone).date().day()).unwrap()
}

/// "12.34" → 1234 (every amount in these tests has two decimals).
fn minor(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').expect("two decimals");
    assert_eq!(cents.len(), 2, "{amount}");
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

fn cny(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn wallet_only() -> Vec<pb::FundingSource> {
    vec![pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
        cap_per_debit: None,
    }]
}

/// Creates a mandate with `terms` as merchant `m-1` for `payer`; unless `confirm` is false the
/// payer confirms it with the wallet as its only funding source.
async fn new_mandate(
    app: &TestApp,
    contract: &str,
    payer: &str,
    terms: pb::MandateTerms,
    confirm: bool,
) -> pb::Mandate {
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: contract.into(),
            payer_id: payer.into(),
            terms: Some(terms),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&created), pb::MandateStatus::PendingConsent);
    if confirm {
        confirm_wallet_only(app, &created).await
    } else {
        created
    }
}

async fn confirm_wallet_only(app: &TestApp, created: &pb::Mandate) -> pb::Mandate {
    let confirmed = app
        .payer(&created.payer_id)
        .await
        .confirm_mandate(pb::ConfirmMandateRequest {
            funding_sources: wallet_only(),
            ..confirm_request(created)
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&confirmed), pb::MandateStatus::Active);
    confirmed
}

/// The mandate as it stands now, read by its merchant.
async fn mandate_now(app: &TestApp, id: &str) -> pb::Mandate {
    app.merchant("m-1")
        .await
        .get_mandate(pb::GetMandateRequest {
            mandate_id: id.into(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// CreateDeduction, which must answer OK (a decline is a business outcome, not an RPC error).
async fn deduct(merchant: &mut DeductionClient, req: pb::CreateDeductionRequest) -> pb::Deduction {
    let answer = merchant
        .create_deduction(req.clone())
        .await
        .unwrap_or_else(|e| panic!("CreateDeduction {req:?} answered {e:?}"))
        .into_inner();
    assert!(!answer.replayed, "{req:?} is a new request");
    answer.deduction.unwrap()
}

async fn deduct_ok(
    merchant: &mut DeductionClient,
    req: pb::CreateDeductionRequest,
) -> pb::Deduction {
    let d = deduct(merchant, req).await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert!(d.violations.is_empty() && d.reason_code.is_empty(), "{d:?}");
    d
}

async fn check(
    merchant: &mut DeductionClient,
    req: &pb::CreateDeductionRequest,
) -> pb::CheckDeductionResponse {
    merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: req.mandate_id.clone(),
            amount: req.amount.clone(),
            purpose: req.purpose,
            bill_reference: req.bill_reference.clone(),
            notice_id: req.notice_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn codes(violations: &[pb::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.reason_code.as_str()).collect()
}

fn with_purpose(
    req: pb::CreateDeductionRequest,
    purpose: pb::Purpose,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        purpose: purpose as i32,
        ..req
    }
}

fn with_notice(req: pb::CreateDeductionRequest, notice: &pb::Notice) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        notice_id: notice.notice_id.clone(),
        ..req
    }
}

/// A declined deduction: the first reason, every violation in order, the version judged
/// against, and no funding source tried.
fn assert_declined(d: &pb::Deduction, expected: &[&str], version: i64, what: &str) {
    assert_eq!(
        deduction_status(d),
        pb::DeductionStatus::Declined,
        "{what}: {d:?}"
    );
    assert_eq!(d.reason_code, expected[0], "{what}: {d:?}");
    assert_eq!(codes(&d.violations), expected, "{what}: {d:?}");
    assert!(
        d.violations.iter().all(|v| !v.description.is_empty()),
        "{what}: every violation says why: {d:?}"
    );
    assert_eq!(d.mandate_version, version, "{what}: {d:?}");
    assert!(d.funding_attempts.is_empty(), "{what}: {d:?}");
    assert_eq!(d.paid_by_source_index, None, "{what}");
}

async fn notify(
    merchant: &mut DeductionClient,
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    bill: &str,
    due_at: Timestamp,
) -> pb::Notice {
    merchant
        .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
            mandate_id: mandate_id.into(),
            amount: money(amount),
            due_at: pb_time(due_at),
            bill_reference: bill.into(),
            request_id: request_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap()
}

async fn list_notices(
    client: &mut DeductionClient,
    mandate_id: &str,
) -> Result<Vec<pb::Notice>, tonic::Status> {
    client
        .list_notices(pb::ListNoticesRequest {
            mandate_id: mandate_id.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().notices)
}

/// Reads the per-mandate usage rows (DESIGN §8) straight from the database, to prove that a
/// declined or failed deduction reserved nothing.
enum UsageDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl UsageDb {
    async fn connect(app: &TestApp) -> Self {
        match app.backend {
            Backend::Sqlite => Self::Sqlite(sqlx::SqlitePool::connect(&app.db.url).await.unwrap()),
            Backend::Postgres => Self::Postgres(sqlx::PgPool::connect(&app.db.url).await.unwrap()),
        }
    }

    /// (period key, amount in minor units, debit count) of every usage row of the mandate.
    async fn usage(&self, mandate_id: &str) -> Vec<(String, i64, i64)> {
        const SQL: &str = "SELECT period_key, amount_minor, debit_count FROM mandate_usage \
                           WHERE mandate_id = $1 ORDER BY period_key";
        match self {
            Self::Sqlite(pool) => sqlx::query_as(SQL)
                .bind(mandate_id.to_owned())
                .fetch_all(pool)
                .await
                .unwrap(),
            Self::Postgres(pool) => sqlx::query_as(SQL)
                .bind(mandate_id.to_owned())
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    async fn close(self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// Money is conserved, no wallet is negative, and every audit chain verifies.
async fn finish(app: &TestApp) {
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!((totals.sum_minor, totals.entries_sum_minor), (0, 0));
    assert!(totals.min_wallet_minor >= 0, "{}", totals.min_wallet_minor);
    app.verify_audit().await;
}

// ---- 1. every reason code, table-driven ----

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
        let d = deduct_ok(&mut self.merchant, req).await;
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
    let current = mandate_now(ctx.app, &ctx.mandate_id).await;
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
            confirm_wallet_only(app, judged).await;
            ctx.fill(2, "500.00").await;
        }
        Case::Expired => {
            // Declined before the sweep (ACTIVE past valid_until) and after it (EXPIRED).
            assert_eq!(status_of(judged), pb::MandateStatus::Active);
            assert_eq!(app.service.expire_due(100).await.unwrap(), 1);
            let expired = mandate_now(app, &ctx.mandate_id).await;
            assert_eq!(status_of(&expired), pb::MandateStatus::Expired);
            assert_eq!(expired.version, judged.version + 1);
            let req = ctx.req("100.00", "bad-after-sweep");
            let d = deduct(&mut ctx.merchant, req).await;
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
            let answer = check(&mut ctx.merchant, &req).await;
            assert!(!answer.allowed);
            assert_eq!(codes(&answer.violations), ["PERIOD_COUNT_LIMIT_EXCEEDED"]);
        }
        Case::TotalAmount => {
            // Exactly the 100.00 left, which uses the mandate up.
            let req = ctx.req("100.00", "b-2");
            ctx.succeed(req).await;
            let m = mandate_now(app, &ctx.mandate_id).await;
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
            let m = mandate_now(app, &ctx.mandate_id).await;
            assert_eq!(status_of(&m), pb::MandateStatus::Consumed);
        }
        Case::OutsideWindow => {
            app.clock.advance(DAY);
            ctx.fill(2, "500.00").await;
        }
    }
}

async fn run_case(app: &TestApp, usage: &UsageDb, index: usize, case: Case, expected: &[&str]) {
    let what = format!("{case:?}");
    let payer = format!("p-{index}");
    app.credit(&payer, "5000.00").await;
    let terms = case_terms(case, app.clock_now());
    let mandate = new_mandate(
        app,
        &format!("c-{index}"),
        &payer,
        terms,
        case != Case::PendingConsent,
    )
    .await;
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
    let judged = mandate_now(app, &mandate.mandate_id).await;
    let balance = app.balance(&payer).await;
    assert_eq!(balance, cny(500_000 - ctx.paid_minor), "{what}");
    let used = usage.usage(&mandate.mandate_id).await;
    for req in bad {
        let d = deduct(&mut ctx.merchant, req.clone()).await;
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
        let dry = check(&mut ctx.merchant, &req).await;
        assert!(!dry.allowed, "{what}");
        assert_eq!(codes(&dry.violations), expected, "{what}");
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
        cny(500_000 - ctx.paid_minor),
        "{what}"
    );
}

async fn every_reason_code_declines_without_charging(backend: Backend) {
    let app = spawn_app(backend).await;
    let covered: BTreeSet<&str> = TABLE.iter().map(|(_, expected)| expected[0]).collect();
    assert_eq!(covered, REASONS.into_iter().collect::<BTreeSet<_>>());
    let usage = UsageDb::connect(&app).await;
    for (index, (case, expected)) in TABLE.iter().enumerate() {
        run_case(&app, &usage, index, *case, expected).await;
    }
    usage.close().await;
    finish(&app).await;
}

// ---- 2. CheckDeduction lists every violation and reserves nothing ----

async fn check_lists_every_violation_and_reserves_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let usage = UsageDb::connect(&app).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // A: both debits of the month used (800.00 of 1000.00).
    app.credit("p-a", "2000.00").await;
    let a = new_mandate(&app, "c-a", "p-a", utility_terms(), true).await;
    for (rid, bill) in [("a-1", "a-b1"), ("a-2", "a-b2")] {
        deduct_ok(&mut merchant, collect(rid, &a.mandate_id, "400.00", bill)).await;
    }
    let a_version = mandate_now(&app, &a.mandate_id).await.version;
    let wrong = with_purpose(
        collect("a-3", &a.mandate_id, "600.00", "a-b1"),
        pb::Purpose::Telecom,
    );
    let expected = [
        "PURPOSE_NOT_ALLOWED",
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        "DUPLICATE_BILL_REFERENCE",
        "PERIOD_AMOUNT_LIMIT_EXCEEDED",
        "PERIOD_COUNT_LIMIT_EXCEEDED",
    ];
    let answer = check(&mut merchant, &wrong).await;
    assert!(!answer.allowed);
    assert_eq!(codes(&answer.violations), expected);
    assert_eq!(answer.mandate_version, a_version);
    // The deduction itself carries the same full list.
    let d = deduct(&mut merchant, wrong).await;
    assert_declined(&d, &expected, a_version, "wrong everything");
    let clawback = with_purpose(
        collect("a-4", &a.mandate_id, "600.00", "a-b3"),
        pb::Purpose::RefundRecovery,
    );
    let answer = check(&mut merchant, &clawback).await;
    assert_eq!(
        codes(&answer.violations),
        [
            "REFUND_CLAWBACK_FORBIDDEN",
            "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            "PERIOD_AMOUNT_LIMIT_EXCEEDED",
            "PERIOD_COUNT_LIMIT_EXCEEDED",
        ]
    );
    assert_eq!(app.balance("p-a").await, "1200.00");

    // B: every rule of one mandate broken at once.
    app.credit("p-b", "2000.00").await;
    let today = shanghai_day(app.clock_now());
    let b_terms = pb::MandateTerms {
        period_amount_limit: money("500.00"),
        period_debit_limit: Some(1),
        total_amount_limit: money("800.00"),
        collection_window: Some(pb::CollectionWindow {
            day_of_period: today,
            tolerance_days: 0,
        }),
        pre_notification: Some(pb::PreNotification { lead_time_s: 0 }),
        ..utility_terms()
    };
    let b = new_mandate(&app, "c-b", "p-b", b_terms, true).await;
    let notice = notify(
        &mut merchant,
        "b-n1",
        &b.mandate_id,
        "500.00",
        "b-b1",
        app.clock_now().checked_add(DAY).unwrap(),
    )
    .await;
    let good = with_notice(collect("b-1", &b.mandate_id, "500.00", "b-b1"), &notice);
    // Checking with the notice does not use it up.
    for _ in 0..2 {
        let answer = check(&mut merchant, &good).await;
        assert!(answer.allowed, "{answer:?}");
        assert!(answer.violations.is_empty());
        assert_eq!(answer.mandate_version, b.version);
    }
    let list = list_notices(&mut merchant, &b.mandate_id).await.unwrap();
    assert_eq!(list[0].used_by_deduction_id, "");
    deduct_ok(&mut merchant, good).await;
    app.clock.advance(DAY);
    app.payer("p-b")
        .await
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: b.mandate_id.clone(),
            reason: "away".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let b_version = mandate_now(&app, &b.mandate_id).await.version;
    let everything = with_notice(
        with_purpose(
            collect("b-2", &b.mandate_id, "600.00", "b-b1"),
            pb::Purpose::Telecom,
        ),
        &notice,
    );
    let expected = [
        "MANDATE_NOT_ACTIVE",
        "PURPOSE_NOT_ALLOWED",
        "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
        "OUTSIDE_COLLECTION_WINDOW",
        "PRE_NOTIFICATION_MISSING",
        "DUPLICATE_BILL_REFERENCE",
        "PERIOD_AMOUNT_LIMIT_EXCEEDED",
        "PERIOD_COUNT_LIMIT_EXCEEDED",
        "TOTAL_LIMIT_EXCEEDED",
    ];
    let answer = check(&mut merchant, &everything).await;
    assert!(!answer.allowed);
    assert_eq!(codes(&answer.violations), expected);
    assert_eq!(answer.mandate_version, b_version);
    let d = deduct(&mut merchant, everything).await;
    assert_declined(&d, &expected, b_version, "every rule");
    assert_eq!(app.balance("p-b").await, "1500.00");

    // C: not consented and not valid yet.
    let c_terms = pb::MandateTerms {
        valid_from: pb_time(app.clock_now().checked_add(DAY).unwrap()),
        ..utility_terms()
    };
    let c = new_mandate(&app, "c-c", "p-c", c_terms, false).await;
    let answer = check(
        &mut merchant,
        &collect("c-1", &c.mandate_id, "100.00", "c-b1"),
    )
    .await;
    assert_eq!(
        codes(&answer.violations),
        ["MANDATE_NOT_ACTIVE", "MANDATE_NOT_YET_VALID"]
    );
    assert_eq!(answer.mandate_version, c.version);

    // D: a good debit is allowed as often as it is checked; checks reserve nothing.
    app.credit("p-d", "1000.00").await;
    let d_mandate = new_mandate(&app, "c-d", "p-d", utility_terms(), true).await;
    for bill in ["d-b1", "d-b1", "d-b2"] {
        let answer = check(
            &mut merchant,
            &collect("unused", &d_mandate.mandate_id, "500.00", bill),
        )
        .await;
        assert!(answer.allowed, "{answer:?}");
        assert!(answer.violations.is_empty());
        assert_eq!(answer.mandate_version, d_mandate.version);
    }
    assert_eq!(usage.usage(&d_mandate.mandate_id).await, vec![]);
    assert_eq!(app.balance("p-d").await, "1000.00");
    deduct_ok(
        &mut merchant,
        collect("d-1", &d_mandate.mandate_id, "500.00", "d-b1"),
    )
    .await;
    let answer = check(
        &mut merchant,
        &collect("unused", &d_mandate.mandate_id, "500.00", "d-b2"),
    )
    .await;
    assert!(answer.allowed, "{answer:?}");
    deduct_ok(
        &mut merchant,
        collect("d-2", &d_mandate.mandate_id, "500.00", "d-b2"),
    )
    .await;
    let answer = check(
        &mut merchant,
        &collect("unused", &d_mandate.mandate_id, "0.01", "d-b3"),
    )
    .await;
    assert_eq!(
        codes(&answer.violations),
        [
            "PERIOD_AMOUNT_LIMIT_EXCEEDED",
            "PERIOD_COUNT_LIMIT_EXCEEDED"
        ]
    );
    assert_eq!(app.balance("p-d").await, "0.00");

    usage.close().await;
    finish(&app).await;
}

// ---- 3. calendar periods in Asia/Shanghai ----

fn one_per(unit: pb::PeriodUnit) -> pb::MandateTerms {
    pb::MandateTerms {
        period: Some(pb::Period {
            unit: unit as i32,
            count: 1,
        }),
        period_amount_limit: None,
        period_debit_limit: Some(1),
        ..utility_terms()
    }
}

async fn periods_are_calendar_periods_in_shanghai(backend: Backend) {
    let app = spawn_app(backend).await;
    app.credit("p-1", "1000.00").await;
    // Created on Sunday 2026-03-01, 10:00 in Shanghai.
    let week = new_mandate(&app, "c-week", "p-1", one_per(pb::PeriodUnit::Week), true).await;
    let day = new_mandate(&app, "c-day", "p-1", one_per(pb::PeriodUnit::Day), true).await;
    let month = new_mandate(&app, "c-month", "p-1", one_per(pb::PeriodUnit::Month), true).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let mut n = 0;
    // (local time, mandate, succeeds?) in time order.
    let steps: [(&str, &pb::Mandate, bool); 17] = [
        // Sunday's last second and Monday's first are different ISO weeks.
        ("2026-03-01T23:59:59+08:00", &week, true),
        ("2026-03-01T23:59:59+08:00", &week, false),
        ("2026-03-01T23:59:59+08:00", &day, true),
        ("2026-03-02T00:00:00+08:00", &week, true),
        ("2026-03-02T00:00:00+08:00", &day, true),
        // Midnight UTC is 08:00 in Shanghai: the same local day.
        ("2026-03-02T08:00:00+08:00", &day, false),
        ("2026-03-02T23:59:59+08:00", &day, false),
        ("2026-03-03T00:00:00+08:00", &day, true),
        ("2026-03-08T23:59:59+08:00", &week, false),
        ("2026-03-09T00:00:00+08:00", &week, true),
        // 2026-03-31T16:00:00Z is still March in UTC but April in Shanghai.
        ("2026-03-31T23:59:59+08:00", &month, true),
        ("2026-03-31T23:59:59+08:00", &month, false),
        ("2026-04-01T00:00:00+08:00", &month, true),
        ("2026-04-01T00:00:01+08:00", &month, false),
        ("2026-04-30T23:59:59+08:00", &month, false),
        ("2026-05-01T00:00:00+08:00", &month, true),
        ("2026-05-01T00:00:00+08:00", &day, true),
    ];
    let mut paid = 0;
    for (local, mandate, ok) in steps {
        app.clock.set(at(local));
        n += 1;
        let req = collect(
            &format!("r-{n}"),
            &mandate.mandate_id,
            "10.00",
            &format!("b-{n}"),
        );
        let d = deduct(&mut merchant, req).await;
        let what = format!("{local} on {}", mandate.merchant_contract_id);
        if ok {
            assert_eq!(
                deduction_status(&d),
                pb::DeductionStatus::Succeeded,
                "{what}: {d:?}"
            );
            paid += 1000;
        } else {
            assert_declined(&d, &["PERIOD_COUNT_LIMIT_EXCEEDED"], mandate.version, &what);
        }
    }
    assert_eq!(app.balance("p-1").await, cny(100_000 - paid));
    assert_eq!(paid, 10 * 1000);
    finish(&app).await;
}

// ---- 4. collection window ----

async fn collection_window_is_day_of_month_plus_or_minus(backend: Backend) {
    let app = spawn_app(backend).await;
    app.credit("p-1", "1000.00").await;
    let terms = pb::MandateTerms {
        period_amount_limit: None,
        period_debit_limit: Some(31),
        collection_window: Some(pb::CollectionWindow {
            day_of_period: 15,
            tolerance_days: 2,
        }),
        ..utility_terms()
    };
    let m = new_mandate(&app, "c-1", "p-1", terms, true).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let steps = [
        ("2026-03-12T23:59:59+08:00", false),
        // 2026-03-12T16:00:00Z: the 12th in UTC, the 13th in Shanghai.
        ("2026-03-13T00:00:00+08:00", true),
        ("2026-03-14T12:00:00+08:00", true),
        ("2026-03-15T12:00:00+08:00", true),
        ("2026-03-16T12:00:00+08:00", true),
        ("2026-03-17T23:59:59+08:00", true),
        // 2026-03-17T16:00:00Z: the 17th in UTC, the 18th in Shanghai.
        ("2026-03-18T00:00:00+08:00", false),
        ("2026-04-12T12:00:00+08:00", false),
        ("2026-04-13T12:00:00+08:00", true),
    ];
    let mut paid = 0;
    for (n, (local, ok)) in steps.into_iter().enumerate() {
        app.clock.set(at(local));
        let req = collect(&format!("r-{n}"), &m.mandate_id, "10.00", &format!("b-{n}"));
        let dry = check(&mut merchant, &req).await;
        assert_eq!(dry.allowed, ok, "{local}: {dry:?}");
        let d = deduct(&mut merchant, req).await;
        if ok {
            assert_eq!(
                deduction_status(&d),
                pb::DeductionStatus::Succeeded,
                "{local}: {d:?}"
            );
            paid += 1000;
        } else {
            assert_eq!(codes(&dry.violations), ["OUTSIDE_COLLECTION_WINDOW"]);
            assert_declined(&d, &["OUTSIDE_COLLECTION_WINDOW"], m.version, local);
        }
    }
    assert_eq!(paid, 6 * 1000);
    assert_eq!(app.balance("p-1").await, cny(100_000 - paid));
    finish(&app).await;
}

// ---- 5. pre-debit notices ----

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
    let m = new_mandate(&app, "c-1", "p-1", terms, true).await;
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
    let d = deduct(&mut merchant, early).await;
    assert_declined(&d, &["PRE_NOTIFICATION_MISSING"], m.version, "too early");
    // Without the notice, or above its amount: never.
    app.clock.advance(SignedDuration::from_secs(1));
    let bare = collect("r-2", &m.mandate_id, "300.00", "b-1");
    let d = deduct(&mut merchant, bare).await;
    assert_declined(&d, &["PRE_NOTIFICATION_MISSING"], m.version, "no notice");
    let above = with_notice(collect("r-3", &m.mandate_id, "300.01", "b-1"), &notice);
    let d = deduct(&mut merchant, above).await;
    assert_declined(
        &d,
        &["PRE_NOTIFICATION_MISSING"],
        m.version,
        "above the notice",
    );
    assert_eq!(app.balance("p-1").await, "1000.00");

    // Exactly the lead time after it, the notice covers a debit up to its amount, once.
    let ok = with_notice(collect("r-4", &m.mandate_id, "250.00", "b-1"), &notice);
    let paid = deduct_ok(&mut merchant, ok).await;
    assert_eq!(paid.notice_id, notice.notice_id);
    assert_eq!(app.balance("p-1").await, "750.00");
    let listed = list_notices(&mut merchant, &m.mandate_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].notice_id, notice.notice_id);
    assert_eq!(listed[0].used_by_deduction_id, paid.deduction_id);
    let twice = with_notice(collect("r-5", &m.mandate_id, "50.00", "b-2"), &notice);
    let d = deduct(&mut merchant, twice).await;
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
    finish(&app).await;
}

// ---- 6. single use and lifetime count ----

async fn single_use_is_consumed_only_by_a_success(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    // Single use, wallet (cap 200.00) then card; the wallet is empty.
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-once".into(),
            payer_id: "p-1".into(),
            terms: Some(pb::MandateTerms {
                single_use: true,
                ..utility_terms()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let once = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let failed = deduct(
        &mut merchant,
        collect("o-1", &once.mandate_id, "100.00", "o-b1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    assert!(failed.violations.is_empty());
    let declined = deduct(
        &mut merchant,
        with_purpose(
            collect("o-2", &once.mandate_id, "100.00", "o-b2"),
            pb::Purpose::Telecom,
        ),
    )
    .await;
    assert_declined(
        &declined,
        &["PURPOSE_NOT_ALLOWED"],
        once.version,
        "single use",
    );
    let still = mandate_now(&app, &once.mandate_id).await;
    assert_eq!(status_of(&still), pb::MandateStatus::Active);
    assert_eq!(still.version, once.version);

    // The failed bill may be collected again once the wallet has money; that consumes it.
    app.credit("p-1", "300.00").await;
    deduct_ok(
        &mut merchant,
        collect("o-3", &once.mandate_id, "100.00", "o-b1"),
    )
    .await;
    let consumed = mandate_now(&app, &once.mandate_id).await;
    assert_eq!(status_of(&consumed), pb::MandateStatus::Consumed);
    assert_eq!(consumed.version, once.version + 1);
    let after = deduct(
        &mut merchant,
        collect("o-4", &once.mandate_id, "100.00", "o-b3"),
    )
    .await;
    assert_declined(
        &after,
        &["MANDATE_NOT_ACTIVE"],
        consumed.version,
        "after consumption",
    );
    assert_eq!(app.balance("p-1").await, "200.00");

    // A lifetime count of 2 is consumed by the second success; a failure does not count.
    let created = app
        .merchant("m-1")
        .await
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-twice".into(),
            payer_id: "p-2".into(),
            terms: Some(pb::MandateTerms {
                total_debit_limit: Some(2),
                period_debit_limit: Some(5),
                ..utility_terms()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let twice = app
        .payer("p-2")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let failed = deduct(
        &mut merchant,
        collect("t-1", &twice.mandate_id, "100.00", "t-b1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    app.credit("p-2", "300.00").await;
    deduct_ok(
        &mut merchant,
        collect("t-2", &twice.mandate_id, "100.00", "t-b1"),
    )
    .await;
    assert_eq!(
        status_of(&mandate_now(&app, &twice.mandate_id).await),
        pb::MandateStatus::Active
    );
    deduct_ok(
        &mut merchant,
        collect("t-3", &twice.mandate_id, "100.00", "t-b2"),
    )
    .await;
    let consumed = mandate_now(&app, &twice.mandate_id).await;
    assert_eq!(status_of(&consumed), pb::MandateStatus::Consumed);
    let after = deduct(
        &mut merchant,
        collect("t-4", &twice.mandate_id, "100.00", "t-b3"),
    )
    .await;
    assert_declined(
        &after,
        &["MANDATE_NOT_ACTIVE", "TOTAL_LIMIT_EXCEEDED"],
        consumed.version,
        "after the lifetime count",
    );
    assert_eq!(app.balance("p-2").await, "100.00");
    finish(&app).await;
}

// ---- 7. failed and declined debits consume no period count ----

async fn failed_debits_consume_no_period_count(backend: Backend) {
    let app = spawn_app(backend).await;
    let usage = UsageDb::connect(&app).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let failed = deduct(
        &mut merchant,
        collect("r-1", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert_eq!(failed.reason_code, "CARD_NOT_CONNECTED");
    let kinds: Vec<(&str, &str, &str)> = failed
        .funding_attempts
        .iter()
        .map(|a| {
            (
                a.source_kind.as_str(),
                a.outcome.as_str(),
                a.reason_code.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("WALLET", "DECLINED", "INSUFFICIENT_FUNDS"),
            ("BANK_CARD", "DECLINED", "CARD_NOT_CONNECTED"),
        ]
    );
    let declined = deduct(
        &mut merchant,
        collect("r-2", &m.mandate_id, "500.01", "b-2"),
    )
    .await;
    assert_declined(
        &declined,
        &["AMOUNT_ABOVE_PER_DEBIT_LIMIT"],
        m.version,
        "above",
    );
    assert_eq!(usage.usage(&m.mandate_id).await, vec![]);

    // One funded debit, then one that fails on the emptied wallet, then another funded one.
    app.credit("p-1", "100.00").await;
    deduct_ok(
        &mut merchant,
        collect("r-3", &m.mandate_id, "100.00", "b-1"),
    )
    .await;
    let failed = deduct(
        &mut merchant,
        collect("r-4", &m.mandate_id, "100.00", "b-3"),
    )
    .await;
    assert_eq!(
        deduction_status(&failed),
        pb::DeductionStatus::Failed,
        "{failed:?}"
    );
    assert!(
        check(&mut merchant, &collect("x", &m.mandate_id, "100.00", "b-3"))
            .await
            .allowed
    );
    app.credit("p-1", "100.00").await;
    deduct_ok(
        &mut merchant,
        collect("r-5", &m.mandate_id, "100.00", "b-3"),
    )
    .await;
    let rows = usage.usage(&m.mandate_id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, amount, count)| (*amount, *count) == (20_000, 2)),
        "{rows:?}"
    );

    // The two debits of the month are used.
    let third = deduct(
        &mut merchant,
        collect("r-6", &m.mandate_id, "100.00", "b-4"),
    )
    .await;
    assert_declined(&third, &["PERIOD_COUNT_LIMIT_EXCEEDED"], m.version, "third");
    assert_eq!(app.balance("p-1").await, "0.00");
    usage.close().await;
    finish(&app).await;
}

both_backends!(
    every_reason_code_declines_without_charging,
    check_lists_every_violation_and_reserves_nothing,
    periods_are_calendar_periods_in_shanghai,
    collection_window_is_day_of_month_plus_or_minus,
    a_notice_lets_one_debit_through,
    single_use_is_consumed_only_by_a_success,
    failed_debits_consume_no_period_count,
);
