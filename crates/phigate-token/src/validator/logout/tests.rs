use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

use super::*;
use crate::test_keys::{forge_raw, jwks, TestKey};
use crate::validator::tests::{setup, JwksServer, ISS};
use crate::{IssuerConfig, KeySource, NoopObserver};

const CLIENT: &str = "rp-client";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// §2.4's example logout token, issued now.
fn logout_claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "248289761001",
        "aud": CLIENT,
        "iat": now(),
        "exp": now() + 120,
        "jti": "bWJq",
        "sid": "08a5019c-17e1-4977-8f42-65a12843ea02",
        "events": { EVENT: {} },
    })
}

fn sign(k: &TestKey, typ: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    h.typ = typ.map(str::to_string);
    k.sign_with_header(&h, claims)
}

fn logout_token(k: &TestKey, claims: &Value) -> String {
    sign(k, Some("logout+jwt"), claims)
}

async fn check(v: &Validator, token: &str) -> Result<LogoutToken, LogoutError> {
    let clients = vec![CLIENT.to_string()];
    v.validate_logout_token(token, &LogoutRules::new(&clients, now()))
        .await
}

#[tokio::test]
async fn valid_logout_token_names_the_sessions_to_end() {
    let k = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let c = logout_claims();
    let t = check(&v, &logout_token(&k, &c)).await.unwrap();
    assert_eq!(
        t,
        LogoutToken {
            issuer: ISS.into(),
            sid: Some("08a5019c-17e1-4977-8f42-65a12843ea02".into()),
            sub: Some("248289761001".into()),
            jti: "bWJq".into(),
            iat: c["iat"].as_i64().unwrap(),
            exp: c["exp"].as_i64(),
        }
    );
    // `sid` alone, `sub` alone, `aud` as an array, no `exp`, `typ` JWT or absent.
    for (typ, f) in [
        (
            Some("JWT"),
            &(|c: &mut Value| drop(c.as_object_mut().unwrap().remove("sub"))) as &dyn Fn(&mut Value),
        ),
        (None, &|c: &mut Value| {
            drop(c.as_object_mut().unwrap().remove("sid"))
        }),
        (Some("application/logout+jwt"), &|c: &mut Value| {
            c["aud"] = json!(["other", CLIENT])
        }),
        (Some("logout+jwt"), &|c: &mut Value| {
            drop(c.as_object_mut().unwrap().remove("exp"))
        }),
    ] {
        let mut c = logout_claims();
        f(&mut c);
        assert!(check(&v, &sign(&k, typ, &c)).await.is_ok(), "{typ:?} {c}");
    }
}

