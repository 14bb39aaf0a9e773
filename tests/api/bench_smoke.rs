//! `withholding-bench seed` and `bench` as an operator runs them, against a real server:
//! seeded mandates are active and funded (history debits succeed), bench's debits succeed and
//! it reports both phases and their ratio; card funding charges one card per payer in a bank
//! simulator; and on PostgreSQL the bare cap-checked transaction runs as a third phase in tables
//! that are gone afterwards.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Parser;
use withholding_bench::{Cli, Console};

use withholding::pb::{self, bank as bank_pb};

use crate::harness::{
    AUDIENCE, Backend, ISSUER, SECRET, TestApp, TestBank, TestDatabase, default_keys, spawn_app,
    spawn_app_with_bank, spawn_on,
};

/// What a run printed (report, progress and its error, as the binary prints them), and
/// whether it succeeded.
struct Output {
    success: bool,
    text: String,
}

/// Runs `withholding-bench ARGS` as its binary does (its flags, a runtime of its own), from
/// its library in this process, off this runtime's threads: the server under test shares them.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let cli =
            match Cli::try_parse_from(["withholding-bench".to_owned()].into_iter().chain(args)) {
                Ok(cli) => cli,
                // What clap prints before it exits with 2.
                Err(e) => {
                    return Output {
                        success: false,
                        text: e.to_string(),
                    };
                }
            };
        let console = Console::buffer();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let result = runtime.block_on(withholding_bench::run(cli.command, &console));
        let mut text = console.text();
        if let Err(e) = &result {
            text.push_str(&format!("error: {e}\n"));
        }
        Output {
            success: result.is_ok(),
            text,
        }
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    output.text.clone()
}

/// Runs the binary and returns its output, failing the test if it failed.
async fn run_ok(args: Vec<String>) -> String {
    let out = run(args).await;
    let report = text(&out);
    assert!(out.success, "{report}");
    report
}

/// Runs the binary, expecting it to fail; returns its output.
async fn run_failing(args: &[&str]) -> String {
    let out = run(args.iter().map(|a| (*a).to_owned()).collect()).await;
    assert!(!out.success, "{}", text(&out));
    text(&out)
}

/// An operator's folder (the key file, the mandates file) and the flags every call takes.
struct Operator {
    dir: tempfile::TempDir,
    target: String,
}

