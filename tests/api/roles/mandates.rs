//! The role × RPC matrix of MandateService (DESIGN §2): every RPC for every role over real gRPC,
//! on a mandate inside the caller's tenancy, and the matrix the service enforces against the one
//! DESIGN §2 and the proto describe.

use std::collections::HashSet;

use tonic::Code;
use withholding::domain::actor::Role;
use withholding::domain::ids::MandateId;
use withholding::service::Rpc;

use crate::both_backends;
use crate::harness::*;

/// One client per role, with the identities the mandates under test belong to: merchant m-1,
/// payer p-1, an institution-wide auditor and an operator.
struct Callers {
    merchant: Client,
    payer: Client,
    auditor: Client,
    operator: Client,
}

impl Callers {
    async fn new(app: &TestApp) -> Self {
        Self {
            merchant: app.merchant("m-1").await,
            payer: app.payer("p-1").await,
            auditor: app.auditor(None).await,
            operator: app.operator().await,
        }
    }

    fn of(&mut self, role: Role) -> &mut Client {
        match role {
            Role::Merchant => &mut self.merchant,
            Role::Payer => &mut self.payer,
            Role::Auditor => &mut self.auditor,
            Role::Operator => &mut self.operator,
            Role::System => panic!("no token carries the system role"),
        }
    }
}

/// The MandateService RPCs, in `Rpc::ALL` order.
fn mandate_rpcs() -> Vec<Rpc> {
    let rpcs: Vec<Rpc> = Rpc::ALL
        .into_iter()
        .filter(|rpc| !matches!(rpc, not_mandate_service!()))
        .collect();
    assert_eq!(rpcs.len(), 13, "MandateService has 13 RPCs: {rpcs:?}");
    rpcs
}

/// Whether the RPC's request names an existing mandate (so a refusal is audited on its chain).
fn names_a_mandate(rpc: Rpc) -> bool {
    match rpc {
        Rpc::CreateMandate | Rpc::ListMandates => false,
        Rpc::GetMandate
        | Rpc::ConfirmMandate
        | Rpc::SetFundingSources
        | Rpc::PauseMandate
        | Rpc::ResumeMandate
        | Rpc::SuspendMandate
        | Rpc::ReinstateMandate
        | Rpc::RevokeMandate
        | Rpc::TerminateMandate
        | Rpc::AmendMandate
        | Rpc::ConfirmAmendment => true,
        not_mandate_service!() => not_a_mandate_rpc(rpc),
    }
}

