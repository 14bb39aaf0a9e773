//! The mandate and its lifecycle (DESIGN §3.1) as named transitions. A refused transition leaves
//! the mandate unchanged; an applied one bumps its version.

use jiff::{Span, Timestamp};
use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::consent::ConsentEvidence;
use super::funding::FundingSources;
use super::ids::{ContractId, MandateId, MerchantId, PayerId};
use super::terms::{AmendmentKind, Terms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MandateStatus {
    PendingConsent,
    Active,
    Paused,
    Suspended,
    Revoked,
    Terminated,
    Expired,
    Consumed,
}

impl MandateStatus {
    pub const ALL: [MandateStatus; 8] = [
        Self::PendingConsent,
        Self::Active,
        Self::Paused,
        Self::Suspended,
        Self::Revoked,
        Self::Terminated,
        Self::Expired,
        Self::Consumed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingConsent => "PENDING_CONSENT",
            Self::Active => "ACTIVE",
            Self::Paused => "PAUSED",
            Self::Suspended => "SUSPENDED",
            Self::Revoked => "REVOKED",
            Self::Terminated => "TERMINATED",
            Self::Expired => "EXPIRED",
            Self::Consumed => "CONSUMED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Terminal statuses are irreversible.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Revoked | Self::Terminated | Self::Expired | Self::Consumed => true,
            Self::PendingConsent | Self::Active | Self::Paused | Self::Suspended => false,
        }
    }
}

impl std::fmt::Display for MandateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a mandate expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCause {
    /// The payer did not consent within the consent window.
    ConsentWindow,
    /// `valid_until` passed.
    Validity,
    /// Nothing was collected for the dormancy period.
    Dormancy,
}

impl ExpiryCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsentWindow => "CONSENT_WINDOW_PASSED",
            Self::Validity => "VALIDITY_ENDED",
            Self::Dormancy => "DORMANT",
        }
    }
}

/// A loosening amendment waiting for the payer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAmendment {
    pub terms: Terms,
    pub requested_at: Timestamp,
    pub reason: String,
}

/// A standing authorisation for one merchant to collect from one payer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    pub id: MandateId,
    pub merchant_id: MerchantId,
    pub contract_id: ContractId,
    pub payer_id: PayerId,
    /// The terms in force.
    pub terms: Terms,
    /// Empty until the payer confirms.
    pub funding_sources: Option<FundingSources>,
    /// The payer's consent to the mandate.
    pub consent: Option<ConsentEvidence>,
    /// The payer's consent to each loosening amendment it accepted, in order.
    #[serde(default)]
    pub amendment_consents: Vec<ConsentEvidence>,
    pub status: MandateStatus,
    /// Set while SUSPENDED: where a reinstatement returns.
    pub suspended_from: Option<MandateStatus>,
    pub pending_amendment: Option<PendingAmendment>,
    /// 1 at creation, +1 with every change.
    pub version: i64,
    pub status_reason: String,
    pub consent_deadline: Timestamp,
    /// Consent or the last collection: the dormancy period runs from here.
    pub last_activity_at: Option<Timestamp>,
    /// When a refund of one of its deductions was last recorded (kept beside the document, so
    /// a refund makes no version): the suspected-refund-recovery rule looks back from here.
    #[serde(skip)]
    pub last_refund_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a transition did; each is one audit action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Created,
    Confirmed,
    FundingSourcesSet,
    Paused,
    Resumed,
    Suspended,
    Reinstated,
    Revoked,
    Terminated,
    Expired(ExpiryCause),
    Consumed,
    AmendmentApplied,
    AmendmentPending,
    AmendmentConfirmed,
}

