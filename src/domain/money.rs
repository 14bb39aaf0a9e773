//! Exact money (DESIGN §7): a known currency and a positive amount with at most the currency's
//! minor units, kept as `rust_decimal` and convertible to integer minor units.

use std::str::FromStr;

use rust_decimal::Decimal;

/// Most integer digits an amount may have.
pub const MAX_INTEGER_DIGITS: usize = 15;

/// The currencies the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Currency {
    Cny,
    Hkd,
    Usd,
    Eur,
    Gbp,
    Sgd,
    Jpy,
    Krw,
}

impl Currency {
    /// Parses an upper-case ISO 4217 code.
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "CNY" => Self::Cny,
            "HKD" => Self::Hkd,
            "USD" => Self::Usd,
            "EUR" => Self::Eur,
            "GBP" => Self::Gbp,
            "SGD" => Self::Sgd,
            "JPY" => Self::Jpy,
            "KRW" => Self::Krw,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Cny => "CNY",
            Self::Hkd => "HKD",
            Self::Usd => "USD",
            Self::Eur => "EUR",
            Self::Gbp => "GBP",
            Self::Sgd => "SGD",
            Self::Jpy => "JPY",
            Self::Krw => "KRW",
        }
    }

    /// Decimal places of the currency's minor unit (CNY 2, JPY 0).
    pub fn minor_units(self) -> u32 {
        match self {
            Self::Cny | Self::Hkd | Self::Usd | Self::Eur | Self::Gbp | Self::Sgd => 2,
            Self::Jpy | Self::Krw => 0,
        }
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Self::parse(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown currency {code}")))
    }
}

/// Why an amount string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a plain decimal number such as \"12.30\" (digits and one optional point)")]
    Syntax,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("has more than {0} decimal places for its currency")]
    TooManyDecimals(u32),
    #[error("has more than {MAX_INTEGER_DIGITS} integer digits")]
    TooLarge,
}

/// A positive amount of one currency, with at most the currency's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    currency: Currency,
    /// Always rescaled to exactly `currency.minor_units()` decimals.
    amount: Decimal,
}

impl Money {
    /// Parses a caller's decimal string. Only `digits[.digits]` is accepted: no sign, exponent,
    /// whitespace or thousands separators.
    pub fn parse(currency: Currency, text: &str) -> Result<Self, AmountError> {
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
            return Err(AmountError::Syntax);
        }
        if int_part.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
            return Err(AmountError::TooLarge);
        }
        let scale = currency.minor_units();
        // Trailing zeros beyond the currency's scale carry no value ("1.500" CNY is 1.50).
        let frac_significant = frac_part.map_or("", |f| f.trim_end_matches('0'));
        if frac_significant.len() > scale as usize {
            return Err(AmountError::TooManyDecimals(scale));
        }
        let mut amount = Decimal::from_str(text).map_err(|_| AmountError::Syntax)?;
        if amount <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        amount.rescale(scale);
        Ok(Self { currency, amount })
    }

    /// Builds an amount from integer minor units (fen for CNY), which must be positive.
    pub fn from_minor(currency: Currency, minor: i64) -> Result<Self, AmountError> {
        if minor <= 0 {
            return Err(AmountError::NotPositive);
        }
        let amount = Decimal::new(minor, currency.minor_units());
        if amount.trunc().to_string().len() > MAX_INTEGER_DIGITS {
            return Err(AmountError::TooLarge);
        }
        Ok(Self { currency, amount })
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The amount in integer minor units. At most 15 integer digits plus the scale always fits.
    pub fn minor(&self) -> i64 {
        let mantissa = self.amount.mantissa();
        i64::try_from(mantissa).expect("15 integer digits and 2 decimals fit in i64")
    }

    /// The canonical decimal text with exactly the currency's decimals ("12.30").
    pub fn amount_text(&self) -> String {
        self.amount.to_string()
    }

    /// `minor` units of `currency` as decimal text with the currency's decimals, zero and
    /// negative amounts included (balances, totals): 0 CNY is "0.00".
    pub fn minor_text(currency: Currency, minor: i64) -> String {
        Decimal::new(minor, currency.minor_units()).to_string()
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.amount, self.currency.code())
    }
}

impl PartialOrd for Money {
    /// Amounts of different currencies are not comparable.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.currency == other.currency).then(|| self.amount.cmp(&other.amount))
    }
}

/// Stored form: `{"currency": "CNY", "amount": "12.30"}`, read back through [`Money::parse`] so
/// the scale is checked in one place.
#[derive(serde::Serialize, serde::Deserialize)]
struct MoneyRepr {
    currency: Currency,
    amount: String,
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MoneyRepr {
            currency: self.currency,
            amount: self.amount_text(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = MoneyRepr::deserialize(d)?;
        Money::parse(repr.currency, &repr.amount).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_amounts() {
        let cases = [
            (Currency::Cny, "12.30", "12.30", 1230),
            (Currency::Cny, "12.3", "12.30", 1230),
            (Currency::Cny, "12", "12.00", 1200),
            (Currency::Cny, "0.01", "0.01", 1),
            (Currency::Cny, "1.500", "1.50", 150),
            (Currency::Jpy, "500", "500", 500),
            (
                Currency::Cny,
                "999999999999999.99",
                "999999999999999.99",
                99_999_999_999_999_999,
            ),
        ];
        for (currency, text, canonical, minor) in cases {
            let money = Money::parse(currency, text).unwrap();
            assert_eq!(money.amount_text(), canonical, "{text}");
            assert_eq!(money.minor(), minor, "{text}");
            assert_eq!(Money::from_minor(currency, minor).unwrap(), money);
        }
    }

    #[test]
    fn refuses_invalid_amounts() {
        use AmountError::*;
        let cases = [
            (Currency::Cny, "-1", Syntax),
            (Currency::Cny, "0", NotPositive),
            (Currency::Cny, "0.00", NotPositive),
            (Currency::Cny, "1.001", TooManyDecimals(2)),
            (Currency::Jpy, "1.5", TooManyDecimals(0)),
            (Currency::Cny, "1e3", Syntax),
            (Currency::Cny, " 1", Syntax),
            (Currency::Cny, "1 ", Syntax),
            (Currency::Cny, "+1", Syntax),
            (Currency::Cny, "1,000", Syntax),
            (Currency::Cny, ".5", Syntax),
            (Currency::Cny, "5.", Syntax),
            (Currency::Cny, "", Syntax),
            (Currency::Cny, "NaN", Syntax),
            (Currency::Cny, "1234567890123456", TooLarge),
        ];
        for (currency, text, error) in cases {
            assert_eq!(Money::parse(currency, text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn currencies() {
        assert_eq!(Currency::parse("CNY"), Some(Currency::Cny));
        assert_eq!(Currency::parse("cny"), None);
        assert_eq!(Currency::parse("XXX"), None);
    }

    #[test]
    fn stored_form_round_trips() {
        let money = Money::parse(Currency::Cny, "7.5").unwrap();
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"currency":"CNY","amount":"7.50"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        assert!(serde_json::from_str::<Money>(r#"{"currency":"CNY","amount":"7.501"}"#).is_err());
    }
}
