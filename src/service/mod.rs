//! Use cases over the [`Store`](crate::storage::Store): who may do what, idempotency, retries on
//! concurrent changes, and the audit event that goes with every change.

mod audit;
mod authz;
mod deductions;
mod events;
mod mandates;
mod policies;
mod refusals;
mod settlement;

pub use audit::{
    AuditKey, AuditPublicKey, AuditService, BlockedAttempts, BlockedQuery, EventPage, Export,
    MandateHistory, MandateVersion, Progress, SignatureError, SignedCheckpoint, VerifyOutcome,
    VerifyScope, verify_database, verify_store,
};
pub use authz::Rpc;
pub use deductions::{
    CollectRequest, DeductionService, DeductionSettings, NoticeRequest, RefundRequest,
    ResolverSettings,
};
pub use events::{Delivered, EventService, EventSettings, EventStream};
pub use mandates::{
    Change, Changed, CreateMandate, ListPage, MandateFilter, MandateService, RequestKey, Settings,
};
pub use policies::PolicyService;
pub use refusals::{REFUSAL_WINDOW, RefusalLog};
pub use settlement::{
    DiscrepancyView, Imported, MAX_SUMMARY_ROWS, ResolveRequest, SettlementService,
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
    /// A position outside what is kept (an event cursor older than the retention).
    #[error("{0}")]
    OutOfRange(String),
    /// A bound was reached (streams open, a stream's buffer); the message says what to do.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Lost a race too many times; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// The database could not be reached in time, or the connection broke; the caller may send
    /// the same request again (its request id makes that safe).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            // Use cases retry a lost race themselves; one that keeps losing says so.
            StoreError::Conflict => {
                Self::Aborted("the request kept losing races with concurrent changes; retry".into())
            }
            StoreError::OutOfRange(_) => Self::FailedPrecondition {
                kind: "AMOUNT_RANGE",
                subject: String::new(),
                description: "a balance or total would pass the largest amount the ledger holds \
                    (9,223,372,036,854,775,807 minor units); nothing was changed"
                    .into(),
            },
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                Self::Unavailable("the database is busy or unreachable; retry".into())
            }
            other => Self::Internal(Box::new(other)),
        }
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
