//! Every (status, action) pair of DESIGN §3.1 through gRPC: allowed pairs reach the right
//! status; the others are FAILED_PRECONDITION naming the current status, and change nothing.

use jiff::{SignedDuration, Timestamp};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use withholding::domain::ids::MandateId;
use withholding::pb;
use withholding::storage::MandateUpdate;

use crate::both_backends;
use crate::harness::*;

use pb::MandateStatus as S;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Confirm,
    SetFundingSources,
    Pause,
    Resume,
    Suspend,
    Reinstate,
    Revoke,
    Terminate,
    AmendTighter,
    ConfirmAmendment,
}

const ACTIONS: [Action; 10] = [
    Action::Confirm,
    Action::SetFundingSources,
    Action::Pause,
    Action::Resume,
    Action::Suspend,
    Action::Reinstate,
    Action::Revoke,
    Action::Terminate,
    Action::AmendTighter,
    Action::ConfirmAmendment,
];

const STATUSES: [S; 8] = [
    S::PendingConsent,
    S::Active,
    S::Paused,
    S::Suspended,
    S::Revoked,
    S::Terminated,
    S::Expired,
    S::Consumed,
];

fn is_live(status: S) -> bool {
    matches!(
        status,
        S::PendingConsent | S::Active | S::Paused | S::Suspended
    )
}

/// The status an allowed action leads to; `None` where the lifecycle refuses it.
fn expected(status: S, action: Action) -> Option<S> {
    use Action::*;
    match (action, status) {
        (Confirm, S::PendingConsent) => Some(S::Active),
        (Pause, S::Active) => Some(S::Paused),
        (Resume, S::Paused) => Some(S::Active),
        (Suspend, S::Active | S::Paused) => Some(S::Suspended),
        // Every suspended mandate here was suspended from ACTIVE.
        (Reinstate, S::Suspended) => Some(S::Active),
        (Revoke, s) if is_live(s) => Some(S::Revoked),
        (Terminate, s) if is_live(s) => Some(S::Terminated),
        (SetFundingSources | AmendTighter, s) if is_live(s) => Some(s),
        // A pending amendment exists only once the payer has consented (before, amendments
        // apply at once), so PENDING_CONSENT has none to confirm.
        (ConfirmAmendment, S::Active | S::Paused | S::Suspended) => Some(status),
        _ => None,
    }
}

