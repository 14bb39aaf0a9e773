//! Transport bounds over real gRPC: an oversized header list is refused for that call alone; a
//! request body that does not decode is INVALID_ARGUMENT on every service.

use tonic::Code;
use tonic::transport::Channel;
use withholding::app::MAX_REQUEST_HEADER_BYTES;
use withholding::pb;
use withholding::pb::mandate_service_client::MandateServiceClient;

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

/// Sends arbitrary bytes as a request message (tonic frames them) and reads any answer as bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len).to_vec()))
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The status of a unary (or server-streaming) call whose request message is `bytes`.
async fn raw_call(
    channel: &Channel,
    path: &'static str,
    streaming: bool,
    token: Option<&str>,
    bytes: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let request = with_token(bytes, token);
    let route = http::uri::PathAndQuery::from_static(path);
    if streaming {
        let mut answers = match grpc.server_streaming(request, route, RawCodec).await {
            Ok(answers) => answers.into_inner(),
            Err(status) => return status,
        };
        loop {
            match answers.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{path}: stream ended without an error"),
                Err(status) => return status,
            }
        }
    } else {
        grpc.unary(request, route, RawCodec)
            .await
            .expect_err("undecodable request answered")
    }
}

/// The status of a call whose HTTP/2 request body is `body` as sent, gRPC framing included.
async fn raw_body_call(
    channel: &Channel,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> tonic::Status {
    use tonic::codegen::Body as _;
    use tower::ServiceExt as _;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(tonic::body::Body::new(body.to_owned()))
        .unwrap();
    let response = channel.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
            .await
            .expect("answer without a status")
            .unwrap();
        if let Ok(trailers) = frame.into_trailers() {
            return tonic::Status::from_header_map(&trailers).expect("trailers without a status");
        }
    }
}

/// Request bodies that are not the request message answer INVALID_ARGUMENT on every service
/// (tonic answers INTERNAL; tonic-reflection ends its stream with OK), and the connection goes
/// on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument() {
    // No database is involved: decoding fails before any handler runs.
    let app = spawn_app(Backend::Sqlite).await;
    let channel = one_connection(&app).await;
    let merchant = app.merchant_token("m-1");
    let operator = app.operator_token();

    // Field 15, unknown to every request message, as 200 nested groups (prost stops at 100).
    let mut nested_groups = vec![0x7b; 200];
    nested_groups.extend([0x7c; 200]);
    let messages: [(&str, Vec<u8>, &str); 3] = [
        ("nested groups", nested_groups, "recursion limit reached"),
        // Field 15 as a varint whose continuation byte never ends.
        ("truncated varint", vec![0x78, 0xff], "invalid varint"),
        // Field 1 (a string in every request below) sent as a varint.
        ("wrong wire type", vec![0x08, 0x01], "invalid wire type"),
    ];
    let rpcs: [(&'static str, bool, Option<&str>); 5] = [
        (
            "/withholding.v1.MandateService/CreateMandate",
            false,
            Some(&merchant),
        ),
        (
            "/withholding.v1.DeductionService/CreateDeduction",
            false,
            Some(&merchant),
        ),
        (
            "/withholding.v1.WalletService/CreditWallet",
            false,
            Some(&operator),
        ),
        ("/grpc.health.v1.Health/Check", false, None),
        ("/grpc.health.v1.Health/Watch", true, None),
    ];
    for (path, streaming, token) in rpcs {
        for (what, bytes, detail) in &messages {
            let status = raw_call(&channel, path, streaming, token, bytes.clone()).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{path}, {what}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains("failed to decode Protobuf message")
                    && status.message().contains(detail),
                "{path}, {what}: {status:?}"
            );
        }
        // gRPC framing: a message cut short, a compressed flag that is neither 0 nor 1, and a
        // unary call without a message.
        for (what, body, detail) in [
            ("cut short", "\0\0\0\0\x0aabc", "Unexpected EOF"),
            ("bad flag", "\x02\0\0\0\0", "invalid compression flag: 2"),
            ("no message", "", "Missing request message"),
        ] {
            if streaming && body.is_empty() {
                continue;
            }
            let status = raw_body_call(&channel, path, token, body).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{path}, {what}: {status:?}"
            );
            assert!(
                status.message().contains(detail),
                "{path}, {what}: {status:?}"
            );
        }
    }

    // Reflection's stream (client-streaming): a good request is answered, then the first
    // request that does not decode ends the call with INVALID_ARGUMENT (tonic-reflection alone
    // ended it with OK, answering nothing).
    let list_services = {
        use prost::Message as _;
        tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        }
        .encode_to_vec()
    };
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        for (what, bytes, detail) in &messages {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let requests = tokio_stream::iter([list_services.clone(), bytes.clone()]);
            let mut answers = grpc
                .streaming(
                    tonic::Request::new(requests),
                    http::uri::PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await
                .unwrap()
                .into_inner();
            let first = answers.message().await;
            assert!(
                matches!(first, Ok(Some(ref answer)) if !answer.is_empty()),
                "{path}, {what}: {first:?}"
            );
            let status = answers.message().await.expect_err("no refusal");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{path}, {what}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains("failed to decode Protobuf message")
                    && status.message().contains(detail),
                "{path}, {what}: {status:?}"
            );
        }
    }

    // A reflection request over the message bound is RESOURCE_EXHAUSTED, as on every method.
    let oversized = {
        use prost::Message as _;
        tonic_reflection::pb::v1::ServerReflectionRequest {
            host: "x".repeat(withholding::app::MAX_REQUEST_BYTES),
            message_request: None,
        }
        .encode_to_vec()
    };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut answers = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([list_services.clone(), oversized])),
            http::uri::PathAndQuery::from_static(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    let status = answers.message().await.expect_err("no refusal");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The same connection serves a well-formed call.
    let mut client = MandateServiceClient::with_interceptor(channel, Bearer(Some(merchant)));
    client
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap();
}

