//! Daily settlement (日结, DESIGN §6b): a merchant's settlement schedule (the cut-off that ends
//! its business day, in its time zone), the business day a time falls on, and the totals per
//! merchant × funding source × business day, summed with checked arithmetic.

use std::collections::BTreeMap;

use jiff::civil::{Date, Time};
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::deduction::{AttemptOutcome, Deduction, DeductionStatus, Refund, SourceKind};
use super::ids::MerchantId;
use super::money::Currency;
use super::terms::TimeZoneName;

/// The longest range one summary covers, in business days.
pub const MAX_SUMMARY_DAYS: i32 = 93;

/// When a merchant's business day ends, and in which time zone (default: midnight,
/// Asia/Shanghai). A business day D runs up to D's cut-off: with a cut-off of 22:00, D is
/// [D−1 22:00, D 22:00); with midnight (00:00) it is the calendar day [D 00:00, D+1 00:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementSchedule {
    pub merchant_id: MerchantId,
    /// Minutes after local midnight, 0..1440.
    pub cutoff_minute: u32,
    pub timezone: TimeZoneName,
    /// 0 for the default nobody set; +1 with every change.
    pub version: i64,
    pub updated_at: Option<Timestamp>,
    pub updated_by: String,
}

impl SettlementSchedule {
    pub fn default_for(merchant_id: MerchantId) -> Self {
        Self {
            merchant_id,
            cutoff_minute: 0,
            timezone: TimeZoneName::default(),
            version: 0,
            updated_at: None,
            updated_by: String::new(),
        }
    }

    /// A checked cut-off: minutes after local midnight.
    pub fn parse_cutoff(field: &str, minute: u32) -> Result<u32, FieldViolation> {
        if minute < 24 * 60 {
            Ok(minute)
        } else {
            Err(FieldViolation::new(
                field,
                "must be minutes after midnight, 0 to 1439",
            ))
        }
    }

    /// The schedule with a new cut-off and zone; `None` when that is what it already is.
    pub fn changed_to(
        &self,
        cutoff_minute: u32,
        timezone: TimeZoneName,
        by: &str,
        at: Timestamp,
    ) -> Option<Self> {
        if self.cutoff_minute == cutoff_minute && self.timezone == timezone {
            return None;
        }
        Some(Self {
            merchant_id: self.merchant_id.clone(),
            cutoff_minute,
            timezone,
            version: self.version + 1,
            updated_at: Some(at),
            updated_by: by.to_owned(),
        })
    }

    fn cutoff(&self) -> Time {
        let (h, m) = (self.cutoff_minute / 60, self.cutoff_minute % 60);
        // Both in range: the cut-off is checked to be under 1440.
        Time::new(h as i8, m as i8, 0, 0).unwrap_or(Time::midnight())
    }

    /// The business day `at` falls on.
    pub fn business_day(&self, at: Timestamp) -> Date {
        let local = at.to_zoned_datetime(self.timezone.zone());
        let date = local.date();
        if self.cutoff_minute > 0 && local.time() >= self.cutoff() {
            date.tomorrow().unwrap_or(date)
        } else {
            date
        }
    }

    /// When business day `day` ends (its cut-off, or the next midnight for a midnight
    /// cut-off), in UTC. A local time a clock change skips or repeats resolves as jiff's
    /// `compatible` rule does.
    pub fn day_end(&self, day: Date) -> Option<Timestamp> {
        let end = if self.cutoff_minute == 0 {
            day.tomorrow().ok()?.to_datetime(Time::midnight())
        } else {
            day.to_datetime(self.cutoff())
        };
        end.to_zoned_datetime(self.timezone.zone())
            .ok()
            .map(|z| z.timestamp())
    }
}

/// An inclusive range of business days, at most [`MAX_SUMMARY_DAYS`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: Date,
    pub to: Date,
}

impl DayRange {
    pub fn new(from: Date, to: Date) -> Result<Self, FieldViolation> {
        if to < from {
            return Err(FieldViolation::new("to_day", "must not be before from_day"));
        }
        let days = from
            .until(to)
            .map_err(|_| FieldViolation::new("to_day", "out of range"))?;
        if days.get_days() >= MAX_SUMMARY_DAYS {
            return Err(FieldViolation::new(
                "to_day",
                format!("a summary covers at most {MAX_SUMMARY_DAYS} days"),
            ));
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, day: Date) -> bool {
        self.from <= day && day <= self.to
    }

    /// A UTC window that holds every business day of the range under any schedule: time zones
    /// lie within ±14 h of UTC and a cut-off moves a day by less than one day, so two days on
    /// either side cover it. Rows are read from it and then placed on their merchant's days.
    pub fn utc_window(&self) -> (Timestamp, Timestamp) {
        let start = self
            .from
            .checked_sub(2.days())
            .ok()
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
            .map_or(Timestamp::MIN, |z| z.timestamp());
        let end = self
            .to
            .checked_add(3.days())
            .ok()
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
            .map_or(Timestamp::MAX, |z| z.timestamp());
        (start, end)
    }
}

/// A parsed `YYYY-MM-DD` day.
pub fn parse_day(field: &str, text: &str) -> Result<Date, FieldViolation> {
    text.parse::<Date>()
        .ok()
        .filter(|d| d.to_string() == text)
        .ok_or_else(|| FieldViolation::new(field, "must be a date as YYYY-MM-DD"))
}

/// A count and an amount in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: i64,
    pub amount_minor: i64,
}

