//! The bank simulator a test's card sources go to, and a server wired to it.

use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{Backend, TestApp, TestDatabase, bank_pb, default_keys, pb, spawn_with_bank};

/// The bank deadline for tests whose bank hangs: short, so a hang is a timeout quickly.
pub const DEADLINE: Duration = Duration::from_millis(300);
/// How long a programmed hang lasts: longer than `DEADLINE`.
pub const HANG_MS: u32 = 1_000;
/// Deadline for tests whose bank answers promptly.
pub const PROMPT: Duration = Duration::from_secs(2);

pub type BankControl = bank_pb::bank_simulator_service_client::BankSimulatorServiceClient<Channel>;
pub type Gateway = bank_pb::bank_gateway_service_client::BankGatewayServiceClient<Channel>;

/// A bank simulator on 127.0.0.1:0, stopped when dropped.
pub struct TestBank {
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestBank {
    pub async fn start() -> Self {
        let sim = withholding_bank_sim::BankSim::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind bank-sim");
        let addr = sim.local_addr();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            sim.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("bank-sim");
        });
        Self {
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn control(&self) -> BankControl {
        BankControl::connect(self.url())
            .await
            .expect("connect bank-sim")
    }

    /// Gives `token` a balance (minor units) and no special behaviour.
    pub async fn card(&self, token: &str, balance_minor: i64) {
        self.program(bank_pb::SetCardRequest {
            card_token: token.into(),
            balance_minor,
            ..Default::default()
        })
        .await;
    }

    pub async fn program(&self, card: bank_pb::SetCardRequest) {
        self.control().await.set_card(card).await.expect("set card");
    }

    /// The gateway the server charges through, as a client of the bank would use it.
    pub async fn gateway(&self) -> Gateway {
        Gateway::connect(self.url())
            .await
            .expect("connect bank gateway")
    }

    /// The bank's answer about one charge.
    pub async fn query(&self, charge_id: &str) -> bank_pb::QueryChargeResponse {
        self.gateway()
            .await
            .query_charge(bank_pb::QueryChargeRequest {
                charge_id: charge_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every charge the bank recorded.
    pub async fn charges(&self) -> Vec<bank_pb::SimulatedCharge> {
        self.control()
            .await
            .list_charges(bank_pb::ListChargesRequest {})
            .await
            .expect("list charges")
            .into_inner()
            .charges
    }
}

impl Drop for TestBank {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A server on a fresh database whose cards go to `bank` with `deadline` per bank call.
pub async fn spawn_app_with_bank(backend: Backend, bank: &TestBank, deadline: Duration) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_with_bank(backend, db, default_keys(), Some((bank.url(), deadline))).await
}

/// (card, amount, status, decline code, refunded) of a charge as the bank recorded it.
pub fn bank_row(c: &bank_pb::SimulatedCharge) -> (&str, i64, bank_pb::ChargeStatus, &str, i64) {
    (
        c.card_token.as_str(),
        c.amount_minor,
        c.status(),
        c.decline_code.as_str(),
        c.refunded_minor,
    )
}

/// (source index, kind, outcome, reason) of every funding attempt, in order.
pub fn attempts(d: &pb::Deduction) -> Vec<(u32, &str, &str, &str)> {
    d.funding_attempts
        .iter()
        .map(|a| {
            (
                a.source_index,
                a.source_kind.as_str(),
                a.outcome.as_str(),
                a.reason_code.as_str(),
            )
        })
        .collect()
}

/// The charge ids of the attempts that went to the bank, in order; checks that exactly those
/// attempts (cards not skipped) carry one.
pub fn charge_ids(d: &pb::Deduction) -> Vec<String> {
    for a in &d.funding_attempts {
        let to_bank = a.source_kind == "BANK_CARD" && a.outcome != "SKIPPED";
        assert_eq!(!a.charge_id.is_empty(), to_bank, "{a:?}");
    }
    d.funding_attempts
        .iter()
        .filter(|a| !a.charge_id.is_empty())
        .map(|a| a.charge_id.clone())
        .collect()
}
