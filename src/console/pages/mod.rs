//! One file per console section. What they share: reading form fields (an empty field is an
//! absent one), and showing times, days and amounts the same way on every page.

pub mod audit;
pub mod mandates;
pub mod reconciliation;
pub mod settlement;
pub mod sign_in;
pub mod today;

use jiff::Timestamp;
use jiff::civil::Date;
use maud::{Markup, html};

use super::Console;
use crate::domain::FieldViolation;
use crate::domain::money::{Currency, Money};

/// A form field, `None` when left empty.
pub fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A form field parsed with `parse` when given.
pub fn parsed<T, E>(
    value: &Option<String>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, E> {
    given(value).map(parse).transpose()
}

/// A day field, `YYYY-MM-DD`.
pub fn day(field: &'static str, value: &str) -> Result<Date, FieldViolation> {
    value
        .parse::<Date>()
        .map_err(|_| FieldViolation::new(field, "must be a date, YYYY-MM-DD"))
}

/// A time field: RFC 3339 (`2026-12-04T09:30:00+08:00`), or a bare date or date and time in
/// the console's zone.
pub fn time(
    console: &Console,
    field: &'static str,
    value: &str,
) -> Result<Timestamp, FieldViolation> {
    if let Ok(at) = value.parse::<Timestamp>() {
        return Ok(at);
    }
    let zone = console.0.settings.time_zone.zone();
    let civil = value
        .parse::<jiff::civil::DateTime>()
        .or_else(|_| {
            value
                .parse::<Date>()
                .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
        })
        .map_err(|_| {
            FieldViolation::new(
                field,
                "must be a time (RFC 3339, or YYYY-MM-DD[THH:MM] in the console's zone)",
            )
        })?;
    civil
        .to_zoned_datetime(zone)
        .map(|z| z.timestamp())
        .map_err(|_| FieldViolation::new(field, "is not a time in the console's zone"))
}

/// Today's date in the console's zone.
pub fn today(console: &Console) -> Date {
    console
        .now()
        .to_zoned_datetime(console.0.settings.time_zone.zone())
        .date()
}

/// A time as the console shows it: in the console's zone, to the second.
pub fn when(console: &Console, at: Timestamp) -> Markup {
    let local = at.to_zoned_datetime(console.0.settings.time_zone.zone());
    html! {
        time datetime=(at.to_string()) title=(at.to_string()) {
            (local.strftime("%Y-%m-%d %H:%M:%S"))
        }
    }
}

/// An amount in minor units, in its currency's major units.
pub fn amount(currency: Currency, minor: i64) -> String {
    format!("{} {}", Money::minor_text(currency, minor), currency.code())
}

/// A query string of the given fields, empty ones left out, each escaped.
pub fn query_string<'a>(fields: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    out
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_string_leaves_empty_fields_out_and_escapes_the_rest() {
        assert_eq!(
            query_string([
                ("a", Some("x y&z")),
                ("b", None),
                ("c", Some("")),
                ("d", Some("<s>"))
            ]),
            "?a=x%20y%26z&d=%3Cs%3E"
        );
        assert_eq!(query_string([("a", None)]), "");
    }
}