/// A mandate of merchant m-1 and payer p-1 in a state where `rpc` succeeds for a role allowed to
/// call it, so a refusal can only come from the role check.
async fn ready_for(callers: &mut Callers, rpc: Rpc, contract: &str) -> pb::Mandate {
    let created = callers
        .merchant
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    if rpc == Rpc::ConfirmMandate {
        return created;
    }
    let active = callers
        .payer
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let reason = || "setup".to_owned();
    let mandate_id = || active.mandate_id.clone();
    let mandate = match rpc {
        Rpc::ResumeMandate => {
            callers
                .payer
                .pause_mandate(pb::PauseMandateRequest {
                    mandate_id: mandate_id(),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .mandate
        }
        Rpc::ReinstateMandate => {
            callers
                .operator
                .suspend_mandate(pb::SuspendMandateRequest {
                    mandate_id: mandate_id(),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .mandate
        }
        Rpc::ConfirmAmendment => {
            let amended = callers
                .merchant
                .amend_mandate(pb::AmendMandateRequest {
                    mandate_id: mandate_id(),
                    terms: Some(looser_terms()),
                    reason: reason(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                amended.outcome,
                pb::AmendmentOutcome::PendingPayerConfirmation as i32
            );
            amended.mandate
        }
        Rpc::CreateMandate
        | Rpc::GetMandate
        | Rpc::ListMandates
        | Rpc::ConfirmMandate
        | Rpc::SetFundingSources
        | Rpc::PauseMandate
        | Rpc::SuspendMandate
        | Rpc::RevokeMandate
        | Rpc::TerminateMandate
        | Rpc::AmendMandate => Some(active.clone()),
        not_mandate_service!() => not_a_mandate_rpc(rpc),
    };
    mandate.unwrap()
}

fn mandate_id(id: &str) -> MandateId {
    MandateId::parse("mandate_id", id).unwrap()
}

/// The matrix the service enforces is the one DESIGN §2 and the proto describe.
#[test]
fn matrix_matches_the_design() {
    use Role::{Auditor, Merchant, Operator, Payer};
    for rpc in mandate_rpcs() {
        let expected: &[Role] = match rpc {
            Rpc::CreateMandate | Rpc::AmendMandate | Rpc::TerminateMandate => &[Merchant],
            Rpc::GetMandate | Rpc::ListMandates => &[Merchant, Payer, Auditor, Operator],
            Rpc::ConfirmMandate
            | Rpc::SetFundingSources
            | Rpc::PauseMandate
            | Rpc::ResumeMandate
            | Rpc::RevokeMandate
            | Rpc::ConfirmAmendment => &[Payer],
            Rpc::SuspendMandate | Rpc::ReinstateMandate => &[Operator],
            not_mandate_service!() => continue,
        };
        let got: HashSet<Role> = rpc.allowed_roles().iter().copied().collect();
        let want: HashSet<Role> = expected.iter().copied().collect();
        assert_eq!(got, want, "{}", rpc.name());
        assert!(!got.contains(&Role::System), "{}", rpc.name());
    }
    let distinct: HashSet<Rpc> = Rpc::ALL.into_iter().collect();
    assert_eq!(distinct.len(), Rpc::ALL.len());
}

/// Every RPC × every role on a mandate inside the caller's tenancy: a role outside the matrix is
/// PERMISSION_DENIED, changes nothing, and (when the request names a mandate) leaves exactly one
/// ACCESS_DENIED event on that mandate's chain; a role inside it gets through.
async fn every_rpc_for_every_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut callers = Callers::new(&app).await;
    let mut failures: Vec<String> = vec![];
    for rpc in mandate_rpcs() {
        for role in ROLES {
            let cell = format!("{} as {}", rpc.name(), role.as_str());
            let contract = format!("c-{}-{}", rpc.name(), role.as_str());
            let mandate = ready_for(&mut callers, rpc, &contract).await;
            let target = MandateTarget::of(&mandate, &format!("new-{contract}"));
            let mandate_chain = format!("mandate:{}", mandate.mandate_id);
            let mandate_events = app.chain_events(&mandate_chain).await.len();
            app.next_refusal_window();
            let before = app.counts().await;
            let result = call_mandate_rpc(callers.of(role), rpc, &target).await;
            let after = app.counts().await;
            if rpc.allowed_roles().contains(&role) {
                match &result {
                    Ok(()) => {}
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::PermissionDenied | Code::Unauthenticated
                        ) =>
                    {
                        failures.push(format!("{cell}: allowed role refused: {status:?}"));
                    }
                    // The fixture puts the mandate in a state where the call succeeds, so any
                    // other code is worth a look too.
                    Err(status) => {
                        failures.push(format!("{cell}: allowed role failed: {status:?}"))
                    }
                }
                continue;
            }
            match &result {
                Err(status) if status.code() == Code::PermissionDenied => {}
                other => {
                    failures.push(format!("{cell}: want PERMISSION_DENIED, got {other:?}"));
                    continue;
                }
            }
            let events = if names_a_mandate(rpc) { 1 } else { 0 };
            if after.audit_events != before.audit_events + events {
                failures.push(format!(
                    "{cell}: refusal wrote {} audit events, want {events}",
                    after.audit_events - before.audit_events
                ));
            }
            if (
                after.mandates,
                after.mandate_versions,
                after.idempotency_keys,
            ) != (
                before.mandates,
                before.mandate_versions,
                before.idempotency_keys,
            ) {
                failures.push(format!(
                    "{cell}: refusal changed rows: {before:?} -> {after:?}"
                ));
            }
            let stored = app
                .store
                .mandate(&mandate_id(&mandate.mandate_id))
                .await
                .unwrap()
                .unwrap();
            if stored.version != mandate.version {
                failures.push(format!("{cell}: refusal changed the mandate's version"));
            }
            if names_a_mandate(rpc) {
                if app.chain_events(&mandate_chain).await.len() != mandate_events {
                    failures.push(format!("{cell}: the refusal grew the mandate's chain"));
                }
                let events = app.chain_events(&caller_chain(scope_of(role))).await;
                let last = events.last().unwrap();
                let reason = last.reason_code.as_deref();
                if (
                    last.action.as_str(),
                    last.outcome.as_str(),
                    reason,
                    last.actor_role.as_str(),
                ) != (
                    "ACCESS_DENIED",
                    "DENIED",
                    Some("ROLE_NOT_ALLOWED"),
                    role.as_str(),
                ) {
                    failures.push(format!(
                        "{cell}: last event on the caller's chain is {last:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.verify_audit().await;
}

both_backends!(every_rpc_for_every_role);
