//! Limit periods as calendar periods in the mandate's time zone (DESIGN §3): a MONTH × 1 period
//! runs from local midnight on the 1st to local midnight on the next 1st, whatever the UTC
//! offset or daylight saving does in between. Periods of `count` units are counted from the unit
//! that contains the mandate's `valid_from`.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::terms::{Period, PeriodUnit};

/// One period: its number (0 for the period containing `valid_from`) and its instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodWindow {
    pub index: i64,
    pub start: Timestamp,
    /// Exclusive.
    pub end: Timestamp,
}

/// A Monday, so week ordinals start on Mondays (ISO weeks).
const WEEK_EPOCH: Date = jiff::civil::date(1970, 1, 5);

fn days_since_epoch(date: Date) -> i64 {
    WEEK_EPOCH.duration_until(date).as_secs().div_euclid(86_400)
}

/// The unit's ordinal of a local date: days, weeks, months, quarters or years since an epoch.
fn ordinal(unit: PeriodUnit, date: Date) -> i64 {
    let year = i64::from(date.year());
    let month0 = i64::from(date.month()) - 1;
    match unit {
        PeriodUnit::Day => days_since_epoch(date),
        PeriodUnit::Week => days_since_epoch(date).div_euclid(7),
        PeriodUnit::Month => year * 12 + month0,
        PeriodUnit::Quarter => year * 4 + month0 / 3,
        PeriodUnit::Year => year,
    }
}

/// The first local date of the unit with this ordinal.
fn first_day(unit: PeriodUnit, ordinal: i64) -> Option<Date> {
    let year = |y: i64| i16::try_from(y).ok();
    match unit {
        PeriodUnit::Day => WEEK_EPOCH
            .checked_add(jiff::Span::new().try_days(ordinal).ok()?)
            .ok(),
        PeriodUnit::Week => WEEK_EPOCH
            .checked_add(jiff::Span::new().try_days(ordinal.checked_mul(7)?).ok()?)
            .ok(),
        PeriodUnit::Month => Date::new(
            year(ordinal.div_euclid(12))?,
            i8::try_from(ordinal.rem_euclid(12) + 1).ok()?,
            1,
        )
        .ok(),
        PeriodUnit::Quarter => Date::new(
            year(ordinal.div_euclid(4))?,
            i8::try_from(ordinal.rem_euclid(4) * 3 + 1).ok()?,
            1,
        )
        .ok(),
        PeriodUnit::Year => Date::new(year(ordinal)?, 1, 1).ok(),
    }
}

fn local_midnight(date: Date, tz: &TimeZone) -> Option<Timestamp> {
    date.to_zoned_datetime(tz.clone())
        .ok()
        .map(|z| z.timestamp())
}

/// The period of `period` (anchored at `anchor`) that contains `at`, in time zone `tz`.
/// `None` only for instants outside the calendar range (years beyond ±9999).
pub fn period_containing(
    period: Period,
    tz: &TimeZone,
    anchor: Timestamp,
    at: Timestamp,
) -> Option<PeriodWindow> {
    let count = i64::from(period.count.max(1));
    let anchor_ordinal = ordinal(period.unit, anchor.to_zoned_datetime(tz.clone()).date());
    let at_ordinal = ordinal(period.unit, at.to_zoned_datetime(tz.clone()).date());
    let index = (at_ordinal - anchor_ordinal).div_euclid(count);
    let start_ordinal = anchor_ordinal + index * count;
    let start = local_midnight(first_day(period.unit, start_ordinal)?, tz)?;
    let end = local_midnight(first_day(period.unit, start_ordinal + count)?, tz)?;
    Some(PeriodWindow { index, start, end })
}

/// The 1-based day of `at` within its calendar unit (Monday = 1 for weeks), for collection
/// windows.
pub fn day_of_unit(unit: PeriodUnit, tz: &TimeZone, at: Timestamp) -> u32 {
    let date = at.to_zoned_datetime(tz.clone()).date();
    let day = match unit {
        PeriodUnit::Day => 1,
        PeriodUnit::Week => i64::from(date.weekday().to_monday_one_offset()),
        PeriodUnit::Month => i64::from(date.day()),
        PeriodUnit::Quarter => {
            let first =
                first_day(PeriodUnit::Quarter, ordinal(PeriodUnit::Quarter, date)).unwrap_or(date);
            first.duration_until(date).as_secs() / 86_400 + 1
        }
        PeriodUnit::Year => i64::from(date.day_of_year()),
    };
    u32::try_from(day).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    #[test]
    fn months_split_at_local_midnight() {
        let month = Period {
            unit: PeriodUnit::Month,
            count: 1,
        };
        let anchor = ts("2026-01-10T00:00:00Z");
        // 2026-02-28 23:59:59 in Shanghai is 15:59:59 UTC; one second later is March there.
        let last =
            period_containing(month, &shanghai(), anchor, ts("2026-02-28T15:59:59Z")).unwrap();
        let first =
            period_containing(month, &shanghai(), anchor, ts("2026-02-28T16:00:00Z")).unwrap();
        assert_eq!(last.index + 1, first.index);
        assert_eq!(last.end, first.start);
        assert_eq!(first.start, ts("2026-02-28T16:00:00Z"));
        assert_eq!(first.end, ts("2026-03-31T16:00:00Z"));
    }

    #[test]
    fn multi_unit_periods_count_from_the_anchor() {
        let two_weeks = Period {
            unit: PeriodUnit::Week,
            count: 2,
        };
        let tz = TimeZone::UTC;
        let anchor = ts("2026-03-04T12:00:00Z"); // a Wednesday: its week starts Monday 03-02
        let p0 = period_containing(two_weeks, &tz, anchor, ts("2026-03-15T23:59:59Z")).unwrap();
        assert_eq!(
            (p0.index, p0.start, p0.end),
            (0, ts("2026-03-02T00:00:00Z"), ts("2026-03-16T00:00:00Z"))
        );
        let p1 = period_containing(two_weeks, &tz, anchor, ts("2026-03-16T00:00:00Z")).unwrap();
        assert_eq!(p1.index, 1);
        let quarter = Period {
            unit: PeriodUnit::Quarter,
            count: 1,
        };
        let q = period_containing(quarter, &tz, anchor, ts("2026-05-20T00:00:00Z")).unwrap();
        assert_eq!(
            (q.start, q.end),
            (ts("2026-04-01T00:00:00Z"), ts("2026-07-01T00:00:00Z"))
        );
        let year = Period {
            unit: PeriodUnit::Year,
            count: 1,
        };
        let y = period_containing(year, &tz, anchor, ts("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!(y.index, 1);
        let day = Period {
            unit: PeriodUnit::Day,
            count: 1,
        };
        let d = period_containing(day, &shanghai(), anchor, ts("2026-03-05T16:00:00Z")).unwrap();
        assert_eq!(
            (d.start, d.end),
            (ts("2026-03-05T16:00:00Z"), ts("2026-03-06T16:00:00Z"))
        );
    }

    #[test]
    fn days_of_units() {
        let tz = shanghai();
        assert_eq!(
            day_of_unit(PeriodUnit::Month, &tz, ts("2026-03-14T16:00:00Z")),
            15
        );
        assert_eq!(
            day_of_unit(PeriodUnit::Week, &tz, ts("2026-03-02T00:00:00Z")),
            1
        ); // Monday
        assert_eq!(
            day_of_unit(PeriodUnit::Quarter, &tz, ts("2026-05-01T00:00:00Z")),
            31
        );
        assert_eq!(
            day_of_unit(PeriodUnit::Year, &tz, ts("2026-02-01T00:00:00Z")),
            32
        );
    }
}
