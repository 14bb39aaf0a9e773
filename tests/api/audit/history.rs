//! GetMandateHistory: every version of a mandate with who changed it, when and why, the consent
//! the payer gave to each step (which version it was shown and accepted), then everything that
//! happened to the mandate in order, page by page.

use jiff::SignedDuration;

use super::seconds;
use crate::both_backends;
use crate::harness::*;

async fn history(
    client: &mut AuditClient,
    mandate_id: &str,
    page_size: u32,
    page_token: String,
) -> pb::GetMandateHistoryResponse {
    client
        .get_mandate_history(pb::GetMandateHistoryRequest {
            mandate_id: mandate_id.into(),
            page_size,
            page_token,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn a_mandate_history_tells_who_did_what_and_what_the_payer_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.propose("m-1", "p-1", "c-h", roomy_terms()).await;
    app.clock.advance(SignedDuration::from_mins(5));
    let active = app.confirm_with(&created, wallet_only()).await;
    let id = active.mandate_id.clone();
    app.credit("p-1", "1000.00").await;
    app.clock.advance(SignedDuration::from_mins(5));

    // A loosening amendment, accepted by the payer with evidence of its own.
    let mut looser = roomy_terms();
    looser.per_debit_limit = money("700.00");
    let pending = app
        .merchant("m-1")
        .await
        .amend_mandate(pb::AmendMandateRequest {
            mandate_id: id.clone(),
            terms: Some(looser),
            reason: "new tariff".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    app.clock.advance(SignedDuration::from_mins(5));
    let mut evidence = consent();
    evidence.method = pb::ConsentMethod::SmsOtp as i32;
    evidence.device_id = "android-19c2".into();
    app.payer("p-1")
        .await
        .confirm_amendment(pb::ConfirmAmendmentRequest {
            mandate_id: id.clone(),
            mandate_version: pending.version,
            request_id: String::new(),
            consent: Some(evidence),
        })
        .await
        .unwrap();
    app.clock.advance(SignedDuration::from_mins(5));
    app.payer("p-1")
        .await
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: id.clone(),
            reason: "travelling".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    app.payer("p-1")
        .await
        .resume_mandate(pb::ResumeMandateRequest {
            mandate_id: id.clone(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // Collections, a refund and a clawback refused.
    let paid = app
        .deduct("m-1", collect("r-1", &id, "650.00", "BILL-1"))
        .await;
    app.refund("m-1", "rf-1", &paid.deduction_id, "650.00")
        .await
        .unwrap();
    app.deduct_expect(
        "m-1",
        collect("r-2", &id, "650.00", "bill-1"),
        pb::DeductionStatus::Declined,
        "REFUND_CLAWBACK_FORBIDDEN",
    )
    .await;

    let mut auditor = app.audit_as(app.auditor_token(None)).await;
    let whole = history(&mut auditor, &id, 1000, String::new()).await;
    assert!(whole.next_page_token.is_empty());
    let now = app.mandate_now(&id).await;

    // Every version, oldest first, each as it stood and with the event that made it.
    let versions: Vec<i64> = whole.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, (1..=now.version).collect::<Vec<_>>());
    let made_by: Vec<(&str, &str)> = whole
        .versions
        .iter()
        .map(|v| {
            let event = v.event.as_ref().expect("each version names its event");
            (event.action.as_str(), event.actor_role.as_str())
        })
        .collect();
    assert_eq!(
        made_by,
        [
            ("MANDATE_CREATED", "merchant"),
            ("MANDATE_CONFIRMED", "payer"),
            ("MANDATE_AMENDMENT_PENDING", "merchant"),
            ("MANDATE_AMENDMENT_CONFIRMED", "payer"),
            ("MANDATE_PAUSED", "payer"),
            ("MANDATE_RESUMED", "payer"),
        ]
    );
    for v in &whole.versions {
        let mandate = v.mandate.as_ref().unwrap();
        assert_eq!(mandate.version, v.version);
        assert_eq!(
            seconds(&v.recorded_at),
            seconds(&v.event.as_ref().unwrap().at),
            "version {} recorded with its event",
            v.version
        );
    }
    let at = |version: usize| whole.versions[version - 1].mandate.as_ref().unwrap();
    // Version 1 has no consent yet; from version 2 the payer's consent to version 1, as shown.
    assert!(at(1).consent.is_none());
    let consented = at(2).consent.as_ref().unwrap();
    assert_eq!(consented.mandate_version, 1);
    assert_eq!(consented.device_id, "iphone-7f3a");
    // The amendment: shown at version 3, accepted at version 4 with its own evidence.
    assert!(at(3).amendment_consents.is_empty());
    assert!(at(3).pending_amendment.is_some());
    let accepted = &at(4).amendment_consents;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].mandate_version, pending.version);
    assert_eq!(accepted[0].device_id, "android-19c2");
    assert_eq!(
        at(4).terms.as_ref().unwrap().per_debit_limit,
        money("700.00")
    );
    // Why: the reasons given travel with the events.
    let why = |version: usize| {
        let details = &whole.versions[version - 1].event.as_ref().unwrap().details;
        serde_json::from_str::<serde_json::Value>(details).unwrap()["reason"].clone()
    };
    assert_eq!(why(3), "new tariff");
    assert_eq!(why(5), "travelling");

    // Everything that happened, in order: lifecycle, the debits, the refund, the refusal.
    assert!(whole.events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(whole.events.iter().all(|e| e.mandate_id == id));
    let actions: Vec<&str> = whole.events.iter().map(|e| e.action.as_str()).collect();
    for expected in [
        "MANDATE_CREATED",
        "MANDATE_RESUMED",
        "DEDUCTION_SUCCEEDED",
        "REFUND_RECORDED",
        "DEDUCTION_DECLINED",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let refused = whole
        .events
        .iter()
        .find(|e| e.action == "DEDUCTION_DECLINED")
        .unwrap();
    assert_eq!(refused.reason_code, "REFUND_CLAWBACK_FORBIDDEN");
    assert_eq!(refused.outcome, "DENIED");

    // Paged: the versions come with the first page only; the pages add up to the whole.
    let mut paged = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = history(&mut auditor, &id, 4, token).await;
        assert_eq!(page.versions.len(), if pages == 0 { 6 } else { 0 });
        assert!(page.events.len() <= 4);
        paged.extend(page.events);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 2);
    assert_eq!(paged, whole.events);

    // The payer reads the same history of its own mandate.
    let mut payer = app.audit_as(app.payer_token("p-1")).await;
    let own = history(&mut payer, &id, 1000, String::new()).await;
    assert_eq!(own.versions, whole.versions);
    assert_eq!(own.events, whole.events);
}

both_backends!(a_mandate_history_tells_who_did_what_and_what_the_payer_accepted);
