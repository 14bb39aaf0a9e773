//! What a mandate allows (DESIGN §3): purposes, amounts, limits, validity, timing rules, and how
//! an amendment of them is classified as tightening or loosening (§3.1).

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::money::{Currency, Money};
use super::text::check_required_text;

/// The default mandate time zone: period boundaries are calendar periods there.
pub const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";
/// Most purposes one mandate may list.
pub const MAX_PURPOSES: usize = 10;
/// Longest pre-notification lead time.
pub const MAX_LEAD_TIME_S: i64 = 30 * 24 * 3600;
/// Most units one period may span.
pub const MAX_PERIOD_COUNT: u32 = 12;
/// Widest collection window tolerance either side of its day.
pub const MAX_TOLERANCE_DAYS: u32 = 15;

/// What a deduction is for (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Purpose {
    Utility,
    Telecom,
    LoanRepayment,
    InsurancePremium,
    Subscription,
    Membership,
    TransitToll,
    GovernmentFee,
    Education,
    Other,
    /// Recovering a refund. No mandate may list it; it needs the payer's one-off consent.
    RefundRecovery,
}

/// How the per-debit limit is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AmountType {
    /// Every debit is exactly the per-debit amount.
    Fixed,
    /// Every debit is at most the per-debit amount.
    Maximum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeriodUnit {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl PeriodUnit {
    /// Largest 1-based day number inside one unit.
    pub fn max_day(self) -> u32 {
        match self {
            Self::Day => 1,
            Self::Week => 7,
            Self::Month => 31,
            Self::Quarter => 92,
            Self::Year => 366,
        }
    }
}

/// `count` calendar `unit`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub unit: PeriodUnit,
    pub count: u32,
}

/// Limits that reset every period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodLimits {
    pub period: Period,
    pub amount_limit: Option<Money>,
    pub debit_limit: Option<u32>,
}

/// Debits only on `day_of_period` ± `tolerance_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionWindow {
    pub day_of_period: u32,
    pub tolerance_days: u32,
}

/// Each debit needs a notice made at least `lead_time_s` before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreNotification {
    pub lead_time_s: i64,
}

/// A time zone of the IANA time zone database (the copy bundled with the service), kept under
/// its primary name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZoneName(String);

impl TimeZoneName {
    /// Any name the database knows, in any letter case, its aliases included; stored as the
    /// zone's primary name by ECMAScript's rules (the one browsers report): `asia/shanghai` is
    /// `Asia/Shanghai`, `US/Eastern` is `America/New_York`, `Asia/Calcutta` is `Asia/Kolkata`,
    /// and `UTC`, `Etc/UTC`, `GMT` and `Etc/GMT` are `UTC`. Fixed offsets (`+08:00`) and POSIX
    /// rules are not zones of the database, and not calendars a payer agreed to: refused.
    pub fn parse(field: &str, name: &str) -> Result<Self, FieldViolation> {
        let refused = || {
            FieldViolation::new(
                field,
                "must be a time zone of the IANA database, such as Asia/Shanghai or UTC",
            )
        };
        let zone = jiff::tz::TimeZone::get(name).map_err(|_| refused())?;
        let primary = zone.primary_iana_name().ok_or_else(refused)?;
        Ok(Self(primary.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The zone's rules; present because [`TimeZoneName::parse`] checked them.
    pub fn zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.0).expect("checked when parsed")
    }
}

impl Default for TimeZoneName {
    fn default() -> Self {
        Self(DEFAULT_TIMEZONE.to_owned())
    }
}

impl TryFrom<String> for TimeZoneName {
    type Error = FieldViolation;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("timezone", &value)
    }
}

impl From<TimeZoneName> for String {
    fn from(value: TimeZoneName) -> String {
        value.0
    }
}

/// The terms of a mandate. Built through [`Terms::new`], which checks the fields against each
/// other; every field is then consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub display_account: String,
    pub purposes: BTreeSet<Purpose>,
    pub currency: Currency,
    pub amount_type: AmountType,
    pub per_debit_limit: Money,
    pub period_limits: Option<PeriodLimits>,
    pub total_amount_limit: Option<Money>,
    pub total_debit_limit: Option<u32>,
    pub valid_from: Timestamp,
    pub valid_until: Option<Timestamp>,
    pub collection_window: Option<CollectionWindow>,
    pub pre_notification: Option<PreNotification>,
    pub timezone: TimeZoneName,
    pub single_use: bool,
}

