//! Writes the seed corpora under `fuzz/seeds/<target>/`: valid and nearly valid amounts, the
//! README's requests encoded, and tokens signed by each configured key. Run it after changing a
//! seed or a proto: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use serde_json::{Value, json};
use withholding::pb;
use withholding_fuzz::proto::input;
use withholding_fuzz::token::{AUDIENCE, ISSUER, SEPARATOR, Signer, assemble};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, seeds) in [
        ("money", money()),
        ("proto_to_domain", proto()),
        ("bearer_token", tokens()),
    ] {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        std::fs::create_dir_all(&dir).expect("seed directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    // Inputs the product once accepted against DESIGN §7 (negative nanos, a card number with
    // separators as a vault token, a time zone in another spelling): kept as regressions.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/proto_to_domain");
    std::fs::create_dir_all(&dir).expect("regression directory");
    for (name, bytes) in design_gaps() {
        std::fs::write(dir.join(name), bytes).expect("write regression");
    }
}

fn design_gaps() -> Vec<(&'static str, Vec<u8>)> {
    let negative_nanos = pb::GetMandateRequest {
        mandate_id: "mdt-1".into(),
        as_of: Some(prost_types::Timestamp {
            seconds: 5,
            nanos: -1,
        }),
    };
    let mut sources = sources();
    sources[1].instrument = Some(pb::funding_source::Instrument::BankCard(
        pb::BankCardSource {
            vault_token: "4111-1111-1111-1111".into(),
            bank_name: "ICBC".into(),
            last_four: "1111".into(),
        },
    ));
    let card_number_token = pb::SetFundingSourcesRequest {
        mandate_id: "mdt-1".into(),
        funding_sources: sources,
        request_id: String::new(),
    };
    let mut terms = electricity_terms();
    terms.timezone = "asia/shanghai".into();
    let lower_case_zone = pb::CreateMandateRequest {
        merchant_contract_id: "elec-1".into(),
        payer_id: "payer-001".into(),
        terms: Some(terms),
    };
    vec![
        (
            "design-negative-nanos",
            input("GetMandateRequest", &negative_nanos),
        ),
        (
            "design-card-number-vault-token",
            input("SetFundingSourcesRequest", &card_number_token),
        ),
        (
            "design-lower-case-time-zone",
            input("CreateMandateRequest", &lower_case_zone),
        ),
    ]
}

fn money_pb(currency: &str, amount: &str) -> pb::Money {
    pb::Money {
        currency_code: currency.into(),
        amount: amount.into(),
    }
}

fn money() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    let texts = [
        "12.30",
        "12.3",
        "12",
        "0.01",
        "1.500",
        "500",
        "999999999999999.99",
        "1000000000000000",
        "000000000000000012.50",
        "0",
        "0.00",
        "1.001",
        "-1",
        "+1",
        "1e3",
        " 1",
        ".5",
        "5.",
        "1,000",
        "NaN",
    ];
    for (i, text) in texts.iter().enumerate() {
        seeds.insert(format!("text-{i:02}"), text.as_bytes().to_vec());
    }
    let protos = [
        ("CNY", "128.40"),
        ("JPY", "500"),
        ("USD", "0.01"),
        ("KRW", "1000000"),
        ("cny", "1.00"),
        ("XXX", "1.00"),
        ("", "1.00"),
    ];
    for (i, (currency, amount)) in protos.iter().enumerate() {
        let bytes = money_pb(currency, amount).encode_to_vec();
        seeds.insert(format!("proto-{i:02}"), bytes);
    }
    for (i, minor) in [1230i64, 1, 0, -1, 99_999_999_999_999_999, i64::MAX]
        .iter()
        .enumerate()
    {
        seeds.insert(format!("minor-{i:02}"), minor.to_le_bytes().to_vec());
    }
    seeds
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// The README's electricity mandate: at most 500.00 a debit, 800.00 and two debits a month.
fn electricity_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        display_account: "Electricity 0042-7781".into(),
        purposes: vec![pb::Purpose::Utility as i32],
        currency_code: "CNY".into(),
        amount_type: pb::AmountType::Maximum as i32,
        per_debit_limit: Some(money_pb("CNY", "500.00")),
        period: Some(pb::Period {
            unit: pb::PeriodUnit::Month as i32,
            count: 1,
        }),
        period_amount_limit: Some(money_pb("CNY", "800.00")),
        period_debit_limit: Some(2),
        valid_until: ts(1_830_268_800),
        ..Default::default()
    }
}

