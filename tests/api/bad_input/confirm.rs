//! Malformed ConfirmMandate requests (funding sources, consent evidence, cards), and malformed
//! PauseMandate, GetMandate and ListMandates requests.

use super::{Case, card, confirm, consent_case, get, in_currency, list, pause};
use crate::harness::{card_funding, money, pb, wallet_funding};

pub(super) fn cases(cases: &mut Vec<Case>) {
    // ---- ConfirmMandate ----
    cases.push(confirm(
        "zero funding sources",
        |r| r.funding_sources.clear(),
        "funding_sources",
    ));
    cases.push(confirm(
        "six funding sources",
        |r| {
            r.funding_sources = std::iter::once(wallet_funding(None))
                .chain((1..=5).map(|i| card_funding(&format!("tok_{i}"), None)))
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
        |r| r.funding_sources = vec![wallet_funding(None), wallet_funding(None)],
        "funding_sources[1]",
    ));
    cases.push(confirm(
        "same card listed twice",
        |r| r.funding_sources = vec![card_funding("tok_1", None), card_funding("tok_1", None)],
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
        "merchant_contract_id filter with a space",
        |r| r.merchant_contract_id = "c 1".into(),
        "merchant_contract_id",
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
}
