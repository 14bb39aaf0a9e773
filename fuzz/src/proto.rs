//! Target `proto_to_domain`: arbitrary bytes decoded as one of the 25 request messages of
//! `withholding.v1`, then run through the conversions its handler makes (`grpc::convert` and the
//! identifier and text checks the handlers call inline), and on to the pure domain steps the
//! service takes with what the caller sent (completing and cross-checking terms, consent
//! evidence, funding sources, the amendment rule, periods, expiry and the deduction checks).
//!
//! The first byte picks the message (`MESSAGES[byte % 25]`); the rest is the encoded message.
//! Every conversion runs whether or not an earlier one failed, to reach more code per input.
//! Beyond "no panic and no overflow" (overflow checks are on in fuzz builds), terms that pass
//! must survive domain → proto → domain unchanged.
//!
//! Accepted values must also meet rules of DESIGN §7 beyond what the types say: timestamp
//! `nanos` in 0..1e9 and times kept to the microsecond, no card number (however written) as a
//! vault token, time zones under their canonical (primary) IANA name.

use std::sync::LazyLock;

use jiff::{Span, Timestamp};
use prost::Message;
use withholding::domain::FieldViolation;
use withholding::domain::bill::BillReference;
use withholding::domain::consent::{ConsentChannel, ConsentEvidence, ConsentInput, ConsentMethod};
use withholding::domain::deduction::{self, BillHistory, DebitRequest, Facts, Usage};
use withholding::domain::funding::{FundingSource, FundingSources, Instrument};
use withholding::domain::ids::{ContractId, MandateId, MerchantId, PayerId};
use withholding::domain::mandate::{Mandate, NewMandate};
use withholding::domain::money::{Currency, Money};
use withholding::domain::rules;
use withholding::domain::terms::{
    AmountType, Period, PeriodLimits, PeriodUnit, Purpose, Terms, TermsDraft, TimeZoneName,
};
use withholding::domain::text::{check_required_text, check_text, contains_card_number};
use withholding::grpc::convert;
use withholding::pb;

/// The request messages, in selector order.
pub const MESSAGES: [&str; 25] = [
    "CreateMandateRequest",
    "GetMandateRequest",
    "ListMandatesRequest",
    "ConfirmMandateRequest",
    "SetFundingSourcesRequest",
    "PauseMandateRequest",
    "ResumeMandateRequest",
    "SuspendMandateRequest",
    "ReinstateMandateRequest",
    "RevokeMandateRequest",
    "TerminateMandateRequest",
    "AmendMandateRequest",
    "ConfirmAmendmentRequest",
    "NotifyUpcomingDebitRequest",
    "ListNoticesRequest",
    "CreateDeductionRequest",
    "CheckDeductionRequest",
    "GetDeductionRequest",
    "ListDeductionsRequest",
    "RefundDeductionRequest",
    "RequestOneOffApprovalRequest",
    "ApproveOneOffRequest",
    "RejectOneOffRequest",
    "CreditWalletRequest",
    "GetWalletBalanceRequest",
];

/// A fuzz input for `message`, whose name is one of [`MESSAGES`] (for seed corpora).
pub fn input(name: &str, message: &impl Message) -> Vec<u8> {
    let selector = MESSAGES
        .iter()
        .position(|m| *m == name)
        .unwrap_or_else(|| panic!("unknown message {name}"));
    let mut bytes = vec![u8::try_from(selector).expect("25 messages")];
    bytes.extend(message.encode_to_vec());
    bytes
}

