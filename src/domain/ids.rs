//! Identifier types. Once one exists it is a valid identifier (DESIGN §7).

use std::fmt;
use std::marker::PhantomData;

use super::FieldViolation;
use super::text::check_identifier;

/// What an identifier names; the name is what an error about a bad one calls it.
pub trait Kind {
    const NAME: &'static str;
}

/// A valid identifier of one kind: `Id<Mandate>` never mixes with `Id<Merchant>`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String", bound = "")]
pub struct Id<K: Kind> {
    value: String,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

/// A mandate, named by the server (`mdt-` and a time-ordered UUID).
pub type MandateId = Id<kind::Mandate>;
/// A merchant, as its tokens name it.
pub type MerchantId = Id<kind::Merchant>;
/// The merchant's own reference for a mandate, unique per merchant.
pub type ContractId = Id<kind::Contract>;
/// A payer's user id (the `sub` of a payer token).
pub type PayerId = Id<kind::Payer>;
/// A caller's idempotency key.
pub type RequestId = Id<kind::Request>;

/// The kinds of identifier.
pub mod kind {
    use super::Kind;

    pub enum Mandate {}
    pub enum Merchant {}
    pub enum Contract {}
    pub enum Payer {}
    pub enum Request {}

    impl Kind for Mandate {
        const NAME: &'static str = "MandateId";
    }
    impl Kind for Merchant {
        const NAME: &'static str = "MerchantId";
    }
    impl Kind for Contract {
        const NAME: &'static str = "ContractId";
    }
    impl Kind for Payer {
        const NAME: &'static str = "PayerId";
    }
    impl Kind for Request {
        const NAME: &'static str = "RequestId";
    }
}

impl<K: Kind> Id<K> {
    fn new(value: String) -> Self {
        Self {
            value,
            kind: PhantomData,
        }
    }

    /// Parses a caller-supplied value; `field` names it in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        check_identifier(field, value)?;
        Ok(Self::new(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl MandateId {
    /// A new, unique, time-ordered mandate id.
    pub fn generate() -> Self {
        Self::new(format!("mdt-{}", uuid::Uuid::now_v7().simple()))
    }
}

impl<K: Kind> TryFrom<String> for Id<K> {
    type Error = FieldViolation;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        check_identifier(K::NAME, &value)?;
        Ok(Self::new(value))
    }
}

impl<K: Kind> From<Id<K>> for String {
    fn from(id: Id<K>) -> String {
        id.value
    }
}

impl<K: Kind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl<K: Kind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(K::NAME).field(&self.value).finish()
    }
}

impl<K: Kind> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self::new(self.value.clone())
    }
}

impl<K: Kind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<K: Kind> Eq for Id<K> {}

impl<K: Kind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Kind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<K: Kind> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}
