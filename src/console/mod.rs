//! The compliance console (DESIGN §10): read-only HTML pages for auditors, operators and
//! merchants, on a listener of its own. Pages read through the service layer exactly as the
//! API does — same role rule per section, same tenancy, same recorded reads — and every page a
//! signed-in person opens is itself an audit event (`CONSOLE_VIEW`, on the viewer's chain).
//!
//! Safe by construction: every value goes through maud's escaping; no page carries script, and
//! the Content-Security-Policy forbids any; the session cookie is HttpOnly and SameSite=Strict;
//! a request is bounded in URI length, body size and time.

mod chart;
mod csv;
mod layout;
mod pages;
mod session;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jiff::{SignedDuration, Timestamp};
use maud::html;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::domain::terms::TimeZoneName;
use crate::grpc::auth::Authenticator;
use crate::service::{
    AuditService, DeductionService, Error, MandateService, Rpc, SettlementService,
};

pub use layout::Section;
use session::Sessions;

/// Longest request URI (path and query) a page accepts.
pub const MAX_URI_BYTES: usize = 2048;
/// Largest request body: a sign-in token or an uploaded checkpoint file.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a page may take to answer (a CSV export's body streams on past it).
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// What pages may load: their own stylesheet, nothing else; no script at all.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the console is run.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Longest a session lasts (never past its token's expiry).
    pub session_lifetime: SignedDuration,
    /// The zone "today" and dates on pages are in.
    pub time_zone: TimeZoneName,
}

/// The console's state, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

struct Inner {
    authenticator: Arc<Authenticator>,
    mandates: MandateService,
    deductions: DeductionService,
    audit: AuditService,
    settlement: SettlementService,
    clock: Arc<dyn Clock>,
    settings: ConsoleSettings,
    sessions: Sessions,
    verifications: verify::Jobs,
}

/// The services the pages read through.
pub struct Services {
    pub mandates: MandateService,
    pub deductions: DeductionService,
    pub audit: AuditService,
    pub settlement: SettlementService,
}

impl Console {
    pub fn new(
        authenticator: Arc<Authenticator>,
        services: Services,
        clock: Arc<dyn Clock>,
        settings: ConsoleSettings,
    ) -> Self {
        Self(Arc::new(Inner {
            authenticator,
            mandates: services.mandates,
            deductions: services.deductions,
            audit: services.audit,
            settlement: services.settlement,
            clock,
            sessions: Sessions::new(settings.session_lifetime),
            settings,
            verifications: verify::Jobs::default(),
        }))
    }

    fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    /// Every route, with the headers and bounds every answer carries.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to(Section::Today.path()) }))
            .route(
                "/sign-in",
                get(pages::sign_in::form).post(pages::sign_in::submit),
            )
            .route("/sign-out", post(pages::sign_in::sign_out))
            .route("/today", get(pages::today::page))
            .route("/mandates", get(pages::mandates::search))
            .route("/mandates/{id}", get(pages::mandates::timeline))
            .route("/audit", get(pages::audit::page))
            .route("/audit.csv", get(pages::audit::csv))
            .route("/settlement", get(pages::settlement::page))
            .route("/settlement.csv", get(pages::settlement::csv))
            .route("/reconciliation", get(pages::reconciliation::page))
            .route("/verify", get(verify::form).post(verify::start))
            .route("/verify/checkpoint", post(verify::checkpoint))
            .route("/verify/{job}", get(verify::progress))
            .route("/static/console.css", get(stylesheet))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(middleware::from_fn(bounded))
            .layer(middleware::map_response(secure_headers))
            .with_state(self)
    }
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    console: Console,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, console.router().into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Where the console listens, for start-up messages and tests.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// A signed-in person, taken from the session cookie. Extracting it records the page view;
/// without a live session the request is sent to sign in.
pub struct Viewer {
    pub actor: Actor,
}

impl Viewer {
    /// The section's (or action's) RPC must be one the viewer's role may call: the console
    /// grants no more than the API.
    pub fn may(&self, rpc: Rpc) -> Result<(), Failure> {
        if rpc.permits(&self.actor) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "role {} may not call {}",
            self.actor.role.as_str(),
            rpc.name()
        ))
        .into())
    }
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let session = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::id_from_cookies)
            .and_then(|id| console.0.sessions.get(id, console.now()));
        let Some(session) = session else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        let page = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Err(e) = console.0.audit.record_view(&session.actor, &page).await {
            // A view that cannot be recorded is not shown.
            return Err(Failure::from(e).into_response());
        }
        Ok(Viewer {
            actor: session.actor,
        })
    }
}

/// Why a page could not be shown, as the API would say it, with the HTTP status that goes with
/// it.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub fn bad_input(violation: FieldViolation) -> Self {
        Self::from(Error::InvalidArgument(violation))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::FailedPrecondition { .. } | Error::AlreadyExists { .. } => StatusCode::CONFLICT,
            Error::OutOfRange(_) => StatusCode::BAD_REQUEST,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Aborted(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(cause) => {
                tracing::error!(error = %cause, "console page failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<FieldViolation> for Failure {
    fn from(v: FieldViolation) -> Self {
        Self::bad_input(v)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = layout::bare(
            title,
            html! {
                p.error { (self.message) }
                p { a href=(Section::Today.path()) { "Back to the console" } }
            },
        );
        (self.status, body).into_response()
    }
}

async fn not_found() -> Failure {
    Failure::from(Error::NotFound { what: "page" })
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/console.css"),
    )
        .into_response()
}

/// Refuses over-long URIs and bounds how long a page may take.
async fn bounded(request: Request, next: Next) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        let failure = Failure {
            status: StatusCode::URI_TOO_LONG,
            message: format!("the address is longer than {MAX_URI_BYTES} bytes"),
        };
        return failure.into_response();
    }
    match tokio::time::timeout(PAGE_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the page took too long; narrow the selection and retry".into(),
        }
        .into_response(),
    }
}

/// Headers on every answer: the Content-Security-Policy, no sniffing, no framing, no referrer,
/// and no caching of pages that hold audit data.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    response
}
