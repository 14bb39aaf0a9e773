//! The console over plain HTTP: sign-in and sessions, every page view audited, the API's role
//! and tenancy rules, supplied text escaped on every page that shows it, the CSV export equal
//! to the query, and verification finding a tampered row.

use jiff::SignedDuration;

use super::{Answer, Visitor, multipart};
use crate::audit::{History, drop_guards, query_all, quoted, raw};
use crate::both_backends;
use crate::harness::*;

const HOSTILE: &str = r#"<script>alert(1)</script>"><img src=x onerror=alert(2)>"#;

fn assert_page(answer: &Answer) {
    assert_eq!(answer.status, 200, "{answer:?}");
    let csp = answer.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert!(!answer.body.contains("<script"), "a page carries script");
}

both_backends!(sessions_open_with_a_token_and_end);
async fn sessions_open_with_a_token_and_end(backend: Backend) {
    let app = spawn_app(backend).await;
    // Without a session every page sends the visitor to sign in.
    let anonymous = Visitor::new(&app);
    for path in ["/today", "/mandates", "/audit", "/audit.csv", "/verify"] {
        let answer = anonymous.get(path).await;
        assert_eq!(answer.status, 303, "{path}: {answer:?}");
        assert_eq!(answer.header("location"), Some("/sign-in"));
    }
    // A bad token or a payer's opens nothing.
    let mut visitor = Visitor::new(&app);
    let refused = visitor.sign_in("not-a-token").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.header("set-cookie").is_none());
    let refused = visitor.sign_in(&app.payer_token("p-1")).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("payers"), "{}", refused.body);

    let opened = visitor.sign_in(&app.auditor_token(None)).await;
    assert_eq!(opened.status, 303, "{opened:?}");
    let cookie = opened.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=900"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert_page(&visitor.get("/today").await);

    // Signing out ends the session: the old cookie no longer opens a page.
    let out = visitor
        .post("/sign-out", "application/x-www-form-urlencoded", b"")
        .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(visitor.get("/today").await.status, 303);

    // A session lasts 15 minutes.
    let visitor = Visitor::signed_in(&app, &app.auditor_token(None)).await;
    app.clock.advance(SignedDuration::from_mins(14));
    assert_eq!(visitor.get("/today").await.status, 200);
    app.clock.advance(SignedDuration::from_mins(2));
    assert_eq!(visitor.get("/today").await.status, 303);
}

both_backends!(every_page_view_is_an_audit_event);
async fn every_page_view_is_an_audit_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let merchant = Visitor::signed_in(&app, &app.merchant_token("m-1")).await;
    assert_eq!(merchant.get("/mandates?status=ACTIVE").await.status, 200);
    let auditor = Visitor::signed_in(&app, &app.auditor_token(None)).await;
    assert_eq!(auditor.get("/settlement").await.status, 200);

    let mut audit = app.audit_as(app.auditor_token(None)).await;
    let views = query_all(
        &mut audit,
        pb::AuditEventFilter {
            action: "CONSOLE_VIEW".into(),
            ..Default::default()
        },
        false,
        100,
    )
    .await;
    let seen: Vec<(String, String, String)> = views
        .iter()
        .map(|e| {
            (
                e.actor_role.clone(),
                e.merchant_id.clone(),
                e.details.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "merchant".into(),
                "m-1".into(),
                r#"{"page":"/mandates?status=ACTIVE"}"#.into()
            ),
            (
                "auditor".into(),
                String::new(),
                r#"{"page":"/settlement"}"#.into()
            ),
        ]
    );
}

