//! Limits and request ids under concurrency (DESIGN §4, §8, §9.1, §9.2): many simultaneous
//! debits against one period cap, one request id sent many times at once, idempotent replays,
//! and two replicas on one PostgreSQL database.

use std::collections::HashSet;

use tonic::{Code, Status};
use tonic_types::StatusExt;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

/// Client connections the concurrent requests are spread over.
const CONNECTIONS: usize = 8;
/// How often a client retries an ABORTED answer (the service asks for a retry with the same
/// request id when a deduction lost a race).
const RETRIES: usize = 10;

/// Utility terms with the given per-debit maximum and period (MONTH × 1) limits.
pub(super) fn terms(
    per_debit: &str,
    period_amount: Option<&str>,
    period_count: Option<u32>,
) -> pb::MandateTerms {
    pb::MandateTerms {
        per_debit_limit: money(per_debit),
        period_amount_limit: period_amount.and_then(money),
        period_debit_limit: period_count,
        ..utility_terms()
    }
}

/// Sends `request`, retrying ABORTED (and only ABORTED) with the same request id. Returns the
/// final answer and how many ABORTED answers came first.
pub(super) async fn create_retrying(
    client: &mut DeductionClient,
    request: pb::CreateDeductionRequest,
) -> (Result<pb::CreateDeductionResponse, Status>, usize) {
    let mut aborted = 0;
    loop {
        match client.create_deduction(request.clone()).await {
            Err(status) if status.code() == Code::Aborted && aborted < RETRIES => aborted += 1,
            other => return (other.map(tonic::Response::into_inner), aborted),
        }
    }
}

pub(super) async fn clients(app: &TestApp, merchant: &str, n: usize) -> Vec<DeductionClient> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(app.deductions_as(app.merchant_token(merchant)).await);
    }
    out
}

/// Sends `requests` all at once, request `i` over `clients[i % clients.len()]`; the answers in
/// request order, and the ABORTED answers retried on the way.
async fn storm(
    clients: &[DeductionClient],
    requests: Vec<pb::CreateDeductionRequest>,
) -> (Vec<pb::CreateDeductionResponse>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let mut client = clients[i % clients.len()].clone();
        tasks.spawn(async move { (i, create_retrying(&mut client, request).await) });
    }
    let mut answers: Vec<Option<pb::CreateDeductionResponse>> = vec![None; tasks.len()];
    let mut aborted = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, (answer, retries)) = joined.expect("request task");
        aborted += retries;
        let answer = answer.unwrap_or_else(|s| panic!("request {i} failed: {s:?}"));
        answers[i] = Some(answer);
    }
    (answers.into_iter().map(Option::unwrap).collect(), aborted)
}

