//! Use cases over the [`Store`](crate::storage::Store): who may do what, idempotency, retries on
//! concurrent changes, and the audit event that goes with every change.

mod authz;
mod deductions;
mod mandates;

pub use authz::Rpc;
pub use deductions::{
    CollectRequest, DeductionService, DeductionSettings, NoticeRequest, ResolverSettings,
};
pub use mandates::{
    Change, Changed, CreateMandate, ListPage, MandateFilter, MandateService, RequestKey, Settings,
};

use crate::domain::FieldViolation;
use crate::domain::mandate::MandateError;
use crate::storage::StoreError;

/// A use case's failure; the gRPC layer maps each kind to one status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(FieldViolation),
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{0}")]
    PermissionDenied(String),
    /// The resource is not in a state that allows this; `kind` names the precondition
    /// (`MANDATE_STATUS`, `MANDATE_VERSION`, `PENDING_AMENDMENT`).
    #[error("{description}")]
    FailedPrecondition {
        kind: &'static str,
        subject: String,
        description: String,
    },
    /// A request id or contract id already names a different request.
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    /// Lost a race too many times; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Internal(Box::new(e))
    }
}

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::InvalidArgument(v)
    }
}

impl Error {
    fn from_mandate(subject: &str, e: MandateError) -> Self {
        let precondition = |kind, description: String| Self::FailedPrecondition {
            kind,
            subject: subject.to_owned(),
            description,
        };
        match e {
            MandateError::InvalidTransition { .. } => precondition("MANDATE_STATUS", e.to_string()),
            MandateError::VersionMismatch { .. } => precondition("MANDATE_VERSION", e.to_string()),
            MandateError::NoPendingAmendment => precondition("PENDING_AMENDMENT", e.to_string()),
            MandateError::Invalid(v) => Self::InvalidArgument(v),
        }
    }
}
