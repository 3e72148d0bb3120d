use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::fetch::parse_max_age;
use super::verify::extract_roles;
use super::*;
use crate::test_keys::{forge_raw, jwks, TestKey};
use crate::{KeySource, NoopObserver};

pub(super) const ISS: &str = "https://idp.test";
const AUD: &str = "phigate-test";

mod key_changes;

/// A real HTTP JWKS server on an ephemeral loopback port.
pub(super) struct JwksServer {
    pub(super) uri: String,
    body: Arc<StdMutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
    /// Answer this many milliseconds late; [`HANG`]: never answer.
    delay_ms: Arc<AtomicU64>,
}

/// [`JwksServer::set_delay`] value: accept, read the request, never answer.
const HANG: u64 = u64::MAX;

impl JwksServer {
    pub(super) async fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let state = Arc::new(StdMutex::new((200u16, body)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (s, f, d) = (state.clone(), fetches.clone(), delay_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (s, f, d) = (s.clone(), f.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    match d.load(Ordering::SeqCst) {
                        0 => {}
                        HANG => {
                            // Hold the connection open and never answer.
                            std::future::pending::<()>().await;
                        }
                        ms => tokio::time::sleep(Duration::from_millis(ms)).await,
                    }
                    let (status, body) = s.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer {
            uri,
            body: state,
            fetches,
            delay_ms,
        }
    }
    pub(super) fn set(&self, status: u16, body: String) {
        *self.body.lock().unwrap() = (status, body);
    }
    /// Answer requests read from now on `ms` late ([`HANG`]: never).
    fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    pub(super) fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn config(uri: &str) -> IssuerConfig {
    let mut c = IssuerConfig::new(ISS, vec![AUD.into()], KeySource::JwksUri(uri.into()));
    c.unknown_kid_cooldown = Duration::from_secs(30);
    c
}

fn claims() -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"iss": ISS, "aud": AUD, "sub": "u1", "client_id": "app", "scope": "a b a", "iat": now, "exp": now + 300})
}

pub(super) async fn setup(keys: &[&TestKey]) -> (JwksServer, Validator) {
    let server = JwksServer::start(jwks(keys)).await;
    let v = Validator::new(vec![config(&server.uri)], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    (server, v)
}

#[tokio::test]
async fn valid_token_yields_identity_and_scopes() {
    let k = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let t = v.validate(&k.sign(&claims())).await.unwrap();
    assert_eq!(t.issuer, ISS);
    assert_eq!(t.subject.as_deref(), Some("u1"));
    assert_eq!(t.client_id.as_deref(), Some("app"));
    assert_eq!(t.scopes, vec!["a", "b"]);
    assert_eq!(t.kid.as_deref(), Some("k1"));
    let mut c = claims();
    c["aud"] = json!(["other", AUD]);
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["x", "y"]);
    let t = v.validate(&k.sign(&c)).await.unwrap();
    assert_eq!(t.scopes, vec!["x", "y"]);
}

#[tokio::test]
async fn every_rule_has_its_own_error() {
    let k = TestKey::es256("k1");
    let other = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let now = jsonwebtoken::get_current_timestamp();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let hs = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(k.jwk.to_string().as_bytes()),
        )
        .unwrap()
    };
    let sig = vec![1u8; 64];
    let payload = claims().to_string();
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), TokenError::Malformed),
        ("garbage", "not a token".into(), TokenError::Malformed),
        ("jwe", "a.b.c.d.e".into(), TokenError::Malformed),
        ("dot flood", ".".repeat(8000), TokenError::Malformed),
        ("oversize", "a".repeat(9000), TokenError::Malformed),
        (
            "alg none",
            forge_raw(r#"{"alg":"none"}"#, &payload, b""),
            TokenError::UnsupportedAlgorithm,
        ),
        (
            "empty signature",
            forge_raw(r#"{"alg":"ES256","kid":"k1"}"#, &payload, b""),
            TokenError::InvalidSignature,
        ),
        (
            "alg nOnE",
            forge_raw(r#"{"alg":"nOnE","kid":"k1"}"#, &payload, &sig),
            TokenError::UnsupportedAlgorithm,
        ),
        ("hs256 with public key", hs, TokenError::UnsupportedAlgorithm),
        (
            "alg not allowed",
            forge_raw(r#"{"alg":"ES384","kid":"k1"}"#, &payload, &sig),
            TokenError::UnsupportedAlgorithm,
        ),
        (
            "rsa alg on ec key",
            forge_raw(r#"{"alg":"RS256","kid":"k1"}"#, &payload, &sig),
            TokenError::UnsupportedAlgorithm,
        ),
        (
            "crit",
            forge_raw(r#"{"alg":"ES256","kid":"k1","crit":["x"],"x":1}"#, &payload, &sig),
            TokenError::Malformed,
        ),
        (
            "nested",
            forge_raw(r#"{"alg":"ES256","kid":"k1","cty":"JWT"}"#, &payload, &sig),
            TokenError::Malformed,
        ),
        (
            "bad typ",
            forge_raw(r#"{"alg":"ES256","kid":"k1","typ":"dpop+jwt"}"#, &payload, &sig),
            TokenError::Malformed,
        ),
        (
            "dup header key",
            forge_raw(r#"{"alg":"ES256","alg":"none","kid":"k1"}"#, &payload, &sig),
            TokenError::Malformed,
        ),
        (
            "dup payload key",
            forge_raw(
                r#"{"alg":"ES256","kid":"k1"}"#,
                &format!(r#"{{"iss":"{ISS}","iss":"x"}}"#),
                &sig,
            ),
            TokenError::Malformed,
        ),
        (
            "non-object payload",
            forge_raw(r#"{"alg":"ES256","kid":"k1"}"#, "[1]", &sig),
            TokenError::Malformed,
        ),
        (
            "zero signature (psychic)",
            forge_raw(r#"{"alg":"ES256","kid":"k1"}"#, &payload, &[0u8; 64]),
            TokenError::InvalidSignature,
        ),
        (
            "other key same kid",
            other.sign(&claims()),
            TokenError::InvalidSignature,
        ),
        (
            "unknown kid",
            TestKey::es256("nope").sign(&claims()),
            TokenError::UnknownKey,
        ),
        (
            "unknown issuer",
            k.sign(&with(&|c| c["iss"] = json!("https://idp.test/evil"))),
            TokenError::UnknownIssuer,
        ),
        (
            "issuer prefix",
            k.sign(&with(&|c| c["iss"] = json!("https://idp.tes"))),
            TokenError::UnknownIssuer,
        ),
        (
            "missing iss",
            k.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
            TokenError::MissingClaim("iss"),
        ),
        (
            "missing exp",
            k.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            TokenError::MissingClaim("exp"),
        ),
        (
            "string exp",
            k.sign(&with(&|c| c["exp"] = json!(format!("{}", now + 300)))),
            TokenError::Malformed,
        ),
        (
            "expired",
            k.sign(&with(&|c| c["exp"] = json!(now - 120))),
            TokenError::Expired,
        ),
        (
            "nbf future",
            k.sign(&with(&|c| c["nbf"] = json!(now + 120))),
            TokenError::NotYetValid,
        ),
        (
            "iat future",
            k.sign(&with(&|c| c["iat"] = json!(now + 120))),
            TokenError::NotYetValid,
        ),
        (
            "wrong aud",
            k.sign(&with(&|c| c["aud"] = json!("someone-else"))),
            TokenError::WrongAudience,
        ),
        (
            "aud array without us",
            k.sign(&with(&|c| c["aud"] = json!(["a", "b"]))),
            TokenError::WrongAudience,
        ),
        (
            "missing aud",
            k.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            TokenError::MissingClaim("aud"),
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.validate(&token).await, Err(want), "case `{name}`");
    }
    // Within leeway is fine.
    assert!(v
        .validate(&k.sign(&with(&|c| c["exp"] = json!(now - 5))))
        .await
        .is_ok());
    assert!(v
        .validate(&k.sign(&with(&|c| c["nbf"] = json!(now + 5))))
        .await
        .is_ok());
}

#[tokio::test]
async fn headers_naming_other_keys_are_ignored() {
    let k = TestKey::es256("k1");
    let attacker = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    h.jku = Some("http://evil.example/jwks".into());
    h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
    assert_eq!(
        v.validate(&attacker.sign_with_header(&h, &claims())).await,
        Err(TokenError::InvalidSignature)
    );
}

#[tokio::test]
async fn unknown_kid_refetches_once_per_cooldown_and_rotation_works() {
    let k1 = TestKey::es256("k1");
    let (s, v) = setup(&[&k1]).await;
    assert_eq!(s.fetches(), 1);
    let k2 = TestKey::es256("k2");
    s.set(200, jwks(&[&k1, &k2]));
    // First unknown kid after the initial fetch is inside the cooldown: no fetch.
    // Force the cooldown to have elapsed by building a validator with zero cooldown.
    let mut c = config(&s.uri);
    c.unknown_kid_cooldown = Duration::ZERO;
    let v0 = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    assert!(
        v0.validate(&k2.sign(&claims())).await.is_ok(),
        "fetched on first use"
    );
    let before = s.fetches();
    // With the 30 s cooldown a flood of unknown kids causes at most one fetch.
    let v = Arc::new(v);
    let bogus = TestKey::es256("bogus");
    let token = bogus.sign(&claims());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (v, t) = (v.clone(), token.clone());
        tasks.push(tokio::spawn(async move { v.validate(&t).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(TokenError::UnknownKey));
    }
    assert!(
        s.fetches() - before <= 1,
        "fetches during flood: {}",
        s.fetches() - before
    );
}

#[tokio::test]
async fn garbage_update_keeps_previous_keys_and_outage_keeps_serving() {
    let k = TestKey::es256("k1");
    let (s, v) = setup(&[&k]).await;
    for (status, body) in [
        (200, "<html>".to_string()),
        (200, r#"{"keys":[]}"#.into()),
        (500, jwks(&[&k])),
    ] {
        s.set(status, body);
        assert!(!v.refresh_all().await);
        assert!(v.validate(&k.sign(&claims())).await.is_ok());
        assert!(v.is_ready());
    }
    // A key removed from the set stops being accepted after the next refresh.
    let k2 = TestKey::es256("k2");
    s.set(200, jwks(&[&k2]));
    assert!(v.refresh_all().await);
    assert_eq!(v.validate(&k.sign(&claims())).await, Err(TokenError::UnknownKey));
}

#[tokio::test]
async fn no_keys_fails_closed_with_keys_unavailable() {
    let k = TestKey::es256("k1");
    let s = JwksServer::start("oops".into()).await;
    let v = Validator::new(vec![config(&s.uri)], Arc::new(NoopObserver)).unwrap();
    assert!(!v.refresh_all().await);
    assert!(!v.is_ready());
    assert_eq!(
        v.validate(&k.sign(&claims())).await,
        Err(TokenError::KeysUnavailable)
    );
}

#[tokio::test]
async fn jwks_file_source_and_config_errors() {
    let k = TestKey::es256("k1");
    let dir = std::env::temp_dir().join(format!("phigate-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(&[&k])).unwrap();
    let c = IssuerConfig::new(ISS, vec![AUD.into()], KeySource::JwksFile(path));
    let v = Validator::new(vec![c.clone()], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    assert!(v.validate(&k.sign(&claims())).await.is_ok());
    let mut hs = c.clone();
    hs.algorithms = vec![Algorithm::HS256];
    assert!(matches!(
        Validator::new(vec![hs], Arc::new(NoopObserver)),
        Err(ConfigError::ForbiddenAlgorithm { .. })
    ));
    assert!(matches!(
        Validator::new(vec![c.clone(), c], Arc::new(NoopObserver)),
        Err(ConfigError::DuplicateIssuer(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn roles_from_dotted_claim_paths() {
    let m = json!({"roles": ["a", "b"], "realm_access": {"roles": ["nurse"]}, "r": "x y"});
    let m = m.as_object().unwrap();
    assert_eq!(extract_roles(m, "roles"), vec!["a", "b"]);
    assert_eq!(extract_roles(m, "realm_access.roles"), vec!["nurse"]);
    assert_eq!(extract_roles(m, "r"), vec!["x", "y"]);
    assert!(extract_roles(m, "missing.path").is_empty());
}

#[test]
fn cache_control_parsing() {
    assert_eq!(
        parse_max_age("public, max-age=120"),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
    assert_eq!(parse_max_age("private"), None);
}

#[tokio::test]
async fn refresher_fetches_keys_and_stops_on_shutdown() {
    let k = TestKey::es256("k1");
    let s = JwksServer::start("not yet".into()).await;
    let v = Arc::new(Validator::new(vec![config(&s.uri)], Arc::new(NoopObserver)).unwrap());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn({
        let v = v.clone();
        async move { v.run_refresher(rx).await }
    });
    // The first fetch is refused; the refresher retries and picks up good keys.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!v.is_ready());
    s.set(200, jwks(&[&k]));
    let mut ready = false;
    for _ in 0..100 {
        if v.is_ready() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "refresher never loaded keys (fetches: {})", s.fetches());
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn verified_tokens_are_cached_until_key_removal_or_expiry() {
    let k = TestKey::es256("k1");
    let (s, v) = setup(&[&k]).await;
    let token = k.sign(&claims());
    let first = v.validate(&token).await.unwrap();
    let second = v.validate(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "second validation served from the cache"
    );
    assert_eq!(v.cache_stats().hits.load(Ordering::Relaxed), 1);

    // Failures are never cached as success: a tampered token keeps failing.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    for _ in 0..2 {
        assert!(v.validate(&bad).await.is_err());
    }

    // The key leaves the key set: the cached entry is no longer honoured.
    let k2 = TestKey::es256("k2");
    s.set(200, jwks(&[&k2]));
    assert!(v.refresh_all().await);
    assert_eq!(v.validate(&token).await, Err(TokenError::UnknownKey));

    // An entry is only valid until exp (+ leeway).
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = claims();
    c["exp"] = json!(now + 1);
    let mut cfg = config(&s.uri);
    cfg.leeway = Duration::ZERO;
    let v = Validator::new(vec![cfg], Arc::new(NoopObserver)).unwrap();
    s.set(200, jwks(&[&k2]));
    assert!(v.refresh_all().await);
    let short = k2.sign(&c);
    assert!(v.validate(&short).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(v.validate(&short).await, Err(TokenError::Expired));
}

#[tokio::test]
async fn oidc_discovery_is_followed_and_checked() {
    let k = TestKey::es256("k1");
    let jwks_server = JwksServer::start(jwks(&[&k])).await;
    // A discovery server whose issuer is its own base URL.
    let disco = JwksServer::start(String::new()).await;
    let base = disco.uri.trim_end_matches("/jwks.json").to_string();
    disco.set(
        200,
        json!({"issuer": base, "jwks_uri": jwks_server.uri}).to_string(),
    );
    let mut c = IssuerConfig::new(base.clone(), vec![AUD.into()], KeySource::Discovery);
    c.unknown_kid_cooldown = Duration::from_secs(30);
    let v = Validator::new(vec![c.clone()], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await, "discovery + JWKS fetch");
    let mut cl = claims();
    cl["iss"] = json!(base);
    assert!(v.validate(&k.sign(&cl)).await.is_ok());
    // A discovery document for another issuer is refused.
    disco.set(
        200,
        json!({"issuer": "https://evil.example", "jwks_uri": jwks_server.uri}).to_string(),
    );
    let v = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    assert!(!v.refresh_all().await);
    assert_eq!(v.validate(&k.sign(&cl)).await, Err(TokenError::KeysUnavailable));
}

#[tokio::test]
async fn repeated_unknown_kid_is_answered_from_the_negative_cache() {
    let k = TestKey::es256("k1");
    let (s, v) = setup(&[&k]).await;
    let stranger = TestKey::es256("stranger").sign(&claims());
    let before = s.fetches();
    for _ in 0..50 {
        assert_eq!(v.validate(&stranger).await, Err(TokenError::UnknownKey));
    }
    assert_eq!(
        s.fetches() - before,
        1,
        "one refetch, then the negative cache answers"
    );
}

#[tokio::test]
async fn more_attacks_are_refused() {
    let k = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let payload = claims().to_string();
    let h = r#"{"alg":"ES256","kid":"k1"}"#;
    // Psychic signature (CVE-2022-21449) in raw and DER encodings.
    let der_zero = [0x30u8, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
    for sig in [&[0u8; 64][..], &der_zero[..]] {
        assert_eq!(
            v.validate(&forge_raw(h, &payload, sig)).await,
            Err(TokenError::InvalidSignature)
        );
    }
    // HS256 keyed with the issuer's public key as a PEM (SPKI) secret.
    let x = URL_SAFE_NO_PAD.decode(k.jwk["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(k.jwk["y"].as_str().unwrap()).unwrap();
    let mut spki = hex_decode("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    spki.push(4);
    spki.extend_from_slice(&x);
    spki.extend_from_slice(&y);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let mut hh = Header::new(Algorithm::HS256);
    hh.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(&hh, &claims(), &EncodingKey::from_secret(pem.as_bytes())).unwrap();
    assert_eq!(v.validate(&hs).await, Err(TokenError::UnsupportedAlgorithm));
    // x5u / x5c headers are ignored: the configured key still decides.
    let other = TestKey::es256("k1");
    let mut h2 = Header::new(Algorithm::ES256);
    h2.kid = Some("k1".into());
    h2.x5u = Some("http://evil.example/cert.pem".into());
    h2.x5c = Some(vec!["MIIB".into()]);
    assert_eq!(
        v.validate(&other.sign_with_header(&h2, &claims())).await,
        Err(TokenError::InvalidSignature)
    );
    assert!(
        v.validate(&k.sign_with_header(&h2, &claims())).await.is_ok(),
        "ignored, not fatal"
    );
    // A payload that is not an object, a token of thousands of dots.
    assert_eq!(
        v.validate(&forge_raw(h, "\"str\"", &[1; 64])).await,
        Err(TokenError::Malformed)
    );
    assert_eq!(
        v.validate(&format!("a{}b", ".".repeat(5000))).await,
        Err(TokenError::Malformed)
    );
    // exp as a string is not a NumericDate.
    let mut c = claims();
    c["exp"] = json!("9999999999");
    assert_eq!(v.validate(&k.sign(&c)).await, Err(TokenError::Malformed));
}

#[tokio::test]
async fn typ_can_be_required_to_be_at_jwt() {
    let k = TestKey::es256("k1");
    let server = JwksServer::start(jwks(&[&k])).await;
    let mut c = config(&server.uri);
    c.require_typ = true;
    c.allowed_typ = vec!["at+jwt".into()];
    let v = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    assert!(v.validate(&k.sign(&claims())).await.is_ok(), "at+jwt accepted");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    h.typ = Some("JWT".into());
    assert_eq!(
        v.validate(&k.sign_with_header(&h, &claims())).await,
        Err(TokenError::Malformed)
    );
    h.typ = None;
    assert_eq!(
        v.validate(&k.sign_with_header(&h, &claims())).await,
        Err(TokenError::Malformed)
    );
}

#[tokio::test]
async fn tokens_living_longer_than_the_issuers_maximum_are_refused() {
    let k = TestKey::es256("k1");
    let server = JwksServer::start(jwks(&[&k])).await;
    let mut c = config(&server.uri);
    c.max_token_lifetime = Some(Duration::from_secs(3600));
    let v = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    let now = jsonwebtoken::get_current_timestamp();
    let lifetime = |iat: u64, exp: u64| {
        let mut c = claims();
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        k.sign(&c)
    };
    assert!(
        v.validate(&lifetime(now, now + 3600)).await.is_ok(),
        "exactly the maximum"
    );
    assert_eq!(
        v.validate(&lifetime(now, now + 3601)).await,
        Err(TokenError::LifetimeExceeded)
    );
    assert_eq!(
        v.validate(&lifetime(now - 3000, now + 86_400)).await,
        Err(TokenError::LifetimeExceeded)
    );
    let mut no_iat = claims();
    no_iat.as_object_mut().unwrap().remove("iat");
    assert_eq!(
        v.validate(&k.sign(&no_iat)).await,
        Err(TokenError::LifetimeExceeded),
        "without iat the lifetime cannot be established"
    );
    // Without a maximum (the default) the same tokens pass.
    let (_s, unlimited) = setup(&[&k]).await;
    assert!(unlimited.validate(&lifetime(now, now + 86_400)).await.is_ok());
    assert!(unlimited.validate(&k.sign(&no_iat)).await.is_ok());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    struct Fixture {
        rt: tokio::runtime::Runtime,
        validator: Validator,
        good: String,
        _server: JwksServer,
    }

    fn fixture() -> &'static Fixture {
        static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
        F.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let k = TestKey::es256("k1");
            let server = rt.block_on(JwksServer::start(jwks(&[&k])));
            let mut c = config(&server.uri);
            c.unknown_kid_cooldown = Duration::from_secs(3600);
            let validator = Validator::new(vec![c], Arc::new(NoopObserver))
                .unwrap()
                .with_cache_capacity(0);
            assert!(rt.block_on(validator.refresh_all()));
            let good = k.sign(&claims());
            Fixture {
                rt,
                validator,
                good,
                _server: server,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Random bytes never panic and are never accepted.
        #[test]
        fn random_input_is_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = fixture();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            prop_assert!(f.rt.block_on(f.validator.validate(&s)).is_err());
        }

        /// Any mutation of a real token is rejected (only the signed original passes).
        #[test]
        fn mutated_tokens_are_rejected(pos in 0usize..4096, byte in any::<u8>(), op in 0u8..3) {
            let f = fixture();
            let mut t = f.good.clone().into_bytes();
            let i = pos % t.len();
            match op {
                0 => t[i] = byte,
                1 => { t.insert(i, byte); }
                _ => { t.remove(i); }
            }
            let s = String::from_utf8_lossy(&t).into_owned();
            let r = f.rt.block_on(f.validator.validate(&s));
            if s == f.good {
                prop_assert!(r.is_ok());
            } else if r.is_ok() {
                // base64url has slack bits in the last character of a segment:
                // a mutation there decodes to the same bytes, i.e. the same signed token.
                let same = |a: &str, b: &str| {
                    a.split('.').map(|p| URL_SAFE_NO_PAD.decode(p).ok()).collect::<Vec<_>>()
                        == b.split('.').map(|p| URL_SAFE_NO_PAD.decode(p).ok()).collect::<Vec<_>>()
                };
                prop_assert!(same(&s, &f.good), "accepted a token that is not the signed one: {s}");
            }
        }
    }
}

#[tokio::test]
async fn keys_are_looked_up_per_issuer() {
    let a_key = TestKey::es256("a-key");
    let b_key = TestKey::es256("b-key");
    let a = JwksServer::start(jwks(&[&a_key])).await;
    let b = JwksServer::start(jwks(&[&b_key])).await;
    let mut ca = config(&a.uri);
    ca.issuer = "https://a.test".into();
    let mut cb = config(&b.uri);
    cb.issuer = "https://b.test".into();
    let v = Validator::new(vec![ca, cb], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    let mut c = claims();
    c["iss"] = json!("https://a.test");
    assert!(v.validate(&a_key.sign(&c)).await.is_ok());
    // Signed by issuer B's key but claiming issuer A: B's kid is unknown at A.
    assert_eq!(v.validate(&b_key.sign(&c)).await, Err(TokenError::UnknownKey));
}