/// 200 concurrent debits of 10.00 against a cap of 50 debits (or of 500.00) a month: exactly
/// 50 succeed, the rest are declined for the period limit, the wallet pays exactly 50 debits.
async fn period_cap_holds_under_concurrency(
    backend: Backend,
    terms: pb::MandateTerms,
    expected_reason: &str,
) {
    let app = spawn_app(backend).await;
    let m = app
        .mandate_with("m-1", "p-1", "c-cap", terms, wallet_only())
        .await;
    app.credit("p-1", "3000.00").await;
    let clients = clients(&app, "m-1", CONNECTIONS).await;

    let requests = (0..200)
        .map(|i| {
            collect(
                &format!("r-{i}"),
                &m.mandate_id,
                "10.00",
                &format!("bill-{i}"),
            )
        })
        .collect();
    let (answers, aborted) = storm(&clients, requests).await;

    let mut succeeded = HashSet::new();
    let mut declined = HashSet::new();
    for (i, answer) in answers.iter().enumerate() {
        assert!(!answer.replayed, "request {i} was new: {answer:?}");
        let d = answer.deduction.as_ref().unwrap();
        assert_eq!(d.request_id, format!("r-{i}"));
        assert_eq!(d.bill_reference, format!("bill-{i}"));
        assert_eq!(d.amount, money("10.00"));
        assert_eq!(d.mandate_version, m.version, "{d:?}");
        match deduction_status(d) {
            pb::DeductionStatus::Succeeded => {
                assert_eq!(d.paid_by_source_index, Some(0), "{d:?}");
                assert_eq!(d.reason_code, "", "{d:?}");
                assert!(succeeded.insert(d.deduction_id.clone()));
            }
            pb::DeductionStatus::Declined => {
                assert_eq!(d.reason_code, expected_reason, "{d:?}");
                let codes: Vec<&str> = d
                    .violations
                    .iter()
                    .map(|v| v.reason_code.as_str())
                    .collect();
                assert_eq!(codes, [expected_reason], "{d:?}");
                assert!(d.funding_attempts.is_empty(), "{d:?}");
                assert_eq!(d.paid_by_source_index, None, "{d:?}");
                assert!(declined.insert(d.deduction_id.clone()));
            }
            other => panic!("request {i} ended {other:?}: {d:?}"),
        }
    }
    assert_eq!(
        (succeeded.len(), declined.len()),
        (50, 150),
        "{aborted} ABORTED answers were retried"
    );
    assert_eq!(app.balance("p-1").await, "2500.00");

    // ListDeductions tells the same story, page by page.
    let mut reader = clients[0].clone();
    let all = list_pages(&mut reader, &m.mandate_id, None, 37).await;
    assert_eq!(all.len(), 200);
    let listed_ok: HashSet<String> = all
        .iter()
        .filter(|d| deduction_status(d) == pb::DeductionStatus::Succeeded)
        .map(|d| d.deduction_id.clone())
        .collect();
    let listed_declined: HashSet<String> = all
        .iter()
        .filter(|d| deduction_status(d) == pb::DeductionStatus::Declined)
        .map(|d| d.deduction_id.clone())
        .collect();
    assert_eq!(listed_ok, succeeded);
    assert_eq!(listed_declined, declined);
    let filtered = list_pages(
        &mut reader,
        &m.mandate_id,
        Some(pb::DeductionStatus::Succeeded),
        16,
    )
    .await;
    assert_eq!(
        filtered
            .iter()
            .map(|d| d.deduction_id.clone())
            .collect::<HashSet<_>>(),
        succeeded
    );

    // The period stays full: one more is declined the same way, and the dry run agrees.
    let more = reader
        .create_deduction(collect("r-more", &m.mandate_id, "10.00", "bill-more"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&more), pb::DeductionStatus::Declined);
    assert_eq!(more.reason_code, expected_reason);
    assert_eq!(app.balance("p-1").await, "2500.00");

    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

async fn period_count_cap_under_concurrency(backend: Backend) {
    period_cap_holds_under_concurrency(
        backend,
        terms("10.00", None, Some(50)),
        "PERIOD_COUNT_LIMIT_EXCEEDED",
    )
    .await;
}

async fn period_amount_cap_under_concurrency(backend: Backend) {
    period_cap_holds_under_concurrency(
        backend,
        terms("10.00", Some("500.00"), None),
        "PERIOD_AMOUNT_LIMIT_EXCEEDED",
    )
    .await;
}

/// 50 concurrent sends of one request: one deduction, one wallet movement, one set of audit
/// events, and every caller gets that deduction.
async fn one_request_id_sent_concurrently(backend: Backend) {
    let app = spawn_app(backend).await;
    let limits = || terms("500.00", Some("1000.00"), Some(2));
    let baseline = app
        .mandate_with("m-1", "p-9", "c-base", limits(), wallet_only())
        .await;
    let m = app
        .mandate_with("m-1", "p-1", "c-1", limits(), wallet_only())
        .await;
    app.credit("p-1", "1000.00").await;
    app.credit("p-9", "1000.00").await;
    let clients = clients(&app, "m-1", CONNECTIONS).await;

    // What one deduction writes to the audit trail, measured on another mandate.
    let before = app.counts().await.audit_events;
    let mut one = clients[0].clone();
    let d = one
        .create_deduction(collect("r-base", &baseline.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&d), pb::DeductionStatus::Succeeded);
    let per_deduction = app.counts().await.audit_events - before;

    let before = app.counts().await.audit_events;
    let requests = (0..50)
        .map(|_| collect("r-same", &m.mandate_id, "100.00", "bill-2026-03"))
        .collect();
    let (answers, aborted) = storm(&clients, requests).await;
    let first = answers[0].deduction.clone().unwrap();
    assert_eq!(
        deduction_status(&first),
        pb::DeductionStatus::Succeeded,
        "{first:?}"
    );
    for answer in &answers {
        assert_eq!(
            answer.deduction.as_ref(),
            Some(&first),
            "{aborted} ABORTED retried"
        );
    }
    let originals = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(originals, 1, "exactly one caller made the deduction");

    let mut reader = clients[1].clone();
    let all = list_pages(&mut reader, &m.mandate_id, None, 10).await;
    assert_eq!(all, std::slice::from_ref(&first));
    assert_eq!(app.balance("p-1").await, "900.00");
    assert_eq!(
        app.counts().await.audit_events - before,
        per_deduction,
        "the audit trail records one deduction"
    );
    // A late retry is still the same deduction.
    let late = reader
        .create_deduction(collect("r-same", &m.mandate_id, "100.00", "bill-2026-03"))
        .await
        .unwrap()
        .into_inner();
    assert!(late.replayed);
    assert_eq!(late.deduction.unwrap(), first);
    assert_eq!(app.balance("p-1").await, "900.00");

    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

/// Replays, reuse with other parameters, declined replays and per-merchant keys.
async fn idempotency_of_request_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    // One debit a month, so the second of the month is declined and next month is allowed.
    let m = app
        .mandate_with(
            "m-1",
            "p-1",
            "c-1",
            terms("500.00", None, Some(1)),
            wallet_only(),
        )
        .await;
    app.credit("p-1", "1000.00").await;
    let mut merchant = app.deductions_as(app.merchant_token("m-1")).await;

    let original = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!original.replayed);
    let original = original.deduction.unwrap();
    assert_eq!(deduction_status(&original), pb::DeductionStatus::Succeeded);
    assert_eq!(app.balance("p-1").await, "900.00");

    // A replay is the same deduction, charged once.
    let counts = app.counts().await;
    let replay = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.deduction.unwrap(), original);
    assert_eq!(app.balance("p-1").await, "900.00");
    assert_eq!(app.counts().await, counts, "a replay writes nothing");

    // The same key with different parameters is refused, and changes nothing.
    for changed in [
        collect("r-1", &m.mandate_id, "100.01", "b-1"),
        collect("r-1", &m.mandate_id, "100.00", "b-2"),
        pb::CreateDeductionRequest {
            description: "gas".into(),
            ..collect("r-1", &m.mandate_id, "100.00", "b-1")
        },
    ] {
        let err = merchant
            .create_deduction(changed.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{changed:?}: {err:?}");
        let info = err
            .get_details_error_info()
            .expect("ALREADY_EXISTS carries google.rpc.ErrorInfo");
        assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    }
    assert_eq!(app.balance("p-1").await, "900.00");
    assert_eq!(app.counts().await, counts);
    assert_eq!(
        list_pages(&mut merchant, &m.mandate_id, None, 50).await,
        std::slice::from_ref(&original)
    );

    // A declined deduction replays as declined, even once the mandate would allow it.
    let declined = merchant
        .create_deduction(collect("r-2", &m.mandate_id, "50.00", "b-2"))
        .await
        .unwrap()
        .into_inner()
        .deduction
        .unwrap();
    assert_eq!(deduction_status(&declined), pb::DeductionStatus::Declined);
    assert_eq!(declined.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED");
    app.clock.advance(jiff::SignedDuration::from_hours(31 * 24));
    let check = merchant
        .check_deduction(pb::CheckDeductionRequest {
            mandate_id: m.mandate_id.clone(),
            amount: money("50.00"),
            purpose: pb::Purpose::Utility as i32,
            bill_reference: "b-2".into(),
            notice_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed, "a new period admits it: {check:?}");
    let replay = merchant
        .create_deduction(collect("r-2", &m.mandate_id, "50.00", "b-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.deduction.unwrap(), declined);
    assert_eq!(app.balance("p-1").await, "900.00");
    // A new request id for the same debit is decided afresh, and now succeeds.
    let fresh = merchant
        .create_deduction(collect("r-3", &m.mandate_id, "50.00", "b-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.replayed);
    let fresh = fresh.deduction.unwrap();
    assert_eq!(
        deduction_status(&fresh),
        pb::DeductionStatus::Succeeded,
        "{fresh:?}"
    );
    assert_ne!(fresh.deduction_id, declined.deduction_id);
    assert_eq!(app.balance("p-1").await, "850.00");

    // Request ids are per merchant: m-2 may use r-1 on its own mandate.
    let other = app
        .mandate_with(
            "m-2",
            "p-2",
            "c-1",
            terms("500.00", None, Some(1)),
            wallet_only(),
        )
        .await;
    app.credit("p-2", "300.00").await;
    let mut merchant2 = app.deductions_as(app.merchant_token("m-2")).await;
    let theirs = merchant2
        .create_deduction(collect("r-1", &other.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!theirs.replayed);
    let theirs = theirs.deduction.unwrap();
    assert_eq!(
        deduction_status(&theirs),
        pb::DeductionStatus::Succeeded,
        "{theirs:?}"
    );
    assert_ne!(theirs.deduction_id, original.deduction_id);
    assert_eq!(theirs.merchant_id, "m-2");
    assert_eq!(app.balance("p-2").await, "200.00");
    // …and m-1's r-1 is still m-1's.
    let mine = merchant
        .create_deduction(collect("r-1", &m.mandate_id, "100.00", "b-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.replayed);
    assert_eq!(mine.deduction.unwrap(), original);
    assert_eq!(app.balance("p-1").await, "850.00");

    assert_ledger_balanced(app.ledger_totals().await);
    app.verify_audit().await;
}

both_backends!(
    period_count_cap_under_concurrency,
    period_amount_cap_under_concurrency,
    one_request_id_sent_concurrently,
    idempotency_of_request_ids,
);

/// Two replicas on one PostgreSQL database: 100 concurrent debits split over both against a cap
/// of 30 debits a month; then one request id sent to both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_period_cap_postgres() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_on(Backend::Postgres, first.db.shared(), default_keys()).await;
    let m = first
        .mandate_with(
            "m-1",
            "p-1",
            "c-cap",
            terms("10.00", None, Some(30)),
            wallet_only(),
        )
        .await;
    first.credit("p-1", "2000.00").await;
    let mut both = clients(&first, "m-1", CONNECTIONS / 2).await;
    both.extend(clients(&second, "m-1", CONNECTIONS / 2).await);

    let requests = (0..100)
        .map(|i| {
            collect(
                &format!("r-{i}"),
                &m.mandate_id,
                "10.00",
                &format!("bill-{i}"),
            )
        })
        .collect();
    let (answers, aborted) = storm(&both, requests).await;
    let count = |status: pb::DeductionStatus| {
        answers
            .iter()
            .filter(|a| deduction_status(a.deduction.as_ref().unwrap()) == status)
            .count()
    };
    assert_eq!(
        (
            count(pb::DeductionStatus::Succeeded),
            count(pb::DeductionStatus::Declined)
        ),
        (30, 70),
        "{aborted} ABORTED answers were retried"
    );
    for a in &answers {
        let d = a.deduction.as_ref().unwrap();
        if deduction_status(d) == pb::DeductionStatus::Declined {
            assert_eq!(d.reason_code, "PERIOD_COUNT_LIMIT_EXCEEDED", "{d:?}");
        }
    }
    // Both replicas read the same outcome.
    assert_eq!(first.balance("p-1").await, "1700.00");
    assert_eq!(second.balance("p-1").await, "1700.00");
    for client in [&both[0], &both[CONNECTIONS - 1]] {
        let listed = list_pages(
            &mut client.clone(),
            &m.mandate_id,
            Some(pb::DeductionStatus::Succeeded),
            7,
        )
        .await;
        assert_eq!(listed.len(), 30);
    }

    // One request id sent 40 times over both replicas: one deduction, one charge.
    let m2 = first
        .mandate_with(
            "m-1",
            "p-2",
            "c-2",
            terms("500.00", Some("1000.00"), Some(2)),
            wallet_only(),
        )
        .await;
    first.credit("p-2", "500.00").await;
    let requests = (0..40)
        .map(|_| collect("r-same", &m2.mandate_id, "120.00", "bill-2026-03"))
        .collect();
    let (answers, aborted) = storm(&both, requests).await;
    let d = answers[0].deduction.clone().unwrap();
    assert_eq!(
        deduction_status(&d),
        pb::DeductionStatus::Succeeded,
        "{d:?}"
    );
    assert!(
        answers.iter().all(|a| a.deduction.as_ref() == Some(&d)),
        "{aborted} ABORTED answers were retried"
    );
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert_eq!(
        list_pages(&mut both[CONNECTIONS - 1].clone(), &m2.mandate_id, None, 10).await,
        [d]
    );
    assert_eq!(second.balance("p-2").await, "380.00");

    assert_ledger_balanced(first.ledger_totals().await);
    first.verify_audit().await;
    second.verify_audit().await;
}
