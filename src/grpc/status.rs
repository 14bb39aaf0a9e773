//! The one place a service error becomes a gRPC status (with `google.rpc` details). Internal
//! errors are logged with their cause chain; the caller gets a generic message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;
use crate::service::Error;

/// `google.rpc.ErrorInfo.domain` for errors this service raises.
pub const ERROR_DOMAIN: &str = "withholding.v1";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(violation) => invalid_argument(violation),
            Error::NotFound { what } => Status::not_found(format!("{what} not found")),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::FailedPrecondition {
                kind,
                subject,
                description,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                description.clone(),
                ErrorDetails::with_precondition_failure_violation(kind, subject, description),
            ),
            Error::AlreadyExists { reason, message } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            ),
            Error::Aborted(message) => Status::aborted(message),
            Error::OutOfRange(message) => Status::out_of_range(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Internal(cause) => {
                tracing::error!(error = %error_chain(cause.as_ref()), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` naming the field.
pub fn invalid_argument(violation: FieldViolation) -> Status {
    let message = violation.to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(violation.field, violation.description),
    )
}

/// An error and its causes, joined: transport errors say little without their sources.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