both_backends!(the_console_grants_what_the_api_grants_and_no_other_tenant);
async fn the_console_grants_what_the_api_grants_and_no_other_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let history = History::plant(&app).await;
    let a = &history.a.mandate_id;
    let b = &history.b.mandate_id;

    let m1 = Visitor::signed_in(&app, &app.merchant_token("m-1")).await;
    // Its audit page shows nothing of m-2 (before its own views name m-2's mandate below).
    let own = m1.get("/audit").await;
    assert_page(&own);
    assert!(
        !own.body.contains(b.as_str()) && !own.body.contains("m-2"),
        "{}",
        own.body
    );
    assert_page(&m1.get(&format!("/mandates/{a}")).await);
    // Another merchant's mandate is not found, exactly as one that does not exist.
    assert_eq!(m1.get(&format!("/mandates/{b}")).await.status, 404);
    assert_eq!(m1.get("/mandates/no-such-mandate").await.status, 404);
    // A contract id finds the merchant's own mandate, and never another merchant's.
    let found = m1.get("/mandates?contract_id=c-a").await;
    assert!(found.body.contains(a.as_str()), "{}", found.body);
    let other = m1.get("/mandates?contract_id=c-b").await;
    assert!(other.body.contains("No mandates match"), "{}", other.body);
    let listed = m1.get("/mandates?merchant_id=m-2").await;
    assert!(listed.body.contains("No mandates match"), "{}", listed.body);
    let events = m1.get(&format!("/audit?mandate_id={b}")).await;
    assert!(events.body.contains("No events match"), "{}", events.body);
    assert_eq!(m1.get("/settlement?merchant_id=m-2").await.status, 404);
    // Merchants neither read reconciliation nor verify the trail; operators do not read the
    // audit trail.
    assert_eq!(m1.get("/reconciliation").await.status, 403);
    assert_eq!(m1.get("/verify").await.status, 403);
    let operator = Visitor::signed_in(&app, &app.operator_token()).await;
    assert_eq!(operator.get("/audit").await.status, 403);
    assert_page(&operator.get("/reconciliation").await);

    // An auditor of m-1 sees m-1 only.
    let scoped = Visitor::signed_in(&app, &app.auditor_token(Some("m-1"))).await;
    assert_eq!(scoped.get(&format!("/mandates/{b}")).await.status, 404);
    let today = scoped.get("/today").await;
    assert_page(&today);
    assert!(!today.body.contains("m-2"), "{}", today.body);
}

both_backends!(supplied_text_is_escaped_on_every_page_that_shows_it);
async fn supplied_text_is_escaped_on_every_page_that_shows_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let history = History::plant(&app).await;
    let a = &history.a.mandate_id;
    let paused = app
        .payer("p-1")
        .await
        .pause_mandate(pb::PauseMandateRequest {
            mandate_id: a.clone(),
            reason: HOSTILE.into(),
            request_id: "pause-1".into(),
        })
        .await;
    assert!(paused.is_ok(), "{paused:?}");

    let auditor = Visitor::signed_in(&app, &app.auditor_token(None)).await;
    for path in [
        format!("/mandates/{a}"),
        format!("/audit?mandate_id={a}"),
        format!("/audit?mandate_id={a}&order=newest"),
    ] {
        let page = auditor.get(&path).await;
        assert_page(&page);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path} does not show the reason as text: {}",
            page.body
        );
    }
    // A filter value comes back in the form, escaped.
    let echoed = auditor
        .get(&format!("/audit?action={}", super::form_encode(HOSTILE)))
        .await;
    assert_page(&echoed);
    assert!(!echoed.body.contains("<img"), "{}", echoed.body);
    assert!(echoed.body.contains("&quot;&gt;&lt;img"), "{}", echoed.body);
}

both_backends!(the_csv_export_equals_the_query);
async fn the_csv_export_equals_the_query(backend: Backend) {
    let app = spawn_app(backend).await;
    History::plant(&app).await;
    let auditor = Visitor::signed_in(&app, &app.auditor_token(None)).await;
    let csv = auditor.get("/audit.csv?merchant_id=m-1").await;
    assert_eq!(csv.status, 200, "{csv:?}");
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut audit = app.audit_as(app.auditor_token(None)).await;
    let queried = query_all(
        &mut audit,
        pb::AuditEventFilter {
            merchant_id: "m-1".into(),
            ..Default::default()
        },
        false,
        7,
    )
    .await;
    let mut lines = csv.body.split("\r\n").filter(|l| !l.is_empty());
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("seq,chain_id,chain_seq,at,")
    );
    // seq is the first column and hash the last; neither is ever quoted.
    let exported: Vec<(i64, String)> = lines
        .map(|l| {
            let seq = l.split(',').next().unwrap().parse().unwrap();
            (seq, l.rsplit(',').next().unwrap().to_owned())
        })
        .collect();
    let expected: Vec<(i64, String)> = queried.iter().map(|e| (e.seq, e.hash.clone())).collect();
    assert!(expected.len() > 5, "{expected:?}");
    assert_eq!(exported, expected);
}

