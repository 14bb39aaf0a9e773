//! The role × RPC matrix of DeductionService and WalletService (DESIGN §2): every RPC for every
//! role over real gRPC, inside the caller's tenancy, and the matrix the service enforces against
//! the one DESIGN §2 writes out.

use std::collections::HashSet;

use tonic::Code;
use withholding::domain::actor::Role;
use withholding::service::Rpc;

use crate::both_backends;
use crate::harness::*;

/// The DeductionService and WalletService RPCs, in `Rpc::ALL` order.
const RPCS: [Rpc; 12] = [
    Rpc::NotifyUpcomingDebit,
    Rpc::ListNotices,
    Rpc::CreateDeduction,
    Rpc::CheckDeduction,
    Rpc::GetDeduction,
    Rpc::ListDeductions,
    Rpc::RefundDeduction,
    Rpc::RequestOneOffApproval,
    Rpc::ApproveOneOff,
    Rpc::RejectOneOff,
    Rpc::CreditWallet,
    Rpc::GetWalletBalance,
];

/// DESIGN §2, written out by hand: merchants collect, notify, refund and ask for one-off
/// approvals; payers approve or reject them and read their wallet; auditors read deductions (and
/// the notices of the mandates they may read); operators credit wallets and read; everyone reads
/// deductions inside their own tenancy.
fn design_roles(rpc: Rpc) -> &'static [Role] {
    use Role::{Auditor, Merchant, Operator, Payer};
    match rpc {
        Rpc::NotifyUpcomingDebit
        | Rpc::CreateDeduction
        | Rpc::CheckDeduction
        | Rpc::RefundDeduction
        | Rpc::RequestOneOffApproval => &[Merchant],
        Rpc::ListNotices | Rpc::GetDeduction | Rpc::ListDeductions => {
            &[Merchant, Payer, Auditor, Operator]
        }
        Rpc::ApproveOneOff | Rpc::RejectOneOff => &[Payer],
        Rpc::CreditWallet => &[Operator],
        Rpc::GetWalletBalance => &[Payer, Operator],
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

/// Whether the request names a stored resource (a mandate, deduction or one-off approval of
/// mandate under test), so that a refusal is an audit event on that mandate's chain (DESIGN §2:
/// "each refusal on a real resource is an audit event"). The wallet RPCs name a payer, not a
/// resource with a chain; their refusals are not counted.
fn names_a_resource(rpc: Rpc) -> bool {
    match rpc {
        Rpc::NotifyUpcomingDebit
        | Rpc::ListNotices
        | Rpc::CreateDeduction
        | Rpc::CheckDeduction
        | Rpc::GetDeduction
        | Rpc::ListDeductions
        | Rpc::RefundDeduction
        | Rpc::RequestOneOffApproval
        | Rpc::ApproveOneOff
        | Rpc::RejectOneOff => true,
        Rpc::CreditWallet | Rpc::GetWalletBalance => false,
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

#[test]
fn matrix_matches_the_design() {
    let ours: Vec<Rpc> = Rpc::ALL
        .into_iter()
        .filter(|rpc| !matches!(rpc, mandate_service!()))
        .collect();
    assert_eq!(ours, RPCS.to_vec());
    for rpc in RPCS {
        let got: HashSet<Role> = rpc.allowed_roles().iter().copied().collect();
        let want: HashSet<Role> = design_roles(rpc).iter().copied().collect();
        assert_eq!(got, want, "{}", rpc.name());
        assert!(!got.contains(&Role::System), "{}", rpc.name());
    }
}

/// Every new RPC × every role, inside the caller's tenancy: a role outside the matrix is
/// PERMISSION_DENIED, writes nothing but (when the request names a stored resource) one
/// ACCESS_DENIED / ROLE_NOT_ALLOWED event on the caller's own chain — never on the mandate's;
/// a role inside it succeeds.
async fn every_rpc_for_every_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let raw = Raw::open(&app).await;
    // In the order of ROLES.
    let mut callers = [
        Caller::new(&app, app.merchant_token("m-1")).await,
        Caller::new(&app, app.payer_token("p-1")).await,
        Caller::new(&app, app.auditor_token(None)).await,
        Caller::new(&app, app.operator_token()).await,
    ];
    let base = app.deduction_target("c-matrix").await;
    let mut failures: Vec<String> = vec![];
    for rpc in RPCS {
        for (i, role) in ROLES.into_iter().enumerate() {
            let cell = format!("{} as {}", rpc.name(), role.as_str());
            let tag = format!("{}-{}", rpc.name(), role.as_str());
            let mut target = DeductionTarget {
                tag: tag.clone(),
                ..base.clone()
            };
            if matches!(rpc, Rpc::ApproveOneOff | Rpc::RejectOneOff) {
                target.approval_id = app
                    .pending_approval(&base.mandate_id, &tag)
                    .await
                    .approval_id;
            }
            let chain_before = app.mandate_chain(&base.mandate_id).await.len();
            app.next_refusal_window();
            let before = app.state(&raw).await;
            let result = call_deduction_rpc(&mut callers[i], rpc, &target).await;
            let after = app.state(&raw).await;
            if rpc.allowed_roles().contains(&role) {
                if let Err(status) = result {
                    failures.push(format!("{cell}: allowed role failed: {status:?}"));
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
            if before.rows != after.rows || before.ledger != after.ledger {
                failures.push(format!("{cell}: refusal wrote {}", before.diff(&after)));
            }
            if !names_a_resource(rpc) {
                continue;
            }
            if after.audit_events != before.audit_events + 1 {
                failures.push(format!(
                    "{cell}: refusal of a call on a stored resource wrote {} audit events, want 1",
                    after.audit_events - before.audit_events
                ));
                continue;
            }
            if app.mandate_chain(&base.mandate_id).await.len() != chain_before {
                failures.push(format!("{cell}: the refusal grew the mandate's chain"));
            }
            let events = app.chain_events(&caller_chain(scope_of(role))).await;
            let last = events.last().unwrap();
            if (
                last.action.as_str(),
                last.outcome.as_str(),
                last.reason_code.as_deref(),
                last.actor_role.as_str(),
            ) != (
                "ACCESS_DENIED",
                "DENIED",
                Some("ROLE_NOT_ALLOWED"),
                role.as_str(),
            ) {
                failures.push(format!("{cell}: the caller's chain ends with {last:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.verify_audit().await;
}

both_backends!(every_rpc_for_every_role);