async fn get(app: &TestApp, id: &str) -> pb::Mandate {
    app.operator()
        .await
        .get_mandate(pb::GetMandateRequest {
            mandate_id: id.into(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// A new mandate brought into `status` the way callers would; live consented ones carry a
/// pending (loosening) amendment so ConfirmAmendment has something to confirm.
async fn mandate_in(app: &TestApp, status: S, contract: &str) -> pb::Mandate {
    let merchant = app.merchant("m-1").await;
    let payer = app.payer("p-1").await;
    let operator = app.operator().await;
    let mut request = create_request(contract, "p-1");
    if status == S::Expired {
        // Valid for one minute only, so moving the clock past it expires this mandate alone.
        let until = app
            .clock_now()
            .checked_add(SignedDuration::from_secs(60))
            .unwrap();
        request.terms.as_mut().unwrap().valid_until = Some(prost_types::Timestamp {
            seconds: until.as_second(),
            nanos: 0,
        });
    }
    let created = merchant
        .clone()
        .create_mandate(request)
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let id = created.mandate_id.clone();
    let by_reason = |reason: &str| (id.clone(), reason.to_owned());
    if matches!(
        status,
        S::Active | S::Paused | S::Suspended | S::Expired | S::Consumed
    ) {
        payer
            .clone()
            .confirm_mandate(confirm_request(&created))
            .await
            .unwrap();
    }
    if matches!(status, S::Active | S::Paused | S::Suspended) {
        let amended = merchant
            .clone()
            .amend_mandate(pb::AmendMandateRequest {
                mandate_id: id.clone(),
                terms: Some(looser_terms()),
                reason: "raise".into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            amended.outcome,
            pb::AmendmentOutcome::PendingPayerConfirmation as i32
        );
    }
    match status {
        S::Paused => {
            let (mandate_id, reason) = by_reason("holiday");
            payer
                .clone()
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id,
                    reason,
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
        S::Suspended => {
            let (mandate_id, reason) = by_reason("fraud check");
            operator
                .clone()
                .suspend_mandate(pb::SuspendMandateRequest {
                    mandate_id,
                    reason,
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
        S::Revoked => {
            let (mandate_id, reason) = by_reason("declined");
            payer
                .clone()
                .revoke_mandate(pb::RevokeMandateRequest {
                    mandate_id,
                    reason,
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
        S::Terminated => {
            let (mandate_id, reason) = by_reason("contract ended");
            merchant
                .clone()
                .terminate_mandate(pb::TerminateMandateRequest {
                    mandate_id,
                    reason,
                    request_id: String::new(),
                })
                .await
                .unwrap();
        }
        S::Expired => {
            app.clock.advance(SignedDuration::from_secs(120));
            assert!(app.service.expire_due(100).await.unwrap() >= 1);
        }
        S::Consumed => {
            // Only deductions consume a mandate; until they exist, consume it through the
            // domain transition and the store, as the deduction path will.
            let id = MandateId::parse("id", &id).unwrap();
            let current = app.store.mandate(&id).await.unwrap().unwrap();
            let mut consumed = current.clone();
            let at: Timestamp = app.clock_now();
            consumed.consume(at).unwrap();
            let audit = withholding::domain::audit::AuditDraft {
                mandate_id: Some(id.to_string()),
                ..withholding::domain::audit::AuditDraft::new(
                    at,
                    &withholding::domain::actor::Actor::system(),
                    "MANDATE_CONSUMED",
                    "OK",
                )
            };
            app.store
                .update_mandate(MandateUpdate {
                    mandate: &consumed,
                    expected_version: current.version,
                    expires_at: None,
                    audit: &audit,
                    idempotency: None,
                })
                .await
                .unwrap();
        }
        S::PendingConsent | S::Active => {}
        S::Unspecified => unreachable!(),
    }
    let mandate = get(app, &id).await;
    assert_eq!(status_of(&mandate), status, "setup of {contract}");
    mandate
}

async fn act(app: &TestApp, action: Action, m: &pb::Mandate) -> Result<pb::Mandate, Status> {
    let id = m.mandate_id.clone();
    let reason = String::from("test");
    let request_id = String::new();
    let mandate = match action {
        Action::Confirm => {
            app.payer("p-1")
                .await
                .confirm_mandate(confirm_request(m))
                .await?
                .into_inner()
                .mandate
        }
        Action::SetFundingSources => {
            app.payer("p-1")
                .await
                .set_funding_sources(pb::SetFundingSourcesRequest {
                    mandate_id: id,
                    funding_sources: wallet_then_card()[1..].to_vec(),
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Pause => {
            app.payer("p-1")
                .await
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Resume => {
            app.payer("p-1")
                .await
                .resume_mandate(pb::ResumeMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Suspend => {
            app.operator()
                .await
                .suspend_mandate(pb::SuspendMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Reinstate => {
            app.operator()
                .await
                .reinstate_mandate(pb::ReinstateMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Revoke => {
            app.payer("p-1")
                .await
                .revoke_mandate(pb::RevokeMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::Terminate => {
            app.merchant("m-1")
                .await
                .terminate_mandate(pb::TerminateMandateRequest {
                    mandate_id: id,
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::AmendTighter => {
            app.merchant("m-1")
                .await
                .amend_mandate(pb::AmendMandateRequest {
                    mandate_id: id,
                    terms: Some(tighter_terms()),
                    reason,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
        Action::ConfirmAmendment => {
            app.payer("p-1")
                .await
                .confirm_amendment(pb::ConfirmAmendmentRequest {
                    consent: Some(consent()),
                    mandate_id: id,
                    mandate_version: m.version,
                    request_id,
                })
                .await?
                .into_inner()
                .mandate
        }
    };
    Ok(mandate.unwrap())
}

async fn every_status_action_pair(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut checked = 0;
    for status in STATUSES {
        for action in ACTIONS {
            let contract = format!("c-{status:?}-{action:?}");
            let before = mandate_in(&app, status, &contract).await;
            let result = act(&app, action, &before).await;
            match (result, expected(status, action)) {
                (Ok(after), Some(to)) => {
                    assert_eq!(status_of(&after), to, "{status:?} {action:?}");
                    assert_eq!(after.version, before.version + 1, "{status:?} {action:?}");
                    assert_eq!(
                        get(&app, &before.mandate_id).await,
                        after,
                        "stored as answered"
                    );
                }
                (Err(e), None) => {
                    assert_eq!(
                        e.code(),
                        Code::FailedPrecondition,
                        "{status:?} {action:?}: {e:?}"
                    );
                    let name = status.as_str_name().trim_start_matches("MANDATE_STATUS_");
                    let violation = &e
                        .get_details_precondition_failure()
                        .expect("PreconditionFailure")
                        .violations[0];
                    if status == S::PendingConsent && action == Action::ConfirmAmendment {
                        assert_eq!(violation.r#type, "PENDING_AMENDMENT");
                    } else {
                        assert!(
                            e.message().contains(name),
                            "{status:?} {action:?}: {}",
                            e.message()
                        );
                        assert_eq!(violation.r#type, "MANDATE_STATUS");
                        assert_eq!(violation.subject, before.mandate_id);
                    }
                    assert_eq!(
                        get(&app, &before.mandate_id).await,
                        before,
                        "a refused action changes nothing"
                    );
                }
                (got, want) => panic!("{status:?} {action:?}: got {got:?}, want {want:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 80);
    app.verify_audit().await;
}

async fn reinstate_returns_to_paused(backend: Backend) {
    let app = spawn_app(backend).await;
    let paused = mandate_in(&app, S::Paused, "c-1").await;
    let suspended = act(&app, Action::Suspend, &paused).await.unwrap();
    assert_eq!(
        pb::MandateStatus::try_from(suspended.suspended_from).unwrap(),
        S::Paused
    );
    let reinstated = act(&app, Action::Reinstate, &suspended).await.unwrap();
    assert_eq!(status_of(&reinstated), S::Paused);
}

async fn consent_window_expires_a_pending_mandate(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create_mandate(&app, "c-late").await;
    app.clock.advance(SignedDuration::from_hours(24));
    // Acting on it after the window finds it expired, and the expiry is stored and audited.
    let err = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("EXPIRED"), "{}", err.message());
    let stored = get(&app, &created.mandate_id).await;
    assert_eq!(status_of(&stored), S::Expired);
    assert_eq!(stored.status_reason, "CONSENT_WINDOW_PASSED");
    app.verify_audit().await;
}

async fn consent_covers_only_the_version_shown(backend: Backend) {
    let app = spawn_app(backend).await;
    let shown = create_mandate(&app, "c-1").await;
    // The merchant widens the terms before the payer confirms: the consent must not cover them.
    app.merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: shown.mandate_id.clone(),
            terms: Some(looser_terms()),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let err = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&shown))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.get_details_precondition_failure().unwrap().violations[0].r#type,
        "MANDATE_VERSION"
    );
    let current = get(&app, &shown.mandate_id).await;
    assert_eq!(status_of(&current), S::PendingConsent);
    let confirmed = act(&app, Action::Confirm, &current).await.unwrap();
    assert_eq!(status_of(&confirmed), S::Active);
}

both_backends!(
    every_status_action_pair,
    reinstate_returns_to_paused,
    consent_window_expires_a_pending_mandate,
    consent_covers_only_the_version_shown
);
