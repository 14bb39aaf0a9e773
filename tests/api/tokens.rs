//! Bearer tokens (DESIGN §2): every malformed, mis-signed, mis-addressed or out-of-date token is
//! UNAUTHENTICATED and changes nothing; the configured RS256, ES256 and EdDSA keys are accepted;
//! the 30 s leeway is honoured; health checks need no token.

use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use withholding::grpc::auth::VerifyKey;
use withholding::pb;

use crate::both_backends;
use crate::harness::*;

/// Unpadded base64url (RFC 7515 §2), to build tokens by hand.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with the given header and claims and a signature made of `signature` (possibly empty).
fn hand_made(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

/// Signs with an explicit header and key (for kid/algorithm mismatches).
fn sign_raw(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Valid merchant claims for `m-1`, as of the system clock.
fn good() -> Value {
    claims(Timestamp::now(), "merchant", "billing", Some("m-1"))
}

fn without(claim: &str) -> Value {
    let mut c = good();
    c.as_object_mut()
        .unwrap()
        .remove(claim)
        .expect("claim present");
    c
}

fn with(claim: &str, value: Value) -> Value {
    let mut c = good();
    c[claim] = value;
    c
}

/// Every token here must be refused with UNAUTHENTICATED.
fn refused_tokens() -> Vec<(&'static str, Option<String>)> {
    let t = now();
    let rsa_private = EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap();
    let valid = sign(good(), None);
    let (valid_head, valid_rest) = valid.split_once('.').unwrap();
    let valid_sig = valid_rest.split_once('.').unwrap().1;
    vec![
        ("no token", None),
        ("garbage", Some("garbage".into())),
        ("three garbage parts", Some("abc.def.ghi".into())),
        (
            "wrong HS256 secret",
            Some(sign_raw(
                Algorithm::HS256,
                None,
                &good(),
                &EncodingKey::from_secret(b"not-the-test-secret-not-the-test-secret"),
            )),
        ),
        (
            "alg none, empty signature",
            Some(hand_made(
                json!({"alg": "none", "typ": "JWT"}),
                &good(),
                b"",
            )),
        ),
        (
            "alg HS256, empty signature",
            Some(hand_made(
                json!({"alg": "HS256", "typ": "JWT"}),
                &good(),
                b"",
            )),
        ),
        (
            "payload swapped under a valid signature",
            Some(format!(
                "{valid_head}.{}.{valid_sig}",
                b64url(
                    claims(Timestamp::now(), "operator", "ops-1", None)
                        .to_string()
                        .as_bytes()
                )
            )),
        ),
        (
            "expired beyond the leeway",
            Some(sign(
                with("exp", json!(t - 120)).tap(|c| c["nbf"] = json!(t - 600)),
                None,
            )),
        ),
        (
            "not yet valid",
            Some(sign(with("nbf", json!(t + 600)), None)),
        ),
        (
            "wrong iss",
            Some(sign(with("iss", json!("someone-else")), None)),
        ),
        (
            "wrong aud",
            Some(sign(with("aud", json!("another-service")), None)),
        ),
        ("missing exp", Some(sign(without("exp"), None))),
        ("missing aud", Some(sign(without("aud"), None))),
        ("missing iss", Some(sign(without("iss"), None))),
        ("missing sub", Some(sign(without("sub"), None))),
        ("missing role", Some(sign(without("role"), None))),
        (
            "unknown kid",
            Some(sign_raw(
                Algorithm::RS256,
                Some("rsa-2"),
                &good(),
                &rsa_private,
            )),
        ),
        (
            "HS256 token naming kid rsa-1",
            Some(sign_raw(
                Algorithm::HS256,
                Some("rsa-1"),
                &good(),
                &EncodingKey::from_secret(SECRET),
            )),
        ),
        (
            "HS256 signed with the RSA public key as secret, kid rsa-1",
            Some(sign_raw(
                Algorithm::HS256,
                Some("rsa-1"),
                &good(),
                &EncodingKey::from_secret(&fixture("rsa-public.pem")),
            )),
        ),
        (
            "RS256 token naming kid ec-1",
            Some(sign_raw(
                Algorithm::RS256,
                Some("ec-1"),
                &good(),
                &rsa_private,
            )),
        ),
        (
            "exp as a string",
            Some(sign(with("exp", json!("9999999999")), None)),
        ),
        (
            "unknown role",
            Some(sign(
                claims(Timestamp::now(), "superuser", "root", None),
                None,
            )),
        ),
        (
            "role in upper case",
            Some(sign(
                claims(Timestamp::now(), "MERCHANT", "billing", Some("m-1")),
                None,
            )),
        ),
        (
            "merchant without merchant_id",
            Some(sign(
                claims(Timestamp::now(), "merchant", "billing", None),
                None,
            )),
        ),
        (
            "merchant_id not an identifier",
            Some(sign(with("merchant_id", json!("m 1")), None)),
        ),
        (
            "sub not an identifier",
            Some(sign(with("sub", json!("bill ing")), None)),
        ),
    ]
}

/// `Value::tap`, so a case can adjust one more claim inline.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn assert_unauthenticated<T: std::fmt::Debug>(name: &str, result: Result<T, tonic::Status>) {
    match result {
        Ok(ok) => panic!("{name}: accepted, answered {ok:?}"),
        Err(status) => assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{name}: {}",
            status.message()
        ),
    }
}

