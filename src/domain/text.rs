//! Caller-supplied identifiers and free text (DESIGN §7).

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

/// Checks optional free text: at most 256 characters, no control characters. Empty is allowed.
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
    Ok(())
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
    fn text() {
        assert!(check_text("f", "").is_ok());
        assert!(check_text("f", &"电".repeat(256)).is_ok());
        assert!(check_text("f", &"电".repeat(257)).is_err());
        assert!(check_text("f", "a\u{0}b").is_err());
        assert!(check_required_text("f", "  ").is_err());
    }
}
