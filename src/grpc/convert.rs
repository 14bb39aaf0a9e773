//! Proto ⇄ domain conversion. Incoming messages are destructured field by field, so a new proto
//! field fails the build until it is handled; every error names the caller's field path.

use std::collections::BTreeSet;

use jiff::Timestamp;

use crate::domain::FieldViolation;
use crate::domain::consent::{ConsentChannel, ConsentEvidence, ConsentInput, ConsentMethod};
use crate::domain::funding::{FundingSource, FundingSources, Instrument};
use crate::domain::ids::RequestId;
use crate::domain::mandate::{Mandate, MandateStatus, PendingAmendment};
use crate::domain::money::{Currency, Money};
use crate::domain::terms::{
    AmountType, CollectionWindow, Period, PeriodLimits, PeriodUnit, PreNotification, Purpose,
    Terms, TermsDraft, TimeZoneName,
};
use crate::domain::text::check_text;
use crate::pb;

type Result<T> = std::result::Result<T, FieldViolation>;

// ---- proto → domain ----

pub fn currency(field: &str, code: &str) -> Result<Currency> {
    if code.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    Currency::parse(code)
        .ok_or_else(|| FieldViolation::new(field, format!("unknown currency {code:?}")))
}

pub fn money(field: &str, value: Option<pb::Money>) -> Result<Money> {
    let pb::Money {
        currency_code,
        amount,
    } = value.ok_or_else(|| FieldViolation::new(field, "is required"))?;
    let currency = currency(&format!("{field}.currency_code"), &currency_code)?;
    Money::parse(currency, &amount)
        .map_err(|e| FieldViolation::new(format!("{field}.amount"), e.to_string()))
}

fn optional_money(field: &str, value: Option<pb::Money>) -> Result<Option<Money>> {
    value.map(|v| money(field, Some(v))).transpose()
}

/// A caller's timestamp: `nanos` must be 0 to 999,999,999 (a negative one is not normalised),
/// and the time is kept to the microsecond, like every time the service stores (finer parts
/// are dropped, towards the past).
pub fn timestamp(field: &str, value: Option<prost_types::Timestamp>) -> Result<Option<Timestamp>> {
    value
        .map(|prost_types::Timestamp { seconds, nanos }| {
            if !(0..1_000_000_000).contains(&nanos) {
                return Err(FieldViolation::new(
                    format!("{field}.nanos"),
                    "must be 0 to 999,999,999",
                ));
            }
            Timestamp::new(seconds, nanos)
                .map(crate::clock::to_microseconds)
                .map_err(|_| FieldViolation::new(field, "is out of range"))
        })
        .transpose()
}

/// A proto enum value that must be set and known.
fn enum_value<E: TryFrom<i32>>(field: &str, value: i32, unspecified: i32) -> Result<E> {
    if value == unspecified {
        return Err(FieldViolation::new(
            field,
            "is required (UNSPECIFIED is not a value)",
        ));
    }
    E::try_from(value).map_err(|_| FieldViolation::new(field, format!("unknown value {value}")))
}

pub fn purpose(field: &str, value: i32) -> Result<Purpose> {
    use pb::Purpose as P;
    Ok(
        match enum_value::<P>(field, value, P::Unspecified as i32)? {
            P::Unspecified => unreachable!("refused by enum_value"),
            P::Utility => Purpose::Utility,
            P::Telecom => Purpose::Telecom,
            P::LoanRepayment => Purpose::LoanRepayment,
            P::InsurancePremium => Purpose::InsurancePremium,
            P::Subscription => Purpose::Subscription,
            P::Membership => Purpose::Membership,
            P::TransitToll => Purpose::TransitToll,
            P::GovernmentFee => Purpose::GovernmentFee,
            P::Education => Purpose::Education,
            P::Other => Purpose::Other,
            P::RefundRecovery => Purpose::RefundRecovery,
        },
    )
}

pub fn mandate_status(field: &str, value: i32) -> Result<MandateStatus> {
    use pb::MandateStatus as S;
    Ok(
        match enum_value::<S>(field, value, S::Unspecified as i32)? {
            S::Unspecified => unreachable!("refused by enum_value"),
            S::PendingConsent => MandateStatus::PendingConsent,
            S::Active => MandateStatus::Active,
            S::Paused => MandateStatus::Paused,
            S::Suspended => MandateStatus::Suspended,
            S::Revoked => MandateStatus::Revoked,
            S::Terminated => MandateStatus::Terminated,
            S::Expired => MandateStatus::Expired,
            S::Consumed => MandateStatus::Consumed,
        },
    )
}