/// ListMandates and GetMandate (on a real mandate) refuse every bad token, and leave no trace:
/// not even an access-refusal audit event, since nobody was identified.
async fn bad_tokens_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let mandate = create_mandate(&app, "c-tokens").await;
    let before = app.counts().await;
    for (name, token) in refused_tokens() {
        let mut client = app.client_with(token).await;
        assert_unauthenticated(
            name,
            client
                .list_mandates(pb::ListMandatesRequest::default())
                .await,
        );
        assert_unauthenticated(
            name,
            client
                .get_mandate(pb::GetMandateRequest {
                    mandate_id: mandate.mandate_id.clone(),
                    as_of: None,
                })
                .await,
        );
        assert_unauthenticated(
            name,
            client
                .create_mandate(create_request("c-tok-2", "p-1"))
                .await,
        );
    }
    assert_eq!(app.counts().await, before);
    // The same server still serves a good token, and the mandate is untouched.
    let listed = app
        .merchant("m-1")
        .await
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mandates, vec![mandate]);
}

/// The fixture keys are accepted, each by its kid, and name the right caller: a merchant token
/// for m-1 signed with any of them sees m-1's mandate.
async fn public_key_tokens_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mandate = create_mandate(&app, "c-keys").await;
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = sign(good(), Some(kid));
        let listed = app
            .client_with(Some(token))
            .await
            .list_mandates(pb::ListMandatesRequest::default())
            .await
            .unwrap_or_else(|s| panic!("{kid}: {s:?}"))
            .into_inner();
        assert_eq!(listed.mandates, vec![mandate.clone()], "{kid}");
    }
    // Another merchant's token, with a public key, sees nothing of m-1.
    let other = sign(
        claims(Timestamp::now(), "merchant", "billing", Some("m-2")),
        Some("ec-1"),
    );
    let listed = app
        .client_with(Some(other))
        .await
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.mandates.is_empty());
}

/// Clock skew up to the configured 30 s is tolerated on `exp` and `nbf`.
async fn skew_inside_the_leeway_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    let cases = [
        (
            "expired 10 s ago",
            with("exp", json!(t - 10)).tap(|c| c["nbf"] = json!(t - 600)),
        ),
        ("valid in 10 s", with("nbf", json!(t + 10))),
    ];
    for (name, claims) in cases {
        for kid in [None, Some("rsa-1")] {
            app.client_with(Some(sign(claims.clone(), kid)))
                .await
                .list_mandates(pb::ListMandatesRequest::default())
                .await
                .unwrap_or_else(|s| panic!("{name} ({kid:?}): {s:?}"));
        }
    }
}

/// A server that trusts only an RSA key refuses HS256 tokens, even ones signed with the RSA
/// public key as an HMAC secret, and accepts RS256 tokens.
async fn only_rs_keys_configured(backend: Backend) {
    let app = spawn_app_with(
        backend,
        vec![
            VerifyKey::public_pem("rsa-1".into(), Algorithm::RS256, &fixture("rsa-public.pem"))
                .unwrap(),
        ],
    )
    .await;
    let hs = [
        ("HS256 with the test secret", sign(good(), None)),
        (
            "HS256 with the RSA public key as secret, kid rsa-1",
            sign_raw(
                Algorithm::HS256,
                Some("rsa-1"),
                &good(),
                &EncodingKey::from_secret(&fixture("rsa-public.pem")),
            ),
        ),
        ("ES256 kid ec-1", sign(good(), Some("ec-1"))),
    ];
    for (name, token) in hs {
        assert_unauthenticated(
            name,
            app.client_with(Some(token))
                .await
                .list_mandates(pb::ListMandatesRequest::default())
                .await,
        );
    }
    let mut merchant = app.client_with(Some(sign(good(), Some("rsa-1")))).await;
    let created = merchant
        .create_mandate(create_request("c-rs-only", "p-1"))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap();
    let listed = merchant
        .list_mandates(pb::ListMandatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mandates, vec![created]);
}

both_backends!(
    bad_tokens_are_unauthenticated,
    public_key_tokens_are_accepted,
    skew_inside_the_leeway_is_accepted,
    only_rs_keys_configured,
);

/// Health (and only health) answers without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "withholding.v1.MandateService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{service:?}: {s:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    assert_unauthenticated(
        "mandate service without token",
        app.client_with(None)
            .await
            .list_mandates(pb::ListMandatesRequest::default())
            .await,
    );
}

/// jsonwebtoken 10+ panics at run time when no crypto backend feature is enabled: this proves
/// one is, by signing and verifying with every algorithm family the service accepts.
#[test]
fn crypto_backend_is_compiled_in() {
    let claims = json!({
        "sub": "s-1", "role": "auditor", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
    });
    let keys = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
            DecodingKey::from_rsa_pem(&fixture("rsa-public.pem")).unwrap(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap(),
            DecodingKey::from_ec_pem(&fixture("ec-public.pem")).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&fixture("ed-private.pem")).unwrap(),
            DecodingKey::from_ed_pem(&fixture("ed-public.pem")).unwrap(),
        ),
    ];
    for (alg, encoding, decoding) in keys {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let decoded = jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(decoded.header.alg, alg);
        assert_eq!(decoded.claims, claims, "{alg:?}");
        // Verification really checks the signature: a changed payload is refused.
        let (head, rest) = token.split_once('.').unwrap();
        let signature = rest.split_once('.').unwrap().1;
        let forged = format!(
            "{head}.{}.{signature}",
            b64url(
                claims
                    .clone()
                    .tap(|c| c["sub"] = json!("s-2"))
                    .to_string()
                    .as_bytes()
            )
        );
        assert!(
            jsonwebtoken::decode::<Value>(&forged, &decoding, &validation).is_err(),
            "{alg:?}: forged token accepted"
        );
    }
}

#[test]
fn b64url_matches_rfc_4648_vectors() {
    // RFC 4648 §10, without padding, plus the two URL-safe characters.
    for (input, expected) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(input.as_bytes()), expected, "{input:?}");
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}
