//! Demo data for the console (`serve --demo`): a few merchants and payers, mandates with the
//! payer's consent, collections, a refund, the clawback of that refund blocked, a suspected
//! refund recovery, an over-limit decline, clawback authority asked for and refused, a paused
//! mandate, and a bank statement with a line we have no charge for (a long). Written through
//! the API, as the callers would, with development tokens; once per database.

use std::future::Future;
use std::net::SocketAddr;

use tonic::Request;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::deduction_service_client::DeductionServiceClient;
use crate::pb::mandate_service_client::MandateServiceClient;
use crate::pb::settlement_service_client::SettlementServiceClient;
use crate::pb::wallet_service_client::WalletServiceClient;

/// The contract id of the first demo mandate: its presence means the demo is seeded.
const MARKER: &str = "demo-water-alice";

/// Mints a development token: `(role, subject, merchant_id)`.
pub trait Minter {
    fn token(&self, role: &str, subject: &str, merchant_id: Option<&str>)
    -> Result<String, String>;
}

impl<F: Fn(&str, &str, Option<&str>) -> Result<String, String>> Minter for F {
    fn token(
        &self,
        role: &str,
        subject: &str,
        merchant_id: Option<&str>,
    ) -> Result<String, String> {
        self(role, subject, merchant_id)
    }
}

struct Api<'a, M> {
    channel: Channel,
    minter: &'a M,
}

fn authed<T>(message: T, token: &str) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "a token that is not a header value".to_owned())?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn cny(amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency_code: "CNY".into(),
        amount: amount.into(),
    })
}

async fn call<T, Fut>(what: &str, f: Fut) -> Result<T, String>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    f.await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{what}: {:?}: {}", s.code(), s.message()))
}

impl<M: Minter> Api<'_, M> {
    fn merchant_token(&self, merchant: &str) -> Result<String, String> {
        self.minter.token("merchant", "billing", Some(merchant))
    }

    async fn mandate(
        &self,
        merchant: &str,
        payer: &str,
        contract: &str,
        purpose: pb::Purpose,
        account: &str,
    ) -> Result<String, String> {
        let terms = pb::MandateTerms {
            display_account: account.into(),
            purposes: vec![purpose as i32],
            currency_code: "CNY".into(),
            amount_type: pb::AmountType::Maximum as i32,
            per_debit_limit: cny("500.00"),
            period: Some(pb::Period {
                unit: pb::PeriodUnit::Month as i32,
                count: 1,
            }),
            period_amount_limit: cny("2000.00"),
            period_debit_limit: Some(10),
            ..Default::default()
        };
        let mut mandates = MandateServiceClient::new(self.channel.clone());
        let created = call(
            "CreateMandate",
            mandates.create_mandate(authed(
                pb::CreateMandateRequest {
                    merchant_contract_id: contract.into(),
                    payer_id: payer.into(),
                    terms: Some(terms),
                },
                &self.merchant_token(merchant)?,
            )?),
        )
        .await?
        .mandate
        .ok_or("CreateMandate answered without a mandate")?;
        let consent = pb::ConsentEvidence {
            channel: pb::ConsentChannel::App as i32,
            method: pb::ConsentMethod::Biometric as i32,
            device_id: format!("{payer}-phone"),
            user_agent: "WalletApp/5.2 (iOS 18)".into(),
            ip_address: "198.51.100.23".into(),
            terms_version: format!("{merchant}-terms-2026-01"),
            // SHA-256 of "test": the demo shows no terms text, only a well-formed digest.
            terms_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            captured_at: None,
            mandate_version: 0,
        };
        call(
            "ConfirmMandate",
            mandates.confirm_mandate(authed(
                pb::ConfirmMandateRequest {
                    mandate_id: created.mandate_id.clone(),
                    mandate_version: created.version,
                    consent: Some(consent),
                    funding_sources: vec![pb::FundingSource {
                        instrument: Some(pb::funding_source::Instrument::Wallet(
                            pb::WalletSource {},
                        )),
                        cap_per_debit: None,
                    }],
                    request_id: format!("{contract}-confirm"),
                },
                &self.minter.token("payer", payer, None)?,
            )?),
        )
        .await?;
        Ok(created.mandate_id)
    }

    async fn collect(
        &self,
        merchant: &str,
        mandate: &str,
        request_id: &str,
        amount: &str,
        bill: &str,
        purpose: pb::Purpose,
    ) -> Result<pb::Deduction, String> {
        let mut deductions = DeductionServiceClient::new(self.channel.clone());
        call(
            "CreateDeduction",
            deductions.create_deduction(authed(
                pb::CreateDeductionRequest {
                    request_id: request_id.into(),
                    mandate_id: mandate.into(),
                    amount: cny(amount),
                    purpose: purpose as i32,
                    bill_reference: bill.into(),
                    description: format!("{merchant} bill {bill}"),
                    notice_id: String::new(),
                    one_off_approval_id: String::new(),
                },
                &self.merchant_token(merchant)?,
            )?),
        )
        .await?
        .deduction
        .ok_or_else(|| "CreateDeduction answered without a deduction".to_owned())
    }
}

