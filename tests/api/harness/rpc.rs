//! One well-formed call of every RPC, aimed at a target: the role matrix (`roles/`) and the
//! tenancy tests (`tenancy/`) issue the same calls, to tell a refusal from a success. Each
//! dispatcher matches every `Rpc` without a `_` arm, so an RPC added to `Rpc` breaks the build
//! until it is placed.

use tonic::Status;
use withholding::domain::actor::Role;
use withholding::domain::ids::MandateId;
use withholding::service::Rpc;

use super::{
    Client, DeductionClient, TestApp, WalletClient, active_mandate, collect, consent,
    create_request, money, pb, proto_time, refund_request, tighter_terms, wallet_only,
    wallet_then_card,
};

/// Every role a token can carry (`System` has no token).
pub const ROLES: [Role; 4] = [Role::Merchant, Role::Payer, Role::Auditor, Role::Operator];

/// The idempotency scope of each role's caller in these tests: merchant m-1, payer p-1, an
/// institution-wide auditor and an operator.
pub fn scope_of(role: Role) -> &'static str {
    match role {
        Role::Merchant => "merchant:m-1",
        Role::Payer => "payer:p-1",
        Role::Auditor => "auditor:compliance",
        Role::Operator => "operator:ops-1",
        Role::System => panic!("no caller is the system"),
    }
}

// ---- MandateService ----

/// The RPCs of the other services (DeductionService, WalletService, MerchantPolicyService) that
/// share the `Rpc` enum, named one by one so that an RPC added to `Rpc` still breaks the build
/// until it is placed on one side or the other.
macro_rules! not_mandate_service {
    () => {
        Rpc::NotifyUpcomingDebit
            | Rpc::ListNotices
            | Rpc::CreateDeduction
            | Rpc::CheckDeduction
            | Rpc::GetDeduction
            | Rpc::ListDeductions
            | Rpc::RefundDeduction
            | Rpc::RequestOneOffApproval
            | Rpc::ApproveOneOff
            | Rpc::RejectOneOff
            | Rpc::CreditWallet
            | Rpc::GetWalletBalance
            | Rpc::GetMerchantPolicy
            | Rpc::SetMerchantPolicy
            | Rpc::WatchEvents
            | Rpc::GetSettlementSummary
            | Rpc::GetSettlementSchedule
            | Rpc::SetSettlementSchedule
            | Rpc::ImportStatement
            | Rpc::ListDiscrepancies
            | Rpc::ResolveDiscrepancy
            // AuditService (tests/api/compliance/).
            | Rpc::QueryAuditEvents
            | Rpc::ExportAuditEvents
            | Rpc::GetMandateHistory
            | Rpc::GetBlockedAttempts
            | Rpc::VerifyAuditChain
            | Rpc::GetAuditCheckpoint
    };
}
pub(crate) use not_mandate_service;

pub fn not_a_mandate_rpc(rpc: Rpc) -> ! {
    panic!("{} is not a MandateService RPC", rpc.name())
}

/// What one MandateService call is aimed at.
pub struct MandateTarget {
    pub mandate_id: String,
    /// The version the caller was shown (ConfirmMandate, ConfirmAmendment).
    pub version: i64,
    /// A fresh contract id, for CreateMandate.
    pub contract: String,
}

impl MandateTarget {
    pub fn of(mandate: &pb::Mandate, contract: &str) -> Self {
        Self {
            mandate_id: mandate.mandate_id.clone(),
            version: mandate.version,
            contract: contract.to_owned(),
        }
    }
}

