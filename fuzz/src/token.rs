//! Target `bearer_token`: the bearer-token path, against an authenticator configured like the
//! server's (an HS256 secret with no `kid`, and the RS256, ES256 and EdDSA public keys of
//! `tests/fixtures` as `rsa-1`, `ec-1` and `ed-1`; 30 s leeway).
//!
//! The first byte picks a mode:
//! - 0: the rest is an `authorization` header value (any bytes a header value may hold), sent
//!   through `AuthInterceptor`;
//! - 1: the rest is a token, given to `Authenticator::authenticate`;
//! - 2: a structurally valid JWT whose parts are fuzzed. The second byte picks a [`Signer`];
//!   the rest is `header JSON 0xFF claims JSON 0xFF signature bytes`. The JSON parts are
//!   base64url-encoded as they are, and the signature is either the given bytes or made by the
//!   signer over the first two parts.
//!
//! Whatever the mode: no panic; a refusal is UNAUTHENTICATED; and an accepted token is signed
//! by a configured key with that key's own algorithm, and carries the right `iss` and `aud`, an
//! unexpired `exp`, and the `sub` and `role` of the actor it yielded.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::Value;
use tonic::service::Interceptor;
use tonic::{Code, Extensions, Request};
use withholding::domain::actor::Actor;
use withholding::grpc::auth::{AuthInterceptor, Authenticator, VerifyKey};

pub const ISSUER: &str = "fuzz-issuer";
pub const AUDIENCE: &str = "fuzz-audience";
pub const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";
/// The server's default leeway.
const LEEWAY_S: u64 = 30;
/// Separates the parts of a mode-2 input; it cannot occur in UTF-8 JSON.
pub const SEPARATOR: u8 = 0xFF;

pub const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rsa-public.pem");
pub const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rsa-private.pem");
pub const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ec-public.pem");
pub const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ec-private.pem");
pub const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ed-public.pem");
pub const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ed-private.pem");

/// How the signature of a mode-2 token is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The fuzzed bytes themselves.
    Raw,
    /// The configured keys, each with its own algorithm.
    Hs256,
    Rs256,
    Es256,
    EdDsa,
    /// Keys or algorithms the server does not trust: a wrong secret; the public keys used as
    /// HMAC secrets (algorithm confusion); the right secret or RSA key with another algorithm.
    Hs256WrongSecret,
    Hs256KeyedWithRsaPublic,
    Hs256KeyedWithEcPublic,
    Hs384,
    Ps256,
}

impl Signer {
    pub const ALL: [Self; 10] = [
        Self::Raw,
        Self::Hs256,
        Self::Rs256,
        Self::Es256,
        Self::EdDsa,
        Self::Hs256WrongSecret,
        Self::Hs256KeyedWithRsaPublic,
        Self::Hs256KeyedWithEcPublic,
        Self::Hs384,
        Self::Ps256,
    ];

    /// The selector byte of a mode-2 input.
    pub fn byte(self) -> u8 {
        let index = Self::ALL.iter().position(|s| *s == self);
        u8::try_from(index.expect("listed")).expect("10 signers")
    }

    fn sign(self, message: &[u8], raw: &[u8]) -> String {
        let (key, algorithm) = match self {
            Self::Raw => return URL_SAFE_NO_PAD.encode(raw),
            Self::Hs256 => (&KEYS.hs256, Algorithm::HS256),
            Self::Rs256 => (&KEYS.rsa, Algorithm::RS256),
            Self::Es256 => (&KEYS.ec, Algorithm::ES256),
            Self::EdDsa => (&KEYS.ed, Algorithm::EdDSA),
            Self::Hs256WrongSecret => (&KEYS.wrong_secret, Algorithm::HS256),
            Self::Hs256KeyedWithRsaPublic => (&KEYS.rsa_public_as_secret, Algorithm::HS256),
            Self::Hs256KeyedWithEcPublic => (&KEYS.ec_public_as_secret, Algorithm::HS256),
            Self::Hs384 => (&KEYS.hs256, Algorithm::HS384),
            Self::Ps256 => (&KEYS.rsa, Algorithm::PS256),
        };
        jsonwebtoken::crypto::sign(message, key, algorithm).expect("signing with a test key")
    }
}

/// A mode-2 token: the parts encoded as given, signed by `signer`.
pub fn assemble(header_json: &[u8], claims_json: &[u8], signer: Signer, raw: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let signature = signer.sign(message.as_bytes(), raw);
    format!("{message}.{signature}")
}

