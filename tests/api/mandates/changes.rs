//! Creation and change semantics: contract-id idempotency, request-id replays, amendments that
//! tighten at once or wait for the payer, and reading a mandate as it stood at a past time.

use jiff::SignedDuration;
use tonic::Code;
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

fn pause(id: &str, request_id: &str, reason: &str) -> pb::PauseMandateRequest {
    pb::PauseMandateRequest {
        mandate_id: id.into(),
        reason: reason.into(),
        request_id: request_id.into(),
    }
}

async fn create_is_idempotent_on_contract_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    let first = merchant
        .create_mandate(create_request("c-1", "p-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.existing);
    let counts = app.counts().await;
    let again = merchant
        .create_mandate(create_request("c-1", "p-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(again.mandate, first.mandate);
    assert_eq!(app.counts().await, counts, "a replay writes nothing");

    let err = merchant
        .create_mandate(create_request("c-1", "p-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "CONTRACT_ID_REUSED"
    );
    assert_eq!(app.counts().await, counts);

    // Contract ids are per merchant: another merchant may use the same one.
    let other = app
        .merchant("m-2")
        .await
        .create_mandate(create_request("c-1", "p-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.existing);
    assert_ne!(
        other.mandate.unwrap().mandate_id,
        first.mandate.unwrap().mandate_id
    );
}

async fn request_ids_replay_and_refuse_reuse(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let mut payer = app.payer("p-1").await;
    let paused = payer
        .pause_mandate(pause(&m.mandate_id, "req-1", "away"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let counts = app.counts().await;
    // The answer was lost; the retry gets the same answer, not FAILED_PRECONDITION.
    let replay = payer
        .pause_mandate(pause(&m.mandate_id, "req-1", "away"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(replay, paused);
    assert_eq!(app.counts().await, counts);
    // The key is still bound to the original request after the mandate moves on.
    payer
        .resume_mandate(pb::ResumeMandateRequest {
            mandate_id: m.mandate_id.clone(),
            reason: String::new(),
            request_id: "req-2".into(),
        })
        .await
        .unwrap();
    let replay = payer
        .pause_mandate(pause(&m.mandate_id, "req-1", "away"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(replay, paused);

    for reused in [
        payer
            .pause_mandate(pause(&m.mandate_id, "req-1", "other reason"))
            .await
            .unwrap_err(),
        payer
            .revoke_mandate(pb::RevokeMandateRequest {
                mandate_id: m.mandate_id.clone(),
                reason: "away".into(),
                request_id: "req-1".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(reused.code(), Code::AlreadyExists);
        assert_eq!(
            reused.get_details_error_info().unwrap().reason,
            "IDEMPOTENCY_KEY_REUSED"
        );
    }
    let current = payer
        .get_mandate(pb::GetMandateRequest {
            mandate_id: m.mandate_id.clone(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&current), pb::MandateStatus::Active);
}

async fn concurrent_retries_with_one_key_change_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let payer = app.payer("p-1").await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut payer = payer.clone();
            let id = m.mandate_id.clone();
            tokio::spawn(async move { payer.pause_mandate(pause(&id, "req-once", "away")).await })
        })
        .collect();
    let mut versions = vec![];
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => versions.push(r.into_inner().mandate.unwrap().version),
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{e:?}"),
        }
    }
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|v| *v == m.version + 1), "{versions:?}");
    let chain = app
        .store
        .audit_chain(&format!("mandate:{}", m.mandate_id))
        .await
        .unwrap();
    assert_eq!(
        chain
            .events
            .iter()
            .filter(|e| e.draft.action == "MANDATE_PAUSED")
            .count(),
        1
    );
}

async fn amendments_tighten_at_once_and_loosen_with_consent(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = active_mandate(&app, "c-1").await;
    let mut merchant = app.merchant("m-1").await;
    let mut payer = app.payer("p-1").await;
    let amend = |amount: &str| pb::AmendMandateRequest {
        mandate_id: m.mandate_id.clone(),
        terms: Some(pb::MandateTerms {
            per_debit_limit: money(amount),
            ..utility_terms()
        }),
        reason: "tariff change".into(),
        request_id: String::new(),
    };
    let tight = merchant
        .amend_mandate(amend("300"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tight.outcome, pb::AmendmentOutcome::Applied as i32);
    let tight = tight.mandate.unwrap();
    assert_eq!(
        tight.terms.as_ref().unwrap().per_debit_limit,
        money("300.00")
    );

    let loose = merchant
        .amend_mandate(amend("800"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        loose.outcome,
        pb::AmendmentOutcome::PendingPayerConfirmation as i32
    );
    let loose = loose.mandate.unwrap();
    assert_eq!(
        loose.terms.as_ref().unwrap().per_debit_limit,
        money("300.00"),
        "loosening waits"
    );
    assert_eq!(
        loose
            .pending_amendment
            .as_ref()
            .unwrap()
            .terms
            .as_ref()
            .unwrap()
            .per_debit_limit,
        money("800.00")
    );

    // The merchant cannot confirm for the payer; the payer confirms the version it saw.
    let denied = merchant
        .confirm_amendment(pb::ConfirmAmendmentRequest {
            consent: Some(consent()),
            mandate_id: m.mandate_id.clone(),
            mandate_version: loose.version,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let confirmed = payer
        .confirm_amendment(pb::ConfirmAmendmentRequest {
            consent: Some(consent()),
            mandate_id: m.mandate_id.clone(),
            mandate_version: loose.version,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(
        confirmed.terms.as_ref().unwrap().per_debit_limit,
        money("800.00")
    );
    assert!(confirmed.pending_amendment.is_none());

    // The currency cannot change.
    let mut usd = amend("100");
    let terms = usd.terms.as_mut().unwrap();
    terms.currency_code = "USD".into();
    terms.per_debit_limit = Some(pb::Money {
        currency_code: "USD".into(),
        amount: "100".into(),
    });
    terms.period_amount_limit = Some(pb::Money {
        currency_code: "USD".into(),
        amount: "1000".into(),
    });
    let err = merchant.amend_mandate(usd).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "terms.currency_code"
    );
}

async fn as_of_reads_the_version_in_force(backend: Backend) {
    let app = spawn_app(backend).await;
    let created_at = app.clock_now();
    let m = active_mandate(&app, "c-1").await;
    app.clock.advance(SignedDuration::from_hours(1));
    let after_confirm = app.clock_now();
    app.clock.advance(SignedDuration::from_hours(1));
    app.payer("p-1")
        .await
        .pause_mandate(pause(&m.mandate_id, "", ""))
        .await
        .unwrap();
    let mut auditor = app.auditor(None).await;
    let at = |t: jiff::Timestamp| pb::GetMandateRequest {
        mandate_id: m.mandate_id.clone(),
        as_of: Some(prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }),
    };
    let then = auditor
        .get_mandate(at(after_confirm))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&then), pb::MandateStatus::Active);
    assert_eq!(then, m);
    let now = auditor
        .get_mandate(at(app.clock_now()))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(status_of(&now), pb::MandateStatus::Paused);
    let before = created_at
        .checked_sub(SignedDuration::from_secs(1))
        .unwrap();
    assert_eq!(
        auditor.get_mandate(at(before)).await.unwrap_err().code(),
        Code::NotFound
    );
}

both_backends!(
    create_is_idempotent_on_contract_id,
    request_ids_replay_and_refuse_reuse,
    concurrent_retries_with_one_key_change_once,
    amendments_tighten_at_once_and_loosen_with_consent,
    as_of_reads_the_version_in_force
);
