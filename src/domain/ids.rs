//! Identifier types. Once one exists it is a valid identifier (DESIGN §7).

use super::FieldViolation;
use super::text::check_identifier;

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a caller-supplied value; `field` names it in the error.
            pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
                check_identifier(field, value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldViolation;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                check_identifier(stringify!($name), &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A mandate, named by the server (`mdt-` and a time-ordered UUID).
    MandateId
);
identifier!(
    /// A merchant, as its tokens name it.
    MerchantId
);
identifier!(
    /// The merchant's own reference for a mandate, unique per merchant.
    ContractId
);
identifier!(
    /// A payer's user id (the `sub` of a payer token).
    PayerId
);
identifier!(
    /// A caller's idempotency key.
    RequestId
);

impl MandateId {
    /// A new, unique, time-ordered mandate id.
    pub fn generate() -> Self {
        Self(format!("mdt-{}", uuid::Uuid::now_v7().simple()))
    }
}
