//! Per-call transport bounds and the statuses of tonic's own refusals: an oversized header list
//! is refused for that call alone, and a request body that does not decode is INVALID_ARGUMENT.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_core::Stream;
use http::HeaderValue;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// HTTP/2 counts each header field as its name, its value and 32 bytes (RFC 9113 §6.5.2,
/// RFC 7541 §4.1); pseudo-header fields count by their names (`:path`, …).
const FIELD_OVERHEAD_BYTES: usize = 32;

/// The size of a request's header list as HTTP/2 counts it, pseudo-header fields included:
/// the figure `SETTINGS_MAX_HEADER_LIST_SIZE` and [`HeaderBoundLayer`] compare with their bound.
pub fn header_list_bytes<B>(request: &http::Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ]
    .into_iter()
    .map(|(name, value)| name.len() + value + FIELD_OVERHEAD_BYTES);
    let fields = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD_BYTES);
    pseudo.chain(fields).sum()
}

/// Refuses a call whose header list is over `max_bytes` with RESOURCE_EXHAUSTED naming the
/// bound, before any service sees it. The HTTP/2 layer is configured to hand such calls over
/// (its own limit is far higher) because it can refuse them only with an HTTP 431, which gRPC
/// clients report as UNKNOWN, or, past four times its limit, by closing the whole connection.
#[derive(Debug, Clone, Copy)]
pub struct HeaderBoundLayer {
    max_bytes: usize,
}

impl HeaderBoundLayer {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> tower::Layer<S> for HeaderBoundLayer {
    type Service = HeaderBound<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HeaderBound {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderBound<S> {
    inner: S,
    max_bytes: usize,
}

impl<S, B, R> tower::Service<http::Request<B>> for HeaderBound<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let size = header_list_bytes(&request);
        if size > self.max_bytes {
            tracing::info!(
                path = request.uri().path(),
                header_bytes = size,
                "call refused: header list over its bound"
            );
            let status = Status::resource_exhausted(format!(
                "request headers (metadata) are {size} bytes, over the bound of {} bytes \
                 (counted as HTTP/2 does: name + value + 32 per field)",
                self.max_bytes
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

/// How tonic words its refusals of a request body it cannot decode, all answered INTERNAL:
/// prost's decode errors (`DecodeError`'s display), a body that ends inside a message, a unary
/// call without a message, and a bad compressed flag. Only a request is decoded on the server,
/// so any of these in a server's answer is about what the caller sent.
const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error: received message with",
];

fn is_decode_failure(message: &str) -> bool {
    DECODE_FAILURES.iter().any(|f| message.starts_with(f))
}

/// Rewrites tonic's INTERNAL answer to a request body that does not decode as
/// INVALID_ARGUMENT, keeping its message (which names the field prost stopped at): the caller
/// sent bytes that are not the request message, and INTERNAL would tell it the server failed.
/// On unary and server-streaming methods the answer comes before any handler runs, so it is
/// always in the response headers ("trailers-only"); the one client-streaming method served,
/// reflection's, is handled by [`DecodeCheckedReflection`]. Handlers never answer INTERNAL with
/// tonic's wording (the one error mapping gives callers a generic message), so nothing else is
/// rewritten.
pub fn decode_error_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let undecodable = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| is_decode_failure(&m.replace("%20", " ")));
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
    response
}

/// Server reflection whose requests are decoded here first. tonic-reflection's bidirectional
/// `ServerReflectionInfo` ends its answer stream with OK, answering nothing, when a request
/// does not decode; in front of it, the requests that decode are passed on (through an
/// in-process gRPC call to the wrapped service) and its answers passed back, and the first
/// request that does not decode ends the call with INVALID_ARGUMENT naming what prost found.
#[derive(Debug)]
pub struct DecodeCheckedReflection<S, Req, Resp> {
    inner: S,
    max_request_bytes: usize,
    _messages: PhantomData<fn(Req) -> Resp>,
}

impl<S: Clone, Req, Resp> Clone for DecodeCheckedReflection<S, Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_request_bytes: self.max_request_bytes,
            _messages: PhantomData,
        }
    }
}

impl<S: NamedService, Req, Resp> DecodeCheckedReflection<S, Req, Resp> {
    /// Wraps a reflection server (`v1` or `v1alpha`) whose request and response messages are
    /// `Req` and `Resp`; a request message over `max_request_bytes` is refused as any is.
    pub fn new(inner: S, max_request_bytes: usize) -> Self {
        Self {
            inner,
            max_request_bytes,
            _messages: PhantomData,
        }
    }
}

