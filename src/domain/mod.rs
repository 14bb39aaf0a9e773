//! Pure business rules: validated values, the mandate and its lifecycle, audit hashing.
//! Nothing here knows about gRPC or databases.

pub mod actor;
pub mod audit;
pub mod bill;
pub mod checkpoint;
pub mod consent;
pub mod decision;
pub mod deduction;
pub mod event;
pub mod funding;
pub mod ids;
pub mod ledger;
pub mod mandate;
pub mod money;
pub mod period;
pub mod policy;
pub mod reconcile;
pub mod rules;
pub mod settlement;
pub mod terms;
pub mod text;

/// One rejected input field: `field` is the caller's path to it (`terms.per_debit_limit.amount`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}
