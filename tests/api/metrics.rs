//! The Prometheus endpoint: RPCs counted by method and code, latency histograms, decisions by
//! reason, pool gauges; only when configured.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use withholding::app::{AppConfig, Application};
use withholding::clock::ManualClock;
use withholding::grpc::auth::Authenticator;
use withholding::pb;
use withholding::pb::mandate_service_client::MandateServiceClient;

use crate::harness::*;

/// The value of one series in a scrape (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rpcs_and_decisions() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = Application::build(AppConfig {
        database_url: db.url.clone(),
        read_database_url: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        authenticator: Arc::new(
            Authenticator::new(default_keys(), ISSUER.into(), AUDIENCE.into(), 30).unwrap(),
        ),
        settings: withholding::service::Settings::default(),
        clock: Arc::new(ManualClock::new(START.parse().unwrap())),
        expiry_sweep_interval: None,
        request_timeout: Duration::from_secs(30),
        bank_gateway: None,
        deduction_settings: withholding::service::DeductionSettings::default(),
        resolver_interval: None,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        events: withholding::service::EventSettings::default(),
        audit_key: Arc::new(withholding::service::AuditKey::from_seed(AUDIT_KEY_SEED)),
        console: None,
    })
    .await
    .unwrap();
    let addr = app.local_addr();
    let metrics = app.metrics_addr().expect("metrics bound");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));

    // The registry is process-wide and other tests in this binary count too: compare deltas.
    let before = scrape(metrics, "/metrics").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = sign(
        claims(jiff::Timestamp::now(), "merchant", "billing", Some("m-1")),
        None,
    );
    let mut merchant = MandateServiceClient::with_interceptor(channel.clone(), Bearer(Some(token)));
    merchant
        .create_mandate(create_request("c-1", "p-1"))
        .await
        .unwrap();
    let missing = merchant
        .get_mandate(pb::GetMandateRequest {
            mandate_id: "mdt-none".into(),
            as_of: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut anonymous = MandateServiceClient::with_interceptor(channel, Bearer(None));
    assert!(
        anonymous
            .list_mandates(pb::ListMandatesRequest::default())
            .await
            .is_err()
    );

    let text = scrape(metrics, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for (series, delta) in [
        (
            r#"withholding_rpc_requests_total{method="MandateService/CreateMandate",code="OK"}"#,
            1.0,
        ),
        (
            r#"withholding_rpc_requests_total{method="MandateService/GetMandate",code="NOT_FOUND"}"#,
            1.0,
        ),
        (
            r#"withholding_rpc_requests_total{method="MandateService/ListMandates",code="UNAUTHENTICATED"}"#,
            1.0,
        ),
        (
            r#"withholding_rpc_duration_seconds_count{method="MandateService/CreateMandate"}"#,
            1.0,
        ),
        // The create was one SQLite write, committed by the group commit.
        ("withholding_sqlite_group_commit_writes_count", 1.0),
        ("withholding_sqlite_group_commit_writes_sum", 1.0),
    ] {
        assert!(
            value(&text, series) - value(&before, series) >= delta,
            "{series}\n{text}"
        );
    }
    for line in [
        "withholding_card_charges_unknown 0",
        r#"withholding_db_pool_connections{pool="sqlite_writer",state="open"} 1"#,
        "withholding_read_replica_lag_bytes 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    assert!(scrape(metrics, "/other").await.starts_with("HTTP/1.1 404"));
    let _ = tx.send(());
}
