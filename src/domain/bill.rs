//! Bill references and what counts as the same bill (DESIGN §5): the duplicate-bill and clawback
//! rules compare a canonical key, so `ELEC-2026-10`, `elec_2026_10` and `Elec.2026.10.` are one
//! bill, while the reference is kept and returned exactly as the merchant sent it.

use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::text::check_identifier;

/// The characters the key leaves out: separators carry no meaning in a bill's identity.
const SEPARATORS: [char; 5] = ['-', '_', '.', ':', ' '];

/// A merchant's reference for one bill, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BillReference(String);

impl BillReference {
    /// An identifier (1–64 of `[A-Za-z0-9._:-]`) with at least one letter or digit: a
    /// reference of separators alone would name no bill.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        check_identifier(field, value)?;
        if BillKey::of(value).0.is_empty() {
            return Err(FieldViolation::new(
                field,
                "must contain a letter or a digit",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical key the bill rules compare.
    pub fn key(&self) -> BillKey {
        BillKey::of(&self.0)
    }
}

impl std::fmt::Display for BillReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bill's canonical key: the reference case-folded, with `-`, `_`, `.`, `:` and spaces
/// removed. Stored beside each deduction and notice (`bill_key`); the migration that added the
/// column computes the same key in SQL for rows written before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BillKey(String);

impl BillKey {
    pub fn of(reference: &str) -> Self {
        Self(
            reference
                .chars()
                .filter(|c| !SEPARATORS.contains(c))
                .flat_map(char::to_lowercase)
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reference: &str) -> String {
        BillKey::of(reference).0
    }

    #[test]
    fn spellings_of_one_bill_share_a_key() {
        for spelling in [
            "ELEC-2026-10",
            "elec-2026-10",
            "Elec-2026-10",
            "elec_2026_10",
            "Elec.2026.10",
            "ELEC-2026-10.",
            "elec:2026:10",
            "-elec2026-10-",
        ] {
            assert_eq!(key(spelling), "elec202610", "{spelling}");
        }
        assert_eq!(key("bill_2026_11"), key("bill-2026-11"));
    }

    #[test]
    fn different_bills_keep_different_keys() {
        assert_ne!(key("ELEC-2026-10"), key("ELEC-2026-11"));
        assert_ne!(key("ELEC-2026-10"), key("ELEC-2026-100"));
        assert_ne!(key("A1"), key("A-1-0"));
    }

    #[test]
    fn a_reference_needs_a_letter_or_digit() {
        assert!(BillReference::parse("bill_reference", "ELEC-2026-10").is_ok());
        for bad in ["", "-", "._:-", "a b", "é"] {
            assert!(
                BillReference::parse("bill_reference", bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_reference_is_kept_as_sent() {
        let reference = BillReference::parse("bill_reference", "Elec.2026.10").unwrap();
        assert_eq!(reference.as_str(), "Elec.2026.10");
        assert_eq!(reference.key().as_str(), "elec202610");
    }
}
