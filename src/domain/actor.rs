//! Who is acting (DESIGN §2) and what of the tenancy each role may see.

use super::ids::{MerchantId, PayerId};
use super::mandate::Mandate;

/// A caller's role, from its token; `System` is the service itself (expiry, sweeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Merchant,
    Payer,
    Auditor,
    Operator,
    System,
}

impl Role {
    /// The role names tokens carry; `System` has none, so no token can claim it.
    pub fn from_claim(name: &str) -> Option<Self> {
        Some(match name {
            "merchant" => Self::Merchant,
            "payer" => Self::Payer,
            "auditor" => Self::Auditor,
            "operator" => Self::Operator,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merchant => "merchant",
            Self::Payer => "payer",
            Self::Auditor => "auditor",
            Self::Operator => "operator",
            Self::System => "system",
        }
    }
}

/// An authenticated caller. A merchant always has a `merchant_id`; an auditor may have one
/// (then it sees only that merchant); a payer's `subject` is its payer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    pub subject: String,
    pub merchant_id: Option<MerchantId>,
}

impl Actor {
    /// The service acting on its own (expiry of mandates and the like).
    pub fn system() -> Self {
        Self {
            role: Role::System,
            subject: "withholding".to_owned(),
            merchant_id: None,
        }
    }

    /// Whether the mandate lies inside this caller's tenancy. Outside it, the mandate does not
    /// exist for the caller (NOT_FOUND, never PERMISSION_DENIED).
    pub fn can_see(&self, mandate: &Mandate) -> bool {
        self.can_see_tenant(&mandate.merchant_id, &mandate.payer_id)
    }

    /// The tenancy rule, for anything of one mandate (its deductions, approvals, notices): a
    /// merchant sees its own, a payer its own, an auditor its merchant's (or everything
    /// without one), operators and the service everything.
    pub fn can_see_tenant(&self, merchant: &MerchantId, payer: &PayerId) -> bool {
        match self.role {
            Role::Merchant => self.merchant_id.as_ref() == Some(merchant),
            Role::Payer => payer.as_str() == self.subject,
            Role::Auditor => self.merchant_id.as_ref().is_none_or(|id| id == merchant),
            Role::Operator | Role::System => true,
        }
    }

    /// The caller's own audit chain, where what it was refused is recorded (DESIGN §2).
    pub fn own_chain_id(&self) -> String {
        format!("caller:{}", self.idempotency_scope())
    }

    /// Whose idempotency keys a request id belongs to: a merchant's keys are shared by all its
    /// systems (any `sub` of that merchant), everyone else's are their own.
    pub fn idempotency_scope(&self) -> String {
        match (self.role, &self.merchant_id) {
            (Role::Merchant, Some(merchant)) => format!("merchant:{merchant}"),
            _ => format!("{}:{}", self.role.as_str(), self.subject),
        }
    }
}