both_backends!(verification_from_the_console_names_the_tampered_row);
async fn verification_from_the_console_names_the_tampered_row(backend: Backend) {
    let app = spawn_app(backend).await;
    let history = History::plant(&app).await;
    let auditor = Visitor::signed_in(&app, &app.auditor_token(None)).await;

    // A checkpoint kept, then verified against while intact.
    let kept = auditor
        .post(
            "/verify/checkpoint",
            "application/x-www-form-urlencoded",
            b"",
        )
        .await;
    assert_eq!(kept.status, 200, "{kept:?}");
    assert!(
        kept.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let result = run(&auditor, &[("scope", "all")], Some(&kept.body)).await;
    assert!(result.contains("Intact"), "{result}");
    assert!(
        result.contains("The trail extends the checkpoint."),
        "{result}"
    );

    // One row of the mandate's chain edited around the service.
    let chain = format!("mandate:{}", history.a.mandate_id);
    let mut statements: Vec<String> = drop_guards(app.backend)
        .iter()
        .map(|s| s.to_string())
        .collect();
    statements.push(format!(
        "UPDATE audit_events SET details = '{{\"edited\":true}}' WHERE chain_id = {} AND chain_seq = 2",
        quoted(&chain)
    ));
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    raw(&app, &statements).await.unwrap();
    let result = run(
        &auditor,
        &[("scope", "mandate"), ("target", &history.a.mandate_id)],
        None,
    )
    .await;
    assert!(result.contains("BROKEN"), "{result}");
    assert!(result.contains(&chain), "{result}");
    assert!(
        result.contains("Expected hash") && result.contains("Found hash"),
        "{result}"
    );
    // The Today page says so.
    let today = auditor.get("/today").await;
    assert!(today.body.contains("BROKEN"), "{}", today.body);

    // A checkpoint altered by hand is refused, naming the signature.
    let altered = kept.body.replace("\"chains\":", "\"chains\":1");
    let result = run(&auditor, &[("scope", "all")], Some(&altered)).await;
    assert!(result.contains("checkpoint"), "{result}");
}

/// Starts a verification and follows it to its result page.
async fn run(visitor: &Visitor, fields: &[(&str, &str)], checkpoint: Option<&str>) -> String {
    let (content_type, body) = multipart(fields, checkpoint.map(|c| ("checkpoint", c)));
    let started = visitor.post("/verify", &content_type, &body).await;
    if started.status != 303 {
        return started.body;
    }
    let job = started.header("location").unwrap().to_owned();
    for _ in 0..200 {
        let page = visitor.get(&job).await;
        match page.status {
            202 => {
                assert_eq!(page.header("refresh"), Some("1"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            200 => return page.body,
            other => panic!("{other}: {}", page.body),
        }
    }
    panic!("the verification did not finish");
}

both_backends!(the_demo_seeds_what_an_officer_looks_for_once);
async fn the_demo_seeds_what_an_officer_looks_for_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let minter = |role: &str, sub: &str, merchant: Option<&str>| {
        Ok(sign(
            claims(jiff::Timestamp::now(), role, sub, merchant),
            None,
        ))
    };
    assert!(withholding::demo::seed(app.addr, &minter).await.unwrap());
    // A second start on the same database adds nothing.
    let counts = app.counts().await;
    assert!(!withholding::demo::seed(app.addr, &minter).await.unwrap());
    assert_eq!(app.counts().await, counts);

    let auditor = Visitor::signed_in(&app, &app.auditor_token(None)).await;
    let today = auditor.get("/today").await;
    assert_page(&today);
    for reason in [
        "REFUND_CLAWBACK_FORBIDDEN",
        "SUSPECTED_REFUND_RECOVERY",
        "REFUND_RECOVERY_NOT_MANDATABLE",
    ] {
        assert!(today.body.contains(reason), "{reason}: {}", today.body);
    }
    let reconciliation = auditor.get("/reconciliation").await;
    assert!(
        reconciliation
            .body
            .contains("LONG · charge demo-bank-charge-1"),
        "{}",
        reconciliation.body
    );
}