/// A sum that would not fit 64 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a settlement total would pass the largest amount a 64-bit total holds")]
pub struct TotalOutOfRange;

impl Tally {
    fn add(&mut self, amount_minor: i64) -> Result<(), TotalOutOfRange> {
        self.count = self.count.checked_add(1).ok_or(TotalOutOfRange)?;
        self.amount_minor = self
            .amount_minor
            .checked_add(amount_minor)
            .ok_or(TotalOutOfRange)?;
        Ok(())
    }
}

/// One row of a summary: a merchant's totals from one funding source on one business day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    pub merchant_id: MerchantId,
    pub source: SourceKind,
    pub day: Date,
    pub currency: Currency,
    /// SUCCEEDED (refunded later or not): what was collected, on the deduction's day.
    pub collected: Tally,
    /// Refunds, on the day each refund was made.
    pub refunded: Tally,
    /// PROCESSING and PENDING_CONFIRMATION: outcome not known yet.
    pub pending: Tally,
    /// FAILED: every source refused.
    pub failed: Tally,
}

impl SettlementRow {
    /// Collected − refunded (negative on a day that refunded more than it collected).
    pub fn net_minor(&self) -> Result<i64, TotalOutOfRange> {
        self.collected
            .amount_minor
            .checked_sub(self.refunded.amount_minor)
            .ok_or(TotalOutOfRange)
    }
}

/// Which way a deduction counts in a summary, and under which source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Collected(SourceKind),
    Pending(SourceKind),
    Failed(SourceKind),
}

/// The source that paid a deduction: the attempt that succeeded. One source pays the whole
/// amount (DESIGN §4.1).
pub fn paying_source(deduction: &Deduction) -> Option<SourceKind> {
    deduction
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome == AttemptOutcome::Succeeded)
        .map(|a| a.source_kind)
}

/// Where a deduction counts: collected under the source that paid it, pending under the card
/// whose answer is awaited, failed under the source whose refusal ended it (the last one
/// tried); declined ones (the mandate did not allow them) count nowhere.
fn counted(deduction: &Deduction) -> Option<Counted> {
    let last_tried = || {
        let tried = deduction.attempts.iter().rev();
        tried
            .clone()
            .find(|a| a.outcome != AttemptOutcome::Skipped)
            .or_else(|| deduction.attempts.last())
            .map(|a| a.source_kind)
    };
    match deduction.status {
        DeductionStatus::Succeeded
        | DeductionStatus::Refunded
        | DeductionStatus::PartiallyRefunded => paying_source(deduction).map(Counted::Collected),
        DeductionStatus::Processing | DeductionStatus::PendingConfirmation => {
            last_tried().map(Counted::Pending)
        }
        DeductionStatus::Failed => last_tried().map(Counted::Failed),
        DeductionStatus::Declined => None,
    }
}

/// Sums deductions and refunds into rows, each placed on its merchant's business day.
/// `schedule` answers each merchant's schedule; rows outside `range` are left out.
pub struct Summary<'a> {
    range: DayRange,
    schedule: &'a (dyn Fn(&MerchantId) -> SettlementSchedule + Sync),
    rows: BTreeMap<(String, &'static str, Date, &'static str), SettlementRow>,
}

impl<'a> Summary<'a> {
    pub fn new(
        range: DayRange,
        schedule: &'a (dyn Fn(&MerchantId) -> SettlementSchedule + Sync),
    ) -> Self {
        Self {
            range,
            schedule,
            rows: BTreeMap::new(),
        }
    }

    fn row(
        &mut self,
        merchant: &MerchantId,
        source: SourceKind,
        at: Timestamp,
        currency: Currency,
    ) -> Option<&mut SettlementRow> {
        let day = (self.schedule)(merchant).business_day(at);
        if !self.range.contains(day) {
            return None;
        }
        let key = (merchant.to_string(), source.as_str(), day, currency.code());
        Some(self.rows.entry(key).or_insert_with(|| SettlementRow {
            merchant_id: merchant.clone(),
            source,
            day,
            currency,
            collected: Tally::default(),
            refunded: Tally::default(),
            pending: Tally::default(),
            failed: Tally::default(),
        }))
    }

