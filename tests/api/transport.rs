//! Transport bounds over real gRPC: an oversized header list is refused for that call alone.

use tonic::Code;
use tonic::transport::Channel;
use withholding::app::MAX_REQUEST_HEADER_BYTES;
use withholding::grpc::pb;
use withholding::grpc::pb::mandate_service_client::MandateServiceClient;

use crate::both_backends;
use crate::harness::*;

/// One HTTP/2 connection: every client made from it shares it.
async fn one_connection(app: &TestApp) -> Channel {
    Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Normal calls in flight on one connection while calls with oversized bearer tokens arrive
/// among them: each oversized call alone is refused with RESOURCE_EXHAUSTED naming the bound,
/// every other call is answered. h2 on its own answered 16–64 KiB with an HTTP 431 (UNKNOWN to
/// a gRPC client) and more with a GOAWAY that failed every call on the connection.
async fn oversized_headers_fail_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    let mandate = create_mandate(&app, "c-headers").await;
    let channel = one_connection(&app).await;
    let good = app.merchant_token("m-1");
    let oversized_kib = [20, 64, 100, 1024];

    let mut normal = vec![];
    let mut oversized = vec![];
    for i in 0..128 {
        let mut client =
            MandateServiceClient::with_interceptor(channel.clone(), Bearer(Some(good.clone())));
        normal.push(tokio::spawn(async move {
            client
                .list_mandates(pb::ListMandatesRequest::default())
                .await
        }));
        if i % 32 == 16 {
            let kib = oversized_kib[i / 32];
            let mut client = MandateServiceClient::with_interceptor(
                channel.clone(),
                Bearer(Some("x".repeat(kib * 1024))),
            );
            oversized.push((
                kib,
                tokio::spawn(async move {
                    client
                        .list_mandates(pb::ListMandatesRequest::default())
                        .await
                }),
            ));
        }
    }
    for (kib, call) in oversized {
        let status = call.await.unwrap().expect_err("oversized call answered");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{kib} KiB: {status:?}"
        );
        assert!(
            status.message().contains(&format!(
                "over the bound of {MAX_REQUEST_HEADER_BYTES} bytes"
            )),
            "{kib} KiB: {status:?}"
        );
    }
    for call in normal {
        let page = call
            .await
            .unwrap()
            .expect("normal call failed")
            .into_inner();
        assert_eq!(page.mandates.len(), 1);
        assert_eq!(page.mandates[0].mandate_id, mandate.mandate_id);
    }

    // Just under the bound the call reaches authentication (the token is not a JWT).
    let mut client = MandateServiceClient::with_interceptor(
        channel,
        Bearer(Some("x".repeat(MAX_REQUEST_HEADER_BYTES - 1024))),
    );
    let status = client
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

both_backends!(oversized_headers_fail_alone);
