//! The client side of `withholding.bank.v1.BankGatewayService`. Every call has an explicit
//! deadline, and anything but a definite answer — a timeout, an unavailable bank, a charge still
//! PROCESSING — is an *unknown* outcome, never a refusal: the bank may have taken the money.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::domain::deduction::{BankOutcome, CardCharge};
use crate::pb::bank as bank_pb;
use crate::pb::bank::bank_gateway_service_client::BankGatewayServiceClient;

/// How long to wait for a bank to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct BankClient {
    client: BankGatewayServiceClient<Channel>,
    deadline: Duration,
}

/// A refund's outcome at the bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded,
    Declined(String),
    /// No definite answer; retrying with the same refund id is safe.
    Unknown,
}

impl BankClient {
    /// A client for the gateway at `url`, which must be `http://HOST:PORT`; anything else is
    /// refused here, at start-up, with the reason: a URL the client cannot use would make
    /// every card charge an unknown outcome. Connects lazily, so the service starts even when
    /// the bank is down.
    pub fn new(url: &str, deadline: Duration) -> Result<Self, String> {
        let endpoint = Endpoint::from(gateway_uri(url)?);
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(deadline)
            .connect_lazy();
        Ok(Self {
            client: BankGatewayServiceClient::new(channel),
            deadline,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        request
    }

    /// Charges the card; the charge id makes retries safe.
    pub async fn charge(&self, charge: &CardCharge) -> BankOutcome {
        let request = self.request(bank_pb::ChargeRequest {
            charge_id: charge.id.clone(),
            card_token: charge.card_token.clone(),
            currency_code: charge.amount.currency().code().to_owned(),
            amount_minor: charge.amount.minor(),
            merchant_id: charge.merchant_id.to_string(),
        });
        match self.client.clone().charge(request).await {
            Ok(response) => {
                let bank_pb::ChargeResponse {
                    status,
                    decline_code,
                } = response.into_inner();
                outcome(status, decline_code)
            }
            Err(status) => unknown_unless_refused(&charge.id, &status),
        }
    }

    /// Asks what became of a charge.
    pub async fn query(&self, charge_id: &str) -> BankOutcome {
        let request = self.request(bank_pb::QueryChargeRequest {
            charge_id: charge_id.to_owned(),
        });
        match self.client.clone().query_charge(request).await {
            Ok(response) => {
                let bank_pb::QueryChargeResponse {
                    status,
                    decline_code,
                    amount_minor: _,
                    refunded_minor: _,
                } = response.into_inner();
                outcome(status, decline_code)
            }
            Err(status) => unknown_unless_refused(charge_id, &status),
        }
    }

    /// Refunds (part of) a succeeded charge; the refund id makes retries safe.
    pub async fn refund(
        &self,
        refund_id: &str,
        charge_id: &str,
        amount_minor: i64,
    ) -> RefundOutcome {
        let request = self.request(bank_pb::RefundChargeRequest {
            refund_id: refund_id.to_owned(),
            charge_id: charge_id.to_owned(),
            amount_minor,
        });
        match self.client.clone().refund_charge(request).await {
            Ok(response) => {
                let bank_pb::RefundChargeResponse {
                    status,
                    decline_code,
                } = response.into_inner();
                match bank_pb::RefundStatus::try_from(status) {
                    Ok(bank_pb::RefundStatus::Succeeded) => RefundOutcome::Succeeded,
                    Ok(bank_pb::RefundStatus::Declined) => RefundOutcome::Declined(decline_code),
                    Ok(bank_pb::RefundStatus::Unspecified) | Err(_) => RefundOutcome::Unknown,
                }
            }
            Err(status) => {
                tracing::warn!(refund_id, code = ?status.code(), "bank refund answer unknown");
                RefundOutcome::Unknown
            }
        }
    }
}

fn outcome(status: i32, decline_code: String) -> BankOutcome {
    match bank_pb::ChargeStatus::try_from(status) {
        Ok(bank_pb::ChargeStatus::Succeeded) => BankOutcome::Succeeded,
        Ok(bank_pb::ChargeStatus::Declined) if !decline_code.is_empty() => {
            BankOutcome::Declined(decline_code)
        }
        Ok(bank_pb::ChargeStatus::Declined) => BankOutcome::Declined("DECLINED".into()),
        Ok(bank_pb::ChargeStatus::NotFound) => BankOutcome::NotFound,
        // PROCESSING, or a status this client does not know: not a definite answer.
        Ok(bank_pb::ChargeStatus::Processing | bank_pb::ChargeStatus::Unspecified) | Err(_) => {
            BankOutcome::Unknown
        }
    }
}

/// A bank that refuses the request itself (bad arguments, no permission) has definitely not
/// charged; every other failure may hide a charge.
/// `url` as a URI this client can connect to: scheme `http`, a host and an explicit port, and
/// nothing the client would ignore (a path, a query, user info).
fn gateway_uri(url: &str) -> Result<http::Uri, String> {
    let refuse = |why: &str| format!("bank gateway URL {url:?} {why}; expected http://HOST:PORT");
    let uri: http::Uri = url
        .parse()
        .map_err(|e| refuse(&format!("is not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http") => {}
        // Without TLS support tonic would speak plain HTTP/2 to the TLS port: every charge
        // would fail with an unknown outcome.
        Some("https") => {
            return Err(refuse(
                "uses https, which this build cannot speak (it has no TLS); reach the gateway \
                 through a TLS-terminating proxy at an http:// address",
            ));
        }
        Some(other) => return Err(refuse(&format!("has the scheme {other:?}, not http"))),
        None => return Err(refuse("has no scheme")),
    }
    let authority = uri.authority().ok_or_else(|| refuse("has no host"))?;
    if authority.host().is_empty() {
        return Err(refuse("has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(refuse(
            "has user info, which the gateway contract does not use",
        ));
    }
    match authority.port_u16() {
        None => return Err(refuse("has no port")),
        Some(0) => return Err(refuse("has port 0")),
        Some(_) => {}
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(refuse("has a path or query, which gRPC calls would ignore"));
    }
    Ok(uri)
}

fn unknown_unless_refused(charge_id: &str, status: &tonic::Status) -> BankOutcome {
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition => {
            tracing::warn!(charge_id, code = ?status.code(), "bank refused the charge request");
            BankOutcome::Declined(format!("BANK_{:?}", status.code()).to_uppercase())
        }
        code => {
            tracing::warn!(charge_id, ?code, "bank outcome unknown");
            BankOutcome::Unknown
        }
    }
}