impl Operator {
    fn new(app: &TestApp) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.hex"), hex::encode(SECRET)).unwrap();
        Self {
            dir,
            target: format!("http://{}", app.addr),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// `command` with the target, key and a small shape, then `extra`.
    fn args(&self, command: &str, extra: &[&str]) -> Vec<String> {
        let key = self.path("key.hex");
        let mut args: Vec<String> = [
            command,
            "--target",
            &self.target,
            "--jwt-hs256-key-file",
            &key,
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--concurrency",
            "4",
            "--connections",
            "2",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// `seed` of 3 mandates for 2 payers with `history` debits, plus `extra`.
    async fn seed(&self, history: u32, extra: &[&str]) -> String {
        let (history, out) = (history.to_string(), self.path("mandates.txt"));
        let mut args = vec![
            "--mandates",
            "3",
            "--payers",
            "2",
            "--history",
            &history,
            "--out",
            &out,
        ];
        args.extend(extra);
        run_ok(self.args("seed", &args)).await
    }

    /// A short `bench` over the seeded mandates: at most 40 calls per phase, plus `extra`.
    async fn bench(&self, extra: &[&str]) -> String {
        let mandates = self.path("mandates.txt");
        let mut args = vec![
            "--mandates-file",
            &mandates,
            "--duration-s",
            "3",
            "--warmup-s",
            "0",
            "--max-requests",
            "40",
        ];
        args.extend(extra);
        run_ok(self.args("bench", &args)).await
    }
}

/// The `  LABEL  COUNT` lines under `heading` (e.g. `history outcomes:`), split on whitespace.
fn outcome_lines<'a>(report: &'a str, heading: &str) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(|line| line.split_whitespace().collect())
        .collect()
}

/// The report of the phase whose `== ` heading starts with `title`, up to the next blank line.
fn phase<'a>(report: &'a str, title: &str) -> &'a str {
    let start = report
        .find(&format!("== {title}"))
        .unwrap_or_else(|| panic!("no phase {title:?} in:\n{report}"));
    let rest = &report[start..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

/// `completed N in …` of one phase.
fn completed(phase: &str) -> u64 {
    phase
        .lines()
        .find_map(|line| line.strip_prefix("completed "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no completed count in:\n{phase}"))
}

async fn all_deductions(app: &TestApp) -> Vec<pb::Deduction> {
    app.deductions_as(app.merchant_token("m-bench"))
        .await
        .list_deductions(pb::ListDeductionsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deductions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_bench() {
    let app = spawn_app(Backend::Sqlite).await;
    let operator = Operator::new(&app);

    let seeded = operator.seed(5, &[]).await;
    // Every history debit succeeded: one outcome line, SUCCEEDED × 5.
    assert_eq!(
        outcome_lines(&seeded, "history outcomes:"),
        [["SUCCEEDED", "5"]],
        "{seeded}"
    );
    let ids = std::fs::read_to_string(operator.path("mandates.txt")).unwrap();
    assert_eq!(ids.lines().count(), 3, "{ids}");
    assert!(ids.lines().all(|id| id.starts_with("mdt-")), "{ids}");

    let report = operator.bench(&[]).await;
    let debits = phase(
        &report,
        "DeductionService/CreateDeduction (spread over 3 mandates)",
    );
    assert!(debits.contains("  SUCCEEDED "), "{report}");
    assert!(debits.contains("errors by gRPC code: none"), "{report}");
    assert!(report.contains("  SERVING "), "{report}");
    assert!(
        report.contains("ratio CreateDeduction / ceiling: "),
        "{report}"
    );
    assert!(!report.contains("bare"), "{report}");
    // The request cap holds: at most 40 debits besides the 5 of the history.
    let listed = all_deductions(&app).await;
    assert!(
        listed.len() > 5 && listed.len() <= 45,
        "{} deductions",
        listed.len()
    );
    assert!(
        listed
            .iter()
            .all(|d| d.status == pb::DeductionStatus::Succeeded as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_funding_charges_each_payers_card_in_the_bank_simulator() {
    let bank = TestBank::start().await;
    let app = spawn_app_with_bank(Backend::Sqlite, &bank, Duration::from_secs(5)).await;
    let operator = Operator::new(&app);
    let bank_url = bank.url();

    let seeded = operator
        .seed(
            4,
            &[
                "--funding",
                "card",
                "--bank-sim-target",
                &bank_url,
                "--card-balance",
                "5000.00",
            ],
        )
        .await;
    assert_eq!(
        outcome_lines(&seeded, "history outcomes:"),
        [["SUCCEEDED", "4"]],
        "{seeded}"
    );
    assert!(!seeded.contains("credit wallets"), "{seeded}");

    let report = operator.bench(&[]).await;
    let debits = phase(&report, "DeductionService/CreateDeduction");
    assert!(debits.contains("  SUCCEEDED "), "{report}");
    assert!(debits.contains("errors by gRPC code: none"), "{report}");

    // Every debit the server made succeeded, and each is exactly one charge the bank took, on
    // one of the two payers' cards.
    let listed = all_deductions(&app).await;
    assert!(
        listed.len() > 4 && listed.len() <= 44,
        "{} deductions",
        listed.len()
    );
    assert!(
        listed
            .iter()
            .all(|d| d.status == pb::DeductionStatus::Succeeded as i32),
        "{listed:?}"
    );
    let charges = bank.charges().await;
    assert_eq!(charges.len(), listed.len());
    assert!(
        charges
            .iter()
            .all(|c| c.status == bank_pb::ChargeStatus::Succeeded as i32 && c.amount_minor == 100),
        "{charges:?}"
    );
    let cards: BTreeSet<&str> = charges.iter().map(|c| c.card_token.as_str()).collect();
    assert_eq!(
        cards,
        BTreeSet::from(["tok-bench-payer-0", "tok-bench-payer-1"])
    );
    let charged: BTreeSet<&str> = charges.iter().map(|c| c.charge_id.as_str()).collect();
    let paid: BTreeSet<&str> = listed
        .iter()
        .map(|d| d.funding_attempts.last().unwrap().charge_id.as_str())
        .collect();
    assert_eq!(charged, paid);
    // No wallet was credited.
    let balance = app.balance("bench-payer-0").await;
    assert!(balance.chars().all(|c| c == '0' || c == '.'), "{balance}");
}

#[tokio::test]
async fn funding_flags_are_checked_together() {
    for (args, expected) in [
        (
            &["seed", "--mandates", "1", "--funding", "card"][..],
            "--funding card needs --bank-sim-target",
        ),
        (
            &[
                "seed",
                "--mandates",
                "1",
                "--bank-sim-target",
                "http://127.0.0.1:1",
            ][..],
            "--bank-sim-target is only for --funding card",
        ),
        (
            &[
                "seed",
                "--mandates",
                "1",
                "--funding",
                "card",
                "--bank-sim-target",
                "http://127.0.0.1:1",
                "--wallet-credit",
                "10.00",
            ][..],
            "--wallet-credit is only for --funding wallet",
        ),
        (
            &["seed", "--mandates", "1", "--funding", "paypal"][..],
            "invalid value 'paypal' for '--funding <FUNDING>'",
        ),
    ] {
        let output = run_failing(args).await;
        assert!(output.contains(expected), "{args:?}: {output}");
    }
}

#[tokio::test]
async fn bare_phase_refuses_sqlite_before_doing_anything() {
    let output = run_failing(&[
        "bench",
        "--mandates-file",
        "/nonexistent/mandates.txt",
        "--bare-database-url",
        "sqlite://./w.db",
    ])
    .await;
    assert!(
        output.contains("--bare-database-url: SQLite is not supported"),
        "{output}"
    );
}

/// PostgreSQL only (the target it measures is PostgreSQL's), so it needs
/// `WITHHOLDING_TEST_PG_URL` like every other PostgreSQL test here (`scripts/test` sets it).
mod bare_transaction {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDatabase::new(Backend::Postgres).await;
        let url = db.url.clone();
        let app = spawn_on(Backend::Postgres, db, default_keys()).await;
        let operator = Operator::new(&app);
        operator.seed(0, &[]).await;

        let report = operator
            .bench(&["--bare-database-url", &url, "--bare-pool-size", "2"])
            .await;
        let bare = phase(&report, "bare cap-checked transaction on PostgreSQL");
        assert!(bare.contains("(spread over 3 rows, pool 2;"), "{report}");
        let transactions = completed(bare);
        assert!(transactions > 0 && transactions <= 40, "{report}");
        assert_eq!(
            outcome_lines(bare, "outcomes:"),
            [["COMMITTED", &transactions.to_string()[..]]],
            "{report}"
        );
        assert!(
            bare.contains("errors by SQLSTATE or client error: none"),
            "{report}"
        );
        assert!(
            report.contains("ratio CreateDeduction / bare transaction: "),
            "{report}"
        );
        assert!(report.contains("tables bench_bare_caps_"), "{report}");

        // The single-row case, as with --hot every debit goes to one mandate.
        let report = operator
            .bench(&["--hot", "--bare-database-url", &url])
            .await;
        let bare = phase(&report, "bare cap-checked transaction on PostgreSQL");
        assert!(
            bare.contains("(hot: every transaction on one row, pool 4;"),
            "{report}"
        );
        assert!(bare.contains("  COMMITTED "), "{report}");

        // The throwaway tables of both runs are gone.
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'bench\\_bare\\_%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