fn period_unit(field: &str, value: i32) -> Result<PeriodUnit> {
    use pb::PeriodUnit as U;
    Ok(
        match enum_value::<U>(field, value, U::Unspecified as i32)? {
            U::Unspecified => unreachable!("refused by enum_value"),
            U::Day => PeriodUnit::Day,
            U::Week => PeriodUnit::Week,
            U::Month => PeriodUnit::Month,
            U::Quarter => PeriodUnit::Quarter,
            U::Year => PeriodUnit::Year,
        },
    )
}

pub fn terms(value: Option<pb::MandateTerms>) -> Result<TermsDraft> {
    let pb::MandateTerms {
        display_account,
        purposes,
        currency_code,
        amount_type,
        per_debit_limit,
        period,
        period_amount_limit,
        period_debit_limit,
        total_amount_limit,
        total_debit_limit,
        valid_from,
        valid_until,
        collection_window,
        pre_notification,
        timezone,
        single_use,
    } = value.ok_or_else(|| FieldViolation::new("terms", "is required"))?;
    check_text("terms.display_account", &display_account)?;
    if purposes.len() > crate::domain::terms::MAX_PURPOSES {
        return Err(FieldViolation::new("terms.purposes", "too many purposes"));
    }
    let mut purpose_set = BTreeSet::new();
    for (i, value) in purposes.into_iter().enumerate() {
        let field = format!("terms.purposes[{i}]");
        if !purpose_set.insert(purpose(&field, value)?) {
            return Err(FieldViolation::new(field, "is listed twice"));
        }
    }
    let amount_type = {
        use pb::AmountType as A;
        match enum_value::<A>("terms.amount_type", amount_type, A::Unspecified as i32)? {
            A::Unspecified => unreachable!("refused by enum_value"),
            A::Fixed => AmountType::Fixed,
            A::Maximum => AmountType::Maximum,
        }
    };
    let period_limits = match period {
        Some(pb::Period { unit, count }) => Some(PeriodLimits {
            period: Period {
                unit: period_unit("terms.period.unit", unit)?,
                count,
            },
            amount_limit: optional_money("terms.period_amount_limit", period_amount_limit)?,
            debit_limit: period_debit_limit,
        }),
        None if period_amount_limit.is_some() => {
            return Err(FieldViolation::new(
                "terms.period_amount_limit",
                "needs a period",
            ));
        }
        None if period_debit_limit.is_some() => {
            return Err(FieldViolation::new(
                "terms.period_debit_limit",
                "needs a period",
            ));
        }
        None => None,
    };
    let timezone = if timezone.is_empty() {
        TimeZoneName::default()
    } else {
        TimeZoneName::parse("terms.timezone", &timezone)?
    };
    Ok(TermsDraft {
        display_account,
        purposes: purpose_set,
        currency: currency("terms.currency_code", &currency_code)?,
        amount_type,
        per_debit_limit: money("terms.per_debit_limit", per_debit_limit)?,
        period_limits,
        total_amount_limit: optional_money("terms.total_amount_limit", total_amount_limit)?,
        total_debit_limit,
        valid_from: timestamp("terms.valid_from", valid_from)?,
        valid_until: timestamp("terms.valid_until", valid_until)?,
        collection_window: collection_window.map(
            |pb::CollectionWindow {
                 day_of_period,
                 tolerance_days,
             }| CollectionWindow {
                day_of_period,
                tolerance_days,
            },
        ),
        pre_notification: pre_notification
            .map(|pb::PreNotification { lead_time_s }| PreNotification { lead_time_s }),
        timezone,
        single_use,
    })
}