#[tokio::test]
async fn every_rule_has_its_own_error() {
    let k = TestKey::es256("k1");
    let other = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = logout_claims();
        f(&mut c);
        logout_token(&k, &c)
    };
    let remove = |name: &'static str| move |c: &mut Value| drop(c.as_object_mut().unwrap().remove(name));
    let payload = logout_claims().to_string();
    let sig = [1u8; 64];
    let cases: Vec<(&str, String, LogoutError)> = vec![
        ("empty", String::new(), LogoutError::Malformed),
        ("garbage", "not a token".into(), LogoutError::Malformed),
        ("oversize", "a".repeat(9000), LogoutError::Malformed),
        (
            "duplicate claim",
            forge_raw(
                r#"{"alg":"ES256","kid":"k1"}"#,
                &format!(r#"{{"iss":"{ISS}","iss":"x"}}"#),
                &sig,
            ),
            LogoutError::Malformed,
        ),
        ("missing iss", with(&remove("iss")), LogoutError::Malformed),
        (
            "access token typ",
            sign(&k, Some("at+jwt"), &logout_claims()),
            LogoutError::Malformed,
        ),
        (
            "crit",
            forge_raw(r#"{"alg":"ES256","kid":"k1","crit":["x"]}"#, &payload, &sig),
            LogoutError::Malformed,
        ),
        (
            "unknown issuer",
            with(&|c| c["iss"] = json!("https://idp.test/evil")),
            LogoutError::UnknownIssuer,
        ),
        (
            "alg none",
            forge_raw(r#"{"alg":"none"}"#, &payload, b""),
            LogoutError::BadSignature,
        ),
        (
            "alg not allowed by the issuer",
            forge_raw(r#"{"alg":"ES384","kid":"k1"}"#, &payload, &sig),
            LogoutError::BadSignature,
        ),
        (
            "key does not fit alg",
            forge_raw(r#"{"alg":"RS256","kid":"k1"}"#, &payload, &sig),
            LogoutError::BadSignature,
        ),
        (
            "other key same kid",
            logout_token(&other, &logout_claims()),
            LogoutError::BadSignature,
        ),
        (
            "unknown kid after refetch",
            logout_token(&TestKey::es256("nope"), &logout_claims()),
            LogoutError::BadSignature,
        ),
        (
            "zero signature",
            forge_raw(r#"{"alg":"ES256","kid":"k1"}"#, &payload, &[0u8; 64]),
            LogoutError::BadSignature,
        ),
        (
            "issuer audience is not a client id",
            with(&|c| c["aud"] = json!("phigate-test")),
            LogoutError::WrongAudience,
        ),
        ("missing aud", with(&remove("aud")), LogoutError::WrongAudience),
        (
            "numeric aud",
            with(&|c| c["aud"] = json!(7)),
            LogoutError::Malformed,
        ),
        ("missing iat", with(&remove("iat")), LogoutError::Malformed),
        (
            "stale iat",
            with(&|c| c["iat"] = json!(now() - 301)),
            LogoutError::IatOutOfWindow,
        ),
        (
            "iat beyond the leeway",
            with(&|c| c["iat"] = json!(now() + 60)),
            LogoutError::IatOutOfWindow,
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 60)),
            LogoutError::Expired,
        ),
        ("missing jti", with(&remove("jti")), LogoutError::MissingJti),
        (
            "empty jti",
            with(&|c| c["jti"] = json!("")),
            LogoutError::MissingJti,
        ),
        (
            "neither sid nor sub",
            with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sid");
                o.remove("sub");
            }),
            LogoutError::MissingSubject,
        ),
        (
            "numeric sub",
            with(&|c| c["sub"] = json!(42)),
            LogoutError::Malformed,
        ),
        (
            "missing events",
            with(&remove("events")),
            LogoutError::MissingEvent,
        ),
        (
            "other event",
            with(&|c| c["events"] = json!({"http://schemas.openid.net/event/other": {}})),
            LogoutError::MissingEvent,
        ),
        (
            "event value not an object",
            with(&|c| c["events"] = json!({ EVENT: "yes" })),
            LogoutError::MissingEvent,
        ),
        (
            "events an array",
            with(&|c| c["events"] = json!([EVENT])),
            LogoutError::MissingEvent,
        ),
        (
            "nonce",
            with(&|c| c["nonce"] = json!("n-0S6_WzA2Mj")),
            LogoutError::HasNonce,
        ),
    ];
    assert!(check(&v, &logout_token(&k, &logout_claims())).await.is_ok());
    for (name, token, want) in cases {
        assert_eq!(check(&v, &token).await, Err(want), "{name}");
    }
}

#[tokio::test]
async fn iat_window_uses_max_age_and_the_issuers_leeway() {
    let k = TestKey::es256("k1");
    let (_s, v) = setup(&[&k]).await;
    let clients = vec![CLIENT.to_string()];
    let at = |iat: i64| {
        let mut c = logout_claims();
        c["iat"] = json!(iat);
        c["exp"] = json!(iat + 600);
        logout_token(&k, &c)
    };
    let now = now();
    let rules = LogoutRules {
        max_age: Duration::from_secs(10),
        ..LogoutRules::new(&clients, now)
    };
    assert!(v.validate_logout_token(&at(now - 10), &rules).await.is_ok());
    assert_eq!(
        v.validate_logout_token(&at(now - 11), &rules).await,
        Err(LogoutError::IatOutOfWindow)
    );
    // Default leeway: 30 s.
    assert!(v.validate_logout_token(&at(now + 30), &rules).await.is_ok());
    assert_eq!(
        v.validate_logout_token(&at(now + 31), &rules).await,
        Err(LogoutError::IatOutOfWindow)
    );
}

#[tokio::test]
async fn access_token_typ_and_lifetime_rules_do_not_apply() {
    let k = TestKey::es256("k1");
    let server = JwksServer::start(jwks(&[&k])).await;
    let mut c = IssuerConfig::new(
        ISS,
        vec!["phigate-test".into()],
        KeySource::JwksUri(server.uri.clone()),
    );
    c.require_typ = true;
    c.allowed_typ = vec!["at+jwt".into()];
    c.max_token_lifetime = Some(Duration::from_secs(1));
    let v = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    assert!(v.refresh_all().await);
    assert!(check(&v, &logout_token(&k, &logout_claims())).await.is_ok());
    assert!(check(&v, &sign(&k, None, &logout_claims())).await.is_ok());
}

#[tokio::test]
async fn a_rotated_key_is_fetched_for_an_unknown_kid() {
    let old = TestKey::es256("old");
    let new = TestKey::es256("new");
    let (server, v) = setup(&[&old]).await;
    let before = server.fetches();
    server.set(200, jwks(&[&old, &new]));
    assert!(check(&v, &logout_token(&new, &logout_claims())).await.is_ok());
    assert_eq!(server.fetches(), before + 1);
    // The rotated key now serves access tokens too.
    let mut c = logout_claims();
    c["aud"] = json!("phigate-test");
    assert!(v.validate(&new.sign(&c)).await.is_ok());
}

#[tokio::test]
async fn no_keys_fails_closed_with_keys_unavailable() {
    // Nothing listens on port 1: every fetch fails at once.
    let mut c = IssuerConfig::new(
        ISS,
        vec!["phigate-test".into()],
        KeySource::JwksUri("http://127.0.0.1:1/jwks.json".into()),
    );
    c.fetch_wait = Duration::from_millis(500);
    let v = Validator::new(vec![c], Arc::new(NoopObserver)).unwrap();
    let k = TestKey::es256("k1");
    assert_eq!(
        check(&v, &logout_token(&k, &logout_claims())).await,
        Err(LogoutError::KeysUnavailable)
    );
}

#[test]
fn error_names_are_stable() {
    assert_eq!(LogoutError::HasNonce.as_str(), "logout_token_has_nonce");
    assert_eq!(LogoutError::KeysUnavailable.as_str(), "keys_unavailable");
    assert_eq!(BACKCHANNEL_LOGOUT_EVENT, EVENT);
}