/// A fixed-amount quarterly loan repayment in New York with a collection window, a notice
/// period and lifetime limits.
fn loan_terms() -> pb::MandateTerms {
    pb::MandateTerms {
        display_account: "Loan 7781".into(),
        purposes: vec![pb::Purpose::LoanRepayment as i32, pb::Purpose::Other as i32],
        currency_code: "USD".into(),
        amount_type: pb::AmountType::Fixed as i32,
        per_debit_limit: Some(money_pb("USD", "250.00")),
        period: Some(pb::Period {
            unit: pb::PeriodUnit::Quarter as i32,
            count: 2,
        }),
        period_amount_limit: None,
        period_debit_limit: Some(1),
        total_amount_limit: Some(money_pb("USD", "3000.00")),
        total_debit_limit: Some(12),
        valid_from: ts(1_767_225_600),
        valid_until: ts(1_893_456_000),
        collection_window: Some(pb::CollectionWindow {
            day_of_period: 15,
            tolerance_days: 3,
        }),
        pre_notification: Some(pb::PreNotification {
            lead_time_s: 3 * 86_400,
        }),
        timezone: "America/New_York".into(),
        single_use: false,
    }
}

fn consent() -> pb::ConsentEvidence {
    pb::ConsentEvidence {
        channel: pb::ConsentChannel::App as i32,
        method: pb::ConsentMethod::Biometric as i32,
        device_id: "iphone-7f3a".into(),
        user_agent: String::new(),
        ip_address: "203.0.113.7".into(),
        terms_version: "terms-2026.1".into(),
        terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        captured_at: None,
        mandate_version: 0,
    }
}

fn sources() -> Vec<pb::FundingSource> {
    vec![
        pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::Wallet(pb::WalletSource {})),
            cap_per_debit: Some(money_pb("CNY", "200.00")),
        },
        pb::FundingSource {
            instrument: Some(pb::funding_source::Instrument::BankCard(
                pb::BankCardSource {
                    vault_token: "tok_9a8b7c".into(),
                    bank_name: "ICBC".into(),
                    last_four: "4242".into(),
                },
            )),
            cap_per_debit: None,
        },
    ]
}

