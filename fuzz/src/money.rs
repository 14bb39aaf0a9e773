//! Target `money`: `Money::parse` for every currency, `Money::from_minor`, and the proto form
//! through `convert::money`, against an independent reading of DESIGN §7.
//!
//! The input is used three ways at once: as amount text (if it is UTF-8), as a `pb::Money`
//! message (if it decodes), and its first 8 bytes as a count of minor units.

use prost::Message;
use withholding::domain::money::{Currency, MAX_INTEGER_DIGITS, Money};
use withholding::grpc::convert;
use withholding::pb;

/// Every currency the service knows (`Currency` has no list of its own).
pub const CURRENCIES: [Currency; 8] = [
    Currency::Cny,
    Currency::Hkd,
    Currency::Usd,
    Currency::Eur,
    Currency::Gbp,
    Currency::Sgd,
    Currency::Jpy,
    Currency::Krw,
];

pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for currency in CURRENCIES {
            check_text(currency, text);
        }
    }
    if let Ok(message) = pb::Money::decode(data) {
        check_proto(message);
    }
    if let Some(bytes) = data.first_chunk::<8>() {
        let minor = i64::from_le_bytes(*bytes);
        for currency in CURRENCIES {
            check_minor(currency, minor);
        }
    }
}

/// The amount in minor units that DESIGN §7 allows for `text`, worked out on the digits alone
/// (no `rust_decimal`): `digits[.digits]`, greater than zero, at most 15 integer digits, no
/// more significant decimals than the currency has (trailing zeros carry no value).
fn expected_minor(text: &str, scale: u32) -> Option<u64> {
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || !frac_part.is_none_or(all_digits) {
        return None;
    }
    let int_digits = int_part.trim_start_matches('0');
    let frac_digits = frac_part.unwrap_or("").trim_end_matches('0');
    if int_digits.len() > MAX_INTEGER_DIGITS || frac_digits.len() > scale as usize {
        return None;
    }
    // At most 15 + 2 digits: fits in u64 with room to spare.
    let padding = std::iter::repeat_n(b'0', scale as usize - frac_digits.len());
    let minor = int_digits
        .bytes()
        .chain(frac_digits.bytes())
        .chain(padding)
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (minor > 0).then_some(minor)
}

fn check_text(currency: Currency, text: &str) {
    let parsed = Money::parse(currency, text);
    let expected = expected_minor(text, currency.minor_units());
    match (&parsed, expected) {
        (Ok(money), Some(minor)) => {
            assert_eq!(u64::try_from(money.minor()).ok(), Some(minor), "{text:?}");
            check_valid(money);
        }
        (Err(_), None) => {}
        _ => panic!("{currency:?} {text:?}: parsed as {parsed:?}, DESIGN §7 says {expected:?}"),
    }
}

/// What must hold of every `Money` that exists.
fn check_valid(money: &Money) {
    let currency = money.currency();
    let text = money.amount_text();
    assert!(money.minor() > 0, "{money:?}");
    assert_eq!(money.amount().scale(), currency.minor_units(), "{money:?}");
    // The canonical text has exactly the currency's decimals and reads back as the same value.
    let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
    assert_eq!(decimals, currency.minor_units() as usize, "{text:?}");
    assert_eq!(
        Money::parse(currency, &text).as_ref(),
        Ok(money),
        "{text:?}"
    );
    // Minor units round-trip.
    assert_eq!(
        Money::from_minor(currency, money.minor()).as_ref(),
        Ok(money)
    );
    // The stored form (JSON) and the proto form round-trip.
    let json = serde_json::to_string(money).expect("money serialises");
    assert_eq!(&serde_json::from_str::<Money>(&json).expect(&json), money);
    let proto = convert::to_money(money);
    assert_eq!(convert::money("amount", Some(proto)).as_ref(), Ok(money));
}

fn check_proto(message: pb::Money) {
    let converted = convert::money("amount", Some(message.clone()));
    let expected = Currency::parse(&message.currency_code)
        .and_then(|c| expected_minor(&message.amount, c.minor_units()));
    match (&converted, expected) {
        (Ok(money), Some(minor)) => {
            assert_eq!(money.currency().code(), message.currency_code);
            assert_eq!(u64::try_from(money.minor()).ok(), Some(minor));
            check_valid(money);
        }
        (Err(violation), None) => {
            // The error names the caller's field.
            assert!(violation.field.starts_with("amount"), "{violation:?}");
        }
        _ => panic!("{message:?}: converted to {converted:?}, DESIGN §7 says {expected:?}"),
    }
    assert!(convert::money("amount", None).is_err());
}

fn check_minor(currency: Currency, minor: i64) {
    let largest = 10i64.pow(MAX_INTEGER_DIGITS as u32 + currency.minor_units()) - 1;
    match Money::from_minor(currency, minor) {
        Ok(money) => {
            assert!((1..=largest).contains(&minor), "{currency:?} {minor}");
            assert_eq!(money.minor(), minor);
            check_valid(&money);
        }
        Err(_) => assert!(!(1..=largest).contains(&minor), "{currency:?} {minor}"),
    }
}