struct Keys {
    hs256: EncodingKey,
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    wrong_secret: EncodingKey,
    rsa_public_as_secret: EncodingKey,
    ec_public_as_secret: EncodingKey,
    /// What the server trusts, rebuilt here to check acceptances independently of its
    /// key selection.
    trusted: Vec<(DecodingKey, Algorithm)>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    hs256: EncodingKey::from_secret(SECRET),
    rsa: EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa fixture"),
    ec: EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec fixture"),
    ed: EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed fixture"),
    wrong_secret: EncodingKey::from_secret(b"not-the-fuzz-secret-not-the-fuzz-secret"),
    rsa_public_as_secret: EncodingKey::from_secret(RSA_PUBLIC),
    ec_public_as_secret: EncodingKey::from_secret(EC_PUBLIC),
    // Cheapest verification first.
    trusted: vec![
        (DecodingKey::from_secret(SECRET), Algorithm::HS256),
        (
            DecodingKey::from_ed_pem(ED_PUBLIC).expect("ed fixture"),
            Algorithm::EdDSA,
        ),
        (
            DecodingKey::from_ec_pem(EC_PUBLIC).expect("ec fixture"),
            Algorithm::ES256,
        ),
        (
            DecodingKey::from_rsa_pem(RSA_PUBLIC).expect("rsa fixture"),
            Algorithm::RS256,
        ),
    ],
});

/// The keys of `serve --jwt-public-key rsa-1:RS256:… ec-1:ES256:… ed-1:EdDSA:…` with an HS256
/// key file: what `config::authenticator` builds from those flags.
static AUTHENTICATOR: LazyLock<Arc<Authenticator>> = LazyLock::new(|| {
    let keys = vec![
        VerifyKey::public_pem("rsa-1".into(), Algorithm::RS256, RSA_PUBLIC).expect("rsa"),
        VerifyKey::public_pem("ec-1".into(), Algorithm::ES256, EC_PUBLIC).expect("ec"),
        VerifyKey::public_pem("ed-1".into(), Algorithm::EdDSA, ED_PUBLIC).expect("ed"),
        VerifyKey::hs256(None, SECRET),
    ];
    let authenticator = Authenticator::new(keys, ISSUER.into(), AUDIENCE.into(), LEEWAY_S);
    Arc::new(authenticator.expect("authenticator"))
});

/// The authenticator under test (for the replay tests).
pub fn authenticator() -> &'static Authenticator {
    &AUTHENTICATOR
}

pub fn check(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_header(rest),
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check_token(token);
            }
        }
        _ => {
            let Some((signer, parts)) = rest.split_first() else {
                return;
            };
            let signer = Signer::ALL[usize::from(*signer) % Signer::ALL.len()];
            let mut parts = parts.splitn(3, |b| *b == SEPARATOR);
            let header_json = parts.next().unwrap_or_default();
            let claims_json = parts.next().unwrap_or_default();
            let raw = parts.next().unwrap_or_default();
            check_token(&assemble(header_json, claims_json, signer, raw));
        }
    }
}

fn check_header(value: &[u8]) {
    // Bytes no header value may hold never reach the interceptor: the HTTP/2 layer refuses them.
    let Ok(value) = http::HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    let request = Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers),
        Extensions::default(),
        (),
    );
    let mut interceptor = AuthInterceptor(Arc::clone(&AUTHENTICATOR));
    match interceptor.call(request) {
        Ok(request) => {
            let actor = request
                .extensions()
                .get::<Actor>()
                .expect("an accepted request carries its actor");
            // RFC 6750: `Bearer ` and the token (the service also takes `bearer `).
            let value = value.to_str().expect("an accepted header value is text");
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .expect("an accepted header names the Bearer scheme")
                .trim();
            check_accepted(token, actor);
        }
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
    }
}

fn check_token(token: &str) {
    if let Ok(actor) = AUTHENTICATOR.authenticate(token) {
        check_accepted(token, &actor);
    }
}

/// What must hold of every token the service accepts.
fn check_accepted(token: &str, actor: &Actor) {
    let (message, signature) = token.rsplit_once('.').expect("a JWT has three parts");
    let signed_by_a_trusted_key = KEYS.trusted.iter().any(|(key, algorithm)| {
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, *algorithm)
            .unwrap_or(false)
    });
    assert!(
        signed_by_a_trusted_key,
        "accepted a token no configured key signed: {token}"
    );

    let (_, claims) = message.rsplit_once('.').expect("a JWT has three parts");
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .expect("accepted claims are base64url");
    // Read leniently: serde does not check UTF-8 in the claims the service ignores (`scope`,
    // `iat`, unknown ones), so a trusted key may sign such bytes there and be accepted.
    let claims = String::from_utf8_lossy(&claims);
    let claims: Value = serde_json::from_str(&claims).expect("accepted claims are JSON");
    assert_eq!(claims["iss"], ISSUER, "{claims}");
    let audience_ok = match &claims["aud"] {
        Value::String(aud) => aud == AUDIENCE,
        Value::Array(list) => list.iter().any(|aud| aud == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "{claims}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let leeway = LEEWAY_S as f64;
    let exp = claims["exp"].as_f64().expect("accepted exp is a number");
    assert!(exp + leeway >= now, "expired: {claims}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("accepted nbf is a number");
        assert!(nbf - leeway <= now, "not yet valid: {claims}");
    }
    assert_eq!(claims["sub"], actor.subject.as_str(), "{claims}");
    assert_eq!(claims["role"], actor.role.as_str(), "{claims}");
    if let Some(merchant) = &actor.merchant_id {
        assert_eq!(claims["merchant_id"], merchant.as_str(), "{claims}");
    }
}
