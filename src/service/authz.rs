//! The role × RPC matrix (DESIGN §2), in one place. Tenancy (whose mandate it is) is checked
//! separately, on the resource, by `Actor::can_see`.

use crate::domain::actor::{Actor, Role};

/// Every RPC that needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    CreateMandate,
    GetMandate,
    ListMandates,
    ConfirmMandate,
    SetFundingSources,
    PauseMandate,
    ResumeMandate,
    SuspendMandate,
    ReinstateMandate,
    RevokeMandate,
    TerminateMandate,
    AmendMandate,
    ConfirmAmendment,
    NotifyUpcomingDebit,
    ListNotices,
    CreateDeduction,
    CheckDeduction,
    GetDeduction,
    ListDeductions,
    RefundDeduction,
    RequestOneOffApproval,
    ApproveOneOff,
    RejectOneOff,
    CreditWallet,
    GetWalletBalance,
    GetMerchantPolicy,
    SetMerchantPolicy,
    WatchEvents,
    GetSettlementSummary,
    GetSettlementSchedule,
    SetSettlementSchedule,
    ImportStatement,
    ListDiscrepancies,
    ResolveDiscrepancy,
    QueryAuditEvents,
    ExportAuditEvents,
    GetMandateHistory,
    GetBlockedAttempts,
    VerifyAuditChain,
    GetAuditCheckpoint,
}

use Role::{Auditor, Merchant, Operator, Payer};

impl Rpc {
    pub const ALL: [Rpc; 40] = [
        Self::CreateMandate,
        Self::GetMandate,
        Self::ListMandates,
        Self::ConfirmMandate,
        Self::SetFundingSources,
        Self::PauseMandate,
        Self::ResumeMandate,
        Self::SuspendMandate,
        Self::ReinstateMandate,
        Self::RevokeMandate,
        Self::TerminateMandate,
        Self::AmendMandate,
        Self::ConfirmAmendment,
        Self::NotifyUpcomingDebit,
        Self::ListNotices,
        Self::CreateDeduction,
        Self::CheckDeduction,
        Self::GetDeduction,
        Self::ListDeductions,
        Self::RefundDeduction,
        Self::RequestOneOffApproval,
        Self::ApproveOneOff,
        Self::RejectOneOff,
        Self::CreditWallet,
        Self::GetWalletBalance,
        Self::GetMerchantPolicy,
        Self::SetMerchantPolicy,
        Self::WatchEvents,
        Self::GetSettlementSummary,
        Self::GetSettlementSchedule,
        Self::SetSettlementSchedule,
        Self::ImportStatement,
        Self::ListDiscrepancies,
        Self::ResolveDiscrepancy,
        Self::QueryAuditEvents,
        Self::ExportAuditEvents,
        Self::GetMandateHistory,
        Self::GetBlockedAttempts,
        Self::VerifyAuditChain,
        Self::GetAuditCheckpoint,
    ];

    /// The roles that may call this RPC.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            Self::CreateMandate
            | Self::TerminateMandate
            | Self::AmendMandate
            | Self::NotifyUpcomingDebit
            | Self::CreateDeduction
            | Self::CheckDeduction
            | Self::RefundDeduction
            | Self::RequestOneOffApproval => &[Merchant],
            Self::GetMandate | Self::ListMandates | Self::GetDeduction | Self::ListDeductions => {
                &[Merchant, Payer, Auditor, Operator]
            }
            Self::ListNotices => &[Merchant, Payer, Auditor, Operator],
            Self::ConfirmMandate
            | Self::SetFundingSources
            | Self::PauseMandate
            | Self::ResumeMandate
            | Self::RevokeMandate
            | Self::ConfirmAmendment
            | Self::ApproveOneOff
            | Self::RejectOneOff => &[Payer],
            Self::SuspendMandate
            | Self::ReinstateMandate
            | Self::CreditWallet
            | Self::SetMerchantPolicy => &[Operator],
            Self::GetWalletBalance => &[Payer, Operator],
            Self::GetMerchantPolicy => &[Merchant, Auditor, Operator],
            Self::WatchEvents => &[Merchant, Payer],
            Self::GetSettlementSummary | Self::GetSettlementSchedule => {
                &[Merchant, Auditor, Operator]
            }
            Self::SetSettlementSchedule | Self::ImportStatement | Self::ResolveDiscrepancy => {
                &[Operator]
            }
            Self::ListDiscrepancies => &[Auditor, Operator],
            Self::QueryAuditEvents | Self::ExportAuditEvents | Self::GetBlockedAttempts => {
                &[Auditor, Merchant]
            }
            Self::GetMandateHistory => &[Auditor, Operator, Merchant, Payer],
            Self::VerifyAuditChain | Self::GetAuditCheckpoint => &[Auditor],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CreateMandate => "CreateMandate",
            Self::GetMandate => "GetMandate",
            Self::ListMandates => "ListMandates",
            Self::ConfirmMandate => "ConfirmMandate",
            Self::SetFundingSources => "SetFundingSources",
            Self::PauseMandate => "PauseMandate",
            Self::ResumeMandate => "ResumeMandate",
            Self::SuspendMandate => "SuspendMandate",
            Self::ReinstateMandate => "ReinstateMandate",
            Self::RevokeMandate => "RevokeMandate",
            Self::TerminateMandate => "TerminateMandate",
            Self::AmendMandate => "AmendMandate",
            Self::ConfirmAmendment => "ConfirmAmendment",
            Self::NotifyUpcomingDebit => "NotifyUpcomingDebit",
            Self::ListNotices => "ListNotices",
            Self::CreateDeduction => "CreateDeduction",
            Self::CheckDeduction => "CheckDeduction",
            Self::GetDeduction => "GetDeduction",
            Self::ListDeductions => "ListDeductions",
            Self::RefundDeduction => "RefundDeduction",
            Self::RequestOneOffApproval => "RequestOneOffApproval",
            Self::ApproveOneOff => "ApproveOneOff",
            Self::RejectOneOff => "RejectOneOff",
            Self::CreditWallet => "CreditWallet",
            Self::GetWalletBalance => "GetWalletBalance",
            Self::GetMerchantPolicy => "GetMerchantPolicy",
            Self::SetMerchantPolicy => "SetMerchantPolicy",
            Self::WatchEvents => "WatchEvents",
            Self::GetSettlementSummary => "GetSettlementSummary",
            Self::GetSettlementSchedule => "GetSettlementSchedule",
            Self::SetSettlementSchedule => "SetSettlementSchedule",
            Self::ImportStatement => "ImportStatement",
            Self::ListDiscrepancies => "ListDiscrepancies",
            Self::ResolveDiscrepancy => "ResolveDiscrepancy",
            Self::QueryAuditEvents => "QueryAuditEvents",
            Self::ExportAuditEvents => "ExportAuditEvents",
            Self::GetMandateHistory => "GetMandateHistory",
            Self::GetBlockedAttempts => "GetBlockedAttempts",
            Self::VerifyAuditChain => "VerifyAuditChain",
            Self::GetAuditCheckpoint => "GetAuditCheckpoint",
        }
    }

    pub fn permits(self, actor: &Actor) -> bool {
        self.allowed_roles().contains(&actor.role)
    }
}
