//! Tokens: the keys the test server trusts, claims, signing, and the interceptor that sends a
//! bearer token with every call.

use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use withholding::grpc::auth::VerifyKey;

pub const ISSUER: &str = "test-issuer";
pub const AUDIENCE: &str = "test-audience";
pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

/// A file of `tests/fixtures` (the key pairs of the public-key algorithms).
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// The HS256 secret and the public keys the test server trusts, by kid.
pub fn default_keys() -> Vec<VerifyKey> {
    vec![
        VerifyKey::hs256(None, SECRET),
        VerifyKey::public_pem("rsa-1".into(), Algorithm::RS256, &fixture("rsa-public.pem"))
            .unwrap(),
        VerifyKey::public_pem("ec-1".into(), Algorithm::ES256, &fixture("ec-public.pem")).unwrap(),
        VerifyKey::public_pem("ed-1".into(), Algorithm::EdDSA, &fixture("ed-public.pem")).unwrap(),
    ]
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// Signs claims with the HS256 test secret (or, with a kid, one of the fixture keys).
pub fn sign(claims: serde_json::Value, kid: Option<&str>) -> String {
    let (header, key) = match kid {
        None => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(SECRET),
        ),
        Some("rsa-1") => (
            Header::new(Algorithm::RS256),
            EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
        ),
        Some("ec-1") => (
            Header::new(Algorithm::ES256),
            EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap(),
        ),
        Some("ed-1") => (
            Header::new(Algorithm::EdDSA),
            EncodingKey::from_ed_pem(&fixture("ed-private.pem")).unwrap(),
        ),
        Some(other) => panic!("no fixture key {other}"),
    };
    let mut header = header;
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Standard claims valid at `now` for an hour.
pub fn claims(
    now: Timestamp,
    role: &str,
    sub: &str,
    merchant_id: Option<&str>,
) -> serde_json::Value {
    let now = now.as_second();
    let mut claims = json!({
        "sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE,
        "exp": now + 3600, "nbf": now - 1, "iat": now,
    });
    if let Some(m) = merchant_id {
        claims["merchant_id"] = json!(m);
    }
    claims
}
