//! The payer's funding sources in priority order (DESIGN §3.3). Raw card numbers never get in.

use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::money::{Currency, Money};
use super::text::{
    CARD_NUMBER_REFUSED, check_identifier, check_required_text, contains_card_number,
};

/// Most funding sources one mandate may list.
pub const MAX_FUNDING_SOURCES: usize = 5;
/// Longest bank name.
pub const BANK_NAME_MAX_CHARS: usize = 64;

/// Where one debit may be paid from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Instrument {
    /// The payer's balance in the built-in ledger.
    Wallet,
    /// A card known only by its vault token.
    BankCard {
        vault_token: String,
        bank_name: String,
        last_four: String,
    },
}

impl Instrument {
    /// A bank card, checked: the token is an identifier and not a card number.
    pub fn bank_card(
        field: &str,
        vault_token: &str,
        bank_name: &str,
        last_four: &str,
    ) -> Result<Self, FieldViolation> {
        let token_field = format!("{field}.vault_token");
        check_identifier(&token_field, vault_token)?;
        if contains_card_number(vault_token) {
            return Err(FieldViolation::new(
                token_field,
                format!("{CARD_NUMBER_REFUSED}: send the card vault's token, never the number"),
            ));
        }
        let bank_field = format!("{field}.bank_name");
        check_required_text(&bank_field, bank_name)?;
        if bank_name.chars().count() > BANK_NAME_MAX_CHARS {
            return Err(FieldViolation::new(
                bank_field,
                format!("is longer than {BANK_NAME_MAX_CHARS} characters"),
            ));
        }
        if last_four.len() != 4 || !last_four.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldViolation::new(
                format!("{field}.last_four"),
                "must be exactly four digits",
            ));
        }
        Ok(Self::BankCard {
            vault_token: vault_token.to_owned(),
            bank_name: bank_name.to_owned(),
            last_four: last_four.to_owned(),
        })
    }
}

/// One source with its optional cap per debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingSource {
    pub instrument: Instrument,
    pub cap_per_debit: Option<Money>,
}

/// 1 to 5 distinct sources, in the payer's order, with caps in the mandate currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FundingSources(Vec<FundingSource>);

impl FundingSources {
    /// Checks the list; `field` names it in errors (`funding_sources`).
    pub fn new(
        field: &str,
        sources: Vec<FundingSource>,
        currency: Currency,
    ) -> Result<Self, FieldViolation> {
        if sources.is_empty() || sources.len() > MAX_FUNDING_SOURCES {
            return Err(FieldViolation::new(
                field,
                format!("must list 1 to {MAX_FUNDING_SOURCES} sources"),
            ));
        }
        for (i, source) in sources.iter().enumerate() {
            if let Some(cap) = &source.cap_per_debit
                && cap.currency() != currency
            {
                return Err(FieldViolation::new(
                    format!("{field}[{i}].cap_per_debit.currency_code"),
                    format!("must be in the mandate currency {}", currency.code()),
                ));
            }
            if sources[..i]
                .iter()
                .any(|earlier| same_instrument(earlier, source))
            {
                return Err(FieldViolation::new(
                    format!("{field}[{i}]"),
                    "lists the same source twice",
                ));
            }
        }
        Ok(Self(sources))
    }

    pub fn as_slice(&self) -> &[FundingSource] {
        &self.0
    }
}

fn same_instrument(a: &FundingSource, b: &FundingSource) -> bool {
    match (&a.instrument, &b.instrument) {
        (Instrument::Wallet, Instrument::Wallet) => true,
        (
            Instrument::BankCard { vault_token: x, .. },
            Instrument::BankCard { vault_token: y, .. },
        ) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let wallet = FundingSource {
            instrument: Instrument::Wallet,
            cap_per_debit: None,
        };
        let card = FundingSource {
            instrument: Instrument::bank_card("s", "tok-1", "ICBC", "1234").unwrap(),
            cap_per_debit: None,
        };
        assert!(
            FundingSources::new("f", vec![wallet.clone(), card.clone()], Currency::Cny).is_ok()
        );
        assert!(FundingSources::new("f", vec![], Currency::Cny).is_err());
        assert!(FundingSources::new("f", vec![wallet.clone(); 2], Currency::Cny).is_err());
        assert!(FundingSources::new("f", vec![card; 6], Currency::Cny).is_err());
        let capped = FundingSource {
            instrument: Instrument::Wallet,
            cap_per_debit: Some(Money::parse(Currency::Usd, "1").unwrap()),
        };
        assert!(FundingSources::new("f", vec![capped], Currency::Cny).is_err());
        for token in [
            "4111111111111111",
            "4111-1111-1111-1111",
            "4111.1111.1111.1111",
            "tok_4111111111111111",
        ] {
            assert!(
                Instrument::bank_card("s", token, "ICBC", "1111").is_err(),
                "{token}"
            );
        }
        assert!(Instrument::bank_card("s", "tok", "ICBC", "12a4").is_err());
    }
}
