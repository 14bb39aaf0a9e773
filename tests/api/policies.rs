//! Merchant policies: operators set them, the merchant and its auditors read them; each change
//! is an audit event on the merchant's chain.

use tonic::Code;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

fn get(merchant: &str) -> pb::GetMerchantPolicyRequest {
    pb::GetMerchantPolicyRequest {
        merchant_id: merchant.into(),
    }
}

fn set(merchant: &str, policy: pb::RecoveryPolicy) -> pb::SetMerchantPolicyRequest {
    pb::SetMerchantPolicyRequest {
        merchant_id: merchant.into(),
        suspected_refund_recovery: policy as i32,
        reason: "compliance review".into(),
    }
}

async fn operators_set_and_tenants_read(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut operator = app.policies_as(app.operator_token()).await;
    // Nobody set one: the default.
    let default = operator
        .get_merchant_policy(get("m-1"))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(
        (default.suspected_refund_recovery, default.version),
        (pb::RecoveryPolicy::Flag as i32, 0)
    );

    let changed = operator
        .set_merchant_policy(set("m-1", pb::RecoveryPolicy::Decline))
        .await
        .unwrap()
        .into_inner();
    assert!(changed.changed);
    let policy = changed.policy.unwrap();
    assert_eq!(
        (
            policy.suspected_refund_recovery,
            policy.version,
            policy.updated_by.as_str()
        ),
        (pb::RecoveryPolicy::Decline as i32, 1, "ops-1")
    );
    // Setting what is in force changes nothing.
    let same = operator
        .set_merchant_policy(set("m-1", pb::RecoveryPolicy::Decline))
        .await
        .unwrap()
        .into_inner();
    assert!(!same.changed);
    assert_eq!(same.policy.unwrap(), policy);
    let events = app.chain_events("merchant:m-1").await;
    let sets: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "MERCHANT_POLICY_SET")
        .map(|e| e.actor_subject.as_str())
        .collect();
    assert_eq!(sets, ["ops-1"]);

    // The merchant reads its own (empty id = itself), not another's.
    let mut m1 = app.policies_as(app.merchant_token("m-1")).await;
    for id in ["", "m-1"] {
        let own = m1.get_merchant_policy(get(id)).await.unwrap().into_inner();
        assert_eq!(own.policy.unwrap(), policy);
    }
    let err = app
        .policies_as(app.merchant_token("m-2"))
        .await
        .get_merchant_policy(get("m-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An auditor of m-2 sees m-2's only; an institution-wide auditor sees any.
    let mut scoped = app.policies_as(app.auditor_token(Some("m-2"))).await;
    assert_eq!(
        scoped
            .get_merchant_policy(get("m-1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    scoped.get_merchant_policy(get("m-2")).await.unwrap();
    app.policies_as(app.auditor_token(None))
        .await
        .get_merchant_policy(get("m-1"))
        .await
        .unwrap();

    // Only operators set; payers do not read.
    let err = m1
        .set_merchant_policy(set("m-1", pb::RecoveryPolicy::Flag))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .policies_as(app.payer_token("p-1"))
        .await
        .get_merchant_policy(get("m-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Malformed: an unspecified policy, a missing reason.
    let err = operator
        .set_merchant_policy(set("m-1", pb::RecoveryPolicy::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("suspected_refund_recovery"));
    let err = operator
        .set_merchant_policy(pb::SetMerchantPolicyRequest {
            reason: String::new(),
            ..set("m-1", pb::RecoveryPolicy::Flag)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("reason"));
    app.verify_audit().await;
}

both_backends!(operators_set_and_tenants_read);
