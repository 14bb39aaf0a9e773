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

/// The part of the data a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenancy {
    Everything,
    /// One merchant's mandates (a merchant, or an auditor of that merchant).
    Merchant(MerchantId),
    /// One payer's mandates; a payer's token subject is its payer id.
    Payer(String),
    Nothing,
}

/// The merchant and payer a listing is filtered by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantFilter {
    pub merchant: Option<MerchantId>,
    pub payer: Option<PayerId>,
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

    /// The tenancy rule: a merchant sees its own, a payer its own, an auditor its merchant's
    /// (or everything without one), operators and the service everything.
    pub fn tenancy(&self) -> Tenancy {
        match (self.role, &self.merchant_id) {
            (Role::Merchant | Role::Auditor, Some(merchant)) => Tenancy::Merchant(merchant.clone()),
            // A merchant token always names its merchant; one that does not sees nothing.
            (Role::Merchant, None) => Tenancy::Nothing,
            (Role::Payer, _) => Tenancy::Payer(self.subject.clone()),
            (Role::Auditor | Role::Operator | Role::System, _) => Tenancy::Everything,
        }
    }

    /// Whether anything of one mandate (the mandate, its deductions, approvals, notices) lies
    /// inside this caller's tenancy.
    pub fn can_see_tenant(&self, merchant: &MerchantId, payer: &PayerId) -> bool {
        match self.tenancy() {
            Tenancy::Everything => true,
            Tenancy::Merchant(own) => own == *merchant,
            Tenancy::Payer(own) => payer.as_str() == own,
            Tenancy::Nothing => false,
        }
    }

    /// A listing's merchant and payer filters narrowed to this caller's tenancy: the caller's
    /// own merchant or payer is forced, and a filter naming another matches nothing (`None`).
    /// A payer whose subject is not a payer id sees nothing either.
    pub fn narrow(&self, filter: TenantFilter) -> Option<TenantFilter> {
        let TenantFilter { merchant, payer } = filter;
        match self.tenancy() {
            Tenancy::Everything => Some(TenantFilter { merchant, payer }),
            Tenancy::Merchant(own) => match merchant {
                Some(asked) if asked != own => None,
                _ => Some(TenantFilter {
                    merchant: Some(own),
                    payer,
                }),
            },
            Tenancy::Payer(subject) => {
                let own = PayerId::parse("sub", &subject).ok()?;
                match payer {
                    Some(asked) if asked != own => None,
                    _ => Some(TenantFilter {
                        merchant,
                        payer: Some(own),
                    }),
                }
            }
            Tenancy::Nothing => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, subject: &str, merchant: Option<&str>) -> Actor {
        Actor {
            role,
            subject: subject.to_owned(),
            merchant_id: merchant.map(|m| MerchantId::parse("merchant_id", m).unwrap()),
        }
    }

    fn filter(merchant: Option<&str>, payer: Option<&str>) -> TenantFilter {
        TenantFilter {
            merchant: merchant.map(|m| MerchantId::parse("merchant_id", m).unwrap()),
            payer: payer.map(|p| PayerId::parse("payer_id", p).unwrap()),
        }
    }

    #[test]
    fn a_listing_is_narrowed_to_the_callers_tenancy_and_a_filter_outside_it_matches_nothing() {
        let merchant = actor(Role::Merchant, "billing", Some("m1"));
        assert_eq!(
            merchant.narrow(filter(None, Some("p1"))),
            Some(filter(Some("m1"), Some("p1")))
        );
        assert_eq!(merchant.narrow(filter(Some("m2"), None)), None);
        let payer = actor(Role::Payer, "p1", None);
        assert_eq!(
            payer.narrow(filter(Some("m2"), None)),
            Some(filter(Some("m2"), Some("p1")))
        );
        assert_eq!(payer.narrow(filter(None, Some("p2"))), None);
        let auditor = actor(Role::Auditor, "a", None);
        assert_eq!(
            auditor.narrow(filter(Some("m2"), None)),
            Some(filter(Some("m2"), None))
        );
        let scoped = actor(Role::Auditor, "a", Some("m1"));
        assert_eq!(scoped.narrow(filter(Some("m2"), None)), None);
        let unscoped_merchant = actor(Role::Merchant, "billing", None);
        assert_eq!(unscoped_merchant.narrow(TenantFilter::default()), None);
    }

    #[test]
    fn the_same_rule_decides_what_one_mandates_records_a_caller_sees() {
        let (m1, p1) = filter(Some("m1"), Some("p1")).into_parts();
        assert!(actor(Role::Merchant, "b", Some("m1")).can_see_tenant(&m1, &p1));
        assert!(!actor(Role::Merchant, "b", Some("m2")).can_see_tenant(&m1, &p1));
        assert!(actor(Role::Payer, "p1", None).can_see_tenant(&m1, &p1));
        assert!(!actor(Role::Payer, "p2", None).can_see_tenant(&m1, &p1));
        assert!(actor(Role::Auditor, "a", None).can_see_tenant(&m1, &p1));
        assert!(!actor(Role::Auditor, "a", Some("m2")).can_see_tenant(&m1, &p1));
        assert!(actor(Role::Operator, "o", None).can_see_tenant(&m1, &p1));
    }

    impl TenantFilter {
        fn into_parts(self) -> (MerchantId, PayerId) {
            (self.merchant.unwrap(), self.payer.unwrap())
        }
    }
}