impl Transition {
    /// The audit action name.
    pub fn action(self) -> &'static str {
        match self {
            Self::Created => "MANDATE_CREATED",
            Self::Confirmed => "MANDATE_CONFIRMED",
            Self::FundingSourcesSet => "MANDATE_FUNDING_SOURCES_SET",
            Self::Paused => "MANDATE_PAUSED",
            Self::Resumed => "MANDATE_RESUMED",
            Self::Suspended => "MANDATE_SUSPENDED",
            Self::Reinstated => "MANDATE_REINSTATED",
            Self::Revoked => "MANDATE_REVOKED",
            Self::Terminated => "MANDATE_TERMINATED",
            Self::Expired(_) => "MANDATE_EXPIRED",
            Self::Consumed => "MANDATE_CONSUMED",
            Self::AmendmentApplied => "MANDATE_AMENDED",
            Self::AmendmentPending => "MANDATE_AMENDMENT_PENDING",
            Self::AmendmentConfirmed => "MANDATE_AMENDMENT_CONFIRMED",
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MandateError {
    #[error("cannot {action} a mandate that is {current}")]
    InvalidTransition {
        action: &'static str,
        current: MandateStatus,
    },
    #[error(
        "the mandate is at version {current}, not the version {shown} shown to the payer; show it again"
    )]
    VersionMismatch { shown: i64, current: i64 },
    #[error("the mandate has no pending amendment")]
    NoPendingAmendment,
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
}

/// A new mandate's fields, already parsed.
pub struct NewMandate {
    pub id: MandateId,
    pub merchant_id: MerchantId,
    pub contract_id: ContractId,
    pub payer_id: PayerId,
    pub terms: Terms,
}

impl Mandate {
    /// A mandate waiting for the payer's consent until `at + consent_window`.
    pub fn create(
        new: NewMandate,
        at: Timestamp,
        consent_window: Span,
    ) -> Result<Self, FieldViolation> {
        let consent_deadline = at
            .checked_add(consent_window)
            .map_err(|_| FieldViolation::new("consent_window", "out of range"))?;
        Ok(Self {
            id: new.id,
            merchant_id: new.merchant_id,
            contract_id: new.contract_id,
            payer_id: new.payer_id,
            terms: new.terms,
            funding_sources: None,
            consent: None,
            amendment_consents: vec![],
            status: MandateStatus::PendingConsent,
            suspended_from: None,
            pending_amendment: None,
            version: 1,
            status_reason: String::new(),
            consent_deadline,
            last_activity_at: None,
            last_refund_at: None,
            created_at: at,
            updated_at: at,
        })
    }

    /// PENDING_CONSENT → ACTIVE, with the evidence and the funding order. The payer must have
    /// been shown the current version, so consent always covers the terms in force.
    pub fn confirm(
        &mut self,
        shown_version: i64,
        consent: ConsentEvidence,
        sources: FundingSources,
        at: Timestamp,
    ) -> Result<Transition, MandateError> {
        self.require("confirm", &[MandateStatus::PendingConsent])?;
        self.require_version(shown_version)?;
        self.consent = Some(consent);
        self.funding_sources = Some(sources);
        self.last_activity_at = Some(at);
        self.move_to(MandateStatus::Active, "", at);
        Ok(Transition::Confirmed)
    }

    /// Replaces the funding order of a mandate that has not ended.
    pub fn set_funding_sources(
        &mut self,
        sources: FundingSources,
        at: Timestamp,
    ) -> Result<Transition, MandateError> {
        self.require_live("set funding sources of")?;
        self.funding_sources = Some(sources);
        self.touch(at);
        Ok(Transition::FundingSourcesSet)
    }

    /// ACTIVE → PAUSED (payer).
    pub fn pause(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require("pause", &[MandateStatus::Active])?;
        self.move_to(MandateStatus::Paused, reason, at);
        Ok(Transition::Paused)
    }

    /// PAUSED → ACTIVE (payer).
    pub fn resume(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require("resume", &[MandateStatus::Paused])?;
        self.move_to(MandateStatus::Active, reason, at);
        Ok(Transition::Resumed)
    }

    /// ACTIVE or PAUSED → SUSPENDED (operator), remembering where it was.
    pub fn suspend(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require("suspend", &[MandateStatus::Active, MandateStatus::Paused])?;
        self.suspended_from = Some(self.status);
        self.move_to(MandateStatus::Suspended, reason, at);
        Ok(Transition::Suspended)
    }

    /// SUSPENDED → the status it was suspended from (operator).
    pub fn reinstate(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require("reinstate", &[MandateStatus::Suspended])?;
        let previous = self.suspended_from.take().unwrap_or(MandateStatus::Active);
        self.move_to(previous, reason, at);
        Ok(Transition::Reinstated)
    }

    /// Any live status → REVOKED (payer; declining a pending mandate is revoking it).
    pub fn revoke(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require_live("revoke")?;
        self.end(MandateStatus::Revoked, reason, at);
        Ok(Transition::Revoked)
    }