pub fn check(data: &[u8]) {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    // A message that does not decode is refused by tonic before any handler runs.
    let _ = match usize::from(*selector) % MESSAGES.len() {
        0 => decode(body).map(create_mandate),
        1 => decode(body).map(get_mandate),
        2 => decode(body).map(list_mandates),
        3 => decode(body).map(confirm_mandate),
        4 => decode(body).map(set_funding_sources),
        5 => decode(body).map(|m: pb::PauseMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        6 => decode(body).map(|m: pb::ResumeMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        7 => decode(body).map(|m: pb::SuspendMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        8 => decode(body).map(|m: pb::ReinstateMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        9 => decode(body).map(|m: pb::RevokeMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        10 => decode(body).map(|m: pb::TerminateMandateRequest| {
            reason_change(&m.mandate_id, m.reason, &m.request_id)
        }),
        11 => decode(body).map(amend_mandate),
        12 => decode(body).map(confirm_amendment),
        13 => decode(body).map(notify_upcoming_debit),
        14 => decode(body).map(list_notices),
        15 => decode(body).map(create_deduction),
        16 => decode(body).map(check_deduction),
        17 => decode(body).map(|m: pb::GetDeductionRequest| {
            let _ = convert::identifier("deduction_id", &m.deduction_id);
        }),
        18 => decode(body).map(list_deductions),
        19 => decode(body).map(refund_deduction),
        20 => decode(body).map(request_one_off_approval),
        21 => decode(body).map(|m: pb::ApproveOneOffRequest| {
            let _ = convert::identifier("approval_id", &m.approval_id);
        }),
        22 => decode(body).map(reject_one_off),
        23 => decode(body).map(credit_wallet),
        24 => decode(body).map(get_wallet_balance),
        _ => unreachable!("selector is taken modulo MESSAGES.len()"),
    };
}

fn decode<M: Message + Default>(body: &[u8]) -> Result<M, prost::DecodeError> {
    M::decode(body)
}

/// The instant the service's clock reads in these checks.
fn now() -> Timestamp {
    Timestamp::from_second(1_772_323_200).expect("2026-03-01T00:00:00Z")
}

// ---- the handlers' conversions, message by message ----

fn create_mandate(m: pb::CreateMandateRequest) {
    let pb::CreateMandateRequest {
        merchant_contract_id,
        payer_id,
        terms,
    } = m;
    let _ = ContractId::parse("merchant_contract_id", &merchant_contract_id);
    let _ = PayerId::parse("payer_id", &payer_id);
    // The service completes new terms with `valid_from` defaulting to now.
    if let Ok(draft) = convert::terms(terms)
        && let Ok(terms) = draft.complete(now())
    {
        check_terms(&terms);
    }
}

fn get_mandate(m: pb::GetMandateRequest) {
    let pb::GetMandateRequest { mandate_id, as_of } = m;
    let _ = MandateId::parse("mandate_id", &mandate_id);
    check_timestamp("as_of", as_of);
}

fn list_mandates(m: pb::ListMandatesRequest) {
    let pb::ListMandatesRequest {
        payer_id,
        merchant_id,
        status,
        // `page_size` goes to `service::mandates::page_limit` and `page_token` to
        // `grpc::decode_page_token`; both are `pub(crate)`, out of reach from here.
        page_size: _,
        page_token: _,
        merchant_contract_id,
    } = m;
    let _ = PayerId::parse("payer_id", &payer_id);
    let _ = MerchantId::parse("merchant_id", &merchant_id);
    let _ = ContractId::parse("merchant_contract_id", &merchant_contract_id);
    let _ = convert::mandate_status("status", status);
}

fn confirm_mandate(m: pb::ConfirmMandateRequest) {
    let pb::ConfirmMandateRequest {
        mandate_id,
        mandate_version,
        consent,
        funding_sources,
        request_id,
    } = m;
    let _ = convert::shown_version(mandate_version);
    if let Ok(input) = convert::consent(consent) {
        let _ = ConsentEvidence::new(input, now(), mandate_version);
    }
    check_funding_sources(funding_sources);
    check_change(&mandate_id, &request_id);
}

fn set_funding_sources(m: pb::SetFundingSourcesRequest) {
    let pb::SetFundingSourcesRequest {
        mandate_id,
        funding_sources,
        request_id,
    } = m;
    check_funding_sources(funding_sources);
    check_change(&mandate_id, &request_id);
}

fn reason_change(mandate_id: &str, reason: String, request_id: &str) {
    let _ = convert::reason(reason);
    check_change(mandate_id, request_id);
}

fn amend_mandate(m: pb::AmendMandateRequest) {
    let pb::AmendMandateRequest {
        mandate_id,
        terms,
        reason,
        request_id,
    } = m;
    // The service completes amended terms with the mandate's own `valid_from`, then classifies
    // the change against the terms in force.
    if let Ok(draft) = convert::terms(terms) {
        let current = &BASELINE.terms;
        if let Ok(terms) = draft.complete(current.valid_from) {
            check_terms(&terms);
            let _ = current.classify_amendment(&terms);
            let _ = terms.classify_amendment(current);
        }
    }
    let _ = convert::reason(reason);
    check_change(&mandate_id, &request_id);
}

fn confirm_amendment(m: pb::ConfirmAmendmentRequest) {
    let pb::ConfirmAmendmentRequest {
        mandate_id,
        mandate_version,
        request_id,
        consent,
    } = m;
    let _ = convert::shown_version(mandate_version);
    if let Ok(input) = convert::consent(consent) {
        let _ = ConsentEvidence::new(input, now(), mandate_version);
    }
    check_change(&mandate_id, &request_id);
}

fn notify_upcoming_debit(m: pb::NotifyUpcomingDebitRequest) {
    let pb::NotifyUpcomingDebitRequest {
        mandate_id,
        amount,
        due_at,
        bill_reference,
        request_id,
    } = m;
    required_request_id(&request_id);
    let _ = MandateId::parse("mandate_id", &mandate_id);
    let _ = convert::money("amount", amount);
    check_timestamp("due_at", due_at);
    let _ = BillReference::parse("bill_reference", &bill_reference);
}

fn list_notices(m: pb::ListNoticesRequest) {
    let pb::ListNoticesRequest {
        mandate_id,
        page_size: _,
        page_token: _,
    } = m;
    let _ = MandateId::parse("mandate_id", &mandate_id);
}

fn create_deduction(m: pb::CreateDeductionRequest) {
    let pb::CreateDeductionRequest {
        request_id,
        mandate_id,
        amount,
        purpose,
        bill_reference,
        description,
        notice_id,
        one_off_approval_id,
    } = m;
    required_request_id(&request_id);
    let _ = MandateId::parse("mandate_id", &mandate_id);
    check_debit(
        amount,
        purpose,
        &bill_reference,
        &notice_id,
        &one_off_approval_id,
    );
    let _ = check_text("description", &description);
}

fn check_deduction(m: pb::CheckDeductionRequest) {
    let pb::CheckDeductionRequest {
        mandate_id,
        amount,
        purpose,
        bill_reference,
        notice_id,
    } = m;
    let _ = MandateId::parse("mandate_id", &mandate_id);
    check_debit(amount, purpose, &bill_reference, &notice_id, "");
}

fn list_deductions(m: pb::ListDeductionsRequest) {
    let pb::ListDeductionsRequest {
        mandate_id,
        status,
        created_from,
        created_until,
        page_size: _,
        page_token: _,
    } = m;
    let _ = MandateId::parse("mandate_id", &mandate_id);
    let _ = convert::deduction_status("status", status);
    check_timestamp("created_from", created_from);
    check_timestamp("created_until", created_until);
}

fn refund_deduction(m: pb::RefundDeductionRequest) {
    let pb::RefundDeductionRequest {
        request_id,
        deduction_id,
        amount,
        reason,
    } = m;
    required_request_id(&request_id);
    let _ = convert::identifier("deduction_id", &deduction_id);
    let _ = convert::money("amount", amount);
    let _ = convert::reason(reason);
}

fn request_one_off_approval(m: pb::RequestOneOffApprovalRequest) {
    let pb::RequestOneOffApprovalRequest {
        request_id,
        deduction_id,
        reason,
    } = m;
    required_request_id(&request_id);
    let _ = convert::identifier("deduction_id", &deduction_id);
    let _ = check_required_text("reason", &reason);
}

fn reject_one_off(m: pb::RejectOneOffRequest) {
    let pb::RejectOneOffRequest {
        approval_id,
        reason,
    } = m;
    let _ = convert::identifier("approval_id", &approval_id);
    let _ = convert::reason(reason);
}

fn credit_wallet(m: pb::CreditWalletRequest) {
    let pb::CreditWalletRequest {
        request_id,
        payer_id,
        amount,
        reason,
    } = m;
    required_request_id(&request_id);
    let _ = PayerId::parse("payer_id", &payer_id);
    let _ = convert::money("amount", amount);
    let _ = convert::reason(reason);
}

fn get_wallet_balance(m: pb::GetWalletBalanceRequest) {
    let pb::GetWalletBalanceRequest {
        payer_id,
        currency_code,
    } = m;
    let _ = PayerId::parse("payer_id", &payer_id);
    let _ = convert::currency("currency_code", &currency_code);
}

// ---- what several handlers share ----

/// `MandateApi::change`: the mandate id and the optional idempotency key.
fn check_change(mandate_id: &str, request_id: &str) {
    let _ = MandateId::parse("mandate_id", mandate_id);
    let _ = convert::request_id(request_id);
}

/// `grpc::deduction::required_request_id` (private): required, then an identifier.
fn required_request_id(value: &str) {
    if !value.is_empty() {
        let _ = convert::identifier("request_id", value);
    }
}

/// `grpc::deduction::debit` (private), then the deduction checks against an active mandate.
fn check_debit(
    amount: Option<pb::Money>,
    purpose: i32,
    bill_reference: &str,
    notice_id: &str,
    approval_id: &str,
) {
    let debit = (|| {
        Ok::<_, FieldViolation>(DebitRequest {
            amount: convert::money("amount", amount)?,
            purpose: convert::purpose("purpose", purpose)?,
            bill_reference: BillReference::parse("bill_reference", bill_reference)?,
            notice_id: convert::optional_identifier("notice_id", notice_id)?,
            approval_id: convert::optional_identifier("one_off_approval_id", approval_id)?,
        })
    })();
    if let Ok(debit) = debit {
        let _ = rules::check(&BASELINE, &debit, &facts());
    }
}

fn check_timestamp(field: &str, value: Option<prost_types::Timestamp>) {
    let nanos = value.map_or(0, |t| t.nanos);
    if let Ok(Some(at)) = convert::timestamp(field, value) {
        assert!(
            (0..1_000_000_000).contains(&nanos),
            "accepted nanos {nanos}"
        );
        assert_eq!(
            at.subsec_nanosecond() % 1_000,
            0,
            "kept finer than a microsecond"
        );
        // An accepted instant survives domain → proto → domain.
        let back = convert::timestamp(field, Some(convert::to_timestamp(at)));
        assert_eq!(back, Ok(Some(at)));
    }
}

fn check_funding_sources(values: Vec<pb::FundingSource>) {
    if let Ok(sources) = convert::funding_sources(values) {
        for source in &sources {
            if let Instrument::BankCard { vault_token, .. } = &source.instrument {
                assert!(
                    !contains_card_number(vault_token),
                    "accepted a card number as vault token: {vault_token:?}"
                );
            }
        }
        for currency in [Currency::Cny, Currency::Jpy] {
            let _ = FundingSources::new("funding_sources", sources.clone(), currency);
        }
    }
}

/// Complete terms: they round-trip through the proto form, and the pure steps the service takes
/// with a mandate of these terms do not panic (periods, expiry, the deduction checks).
fn check_terms(terms: &Terms) {
    let name = terms.timezone.as_str();
    let canonical = terms.timezone.zone().primary_iana_name().map(str::to_owned);
    assert_eq!(canonical.as_deref(), Some(name), "time zone not canonical");
    let proto = convert::to_terms(terms);
    let back = convert::terms(Some(proto)).and_then(|d| d.complete(terms.valid_from));
    assert_eq!(back.as_ref(), Ok(terms));

    let Ok(mut mandate) = Mandate::create(
        NewMandate {
            id: MandateId::parse("mandate_id", "mdt-fuzz").expect("identifier"),
            merchant_id: MerchantId::parse("merchant_id", "m-1").expect("identifier"),
            contract_id: ContractId::parse("contract_id", "c-1").expect("identifier"),
            payer_id: PayerId::parse("payer_id", "p-1").expect("identifier"),
            terms: terms.clone(),
        },
        now(),
        Span::new().hours(24),
    ) else {
        return;
    };
    let sources = FundingSources::new(
        "funding_sources",
        vec![FundingSource {
            instrument: Instrument::Wallet,
            cap_per_debit: None,
        }],
        terms.currency,
    )
    .expect("one wallet source");
    let _ = mandate.confirm(1, consent(), sources, now());
    let dormancy = Span::new().months(36);
    let _ = mandate.next_expiry(dormancy);
    let instants = [
        now(),
        terms.valid_from,
        terms.valid_until.unwrap_or(now()),
        Timestamp::MIN,
        Timestamp::MAX,
    ];
    for at in instants {
        let _ = deduction::period_key(&mandate, at);
        let _ = mandate.expiry_due(at, dormancy);
    }
    let debit = DebitRequest {
        amount: Money::from_minor(terms.currency, 100).expect("positive"),
        purpose: *terms.purposes.first().unwrap_or(&Purpose::Utility),
        bill_reference: BillReference::parse("bill_reference", "bill-1").expect("identifier"),
        notice_id: None,
        approval_id: None,
    };
    let _ = rules::check(&mandate, &debit, &facts());
}

fn facts() -> Facts {
    Facts {
        now: now(),
        bill: BillHistory::New,
        notice: None,
        period_usage: Usage::default(),
        total_usage: Usage::default(),
        approval: None,
        recovery: None,
    }
}

fn consent() -> ConsentEvidence {
    let input = ConsentInput {
        channel: ConsentChannel::App,
        method: ConsentMethod::Biometric,
        device_id: "device-1".to_owned(),
        user_agent: String::new(),
        ip_address: "203.0.113.7".to_owned(),
        terms_version: "terms-1".to_owned(),
        terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
    };
    ConsentEvidence::new(input, now(), 1).expect("valid consent")
}

/// An active CNY mandate for utility and telecom bills, at most 500.00 a debit and 1000.00 a
/// month: what fuzzed debits and amendments are judged against.
static BASELINE: LazyLock<Mandate> = LazyLock::new(|| {
    let cny = |text| Money::parse(Currency::Cny, text).expect("amount");
    let draft = TermsDraft {
        display_account: "ELEC-0001".to_owned(),
        purposes: [Purpose::Utility, Purpose::Telecom].into(),
        currency: Currency::Cny,
        amount_type: AmountType::Maximum,
        per_debit_limit: cny("500"),
        period_limits: Some(PeriodLimits {
            period: Period {
                unit: PeriodUnit::Month,
                count: 1,
            },
            amount_limit: Some(cny("1000")),
            debit_limit: Some(2),
        }),
        total_amount_limit: None,
        total_debit_limit: None,
        valid_from: None,
        valid_until: None,
        collection_window: None,
        pre_notification: None,
        timezone: TimeZoneName::default(),
        single_use: false,
    };
    let terms = draft.complete(now()).expect("baseline terms");
    let new = NewMandate {
        id: MandateId::parse("mandate_id", "mdt-baseline").expect("identifier"),
        merchant_id: MerchantId::parse("merchant_id", "m-1").expect("identifier"),
        contract_id: ContractId::parse("contract_id", "c-1").expect("identifier"),
        payer_id: PayerId::parse("payer_id", "p-1").expect("identifier"),
        terms,
    };
    let mut mandate = Mandate::create(new, now(), Span::new().hours(24)).expect("baseline");
    let sources = FundingSources::new(
        "funding_sources",
        vec![FundingSource {
            instrument: Instrument::Wallet,
            cap_per_debit: None,
        }],
        Currency::Cny,
    )
    .expect("one wallet source");
    mandate
        .confirm(1, consent(), sources, now())
        .expect("baseline confirms");
    mandate
});