/// What a server's reflection (`v1`, or `v1alpha` when `alpha`) lists, and for each service the
/// name of its first method, read from the descriptor reflection serves for it.
async fn reflected_services(
    addr: std::net::SocketAddr,
    alpha: bool,
) -> std::collections::BTreeMap<String, String> {
    use prost::Message as _;
    use tonic_reflection::pb::{v1, v1alpha};

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Both versions carry the same messages; v1alpha's answers are re-encoded as v1's.
    let ask = |request: v1::server_reflection_request::MessageRequest| {
        let channel = channel.clone();
        async move {
            let request = v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            if alpha {
                let request =
                    v1alpha::ServerReflectionRequest::decode(request.encode_to_vec().as_slice())
                        .unwrap();
                let mut answers =
                    v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
                        .server_reflection_info(tokio_stream::iter([request]))
                        .await
                        .unwrap()
                        .into_inner();
                let answer = answers.message().await.unwrap().unwrap();
                v1::ServerReflectionResponse::decode(answer.encode_to_vec().as_slice())
                    .unwrap()
                    .message_response
                    .unwrap()
            } else {
                let mut answers =
                    v1::server_reflection_client::ServerReflectionClient::new(channel)
                        .server_reflection_info(tokio_stream::iter([request]))
                        .await
                        .unwrap()
                        .into_inner();
                answers
                    .message()
                    .await
                    .unwrap()
                    .unwrap()
                    .message_response
                    .unwrap()
            }
        }
    };
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("no service list");
    };
    let mut services = std::collections::BTreeMap::new();
    for service in list.service {
        let MessageResponse::FileDescriptorResponse(files) =
            ask(MessageRequest::FileContainingSymbol(service.name.clone())).await
        else {
            panic!("no descriptor for {}", service.name);
        };
        let file =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        let descriptor = file
            .service
            .iter()
            .find(|s| format!("{}.{}", file.package(), s.name()) == service.name)
            .unwrap_or_else(|| panic!("{} not in its file", service.name));
        services.insert(service.name, descriptor.method[0].name().to_owned());
    }
    services
}

/// Each listed service is routed: its first method, called with an empty message, is
/// answered with anything but UNIMPLEMENTED.
async fn assert_served(
    addr: std::net::SocketAddr,
    services: &std::collections::BTreeMap<String, String>,
) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (service, method) in services {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path: http::uri::PathAndQuery = format!("/{service}/{method}").parse().unwrap();
        let answer = grpc
            .unary(tonic::Request::new(vec![]), path, RawCodec)
            .await;
        if let Err(status) = answer {
            assert_ne!(
                status.code(),
                Code::Unimplemented,
                "{service}/{method}: {status:?}"
            );
        }
    }
}

const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The main server's reflection lists exactly the services it serves, in both versions: the
/// withholding.v1 API, health and reflection, never the bank's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_what_the_server_serves() {
    // No database is involved: reflection and routing only.
    let app = spawn_app(Backend::Sqlite).await;
    for alpha in [false, true] {
        let services = reflected_services(app.addr, alpha).await;
        let names: Vec<&str> = services.keys().map(String::as_str).collect();
        let mut expected = vec![
            "grpc.health.v1.Health",
            "withholding.v1.AuditService",
            "withholding.v1.DeductionService",
            "withholding.v1.EventService",
            "withholding.v1.MandateService",
            "withholding.v1.MerchantPolicyService",
            "withholding.v1.SettlementService",
            "withholding.v1.WalletService",
        ];
        expected.extend(REFLECTION);
        expected.sort_unstable();
        assert_eq!(names, expected, "v1alpha: {alpha}");
        assert_served(app.addr, &services).await;
    }
}

/// The bank simulator's reflection lists its own services, in both versions, and not the
/// withholding API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_sim_reflection_lists_what_it_serves() {
    let bank = TestBank::start().await;
    for alpha in [false, true] {
        let services = reflected_services(bank.addr, alpha).await;
        let names: Vec<&str> = services.keys().map(String::as_str).collect();
        let mut expected = vec![
            "grpc.health.v1.Health",
            "withholding.bank.v1.BankGatewayService",
            "withholding.bank.v1.BankSimulatorService",
        ];
        expected.extend(REFLECTION);
        expected.sort_unstable();
        assert_eq!(names, expected, "v1alpha: {alpha}");
        assert_served(bank.addr, &services).await;
    }
}
