//! Malformed requests (DESIGN §7): each is INVALID_ARGUMENT with a `google.rpc.BadRequest` naming
//! the exact field path, and changes nothing in the database. Oversized messages are
//! RESOURCE_EXHAUSTED and leave the server serving.

use jiff::Timestamp;
use tonic::Code;
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

type Edit<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// Which RPC a case calls; the edit turns that RPC's valid base request into a bad one.
enum Call {
    /// Merchant m-1: `create_request("c-bad", "p-1")`.
    Create(Edit<pb::CreateMandateRequest>),
    /// Payer p-1: `confirm_request` of a PENDING_CONSENT mandate.
    Confirm(Edit<pb::ConfirmMandateRequest>),
    /// Payer p-1: pause an ACTIVE mandate, with reason and request id.
    Pause(Edit<pb::PauseMandateRequest>),
    /// Auditor: read the pending mandate.
    Get(Edit<pb::GetMandateRequest>),
    /// Merchant m-1: a page of 10.
    List(Edit<pb::ListMandatesRequest>),
}

struct Case {
    name: String,
    call: Call,
    field: &'static str,
}

fn create(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::CreateMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Create(Box::new(edit)),
        field,
    }
}

/// Edits the terms of a create request.
fn terms(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::MandateTerms) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    create(name, move |r| edit(r.terms.as_mut().unwrap()), field)
}

fn confirm(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ConfirmMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Confirm(Box::new(edit)),
        field,
    }
}

/// Edits the consent of a confirm request.
fn consent_case(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ConsentEvidence) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    confirm(name, move |r| edit(r.consent.as_mut().unwrap()), field)
}

/// Edits the bank card (the second source) of a confirm request.
fn card(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::BankCardSource) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    confirm(
        name,
        move |r| match r.funding_sources[1].instrument.as_mut() {
            Some(pb::funding_source::Instrument::BankCard(card)) => edit(card),
            other => panic!("base request's second source is not a card: {other:?}"),
        },
        field,
    )
}

fn pause(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::PauseMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Pause(Box::new(edit)),
        field,
    }
}

fn get(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::GetMandateRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::Get(Box::new(edit)),
        field,
    }
}

fn list(
    name: impl Into<String>,
    edit: impl Fn(&mut pb::ListMandatesRequest) + Send + Sync + 'static,
    field: &'static str,
) -> Case {
    Case {
        name: name.into(),
        call: Call::List(Box::new(edit)),
        field,
    }
}

fn ts(at: &str) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.parse::<Timestamp>().unwrap().as_second(),
        nanos: 0,
    })
}

fn in_currency(currency: &str, amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: currency.into(),
        amount: amount.into(),
    })
}

fn wallet() -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
        cap_per_debit: None,
    }
}

