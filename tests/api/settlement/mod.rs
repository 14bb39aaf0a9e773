//! Daily settlement and bank reconciliation (DESIGN §6b, §9.9): summaries across a cut-off,
//! who may read them, the bank's statement matched against our card charges, imports that
//! change nothing the second time, each resolution moving money once, and the `settle` and
//! `reconcile` commands.

mod cli;
mod reconcile;
mod resolve;
mod summary;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::harness::*;

pub type SettlementClient =
    pb::settlement_service_client::SettlementServiceClient<InterceptedService<Channel, Bearer>>;

/// A SettlementService client of the app, with `token`.
pub async fn settlement_as(app: &TestApp, token: String) -> SettlementClient {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    pb::settlement_service_client::SettlementServiceClient::with_interceptor(
        channel,
        Bearer(Some(token)),
    )
}

/// The summary request of `from..=to` for `merchant` ("" for the caller's scope).
pub fn summary(from: &str, to: &str, merchant: &str) -> pb::GetSettlementSummaryRequest {
    pb::GetSettlementSummaryRequest {
        from_day: from.into(),
        to_day: to.into(),
        merchant_id: merchant.into(),
    }
}

/// A row as (merchant, day, source, collected, refunded, pending, failed, net), each tally as
/// "count/amount".
pub type RowView = (
    String,
    String,
    &'static str,
    String,
    String,
    String,
    String,
    String,
);

pub fn view(row: &pb::SettlementRow) -> RowView {
    let t = |t: &Option<pb::SettlementTally>| {
        let t = t.as_ref().unwrap();
        format!("{}/{}", t.count, t.amount)
    };
    (
        row.merchant_id.clone(),
        row.business_day.clone(),
        match row.source() {
            pb::SettlementSource::Wallet => "WALLET",
            pb::SettlementSource::BankCard => "BANK_CARD",
            pb::SettlementSource::Unspecified => "UNSPECIFIED",
        },
        t(&row.collected),
        t(&row.refunded),
        t(&row.pending),
        t(&row.failed),
        row.net.clone(),
    )
}

/// "12.30" → 1230.
pub fn minor(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').unwrap_or((amount, "00"));
    let sign = if units.starts_with('-') { -1 } else { 1 };
    sign * (units.trim_start_matches('-').parse::<i64>().unwrap() * 100
        + cents.parse::<i64>().unwrap())
}
