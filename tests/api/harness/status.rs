//! What a refusal must say: the gRPC code and the one `google.rpc` detail that names the cause.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The one field an INVALID_ARGUMENT names, or why it is not a proper one.
pub fn violated_field(status: &Status) -> Result<String, String> {
    if status.code() != Code::InvalidArgument {
        return Err(format!("{:?}: {}", status.code(), status.message()));
    }
    let Some(bad_request) = status.get_details_bad_request() else {
        return Err(format!("no BadRequest detail ({})", status.message()));
    };
    match bad_request.field_violations.as_slice() {
        [one] => Ok(one.field.clone()),
        many => Err(format!(
            "{} field violations: {:?}",
            many.len(),
            many.iter().map(|v| &v.field).collect::<Vec<_>>()
        )),
    }
}

/// FAILED_PRECONDITION with a PreconditionFailure of `kind` about `subject`.
pub fn assert_precondition(status: &Status, kind: &str, subject: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure detail: {status:?}"));
    assert_eq!(details.violations.len(), 1, "{status:?}");
    assert_eq!(
        (
            details.violations[0].r#type.as_str(),
            details.violations[0].subject.as_str()
        ),
        (kind, subject),
        "{status:?}"
    );
}

pub fn assert_key_reused(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo detail: {status:?}"));
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED", "{what}: {status:?}");
}