fn bank_card(vault_token: &str) -> pb::FundingSource {
    pb::FundingSource {
        instrument: Some(pb::funding_source::Instrument::BankCard(
            pb::BankCardSource {
                vault_token: vault_token.into(),
                bank_name: "ICBC".into(),
                last_four: "4242".into(),
            },
        )),
        cap_per_debit: None,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

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
    cases.push(terms(
        "REFUND_RECOVERY among purposes",
        |t| t.purposes.push(pb::Purpose::RefundRecovery as i32),
        "terms.purposes",
    ));
    cases.push(terms(
        "REFUND_RECOVERY as the only purpose",
        |t| t.purposes = vec![pb::Purpose::RefundRecovery as i32],
        "terms.purposes",
    ));
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

    // ---- ConfirmMandate ----
    cases.push(confirm(
        "zero funding sources",
        |r| r.funding_sources.clear(),
        "funding_sources",
    ));
    cases.push(confirm(
        "six funding sources",
        |r| {
            r.funding_sources = std::iter::once(wallet())
                .chain((1..=5).map(|i| bank_card(&format!("tok_{i}"))))
                .collect()
        },
        "funding_sources",
    ));
    cases.push(card(
        "Luhn-valid card number as vault_token",
        |c| c.vault_token = "4111111111111111".into(),
        "funding_sources[1].bank_card.vault_token",
    ));
    cases.push(card(
        "19-digit Luhn-valid card number as vault_token",
        |c| c.vault_token = "6222020200112233446".into(),
        "funding_sources[1].bank_card.vault_token",
    ));
    cases.push(card(
        "empty vault_token",
        |c| c.vault_token.clear(),
        "funding_sources[1].bank_card.vault_token",
    ));
    cases.push(card(
        "vault_token with a space",
        |c| c.vault_token = "tok 1".into(),
        "funding_sources[1].bank_card.vault_token",
    ));
    cases.push(card(
        "last_four 12a4",
        |c| c.last_four = "12a4".into(),
        "funding_sources[1].bank_card.last_four",
    ));
    cases.push(card(
        "last_four of three digits",
        |c| c.last_four = "424".into(),
        "funding_sources[1].bank_card.last_four",
    ));
    cases.push(card(
        "empty bank_name",
        |c| c.bank_name.clear(),
        "funding_sources[1].bank_card.bank_name",
    ));
    cases.push(card(
        "bank_name of 65 characters",
        |c| c.bank_name = "b".repeat(65),
        "funding_sources[1].bank_card.bank_name",
    ));
    cases.push(confirm(
        "funding source without instrument",
        |r| r.funding_sources[0].instrument = None,
        "funding_sources[0]",
    ));
    cases.push(confirm(
        "wallet listed twice",
        |r| r.funding_sources = vec![wallet(), wallet()],
        "funding_sources[1]",
    ));
    cases.push(confirm(
        "same card listed twice",
        |r| r.funding_sources = vec![bank_card("tok_1"), bank_card("tok_1")],
        "funding_sources[1]",
    ));
    cases.push(confirm(
        "cap_per_debit with three decimals",
        |r| r.funding_sources[0].cap_per_debit = money("1.001"),
        "funding_sources[0].cap_per_debit.amount",
    ));
    cases.push(confirm(
        "cap_per_debit in USD on a CNY mandate",
        |r| r.funding_sources[0].cap_per_debit = in_currency("USD", "200.00"),
        "funding_sources[0].cap_per_debit.currency_code",
    ));
    cases.push(confirm("consent missing", |r| r.consent = None, "consent"));
    for ip in ["not-an-ip", "", "203.0.113.999", "203.0.113.7:443"] {
        cases.push(consent_case(
            format!("consent ip_address {ip:?}"),
            move |c| c.ip_address = ip.into(),
            "consent.ip_address",
        ));
    }
    cases.push(consent_case(
        "terms_digest of 63 hex digits",
        |c| {
            c.terms_digest.pop();
        },
        "consent.terms_digest",
    ));
    cases.push(consent_case(
        "terms_digest of 65 hex digits",
        |c| c.terms_digest.push('0'),
        "consent.terms_digest",
    ));
    cases.push(consent_case(
        "terms_digest in upper case",
        |c| c.terms_digest = c.terms_digest.to_uppercase(),
        "consent.terms_digest",
    ));
    cases.push(consent_case(
        "CONSENT_CHANNEL_UNSPECIFIED",
        |c| c.channel = pb::ConsentChannel::Unspecified as i32,
        "consent.channel",
    ));
    cases.push(consent_case(
        "unknown consent channel 99",
        |c| c.channel = 99,
        "consent.channel",
    ));
    cases.push(consent_case(
        "CONSENT_METHOD_UNSPECIFIED",
        |c| c.method = pb::ConsentMethod::Unspecified as i32,
        "consent.method",
    ));
    cases.push(consent_case(
        "neither device_id nor user_agent",
        |c| {
            c.device_id.clear();
            c.user_agent.clear();
        },
        "consent.device_id",
    ));
    cases.push(consent_case(
        "user_agent of 257 characters",
        |c| c.user_agent = "u".repeat(257),
        "consent.user_agent",
    ));
    cases.push(consent_case(
        "terms_version empty",
        |c| c.terms_version.clear(),
        "consent.terms_version",
    ));
    cases.push(confirm(
        "mandate_version 0",
        |r| r.mandate_version = 0,
        "mandate_version",
    ));
    cases.push(confirm(
        "mandate_version -1",
        |r| r.mandate_version = -1,
        "mandate_version",
    ));
    cases.push(confirm(
        "malformed mandate_id",
        |r| r.mandate_id = "bad id!".into(),
        "mandate_id",
    ));
    cases.push(confirm(
        "empty mandate_id",
        |r| r.mandate_id.clear(),
        "mandate_id",
    ));
    cases.push(confirm(
        "malformed request_id",
        |r| r.request_id = "bad id!".into(),
        "request_id",
    ));

    // ---- PauseMandate ----
    cases.push(pause(
        "reason of 257 characters",
        |r| r.reason = "r".repeat(257),
        "reason",
    ));
    cases.push(pause(
        "reason with a control character",
        |r| r.reason = "away\u{7}".into(),
        "reason",
    ));
    cases.push(pause(
        "malformed request_id",
        |r| r.request_id = "bad id!".into(),
        "request_id",
    ));
    cases.push(pause(
        "request_id of 65 characters",
        |r| r.request_id = "k".repeat(65),
        "request_id",
    ));
    cases.push(pause(
        "malformed mandate_id",
        |r| r.mandate_id = "bad id!".into(),
        "mandate_id",
    ));

    // ---- GetMandate ----
    cases.push(get(
        "malformed mandate_id",
        |r| r.mandate_id = "bad id!".into(),
        "mandate_id",
    ));
    cases.push(get(
        "as_of out of range",
        |r| {
            r.as_of = Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            })
        },
        "as_of",
    ));

    // ---- ListMandates ----
    cases.push(list("page_size 501", |r| r.page_size = 501, "page_size"));
    cases.push(list(
        "page_token not hex",
        |r| r.page_token = "not-a-token".into(),
        "page_token",
    ));
    cases.push(list(
        "page_token of odd length",
        |r| r.page_token = "abc".into(),
        "page_token",
    ));
    cases.push(list(
        "page_token of a malformed id",
        |r| r.page_token = "62616420696421".into(), // hex of "bad id!"
        "page_token",
    ));
    cases.push(list(
        "payer_id filter non-ASCII",
        |r| r.payer_id = "合同".into(),
        "payer_id",
    ));
    cases.push(list(
        "merchant_id filter of 65 characters",
        |r| r.merchant_id = "m".repeat(65),
        "merchant_id",
    ));
    cases.push(list(
        "unknown status filter 99",
        |r| r.status = 99,
        "status",
    ));

    cases
}

