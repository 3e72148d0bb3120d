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
