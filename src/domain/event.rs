//! Events for callers (DESIGN §6a): what kind of change a mandate or deduction went through,
//! and the cursor a caller resumes a stream from. One event per state change, for the merchant
//! that owns the mandate and for its payer.

use jiff::Timestamp;

use super::FieldViolation;
use super::deduction::DeductionStatus;

/// What happened to the mandate or deduction an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    MandateCreated,
    MandateConfirmed,
    MandateFundingSourcesSet,
    MandatePaused,
    MandateResumed,
    MandateSuspended,
    MandateReinstated,
    MandateRevoked,
    MandateTerminated,
    MandateExpired,
    MandateConsumed,
    MandateAmended,
    MandateAmendmentPending,
    MandateAmendmentConfirmed,
    /// A mandate change with no kind of its own.
    MandateUpdated,
    DeductionDeclined,
    DeductionProcessing,
    DeductionSucceeded,
    DeductionFailed,
    DeductionPending,
    DeductionRefunded,
    DeductionPartiallyRefunded,
}

impl EventKind {
    pub const ALL: [Self; 22] = [
        Self::MandateCreated,
        Self::MandateConfirmed,
        Self::MandateFundingSourcesSet,
        Self::MandatePaused,
        Self::MandateResumed,
        Self::MandateSuspended,
        Self::MandateReinstated,
        Self::MandateRevoked,
        Self::MandateTerminated,
        Self::MandateExpired,
        Self::MandateConsumed,
        Self::MandateAmended,
        Self::MandateAmendmentPending,
        Self::MandateAmendmentConfirmed,
        Self::MandateUpdated,
        Self::DeductionDeclined,
        Self::DeductionProcessing,
        Self::DeductionSucceeded,
        Self::DeductionFailed,
        Self::DeductionPending,
        Self::DeductionRefunded,
        Self::DeductionPartiallyRefunded,
    ];

    /// The stored name; a mandate's kinds are named as its audit actions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MandateCreated => "MANDATE_CREATED",
            Self::MandateConfirmed => "MANDATE_CONFIRMED",
            Self::MandateFundingSourcesSet => "MANDATE_FUNDING_SOURCES_SET",
            Self::MandatePaused => "MANDATE_PAUSED",
            Self::MandateResumed => "MANDATE_RESUMED",
            Self::MandateSuspended => "MANDATE_SUSPENDED",
            Self::MandateReinstated => "MANDATE_REINSTATED",
            Self::MandateRevoked => "MANDATE_REVOKED",
            Self::MandateTerminated => "MANDATE_TERMINATED",
            Self::MandateExpired => "MANDATE_EXPIRED",
            Self::MandateConsumed => "MANDATE_CONSUMED",
            Self::MandateAmended => "MANDATE_AMENDED",
            Self::MandateAmendmentPending => "MANDATE_AMENDMENT_PENDING",
            Self::MandateAmendmentConfirmed => "MANDATE_AMENDMENT_CONFIRMED",
            Self::MandateUpdated => "MANDATE_UPDATED",
            Self::DeductionDeclined => "DEDUCTION_DECLINED",
            Self::DeductionProcessing => "DEDUCTION_PROCESSING",
            Self::DeductionSucceeded => "DEDUCTION_SUCCEEDED",
            Self::DeductionFailed => "DEDUCTION_FAILED",
            Self::DeductionPending => "DEDUCTION_PENDING",
            Self::DeductionRefunded => "DEDUCTION_REFUNDED",
            Self::DeductionPartiallyRefunded => "DEDUCTION_PARTIALLY_REFUNDED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The kind of a mandate change recorded under the audit `action` (`Transition::action`);
    /// a change with no kind of its own is [`EventKind::MandateUpdated`].
    pub fn of_mandate_action(action: &str) -> Self {
        Self::parse(action)
            .filter(|kind| kind.is_mandate())
            .unwrap_or(Self::MandateUpdated)
    }

    /// The kind of a deduction now in `status`.
    pub fn of_deduction(status: DeductionStatus) -> Self {
        match status {
            DeductionStatus::Declined => Self::DeductionDeclined,
            DeductionStatus::Processing => Self::DeductionProcessing,
            DeductionStatus::Succeeded => Self::DeductionSucceeded,
            DeductionStatus::Failed => Self::DeductionFailed,
            DeductionStatus::PendingConfirmation => Self::DeductionPending,
            DeductionStatus::Refunded => Self::DeductionRefunded,
            DeductionStatus::PartiallyRefunded => Self::DeductionPartiallyRefunded,
        }
    }

    pub fn is_mandate(self) -> bool {
        self.as_str().starts_with("MANDATE_")
    }
}

/// Where a stream stands: every event up to and including this position was delivered.
/// Callers see it as an opaque token (`e` and the position in decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor(i64);

impl EventCursor {
    /// Before every event.
    pub const START: Self = Self(0);

    pub fn at(position: i64) -> Self {
        Self(position)
    }

    pub fn position(self) -> i64 {
        self.0
    }

    /// The token a caller resumes from; empty means [`EventCursor::START`].
    pub fn parse(field: &str, token: &str) -> Result<Self, FieldViolation> {
        if token.is_empty() {
            return Ok(Self::START);
        }
        let invalid = || FieldViolation::new(field, "is not a cursor this service issued");
        let digits = token.strip_prefix('e').ok_or_else(invalid)?;
        // Canonical decimal only: one token per position.
        if digits.is_empty()
            || digits.len() > 19
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return Err(invalid());
        }
        digits.parse::<i64>().map(Self).map_err(|_| invalid())
    }

    pub fn token(self) -> String {
        format!("e{}", self.0)
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub cursor: EventCursor,
    pub at: Timestamp,
    pub merchant_id: String,
    pub payer_id: String,
    pub mandate_id: String,
    pub deduction_id: Option<String>,
    pub kind: EventKind,
    /// The mandate's status (mandate events) or the deduction's (deduction events), as stored.
    pub status: String,
    /// The mandate's version after the change (mandate events), or the version the deduction
    /// was judged against.
    pub mandate_version: i64,
}

/// Whose events a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventScope {
    Merchant(String),
    Payer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn mandate_actions_name_their_kind() {
        assert_eq!(
            EventKind::of_mandate_action("MANDATE_PAUSED"),
            EventKind::MandatePaused
        );
        assert_eq!(
            EventKind::of_mandate_action("MANDATE_EXPIRED"),
            EventKind::MandateExpired
        );
        // A deduction kind is never a mandate change's.
        assert_eq!(
            EventKind::of_mandate_action("DEDUCTION_FAILED"),
            EventKind::MandateUpdated
        );
        assert_eq!(
            EventKind::of_mandate_action("SOMETHING_NEW"),
            EventKind::MandateUpdated
        );
    }

    #[test]
    fn every_deduction_status_has_a_kind() {
        for status in DeductionStatus::ALL {
            assert!(!EventKind::of_deduction(status).is_mandate());
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        assert_eq!(EventCursor::parse("cursor", ""), Ok(EventCursor::START));
        for position in [0, 1, 42, i64::MAX] {
            let cursor = EventCursor::at(position);
            assert_eq!(EventCursor::parse("cursor", &cursor.token()), Ok(cursor));
        }
        for bad in [
            "e",
            "1",
            "e-1",
            "e01",
            "x1",
            "e1 ",
            " e1",
            "e1.0",
            "e9223372036854775808",
            "e+1",
            "e１",
        ] {
            let err = EventCursor::parse("cursor", bad).unwrap_err();
            assert_eq!(err.field, "cursor", "{bad}");
        }
    }
}
