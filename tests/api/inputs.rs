//! Inputs taken exactly and answers that say what happened (DESIGN §7, §3.2): timestamps at
//! one precision, time zones under their canonical names, a refund in the wrong currency
//! named as the bad field, messages in money, and the consent evidence of every payer step.

use jiff::Timestamp;
use tonic::Code;
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

fn bad_field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations[0]
        .field
        .clone()
}

async fn timestamps_are_microseconds_and_nanos_are_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    // A negative `nanos` is refused, not normalised.
    let mut terms = utility_terms();
    terms.valid_until.as_mut().unwrap().nanos = -1;
    let err = merchant
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-nanos".into(),
            payer_id: "p-1".into(),
            terms: Some(terms),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "terms.valid_until.nanos");

    // Created at a time with a sub-microsecond part: stored and returned to the microsecond,
    // so `as_of` one nanosecond before what was returned finds nothing.
    app.clock
        .set("2026-03-01T02:00:00.000000500Z".parse().unwrap());
    let created = create_mandate(&app, "c-1").await;
    let created_at = created.created_at.unwrap();
    assert_eq!(created_at.nanos, 0, "{created_at:?}");
    let at: Timestamp = Timestamp::new(created_at.seconds, created_at.nanos).unwrap();
    let as_of = |at: Timestamp| pb::GetMandateRequest {
        mandate_id: created.mandate_id.clone(),
        as_of: Some(proto_time(at)),
    };
    let before = at - jiff::SignedDuration::from_nanos(1);
    let err = merchant.get_mandate(as_of(before)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let v1 = merchant
        .get_mandate(as_of(at))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(v1.version, 1);
    // A caller's time is kept to the microsecond too.
    let mut terms = utility_terms();
    terms.valid_until.as_mut().unwrap().nanos = 123_456_789;
    let m = merchant
        .create_mandate(pb::CreateMandateRequest {
            merchant_contract_id: "c-precise".into(),
            payer_id: "p-1".into(),
            terms: Some(terms),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(m.terms.unwrap().valid_until.unwrap().nanos, 123_456_000);
}

async fn time_zones_are_stored_under_their_canonical_names(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut merchant = app.merchant("m-1").await;
    for (i, (given, stored)) in [
        ("UTC", "UTC"),
        ("GMT", "UTC"),
        ("asia/shanghai", "Asia/Shanghai"),
        ("US/Eastern", "America/New_York"),
        ("Europe/London", "Europe/London"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut terms = utility_terms();
        terms.timezone = given.into();
        let m = merchant
            .create_mandate(pb::CreateMandateRequest {
                merchant_contract_id: format!("c-tz-{i}"),
                payer_id: "p-1".into(),
                terms: Some(terms),
            })
            .await
            .unwrap_or_else(|e| panic!("{given}: {e:?}"))
            .into_inner()
            .mandate
            .unwrap();
        assert_eq!(m.terms.unwrap().timezone, stored, "{given}");
    }
    for bad in ["+08:00", "UTC+8", "Mars/Olympus"] {
        let mut terms = utility_terms();
        terms.timezone = bad.into();
        let err = merchant
            .create_mandate(pb::CreateMandateRequest {
                merchant_contract_id: "c-tz-bad".into(),
                payer_id: "p-1".into(),
                terms: Some(terms),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_field(&err), "terms.timezone", "{bad}");
    }
}

async fn refunds_name_the_bad_field_and_speak_in_money(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.mandate_for("m-1", "p-1", "c-1", roomy_terms()).await;
    app.credit("p-1", "500.00").await;
    let paid = app
        .deduct("m-1", collect("r-1", &m.mandate_id, "100.00", "B-1"))
        .await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;
    let err = merchant
        .refund_deduction(pb::RefundDeductionRequest {
            request_id: "rf-usd".into(),
            deduction_id: paid.deduction_id.clone(),
            amount: Some(pb::Money {
                currency_code: "USD".into(),
                amount: "10.00".into(),
            }),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "amount.currency_code");
    app.refund("m-1", "rf-1", &paid.deduction_id, "30.00")
        .await
        .unwrap();
    let err = app
        .refund("m-1", "rf-2", &paid.deduction_id, "80.00")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("more than the 100.00 CNY collected (30.00 CNY refunded already)"),
        "{err:?}"
    );
}

async fn every_payer_step_keeps_its_consent_evidence(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create_mandate(&app, "c-1").await;
    let mut payer = app.payer("p-1").await;
    let active = payer
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let first = active.consent.clone().unwrap();
    assert_eq!(first.mandate_version, created.version);
    assert!(active.amendment_consents.is_empty());

    // A loosening amendment waits for the payer, who accepts it with evidence of its own.
    let mut looser = utility_terms();
    looser.per_debit_limit = money("700.00");
    let pending = app
        .merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: active.mandate_id.clone(),
            terms: Some(looser),
            reason: "new tariff".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    app.clock.advance(jiff::SignedDuration::from_mins(5));
    let mut evidence = consent();
    evidence.method = pb::ConsentMethod::SmsOtp as i32;
    evidence.device_id = "android-19c2".into();
    let confirmed = payer
        .confirm_amendment(pb::ConfirmAmendmentRequest {
            mandate_id: active.mandate_id.clone(),
            mandate_version: pending.version,
            request_id: String::new(),
            consent: Some(evidence),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let accepted = &confirmed.amendment_consents;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].mandate_version, pending.version);
    assert_eq!(accepted[0].method, pb::ConsentMethod::SmsOtp as i32);
    assert_eq!(accepted[0].device_id, "android-19c2");
    assert_eq!(
        accepted[0].captured_at,
        Some(proto_time(app.clock_now())),
        "when, by the service's clock"
    );
    // Both are what GetMandate returns, and the first consent is unchanged.
    let read = payer
        .get_mandate(pb::GetMandateRequest {
            mandate_id: active.mandate_id.clone(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(read.consent, Some(first));
    assert_eq!(read.amendment_consents, confirmed.amendment_consents);
    // Accepting an amendment without evidence is refused.
    let err = payer
        .confirm_amendment(pb::ConfirmAmendmentRequest {
            mandate_id: active.mandate_id.clone(),
            mandate_version: confirmed.version,
            request_id: String::new(),
            consent: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "consent");
}

both_backends!(
    timestamps_are_microseconds_and_nanos_are_checked,
    time_zones_are_stored_under_their_canonical_names,
    refunds_name_the_bad_field_and_speak_in_money,
    every_payer_step_keeps_its_consent_evidence
);
