//! `withholding settle` and `withholding reconcile`, run as an operator runs them against the
//! database: the same rows as the RPCs, and a statement imported twice changes nothing.

use std::collections::BTreeSet;
use std::process::Command;

use super::reconcile::{Planted, all_discrepancies, expected, kinds, plant};
use super::*;
use crate::both_backends;
use crate::harness::*;

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn settle_and_reconcile_from_the_command_line(backend: Backend) {
    let Planted {
        app,
        day,
        planted,
        charges,
        ..
    } = plant(backend).await;
    let url = app.db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("statement.csv");
    std::fs::write(&file, &planted).unwrap();
    let file = file.to_str().unwrap().to_owned();

    // reconcile: the import's line, then every discrepancy of the day.
    let reconcile = || {
        run(&[
            "reconcile",
            "--database-url",
            &url,
            "--date",
            &day,
            "--statement",
            &file,
        ])
    };
    let first = reconcile();
    let mut lines = first.lines();
    assert_eq!(lines.next(), Some("import_id,lines,found,new,replayed"));
    let import_line: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(import_line[1..], ["7", "6", "6", "false"]);
    assert_eq!(lines.next(), Some(withholding::cli::DISCREPANCY_HEADER));
    let printed: BTreeSet<(String, String)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f[10], "OPEN", "{l}");
            (format!("DISCREPANCY_KIND_{}", f[1]), f[2].to_owned())
        })
        .collect();
    assert_eq!(printed, expected(&charges));
    // The same as the service lists.
    let mut operator = settlement_as(&app, app.operator_token()).await;
    let listed = all_discrepancies(&mut operator, pb::DiscrepancyStatus::Open, 100).await;
    assert_eq!(kinds(&listed), printed);

    // Again: the first import's answer, nothing new.
    let second = reconcile();
    let summary2: Vec<&str> = second.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(summary2, [import_line[0], "7", "6", "0", "true"]);
    assert_eq!(
        second.lines().skip(2).collect::<Vec<_>>(),
        first.lines().skip(2).collect::<Vec<_>>()
    );
    assert_eq!(
        all_discrepancies(&mut operator, pb::DiscrepancyStatus::Unspecified, 100).await,
        listed
    );

    // settle: the business day in Shanghai, as GetSettlementSummary has it.
    let shanghai_day = app
        .clock_now()
        .to_zoned_datetime(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
        .date()
        .to_string();
    let rows = operator
        .get_settlement_summary(summary(&shanghai_day, &shanghai_day, "m-1"))
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert!(!rows.is_empty());
    let mut want = vec![withholding::cli::SETTLE_HEADER.to_owned()];
    for r in &rows {
        let v = view(r);
        let t = |s: &str| s.replace('/', ",");
        want.push(format!(
            "{},{},{},{},{},{},{},{},{}",
            v.0,
            v.1,
            v.2,
            r.currency_code,
            t(&v.3),
            t(&v.4),
            t(&v.5),
            t(&v.6),
            v.7
        ));
    }
    let settled = run(&[
        "settle",
        "--database-url",
        &url,
        "--date",
        &shanghai_day,
        "--merchant",
        "m-1",
        "--format",
        "csv",
    ]);
    assert_eq!(settled.lines().collect::<Vec<_>>(), want);
    // Five card debits collected, three pending, one failed (the planted day's deductions).
    assert_eq!(
        want[1..],
        [format!(
            "m-1,{shanghai_day},BANK_CARD,CNY,5,60.00,0,0.00,3,48.00,1,18.00,60.00"
        )]
    );
    // Every merchant: the same here (m-1 is the only one).
    let all = run(&["settle", "--database-url", &url, "--date", &shanghai_day]);
    assert_eq!(all, settled);
    app.finish().await;
}

both_backends!(settle_and_reconcile_from_the_command_line);