pub fn consent(value: Option<pb::ConsentEvidence>) -> Result<ConsentInput> {
    let pb::ConsentEvidence {
        channel,
        method,
        device_id,
        user_agent,
        ip_address,
        terms_version,
        terms_digest,
        // Set by the server; whatever a client sends is ignored.
        captured_at: _,
        mandate_version: _,
    } = value.ok_or_else(|| FieldViolation::new("consent", "is required"))?;
    let channel = {
        use pb::ConsentChannel as C;
        match enum_value::<C>("consent.channel", channel, C::Unspecified as i32)? {
            C::Unspecified => unreachable!("refused by enum_value"),
            C::App => ConsentChannel::App,
            C::H5 => ConsentChannel::H5,
            C::MiniProgram => ConsentChannel::MiniProgram,
            C::Paper => ConsentChannel::Paper,
        }
    };
    let method = {
        use pb::ConsentMethod as M;
        match enum_value::<M>("consent.method", method, M::Unspecified as i32)? {
            M::Unspecified => unreachable!("refused by enum_value"),
            M::Password => ConsentMethod::Password,
            M::Biometric => ConsentMethod::Biometric,
            M::SmsOtp => ConsentMethod::SmsOtp,
        }
    };
    Ok(ConsentInput {
        channel,
        method,
        device_id,
        user_agent,
        ip_address,
        terms_version,
        terms_digest,
    })
}

pub fn funding_sources(values: Vec<pb::FundingSource>) -> Result<Vec<FundingSource>> {
    if values.len() > crate::domain::funding::MAX_FUNDING_SOURCES {
        return Err(FieldViolation::new(
            "funding_sources",
            format!(
                "must list 1 to {} sources",
                crate::domain::funding::MAX_FUNDING_SOURCES
            ),
        ));
    }
    values
        .into_iter()
        .enumerate()
        .map(
            |(
                i,
                pb::FundingSource {
                    instrument,
                    cap_per_debit,
                },
            )| {
                let field = format!("funding_sources[{i}]");
                let instrument = match instrument {
                    Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})) => {
                        Instrument::Wallet
                    }
                    Some(pb::funding_source::Instrument::BankCard(pb::BankCardSource {
                        vault_token,
                        bank_name,
                        last_four,
                    })) => Instrument::bank_card(
                        &format!("{field}.bank_card"),
                        &vault_token,
                        &bank_name,
                        &last_four,
                    )?,
                    None => return Err(FieldViolation::new(field, "needs wallet or bank_card")),
                };
                Ok(FundingSource {
                    instrument,
                    cap_per_debit: optional_money(
                        &format!("{field}.cap_per_debit"),
                        cap_per_debit,
                    )?,
                })
            },
        )
        .collect()
}

/// An optional idempotency key: empty means none.
pub fn request_id(value: &str) -> Result<Option<RequestId>> {
    if value.is_empty() {
        Ok(None)
    } else {
        RequestId::parse("request_id", value).map(Some)
    }
}

/// Optional free text.
pub fn reason(value: String) -> Result<String> {
    check_text("reason", &value)?;
    Ok(value)
}

/// A mandate version the payer was shown.
pub fn shown_version(value: i64) -> Result<i64> {
    if value < 1 {
        return Err(FieldViolation::new(
            "mandate_version",
            "is required: the version shown to the payer",
        ));
    }
    Ok(value)
}

// ---- domain → proto ----

pub fn to_timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: at.subsec_nanosecond(),
    }
}

pub fn to_money(money: &Money) -> pb::Money {
    pb::Money {
        currency_code: money.currency().code().to_owned(),
        amount: money.amount_text(),
    }
}

pub fn to_status(status: MandateStatus) -> pb::MandateStatus {
    match status {
        MandateStatus::PendingConsent => pb::MandateStatus::PendingConsent,
        MandateStatus::Active => pb::MandateStatus::Active,
        MandateStatus::Paused => pb::MandateStatus::Paused,
        MandateStatus::Suspended => pb::MandateStatus::Suspended,
        MandateStatus::Revoked => pb::MandateStatus::Revoked,
        MandateStatus::Terminated => pb::MandateStatus::Terminated,
        MandateStatus::Expired => pb::MandateStatus::Expired,
        MandateStatus::Consumed => pb::MandateStatus::Consumed,
    }
}

fn to_purpose(purpose: Purpose) -> pb::Purpose {
    match purpose {
        Purpose::Utility => pb::Purpose::Utility,
        Purpose::Telecom => pb::Purpose::Telecom,
        Purpose::LoanRepayment => pb::Purpose::LoanRepayment,
        Purpose::InsurancePremium => pb::Purpose::InsurancePremium,
        Purpose::Subscription => pb::Purpose::Subscription,
        Purpose::Membership => pb::Purpose::Membership,
        Purpose::TransitToll => pb::Purpose::TransitToll,
        Purpose::GovernmentFee => pb::Purpose::GovernmentFee,
        Purpose::Education => pb::Purpose::Education,
        Purpose::Other => pb::Purpose::Other,
        Purpose::RefundRecovery => pb::Purpose::RefundRecovery,
    }
}