/// Terms as a caller sent them: `valid_from` may be left out, and nothing is cross-checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsDraft {
    pub display_account: String,
    pub purposes: BTreeSet<Purpose>,
    pub currency: Currency,
    pub amount_type: AmountType,
    pub per_debit_limit: Money,
    pub period_limits: Option<PeriodLimits>,
    pub total_amount_limit: Option<Money>,
    pub total_debit_limit: Option<u32>,
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
    pub collection_window: Option<CollectionWindow>,
    pub pre_notification: Option<PreNotification>,
    pub timezone: TimeZoneName,
    pub single_use: bool,
}

impl TermsDraft {
    /// Fills in `valid_from` and checks the whole (see [`Terms::new`]).
    pub fn complete(self, default_valid_from: Timestamp) -> Result<Terms, FieldViolation> {
        let Self {
            display_account,
            purposes,
            currency,
            amount_type,
            per_debit_limit,
            period_limits,
            total_amount_limit,
            total_debit_limit,
            valid_from,
            valid_until,
            collection_window,
            pre_notification,
            timezone,
            single_use,
        } = self;
        Terms::new(Terms {
            display_account,
            purposes,
            currency,
            amount_type,
            per_debit_limit,
            period_limits,
            total_amount_limit,
            total_debit_limit,
            valid_from: valid_from.unwrap_or(default_valid_from),
            valid_until,
            collection_window,
            pre_notification,
            timezone,
            single_use,
        })
    }
}

/// Whether replacing terms needs the payer's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmendmentKind {
    /// Nothing changes.
    Unchanged,
    /// Every change narrows what may be collected: applies at once.
    Tightening,
    /// Something widens (or changes in a way that is not plainly narrower): the payer confirms.
    Loosening,
}

impl Terms {
    /// Checks the fields against each other. Field names in errors are under `terms.`.
    pub fn new(terms: Terms) -> Result<Self, FieldViolation> {
        check_required_text("terms.display_account", &terms.display_account)?;
        if terms.purposes.is_empty() {
            return Err(FieldViolation::new(
                "terms.purposes",
                "at least one purpose is required",
            ));
        }
        if terms.purposes.len() > MAX_PURPOSES {
            return Err(FieldViolation::new(
                "terms.purposes",
                format!("at most {MAX_PURPOSES} purposes"),
            ));
        }
        if terms.purposes.contains(&Purpose::RefundRecovery) {
            return Err(FieldViolation::new(
                "terms.purposes",
                "REFUND_RECOVERY cannot be authorised by a standing mandate; it needs a one-off approval",
            ));
        }
        let same_currency = |field: &str, money: &Money| {
            if money.currency() == terms.currency {
                Ok(())
            } else {
                Err(FieldViolation::new(
                    field,
                    format!("must be in the mandate currency {}", terms.currency.code()),
                ))
            }
        };
        same_currency(
            "terms.per_debit_limit.currency_code",
            &terms.per_debit_limit,
        )?;
        if let Some(limits) = &terms.period_limits {
            if limits.period.count == 0 || limits.period.count > MAX_PERIOD_COUNT {
                return Err(FieldViolation::new(
                    "terms.period.count",
                    format!("must be 1 to {MAX_PERIOD_COUNT}"),
                ));
            }
            if limits.amount_limit.is_none() && limits.debit_limit.is_none() {
                return Err(FieldViolation::new(
                    "terms.period",
                    "a period needs period_amount_limit or period_debit_limit",
                ));
            }
            if let Some(amount) = &limits.amount_limit {
                same_currency("terms.period_amount_limit.currency_code", amount)?;
            }
            if limits.debit_limit == Some(0) {
                return Err(FieldViolation::new(
                    "terms.period_debit_limit",
                    "must be at least 1",
                ));
            }
        }
        if let Some(total) = &terms.total_amount_limit {
            same_currency("terms.total_amount_limit.currency_code", total)?;
        }
        if terms.total_debit_limit == Some(0) {
            return Err(FieldViolation::new(
                "terms.total_debit_limit",
                "must be at least 1",
            ));
        }
        if let Some(until) = terms.valid_until
            && until <= terms.valid_from
        {
            return Err(FieldViolation::new(
                "terms.valid_until",
                "must be after valid_from",
            ));
        }
        if let Some(window) = &terms.collection_window {
            let Some(limits) = &terms.period_limits else {
                return Err(FieldViolation::new(
                    "terms.collection_window",
                    "a collection window needs a period",
                ));
            };
            let max_day = limits.period.unit.max_day();
            if window.day_of_period == 0 || window.day_of_period > max_day {
                return Err(FieldViolation::new(
                    "terms.collection_window.day_of_period",
                    format!("must be 1 to {max_day} for this period unit"),
                ));
            }
            if window.tolerance_days > MAX_TOLERANCE_DAYS {
                return Err(FieldViolation::new(
                    "terms.collection_window.tolerance_days",
                    format!("must be at most {MAX_TOLERANCE_DAYS}"),
                ));
            }
        }
        if let Some(notice) = &terms.pre_notification
            && !(0..=MAX_LEAD_TIME_S).contains(&notice.lead_time_s)
        {
            return Err(FieldViolation::new(
                "terms.pre_notification.lead_time_s",
                format!("must be 0 to {MAX_LEAD_TIME_S} seconds"),
            ));
        }
        Ok(terms)
    }

