//! Introspection against a real HTTP server on an ephemeral loopback port
//! that records every request it is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::form_urlencoded;

use super::read_answer;
use crate::test_keys::{forge_raw, jwks, TestKey};
use crate::{
    ClientAuth, ConfigError, IntrospectionConfig, IssuerConfig, KeySource, NoopObserver, TokenError,
    Validator,
};

const ISS: &str = "https://idp.test";
const AUD: &str = "phigate-test";
/// Needs form-urlencoding in the Basic header (space, colon, slash, plus).
const CLIENT: &str = "gate way:1";
const SECRET: &str = "s3cr:t/+ü";
const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

/// [`Idp::set_delay`] value: read the request, never answer.
const HANG: u64 = u64::MAX;

/// One request the server read.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: String,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

/// A real issuer: `GET /jwks.json` serves the key set, every other request
/// is an introspection request, recorded and answered with the configured
/// status and body.
struct Idp {
    base: String,
    answer: Arc<StdMutex<(u16, String)>>,
    requests: Arc<StdMutex<Vec<Recorded>>>,
    delay_ms: Arc<AtomicU64>,
}

impl Idp {
    async fn start(jwks_body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(StdMutex::new((200u16, json!({"active": false}).to_string())));
        let requests = Arc::new(StdMutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (a, r, d) = (answer.clone(), requests.clone(), delay_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (a, r, d, jwks_body) = (a.clone(), r.clone(), d.clone(), jwks_body.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    let (status, body) = if req.method == "GET" && req.path == "/jwks.json" {
                        (200, jwks_body)
                    } else {
                        r.lock().unwrap().push(req);
                        match d.load(Ordering::SeqCst) {
                            0 => {}
                            HANG => std::future::pending::<()>().await,
                            ms => tokio::time::sleep(Duration::from_millis(ms)).await,
                        }
                        a.lock().unwrap().clone()
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Idp {
            base,
            answer,
            requests,
            delay_ms,
        }
    }

    fn answer(&self, status: u16, body: impl Into<String>) {
        *self.answer.lock().unwrap() = (status, body.into());
    }

    fn answer_json(&self, body: Value) {
        self.answer(200, body.to_string());
    }

    fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Introspection requests seen so far.
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().unwrap()
    }

    fn endpoint(&self) -> String {
        format!("{}/oauth2/introspect", self.base)
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8(got[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = got[head_end + 4..].to_vec();
    while body.len() < len {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn basic() -> ClientAuth {
    ClientAuth::ClientSecretBasic {
        secret: SECRET.into(),
    }
}

fn issuer_with(endpoint: &str, base: &str, auth: ClientAuth) -> IssuerConfig {
    let mut c = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        KeySource::JwksUri(format!("{base}/jwks.json")),
    );
    c.introspection = Some(IntrospectionConfig::new(endpoint, CLIENT, auth));
    c
}

fn validator(c: IssuerConfig) -> Validator {
    Validator::new(vec![c], Arc::new(NoopObserver)).unwrap()
}

/// An IdP with no signing keys and a validator introspecting at it.
async fn setup(tune: impl FnOnce(&mut IssuerConfig)) -> (Idp, Validator) {
    let idp = Idp::start(jwks(&[])).await;
    let mut c = issuer_with(&idp.endpoint(), &idp.base, basic());
    tune(&mut c);
    (idp, validator(c))
}

fn intro(c: &mut IssuerConfig) -> &mut IntrospectionConfig {
    c.introspection.as_mut().unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn active() -> Value {
    json!({
        "active": true, "iss": ISS, "aud": [AUD, "other"], "sub": "u1",
        "client_id": "app", "scope": "patient/*.read openid patient/*.read",
        "roles": ["clinician"], "iat": now(), "exp": now() + 300,
        "sid": "s-1", "cnf": {"jkt": "abc"}, "token_type": "Bearer",
    })
}

#[tokio::test]
async fn active_token_yields_identity_scopes_and_claims() {
    let (idp, v) = setup(|_| {}).await;
    idp.answer_json(active());
    let t = v.validate(OPAQUE).await.unwrap();
    assert_eq!(t.issuer, ISS);
    assert_eq!(t.subject.as_deref(), Some("u1"));
    assert_eq!(t.client_id.as_deref(), Some("app"));
    assert_eq!(t.scopes, vec!["patient/*.read", "openid"]);
    assert_eq!(t.roles, vec!["clinician"]);
    assert_eq!(t.kid, None);
    assert!(t.expires_at > now());
    assert_eq!(t.claims["sid"], "s-1");
    assert_eq!(t.claims["cnf"]["jkt"], "abc");
    assert!(t.claims.contains_key("iat"));
}

#[tokio::test]
async fn request_is_a_form_post_with_basic_client_auth() {
    let (idp, v) = setup(|_| {}).await;
    idp.answer_json(active());
    let token = "opaque-~+/token==";
    v.validate(token).await.unwrap();
    assert_eq!(idp.count(), 1);
    let r = idp.last();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/oauth2/introspect")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("accept"), Some("application/json"));
    let form = r.form();
    assert_eq!(form.len(), 2, "{form:?}");
    assert_eq!(form["token"], token);
    assert_eq!(form["token_type_hint"], "access_token");
    // RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined and base64-encoded.
    let b64 = r.header("authorization").unwrap().strip_prefix("Basic ").unwrap();
    let pair = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
    let (id, secret) = pair.split_once(':').unwrap();
    assert!(!id.contains(':') && !secret.contains(':'), "{pair}");
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned()
    };
    assert_eq!(decode(id), CLIENT);
    assert_eq!(decode(secret), SECRET);
}

#[tokio::test]
async fn issuer_scope_and_role_claims_are_honoured() {
    let (idp, v) = setup(|c| {
        c.scope_claim = Some("scp".into());
        c.roles_claim = "realm_access.roles".into();
    })
    .await;
    let mut a = active();
    a["scp"] = json!(["x", "y"]);
    a["realm_access"] = json!({"roles": ["admin"]});
    a.as_object_mut().unwrap().remove("iss");
    idp.answer_json(a);
    let t = v.validate(OPAQUE).await.unwrap();
    assert_eq!(t.scopes, vec!["x", "y"]);
    assert_eq!(t.roles, vec!["admin"]);
    // Without `iss` in the answer the configured issuer is the issuer.
    assert_eq!(t.issuer, ISS);
}

/// A PKCS#8 PEM P-256 private key and the public key's JWK coordinates.
fn p256_pem() -> (String, String, String) {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = STANDARD.encode(doc.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (
        pem,
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

#[tokio::test]
async fn private_key_jwt_assertion_verifies_with_the_public_key() {
    let (pem, x, y) = p256_pem();
    let idp = Idp::start(jwks(&[])).await;
    let auth = ClientAuth::PrivateKeyJwt {
        key_pem: pem,
        alg: Algorithm::ES256,
        kid: Some("client-key-1".into()),
    };
    let v = validator(issuer_with(&idp.endpoint(), &idp.base, auth));
    idp.answer_json(active());
    v.validate(OPAQUE).await.unwrap();
    v.validate("another-token").await.unwrap();
    let requests = idp.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let mut jtis = Vec::new();
    for r in &requests {
        assert_eq!(r.header("authorization"), None);
        let form = r.form();
        assert_eq!(form["client_id"], CLIENT);
        assert_eq!(
            form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(form["token_type_hint"], "access_token");
        let assertion = &form["client_assertion"];
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.kid.as_deref(), Some("client-key-1"));
        let mut val = Validation::new(Algorithm::ES256);
        val.set_audience(&[idp.endpoint()]);
        val.set_issuer(&[CLIENT]);
        val.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let key = DecodingKey::from_ec_components(&x, &y).unwrap();
        let claims = jsonwebtoken::decode::<Value>(assertion, &key, &val)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], CLIENT);
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, 60);
        assert!(iat.abs_diff(now()) <= 5);
        jtis.push(claims["jti"].as_str().unwrap().to_string());
    }
    assert_eq!(requests[0].form()["token"], OPAQUE);
    assert_ne!(jtis[0], jtis[1], "every assertion has a fresh jti");
    assert!(jtis[0].len() >= 16);
}

#[tokio::test]
async fn inactive_token_is_refused_and_cached_for_the_negative_ttl() {
    let (idp, v) = setup(|c| intro(c).negative_cache_ttl = Duration::from_millis(400)).await;
    idp.answer_json(json!({"active": false}));
    assert_eq!(v.validate(OPAQUE).await.unwrap_err(), TokenError::Inactive);
    assert_eq!(v.validate(OPAQUE).await.unwrap_err(), TokenError::Inactive);
    assert_eq!(idp.count(), 1, "the refusal is cached");
    tokio::time::sleep(Duration::from_millis(600)).await;
    idp.answer_json(active());
    assert!(
        v.validate(OPAQUE).await.is_ok(),
        "asked again after the negative ttl"
    );
    assert_eq!(idp.count(), 2);
}

#[tokio::test]
async fn active_answer_is_cached_for_at_most_cache_ttl() {
    let (idp, v) = setup(|c| intro(c).cache_ttl = Duration::from_millis(400)).await;
    idp.answer_json(active());
    let first = v.validate(OPAQUE).await.unwrap();
    let second = v.validate(OPAQUE).await.unwrap();
    assert_eq!(idp.count(), 1, "the second validation makes no request");
    assert!(Arc::ptr_eq(&first, &second));
    // Another token is another cache entry.
    v.validate("other-token").await.unwrap();
    assert_eq!(idp.count(), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    idp.answer_json(json!({"active": false}));
    assert_eq!(v.validate(OPAQUE).await.unwrap_err(), TokenError::Inactive);
    assert_eq!(idp.count(), 3, "revocation is seen once cache_ttl is over");
}

#[tokio::test]
async fn cache_entry_ends_at_exp() {
    let (idp, v) = setup(|c| c.leeway = Duration::ZERO).await;
    let mut a = active();
    a["exp"] = json!(now() + 1);
    idp.answer_json(a);
    v.validate(OPAQUE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(v.validate(OPAQUE).await.unwrap_err(), TokenError::Expired);
    assert_eq!(idp.count(), 2, "not served from the cache past exp");
}

#[tokio::test]
async fn expired_and_wrong_audience_answers_are_refused() {
    let (idp, v) = setup(|_| {}).await;
    let mut a = active();
    a["exp"] = json!(now() - 120);
    idp.answer_json(a);
    assert_eq!(v.validate("tok-expired").await.unwrap_err(), TokenError::Expired);
    let mut a = active();
    a["aud"] = json!(["someone-else"]);
    idp.answer_json(a);
    assert_eq!(
        v.validate("tok-aud").await.unwrap_err(),
        TokenError::WrongAudience
    );
    assert_eq!(idp.count(), 2);
    // Refusals are cached like `active: false`.
    idp.answer_json(active());
    assert_eq!(
        v.validate("tok-aud").await.unwrap_err(),
        TokenError::WrongAudience
    );
    assert_eq!(idp.count(), 2);
}

#[test]
fn every_answer_rule_has_its_own_outcome() {
    let mut c = IssuerConfig::new(ISS, vec![AUD.into()], KeySource::Discovery);
    c.max_token_lifetime = None;
    let t = 1_000_000u64;
    let base = || json!({"active": true, "iss": ISS, "aud": AUD, "iat": t - 10, "exp": t + 300});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base();
        f(&mut v);
        v.to_string()
    };
    type Expect = Result<Result<(), TokenError>, ()>;
    let ok: Expect = Ok(Ok(()));
    let refused = |e| -> Expect { Ok(Err(e)) };
    let unusable: Expect = Err(());
    let cases: Vec<(&str, String, Expect)> = vec![
        ("active", base().to_string(), ok),
        ("minimal", r#"{"active":true}"#.into(), ok),
        ("aud string", with(&|v| v["aud"] = json!(AUD)), ok),
        ("aud list", with(&|v| v["aud"] = json!(["x", AUD])), ok),
        ("exp within leeway", with(&|v| v["exp"] = json!(t - 10)), ok),
        (
            "fractional exp",
            with(&|v| v["exp"] = json!((t + 5) as f64 + 0.5)),
            ok,
        ),
        (
            "inactive",
            r#"{"active":false}"#.into(),
            refused(TokenError::Inactive),
        ),
        (
            "inactive with claims",
            with(&|v| v["active"] = json!(false)),
            refused(TokenError::Inactive),
        ),
        (
            "expired",
            with(&|v| v["exp"] = json!(t - 31)),
            refused(TokenError::Expired),
        ),
        (
            "wrong aud",
            with(&|v| v["aud"] = json!("x")),
            refused(TokenError::WrongAudience),
        ),
        (
            "wrong aud list",
            with(&|v| v["aud"] = json!(["x", 1])),
            refused(TokenError::WrongAudience),
        ),
        (
            "other iss",
            with(&|v| v["iss"] = json!("https://evil.test")),
            refused(TokenError::UnknownIssuer),
        ),
        (
            "nbf ahead",
            with(&|v| v["nbf"] = json!(t + 60)),
            refused(TokenError::NotYetValid),
        ),
        (
            "iat ahead",
            with(&|v| v["iat"] = json!(t + 60)),
            refused(TokenError::NotYetValid),
        ),
        (
            "refresh token",
            with(&|v| v["token_type"] = json!("refresh_token")),
            refused(TokenError::Malformed),
        ),
        (
            "hydra refresh",
            with(&|v| v["token_use"] = json!("refresh_token")),
            refused(TokenError::Malformed),
        ),
        ("garbage", "<html>login</html>".into(), unusable),
        ("empty", String::new(), unusable),
        ("array", "[]".into(), unusable),
        ("no active", r#"{"sub":"u"}"#.into(), unusable),
        ("active string", r#"{"active":"true"}"#.into(), unusable),
        ("active number", r#"{"active":1}"#.into(), unusable),
        (
            "duplicate active",
            r#"{"active":false,"active":true}"#.into(),
            unusable,
        ),
        ("exp string", with(&|v| v["exp"] = json!("soon")), unusable),
        ("exp negative", with(&|v| v["exp"] = json!(-1)), unusable),
        ("aud object", with(&|v| v["aud"] = json!({})), unusable),
        ("iss number", with(&|v| v["iss"] = json!(1)), unusable),
    ];
    for (name, body, want) in cases {
        let got = read_answer(body.as_bytes(), &c, Duration::from_secs(60), t)
            .map(|r| r.map(|_| ()))
            .map_err(|_| ());
        assert_eq!(got, want, "{name}");
    }
    // Without `exp` the identity lasts as long as it may be cached.
    let v = read_answer(br#"{"active":true}"#, &c, Duration::from_secs(60), t)
        .unwrap()
        .unwrap();
    assert_eq!(v.expires_at, t + 60);
    // max_token_lifetime applies as for JWTs.
    c.max_token_lifetime = Some(Duration::from_secs(100));
    let lifetime = |body: &str| read_answer(body.as_bytes(), &c, Duration::from_secs(60), t).unwrap();
    assert_eq!(
        lifetime(&base().to_string()).unwrap_err(),
        TokenError::LifetimeExceeded
    );
    assert_eq!(
        lifetime(r#"{"active":true}"#).unwrap_err(),
        TokenError::LifetimeExceeded
    );
    let short = with(&|v| v["exp"] = json!(t + 50));
    assert!(lifetime(&short).is_ok());
}

#[tokio::test]
async fn endpoint_failures_are_unavailable_and_not_cached() {
    let (idp, v) = setup(|c| intro(c).timeout = Duration::from_millis(300)).await;
    let bodies = [
        (500, json!({"active": true}).to_string()),
        (401, json!({"error": "invalid_client"}).to_string()),
        (302, String::new()),
        (200, "garbage".to_string()),
        (200, json!({"sub": "u1"}).to_string()),
        (
            200,
            format!("{{\"active\":true,\"pad\":\"{}\"}}", "x".repeat(70 * 1024)),
        ),
    ];
    for (status, body) in bodies {
        idp.answer(status, body);
        let before = idp.count();
        assert_eq!(
            v.validate(OPAQUE).await.unwrap_err(),
            TokenError::IntrospectionUnavailable,
            "status {status}"
        );
        assert_eq!(idp.count(), before + 1, "not cached: status {status}");
    }
    // Times out.
    idp.answer_json(active());
    idp.set_delay(HANG);
    let start = std::time::Instant::now();
    assert_eq!(
        v.validate(OPAQUE).await.unwrap_err(),
        TokenError::IntrospectionUnavailable
    );
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    // Recovers once the endpoint answers again.
    idp.set_delay(0);
    assert!(v.validate(OPAQUE).await.is_ok());
}

#[tokio::test]
async fn endpoint_down_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let base = format!("http://{addr}");
    let v = validator(issuer_with(&format!("{base}/introspect"), &base, basic()));
    assert_eq!(
        v.validate(OPAQUE).await.unwrap_err(),
        TokenError::IntrospectionUnavailable
    );
}

#[tokio::test]
async fn concurrent_validations_share_one_request() {
    let (idp, v) = setup(|_| {}).await;
    idp.answer_json(active());
    idp.set_delay(300);
    let v = Arc::new(v);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let v = v.clone();
        tasks.spawn(async move { v.validate(OPAQUE).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().is_ok());
    }
    assert_eq!(idp.count(), 1);
}

#[tokio::test]
async fn jwt_shaped_tokens_never_reach_the_endpoint() {
    let k = TestKey::es256("k1");
    let idp = Idp::start(jwks(&[&k])).await;
    idp.answer_json(active());
    let v = validator(issuer_with(&idp.endpoint(), &idp.base, basic()));
    assert!(v.refresh_all().await);
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "u1", "iat": now(), "exp": now() + 300});
    let t = v.validate(&k.sign(&claims)).await.unwrap();
    assert_eq!(t.kid.as_deref(), Some("k1"));
    let payload = claims.to_string();
    let mut other_iss = claims.clone();
    other_iss["iss"] = json!("https://other.test");
    let cases = [
        (k.sign(&other_iss), TokenError::UnknownIssuer),
        (TestKey::es256("k1").sign(&claims), TokenError::InvalidSignature),
        (
            forge_raw(r#"{"alg":"none"}"#, &payload, b""),
            TokenError::UnsupportedAlgorithm,
        ),
        (
            forge_raw(r#"{"alg":"ES256","kid":"k1"}"#, "not json", b"sig"),
            TokenError::Malformed,
        ),
        (
            forge_raw(r#"{"alg":"ES256","crit":["x"]}"#, &payload, b"sig"),
            TokenError::Malformed,
        ),
    ];
    for (token, want) in cases {
        assert_eq!(v.validate(&token).await.unwrap_err(), want, "{token}");
    }
    assert_eq!(idp.count(), 0);
    // Three dotted segments whose first is no JSON object are opaque.
    v.validate("abc.def.ghi").await.unwrap();
    assert_eq!(idp.count(), 1);
}

#[tokio::test]
async fn tokens_outside_bearer_syntax_are_malformed_without_a_request() {
    let (idp, v) = setup(|c| c.max_token_bytes = 64).await;
    idp.answer_json(active());
    for t in ["a b", "tok\"en", "tok%en", "==", "tök", "a=b", &"a".repeat(65)] {
        assert_eq!(v.validate(t).await.unwrap_err(), TokenError::Malformed, "{t}");
    }
    assert_eq!(idp.count(), 0);
}

#[tokio::test]
async fn without_introspection_opaque_tokens_stay_malformed() {
    let idp = Idp::start(jwks(&[])).await;
    let c = IssuerConfig::new(
        ISS,
        vec![AUD.into()],
        KeySource::JwksUri(format!("{}/jwks.json", idp.base)),
    );
    let v = validator(c);
    assert_eq!(v.validate(OPAQUE).await.unwrap_err(), TokenError::Malformed);
    assert_eq!(idp.count(), 0);
}

#[test]
fn bad_introspection_settings_are_config_errors() {
    let (pem, _, _) = p256_pem();
    let jwt = |alg, key_pem: &str| ClientAuth::PrivateKeyJwt {
        key_pem: key_pem.into(),
        alg,
        kid: None,
    };
    let build = |endpoint: &str, auth: ClientAuth| {
        Validator::new(vec![issuer_with(endpoint, ISS, auth)], Arc::new(NoopObserver)).map(|_| ())
    };
    let good = "https://idp.test/introspect";
    assert!(build(good, basic()).is_ok());
    assert!(build("http://127.0.0.1:9/introspect", basic()).is_ok());
    assert!(build("http://[::1]:9/introspect", basic()).is_ok());
    assert!(build("http://localhost:9/introspect", basic()).is_ok());
    assert!(build(good, jwt(Algorithm::ES256, &pem)).is_ok());
    let bad: Vec<(&str, Result<(), ConfigError>)> = vec![
        ("plain http", build("http://idp.test/introspect", basic())),
        ("not a url", build("idp.test/introspect", basic())),
        (
            "credentials in url",
            build("https://u:p@idp.test/introspect", basic()),
        ),
        (
            "empty secret",
            build(
                good,
                ClientAuth::ClientSecretBasic {
                    secret: String::new(),
                },
            ),
        ),
        ("hmac alg", build(good, jwt(Algorithm::HS256, &pem))),
        ("ec key for rsa alg", build(good, jwt(Algorithm::RS256, &pem))),
        (
            "garbage key",
            build(
                good,
                jwt(
                    Algorithm::ES256,
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
            ),
        ),
    ];
    for (name, r) in bad {
        match r {
            Err(ConfigError::Introspection { issuer, reason }) => {
                assert_eq!(issuer, ISS, "{name}");
                assert!(!reason.contains("BEGIN"), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut empty_id = issuer_with(good, ISS, basic());
    intro(&mut empty_id).client_id = String::new();
    assert!(matches!(
        Validator::new(vec![empty_id], Arc::new(NoopObserver)),
        Err(ConfigError::Introspection { .. })
    ));
    // Two issuers with introspection: an opaque token could go to either.
    let mut second = issuer_with("https://idp2.test/introspect", ISS, basic());
    second.issuer = "https://idp2.test".into();
    let r = Validator::new(
        vec![issuer_with(good, ISS, basic()), second],
        Arc::new(NoopObserver),
    );
    match r {
        Err(ConfigError::MultipleIntrospectionIssuers(names)) => {
            assert_eq!(names, vec![ISS.to_string(), "https://idp2.test".to_string()])
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let (pem, _, _) = p256_pem();
    let c = issuer_with("https://idp.test/i", ISS, basic());
    let jwt = ClientAuth::PrivateKeyJwt {
        key_pem: pem.clone(),
        alg: Algorithm::ES256,
        kid: Some("k".into()),
    };
    let text = format!("{c:?} {jwt:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}