/// Seeds the demo through the API at `addr` unless the database holds it already; returns
/// whether it seeded.
pub async fn seed(addr: SocketAddr, minter: &impl Minter) -> Result<bool, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting to the server: {e}"))?;
    let api = Api {
        channel: channel.clone(),
        minter,
    };
    let operator = minter.token("operator", "demo-operator", None)?;
    let found = call(
        "ListMandates",
        MandateServiceClient::new(channel.clone()).list_mandates(authed(
            pb::ListMandatesRequest {
                merchant_contract_id: MARKER.into(),
                ..Default::default()
            },
            &operator,
        )?),
    )
    .await?;
    if !found.mandates.is_empty() {
        return Ok(false);
    }

    use pb::Purpose::{Subscription, Utility};
    let water_alice = api
        .mandate("water-co", "payer-alice", MARKER, Utility, "WATER-0042")
        .await?;
    let water_bob = api
        .mandate(
            "water-co",
            "payer-bob",
            "demo-water-bob",
            Utility,
            "WATER-0077",
        )
        .await?;
    let loan_bob = api
        .mandate(
            "loan-co",
            "payer-bob",
            "demo-loan-bob",
            pb::Purpose::LoanRepayment,
            "LOAN-88-311",
        )
        .await?;
    let stream_chen = api
        .mandate(
            "stream-co",
            "payer-chen",
            "demo-stream-chen",
            Subscription,
            "STREAM-PLUS",
        )
        .await?;
    let mut wallets = WalletServiceClient::new(channel.clone());
    for payer in ["payer-alice", "payer-bob", "payer-chen"] {
        call(
            "CreditWallet",
            wallets.credit_wallet(authed(
                pb::CreditWalletRequest {
                    request_id: format!("demo-topup-{payer}"),
                    payer_id: payer.into(),
                    amount: cny("3000.00"),
                    reason: "demo top-up".into(),
                },
                &operator,
            )?),
        )
        .await?;
    }

    // Collections.
    let november = api
        .collect(
            "water-co",
            &water_alice,
            "demo-w-1",
            "120.50",
            "BILL-2026-11",
            Utility,
        )
        .await?;
    api.collect(
        "water-co",
        &water_bob,
        "demo-w-2",
        "98.20",
        "BILL-2026-11-B",
        Utility,
    )
    .await?;
    api.collect(
        "loan-co",
        &loan_bob,
        "demo-l-1",
        "450.00",
        "INST-07",
        pb::Purpose::LoanRepayment,
    )
    .await?;
    api.collect(
        "stream-co",
        &stream_chen,
        "demo-s-1",
        "25.00",
        "SUB-2026-12",
        Subscription,
    )
    .await?;

    // The water bill was collected by mistake and refunded; the merchant then tries to take
    // it back, under the same bill and under a new one.
    call(
        "RefundDeduction",
        DeductionServiceClient::new(channel.clone()).refund_deduction(authed(
            pb::RefundDeductionRequest {
                request_id: "demo-refund-1".into(),
                deduction_id: november.deduction_id.clone(),
                amount: cny("120.50"),
                reason: "billed twice in November".into(),
            },
            &api.merchant_token("water-co")?,
        )?),
    )
    .await?;
    api.collect(
        "water-co",
        &water_alice,
        "demo-w-3",
        "120.50",
        "bill-2026-11",
        Utility,
    )
    .await?;
    api.collect(
        "water-co",
        &water_alice,
        "demo-w-4",
        "120.50",
        "BILL-2026-11-ADJ",
        Utility,
    )
    .await?;
    // Above the per-debit limit.
    api.collect(
        "stream-co",
        &stream_chen,
        "demo-s-2",
        "900.00",
        "SUB-ANNUAL",
        Subscription,
    )
    .await?;

    // Clawback authority asked for in a new mandate: refused, and recorded.
    let refused = MandateServiceClient::new(channel.clone())
        .create_mandate(authed(
            pb::CreateMandateRequest {
                merchant_contract_id: "demo-recovery".into(),
                payer_id: "payer-chen".into(),
                terms: Some(pb::MandateTerms {
                    display_account: "STREAM-PLUS".into(),
                    purposes: vec![pb::Purpose::RefundRecovery as i32],
                    currency_code: "CNY".into(),
                    amount_type: pb::AmountType::Maximum as i32,
                    per_debit_limit: cny("500.00"),
                    ..Default::default()
                }),
            },
            &api.merchant_token("stream-co")?,
        )?)
        .await;
    if refused.is_ok() {
        return Err("a mandate naming REFUND_RECOVERY was accepted".into());
    }

    // The payer pauses a mandate, giving a reason.
    call(
        "PauseMandate",
        MandateServiceClient::new(channel.clone()).pause_mandate(authed(
            pb::PauseMandateRequest {
                mandate_id: stream_chen.clone(),
                reason: "travelling until January".into(),
                request_id: "demo-pause-1".into(),
            },
            &minter.token("payer", "payer-chen", None)?,
        )?),
    )
    .await?;

    // The bank's statement of today names a charge we never made: a long.
    let now = jiff::Timestamp::now();
    let day = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    call(
        "ImportStatement",
        SettlementServiceClient::new(channel).import_statement(authed(
            pb::ImportStatementRequest {
                statement_day: day.to_string(),
                csv: format!(
                    "charge_id,amount,currency,status,time\ndemo-bank-charge-1,88.00,CNY,SUCCEEDED,{now}\n"
                ),
            },
            &operator,
        )?),
    )
    .await?;
    Ok(true)
}