pub fn to_terms(terms: &Terms) -> pb::MandateTerms {
    let Terms {
        display_account,
        purposes,
        currency,
        amount_type,
        per_debit_limit,
        period_limits,
        total_amount_limit,
        total_debit_limit,
        valid_from,
        valid_until,
        collection_window,
        pre_notification,
        timezone,
        single_use,
    } = terms;
    pb::MandateTerms {
        display_account: display_account.clone(),
        purposes: purposes.iter().map(|p| to_purpose(*p) as i32).collect(),
        currency_code: currency.code().to_owned(),
        amount_type: match amount_type {
            AmountType::Fixed => pb::AmountType::Fixed,
            AmountType::Maximum => pb::AmountType::Maximum,
        } as i32,
        per_debit_limit: Some(to_money(per_debit_limit)),
        period: period_limits.as_ref().map(|l| pb::Period {
            unit: match l.period.unit {
                PeriodUnit::Day => pb::PeriodUnit::Day,
                PeriodUnit::Week => pb::PeriodUnit::Week,
                PeriodUnit::Month => pb::PeriodUnit::Month,
                PeriodUnit::Quarter => pb::PeriodUnit::Quarter,
                PeriodUnit::Year => pb::PeriodUnit::Year,
            } as i32,
            count: l.period.count,
        }),
        period_amount_limit: period_limits
            .as_ref()
            .and_then(|l| l.amount_limit.as_ref())
            .map(to_money),
        period_debit_limit: period_limits.as_ref().and_then(|l| l.debit_limit),
        total_amount_limit: total_amount_limit.as_ref().map(to_money),
        total_debit_limit: *total_debit_limit,
        valid_from: Some(to_timestamp(*valid_from)),
        valid_until: valid_until.map(to_timestamp),
        collection_window: collection_window.map(|w| pb::CollectionWindow {
            day_of_period: w.day_of_period,
            tolerance_days: w.tolerance_days,
        }),
        pre_notification: pre_notification.map(|n| pb::PreNotification {
            lead_time_s: n.lead_time_s,
        }),
        timezone: timezone.as_str().to_owned(),
        single_use: *single_use,
    }
}

fn to_consent(consent: &ConsentEvidence) -> pb::ConsentEvidence {
    let ConsentEvidence {
        channel,
        method,
        device_id,
        user_agent,
        ip_address,
        terms_version,
        terms_digest,
        captured_at,
        mandate_version,
    } = consent;
    pb::ConsentEvidence {
        channel: match channel {
            ConsentChannel::App => pb::ConsentChannel::App,
            ConsentChannel::H5 => pb::ConsentChannel::H5,
            ConsentChannel::MiniProgram => pb::ConsentChannel::MiniProgram,
            ConsentChannel::Paper => pb::ConsentChannel::Paper,
        } as i32,
        method: match method {
            ConsentMethod::Password => pb::ConsentMethod::Password,
            ConsentMethod::Biometric => pb::ConsentMethod::Biometric,
            ConsentMethod::SmsOtp => pb::ConsentMethod::SmsOtp,
        } as i32,
        device_id: device_id.clone(),
        user_agent: user_agent.clone(),
        ip_address: ip_address.to_string(),
        terms_version: terms_version.clone(),
        terms_digest: terms_digest.clone(),
        captured_at: Some(to_timestamp(*captured_at)),
        mandate_version: *mandate_version,
    }
}

fn to_funding_sources(sources: Option<&FundingSources>) -> Vec<pb::FundingSource> {
    let Some(sources) = sources else {
        return vec![];
    };
    sources
        .as_slice()
        .iter()
        .map(
            |FundingSource {
                 instrument,
                 cap_per_debit,
             }| pb::FundingSource {
                instrument: Some(match instrument {
                    Instrument::Wallet => {
                        pb::funding_source::Instrument::Wallet(pb::WalletSource {})
                    }
                    Instrument::BankCard {
                        vault_token,
                        bank_name,
                        last_four,
                    } => pb::funding_source::Instrument::BankCard(pb::BankCardSource {
                        vault_token: vault_token.clone(),
                        bank_name: bank_name.clone(),
                        last_four: last_four.clone(),
                    }),
                }),
                cap_per_debit: cap_per_debit.as_ref().map(to_money),
            },
        )
        .collect()
}

