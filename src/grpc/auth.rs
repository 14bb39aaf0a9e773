//! Bearer-token authentication (DESIGN §2). Every RPC of the withholding services passes through
//! [`AuthInterceptor`], which verifies the JWT against the configured keys and puts the caller's
//! [`Actor`] into the request's extensions; health and reflection are not intercepted.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::actor::{Actor, Role};
use crate::domain::ids::MerchantId;
use crate::domain::text::check_identifier;

/// Largest clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_S: u64 = 60;

/// One key that may have signed a token.
pub struct VerifyKey {
    /// The `kid` a token names to pick this key; `None` for the key of kid-less tokens.
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl VerifyKey {
    /// A shared HS256 secret (the embedded default).
    pub fn hs256(kid: Option<String>, secret: &[u8]) -> Self {
        Self {
            kid,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public key in PEM for RS256, ES256 or EdDSA (production).
    pub fn public_pem(kid: String, algorithm: Algorithm, pem: &[u8]) -> Result<Self, String> {
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            other => {
                return Err(format!(
                    "algorithm {other:?} is not allowed for public keys"
                ));
            }
        }
        .map_err(|e| format!("key {kid}: {e}"))?;
        Ok(Self {
            kid: Some(kid),
            algorithm,
            key,
        })
    }
}

/// Why a token was refused. The caller sees only the short text, never the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token header")]
    BadHeader,
    #[error("no key for this token's kid and algorithm")]
    UnknownKey,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token claims are not valid: {0}")]
    BadClaims(&'static str),
}

/// The identity claims this service reads, once `jsonwebtoken` has checked `exp`, `iss`, `aud`
/// and `nbf` (whose shapes, such as an audience list, are its business).
#[derive(Debug, Deserialize)]
struct IdentityClaims {
    sub: String,
    role: String,
    #[serde(default)]
    merchant_id: Option<String>,
    /// Read as a number of either kind: `jsonwebtoken` has already checked it is a time.
    exp: f64,
}

/// The claims of a token this service mints (the `token` command, tests).
#[derive(Debug, Serialize)]
pub struct Claims {
    pub sub: String,
    /// `merchant`, `payer`, `auditor` or `operator`.
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// Verifies tokens against a fixed set of keys, issuer and audience.
pub struct Authenticator {
    keys: Vec<VerifyKey>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

impl Authenticator {
    pub fn new(
        keys: Vec<VerifyKey>,
        issuer: String,
        audience: String,
        leeway_s: u64,
    ) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no token verification keys configured".into());
        }
        if leeway_s > MAX_LEEWAY_S {
            return Err(format!("leeway must be at most {MAX_LEEWAY_S} s"));
        }
        Ok(Self {
            keys,
            issuer,
            audience,
            leeway_s,
        })
    }

    /// Verifies `token` and returns who it names.
    pub fn authenticate(&self, token: &str) -> Result<Actor, AuthError> {
        self.authenticate_until(token).map(|(actor, _)| actor)
    }

    /// Verifies `token` and returns who it names and when it expires (seconds since the
    /// epoch): a console session never outlives the token it was opened with.
    pub fn authenticate_until(&self, token: &str) -> Result<(Actor, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::BadHeader)?;
        // The key is chosen by kid from a fixed list, and must be of the token's algorithm:
        // an HS256 token can never be checked against an RSA public key used as a secret.
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == header.kid && k.algorithm == header.alg)
            .ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<IdentityClaims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let exp = data.claims.exp as i64;
        Ok((actor_from(data.claims)?, exp))
    }
}

fn actor_from(claims: IdentityClaims) -> Result<Actor, AuthError> {
    let role = Role::from_claim(&claims.role).ok_or(AuthError::BadClaims("unknown role"))?;
    check_identifier("sub", &claims.sub)
        .map_err(|_| AuthError::BadClaims("sub is not an identifier"))?;
    let merchant_id = match (role, claims.merchant_id) {
        (Role::Merchant | Role::Auditor, Some(id)) => Some(
            MerchantId::parse("merchant_id", &id)
                .map_err(|_| AuthError::BadClaims("merchant_id is not an identifier"))?,
        ),
        (Role::Merchant, None) => {
            return Err(AuthError::BadClaims("a merchant token needs merchant_id"));
        }
        // A payer or operator is not scoped to a merchant: a merchant_id claim means nothing.
        (_, _) => None,
    };
    Ok(Actor {
        role,
        subject: claims.sub,
        merchant_id,
    })
}

/// Signs a token with an HS256 secret: the `token` command and tests use it with the dev key.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Puts the authenticated [`Actor`] into each request's extensions, or answers UNAUTHENTICATED.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<Authenticator>);

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let result = token
            .ok_or(AuthError::Missing)
            .and_then(|t| self.0.authenticate(t));
        match result {
            Ok(actor) => {
                request.extensions_mut().insert(actor);
                Ok(request)
            }
            Err(e) => {
                tracing::info!(error = %e, "unauthenticated request refused");
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }
}

/// The actor the interceptor stored; its absence is a wiring bug, reported as UNAUTHENTICATED.
pub fn actor<T>(request: &Request<T>) -> Result<Actor, Status> {
    request
        .extensions()
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}