    /// Counts a deduction on the business day it was made.
    pub fn add_deduction(&mut self, deduction: &Deduction) -> Result<(), TotalOutOfRange> {
        let Some(counted) = counted(deduction) else {
            return Ok(());
        };
        let source = match counted {
            Counted::Collected(s) | Counted::Pending(s) | Counted::Failed(s) => s,
        };
        let amount = deduction.request.amount;
        let Some(row) = self.row(
            &deduction.merchant_id,
            source,
            deduction.created_at,
            amount.currency(),
        ) else {
            return Ok(());
        };
        let tally = match counted {
            Counted::Collected(_) => &mut row.collected,
            Counted::Pending(_) => &mut row.pending,
            Counted::Failed(_) => &mut row.failed,
        };
        tally.add(amount.minor())
    }

    /// Counts a refund of `deduction` on the business day the refund was made, under the
    /// source that paid the deduction.
    pub fn add_refund(
        &mut self,
        refund: &Refund,
        deduction: &Deduction,
    ) -> Result<(), TotalOutOfRange> {
        let Some(source) = paying_source(deduction) else {
            return Ok(());
        };
        let Some(row) = self.row(
            &deduction.merchant_id,
            source,
            refund.created_at,
            refund.amount.currency(),
        ) else {
            return Ok(());
        };
        row.refunded.add(refund.amount.minor())
    }

    /// The rows by merchant, day, source and currency.
    pub fn rows(self) -> Vec<SettlementRow> {
        let mut rows: Vec<SettlementRow> = self.rows.into_values().collect();
        rows.sort_by(|a, b| {
            (
                a.merchant_id.as_str(),
                a.day,
                a.source.as_str(),
                a.currency.code(),
            )
                .cmp(&(
                    b.merchant_id.as_str(),
                    b.day,
                    b.source.as_str(),
                    b.currency.code(),
                ))
        });
        rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cutoff_minute: u32, zone: &str) -> SettlementSchedule {
        SettlementSchedule {
            cutoff_minute,
            timezone: TimeZoneName::parse("tz", zone).unwrap(),
            ..SettlementSchedule::default_for(MerchantId::parse("m", "m-1").unwrap())
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn day(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn the_business_day_ends_at_the_cutoff_in_the_merchants_zone() {
        let cases = [
            // Midnight in Shanghai (UTC+8): 15:59:59Z is 23:59:59 local.
            (0, "Asia/Shanghai", "2026-03-01T15:59:59Z", "2026-03-01"),
            (0, "Asia/Shanghai", "2026-03-01T16:00:00Z", "2026-03-02"),
            // 22:00 in Shanghai is 14:00Z: from it on, the next business day.
            (
                22 * 60,
                "Asia/Shanghai",
                "2026-03-01T13:59:59Z",
                "2026-03-01",
            ),
            (
                22 * 60,
                "Asia/Shanghai",
                "2026-03-01T14:00:00Z",
                "2026-03-02",
            ),
            (0, "UTC", "2026-03-01T23:59:59Z", "2026-03-01"),
            (1, "UTC", "2026-03-01T00:00:59Z", "2026-03-01"),
            (1, "UTC", "2026-03-01T00:01:00Z", "2026-03-02"),
        ];
        for (cutoff, zone, time, expected) in cases {
            let s = schedule(cutoff, zone);
            assert_eq!(
                s.business_day(at(time)),
                day(expected),
                "{cutoff} {zone} {time}"
            );
        }
    }

    #[test]
    fn a_day_ends_where_the_next_begins() {
        for (cutoff, zone) in [
            (0, "Asia/Shanghai"),
            (22 * 60, "Asia/Shanghai"),
            (90, "UTC"),
        ] {
            let s = schedule(cutoff, zone);
            let end = s.day_end(day("2026-03-01")).unwrap();
            assert_eq!(s.business_day(end), day("2026-03-02"));
            let just_before = end
                .checked_sub(jiff::SignedDuration::from_micros(1))
                .unwrap();
            assert_eq!(s.business_day(just_before), day("2026-03-01"));
        }
    }

    #[test]
    fn ranges_are_bounded() {
        assert!(DayRange::new(day("2026-03-01"), day("2026-03-01")).is_ok());
        assert!(DayRange::new(day("2026-03-01"), day("2026-06-01")).is_ok());
        assert!(DayRange::new(day("2026-03-01"), day("2026-06-02")).is_err());
        assert!(DayRange::new(day("2026-03-02"), day("2026-03-01")).is_err());
        assert!(parse_day("d", "2026-3-1").is_err());
        assert!(SettlementSchedule::parse_cutoff("c", 1440).is_err());
    }

    #[test]
    fn tallies_refuse_to_overflow() {
        let mut t = Tally {
            count: 1,
            amount_minor: i64::MAX,
        };
        assert_eq!(t.add(1), Err(TotalOutOfRange));
    }
}