pub fn to_mandate(mandate: &Mandate) -> pb::Mandate {
    let Mandate {
        id,
        merchant_id,
        contract_id,
        payer_id,
        terms,
        funding_sources,
        consent,
        amendment_consents,
        status,
        suspended_from,
        pending_amendment,
        version,
        status_reason,
        consent_deadline,
        last_activity_at: _,
        last_refund_at: _,
        created_at,
        updated_at,
    } = mandate;
    pb::Mandate {
        mandate_id: id.to_string(),
        merchant_id: merchant_id.to_string(),
        merchant_contract_id: contract_id.to_string(),
        payer_id: payer_id.to_string(),
        terms: Some(to_terms(terms)),
        funding_sources: to_funding_sources(funding_sources.as_ref()),
        consent: consent.as_ref().map(to_consent),
        amendment_consents: amendment_consents.iter().map(to_consent).collect(),
        status: to_status(*status) as i32,
        suspended_from: suspended_from.map_or(pb::MandateStatus::Unspecified, to_status) as i32,
        pending_amendment: pending_amendment.as_ref().map(
            |PendingAmendment {
                 terms,
                 requested_at,
                 reason,
             }| {
                pb::PendingAmendment {
                    terms: Some(to_terms(terms)),
                    requested_at: Some(to_timestamp(*requested_at)),
                    reason: reason.clone(),
                }
            },
        ),
        version: *version,
        consent_deadline: Some(to_timestamp(*consent_deadline)),
        created_at: Some(to_timestamp(*created_at)),
        updated_at: Some(to_timestamp(*updated_at)),
        status_reason: status_reason.clone(),
    }
}

// ---- deductions ----

use crate::domain::deduction::{
    Approval, ApprovalStatus, Deduction, DeductionFlag, DeductionStatus, FundingAttempt, Notice,
    Refund, Violation,
};

pub fn deduction_status(field: &str, value: i32) -> Result<DeductionStatus> {
    use pb::DeductionStatus as S;
    Ok(
        match enum_value::<S>(field, value, S::Unspecified as i32)? {
            S::Unspecified => unreachable!("refused by enum_value"),
            S::Declined => DeductionStatus::Declined,
            S::Processing => DeductionStatus::Processing,
            S::Succeeded => DeductionStatus::Succeeded,
            S::Failed => DeductionStatus::Failed,
            S::PendingConfirmation => DeductionStatus::PendingConfirmation,
            S::Refunded => DeductionStatus::Refunded,
            S::PartiallyRefunded => DeductionStatus::PartiallyRefunded,
        },
    )
}

pub fn to_deduction_status(status: DeductionStatus) -> pb::DeductionStatus {
    match status {
        DeductionStatus::Declined => pb::DeductionStatus::Declined,
        DeductionStatus::Processing => pb::DeductionStatus::Processing,
        DeductionStatus::Succeeded => pb::DeductionStatus::Succeeded,
        DeductionStatus::Failed => pb::DeductionStatus::Failed,
        DeductionStatus::PendingConfirmation => pb::DeductionStatus::PendingConfirmation,
        DeductionStatus::Refunded => pb::DeductionStatus::Refunded,
        DeductionStatus::PartiallyRefunded => pb::DeductionStatus::PartiallyRefunded,
    }
}

pub fn to_violation(v: &Violation) -> pb::Violation {
    pb::Violation {
        reason_code: v.code.as_str().to_owned(),
        description: v.description.clone(),
    }
}

/// Money of `minor` units, where zero is allowed (balances, refunded totals).
pub fn to_money_minor(currency: Currency, minor: i64) -> pb::Money {
    pb::Money {
        currency_code: currency.code().to_owned(),
        amount: Money::minor_text(currency, minor),
    }
}

pub fn to_flags(flags: &[DeductionFlag]) -> Vec<i32> {
    flags
        .iter()
        .map(|flag| match flag {
            DeductionFlag::SuspectedRefundRecovery => {
                pb::DeductionFlag::SuspectedRefundRecovery as i32
            }
        })
        .collect()
}