    /// Any live status → TERMINATED (merchant).
    pub fn terminate(&mut self, reason: &str, at: Timestamp) -> Result<Transition, MandateError> {
        self.require_live("terminate")?;
        self.end(MandateStatus::Terminated, reason, at);
        Ok(Transition::Terminated)
    }

    /// Any live status → EXPIRED (the service, when [`Mandate::expiry_due`] says so).
    pub fn expire(
        &mut self,
        cause: ExpiryCause,
        at: Timestamp,
    ) -> Result<Transition, MandateError> {
        self.require_live("expire")?;
        self.end(MandateStatus::Expired, cause.as_str(), at);
        Ok(Transition::Expired(cause))
    }

    /// ACTIVE → CONSUMED: the single use is done or every lifetime limit is used up.
    pub fn consume(&mut self, at: Timestamp) -> Result<Transition, MandateError> {
        self.require("consume", &[MandateStatus::Active])?;
        self.end(MandateStatus::Consumed, "", at);
        Ok(Transition::Consumed)
    }

    /// Replaces the terms (merchant). Before consent, and when every change narrows the
    /// mandate, the new terms apply at once and any pending amendment is dropped; otherwise they
    /// wait for the payer, replacing an earlier pending amendment. Terms equal to those in force
    /// only withdraw a pending amendment.
    pub fn amend(
        &mut self,
        terms: Terms,
        reason: &str,
        at: Timestamp,
    ) -> Result<Transition, MandateError> {
        self.require_live("amend")?;
        let kind = self.terms.classify_amendment(&terms)?;
        if kind == AmendmentKind::Unchanged && self.pending_amendment.is_none() {
            return Err(FieldViolation::new("terms", "equal to the terms in force").into());
        }
        let applies_now =
            self.status == MandateStatus::PendingConsent || kind != AmendmentKind::Loosening;
        if applies_now {
            self.terms = terms;
            self.pending_amendment = None;
            self.touch(at);
            Ok(Transition::AmendmentApplied)
        } else {
            self.pending_amendment = Some(PendingAmendment {
                terms,
                requested_at: at,
                reason: reason.to_owned(),
            });
            self.touch(at);
            Ok(Transition::AmendmentPending)
        }
    }

    /// The payer accepts the pending amendment it was shown at `shown_version`, with the
    /// evidence of that consent.
    pub fn confirm_amendment(
        &mut self,
        shown_version: i64,
        consent: ConsentEvidence,
        at: Timestamp,
    ) -> Result<Transition, MandateError> {
        self.require_live("confirm an amendment of")?;
        self.require_version(shown_version)?;
        let pending = self
            .pending_amendment
            .take()
            .ok_or(MandateError::NoPendingAmendment)?;
        self.terms = pending.terms;
        self.amendment_consents.push(consent);
        self.touch(at);
        Ok(Transition::AmendmentConfirmed)
    }

    /// Whether time has ended this mandate at `now`, and why.
    pub fn expiry_due(&self, now: Timestamp, dormancy: Span) -> Option<ExpiryCause> {
        let due = self.next_expiry(dormancy)?;
        (now >= due.0).then_some(due.1)
    }

    /// When time will end this mandate if nothing else happens first.
    pub fn next_expiry(&self, dormancy: Span) -> Option<(Timestamp, ExpiryCause)> {
        if self.status.is_terminal() {
            return None;
        }
        let mut candidates = vec![];
        if self.status == MandateStatus::PendingConsent {
            candidates.push((self.consent_deadline, ExpiryCause::ConsentWindow));
        }
        if let Some(until) = self.terms.valid_until {
            candidates.push((until, ExpiryCause::Validity));
        }
        if let Some(last) = self.last_activity_at {
            // Dormancy counts calendar months where the payer lives.
            let zoned = last.to_zoned_datetime(self.terms.timezone.zone());
            if let Ok(end) = zoned.checked_add(dormancy) {
                candidates.push((end.timestamp(), ExpiryCause::Dormancy));
            }
        }
        candidates.into_iter().min_by_key(|(at, _)| *at)
    }

