//! Malformed CreateMandate requests: money, identifiers, purposes and enums, validity, periods,
//! windows and notices, text and presence.

use jiff::Timestamp;

use super::{Case, create, in_currency, terms};
use crate::harness::{money, pb};

fn ts(at: &str) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.parse::<Timestamp>().unwrap().as_second(),
        nanos: 0,
    })
}

pub(super) fn cases(cases: &mut Vec<Case>) {
    // ---- CreateMandate: money ----
    for amount in [
        "-1",
        "0",
        "0.00",
        "1.001",
        "1e3",
        " 1",
        "1 ",
        "+1",
        "1,000",
        "",
        "NaN",
        ".5",
        "5.",
        "1234567890123456",
    ] {
        cases.push(terms(
            format!("per_debit_limit amount {amount:?}"),
            move |t| t.per_debit_limit = money(amount),
            "terms.per_debit_limit.amount",
        ));
    }
    cases.push(terms(
        "per_debit_limit missing",
        |t| t.per_debit_limit = None,
        "terms.per_debit_limit",
    ));
    for currency in ["XXX", "cny", ""] {
        cases.push(terms(
            format!("per_debit_limit currency {currency:?}"),
            move |t| t.per_debit_limit = in_currency(currency, "10.00"),
            "terms.per_debit_limit.currency_code",
        ));
        cases.push(terms(
            format!("mandate currency {currency:?}"),
            move |t| t.currency_code = currency.into(),
            "terms.currency_code",
        ));
    }
    cases.push(terms(
        "per_debit_limit in USD on a CNY mandate",
        |t| t.per_debit_limit = in_currency("USD", "10.00"),
        "terms.per_debit_limit.currency_code",
    ));
    cases.push(terms(
        "JPY per_debit_limit with decimals",
        |t| {
            t.currency_code = "JPY".into();
            t.per_debit_limit = in_currency("JPY", "1.5");
        },
        "terms.per_debit_limit.amount",
    ));
    cases.push(terms(
        "period_amount_limit zero",
        |t| t.period_amount_limit = money("0"),
        "terms.period_amount_limit.amount",
    ));
    cases.push(terms(
        "period_amount_limit in USD on a CNY mandate",
        |t| t.period_amount_limit = in_currency("USD", "1000.00"),
        "terms.period_amount_limit.currency_code",
    ));
    cases.push(terms(
        "total_amount_limit negative",
        |t| t.total_amount_limit = money("-5"),
        "terms.total_amount_limit.amount",
    ));
    cases.push(terms(
        "total_amount_limit in EUR on a CNY mandate",
        |t| t.total_amount_limit = in_currency("EUR", "5000"),
        "terms.total_amount_limit.currency_code",
    ));

    // ---- CreateMandate: identifiers ----
    for (what, value) in [
        ("empty", String::new()),
        ("65 characters", "c".repeat(65)),
        ("non-ASCII", "合同".to_owned()),
        ("with a space", "c 1".to_owned()),
        ("with a slash", "c/1".to_owned()),
    ] {
        let contract = value.clone();
        cases.push(create(
            format!("merchant_contract_id {what}"),
            move |r| r.merchant_contract_id = contract.clone(),
            "merchant_contract_id",
        ));
        cases.push(create(
            format!("payer_id {what}"),
            move |r| r.payer_id = value.clone(),
            "payer_id",
        ));
    }

    // ---- CreateMandate: purposes and enums ----
    cases.push(
        terms(
            "REFUND_RECOVERY among purposes",
            |t| t.purposes.push(pb::Purpose::RefundRecovery as i32),
            "terms.purposes",
        )
        .recorded_as_policy_event(),
    );
    cases.push(
        terms(
            "REFUND_RECOVERY as the only purpose",
            |t| t.purposes = vec![pb::Purpose::RefundRecovery as i32],
            "terms.purposes",
        )
        .recorded_as_policy_event(),
    );
    cases.push(terms(
        "PURPOSE_UNSPECIFIED among purposes",
        |t| t.purposes.push(pb::Purpose::Unspecified as i32),
        "terms.purposes[1]",
    ));
    cases.push(terms(
        "unknown purpose 99",
        |t| t.purposes.push(99),
        "terms.purposes[1]",
    ));
    cases.push(terms(
        "purpose listed twice",
        |t| t.purposes.push(pb::Purpose::Utility as i32),
        "terms.purposes[1]",
    ));
    cases.push(terms(
        "no purposes",
        |t| t.purposes.clear(),
        "terms.purposes",
    ));
    cases.push(terms(
        "eleven purposes",
        |t| t.purposes = (1..=10).chain([1]).collect(),
        "terms.purposes",
    ));
    cases.push(terms(
        "AMOUNT_TYPE_UNSPECIFIED",
        |t| t.amount_type = pb::AmountType::Unspecified as i32,
        "terms.amount_type",
    ));
    cases.push(terms(
        "unknown amount type 99",
        |t| t.amount_type = 99,
        "terms.amount_type",
    ));

    // ---- CreateMandate: validity ----
    cases.push(terms(
        "valid_until before valid_from",
        |t| {
            t.valid_from = ts("2026-06-01T00:00:00Z");
            t.valid_until = ts("2026-05-01T00:00:00Z");
        },
        "terms.valid_until",
    ));
    cases.push(terms(
        "valid_until equal to valid_from",
        |t| {
            t.valid_from = ts("2026-06-01T00:00:00Z");
            t.valid_until = ts("2026-06-01T00:00:00Z");
        },
        "terms.valid_until",
    ));
    cases.push(terms(
        "valid_until in the past (valid_from defaulted)",
        |t| t.valid_until = ts("2026-02-01T00:00:00Z"),
        "terms.valid_until",
    ));
    cases.push(terms(
        "valid_until in the past, after an explicit valid_from",
        |t| {
            t.valid_from = ts("2026-01-01T00:00:00Z");
            t.valid_until = ts("2026-02-01T00:00:00Z");
        },
        "terms.valid_until",
    ));
    cases.push(terms(
        "valid_until one second before the clock",
        |t| {
            t.valid_from = ts("2026-01-01T00:00:00Z");
            t.valid_until = ts("2026-03-01T01:59:59Z");
        },
        "terms.valid_until",
    ));
    cases.push(terms(
        "valid_from nanos out of range",
        |t| {
            t.valid_from = Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: 1_000_000_000,
            });
        },
        "terms.valid_from.nanos",
    ));
    cases.push(terms(
        "valid_from nanos negative",
        |t| {
            t.valid_from = Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: -1,
            });
        },
        "terms.valid_from.nanos",
    ));

    // ---- CreateMandate: periods, windows, notices ----
    cases.push(terms(
        "period count 0",
        |t| t.period.as_mut().unwrap().count = 0,
        "terms.period.count",
    ));
    cases.push(terms(
        "period count 13",
        |t| t.period.as_mut().unwrap().count = 13,
        "terms.period.count",
    ));
    cases.push(terms(
        "PERIOD_UNIT_UNSPECIFIED",
        |t| t.period.as_mut().unwrap().unit = pb::PeriodUnit::Unspecified as i32,
        "terms.period.unit",
    ));
    cases.push(terms(
        "period without any period limit",
        |t| {
            t.period_amount_limit = None;
            t.period_debit_limit = None;
        },
        "terms.period",
    ));
    cases.push(terms(
        "period_debit_limit 0",
        |t| t.period_debit_limit = Some(0),
        "terms.period_debit_limit",
    ));
    cases.push(terms(
        "period_amount_limit without a period",
        |t| t.period = None,
        "terms.period_amount_limit",
    ));
    cases.push(terms(
        "period_debit_limit without a period",
        |t| {
            t.period = None;
            t.period_amount_limit = None;
        },
        "terms.period_debit_limit",
    ));
    cases.push(terms(
        "total_debit_limit 0",
        |t| t.total_debit_limit = Some(0),
        "terms.total_debit_limit",
    ));
    cases.push(terms(
        "collection window without a period",
        |t| {
            t.period = None;
            t.period_amount_limit = None;
            t.period_debit_limit = None;
            t.collection_window = Some(pb::CollectionWindow {
                day_of_period: 1,
                tolerance_days: 0,
            });
        },
        "terms.collection_window",
    ));
    cases.push(terms(
        "collection day 32 of a month",
        |t| {
            t.collection_window = Some(pb::CollectionWindow {
                day_of_period: 32,
                tolerance_days: 0,
            })
        },
        "terms.collection_window.day_of_period",
    ));
    cases.push(terms(
        "collection day 0",
        |t| {
            t.collection_window = Some(pb::CollectionWindow {
                day_of_period: 0,
                tolerance_days: 0,
            })
        },
        "terms.collection_window.day_of_period",
    ));
    cases.push(terms(
        "collection tolerance 16 days",
        |t| {
            t.collection_window = Some(pb::CollectionWindow {
                day_of_period: 15,
                tolerance_days: 16,
            })
        },
        "terms.collection_window.tolerance_days",
    ));
    cases.push(terms(
        "negative pre-notification lead time",
        |t| t.pre_notification = Some(pb::PreNotification { lead_time_s: -1 }),
        "terms.pre_notification.lead_time_s",
    ));
    cases.push(terms(
        "pre-notification lead time over 30 days",
        |t| {
            t.pre_notification = Some(pb::PreNotification {
                lead_time_s: 30 * 24 * 3600 + 1,
            })
        },
        "terms.pre_notification.lead_time_s",
    ));
    for zone in ["Mars/Olympus", "UTC+8", "Asia/Shang hai"] {
        cases.push(terms(
            format!("timezone {zone:?}"),
            move |t| t.timezone = zone.into(),
            "terms.timezone",
        ));
    }

    // ---- CreateMandate: text and presence ----
    cases.push(terms(
        "display_account of 257 characters",
        |t| t.display_account = "电".repeat(257),
        "terms.display_account",
    ));
    cases.push(terms(
        "display_account empty",
        |t| t.display_account.clear(),
        "terms.display_account",
    ));
    cases.push(terms(
        "display_account blank",
        |t| t.display_account = "   ".into(),
        "terms.display_account",
    ));
    cases.push(terms(
        "display_account with a control character",
        |t| t.display_account = "ELEC\n0042".into(),
        "terms.display_account",
    ));
    cases.push(create("terms missing", |r| r.terms = None, "terms"));
}
