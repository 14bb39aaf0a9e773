//! Request builders: well-formed requests and terms most tests start from, and the enums of
//! answers read back.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::pb;

pub fn money(amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: "CNY".into(),
        amount: amount.into(),
    })
}

/// Utility terms: up to 500.00 a debit, 1000.00 and 2 debits a month, for a year.
pub fn utility_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        display_account: "ELEC-0042".into(),
        purposes: vec![pb::Purpose::Utility as i32],
        currency_code: "CNY".into(),
        amount_type: pb::AmountType::Maximum as i32,
        per_debit_limit: money("500.00"),
        period: Some(pb::Period {
            unit: pb::PeriodUnit::Month as i32,
            count: 1,
        }),
        period_amount_limit: money("1000.00"),
        period_debit_limit: Some(2),
        total_amount_limit: None,
        total_debit_limit: None,
        valid_from: None,
        valid_until: Some(prost_types::Timestamp {
            seconds: "2027-03-01T00:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second(),
            nanos: 0,
        }),
        collection_window: None,
        pre_notification: None,
        timezone: String::new(),
        single_use: false,
    }
}

/// `terms` with room for many debits a month: up to 500.00 a debit, 50 debits and 10000.00 a
/// month, for a year.
pub fn roomy_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        period_amount_limit: money("10000.00"),
        period_debit_limit: Some(50),
        ..utility_terms()
    }
}

pub fn create_request(contract: &str, payer: &str) -> pb::CreateMandateRequest {
    pb::CreateMandateRequest {
        merchant_contract_id: contract.into(),
        payer_id: payer.into(),
        terms: Some(utility_terms()),
    }
}

pub fn consent() -> pb::ConsentEvidence {
    pb::ConsentEvidence {
        channel: pb::ConsentChannel::App as i32,
        method: pb::ConsentMethod::Biometric as i32,
        device_id: "iphone-7f3a".into(),
        user_agent: String::new(),
        ip_address: "203.0.113.7".into(),
        terms_version: "withholding-terms-2026.1".into(),
        terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        captured_at: None,
        mandate_version: 0,
    }
}

/// The payer's wallet up to 200.00 a debit, then card `tok_9a8b7c`.
pub fn wallet_then_card() -> Vec<pb::FundingSource> {
    vec![
        wallet_funding(Some("200.00")),
        card_funding("tok_9a8b7c", None),
    ]
}

pub fn confirm_request(mandate: &pb::Mandate) -> pb::ConfirmMandateRequest {
    pb::ConfirmMandateRequest {
        mandate_id: mandate.mandate_id.clone(),
        mandate_version: mandate.version,
        consent: Some(consent()),
        funding_sources: wallet_then_card(),
        request_id: String::new(),
    }
}

/// A deduction request for `amount` CNY of purpose UTILITY on `bill`.
pub fn collect(
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    bill: &str,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        request_id: request_id.into(),
        mandate_id: mandate_id.into(),
        amount: money(amount),
        purpose: pb::Purpose::Utility as i32,
        bill_reference: bill.into(),
        description: "electricity".into(),
        notice_id: String::new(),
        one_off_approval_id: String::new(),
    }
}

pub fn status_of(mandate: &pb::Mandate) -> pb::MandateStatus {
    pb::MandateStatus::try_from(mandate.status).unwrap()
}

pub fn deduction_status(d: &pb::Deduction) -> pb::DeductionStatus {
    pb::DeductionStatus::try_from(d.status).unwrap()
}

/// The reason codes of a deduction's violations, in order.
pub fn violation_codes(violations: &[pb::Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.reason_code.as_str()).collect()
}

pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// An RFC 3339 time.
pub fn at(text: &str) -> Timestamp {
    text.parse().expect("an RFC 3339 time")
}

/// `at` as an optional protobuf timestamp field, to the nanosecond.
pub fn pb_time(at: Timestamp) -> Option<prost_types::Timestamp> {
    Some(proto_time(at))
}

/// The day of the month of `at` in Asia/Shanghai (the default mandate time zone).
pub fn shanghai_day(at: Timestamp) -> u32 {
    let zone = TimeZone::get("Asia/Shanghai").unwrap();
    u32::try_from(at.to_zoned_datetime(zone).date().day()).unwrap()
}

/// 1234 → "12.34".
pub fn fmt_minor(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// `at` as a protobuf timestamp, to the nanosecond.
pub fn proto_time(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: at.subsec_nanosecond(),
    }
}

/// The payer's wallet as a funding source, with an optional cap per debit.
pub fn wallet_funding(cap: Option<&str>) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
        cap_per_debit: cap.and_then(money),
    }
}

/// A bank card (vault token `token`) as a funding source, with an optional cap per debit.
pub fn card_funding(token: &str, cap: Option<&str>) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::BankCard(
            pb::BankCardSource {
                vault_token: token.into(),
                bank_name: "ICBC".into(),
                last_four: "4242".into(),
            },
        )),
        cap_per_debit: cap.and_then(money),
    }
}

/// The payer's wallet alone, without a cap per debit.
pub fn wallet_only() -> Vec<pb::FundingSource> {
    vec![wallet_funding(None)]
}

/// The utility terms with a lower per-debit limit: a tightening amendment.
pub fn tighter_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("400.00"),
        ..utility_terms()
    }
}

/// The utility terms with a higher per-debit limit: a loosening amendment.
pub fn looser_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money("800.00"),
        ..utility_terms()
    }
}

pub fn with_purpose(
    req: pb::CreateDeductionRequest,
    purpose: pb::Purpose,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        purpose: purpose as i32,
        ..req
    }
}

pub fn with_notice(
    req: pb::CreateDeductionRequest,
    notice: &pb::Notice,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        notice_id: notice.notice_id.clone(),
        ..req
    }
}

/// A collection that uses a one-off approval.
pub fn with_approval(
    request_id: &str,
    mandate_id: &str,
    amount: &str,
    purpose: pb::Purpose,
    bill: &str,
    approval_id: &str,
) -> pb::CreateDeductionRequest {
    pb::CreateDeductionRequest {
        purpose: purpose as i32,
        one_off_approval_id: approval_id.into(),
        ..collect(request_id, mandate_id, amount, bill)
    }
}

pub fn refund_request(
    request_id: &str,
    deduction_id: &str,
    amount: &str,
) -> pb::RefundDeductionRequest {
    pb::RefundDeductionRequest {
        request_id: request_id.into(),
        deduction_id: deduction_id.into(),
        amount: money(amount),
        reason: "customer complaint".into(),
    }
}

pub fn credit_request(request_id: &str, payer: &str, amount: &str) -> pb::CreditWalletRequest {
    pb::CreditWalletRequest {
        request_id: request_id.into(),
        payer_id: payer.into(),
        amount: money(amount),
        reason: "top-up".into(),
    }
}

pub fn approval_status(a: &pb::OneOffApproval) -> pb::ApprovalStatus {
    pb::ApprovalStatus::try_from(a.status).unwrap()
}

/// How much of a deduction was refunded ("" before any refund was recorded on it).
pub fn refunded(d: &pb::Deduction) -> &str {
    d.refunded_amount.as_ref().map_or("", |m| m.amount.as_str())
}
