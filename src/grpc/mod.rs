//! The gRPC surface: proto ⇄ domain conversion, authentication, handlers, and the single
//! mapping from service errors to status codes (the generated code is [`crate::pb`]).

mod audit;
pub mod auth;
pub mod convert;
mod deduction;
mod events;
mod mandate;
mod policy;
mod settlement;
pub mod status;
pub mod transport;

pub use audit::{AuditApi, checkpoint_from_json, checkpoint_json};
pub use deduction::{DeductionApi, WalletApi};
pub use events::EventApi;
pub use mandate::MandateApi;
pub use policy::PolicyApi;
pub use settlement::SettlementApi;

use prost::Message;
use sha2::{Digest, Sha256};

use tonic::{Request, Status};

use crate::domain::FieldViolation;
use crate::domain::actor::Actor;
use crate::service::{MandateService, Rpc};

/// The reflection server of one version, its requests decoded first (see
/// [`transport::DecodeCheckedReflection`]).
pub type Reflection<S, Req, Resp> = transport::DecodeCheckedReflection<S, Req, Resp>;

/// Server reflection, as both `v1` and `v1alpha` (grpcurl tries v1 first, older tools speak
/// only v1alpha), over `api` (the encoded descriptor set of the services this server serves),
/// health, both reflection versions and google.rpc (so generic clients can decode error
/// details): it lists exactly the services a server answers, never one it would answer
/// UNIMPLEMENTED. A request that does not decode is INVALID_ARGUMENT; `max_request_bytes` bounds
/// each request message, as the calling server bounds those of its own services.
#[allow(clippy::type_complexity)]
pub fn reflection_services(
    api: &'static [u8],
    max_request_bytes: usize,
) -> Result<
    (
        Reflection<
            tonic_reflection::server::v1::ServerReflectionServer<
                impl tonic_reflection::server::v1::ServerReflection,
            >,
            tonic_reflection::pb::v1::ServerReflectionRequest,
            tonic_reflection::pb::v1::ServerReflectionResponse,
        >,
        Reflection<
            tonic_reflection::server::v1alpha::ServerReflectionServer<
                impl tonic_reflection::server::v1alpha::ServerReflection,
            >,
            tonic_reflection::pb::v1alpha::ServerReflectionRequest,
            tonic_reflection::pb::v1alpha::ServerReflectionResponse,
        >,
    ),
    tonic_reflection::server::Error,
> {
    // Both reflection versions are served, so each lists both (by default each lists only its
    // own).
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(api)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        Reflection::new(builder().build_v1()?, max_request_bytes),
        Reflection::new(builder().build_v1alpha()?, max_request_bytes),
    ))
}

/// INVALID_ARGUMENT naming the field.
pub(crate) fn bad(violation: FieldViolation) -> Status {
    status::invalid_argument(violation)
}

/// The caller, if its role may call `rpc`; a refusal naming an existing mandate is audited.
pub(crate) async fn authorize<T>(
    mandates: &MandateService,
    request: &Request<T>,
    rpc: Rpc,
    mandate_id: Option<&str>,
) -> Result<Actor, Status> {
    let actor = auth::actor(request)?;
    if rpc.permits(&actor) {
        Ok(actor)
    } else {
        Err(mandates.refuse_role(&actor, rpc, mandate_id).await.into())
    }
}

/// Runs `work` to completion in its own task, whatever happens to the caller: tonic drops a
/// handler's future when the client goes away, and a write must not stop halfway. The task
/// runs in the handler's span, so what it logs names the RPC.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, crate::service::Error>> + Send + 'static,
) -> Result<T, Status> {
    use tracing::Instrument as _;
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "write task failed");
            Status::internal("internal error")
        })?
        .map_err(Status::from)
}

/// SHA-256 over the RPC name and the request as encoded: what an idempotency key is bound to.
pub(crate) fn fingerprint<M: Message>(rpc: Rpc, message: &M) -> String {
    let mut hash = Sha256::new();
    hash.update(rpc.name().as_bytes());
    hash.update([0]);
    hash.update(message.encode_to_vec());
    hex::encode(hash.finalize())
}

/// Page tokens are opaque to callers: the hex of the last id of the page.
pub(crate) fn encode_page_token(last: &str) -> String {
    hex::encode(last)
}

pub(crate) fn decode_page_token(token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldViolation::new("page_token", "is not a token this service issued");
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    crate::domain::text::check_identifier("page_token", &text).map_err(|_| invalid())?;
    Ok(Some(text))
}
