//! `withholding seed` and `withholding bench` as an operator runs them, against a real server:
//! seeded mandates are active and funded (history debits succeed), bench's debits succeed and
//! it reports both phases and their ratio, and card funding is refused until it is built.

use std::process::{Command, Output};

use withholding::grpc::pb;

use crate::harness::{AUDIENCE, Backend, ISSUER, SECRET, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_withholding");

/// Runs the binary off the runtime's threads: the server under test shares this runtime.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_bench() {
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.hex");
    std::fs::write(&key, hex::encode(SECRET)).unwrap();
    let mandates = dir.path().join("mandates.txt");
    let common = |command: &str| -> Vec<String> {
        [
            command,
            "--target",
            &format!("http://{}", app.addr),
            "--jwt-hs256-key-file",
            key.to_str().unwrap(),
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
        .to_vec()
    };

    let mut seed = common("seed");
    seed.extend(
        [
            "--mandates",
            "3",
            "--payers",
            "2",
            "--history",
            "5",
            "--out",
            mandates.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let out = run(seed).await;
    assert!(out.status.success(), "{}", text(&out));
    // Every history debit succeeded: one outcome line, SUCCEEDED × 5.
    let seeded = text(&out);
    let outcomes: Vec<Vec<&str>> = seeded
        .lines()
        .skip_while(|line| *line != "history outcomes:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(outcomes, [["SUCCEEDED", "5"]], "{seeded}");
    let ids = std::fs::read_to_string(&mandates).unwrap();
    assert_eq!(ids.lines().count(), 3, "{ids}");
    assert!(ids.lines().all(|id| id.starts_with("mdt-")), "{ids}");

    let mut bench = common("bench");
    bench.extend(
        [
            "--mandates-file",
            mandates.to_str().unwrap(),
            "--duration-s",
            "3",
            "--warmup-s",
            "0",
            "--max-requests",
            "40",
        ]
        .map(str::to_owned),
    );
    let out = run(bench).await;
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("== DeductionService/CreateDeduction (spread over 3 mandates)"),
        "{report}"
    );
    assert!(report.contains("  SUCCEEDED "), "{report}");
    assert!(report.contains("  SERVING "), "{report}");
    assert!(report.contains("errors by gRPC code: none"), "{report}");
    assert!(
        report.contains("ratio CreateDeduction / ceiling: "),
        "{report}"
    );
    // The request cap holds: at most 40 debits besides the 5 of the history.
    let listed = app
        .deductions_as(app.merchant_token("m-bench"))
        .await
        .list_deductions(pb::ListDeductionsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deductions;
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

#[tokio::test]
async fn card_funding_is_not_built_yet() {
    let out = run(["seed", "--mandates", "1", "--funding", "card"]
        .map(str::to_owned)
        .to_vec())
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("card funding needs the bank simulator"),
        "{}",
        text(&out)
    );
}