pub fn to_deduction(d: &Deduction) -> pb::Deduction {
    let Deduction {
        id,
        mandate_id,
        merchant_id,
        payer_id,
        request_id,
        request,
        description,
        status,
        reason_code,
        violations,
        mandate_version,
        flags,
        attempts,
        paid_by,
        refunded_minor,
        usage_keys: _,
        created_at,
        updated_at,
    } = d;
    pb::Deduction {
        deduction_id: id.clone(),
        mandate_id: mandate_id.to_string(),
        merchant_id: merchant_id.to_string(),
        payer_id: payer_id.to_string(),
        request_id: request_id.clone(),
        amount: Some(to_money(&request.amount)),
        purpose: to_purpose(request.purpose) as i32,
        bill_reference: request.bill_reference.to_string(),
        description: description.clone(),
        notice_id: request.notice_id.clone().unwrap_or_default(),
        one_off_approval_id: request.approval_id.clone().unwrap_or_default(),
        status: to_deduction_status(*status) as i32,
        reason_code: reason_code.clone().unwrap_or_default(),
        violations: violations.iter().map(to_violation).collect(),
        mandate_version: *mandate_version,
        funding_attempts: attempts
            .iter()
            .map(
                |FundingAttempt {
                     source_index,
                     source_kind,
                     outcome,
                     reason_code,
                     charge_id,
                 }| pb::FundingAttempt {
                    source_index: u32::try_from(*source_index).unwrap_or(u32::MAX),
                    source_kind: source_kind.as_str().to_owned(),
                    outcome: outcome.as_str().to_owned(),
                    reason_code: reason_code.clone(),
                    charge_id: charge_id.clone(),
                },
            )
            .collect(),
        paid_by_source_index: paid_by.map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
        refunded_amount: Some(to_money_minor(request.amount.currency(), *refunded_minor)),
        created_at: Some(to_timestamp(*created_at)),
        updated_at: Some(to_timestamp(*updated_at)),
        flags: to_flags(flags),
    }
}

pub fn to_notice(n: &Notice) -> pb::Notice {
    let Notice {
        id,
        mandate_id,
        merchant_id: _,
        payer_id: _,
        amount,
        due_at,
        bill_reference,
        created_at,
        used_by,
    } = n;
    pb::Notice {
        notice_id: id.clone(),
        mandate_id: mandate_id.to_string(),
        amount: Some(to_money(amount)),
        due_at: Some(to_timestamp(*due_at)),
        bill_reference: bill_reference.to_string(),
        created_at: Some(to_timestamp(*created_at)),
        used_by_deduction_id: used_by.clone().unwrap_or_default(),
    }
}

pub fn to_refund(r: &Refund) -> pb::Refund {
    let Refund {
        id,
        deduction_id,
        amount,
        reason,
        created_at,
    } = r;
    pb::Refund {
        refund_id: id.clone(),
        deduction_id: deduction_id.clone(),
        amount: Some(to_money(amount)),
        reason: reason.clone(),
        created_at: Some(to_timestamp(*created_at)),
    }
}

pub fn to_approval(a: &Approval) -> pb::OneOffApproval {
    let Approval {
        id,
        mandate_id,
        merchant_id: _,
        payer_id: _,
        declined_deduction_id,
        amount,
        purpose,
        bill_reference,
        reason,
        status,
        requested_at,
        decided_at,
        expires_at,
        used_by,
    } = a;
    pb::OneOffApproval {
        approval_id: id.clone(),
        mandate_id: mandate_id.to_string(),
        declined_deduction_id: declined_deduction_id.clone(),
        amount: Some(to_money(amount)),
        purpose: to_purpose(*purpose) as i32,
        bill_reference: bill_reference.to_string(),
        reason: reason.clone(),
        status: match status {
            ApprovalStatus::Pending => pb::ApprovalStatus::Pending,
            ApprovalStatus::Approved => pb::ApprovalStatus::Approved,
            ApprovalStatus::Rejected => pb::ApprovalStatus::Rejected,
            ApprovalStatus::Used => pb::ApprovalStatus::Used,
        } as i32,
        requested_at: Some(to_timestamp(*requested_at)),
        decided_at: decided_at.map(to_timestamp),
        expires_at: Some(to_timestamp(*expires_at)),
        used_by_deduction_id: used_by.clone().unwrap_or_default(),
    }
}

/// A required identifier.
pub fn identifier(field: &str, value: &str) -> Result<String> {
    crate::domain::text::check_identifier(field, value)?;
    Ok(value.to_owned())
}

/// An optional identifier: empty means none.
pub fn optional_identifier(field: &str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        Ok(None)
    } else {
        identifier(field, value).map(Some)
    }
}
