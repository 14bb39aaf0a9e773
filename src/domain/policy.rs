//! A merchant's policy, set by operators: what happens to a debit suspected of recovering a
//! refund (DESIGN §5 "suspected refund recovery").

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ids::MerchantId;

/// What a suspected refund recovery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecoveryPolicy {
    /// Collected, flagged on the deduction and reported to compliance (the default).
    Flag,
    /// Declined `SUSPECTED_REFUND_RECOVERY`; the compliant path is a one-off approval.
    Decline,
}

impl RecoveryPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "FLAG",
            Self::Decline => "DECLINE",
        }
    }
}

/// A merchant's policy as stored; a merchant nobody set one for has [`MerchantPolicy::default_for`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantPolicy {
    pub merchant_id: MerchantId,
    pub suspected_refund_recovery: RecoveryPolicy,
    /// 0 for the default nobody set, +1 with every change.
    pub version: i64,
    pub updated_at: Option<Timestamp>,
    /// The operator who set it last (its token's subject).
    pub updated_by: String,
}

impl MerchantPolicy {
    pub fn default_for(merchant_id: MerchantId) -> Self {
        Self {
            merchant_id,
            suspected_refund_recovery: RecoveryPolicy::Flag,
            version: 0,
            updated_at: None,
            updated_by: String::new(),
        }
    }

    /// The policy with `recovery` set by `operator`; `None` when it already is.
    pub fn with_recovery(
        &self,
        recovery: RecoveryPolicy,
        operator: &str,
        at: Timestamp,
    ) -> Option<Self> {
        (recovery != self.suspected_refund_recovery).then(|| Self {
            merchant_id: self.merchant_id.clone(),
            suspected_refund_recovery: recovery,
            version: self.version + 1,
            updated_at: Some(at),
            updated_by: operator.to_owned(),
        })
    }
}
