//! Property tests over the real server (DESIGN §3.1, §4, §9.1, §9.4): random sequences of
//! debits, refunds, amendments, pauses, wallet credits and clock moves against one mandate,
//! checked after every step against a model of the mandate, its period usage and the wallet.
//!
//! Each case spawns its own app (fresh database) in its own tokio runtime: proptest is sync.
//! The model predicts every answer exactly (status, every violated rule, funding attempts,
//! balances); independently of the model, the deductions read back with ListDeductions are
//! grouped by Asia/Shanghai calendar month and checked against the limits GetMandate reported
//! in force at each debit, and the ledger must balance.

use std::collections::{BTreeMap, HashMap};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;
use withholding::pb;

use crate::harness::*;

use pb::DeductionStatus as D;
use pb::MandateStatus as S;

/// Bills are drawn from a small pool so duplicates and refunded bills come up.
const BILLS: u8 = 8;
/// Clock moves stop at this much elapsed time, well before dormancy (36 months) and validity.
const MAX_ELAPSED_S: i64 = 800 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Utility,
    /// Not on the mandate.
    Telecom,
    /// Never allowed on a standing mandate.
    RefundRecovery,
}

impl Purpose {
    fn pb(self) -> pb::Purpose {
        match self {
            Self::Utility => pb::Purpose::Utility,
            Self::Telecom => pb::Purpose::Telecom,
            Self::RefundRecovery => pb::Purpose::RefundRecovery,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LimitChange {
    PerDebit(i64),
    PeriodAmount(i64),
    PeriodCount(u32),
}

#[derive(Debug, Clone)]
enum Op {
    Debit {
        minor: i64,
        bill: u8,
        purpose: Purpose,
    },
    /// Refunds `percent` of what is left of a refundable deduction (over 100: more than is
    /// left, which is refused).
    Refund {
        pick: Index,
        percent: i64,
    },
    /// The merchant replaces one limit; a loosening is confirmed by the payer when `confirm`.
    Amend {
        change: LimitChange,
        confirm: bool,
    },
    Pause,
    Resume,
    Credit {
        minor: i64,
    },
    Clock {
        seconds: i64,
    },
}

#[derive(Debug, Clone)]
struct Scenario {
    single_use: bool,
    per_debit: i64,
    period_amount: i64,
    period_count: u32,
    wallet_cap: Option<i64>,
    opening_credit: i64,
    page_size: u32,
    ops: Vec<Op>,
}

fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![
        8 => Just(Purpose::Utility),
        1 => Just(Purpose::Telecom),
        1 => Just(Purpose::RefundRecovery),
    ]
}

fn limit_change() -> impl Strategy<Value = LimitChange> {
    prop_oneof![
        (5_000i64..=70_000).prop_map(LimitChange::PerDebit),
        (20_000i64..=300_000).prop_map(LimitChange::PeriodAmount),
        (1u32..=6).prop_map(LimitChange::PeriodCount),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (100i64..=60_000, 0..BILLS, purpose())
            .prop_map(|(minor, bill, purpose)| Op::Debit { minor, bill, purpose }),
        3 => (any::<Index>(), 1i64..=110).prop_map(|(pick, percent)| Op::Refund { pick, percent }),
        3 => (limit_change(), any::<bool>()).prop_map(|(change, confirm)| Op::Amend { change, confirm }),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        2 => (100i64..=100_000).prop_map(|minor| Op::Credit { minor }),
        3 => prop_oneof![2 => 60i64..=6 * 3_600, 1 => 86_400i64..=40 * 86_400]
            .prop_map(|seconds| Op::Clock { seconds }),
    ]
}

fn scenario(ops: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Scenario> {
    (
        prop::bool::weighted(0.2),
        20_000i64..=60_000,
        50_000i64..=200_000,
        1u32..=5,
        prop::option::weighted(0.3, 5_000i64..=40_000),
        prop_oneof![1 => Just(0i64), 4 => 1_000i64..=300_000],
        2u32..=10,
        prop::collection::vec(op(), ops),
    )
        .prop_map(
            |(
                single_use,
                per_debit,
                period_amount,
                period_count,
                wallet_cap,
                opening_credit,
                page_size,
                ops,
            )| Scenario {
                single_use,
                per_debit,
                period_amount,
                period_count,
                wallet_cap,
                opening_credit,
                page_size,
                ops,
            },
        )
}

// ---- money and time ----

fn fmt_minor(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn cny(minor: i64) -> Option<pb::Money> {
    money(&fmt_minor(minor))
}

/// "12.3", "12.30" and "12" as minor units of a two-decimal currency.
fn parse_minor(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').unwrap_or((amount, ""));
    assert!(cents.len() <= 2, "amount {amount:?}");
    let cents = format!("{cents:0<2}");
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

fn money_minor(m: &Option<pb::Money>) -> i64 {
    let m = m.as_ref().expect("money");
    assert_eq!(m.currency_code, "CNY");
    parse_minor(&m.amount)
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> Timestamp {
    let t = t.as_ref().expect("timestamp");
    Timestamp::new(t.seconds, t.nanos).unwrap()
}

/// The Asia/Shanghai calendar month of an instant: the mandate's limit period.
fn month(at: Timestamp) -> (i16, i8) {
    let zoned = at.to_zoned_datetime(TimeZone::get("Asia/Shanghai").unwrap());
    (zoned.year(), zoned.month())
}

// ---- the model ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    per_debit: i64,
    period_amount: Option<i64>,
    period_count: Option<u32>,
}

impl Limits {
    fn of(terms: &pb::MandateTerms) -> Self {
        Self {
            per_debit: money_minor(&terms.per_debit_limit),
            period_amount: terms
                .period_amount_limit
                .as_ref()
                .map(|m| parse_minor(&m.amount)),
            period_count: terms.period_debit_limit,
        }
    }

    fn with(self, change: LimitChange) -> Self {
        match change {
            LimitChange::PerDebit(v) => Self {
                per_debit: v,
                ..self
            },
            LimitChange::PeriodAmount(v) => Self {
                period_amount: Some(v),
                ..self
            },
            LimitChange::PeriodCount(v) => Self {
                period_count: Some(v),
                ..self
            },
        }
    }

    /// The terms in force with these limits instead.
    fn apply(self, terms: &pb::MandateTerms) -> pb::MandateTerms {
        pb::MandateTerms {
            per_debit_limit: cny(self.per_debit),
            period_amount_limit: self.period_amount.map(|m| cny(m).unwrap()),
            period_debit_limit: self.period_count,
            ..terms.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Amendment {
    Unchanged,
    Tightening,
    Loosening,
}

fn classify(old: Limits, new: Limits) -> Amendment {
    let narrower = new.per_debit <= old.per_debit
        && le(new.period_amount, old.period_amount)
        && le(new.period_count, old.period_count);
    if new == old {
        Amendment::Unchanged
    } else if narrower {
        Amendment::Tightening
    } else {
        Amendment::Loosening
    }
}

fn le<T: PartialOrd>(new: Option<T>, old: Option<T>) -> bool {
    match (new, old) {
        (_, None) => true,
        (Some(n), Some(o)) => n <= o,
        (None, Some(_)) => false,
    }
}

#[derive(Debug, Clone)]
struct Debit {
    id: String,
    minor: i64,
    bill: String,
    status: D,
    refunded: i64,
    created_at: Timestamp,
    /// The limits in force when it was decided.
    limits: Limits,
}

/// Whether a debit of this status was approved (and so used up limits: refunds give nothing
/// back).
fn approved(status: D) -> bool {
    matches!(
        status,
        D::Succeeded | D::Processing | D::PendingConfirmation | D::Refunded | D::PartiallyRefunded
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bill {
    New,
    Collected,
    Refunded,
}

struct Model {
    now: Timestamp,
    elapsed_s: i64,
    status: S,
    version: i64,
    limits: Limits,
    pending: Option<Limits>,
    single_use: bool,
    wallet_cap: Option<i64>,
    wallet: i64,
    debits: Vec<Debit>,
    /// Per Shanghai month: amount and count of approved debits.
    usage: BTreeMap<(i16, i8), (i64, i64)>,
}

/// What the model expects of a debit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    status: D,
    reason: String,
    violations: Vec<String>,
    attempts: Vec<(u32, String, String, String)>,
    paid_by: Option<u32>,
}

impl Model {
    fn bill(&self, bill: &str) -> Bill {
        let mut out = Bill::New;
        for d in self.debits.iter().filter(|d| d.bill == bill) {
            match d.status {
                D::Refunded | D::PartiallyRefunded => out = Bill::Refunded,
                D::Succeeded | D::Processing | D::PendingConfirmation if out == Bill::New => {
                    out = Bill::Collected;
                }
                _ => {}
            }
        }
        out
    }

    /// DESIGN §4 rules 1–6 in order, then the waterfall: wallet (maybe capped), then a card
    /// that is not connected.
    fn expect_debit(&self, minor: i64, bill: &str, purpose: Purpose) -> Expected {
        let mut violations: Vec<&str> = vec![];
        match self.status {
            S::Active => {}
            S::Expired => violations.push("MANDATE_EXPIRED"),
            _ => violations.push("MANDATE_NOT_ACTIVE"),
        }
        let history = self.bill(bill);
        if purpose == Purpose::RefundRecovery || history == Bill::Refunded {
            violations.push("REFUND_CLAWBACK_FORBIDDEN");
        } else if purpose != Purpose::Utility {
            violations.push("PURPOSE_NOT_ALLOWED");
        }
        if minor > self.limits.per_debit {
            violations.push("AMOUNT_ABOVE_PER_DEBIT_LIMIT");
        }
        if history == Bill::Collected {
            violations.push("DUPLICATE_BILL_REFERENCE");
        }
        let (used_amount, used_count) = self
            .usage
            .get(&month(self.now))
            .copied()
            .unwrap_or_default();
        if self
            .limits
            .period_amount
            .is_some_and(|l| used_amount + minor > l)
        {
            violations.push("PERIOD_AMOUNT_LIMIT_EXCEEDED");
        }
        if self
            .limits
            .period_count
            .is_some_and(|l| used_count + 1 > i64::from(l))
        {
            violations.push("PERIOD_COUNT_LIMIT_EXCEEDED");
        }
        let (status, reason, attempts, paid_by) = if let Some(first) = violations.first() {
            (D::Declined, *first, vec![], None)
        } else {
            let card = (1, "BANK_CARD", "DECLINED", "CARD_NOT_CONNECTED");
            if self.wallet_cap.is_some_and(|cap| cap < minor) {
                let skipped = (0, "WALLET", "SKIPPED", "OVER_SOURCE_CAP");
                (D::Failed, "CARD_NOT_CONNECTED", vec![skipped, card], None)
            } else if self.wallet >= minor {
                (
                    D::Succeeded,
                    "",
                    vec![(0, "WALLET", "SUCCEEDED", "")],
                    Some(0),
                )
            } else {
                let short = (0, "WALLET", "DECLINED", "INSUFFICIENT_FUNDS");
                (D::Failed, "CARD_NOT_CONNECTED", vec![short, card], None)
            }
        };
        Expected {
            status,
            reason: reason.to_owned(),
            violations: violations.into_iter().map(str::to_owned).collect(),
            attempts: attempts
                .into_iter()
                .map(|(i, kind, outcome, code)| {
                    (i, kind.to_owned(), outcome.to_owned(), code.to_owned())
                })
                .collect(),
            paid_by,
        }
    }
}

// ---- the run ----

struct Clients {
    mandates: Client,
    payer: Client,
    deductions: DeductionClient,
    wallet: WalletClient,
}

fn funding(cap: Option<i64>) -> Vec<pb::FundingSource> {
    let mut sources = wallet_then_card();
    sources[0].cap_per_debit = cap.map(|c| cny(c).unwrap());
    sources
}

async fn get_mandate(clients: &mut Clients, id: &str) -> pb::Mandate {
    clients
        .mandates
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

async fn list_deductions(
    clients: &mut Clients,
    mandate_id: &str,
    page_size: u32,
) -> Vec<pb::Deduction> {
    let mut out: Vec<pb::Deduction> = vec![];
    let mut page_token = String::new();
    loop {
        let page = clients
            .deductions
            .list_deductions(pb::ListDeductionsRequest {
                mandate_id: mandate_id.into(),
                status: 0,
                created_from: None,
                created_until: None,
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deductions.len() <= page_size as usize);
        out.extend(page.deductions);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// Everything checked after every step; returns the mandate as read.
async fn verify(
    app: &TestApp,
    clients: &mut Clients,
    model: &Model,
    mandate_id: &str,
    page_size: u32,
    step: &str,
) -> pb::Mandate {
    // The mandate as the model has it.
    let mandate = get_mandate(clients, mandate_id).await;
    assert_eq!(status_of(&mandate), model.status, "{step}: status");
    assert_eq!(mandate.version, model.version, "{step}: version");
    assert_eq!(
        Limits::of(mandate.terms.as_ref().unwrap()),
        model.limits,
        "{step}: limits in force"
    );
    assert_eq!(
        mandate
            .pending_amendment
            .as_ref()
            .map(|p| Limits::of(p.terms.as_ref().unwrap())),
        model.pending,
        "{step}: pending amendment"
    );

    // Every deduction, read back page by page.
    let listed = list_deductions(clients, mandate_id, page_size).await;
    assert_eq!(
        listed.len(),
        model.debits.len(),
        "{step}: deductions listed"
    );
    let by_id: HashMap<&str, &pb::Deduction> = listed
        .iter()
        .map(|d| (d.deduction_id.as_str(), d))
        .collect();
    assert_eq!(
        by_id.len(),
        listed.len(),
        "{step}: a deduction listed twice"
    );
    for expected in &model.debits {
        let d = by_id
            .get(expected.id.as_str())
            .unwrap_or_else(|| panic!("{step}: {} not listed", expected.id));
        assert_eq!(deduction_status(d), expected.status, "{step}: {d:?}");
        assert_eq!(money_minor(&d.amount), expected.minor, "{step}: {d:?}");
        assert_eq!(
            money_minor(&d.refunded_amount),
            expected.refunded,
            "{step}: {d:?}"
        );
        assert_eq!(d.bill_reference, expected.bill, "{step}: {d:?}");
        assert_eq!(
            timestamp(&d.created_at),
            expected.created_at,
            "{step}: {d:?}"
        );
    }

    // DESIGN §9.1 from the server's own data, in decision order: per Shanghai month, what was
    // approved up to and including each approved debit stays within the limits GetMandate
    // reported in force when it was decided, and no debit exceeds the per-debit limit then.
    let mut running: BTreeMap<(i16, i8), (i64, i64)> = BTreeMap::new();
    for expected in &model.debits {
        let d = by_id[expected.id.as_str()];
        if !approved(deduction_status(d)) {
            continue;
        }
        let amount = money_minor(&d.amount);
        let used = running.entry(month(timestamp(&d.created_at))).or_default();
        used.0 += amount;
        used.1 += 1;
        let limits = expected.limits;
        assert!(
            amount <= limits.per_debit,
            "{step}: over the per-debit limit {limits:?}: {d:?}"
        );
        if let Some(cap) = limits.period_amount {
            assert!(
                used.0 <= cap,
                "{step}: period amount {} over {limits:?} at {d:?}",
                used.0
            );
        }
        if let Some(cap) = limits.period_count {
            assert!(
                used.1 <= i64::from(cap),
                "{step}: period count {} over {limits:?} at {d:?}",
                used.1
            );
        }
    }
    assert_eq!(running, model.usage, "{step}: period usage");
    // What counts now (SUCCEEDED + PROCESSING + PENDING_CONFIRMATION) in the current period is
    // at most what was approved in it.
    let current = month(model.now);
    let counting: i64 = listed
        .iter()
        .filter(|d| {
            matches!(
                deduction_status(d),
                D::Succeeded | D::Processing | D::PendingConfirmation
            )
        })
        .filter(|d| month(timestamp(&d.created_at)) == current)
        .map(|d| money_minor(&d.amount))
        .sum();
    assert!(
        counting <= running.get(&current).map_or(0, |u| u.0),
        "{step}: counting {counting}"
    );

    // A single-use mandate is consumed by a success, and only by one.
    if model.single_use {
        let any_success = listed.iter().any(|d| approved(deduction_status(d)));
        assert_eq!(
            status_of(&mandate) == S::Consumed,
            any_success,
            "{step}: single use"
        );
        assert!(
            listed
                .iter()
                .filter(|d| approved(deduction_status(d)))
                .count()
                <= 1,
            "{step}"
        );
    }

    // The wallet and the ledger.
    let balance = clients
        .wallet
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: "p-1".into(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
        .amount;
    assert_eq!(parse_minor(&balance), model.wallet, "{step}: wallet");
    let totals = app.db().deductions.ledger_totals().await.unwrap();
    assert_eq!(totals.sum_minor, 0, "{step}: {totals:?}");
    assert_eq!(totals.entries_sum_minor, 0, "{step}: {totals:?}");
    assert!(totals.min_wallet_minor >= 0, "{step}: {totals:?}");
    mandate
}

async fn play(backend: Backend, scenario: Scenario) {
    let app = spawn_app(backend).await;
    let mut clients = Clients {
        mandates: app.merchant("m-1").await,
        payer: app.payer("p-1").await,
        deductions: app.deductions_as(app.merchant_token("m-1")).await,
        wallet: app.wallet_as(app.operator_token()).await,
    };
    let terms = pb::MandateTerms {
        per_debit_limit: cny(scenario.per_debit),
        period_amount_limit: cny(scenario.period_amount),
        period_debit_limit: Some(scenario.period_count),
        single_use: scenario.single_use,
        valid_until: Some(prost_types::Timestamp {
            seconds: "2031-01-01T00:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second(),
            nanos: 0,
        }),
        ..utility_terms()
    };
    let created = clients
        .mandates
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-prop".into(),
            payer_id: "p-1".into(),
            terms: Some(terms),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mandate = clients
        .payer
        .confirm_mandate(pb::ConfirmMandateRequest {
            funding_sources: funding(scenario.wallet_cap),
            ..confirm_request(&created)
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let id = mandate.mandate_id.clone();
    if scenario.opening_credit > 0 {
        app.credit("p-1", &fmt_minor(scenario.opening_credit)).await;
    }
    let mut model = Model {
        now: app.clock_now(),
        elapsed_s: 0,
        status: S::Active,
        version: mandate.version,
        limits: Limits::of(mandate.terms.as_ref().unwrap()),
        pending: None,
        single_use: scenario.single_use,
        wallet_cap: scenario.wallet_cap,
        wallet: scenario.opening_credit,
        debits: vec![],
        usage: BTreeMap::new(),
    };
    assert_eq!(
        model.limits,
        Limits {
            per_debit: scenario.per_debit,
            period_amount: Some(scenario.period_amount),
            period_count: Some(scenario.period_count),
        }
    );
    let mut current = verify(&app, &mut clients, &model, &id, scenario.page_size, "start").await;

    for (n, op) in scenario.ops.iter().enumerate() {
        let step = format!("step {n} {op:?}");
        // The terms in force, as GetMandate reported them after the previous step.
        let terms_in_force = current.terms.clone().unwrap();
        match *op {
            Op::Debit {
                minor,
                bill,
                purpose,
            } => {
                let bill = format!("bill-{bill}");
                let expected = model.expect_debit(minor, &bill, purpose);
                let answer = clients
                    .deductions
                    .create_deduction(pb::CreateDeductionRequest {
                        purpose: purpose.pb() as i32,
                        ..collect(&format!("r-{n}"), &id, &fmt_minor(minor), &bill)
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                    .into_inner();
                assert!(!answer.replayed, "{step}");
                let d = answer.deduction.unwrap();
                let got = Expected {
                    status: deduction_status(&d),
                    reason: d.reason_code.clone(),
                    violations: d.violations.iter().map(|v| v.reason_code.clone()).collect(),
                    attempts: d
                        .funding_attempts
                        .iter()
                        .map(|a| {
                            (
                                a.source_index,
                                a.source_kind.clone(),
                                a.outcome.clone(),
                                a.reason_code.clone(),
                            )
                        })
                        .collect(),
                    paid_by: d.paid_by_source_index,
                };
                assert_eq!(got, expected, "{step}: {d:?}");
                assert_eq!(d.mandate_version, model.version, "{step}: judged against");
                assert_eq!(timestamp(&d.created_at), model.now, "{step}");
                if expected.status == D::Succeeded {
                    model.wallet -= minor;
                    let used = model.usage.entry(month(model.now)).or_default();
                    used.0 += minor;
                    used.1 += 1;
                    if model.single_use {
                        // Consumed: terminal, so a pending amendment is dropped with it.
                        model.status = S::Consumed;
                        model.version += 1;
                        model.pending = None;
                    }
                }
                model.debits.push(Debit {
                    id: d.deduction_id.clone(),
                    minor,
                    bill,
                    status: expected.status,
                    refunded: 0,
                    created_at: model.now,
                    limits: model.limits,
                });
            }
            Op::Refund { pick, percent } => {
                let refundable: Vec<usize> = (0..model.debits.len())
                    .filter(|&i| {
                        matches!(model.debits[i].status, D::Succeeded | D::PartiallyRefunded)
                    })
                    .collect();
                let (index, amount, allowed) = if refundable.is_empty() {
                    // Nothing to refund: a deduction that was not collected cannot be refunded.
                    if model.debits.is_empty() {
                        continue;
                    }
                    let i = pick.index(model.debits.len());
                    (i, model.debits[i].minor, false)
                } else {
                    let i = refundable[pick.index(refundable.len())];
                    let left = model.debits[i].minor - model.debits[i].refunded;
                    if percent > 100 {
                        (i, left + (percent - 100), false)
                    } else {
                        (i, (left * percent / 100).max(1), true)
                    }
                };
                let answer = clients
                    .deductions
                    .refund_deduction(pb::RefundDeductionRequest {
                        request_id: format!("rf-{n}"),
                        deduction_id: model.debits[index].id.clone(),
                        amount: cny(amount),
                        reason: "overcharged".into(),
                    })
                    .await;
                if allowed {
                    let answer = answer
                        .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                        .into_inner();
                    let debit = &mut model.debits[index];
                    debit.refunded += amount;
                    debit.status = if debit.refunded == debit.minor {
                        D::Refunded
                    } else {
                        D::PartiallyRefunded
                    };
                    model.wallet += amount;
                    let d = answer.deduction.unwrap();
                    assert_eq!(deduction_status(&d), debit.status, "{step}");
                    assert_eq!(money_minor(&d.refunded_amount), debit.refunded, "{step}");
                    assert_eq!(
                        money_minor(&answer.refund.unwrap().amount),
                        amount,
                        "{step}"
                    );
                } else {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                }
            }
            Op::Amend { change, confirm } => {
                let new = model.limits.with(change);
                let answer = clients
                    .mandates
                    .amend_mandate(pb::AmendMandateRequest {
                        mandate_id: id.clone(),
                        terms: Some(new.apply(&terms_in_force)),
                        reason: "repricing".into(),
                        request_id: String::new(),
                    })
                    .await;
                let kind = classify(model.limits, new);
                if model.status == S::Consumed {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                } else if kind == Amendment::Unchanged && model.pending.is_none() {
                    let status = answer.expect_err(&step);
                    assert_eq!(status.code(), Code::InvalidArgument, "{step}: {status:?}");
                } else {
                    let answer = answer
                        .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                        .into_inner();
                    model.version += 1;
                    let outcome = if kind == Amendment::Loosening {
                        model.pending = Some(new);
                        pb::AmendmentOutcome::PendingPayerConfirmation
                    } else {
                        // Tightening applies at once; the same terms withdraw a pending one.
                        model.limits = new;
                        model.pending = None;
                        pb::AmendmentOutcome::Applied
                    };
                    assert_eq!(answer.outcome, outcome as i32, "{step}");
                    assert_eq!(answer.mandate.unwrap().version, model.version, "{step}");
                    if kind == Amendment::Loosening && confirm {
                        let confirmed = clients
                            .payer
                            .confirm_amendment(pb::ConfirmAmendmentRequest {
                                consent: Some(consent()),
                                mandate_id: id.clone(),
                                mandate_version: model.version,
                                request_id: String::new(),
                            })
                            .await
                            .unwrap_or_else(|s| panic!("{step}: confirm: {s:?}"))
                            .into_inner()
                            .mandate
                            .unwrap();
                        model.version += 1;
                        model.limits = new;
                        model.pending = None;
                        assert_eq!(confirmed.version, model.version, "{step}");
                    }
                }
            }
            Op::Pause | Op::Resume => {
                let (from, to) = match op {
                    Op::Pause => (S::Active, S::Paused),
                    _ => (S::Paused, S::Active),
                };
                let answer = if matches!(op, Op::Pause) {
                    clients
                        .payer
                        .pause_mandate(pb::PauseMandateRequest {
                            mandate_id: id.clone(),
                            reason: "away".into(),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().mandate)
                } else {
                    clients
                        .payer
                        .resume_mandate(pb::ResumeMandateRequest {
                            mandate_id: id.clone(),
                            reason: "back".into(),
                            request_id: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().mandate)
                };
                if model.status == from {
                    let mandate = answer.unwrap_or_else(|s| panic!("{step}: {s:?}")).unwrap();
                    model.status = to;
                    model.version += 1;
                    assert_eq!(status_of(&mandate), to, "{step}");
                } else {
                    let status = answer.expect_err(&step);
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{step}: {status:?}"
                    );
                }
            }
            Op::Credit { minor } => {
                let answer = clients
                    .wallet
                    .credit_wallet(pb::CreditWalletRequest {
                        request_id: format!("cr-{n}"),
                        payer_id: "p-1".into(),
                        amount: cny(minor),
                        reason: "top-up".into(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{step}: {s:?}"))
                    .into_inner();
                model.wallet += minor;
                assert_eq!(money_minor(&answer.balance), model.wallet, "{step}");
            }
            Op::Clock { seconds } => {
                let seconds = if model.elapsed_s + seconds > MAX_ELAPSED_S {
                    600
                } else {
                    seconds
                };
                model.elapsed_s += seconds;
                app.clock.advance(SignedDuration::from_secs(seconds));
                model.now = model
                    .now
                    .checked_add(SignedDuration::from_secs(seconds))
                    .unwrap();
                assert_eq!(app.clock_now(), model.now);
            }
        }
        current = verify(&app, &mut clients, &model, &id, scenario.page_size, &step).await;
    }
    app.verify_audit().await;
}

/// Runs `cases` random scenarios of `ops` steps on `backend`, each in its own runtime and app.
fn run(backend: Backend, cases: u32, ops: std::ops::RangeInclusive<usize>) {
    let mut runner = TestRunner::new(Config {
        cases,
        // Every case is a real server; keep a failing run's shrinking bounded.
        max_shrink_iters: 24,
        // Failures print the minimal scenario; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&scenario(ops), |scenario| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(play(backend, scenario));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn random_operations_keep_limits_and_ledger_sqlite() {
    run(Backend::Sqlite, 8, 20..=40);
}

#[test]
fn random_operations_keep_limits_and_ledger_postgres() {
    run(Backend::Postgres, 4, 20..=30);
}
