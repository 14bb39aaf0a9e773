//! The real binary killed (`kill -9`) with a card charge in flight (DESIGN §9.3): a restart asks
//! the bank at once about charges left open, and a crash between the bank's answer and its
//! record is resolved from the bank's books, with one charge, every chain intact and the ledger
//! balanced.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use withholding::pb::deduction_service_client::DeductionServiceClient;
use withholding::pb::mandate_service_client::MandateServiceClient;
use withholding::pb::wallet_service_client::WalletServiceClient;

use crate::both_backends;
use crate::harness::*;

/// The real binary serving on 127.0.0.1:0; killed (SIGKILL) when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    async fn start(database_url: &str, data: &Path, bank: &str, failpoint: Option<&str>) -> Self {
        Self::start_with(database_url, data, bank, failpoint, "1").await
    }

    /// As `start`, with the resolver's pass interval in seconds.
    async fn start_with(
        database_url: &str,
        data: &Path,
        bank: &str,
        failpoint: Option<&str>,
        resolver_interval_s: &str,
    ) -> Self {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .arg("--data-dir")
            .arg(data)
            .args(["--bank-gateway-url", bank, "--bank-deadline-ms", "500"])
            .args(["--resolver-interval-s", resolver_interval_s])
            .env("RUST_LOG", "warn")
            .env_remove("WITHHOLDING_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(name) = failpoint {
            command.env("WITHHOLDING_FAILPOINT", name);
        }
        let mut child = command.spawn().expect("start withholding serve");
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
            stderr,
        };
        let line = server
            .wait_for("withholding listening on ", Duration::from_secs(30))
            .await;
        server.addr = line
            .strip_prefix("withholding listening on ")
            .unwrap()
            .to_owned();
        server
    }

    /// Reads stderr until a line containing `needle`; panics after `within` or at EOF.
    async fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = String::new();
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(line)) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Ok(None) => panic!("server exited before {needle:?}:\n{seen}"),
                Err(_) => panic!("no {needle:?} within {within:?}:\n{seen}"),
            }
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server")
    }

    /// `kill -9`, and reap it.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Clients {
    mandates_merchant: Client,
    mandates_payer: Client,
    merchant: DeductionClient,
    operator: WalletClient,
}

struct Tokens {
    merchant: String,
    payer: String,
    operator: String,
}

async fn clients(server: &Server, tokens: &Tokens) -> Clients {
    let channel = server.channel().await;
    Clients {
        mandates_merchant: MandateServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.merchant.clone())),
        ),
        mandates_payer: MandateServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.payer.clone())),
        ),
        merchant: DeductionServiceClient::with_interceptor(
            channel.clone(),
            Bearer(Some(tokens.merchant.clone())),
        ),
        operator: WalletServiceClient::with_interceptor(
            channel,
            Bearer(Some(tokens.operator.clone())),
        ),
    }
}

