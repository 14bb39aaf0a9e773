//! Per-call transport bounds and the statuses of tonic's own refusals: an oversized header list
//! is refused for that call alone, and a request body that does not decode is INVALID_ARGUMENT.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::Status;

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

/// Rewrites tonic's INTERNAL answer to a request body that does not decode as
/// INVALID_ARGUMENT, keeping its message (which names the field prost stopped at): the caller
/// sent bytes that are not the request message, and INTERNAL would tell it the server failed.
/// The answer comes before any handler runs, so it is always in the response headers
/// ("trailers-only"). Handlers never answer INTERNAL with tonic's wording (the one error mapping
/// gives callers a generic message), so nothing else is rewritten.
pub fn decode_error_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let undecodable = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .is_some_and(|m| DECODE_FAILURES.iter().any(|f| m.starts_with(f)));
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
    response
}
