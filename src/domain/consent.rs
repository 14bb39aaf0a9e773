//! Evidence of a payer's consent (DESIGN §3.2). No mandate becomes ACTIVE without it.

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::FieldViolation;
use super::text::{check_identifier, check_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentChannel {
    App,
    H5,
    MiniProgram,
    Paper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentMethod {
    Password,
    Biometric,
    SmsOtp,
}

/// What the payer's client told us when the payer consented — to a mandate, or to a loosening
/// amendment of it — stamped with our time and the mandate version the payer was shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEvidence {
    pub channel: ConsentChannel,
    pub method: ConsentMethod,
    pub device_id: String,
    pub user_agent: String,
    pub ip_address: IpAddr,
    pub terms_version: String,
    /// SHA-256 of the terms text, 64 lower-case hex digits.
    pub terms_digest: String,
    pub captured_at: Timestamp,
    /// The version of the mandate the payer was shown and accepted (0 in evidence recorded
    /// before the version was kept).
    #[serde(default)]
    pub mandate_version: i64,
}

/// The caller-supplied part of [`ConsentEvidence`], unchecked.
#[derive(Debug, Clone)]
pub struct ConsentInput {
    pub channel: ConsentChannel,
    pub method: ConsentMethod,
    pub device_id: String,
    pub user_agent: String,
    pub ip_address: String,
    pub terms_version: String,
    pub terms_digest: String,
}

impl ConsentEvidence {
    /// Checks the evidence of consent to `mandate_version`; field names in errors are under
    /// `consent.`.
    pub fn new(
        input: ConsentInput,
        captured_at: Timestamp,
        mandate_version: i64,
    ) -> Result<Self, FieldViolation> {
        check_text("consent.device_id", &input.device_id)?;
        check_text("consent.user_agent", &input.user_agent)?;
        if input.device_id.trim().is_empty() && input.user_agent.trim().is_empty() {
            return Err(FieldViolation::new(
                "consent.device_id",
                "device_id or user_agent is required",
            ));
        }
        let ip_address = input.ip_address.parse::<IpAddr>().map_err(|_| {
            FieldViolation::new("consent.ip_address", "must be an IPv4 or IPv6 address")
        })?;
        check_identifier("consent.terms_version", &input.terms_version)?;
        let digest = &input.terms_digest;
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(FieldViolation::new(
                "consent.terms_digest",
                "must be a SHA-256 digest: 64 lower-case hex digits",
            ));
        }
        Ok(Self {
            channel: input.channel,
            method: input.method,
            ip_address,
            terms_digest: digest.clone(),
            device_id: input.device_id,
            user_agent: input.user_agent,
            terms_version: input.terms_version,
            captured_at,
            mandate_version,
        })
    }
}