/// The one field a refusal names, or why it is not a proper INVALID_ARGUMENT.
fn violated_field(status: &tonic::Status) -> Result<String, String> {
    if status.code() != Code::InvalidArgument {
        return Err(format!("{:?}: {}", status.code(), status.message()));
    }
    let Some(bad_request) = status.get_details_bad_request() else {
        return Err(format!("no BadRequest detail ({})", status.message()));
    };
    match bad_request.field_violations.as_slice() {
        [one] => Ok(one.field.clone()),
        many => Err(format!(
            "{} field violations: {:?}",
            many.len(),
            many.iter().map(|v| &v.field).collect::<Vec<_>>()
        )),
    }
}

async fn malformed_requests_are_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = create_mandate(&app, "c-pending").await;
    let active = active_mandate(&app, "c-active").await;
    let mut merchant = app.merchant("m-1").await;
    let mut payer = app.payer("p-1").await;
    let mut auditor = app.auditor(None).await;
    let pause_base = || pb::PauseMandateRequest {
        mandate_id: active.mandate_id.clone(),
        reason: "travelling".into(),
        request_id: "pause-1".into(),
    };
    let get_base = || pb::GetMandateRequest {
        mandate_id: pending.mandate_id.clone(),
        as_of: None,
    };
    let list_base = || pb::ListMandatesRequest {
        page_size: 10,
        ..Default::default()
    };

    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = app.counts().await;
        let result = match &case.call {
            Call::Create(edit) => {
                let mut r = create_request("c-bad", "p-1");
                edit(&mut r);
                merchant.create_mandate(r).await.map(drop)
            }
            Call::Confirm(edit) => {
                let mut r = confirm_request(&pending);
                edit(&mut r);
                payer.confirm_mandate(r).await.map(drop)
            }
            Call::Pause(edit) => {
                let mut r = pause_base();
                edit(&mut r);
                payer.pause_mandate(r).await.map(drop)
            }
            Call::Get(edit) => {
                let mut r = get_base();
                edit(&mut r);
                auditor.get_mandate(r).await.map(drop)
            }
            Call::List(edit) => {
                let mut r = list_base();
                edit(&mut r);
                merchant.list_mandates(r).await.map(drop)
            }
        };
        let after = app.counts().await;
        match result {
            Ok(()) => failures.push(format!("{}: accepted", case.name)),
            Err(status) => match violated_field(&status) {
                Ok(field) if field == case.field => {}
                Ok(field) => failures.push(format!(
                    "{}: names {field:?}, expected {:?} ({})",
                    case.name,
                    case.field,
                    status.message()
                )),
                Err(why) => failures.push(format!("{}: {why}", case.name)),
            },
        }
        if after != before {
            failures.push(format!(
                "{}: database changed: {before:?} -> {after:?}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The base requests the cases were made from are themselves valid, so each refusal above
    // was caused by its one edit.
    merchant
        .create_mandate(create_request("c-bad", "p-1"))
        .await
        .expect("base CreateMandate");
    payer
        .confirm_mandate(confirm_request(&pending))
        .await
        .expect("base ConfirmMandate");
    payer
        .pause_mandate(pause_base())
        .await
        .expect("base PauseMandate");
    auditor
        .get_mandate(get_base())
        .await
        .expect("base GetMandate");
    merchant
        .list_mandates(list_base())
        .await
        .expect("base ListMandates");
    app.verify_audit().await;
}

/// A message over the 64 KiB bound is RESOURCE_EXHAUSTED, changes nothing, and neither the
/// connection nor the server is harmed. One just under the bound is decoded and judged on its
/// fields.
async fn oversized_request_is_resource_exhausted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    let before = app.counts().await;

    let mut huge = create_request("c-huge", "p-1");
    huge.terms.as_mut().unwrap().display_account = "x".repeat(100 * 1024);
    let status = merchant.create_mandate(huge).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert_eq!(app.counts().await, before);

    let mut large = create_request("c-large", "p-1");
    large.terms.as_mut().unwrap().display_account = "x".repeat(60 * 1024);
    let status = merchant.create_mandate(large).await.unwrap_err();
    assert_eq!(violated_field(&status).unwrap(), "terms.display_account");
    assert_eq!(app.counts().await, before);

    let same = merchant
        .create_mandate(create_request("c-after-1", "p-1"))
        .await
        .expect("same client after the oversized request")
        .into_inner();
    assert!(!same.existing);
    let fresh = app
        .merchant("m-1")
        .await
        .create_mandate(create_request("c-after-2", "p-1"))
        .await
        .expect("new client after the oversized request")
        .into_inner();
    assert!(!fresh.existing);
    assert_eq!(app.counts().await.mandates, before.mandates + 2);
}

both_backends!(
    malformed_requests_are_invalid_argument,
    oversized_request_is_resource_exhausted,
);