fn proto() -> BTreeMap<String, Vec<u8>> {
    let id = "mdt-0195b3c4d5e6f7a8b9c0d1e2f3a4b5c6".to_string();
    let mut seeds = BTreeMap::new();
    let mut add = |name: &str, bytes: Vec<u8>| {
        seeds.insert(name.to_owned(), bytes);
    };
    let create = |terms| pb::CreateMandateRequest {
        merchant_contract_id: "elec-2026-0042".into(),
        payer_id: "payer-001".into(),
        terms: Some(terms),
    };
    let m = "CreateMandateRequest";
    add("create-electricity", input(m, &create(electricity_terms())));
    add("create-loan", input(m, &create(loan_terms())));
    for (unit, name) in [
        (pb::PeriodUnit::Day, "day"),
        (pb::PeriodUnit::Week, "week"),
        (pb::PeriodUnit::Year, "year"),
    ] {
        let mut terms = loan_terms();
        terms.period = Some(pb::Period {
            unit: unit as i32,
            count: 1,
        });
        terms.collection_window = Some(pb::CollectionWindow {
            day_of_period: 1,
            tolerance_days: 0,
        });
        terms.timezone = "Europe/London".into();
        add(&format!("create-{name}"), input(m, &create(terms)));
    }
    let m = "GetMandateRequest";
    let get = pb::GetMandateRequest {
        mandate_id: id.clone(),
        as_of: ts(1_767_225_600),
    };
    add("get", input(m, &get));
    let m = "ListMandatesRequest";
    let list = pb::ListMandatesRequest {
        payer_id: "payer-001".into(),
        merchant_id: "m-001".into(),
        status: pb::MandateStatus::Active as i32,
        page_size: 50,
        page_token: hex(&id),
    };
    add("list", input(m, &list));
    let m = "ConfirmMandateRequest";
    let confirm = pb::ConfirmMandateRequest {
        mandate_id: id.clone(),
        mandate_version: 1,
        consent: Some(consent()),
        funding_sources: sources(),
        request_id: "confirm-1".into(),
    };
    add("confirm", input(m, &confirm));
    let m = "SetFundingSourcesRequest";
    let set = pb::SetFundingSourcesRequest {
        mandate_id: id.clone(),
        funding_sources: sources(),
        request_id: "sources-2".into(),
    };
    add("set-funding-sources", input(m, &set));
    let reason = "on holiday".to_string();
    let pause = pb::PauseMandateRequest {
        mandate_id: id.clone(),
        reason: reason.clone(),
        request_id: "pause-1".into(),
    };
    add("pause", input("PauseMandateRequest", &pause));
    for m in [
        "ResumeMandateRequest",
        "SuspendMandateRequest",
        "ReinstateMandateRequest",
        "RevokeMandateRequest",
        "TerminateMandateRequest",
    ] {
        // These share PauseMandateRequest's fields and numbers.
        let name = m.trim_end_matches("MandateRequest").to_lowercase();
        add(&name, input(m, &pause));
    }
    let m = "AmendMandateRequest";
    let mut raised = electricity_terms();
    raised.per_debit_limit = Some(money_pb("CNY", "600.00"));
    let amend = pb::AmendMandateRequest {
        mandate_id: id.clone(),
        terms: Some(raised),
        reason: "new tariff".into(),
        request_id: "amend-1".into(),
    };
    add("amend", input(m, &amend));
    let m = "ConfirmAmendmentRequest";
    let confirm_amendment = pb::ConfirmAmendmentRequest {
        mandate_id: id.clone(),
        mandate_version: 3,
        request_id: "confirm-amend-1".into(),
        consent: Some(consent()),
    };
    add("confirm-amendment", input(m, &confirm_amendment));
    let m = "NotifyUpcomingDebitRequest";
    let notify = pb::NotifyUpcomingDebitRequest {
        mandate_id: id.clone(),
        amount: Some(money_pb("CNY", "128.40")),
        due_at: ts(1_774_915_200),
        bill_reference: "bill-2026-03".into(),
        request_id: "notice-2026-03".into(),
    };
    add("notify", input(m, &notify));
    let m = "ListNoticesRequest";
    let notices = pb::ListNoticesRequest {
        mandate_id: id.clone(),
        page_size: 10,
        page_token: String::new(),
    };
    add("list-notices", input(m, &notices));
    let m = "CreateDeductionRequest";
    let deduction = pb::CreateDeductionRequest {
        request_id: "elec-2026-03".into(),
        mandate_id: id.clone(),
        amount: Some(money_pb("CNY", "128.40")),
        purpose: pb::Purpose::Utility as i32,
        bill_reference: "bill-2026-03".into(),
        description: "March electricity".into(),
        notice_id: "ntc-1".into(),
        one_off_approval_id: "apv-1".into(),
    };
    add("create-deduction", input(m, &deduction));
    let m = "CheckDeductionRequest";
    let check = pb::CheckDeductionRequest {
        mandate_id: id.clone(),
        amount: Some(money_pb("CNY", "900.00")),
        purpose: pb::Purpose::Telecom as i32,
        bill_reference: "bill-2026-03".into(),
        notice_id: String::new(),
    };
    add("check-deduction", input(m, &check));
    let m = "GetDeductionRequest";
    let get = pb::GetDeductionRequest {
        deduction_id: "ddn-0195b3c4".into(),
    };
    add("get-deduction", input(m, &get));
    let m = "ListDeductionsRequest";
    let list = pb::ListDeductionsRequest {
        mandate_id: id.clone(),
        status: pb::DeductionStatus::Succeeded as i32,
        created_from: ts(1_767_225_600),
        created_until: Some(prost_types::Timestamp {
            seconds: 1_798_761_600,
            nanos: 999_999_999,
        }),
        page_size: 500,
        page_token: String::new(),
    };
    add("list-deductions", input(m, &list));
    let m = "RefundDeductionRequest";
    let refund = pb::RefundDeductionRequest {
        request_id: "refund-1".into(),
        deduction_id: "ddn-0195b3c4".into(),
        amount: Some(money_pb("CNY", "28.40")),
        reason: "meter misread".into(),
    };
    add("refund", input(m, &refund));
    let m = "RequestOneOffApprovalRequest";
    let ask = pb::RequestOneOffApprovalRequest {
        request_id: "ask-1".into(),
        deduction_id: "ddn-0195b3c4".into(),
        reason: "refunded by mistake: the meter reading was right".into(),
    };
    add("request-approval", input(m, &ask));
    let m = "ApproveOneOffRequest";
    let approve = pb::ApproveOneOffRequest {
        approval_id: "apv-0195b3c4".into(),
    };
    add("approve", input(m, &approve));
    let m = "RejectOneOffRequest";
    let reject = pb::RejectOneOffRequest {
        approval_id: "apv-0195b3c4".into(),
        reason: "not mine".into(),
    };
    add("reject", input(m, &reject));
    let m = "CreditWalletRequest";
    let credit = pb::CreditWalletRequest {
        request_id: "topup-1".into(),
        payer_id: "payer-001".into(),
        amount: Some(money_pb("CNY", "300.00")),
        reason: "top-up".into(),
    };
    add("credit-wallet", input(m, &credit));
    let m = "GetWalletBalanceRequest";
    let balance = pb::GetWalletBalanceRequest {
        payer_id: "payer-001".into(),
        currency_code: "CNY".into(),
    };
    add("wallet-balance", input(m, &balance));
    seeds
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn claims(role: &str, merchant_id: Option<&str>) -> Value {
    let mut claims = json!({
        "sub": format!("{role}-001"),
        "role": role,
        "iss": ISSUER,
        "aud": AUDIENCE,
        // 2100-01-01: the seeds stay valid.
        "exp": 4_102_444_800u64,
        "nbf": 1_767_225_600u64,
        "iat": 1_767_225_600u64,
        "scope": "mandates:write deductions:write",
    });
    if let Some(id) = merchant_id {
        claims["merchant_id"] = json!(id);
    }
    claims
}

fn tokens() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    let headers = [
        (
            "hs256",
            json!({"alg": "HS256", "typ": "JWT"}),
            Signer::Hs256,
        ),
        (
            "rs256",
            json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}),
            Signer::Rs256,
        ),
        (
            "es256",
            json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"}),
            Signer::Es256,
        ),
        (
            "eddsa",
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"}),
            Signer::EdDsa,
        ),
    ];
    let roles = [
        ("merchant", Some("m-001")),
        ("payer", None),
        ("auditor", None),
        ("operator", None),
    ];
    for (key, header, signer) in &headers {
        // Every role with the cheap HS256 key; the public-key algorithms once each, since
        // their signatures cost 2 to 30 ms in an instrumented build and inputs derived from
        // them would dominate the run.
        let roles = if *signer == Signer::Hs256 {
            &roles[..]
        } else {
            &roles[..1]
        };
        for &(role, merchant) in roles {
            let header = header.to_string();
            let claims = claims(role, merchant).to_string();
            let token = assemble(header.as_bytes(), claims.as_bytes(), *signer, b"");
            let mut value = b"\x00Bearer ".to_vec();
            value.extend(token.as_bytes());
            seeds.insert(format!("header-{key}-{role}"), value);
            let mut raw = b"\x01".to_vec();
            raw.extend(token.as_bytes());
            seeds.insert(format!("token-{key}-{role}"), raw);
            if *signer == Signer::Rs256 {
                // RSA signing takes ~30 ms here, ten times the rest: mutations of such a seed
                // would take most of the run. The fuzzer reaches the RSA signers by changing
                // the signer byte of the other seeds.
                continue;
            }
            let mut parts = vec![2, signer.byte()];
            parts.extend(header.as_bytes());
            parts.push(SEPARATOR);
            parts.extend(claims.as_bytes());
            parts.push(SEPARATOR);
            seeds.insert(format!("parts-{key}-{role}"), parts);
        }
    }
    // Tokens the server must refuse, as parts: every untrusted signer over good claims, and
    // the classic forgeries.
    let good = claims("merchant", Some("m-001")).to_string();
    let forgeries = [
        (
            "alg-none",
            json!({"alg": "none", "typ": "JWT"}),
            Signer::Raw,
        ),
        ("hs256-empty", json!({"alg": "HS256"}), Signer::Raw),
        (
            "hs256-wrong-secret",
            json!({"alg": "HS256"}),
            Signer::Hs256WrongSecret,
        ),
        (
            "hs256-rsa-public",
            json!({"alg": "HS256", "kid": "rsa-1"}),
            Signer::Hs256KeyedWithRsaPublic,
        ),
        (
            "hs256-ec-public",
            json!({"alg": "HS256", "kid": "ec-1"}),
            Signer::Hs256KeyedWithEcPublic,
        ),
        ("hs384", json!({"alg": "HS384"}), Signer::Hs384),
        ("eddsa-no-kid", json!({"alg": "EdDSA"}), Signer::EdDsa),
        (
            "es256-kid-rsa",
            json!({"alg": "ES256", "kid": "rsa-1"}),
            Signer::Es256,
        ),
    ];
    for (name, header, signer) in forgeries {
        let mut parts = vec![2, signer.byte()];
        parts.extend(header.to_string().as_bytes());
        parts.push(SEPARATOR);
        parts.extend(good.as_bytes());
        parts.push(SEPARATOR);
        seeds.insert(format!("forged-{name}"), parts);
    }
    for (name, value) in [
        ("header-empty", &b"\x00"[..]),
        ("header-bearer-only", b"\x00Bearer "),
        ("header-basic", b"\x00Basic dXNlcjpwYXNz"),
        ("token-garbage", b"\x01abc.def.ghi"),
    ] {
        seeds.insert(name.to_owned(), value.to_vec());
    }
    seeds
}