async fn confirmed(
    c: &mut Clients,
    contract: &str,
    sources: Vec<pb::FundingSource>,
) -> pb::Mandate {
    let created = c
        .mandates_merchant
        .create_mandate(create_request(contract, "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let mut confirm = confirm_request(&created);
    confirm.funding_sources = sources;
    c.mandates_payer
        .confirm_mandate(confirm)
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// A restart asks the bank at once about a charge left without an answer, instead of waiting
/// out its backoff (5 s, doubling) or the resolver's next pass (an hour here).
async fn a_restart_asks_at_once_about_charges_left_open(backend: Backend) {
    let bank = TestBank::start().await;
    bank.program(bank_pb::SetCardRequest {
        card_token: "tok_slow".into(),
        balance_minor: 100_000,
        timeout_after_apply_next: 1,
        ..Default::default()
    })
    .await;
    let db = TestDatabase::new(backend).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&db.url, data.path(), &bank.url(), None, "3600").await;
    let tokens = Tokens {
        merchant: mint_token(data.path(), &["--role", "merchant", "--merchant-id", "m-1"]),
        payer: mint_token(data.path(), &["--role", "payer", "--sub", "p-1"]),
        operator: mint_token(data.path(), &["--role", "operator"]),
    };
    let mut c = clients(&server, &tokens).await;
    let mandate = confirmed(&mut c, "c-slow", vec![card_funding("tok_slow", None)]).await;
    let pending = new_deduction(
        &mut c.merchant,
        collect("r-slow", &mandate.mandate_id, "250.00", "b-slow"),
    )
    .await;
    assert_eq!(
        deduction_status(&pending),
        pb::DeductionStatus::PendingConfirmation,
        "{pending:?}"
    );
    server.kill();
    drop(c);

    let server = Server::start_with(&db.url, data.path(), &bank.url(), None, "3600").await;
    let c = clients(&server, &tokens).await;
    let merchant = c.merchant.clone();
    let resolved = eventually(
        "the open charge to be asked about at start-up",
        Duration::from_secs(3),
        || {
            let mut merchant = merchant.clone();
            let id = pending.deduction_id.clone();
            async move {
                let d = get_deduction(&mut merchant, &id).await;
                (deduction_status(&d) != pb::DeductionStatus::PendingConfirmation).then_some(d)
            }
        },
    )
    .await;
    assert_eq!(
        deduction_status(&resolved),
        pb::DeductionStatus::Succeeded,
        "{resolved:?}"
    );
    assert_eq!(bank.charges().await.len(), 1, "asked, never charged again");
}

async fn crash_between_bank_answer_and_record(backend: Backend) {
    let bank = TestBank::start().await;
    bank.card("tok_crash", 100_000).await;
    let db = TestDatabase::new(backend).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&db.url, data.path(), &bank.url(), Some("before-settle")).await;
    let tokens = Tokens {
        merchant: mint_token(data.path(), &["--role", "merchant", "--merchant-id", "m-1"]),
        payer: mint_token(data.path(), &["--role", "payer", "--sub", "p-1"]),
        operator: mint_token(data.path(), &["--role", "operator"]),
    };
    let mut c = clients(&server, &tokens).await;

    // An approval answered before the crash (the wallet pays: no failpoint on that path).
    c.operator
        .credit_wallet(pb::CreditWalletRequest {
            request_id: "credit-1".into(),
            payer_id: "p-1".into(),
            amount: money("100.00"),
            reason: "top-up".into(),
        })
        .await
        .unwrap();
    let mw = confirmed(&mut c, "c-wallet", vec![wallet_funding(None)]).await;
    let answered = new_deduction(
        &mut c.merchant,
        collect("r-w", &mw.mandate_id, "60.00", "b-w"),
    )
    .await;
    assert_eq!(
        deduction_status(&answered),
        pb::DeductionStatus::Succeeded,
        "{answered:?}"
    );

    // A card-paid one: the bank charges, then the server stops before recording the answer.
    let mc = confirmed(&mut c, "c-card", vec![card_funding("tok_crash", None)]).await;
    let card_request = collect("r-c", &mc.mandate_id, "250.00", "b-c");
    let mut request = tonic::Request::new(card_request.clone());
    request.set_timeout(Duration::from_secs(1));
    let err = c.merchant.create_deduction(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    server
        .wait_for("failpoint reached", Duration::from_secs(5))
        .await;
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_crash", 25_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );
    let bank_charge_id = charges[0].charge_id.clone();

    server.kill();
    drop(c);
    let mut server = Server::start(&db.url, data.path(), &bank.url(), None).await;
    let mut c = clients(&server, &tokens).await;

    // The resolver finds the charge left in flight and asks the bank: SUCCEEDED.
    let merchant = c.merchant.clone();
    let found = eventually(
        "the crashed deduction to be resolved",
        Duration::from_secs(15),
        || {
            let mut merchant = merchant.clone();
            let mandate_id = mc.mandate_id.clone();
            async move {
                let all = list_deductions(&mut merchant, &mandate_id).await;
                assert_eq!(all.len(), 1, "{all:?}");
                let d = all.into_iter().next().unwrap();
                (deduction_status(&d) != pb::DeductionStatus::Processing).then_some(d)
            }
        },
    )
    .await;
    let d = get_deduction(&mut c.merchant, &found.deduction_id).await;
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert_eq!(d.request_id, "r-c");
    assert_eq!(d.paid_by_source_index, Some(0));
    assert_eq!(attempts(&d), [(0, "BANK_CARD", "SUCCEEDED", "")]);
    assert_eq!(charge_ids(&d), [bank_charge_id.as_str()]);
    // The retry is a replay; still one charge.
    let again = replayed_deduction(&mut c.merchant, card_request).await;
    assert_eq!(again, d);
    let charges = bank.charges().await;
    assert_eq!(
        charges.iter().map(bank_row).collect::<Vec<_>>(),
        [("tok_crash", 25_000, bank_pb::ChargeStatus::Succeeded, "", 0)]
    );

    // The approval answered before the kill is still there.
    let durable = get_deduction(&mut c.merchant, &answered.deduction_id).await;
    assert_eq!(durable, answered);
    let balance = c
        .operator
        .get_wallet_balance(pb::GetWalletBalanceRequest {
            payer_id: "p-1".into(),
            currency_code: "CNY".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
        .amount;
    assert_eq!(balance, "40.00");

    server.kill();
    drop(c);

    // The database on its own: chains verify, events are there, the ledger balances.
    let store = withholding::storage::open(&db.url).await.unwrap();
    let ids = store.mandates.audit_chain_ids().await.unwrap();
    assert!(
        ids.contains(&format!("mandate:{}", mc.mandate_id)),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("mandate:{}", mw.mandate_id)),
        "{ids:?}"
    );
    for id in &ids {
        let chain = store.mandates.audit_chain(id).await.unwrap();
        let head = chain.head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
        withholding::domain::audit::verify_chain(id, &chain.events, head)
            .unwrap_or_else(|broken| panic!("{broken}"));
    }
    let actions = |chain: withholding::storage::StoredChain, deduction_id: &str| -> Vec<String> {
        chain
            .events
            .into_iter()
            .filter(|e| e.draft.deduction_id.as_deref() == Some(deduction_id))
            .map(|e| e.draft.action)
            .collect()
    };
    let card_chain = store
        .mandates
        .audit_chain(&format!("mandate:{}", mc.mandate_id))
        .await
        .unwrap();
    assert_eq!(
        actions(card_chain, &d.deduction_id),
        [
            "DEDUCTION_APPROVED",
            "CARD_CHARGE_STARTED",
            "FUNDING_ATTEMPT",
            "DEDUCTION_SUCCEEDED"
        ]
    );
    let wallet_chain = store
        .mandates
        .audit_chain(&format!("mandate:{}", mw.mandate_id))
        .await
        .unwrap();
    assert_eq!(
        actions(wallet_chain, &answered.deduction_id),
        [
            "DEDUCTION_APPROVED",
            "FUNDING_ATTEMPT",
            "DEDUCTION_SUCCEEDED"
        ]
    );
    assert_ledger_balanced(store.deductions.ledger_totals().await.unwrap());
}

both_backends!(
    a_restart_asks_at_once_about_charges_left_open,
    crash_between_bank_answer_and_record,
);
