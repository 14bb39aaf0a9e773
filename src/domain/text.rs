//! Caller-supplied identifiers and free text (DESIGN §7), and the card numbers neither may
//! carry (DESIGN §3.3).

use super::FieldViolation;

/// Longest identifier a caller may send.
pub const IDENTIFIER_MAX_CHARS: usize = 64;
/// Longest free text a caller may send.
pub const TEXT_MAX_CHARS: usize = 256;

/// Checks an identifier: 1 to 64 characters of `[A-Za-z0-9._:-]`.
pub fn check_identifier(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if value.len() > IDENTIFIER_MAX_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("is longer than {IDENTIFIER_MAX_CHARS} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(FieldViolation::new(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(())
}

/// Checks optional free text: at most 256 characters, no control characters, no card number.
/// Empty is allowed.
pub fn check_text(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.chars().count() > TEXT_MAX_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("is longer than {TEXT_MAX_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    if contains_card_number(value) {
        return Err(FieldViolation::new(field, CARD_NUMBER_REFUSED));
    }
    Ok(())
}

/// Why a value holding a card number is refused.
pub const CARD_NUMBER_REFUSED: &str = "holds what looks like a card number (13 to 19 digits, \
    perhaps split by spaces, - or ., passing the Luhn check); card numbers are never accepted";

/// Shortest and longest primary account number.
const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// Whether `value` holds a card number: 13–19 digits passing the Luhn check, written together
/// or in groups split by single spaces, `-` or `.` ("4111 1111 1111 1111"). Any run of whole
/// groups counts, so a number is found beside other digits ("ref 2026-4111111111111111") or
/// inside a token ("tok_4111111111111111").
pub fn contains_card_number(value: &str) -> bool {
    digit_runs(value).iter().any(|groups| {
        (0..groups.len()).any(|first| {
            let mut digits = String::new();
            groups[first..].iter().any(|group| {
                digits.push_str(group);
                CARD_DIGITS.contains(&digits.len()) && luhn_valid(&digits)
            })
        })
    })
}

/// The runs of digit groups in `value`: groups of digits split by one space, `-` or `.`; any
/// other character, or two separators together, ends a run.
fn digit_runs(value: &str) -> Vec<Vec<&str>> {
    let mut runs: Vec<Vec<&str>> = vec![];
    let mut groups: Vec<&str> = vec![];
    let mut group_start: Option<usize> = None;
    let mut after_separator = false;
    for (at, c) in value.char_indices() {
        if c.is_ascii_digit() {
            group_start.get_or_insert(at);
            after_separator = false;
            continue;
        }
        if let Some(start) = group_start.take() {
            groups.push(&value[start..at]);
        }
        if matches!(c, ' ' | '-' | '.') && !after_separator && !groups.is_empty() {
            after_separator = true;
            continue;
        }
        after_separator = false;
        if !groups.is_empty() {
            runs.push(std::mem::take(&mut groups));
        }
    }
    if let Some(start) = group_start {
        groups.push(&value[start..]);
    }
    if !groups.is_empty() {
        runs.push(groups);
    }
    runs
}

/// The Luhn check of a string of ASCII digits.
fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Checks required free text: like [`check_text`], but not empty or blank.
pub fn check_required_text(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.trim().is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    check_text(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "A-1", "x.y:z_9", &"a".repeat(64)] {
            assert!(check_identifier("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "é", "a/b", &"a".repeat(65), "a\n"] {
            assert!(check_identifier("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn card_numbers_are_found_however_written() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111.1111.1111.1111",
            "card 4111 1111 1111 1111 refunded",
            "tok_4111111111111111",
            "ref 2026-4111111111111111",
            "378282246310005",
            "6011-0009-9013-9424",
        ] {
            assert!(contains_card_number(card), "{card}");
            assert!(check_text("f", card).is_err(), "{card}");
        }
        for fine in [
            "",
            "4111111111111112",
            "411111111111",
            "4111  1111 1111 1111",
            "4111_1111_1111_1111",
            "March electricity 128.40 CNY",
            "bill 2026-03-01",
            "41111111111111111111111",
        ] {
            assert!(!contains_card_number(fine), "{fine}");
        }
    }

    #[test]
    fn the_luhn_check_matches_a_second_formulation() {
        // Double every second digit from the right, add the digits of each product.
        let other = |s: &str| {
            let total: u32 = s
                .chars()
                .rev()
                .enumerate()
                .map(|(i, c)| {
                    let d = c.to_digit(10).unwrap() * if i % 2 == 1 { 2 } else { 1 };
                    d / 10 + d % 10
                })
                .sum();
            total.is_multiple_of(10)
        };
        for n in [
            "4111111111111111",
            "6222020200112233444",
            "79927398713",
            "1234567812345678",
        ] {
            assert_eq!(luhn_valid(n), other(n), "{n}");
        }
    }

    #[test]
    fn text() {
        assert!(check_text("f", "").is_ok());
        assert!(check_text("f", &"电".repeat(256)).is_ok());
        assert!(check_text("f", &"电".repeat(257)).is_err());
        assert!(check_text("f", "a\u{0}b").is_err());
        assert!(check_required_text("f", "  ").is_err());
    }
}