/// Issues the MandateService `rpc` with a well-formed request aimed at `target`.
pub async fn call_mandate_rpc(
    client: &mut Client,
    rpc: Rpc,
    target: &MandateTarget,
) -> Result<(), Status> {
    let mandate_id = target.mandate_id.clone();
    let reason = "authz test".to_owned();
    let request_id = String::new();
    match rpc {
        Rpc::CreateMandate => client
            .create_mandate(create_request(&target.contract, "p-1"))
            .await
            .map(drop),
        Rpc::GetMandate => client
            .get_mandate(pb::GetMandateRequest {
                mandate_id,
                as_of: None,
            })
            .await
            .map(drop),
        Rpc::ListMandates => client
            .list_mandates(pb::ListMandatesRequest::default())
            .await
            .map(drop),
        Rpc::ConfirmMandate => client
            .confirm_mandate(pb::ConfirmMandateRequest {
                mandate_id,
                mandate_version: target.version,
                consent: Some(consent()),
                funding_sources: wallet_then_card(),
                request_id,
            })
            .await
            .map(drop),
        Rpc::SetFundingSources => client
            .set_funding_sources(pb::SetFundingSourcesRequest {
                mandate_id,
                funding_sources: wallet_only(),
                request_id,
            })
            .await
            .map(drop),
        Rpc::PauseMandate => client
            .pause_mandate(pb::PauseMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ResumeMandate => client
            .resume_mandate(pb::ResumeMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::SuspendMandate => client
            .suspend_mandate(pb::SuspendMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ReinstateMandate => client
            .reinstate_mandate(pb::ReinstateMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::RevokeMandate => client
            .revoke_mandate(pb::RevokeMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::TerminateMandate => client
            .terminate_mandate(pb::TerminateMandateRequest {
                mandate_id,
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::AmendMandate => client
            .amend_mandate(pb::AmendMandateRequest {
                mandate_id,
                terms: Some(tighter_terms()),
                reason,
                request_id,
            })
            .await
            .map(drop),
        Rpc::ConfirmAmendment => client
            .confirm_amendment(pb::ConfirmAmendmentRequest {
                consent: Some(consent()),
                mandate_id,
                mandate_version: target.version,
                request_id,
            })
            .await
            .map(drop),
        not_mandate_service!() => not_a_mandate_rpc(rpc),
    }
}

// ---- DeductionService and WalletService ----

/// The MandateService and MerchantPolicyService RPCs (covered by `call_mandate_rpc` and
/// `policies.rs`), named one by one so that an RPC added to `Rpc` breaks the build until it is
/// placed.
macro_rules! mandate_service {
    () => {
        Rpc::CreateMandate
            | Rpc::GetMandate
            | Rpc::ListMandates
            | Rpc::ConfirmMandate
            | Rpc::SetFundingSources
            | Rpc::PauseMandate
            | Rpc::ResumeMandate
            | Rpc::SuspendMandate
            | Rpc::ReinstateMandate
            | Rpc::RevokeMandate
            | Rpc::TerminateMandate
            | Rpc::AmendMandate
            | Rpc::ConfirmAmendment
            | Rpc::GetMerchantPolicy
            | Rpc::SetMerchantPolicy
            | Rpc::WatchEvents
            | Rpc::GetSettlementSummary
            | Rpc::GetSettlementSchedule
            | Rpc::SetSettlementSchedule
            | Rpc::ImportStatement
            | Rpc::ListDiscrepancies
            | Rpc::ResolveDiscrepancy
            // AuditService (tests/api/compliance/).
            | Rpc::QueryAuditEvents
            | Rpc::ExportAuditEvents
            | Rpc::GetMandateHistory
            | Rpc::GetBlockedAttempts
            | Rpc::VerifyAuditChain
            | Rpc::GetAuditCheckpoint
    };
}
pub(crate) use mandate_service;

/// What one DeductionService or WalletService call is aimed at.
#[derive(Clone)]
pub struct DeductionTarget {
    pub mandate_id: String,
    /// A SUCCEEDED deduction (Get, Refund).
    pub deduction_id: String,
    /// A DECLINED deduction (RequestOneOffApproval).
    pub declined_id: String,
    /// A PENDING one-off approval (Approve, Reject).
    pub approval_id: String,
    pub payer_id: String,
    /// Makes request ids and bills unique per call.
    pub tag: String,
}

impl DeductionTarget {
    /// Well-formed ids that name nothing.
    pub fn missing(tag: &str) -> Self {
        Self {
            mandate_id: MandateId::generate().to_string(),
            deduction_id: "ddn-0000000000000000000000000000missing".into(),
            declined_id: "ddn-0000000000000000000000000000missing".into(),
            approval_id: "apv-0000000000000000000000000000missing".into(),
            payer_id: "p-1".into(),
            tag: tag.into(),
        }
    }
}

/// One client of each service, for one identity.
pub struct Caller {
    pub deductions: DeductionClient,
    pub wallet: WalletClient,
}

impl Caller {
    pub async fn new(app: &TestApp, token: String) -> Self {
        Self {
            deductions: app.deductions_as(token.clone()).await,
            wallet: app.wallet_as(token).await,
        }
    }
}

/// Issues the DeductionService or WalletService `rpc` with a well-formed request aimed at `t`.
pub async fn call_deduction_rpc(
    caller: &mut Caller,
    rpc: Rpc,
    t: &DeductionTarget,
) -> Result<(), Status> {
    let d = &mut caller.deductions;
    let tag = &t.tag;
    match rpc {
        Rpc::NotifyUpcomingDebit => d
            .notify_upcoming_debit(pb::NotifyUpcomingDebitRequest {
                mandate_id: t.mandate_id.clone(),
                amount: money("50.00"),
                due_at: Some(proto_time("2026-03-05T02:00:00Z".parse().unwrap())),
                bill_reference: format!("b-ntc-{tag}"),
                request_id: format!("ntc-{tag}"),
            })
            .await
            .map(drop),
        Rpc::ListNotices => d
            .list_notices(pb::ListNoticesRequest {
                mandate_id: t.mandate_id.clone(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .map(drop),
        Rpc::CreateDeduction => d
            .create_deduction(collect(
                &format!("r-{tag}"),
                &t.mandate_id,
                "10.00",
                &format!("b-{tag}"),
            ))
            .await
            .map(drop),
        Rpc::CheckDeduction => d
            .check_deduction(pb::CheckDeductionRequest {
                mandate_id: t.mandate_id.clone(),
                amount: money("10.00"),
                purpose: pb::Purpose::Utility as i32,
                bill_reference: format!("b-chk-{tag}"),
                notice_id: String::new(),
            })
            .await
            .map(drop),
        Rpc::GetDeduction => d
            .get_deduction(pb::GetDeductionRequest {
                deduction_id: t.deduction_id.clone(),
            })
            .await
            .map(drop),
        Rpc::ListDeductions => d
            .list_deductions(pb::ListDeductionsRequest {
                mandate_id: t.mandate_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::RefundDeduction => d
            .refund_deduction(refund_request(
                &format!("rf-{tag}"),
                &t.deduction_id,
                "1.00",
            ))
            .await
            .map(drop),
        Rpc::RequestOneOffApproval => d
            .request_one_off_approval(pb::RequestOneOffApprovalRequest {
                request_id: format!("ap-{tag}"),
                deduction_id: t.declined_id.clone(),
                reason: "refunded by mistake; please approve".into(),
            })
            .await
            .map(|r| drop(r.into_inner().approval.unwrap())),
        Rpc::ApproveOneOff => d
            .approve_one_off(pb::ApproveOneOffRequest {
                approval_id: t.approval_id.clone(),
            })
            .await
            .map(|r| drop(r.into_inner().approval.unwrap())),
        Rpc::RejectOneOff => d
            .reject_one_off(pb::RejectOneOffRequest {
                approval_id: t.approval_id.clone(),
                reason: "I did not agree to this".into(),
            })
            .await
            .map(|r| drop(r.into_inner().approval.unwrap())),
        Rpc::CreditWallet => caller
            .wallet
            .credit_wallet(pb::CreditWalletRequest {
                request_id: format!("cw-{tag}"),
                payer_id: t.payer_id.clone(),
                amount: money("5.00"),
                reason: "top-up".into(),
            })
            .await
            .map(drop),
        Rpc::GetWalletBalance => caller
            .wallet
            .get_wallet_balance(pb::GetWalletBalanceRequest {
                payer_id: t.payer_id.clone(),
                currency_code: "CNY".into(),
            })
            .await
            .map(drop),
        mandate_service!() => panic!(
            "{} is not a DeductionService or WalletService RPC",
            rpc.name()
        ),
    }
}

impl TestApp {
    /// m-1's mandate for p-1 with a SUCCEEDED and a DECLINED deduction on it, and 500.00 in
    /// p-1's wallet beforehand.
    pub async fn deduction_target(&self, contract: &str) -> DeductionTarget {
        let m = active_mandate(self, contract).await;
        self.credit("p-1", "500.00").await;
        let ok = self
            .deduct_expect(
                "m-1",
                collect("r-fixture-ok", &m.mandate_id, "100.00", "b-fixture-ok"),
                pb::DeductionStatus::Succeeded,
                "",
            )
            .await;
        let declined = self
            .deduct_expect(
                "m-1",
                collect("r-fixture-no", &m.mandate_id, "600.00", "b-fixture-no"),
                pb::DeductionStatus::Declined,
                "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            )
            .await;
        DeductionTarget {
            mandate_id: m.mandate_id,
            deduction_id: ok.deduction_id,
            declined_id: declined.deduction_id,
            approval_id: String::new(),
            payer_id: "p-1".into(),
            tag: String::new(),
        }
    }
}