    /// Classifies replacing `self` by `new` (§3.1). The currency cannot change.
    pub fn classify_amendment(&self, new: &Terms) -> Result<AmendmentKind, FieldViolation> {
        if new.currency != self.currency {
            return Err(FieldViolation::new(
                "terms.currency_code",
                "the currency of a mandate cannot change",
            ));
        }
        if new == self {
            return Ok(AmendmentKind::Unchanged);
        }
        let narrower = [
            new.display_account == self.display_account,
            new.purposes.is_subset(&self.purposes),
            amount_rule_within(
                (new.amount_type, &new.per_debit_limit),
                (self.amount_type, &self.per_debit_limit),
            ),
            period_limits_within(new.period_limits.as_ref(), self.period_limits.as_ref()),
            limit_within(
                new.total_amount_limit.as_ref(),
                self.total_amount_limit.as_ref(),
            ),
            limit_within(
                new.total_debit_limit.as_ref(),
                self.total_debit_limit.as_ref(),
            ),
            new.valid_from >= self.valid_from,
            limit_within(new.valid_until.as_ref(), self.valid_until.as_ref()),
            match (&new.collection_window, &self.collection_window) {
                (_, None) => true,
                (Some(n), Some(o)) => n == o,
                (None, Some(_)) => false,
            },
            match (&new.pre_notification, &self.pre_notification) {
                (_, None) => true,
                (Some(n), Some(o)) => n.lead_time_s >= o.lead_time_s,
                (None, Some(_)) => false,
            },
            new.timezone == self.timezone,
            new.single_use || !self.single_use,
        ];
        Ok(if narrower.iter().all(|&ok| ok) {
            AmendmentKind::Tightening
        } else {
            AmendmentKind::Loosening
        })
    }
}

/// Whether every debit amount the new rule admits is admitted by the old one.
fn amount_rule_within(new: (AmountType, &Money), old: (AmountType, &Money)) -> bool {
    match (new.0, old.0) {
        (AmountType::Fixed, AmountType::Fixed) => new.1 == old.1,
        (AmountType::Fixed | AmountType::Maximum, AmountType::Maximum) => new.1 <= old.1,
        (AmountType::Maximum, AmountType::Fixed) => false,
    }
}

/// An upper bound is narrower when it is added or lowered; removing one widens.
fn limit_within<T: PartialOrd>(new: Option<&T>, old: Option<&T>) -> bool {
    match (new, old) {
        (_, None) => true,
        (Some(n), Some(o)) => n <= o,
        (None, Some(_)) => false,
    }
}

