use crate::both_backends;
use crate::harness::*;
use withholding::pb;

async fn create_confirm_and_read_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create_mandate(&app, "c-smoke").await;
    assert_eq!(status_of(&created), pb::MandateStatus::PendingConsent);
    assert_eq!(created.version, 1);
    let confirmed = app
        .payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner();
    let confirmed = confirmed.mandate.unwrap();
    assert_eq!(status_of(&confirmed), pb::MandateStatus::Active);
    assert_eq!(confirmed.funding_sources.len(), 2);
    let read = app
        .auditor(None)
        .await
        .get_mandate(pb::GetMandateRequest {
            mandate_id: created.mandate_id.clone(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    assert_eq!(read, confirmed);
    app.verify_audit().await;
}

both_backends!(create_confirm_and_read_back);