impl<S: NamedService, Req, Resp> NamedService for DecodeCheckedReflection<S, Req, Resp> {
    const NAME: &'static str = S::NAME;
}

impl<S, Req, Resp> tower::Service<http::Request<Body>> for DecodeCheckedReflection<S, Req, Resp>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    Req: prost::Message + Default + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The wrapped service is called through a clone of it, made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let path = format!("/{}/ServerReflectionInfo", S::NAME);
        if request.uri().path() != path {
            return Box::pin(tower::ServiceExt::oneshot(inner, request));
        }
        let forward = ForwardDecoded::<S, Req, Resp> {
            inner,
            path,
            _messages: PhantomData,
        };
        let mut server = tonic::server::Grpc::new(ProstCodec::<Resp, Req>::default())
            .max_decoding_message_size(self.max_request_bytes);
        Box::pin(async move { Ok(server.streaming(forward, request).await) })
    }
}

/// Passes decoded reflection requests to the wrapped server and its answers back.
struct ForwardDecoded<S, Req, Resp> {
    inner: S,
    /// The method's path, on the wrapped server as on this one.
    path: String,
    _messages: PhantomData<fn(Req) -> Resp>,
}

impl<S, Req, Resp> tonic::server::StreamingService<Req> for ForwardDecoded<S, Req, Resp>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    Req: prost::Message + Default + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    type Response = Resp;
    type ResponseStream = Pin<Box<dyn Stream<Item = Result<Resp, Status>> + Send>>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Self::ResponseStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Req>>) -> Self::Future {
        let refused = Arc::new(OnceLock::new());
        let requests = UntilUndecodable {
            incoming: request.into_inner(),
            refused: refused.clone(),
        };
        let mut client = tonic::client::Grpc::new(self.inner.clone());
        let path = http::uri::PathAndQuery::try_from(self.path.as_str());
        Box::pin(async move {
            let path = path.map_err(|e| {
                tracing::error!(error = %e, "reflection method path");
                Status::internal("internal error")
            })?;
            let Ok(()) = client.ready().await;
            // Only the messages are passed on: tonic-reflection reads nothing else.
            let answers = client
                .streaming(
                    Request::new(requests),
                    path,
                    ProstCodec::<Req, Resp>::default(),
                )
                .await?;
            let (metadata, answers, extensions) = answers.into_parts();
            let answers: Self::ResponseStream = Box::pin(ThenRefusal {
                answers: Some(answers),
                refused,
            });
            Ok(Response::from_parts(metadata, answers, extensions))
        })
    }
}

/// The incoming requests up to the first that cannot be read, whose refusal is kept in
/// `refused`: INVALID_ARGUMENT for one that does not decode, RESOURCE_EXHAUSTED for one over
/// the size bound (tonic says INTERNAL and OUT_OF_RANGE), any other as tonic says.
struct UntilUndecodable<Req> {
    incoming: Streaming<Req>,
    refused: Arc<OnceLock<Status>>,
}

impl<Req> Stream for UntilUndecodable<Req> {
    type Item = Req;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Req>> {
        if self.refused.get().is_some() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.incoming).poll_next(cx) {
            Poll::Ready(Some(Ok(request))) => Poll::Ready(Some(request)),
            Poll::Ready(Some(Err(status))) => {
                let status = match status.code() {
                    tonic::Code::Internal if is_decode_failure(status.message()) => {
                        Status::invalid_argument(status.message())
                    }
                    tonic::Code::OutOfRange
                        if status.message().contains("message length too large") =>
                    {
                        Status::resource_exhausted(status.message())
                    }
                    _ => status,
                };
                let _ = self.refused.set(status);
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The wrapped server's answers, then the refusal of the request that did not decode, if any.
struct ThenRefusal<Resp> {
    answers: Option<Streaming<Resp>>,
    refused: Arc<OnceLock<Status>>,
}

impl<Resp> Stream for ThenRefusal<Resp> {
    type Item = Result<Resp, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(answers) = self.answers.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(answers).poll_next(cx) {
            Poll::Ready(Some(Ok(answer))) => Poll::Ready(Some(Ok(answer))),
            Poll::Ready(Some(Err(status))) => {
                self.answers = None;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                self.answers = None;
                Poll::Ready(self.refused.get().cloned().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