fn period_limits_within(new: Option<&PeriodLimits>, old: Option<&PeriodLimits>) -> bool {
    match (new, old) {
        (_, None) => true,
        (None, Some(_)) => false,
        // Limits over different periods do not compare: a new period shape needs consent.
        (Some(n), Some(o)) => {
            n.period == o.period
                && limit_within(n.amount_limit.as_ref(), o.amount_limit.as_ref())
                && limit_within(n.debit_limit.as_ref(), o.debit_limit.as_ref())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn cny(amount: &str) -> Money {
        Money::parse(Currency::Cny, amount).unwrap()
    }

    pub fn sample_terms() -> Terms {
        Terms::new(Terms {
            display_account: "ELEC-0001".into(),
            purposes: [Purpose::Utility].into(),
            currency: Currency::Cny,
            amount_type: AmountType::Maximum,
            per_debit_limit: cny("500"),
            period_limits: Some(PeriodLimits {
                period: Period {
                    unit: PeriodUnit::Month,
                    count: 1,
                },
                amount_limit: Some(cny("1000")),
                debit_limit: Some(2),
            }),
            total_amount_limit: None,
            total_debit_limit: None,
            valid_from: "2026-01-01T00:00:00Z".parse().unwrap(),
            valid_until: Some("2027-01-01T00:00:00Z".parse().unwrap()),
            collection_window: None,
            pre_notification: None,
            timezone: TimeZoneName::default(),
            single_use: false,
        })
        .unwrap()
    }

    #[test]
    fn refuses_inconsistent_terms() {
        type Edit = fn(&mut Terms);
        let cases: [(Edit, &str); 9] = [
            (|t| t.purposes.clear(), "terms.purposes"),
            (
                |t| {
                    t.purposes.insert(Purpose::RefundRecovery);
                },
                "terms.purposes",
            ),
            (
                |t| t.per_debit_limit = Money::parse(Currency::Usd, "1").unwrap(),
                "terms.per_debit_limit.currency_code",
            ),
            (|t| t.valid_until = Some(t.valid_from), "terms.valid_until"),
            (
                |t| t.period_limits.as_mut().unwrap().period.count = 0,
                "terms.period.count",
            ),
            (
                |t| {
                    let l = t.period_limits.as_mut().unwrap();
                    l.amount_limit = None;
                    l.debit_limit = None;
                },
                "terms.period",
            ),
            (
                |t| {
                    t.period_limits = None;
                    t.collection_window = Some(CollectionWindow {
                        day_of_period: 1,
                        tolerance_days: 0,
                    });
                },
                "terms.collection_window",
            ),
            (
                |t| {
                    t.collection_window = Some(CollectionWindow {
                        day_of_period: 32,
                        tolerance_days: 0,
                    })
                },
                "terms.collection_window.day_of_period",
            ),
            (
                |t| t.pre_notification = Some(PreNotification { lead_time_s: -1 }),
                "terms.pre_notification.lead_time_s",
            ),
        ];
        for (edit, field) in cases {
            let mut terms = sample_terms();
            edit(&mut terms);
            assert_eq!(Terms::new(terms).unwrap_err().field, field);
        }
    }

    #[test]
    fn classifies_amendments() {
        type Edit = fn(&mut Terms);
        let cases: [(Edit, AmendmentKind); 14] = [
            (|_| {}, AmendmentKind::Unchanged),
            (
                |t| t.per_debit_limit = cny("400"),
                AmendmentKind::Tightening,
            ),
            (|t| t.per_debit_limit = cny("600"), AmendmentKind::Loosening),
            (
                |t| t.amount_type = AmountType::Fixed,
                AmendmentKind::Tightening,
            ),
            (
                |t| {
                    t.purposes.insert(Purpose::Telecom);
                },
                AmendmentKind::Loosening,
            ),
            (
                |t| t.valid_until = Some("2026-06-01T00:00:00Z".parse().unwrap()),
                AmendmentKind::Tightening,
            ),
            (|t| t.valid_until = None, AmendmentKind::Loosening),
            (
                |t| t.total_debit_limit = Some(10),
                AmendmentKind::Tightening,
            ),
            (
                |t| t.period_limits.as_mut().unwrap().debit_limit = Some(3),
                AmendmentKind::Loosening,
            ),
            (
                |t| t.period_limits.as_mut().unwrap().period.unit = PeriodUnit::Week,
                AmendmentKind::Loosening,
            ),
            (
                |t| t.pre_notification = Some(PreNotification { lead_time_s: 3600 }),
                AmendmentKind::Tightening,
            ),
            (
                |t| t.timezone = TimeZoneName::parse("tz", "Europe/London").unwrap(),
                AmendmentKind::Loosening,
            ),
            (|t| t.single_use = true, AmendmentKind::Tightening),
            (
                |t| t.display_account = "OTHER".into(),
                AmendmentKind::Loosening,
            ),
        ];
        for (i, (edit, kind)) in cases.into_iter().enumerate() {
            let old = sample_terms();
            let mut new = old.clone();
            edit(&mut new);
            assert_eq!(old.classify_amendment(&new).unwrap(), kind, "case {i}");
        }
        let mut usd = sample_terms();
        usd.currency = Currency::Usd;
        assert!(sample_terms().classify_amendment(&usd).is_err());
    }

    #[test]
    fn time_zones() {
        for (given, stored) in [
            ("Asia/Shanghai", "Asia/Shanghai"),
            ("asia/shanghai", "Asia/Shanghai"),
            ("America/New_York", "America/New_York"),
            ("US/Eastern", "America/New_York"),
            ("Asia/Calcutta", "Asia/Kolkata"),
            ("UTC", "UTC"),
            ("utc", "UTC"),
            ("Etc/UTC", "UTC"),
            ("GMT", "UTC"),
            ("Europe/London", "Europe/London"),
        ] {
            let parsed = TimeZoneName::parse("tz", given).unwrap();
            assert_eq!(parsed.as_str(), stored, "{given}");
        }
        for bad in [
            "",
            "Mars/Olympus",
            "UTC+8",
            "+08:00",
            "EST5EDT,M3.2.0,M11.1.0",
            "Asia/Shang hai",
        ] {
            assert!(TimeZoneName::parse("tz", bad).is_err(), "{bad}");
        }
    }
}
