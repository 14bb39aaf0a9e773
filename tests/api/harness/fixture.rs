//! One call each for what most tests do: mandates ready to collect on, wallet credits, one-off
//! approvals and merchant policies, as `TestApp` methods (deductions are in `deductions.rs`).

use tonic::Status;

use super::{TestApp, approval_status, collect, confirm_request, create_request, money, pb};
use super::{status_of, wallet_then_card};

/// Creates a mandate as merchant `m-1` for payer `p-1` and returns it.
pub async fn create_mandate(app: &TestApp, contract: &str) -> pb::Mandate {
    app.merchant("m-1")
        .await
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// Creates and confirms a mandate for payer `p-1`.
pub async fn active_mandate(app: &TestApp, contract: &str) -> pb::Mandate {
    let created = create_mandate(app, contract).await;
    app.payer("p-1")
        .await
        .confirm_mandate(confirm_request(&created))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// Mandates.
impl TestApp {
    /// A mandate of `merchant` for `payer` under `terms`, waiting for the payer's consent.
    pub async fn propose(
        &self,
        merchant: &str,
        payer: &str,
        contract: &str,
        terms: pb::MandateTerms,
    ) -> pb::Mandate {
        let created = self
            .merchant(merchant)
            .await
            .create_mandate(pb::CreateMandateRequest {
                merchant_contract_id: contract.into(),
                payer_id: payer.into(),
                terms: Some(terms),
            })
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap();
        assert_eq!(status_of(&created), pb::MandateStatus::PendingConsent);
        created
    }

    /// The payer of `created` confirms it with `sources`; it is then ACTIVE.
    pub async fn confirm_with(
        &self,
        created: &pb::Mandate,
        sources: Vec<pb::FundingSource>,
    ) -> pb::Mandate {
        let confirmed = self
            .payer(&created.payer_id)
            .await
            .confirm_mandate(pb::ConfirmMandateRequest {
                funding_sources: sources,
                ..confirm_request(created)
            })
            .await
            .unwrap()
            .into_inner()
            .mandate
            .unwrap();
        assert_eq!(status_of(&confirmed), pb::MandateStatus::Active);
        confirmed
    }

    /// A mandate of `merchant` for `payer` under `terms`, confirmed by the payer with `sources`.
    pub async fn mandate_with(
        &self,
        merchant: &str,
        payer: &str,
        contract: &str,
        terms: pb::MandateTerms,
        sources: Vec<pb::FundingSource>,
    ) -> pb::Mandate {
        let created = self.propose(merchant, payer, contract, terms).await;
        self.confirm_with(&created, sources).await
    }

    /// The mandate as it stands now, read by merchant m-1.
    pub async fn mandate_now(&self, id: &str) -> pb::Mandate {
        self.merchant("m-1")
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

    /// A mandate of `merchant` for `payer` under `terms`, confirmed by the payer (wallet up to
    /// 200.00, then a card).
    pub async fn mandate_for(
        &self,
        merchant: &str,
        payer: &str,
        contract: &str,
        terms: pb::MandateTerms,
    ) -> pb::Mandate {
        self.mandate_with(merchant, payer, contract, terms, wallet_then_card())
            .await
    }
}

/// The wallet.
impl TestApp {
    /// Credits payer `payer` with `amount` CNY through the operator.
    pub async fn credit(&self, payer: &str, amount: &str) {
        self.wallet_as(self.operator_token())
            .await
            .credit_wallet(pb::CreditWalletRequest {
                request_id: format!("credit-{}", uuid::Uuid::now_v7().simple()),
                payer_id: payer.into(),
                amount: money(amount),
                reason: "top-up".into(),
            })
            .await
            .unwrap();
    }

    pub async fn balance(&self, payer: &str) -> String {
        self.wallet_as(self.operator_token())
            .await
            .get_wallet_balance(pb::GetWalletBalanceRequest {
                payer_id: payer.into(),
                currency_code: "CNY".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .balance
            .expect("a balance")
            .amount
    }
}

/// One-off approvals (DESIGN §5): the merchant asks, the payer decides.
impl TestApp {
    /// Asks, as `merchant`, for the payer's approval of a declined deduction.
    pub async fn request_approval(
        &self,
        merchant: &str,
        request_id: &str,
        deduction_id: &str,
    ) -> Result<pb::OneOffApproval, Status> {
        self.deductions_as(self.merchant_token(merchant))
            .await
            .request_one_off_approval(pb::RequestOneOffApprovalRequest {
                request_id: request_id.into(),
                deduction_id: deduction_id.into(),
                reason: "refunded by mistake; please approve".into(),
            })
            .await
            .map(|r| r.into_inner().approval.unwrap())
    }

    pub async fn approve(
        &self,
        payer: &str,
        approval_id: &str,
    ) -> Result<pb::OneOffApproval, Status> {
        self.deductions_as(self.payer_token(payer))
            .await
            .approve_one_off(pb::ApproveOneOffRequest {
                approval_id: approval_id.into(),
            })
            .await
            .map(|r| r.into_inner().approval.unwrap())
    }

    pub async fn reject(
        &self,
        payer: &str,
        approval_id: &str,
    ) -> Result<pb::OneOffApproval, Status> {
        self.deductions_as(self.payer_token(payer))
            .await
            .reject_one_off(pb::RejectOneOffRequest {
                approval_id: approval_id.into(),
                reason: "I did not agree to this".into(),
            })
            .await
            .map(|r| r.into_inner().approval.unwrap())
    }

    /// A DECLINED deduction (above the per-debit limit) of m-1 on `mandate_id`, and a PENDING
    /// one-off approval for it.
    pub async fn pending_approval(&self, mandate_id: &str, tag: &str) -> pb::OneOffApproval {
        let declined = self
            .deduct_expect(
                "m-1",
                collect(
                    &format!("r-big-{tag}"),
                    mandate_id,
                    "600.00",
                    &format!("b-big-{tag}"),
                ),
                pb::DeductionStatus::Declined,
                "AMOUNT_ABOVE_PER_DEBIT_LIMIT",
            )
            .await;
        let approval = self
            .request_approval("m-1", &format!("ap-big-{tag}"), &declined.deduction_id)
            .await
            .unwrap();
        assert_eq!(approval_status(&approval), pb::ApprovalStatus::Pending);
        approval
    }
}

/// Merchant policies.
impl TestApp {
    /// Sets `merchant`'s suspected-refund-recovery policy, as an operator.
    pub async fn set_recovery_policy(&self, merchant: &str, policy: pb::RecoveryPolicy) {
        self.policies_as(self.operator_token())
            .await
            .set_merchant_policy(pb::SetMerchantPolicyRequest {
                merchant_id: merchant.into(),
                suspected_refund_recovery: policy as i32,
                reason: "compliance review".into(),
            })
            .await
            .unwrap();
    }
}
