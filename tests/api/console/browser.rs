//! The console in a real browser: headless Chromium driven through WebDriver (Debian's
//! `chromium-driver`), as a compliance officer would use it — sign in, find yesterday's blocked
//! clawback from Today, open its mandate's timeline, export a selection as CSV and compare it
//! with QueryAuditEvents, then see verification fail on a tampered row. A screenshot of each
//! page is kept under `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::Visitor;
use crate::audit::{History, drop_guards, query_all, quoted, raw};
use crate::harness::*;

/// A chromedriver of our own on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let binary = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .expect(
                "chromedriver is not installed: apt-get install chromium chromium-driver \
                 (scripts/test does it when run as root)",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"
            ] }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn keep(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_answers_the_questions_in_a_browser() {
    let app = spawn_app(Backend::Sqlite).await;
    let history = History::plant(&app).await;
    let console = format!("http://{}", app.console_addr);
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Sign in with a token, as the sign-in page asks.
    browser.goto(&format!("{console}/today")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/sign-in")
    );
    keep(&browser, "sign-in").await;
    let token = app.auditor_token(None);
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    browser
        .find(Locator::Css("form[action='/sign-in'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(&browser, "/today").await;
    keep(&browser, "today").await;

    // Yesterday's blocked clawback, and from it the mandate's timeline.
    let row = browser
        .find(Locator::XPath(
            "//tr[contains(@class,'clawback')][td[text()='REFUND_CLAWBACK_FORBIDDEN']]",
        ))
        .await
        .expect("the blocked clawback on the Today page");
    assert!(row.text().await.unwrap().contains("m-1"));
    row.find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let a = &history.a.mandate_id;
    wait_for_path(&browser, &format!("/mandates/{a}")).await;
    let timeline = browser
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "MANDATE_CREATED",
        "MANDATE_CONFIRMED",
        "accepted version 1",
        "REFUND_CLAWBACK_FORBIDDEN",
    ] {
        assert!(
            timeline.contains(expected),
            "{expected} missing from the timeline: {timeline}"
        );
    }
    keep(&browser, "mandate-timeline").await;

    // A selection on the audit page, exported as CSV, equals the query.
    browser
        .goto(&format!("{console}/audit?merchant_id=m-1"))
        .await
        .unwrap();
    keep(&browser, "audit-events").await;
    let href = browser
        .find(Locator::LinkText("Export this selection as CSV"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let cookie = browser
        .get_named_cookie("withholding_console")
        .await
        .unwrap();
    assert!(cookie.http_only().unwrap_or(false));
    let mut visitor = Visitor::new(&app);
    visitor.cookie = Some(format!("withholding_console={}", cookie.value()));
    let csv = visitor.get(&href).await;
    assert_eq!(csv.status, 200);
    let exported: Vec<String> = csv
        .body
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit(',').next().unwrap().to_owned())
        .collect();
    let mut audit = app.audit_as(app.auditor_token(None)).await;
    let queried: Vec<String> = query_all(
        &mut audit,
        pb::AuditEventFilter {
            merchant_id: "m-1".into(),
            ..Default::default()
        },
        false,
        100,
    )
    .await
    .into_iter()
    .map(|e| e.hash)
    .collect();
    assert_eq!(exported, queried);

    for (path, name) in [
        ("/settlement", "settlement"),
        ("/reconciliation?status=all", "reconciliation"),
        ("/mandates", "mandates"),
    ] {
        browser.goto(&format!("{console}{path}")).await.unwrap();
        keep(&browser, name).await;
    }

    // A row tampered with around the service: the Verify page says where.
    let chain = format!("mandate:{a}");
    let mut statements: Vec<String> = drop_guards(app.backend)
        .iter()
        .map(|s| s.to_string())
        .collect();
    statements.push(format!(
        "UPDATE audit_events SET details = '{{\"edited\":true}}' WHERE chain_id = {} AND chain_seq = 3",
        quoted(&chain)
    ));
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    raw(&app, &statements).await.unwrap();
    browser.goto(&format!("{console}/verify")).await.unwrap();
    keep(&browser, "verify").await;
    browser
        .find(Locator::Css("form.verify button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut status = String::new();
    for _ in 0..100 {
        if let Ok(found) = browser.find(Locator::Id("status")).await {
            status = found.text().await.unwrap_or_default();
            if !status.starts_with("Verifying") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(status.starts_with("BROKEN"), "{status}");
    assert!(status.contains(&chain), "{status}");
    keep(&browser, "verify-broken").await;

    browser.close().await.unwrap();
}

/// Waits for a navigation a click started to land on `path`.
async fn wait_for_path(browser: &Client, path: &str) {
    for _ in 0..50 {
        if browser.current_url().await.unwrap().path() == path {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the browser is at {}, not {path}: {}",
        browser.current_url().await.unwrap(),
        browser.source().await.unwrap_or_default()
    );
}