    fn require(&self, action: &'static str, allowed: &[MandateStatus]) -> Result<(), MandateError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(MandateError::InvalidTransition {
                action,
                current: self.status,
            })
        }
    }

    fn require_live(&self, action: &'static str) -> Result<(), MandateError> {
        if self.status.is_terminal() {
            Err(MandateError::InvalidTransition {
                action,
                current: self.status,
            })
        } else {
            Ok(())
        }
    }

    fn require_version(&self, shown: i64) -> Result<(), MandateError> {
        if shown == self.version {
            Ok(())
        } else {
            Err(MandateError::VersionMismatch {
                shown,
                current: self.version,
            })
        }
    }

    fn end(&mut self, status: MandateStatus, reason: &str, at: Timestamp) {
        self.suspended_from = None;
        self.pending_amendment = None;
        self.move_to(status, reason, at);
    }

    fn move_to(&mut self, status: MandateStatus, reason: &str, at: Timestamp) {
        self.status = status;
        reason.clone_into(&mut self.status_reason);
        self.touch(at);
    }

    fn touch(&mut self, at: Timestamp) {
        self.version += 1;
        self.updated_at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::MandateStatus::*;
    use super::*;
    use crate::domain::consent::{ConsentChannel, ConsentInput, ConsentMethod};
    use crate::domain::funding::{FundingSource, Instrument};
    use crate::domain::money::Currency;
    use crate::domain::terms::tests::{cny, sample_terms};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn evidence() -> ConsentEvidence {
        ConsentEvidence::new(
            ConsentInput {
                channel: ConsentChannel::App,
                method: ConsentMethod::Biometric,
                device_id: "dev-1".into(),
                user_agent: String::new(),
                ip_address: "203.0.113.9".into(),
                terms_version: "v1".into(),
                terms_digest: "ab".repeat(32),
            },
            at("2026-01-02T00:00:00Z"),
            1,
        )
        .unwrap()
    }

    fn wallet() -> FundingSources {
        FundingSources::new(
            "funding_sources",
            vec![FundingSource {
                instrument: Instrument::Wallet,
                cap_per_debit: None,
            }],
            Currency::Cny,
        )
        .unwrap()
    }

    fn mandate_in(status: MandateStatus) -> Mandate {
        let t0 = at("2026-01-02T00:00:00Z");
        let mut m = Mandate::create(
            NewMandate {
                id: MandateId::generate(),
                merchant_id: MerchantId::parse("m", "m1").unwrap(),
                contract_id: ContractId::parse("c", "c1").unwrap(),
                payer_id: PayerId::parse("p", "p1").unwrap(),
                terms: sample_terms(),
            },
            t0,
            Span::new().hours(24),
        )
        .unwrap();
        let steps: &[Action] = match status {
            PendingConsent => &[],
            Active => &[confirm],
            Paused => &[confirm, |m| m.pause("", m.updated_at)],
            Suspended => &[confirm, |m| m.suspend("", m.updated_at)],
            Revoked => &[|m| m.revoke("", m.updated_at)],
            Terminated => &[|m| m.terminate("", m.updated_at)],
            Expired => &[|m| m.expire(ExpiryCause::ConsentWindow, m.updated_at)],
            Consumed => &[confirm, |m| m.consume(m.updated_at)],
        };
        for step in steps {
            step(&mut m).unwrap();
        }
        assert_eq!(m.status, status);
        m
    }

    fn confirm(m: &mut Mandate) -> Result<Transition, MandateError> {
        m.confirm(m.version, evidence(), wallet(), m.updated_at)
    }

    type Action = fn(&mut Mandate) -> Result<Transition, MandateError>;

    /// Every (status, action) pair: `Some(status)` where the diagram allows it, `None` where it
    /// must be refused naming the current status.
    #[test]
    fn lifecycle_table() {
        let actions: [(&str, Action); 8] = [
            ("confirm", confirm),
            ("pause", |m| m.pause("", m.updated_at)),
            ("resume", |m| m.resume("", m.updated_at)),
            ("suspend", |m| m.suspend("", m.updated_at)),
            ("reinstate", |m| m.reinstate("", m.updated_at)),
            ("revoke", |m| m.revoke("", m.updated_at)),
            ("terminate", |m| m.terminate("", m.updated_at)),
            ("consume", |m| m.consume(m.updated_at)),
        ];
        let expected = |status: MandateStatus, action: &str| -> Option<MandateStatus> {
            match (status, action) {
                (PendingConsent, "confirm") => Some(Active),
                (Active, "pause") => Some(Paused),
                (Paused, "resume") => Some(Active),
                (Active | Paused, "suspend") => Some(Suspended),
                (Suspended, "reinstate") => Some(Active),
                (s, "revoke") if !s.is_terminal() => Some(Revoked),
                (s, "terminate") if !s.is_terminal() => Some(Terminated),
                (Active, "consume") => Some(Consumed),
                _ => None,
            }
        };
        for status in MandateStatus::ALL {
            for (name, action) in actions {
                let mut m = mandate_in(status);
                let before = m.clone();
                match (action(&mut m), expected(status, name)) {
                    (Ok(_), Some(to)) => {
                        assert_eq!(m.status, to, "{status} {name}");
                        assert_eq!(m.version, before.version + 1);
                    }
                    (Err(MandateError::InvalidTransition { current, .. }), None) => {
                        assert_eq!(current, status);
                        assert_eq!(m, before, "a refused transition changes nothing");
                    }
                    (got, want) => panic!("{status} {name}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn reinstate_returns_to_previous_status() {
        let mut m = mandate_in(Paused);
        m.suspend("fraud check", m.updated_at).unwrap();
        m.reinstate("cleared", m.updated_at).unwrap();
        assert_eq!(m.status, Paused);
    }

    #[test]
    fn consent_is_bound_to_the_version_shown() {
        let mut m = mandate_in(PendingConsent);
        let err = m
            .confirm(m.version + 1, evidence(), wallet(), m.updated_at)
            .unwrap_err();
        assert!(matches!(err, MandateError::VersionMismatch { .. }));
        assert_eq!(m.status, PendingConsent);
    }

    #[test]
    fn amendments() {
        let mut m = mandate_in(Active);
        let mut looser = m.terms.clone();
        looser.per_debit_limit = cny("800");
        assert_eq!(
            m.amend(looser.clone(), "raise", m.updated_at).unwrap(),
            Transition::AmendmentPending
        );
        assert_eq!(m.terms.per_debit_limit, cny("500"));
        let shown = m.version;
        assert_eq!(
            m.confirm_amendment(shown, evidence(), m.updated_at)
                .unwrap(),
            Transition::AmendmentConfirmed
        );
        assert_eq!(m.terms, looser);
        assert_eq!(m.amendment_consents, [evidence()]);
        assert_eq!(
            m.confirm_amendment(m.version, evidence(), m.updated_at),
            Err(MandateError::NoPendingAmendment)
        );

        let mut tighter = m.terms.clone();
        tighter.per_debit_limit = cny("100");
        assert_eq!(
            m.amend(tighter.clone(), "lower", m.updated_at).unwrap(),
            Transition::AmendmentApplied
        );
        assert_eq!(m.terms, tighter);
        assert!(matches!(
            m.amend(tighter, "same", m.updated_at),
            Err(MandateError::Invalid(_))
        ));

        // Before consent every change applies at once.
        let mut pending = mandate_in(PendingConsent);
        let mut wider = pending.terms.clone();
        wider.per_debit_limit = cny("900");
        assert_eq!(
            pending.amend(wider, "", pending.updated_at).unwrap(),
            Transition::AmendmentApplied
        );
    }

    #[test]
    fn expiry() {
        let dormancy = Span::new().months(36);
        let pending = mandate_in(PendingConsent);
        assert_eq!(
            pending.expiry_due(at("2026-01-02T23:59:59Z"), dormancy),
            None
        );
        assert_eq!(
            pending.expiry_due(at("2026-01-03T00:00:00Z"), dormancy),
            Some(ExpiryCause::ConsentWindow)
        );
        let active = mandate_in(Active);
        assert_eq!(
            active.expiry_due(at("2026-12-31T23:59:59Z"), dormancy),
            None
        );
        assert_eq!(
            active.expiry_due(at("2027-01-01T00:00:00Z"), dormancy),
            Some(ExpiryCause::Validity)
        );
        let mut open_ended = mandate_in(Active);
        open_ended.terms.valid_until = None;
        // 36 months after 2026-01-02T08:00 Shanghai.
        assert_eq!(
            open_ended.expiry_due(at("2029-01-01T23:59:59Z"), dormancy),
            None
        );
        assert_eq!(
            open_ended.expiry_due(at("2029-01-02T00:00:00Z"), dormancy),
            Some(ExpiryCause::Dormancy)
        );
        assert_eq!(
            mandate_in(Revoked).expiry_due(at("2099-01-01T00:00:00Z"), dormancy),
            None
        );
    }
}
