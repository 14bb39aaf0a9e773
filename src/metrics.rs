//! Prometheus metrics (`--metrics-listen`, off unless configured): RPCs by method and code with
//! latency histograms, deduction decisions by status and reason, card charges with no definite
//! outcome, and database pool use. Served as text at `GET /metrics` on their own port.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::storage::Database;

/// Largest scrape request read (the request line and headers).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    status: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    figure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    latency: LatencyFamily,
    decisions: Family<DecisionLabels, Counter>,
    unknown_charges: Gauge,
    pool: Family<PoolLabels, Gauge>,
    group_commit: Histogram,
    /// Deductions decided together (PostgreSQL), by figure: read from the store at scrape.
    batches: Family<BatchLabels, Gauge>,
    /// WAL the read replica has still to apply, read at scrape (0 without one).
    replica_lag: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("withholding");
    let rpcs = Family::<RpcLabels, Counter>::default();
    registry.register(
        "rpc_requests",
        "gRPC requests by method and status code",
        rpcs.clone(),
    );
    let latency = LatencyFamily::new_with_constructor(latency_histogram);
    registry.register(
        "rpc_duration_seconds",
        "gRPC request latency by method",
        latency.clone(),
    );
    let decisions = Family::<DecisionLabels, Counter>::default();
    registry.register(
        "deductions",
        "deductions decided, by final status and reason code",
        decisions.clone(),
    );
    let unknown_charges = Gauge::default();
    registry.register(
        "card_charges_unknown",
        "card charges whose outcome the bank has not told yet (read at scrape)",
        unknown_charges.clone(),
    );
    let pool = Family::<PoolLabels, Gauge>::default();
    registry.register(
        "db_pool_connections",
        "database pool connections by pool and state",
        pool.clone(),
    );
    // 1 to 512 writes.
    let group_commit = Histogram::new(exponential_buckets(1.0, 2.0, 10));
    registry.register(
        "sqlite_group_commit_writes",
        "writes committed together by one SQLite commit (group commit)",
        group_commit.clone(),
    );
    let batches = Family::<BatchLabels, Gauge>::default();
    registry.register(
        "postgres_decision_batches",
        "deductions decided together in one transaction since start (PostgreSQL), by figure: \
         batches (of two or more), deductions (in them), largest (batch), failed (batches decided \
         member by member), settle_batches (of two or more card answers), settled (answers in them)",
        batches.clone(),
    );
    let replica_lag = Gauge::default();
    registry.register(
        "read_replica_lag_bytes",
        "WAL bytes the read replica has still to apply to reach the primary's insert position \
         (read at scrape; 0 with no read replica)",
        replica_lag.clone(),
    );
    Metrics {
        registry,
        batches,
        replica_lag,
        rpcs,
        latency,
        decisions,
        unknown_charges,
        pool,
        group_commit,
    }
});

/// Records one SQLite commit of `writes` grouped writes.
pub fn record_group_commit(writes: u32) {
    METRICS.group_commit.observe(f64::from(writes));
}

/// Records one finished RPC.
pub fn record_rpc(method: &str, code: &str, elapsed: Duration) {
    let metrics = &*METRICS;
    metrics
        .rpcs
        .get_or_create(&RpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&MethodLabels {
            method: method.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Records a deduction's outcome (after any card charge).
pub fn record_decision(status: &str, reason: Option<&str>) {
    let labels = DecisionLabels {
        status: status.to_owned(),
        reason: reason.unwrap_or("").to_owned(),
    };
    METRICS.decisions.get_or_create(&labels).inc();
}

/// The gRPC method of a request path (`/withholding.v1.X/Method` → `X/Method`).
fn method_of(path: &str) -> String {
    path.trim_start_matches('/')
        .rsplit_once('.')
        .map_or(path, |(_, m)| m)
        .to_owned()
}

/// The gRPC status code name of a response whose status is in its headers (errors answered
/// before any message); a unary answer with a message carries it in trailers and is OK.
fn code_of(headers: &http::HeaderMap) -> &'static str {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) else {
        return "OK";
    };
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "CANCELLED",
        Ok(tonic::Code::Unknown) | Err(_) => "UNKNOWN",
        Ok(tonic::Code::InvalidArgument) => "INVALID_ARGUMENT",
        Ok(tonic::Code::DeadlineExceeded) => "DEADLINE_EXCEEDED",
        Ok(tonic::Code::NotFound) => "NOT_FOUND",
        Ok(tonic::Code::AlreadyExists) => "ALREADY_EXISTS",
        Ok(tonic::Code::PermissionDenied) => "PERMISSION_DENIED",
        Ok(tonic::Code::ResourceExhausted) => "RESOURCE_EXHAUSTED",
        Ok(tonic::Code::FailedPrecondition) => "FAILED_PRECONDITION",
        Ok(tonic::Code::Aborted) => "ABORTED",
        Ok(tonic::Code::OutOfRange) => "OUT_OF_RANGE",
        Ok(tonic::Code::Unimplemented) => "UNIMPLEMENTED",
        Ok(tonic::Code::Internal) => "INTERNAL",
        Ok(tonic::Code::Unavailable) => "UNAVAILABLE",
        Ok(tonic::Code::DataLoss) => "DATA_LOSS",
        Ok(tonic::Code::Unauthenticated) => "UNAUTHENTICATED",
    }
}

/// A tower layer that times every request and counts it by method and status code.
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(response) => code_of(response.headers()),
                Err(_) => "UNAVAILABLE",
            };
            record_rpc(&method, code, started.elapsed());
            response
        })
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, db: Database) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let db = db.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MAX_REQUEST_BYTES];
            let mut read = 0;
            // Read the request head (bounded in size and time); the body, if any, is ignored.
            while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buffer.len() {
                match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer[read..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(n)) => read += n,
                }
            }
            let head = String::from_utf8_lossy(&buffer[..read]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", render(&db).await)
            } else {
                (
                    "404 Not Found",
                    "not found; metrics are at /metrics\n".to_owned(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The text exposition, with the gauges read from the database now.
async fn render(db: &Database) -> String {
    let metrics = &*METRICS;
    match db.deductions.unknown_charges().await {
        Ok(n) => {
            metrics.unknown_charges.set(n);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: counting unknown charges failed"),
    }
    for (pool, size, idle) in db.mandates.pool_stats() {
        let gauge = |state: &str| {
            metrics
                .pool
                .get_or_create(&PoolLabels {
                    pool: pool.to_owned(),
                    state: state.to_owned(),
                })
                .clone()
        };
        gauge("open").set(i64::from(size));
        gauge("idle").set(i64::try_from(idle).unwrap_or(i64::MAX));
    }
    if let Some(stats) = db.deductions.decision_batches() {
        for (figure, value) in [
            ("batches", stats.batches),
            ("deductions", stats.deductions),
            ("largest", stats.largest),
            ("failed", stats.failed),
            ("settle_batches", stats.settle_batches),
            ("settled", stats.settled),
        ] {
            let labels = BatchLabels {
                figure: figure.to_owned(),
            };
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            metrics.batches.get_or_create(&labels).set(value);
        }
    }
    match db.mandates.replica_lag_bytes().await {
        Ok(lag) => {
            let lag = lag.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
            metrics.replica_lag.set(lag);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: reading the read replica's lag failed"),
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &metrics.registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_rpcs_are_encoded() {
        record_rpc("X/Y", "OK", Duration::from_millis(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &METRICS.registry).unwrap();
        assert!(
            text.contains(r#"withholding_rpc_requests_total{method="X/Y",code="OK"} 1"#),
            "{text}"
        );
    }
}
