//! `phigate dev`: the embedded default other tools depend on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use phigate_tests::{eventually, http, read_jsonl, DevProcess};

#[test]
fn dev_mode_serves_tokens_jwks_demo_upstream_and_enforces_the_bundled_policy() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[], Duration::from_secs(20));
    let (proxy, admin) = (dev.proxy, dev.admin);
    let audit = dir.path().join("audit.jsonl");
    let key = dir.path().join("dev-key.pem");
    let log_text = || dev.log();
    assert!(log_text().contains("DEV MODE"), "banner printed");
    assert!(key.exists(), "--dev-key written");

    let jwks = http::get(admin, "/dev/jwks.json").unwrap().json();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0]["kid"].as_str().is_some());

    assert_eq!(http::get(proxy, "/fhir/metadata").unwrap().status, 200);
    assert_eq!(http::get(proxy, "/fhir/Patient/123").unwrap().status, 401);

    let token = http::get(
        admin,
        "/dev/token?scope=user/Patient.rs%20user/Observation.rs&sub=alice",
    )
    .unwrap();
    assert_eq!(token.status, 200);
    assert_eq!(token.header("content-type"), Some("text/plain"));
    let token = token.text();
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];
    let r = http::request(proxy, "GET", "/fhir/Patient/123", &h, b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "Patient");
    let r = http::request(proxy, "GET", "/fhir/Observation?patient=123", &h, b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total"], 2);
    let r = http::request(
        proxy,
        "POST",
        "/fhir/Observation",
        &h,
        br#"{"resourceType":"Observation"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 403, "needs user/Observation.c");
    let r = http::request(proxy, "DELETE", "/fhir/Patient/123", &h, b"").unwrap();
    assert_eq!(r.status, 403, "not in the dev policy");

    let writer = http::get(admin, "/dev/token?scope=user/Observation.c")
        .unwrap()
        .text();
    let auth = format!("Bearer {writer}");
    let r = http::request(
        proxy,
        "POST",
        "/fhir/Observation",
        &[("Authorization", auth.as_str())],
        br#"{"resourceType":"Observation","status":"final"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());

    let expired = http::get(admin, "/dev/token?scope=user/Patient.rs&ttl=-120")
        .unwrap()
        .text();
    let auth = format!("Bearer {expired}");
    let r = http::request(
        proxy,
        "GET",
        "/fhir/Patient/123",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "token_expired");

    assert_eq!(http::get(admin, "/dev/token?bogus=1").unwrap().status, 400);

    // Eight requests; the allowed create has two records (intent, outcome).
    let recs = eventually(Duration::from_secs(10), || {
        let r = read_jsonl(&audit);
        (r.len() >= 9).then_some(r)
    })
    .expect("audit records");
    assert_eq!(recs.len(), 9);
    assert_eq!(recs[2]["sub"], "alice");
    assert_eq!(recs[6]["phase"], "intent");
    assert_eq!(recs[7]["phase"], "outcome");
    assert_eq!(recs[7]["upstream_status"], 201);
}

/// The JSON of a compact JWS's header (`part` 0) or payload (`part` 1).
fn jws_part(jwt: &str, part: usize) -> serde_json::Value {
    use base64::Engine as _;
    let segment = jwt.trim().split('.').nth(part).expect("a compact JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// `/dev/token` binds tokens to sessions and keys; `/dev/logout-token`
/// mints OpenID Connect Back-Channel Logout tokens (§2.4) for the dev client.
#[test]
fn dev_tokens_carry_sid_and_cnf_and_logout_tokens_have_the_back_channel_shape() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[], Duration::from_secs(20));
    let admin = dev.admin;
    let kid = http::get(admin, "/dev/jwks.json").unwrap().json()["keys"][0]["kid"].clone();

    let r = http::get(admin, "/dev/token?sid=s1&jkt=J&x5t=X").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let payload = jws_part(&r.text(), 1);
    assert_eq!(payload["sid"], "s1");
    assert_eq!(payload["cnf"], serde_json::json!({ "jkt": "J", "x5t#S256": "X" }));
    // Only what was asked for: no cnf, no sid.
    let plain = jws_part(&http::get(admin, "/dev/token?sid=s1").unwrap().text(), 1);
    assert_eq!(plain["sid"], "s1");
    assert!(plain.get("cnf").is_none(), "{plain}");
    let plain = jws_part(&http::get(admin, "/dev/token?jkt=J").unwrap().text(), 1);
    assert_eq!(plain["cnf"], serde_json::json!({ "jkt": "J" }));
    assert!(plain.get("sid").is_none(), "{plain}");

    let r = http::get(admin, "/dev/logout-token?sid=s1&sub=u").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let token = r.text();
    let header = jws_part(&token, 0);
    assert_eq!(header["typ"], "logout+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], kid);
    let claims = jws_part(&token, 1);
    assert_eq!(claims["iss"], "phigate-dev");
    assert_eq!(claims["aud"], "phigate-dev");
    assert_eq!(
        claims["events"],
        serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} })
    );
    assert_eq!(claims["sid"], "s1");
    assert_eq!(claims["sub"], "u");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
    let iat = claims["iat"].as_i64().expect("numeric iat");
    let now = jsonwebtoken::get_current_timestamp() as i64;
    assert!((now - 60..=now + 5).contains(&iat), "iat {iat}, now {now}");
    assert!(claims.get("nonce").is_none(), "a logout token never has a nonce");
    // Each logout token is a new one (a fresh jti).
    let again = jws_part(&http::get(admin, "/dev/logout-token?sid=s1").unwrap().text(), 1);
    assert_ne!(again["jti"], claims["jti"]);
    assert!(again.get("sub").is_none(), "{again}");

    for bad in [
        "/dev/logout-token",
        "/dev/logout-token?",
        "/dev/logout-token?sid=s1&scope=x",
        "/dev/logout-token?sid=",
    ] {
        let r = http::get(admin, bad).unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

/// `phigate dev --idle-timeout`: automatic log-off, and the back-channel
/// logout receiver on the proxy listener ending a session.
#[test]
fn dev_mode_logs_off_idle_sessions_and_honours_back_channel_logout() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(
        dir.path(),
        &["--idle-timeout".as_ref(), "2s".as_ref()],
        Duration::from_secs(20),
    );
    let (proxy, admin) = (dev.proxy, dev.admin);
    let get = |token: &str| {
        let auth = format!("Bearer {token}");
        http::request(
            proxy,
            "GET",
            "/fhir/Patient/123",
            &[("Authorization", auth.as_str())],
            b"",
        )
        .unwrap()
    };
    let token = |sid: &str| {
        http::get(admin, &format!("/dev/token?scope=user/Patient.rs&sid={sid}"))
            .unwrap()
            .text()
    };

    // Idle longer than 2 s: logged off.
    let s1 = token("s1");
    let r = get(&s1);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_secs(3));
    let r = get(&s1);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "session_idle_timeout");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("session idle timeout"),
        "{:?}",
        r.headers
    );

    // Back-channel logout of s2 on the proxy listener.
    let s2 = token("s2");
    assert_eq!(get(&s2).status, 200);
    let logout = http::get(admin, "/dev/logout-token?sid=s2").unwrap().text();
    let body = format!("logout_token={logout}");
    let r = http::request(
        proxy,
        "POST",
        "/phigate/backchannel-logout",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = get(&s2);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "session_revoked");
    // The same logout token again is a replay.
    let r = http::request(
        proxy,
        "POST",
        "/phigate/backchannel-logout",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // Another session is untouched.
    assert_eq!(get(&token("s3")).status, 200);

    let audit = dir.path().join("audit.jsonl");
    let recs = eventually(Duration::from_secs(10), || {
        let r = read_jsonl(&audit);
        r.iter().any(|r| r["reason"] == "session_revoked").then_some(r)
    })
    .expect("audit records");
    let reasons: Vec<&str> = recs.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(reasons.contains(&"session_idle_timeout"), "{reasons:?}");
    assert!(reasons.contains(&"logged_out"), "{reasons:?}");
}
