//! The bank simulator a test's card sources go to, and a server wired to it.

use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{Backend, TestApp, TestDatabase, bank_pb, default_keys, spawn_with_bank};

pub type BankControl = bank_pb::bank_simulator_service_client::BankSimulatorServiceClient<Channel>;

/// A bank simulator on 127.0.0.1:0, stopped when dropped.
pub struct TestBank {
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestBank {
    pub async fn start() -> Self {
        let sim = withholding::bank_sim::BankSim::bind("127.0.0.1:0".parse().unwrap())
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
