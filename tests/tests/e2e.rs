//! The whole request path, end to end: the real `phigate` binary, a real
//! JWKS server over HTTP, a real upstream, real sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use phigate_tests::http::{self, Response};
use phigate_tests::keys::{claims, forge, hs256, now};
use phigate_tests::{
    eventually, Gateway, GatewayOptions, JwksServer, TestEnv, TestKey, Upstream, TEST_POLICY,
};
use serde_json::json;

type Env = TestEnv;

fn env_with(policy: &str) -> Env {
    TestEnv::start(policy)
}

fn env() -> Env {
    env_with(TEST_POLICY)
}

fn get_with_token(e: &Env, target: &str, token: &str) -> Response {
    e.get(target, token)
}

fn assert_deny(r: &Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], reason, "{body}");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn allowed_request_reaches_upstream_with_body_intact() {
    let e = env();
    let token = e.key.sign(&claims("user/Observation.c"));
    let body = br#"{"resourceType":"Observation","status":"final","note":[{"text":"caf\u00e9 \u2013 \ud83d\ude00"}]}"#;
    let r = http::request(
        e.gw.proxy,
        "POST",
        "/fhir/Observation",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/fhir+json"),
        ],
        body,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.body, body, "client got the upstream body byte for byte");
    let seen = e.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/fhir/Observation");
    assert_eq!(
        &seen[0].body[..],
        body,
        "upstream got the client body byte for byte"
    );
    assert!(seen[0].header("x-request-id").is_some());
    let id = r.header("x-request-id").unwrap();
    // A request with effects: the intent (before forwarding), then the outcome.
    let recs = e.gw.wait_audit(2);
    let (intent, rec) = (&recs[0], &recs[1]);
    assert_eq!(intent["request_id"], id);
    assert_eq!(intent["phase"], "intent");
    assert_eq!(intent["outcome"], "pending");
    assert_eq!(intent["status"], 0);
    assert!(intent.get("upstream_status").is_none());
    assert_eq!(rec["phase"], "outcome");
    assert_eq!(rec["completes"], intent["event_id"]);
    assert_eq!(rec["complete"], true);
    assert_eq!(rec["bytes_from_client"], body.len());
    assert_eq!(rec["bytes_to_client"], body.len());
    assert_eq!(rec["request_id"], id);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["reason"], "allowed");
    assert_eq!(rec["status"], 201);
    assert_eq!(rec["upstream_status"], 201);
    assert_eq!(rec["sub"], "user-42");
    assert_eq!(rec["client_id"], "app-7");
    assert_eq!(rec["iss"], phigate_tests::ISSUER);
    assert_eq!(rec["route"], "/fhir/Observation");
    assert_eq!(rec["scopes_granted"], json!(["user/Observation.c"]));
    assert_eq!(rec["scopes_required"], json!(["user/Observation.c"]));
}

#[test]
fn get_forwards_canonical_target_and_query() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs user/Observation.rs"));
    let r = get_with_token(&e, "/fhir/%50atient/123", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_with_token(&e, "/fhir/Observation?patient=123&_count=5", &token);
    assert_eq!(r.status, 200);
    let seen = e.upstream.requests();
    assert_eq!(
        seen[0].target, "/fhir/Patient/123",
        "the canonical path is what is forwarded"
    );
    assert_eq!(seen[1].target, "/fhir/Observation?patient=123&_count=5");
}

#[test]
fn scopes_from_scp_array_are_honoured() {
    let e = env();
    let mut c = claims("");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["user/Patient.rs"]);
    let r = get_with_token(&e, "/fhir/Patient/1", &e.key.sign(&c));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn missing_token_is_401_without_error_attribute() {
    let e = env();
    let r = http::get(e.gw.proxy, "/fhir/Patient/123").unwrap();
    assert_deny(&r, 401, "missing_token");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // A token in the query string is never used.
    let token = e.key.sign(&claims("user/Patient.rs"));
    let r = http::get(e.gw.proxy, &format!("/fhir/Patient/123?access_token={token}")).unwrap();
    assert_deny(&r, 401, "missing_token");
    assert!(e.upstream.requests().is_empty());
    // Nor recorded: the query is, without the token (RFC 6750 §2.3).
    let recs = e.gw.wait_audit(2);
    assert_eq!(recs[1]["query"], "access_token=[removed]", "{}", recs[1]);
    assert!(recs[0].get("query").is_none());
    assert!(!e.gw.audit_text().contains(token.split('.').nth(2).unwrap()));
}

#[test]
fn invalid_tokens_are_401_invalid_token() {
    let e = env();
    let other = TestKey::es256("k1"); // same kid, different key
    let mut expired = claims("user/Patient.rs");
    expired["exp"] = json!(now() - 120);
    let mut wrong_aud = claims("user/Patient.rs");
    wrong_aud["aud"] = json!(["someone-else"]);
    let mut wrong_iss = claims("user/Patient.rs");
    wrong_iss["iss"] = json!("https://idp.test.phigate.evil");
    let good = claims("user/Patient.rs");
    let real = e.key.sign(&good);
    let parts: Vec<&str> = real.split('.').collect();

    let cases: Vec<(&str, String, &str)> = vec![
        ("bad signature", other.sign(&good), "invalid_signature"),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                forge(&json!({}), &claims("user/*.cruds"), b"")
                    .split('.')
                    .nth(1)
                    .unwrap(),
                parts[2]
            ),
            "invalid_signature",
        ),
        ("expired", e.key.sign(&expired), "token_expired"),
        ("wrong aud", e.key.sign(&wrong_aud), "wrong_audience"),
        ("wrong iss", e.key.sign(&wrong_iss), "unknown_issuer"),
        (
            "alg none",
            forge(&json!({"alg": "none", "typ": "JWT", "kid": "k1"}), &good, b""),
            "unsupported_algorithm",
        ),
        (
            "alg NoNe",
            forge(&json!({"alg": "NoNe", "kid": "k1"}), &good, b""),
            "unsupported_algorithm",
        ),
        (
            "HS256 with public key as secret",
            hs256("k1", &good, e.key.jwk.to_string().as_bytes()),
            "unsupported_algorithm",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed_token"),
    ];
    for (name, token, reason) in &cases {
        let r = get_with_token(&e, "/fhir/Patient/123", token);
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(r.json()["error"], *reason, "{name}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{name}"
        );
    }
    assert!(
        e.upstream.requests().is_empty(),
        "no denied request reached the upstream"
    );
    let records = e.gw.wait_audit(cases.len());
    let text = e.gw.audit_text();
    for (name, token, _) in &cases {
        let sig = token.rsplit('.').next().unwrap();
        assert!(
            sig.len() < 8 || !text.contains(sig),
            "{name}: token text leaked into audit"
        );
        assert!(!text.contains(token.as_str()), "{name}: token leaked into audit");
    }
    for (rec, (_, _, reason)) in records.iter().zip(&cases) {
        assert_eq!(rec["decision"], "deny");
        assert_eq!(rec["reason"], *reason);
        assert_eq!(rec["status"], 401);
    }
}

#[test]
fn insufficient_scope_is_403_and_upstream_not_contacted() {
    let e = env();
    let token = e.key.sign(&claims("user/Observation.rs"));
    let r = get_with_token(&e, "/fhir/Patient/123", &token);
    assert_deny(&r, 403, "insufficient_scope");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"user/Patient.rs\"")
    );
    assert!(
        !r.text().contains("Patient"),
        "deny body reveals nothing about the resource"
    );
    assert!(e.upstream.requests().is_empty());
    assert_eq!(e.upstream.connections(), 0, "upstream was not even connected to");
}

#[test]
fn no_route_is_403_default_deny() {
    let e = env();
    let token = e
        .key
        .sign(&claims("user/Patient.rs user/Observation.rs user/Observation.c"));
    for (method, target) in [
        ("DELETE", "/fhir/Patient/123"),
        ("GET", "/fhir/Secret/1"),
        ("GET", "/admin"),
        ("PUT", "/fhir/Observation"),
    ] {
        let r = http::request(
            e.gw.proxy,
            method,
            target,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap();
        assert_deny(&r, 403, "no_matching_route");
        assert_eq!(r.header("www-authenticate"), None);
    }
    assert!(e.upstream.requests().is_empty());
}

#[test]
fn public_route_needs_no_token() {
    let e = env();
    let r = http::get(e.gw.proxy, "/fhir/metadata").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Even a broken token does not matter on a public route.
    let r = get_with_token(&e, "/fhir/metadata", "garbage");
    assert_eq!(r.status, 200);
    let recs = e.gw.wait_audit(2);
    assert_eq!(recs[0]["reason"], "public_route");
    assert_eq!(recs[0]["route"], "fhir-metadata");
    assert_eq!(recs[0]["sub"], serde_json::Value::Null);
}

#[test]
fn path_attacks_are_400_and_never_forwarded() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs"));
    let attacks = [
        "/fhir/Patient%2F123",
        "/fhir/Patient%2f123",
        "/fhir/Patient/1%5C2",
        "/fhir/Patient/1%00",
        "/fhir/Patient/%252F123",
        "/fhir/Patient/../Patient/123",
        "/fhir/Patient/%2e%2e/Patient/123",
        "/fhir/./Patient/123",
        "/fhir//Patient/123",
        "/fhir/Patient;x=1/123",
        "/fhir/Patient/123#frag",
    ];
    for target in attacks {
        let r = http::request(
            e.gw.proxy,
            "GET",
            target,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_request_path", "{target}");
    }
    assert!(e.upstream.requests().is_empty());
    let recs = e.gw.wait_audit(attacks.len());
    assert!(recs
        .iter()
        .all(|r| r["reason"] == "bad_request_path" && r["status"] == 400));
}

#[test]
fn two_authorization_headers_are_400() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs"));
    let auth = format!("Bearer {token}");
    let r = http::request(
        e.gw.proxy,
        "GET",
        "/fhir/Patient/1",
        &[("Authorization", &auth), ("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_deny(&r, 400, "malformed_authorization");
    assert!(e.upstream.requests().is_empty());
}

#[test]
fn one_audit_line_per_request_and_no_token_text() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs"));
    let mut expected = Vec::new();
    for i in 0..20 {
        let (target, tok, reason) = match i % 4 {
            0 => ("/fhir/Patient/1", token.as_str(), "allowed"),
            1 => ("/fhir/Observation", token.as_str(), "insufficient_scope"),
            2 => ("/fhir/Patient/1", "", "missing_token"),
            _ => ("/fhir/metadata", "", "public_route"),
        };
        let id = format!("req-{i}");
        let mut headers = vec![("X-Request-Id", id.as_str())];
        let auth = format!("Bearer {tok}");
        if !tok.is_empty() {
            headers.push(("Authorization", auth.as_str()));
        }
        http::request(e.gw.proxy, "GET", target, &headers, b"").unwrap();
        expected.push((id, reason));
    }
    let recs = e.gw.wait_audit(20);
    // Give a straggler the chance to show up, then demand exactly 20.
    std::thread::sleep(Duration::from_millis(300));
    let recs2 = e.gw.audit_records();
    assert_eq!(recs2.len(), 20, "exactly one record per request");
    for (rec, (id, reason)) in recs.iter().zip(&expected) {
        assert_eq!(rec["request_id"], id.as_str());
        assert_eq!(rec["reason"], *reason, "{rec}");
        assert_eq!(
            rec["decision"],
            if *reason == "allowed" || *reason == "public_route" {
                "allow"
            } else {
                "deny"
            }
        );
        // Always present; the rest only when they have a value (empty
        // fields are left out of the record).
        for field in [
            "ts",
            "request_id",
            "decision",
            "reason",
            "status",
            "method",
            "path",
            "duration_ms",
            "remote_addr",
            "policy_version",
        ] {
            assert!(rec.get(field).is_some(), "field {field} missing in {rec}");
        }
        let forwarded = *reason == "allowed" || *reason == "public_route";
        assert_eq!(rec.get("upstream_status").is_some(), forwarded, "{rec}");
        let authenticated = *reason == "allowed" || *reason == "insufficient_scope";
        for field in ["sub", "client_id", "iss", "scopes_granted"] {
            assert_eq!(rec.get(field).is_some(), authenticated, "{field} in {rec}");
        }
        assert!(
            rec.get("route").is_some(),
            "every request here matches a route: {rec}"
        );
        for (k, v) in rec.as_object().unwrap() {
            assert!(!v.is_null(), "null field {k} written in {rec}");
        }
        assert!(rec["policy_version"].as_str().unwrap().starts_with("sha256:"));
    }
    let text = e.gw.audit_text();
    assert!(!text.contains(&token), "token in audit file");
    assert!(
        !text.contains(token.split('.').nth(2).unwrap()),
        "token signature in audit file"
    );
    assert!(
        !e.gw.log().contains(token.split('.').nth(2).unwrap()),
        "token in logs"
    );
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_requests() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs"));
    for _ in 0..3 {
        assert_eq!(get_with_token(&e, "/fhir/Patient/7", &token).status, 200);
    }
    assert_eq!(http::get(e.gw.proxy, "/fhir/Patient/7").unwrap().status, 401);
    e.gw.wait_audit(4);
    let scrape = e.gw.metrics();
    let value = |name: &str, labels: &[(&str, &str)]| scrape.value(name, labels);
    assert_eq!(
        value(
            "phigate_requests_total",
            &[
                ("decision", "allow"),
                ("reason", "allowed"),
                ("route", "/fhir/Patient/{id}")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(
            "phigate_requests_total",
            &[("decision", "deny"), ("reason", "missing_token")]
        ),
        1.0
    );
    assert_eq!(
        value("phigate_upstream_responses_total", &[("status_class", "2xx")]),
        3.0
    );
    assert!(
        value(
            "phigate_jwks_fetch_total",
            &[("issuer", phigate_tests::ISSUER), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(value("phigate_audit_records_total", &[]), 4.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "phigate_audit_queue_depth"));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric.starts_with("phigate_request_duration_seconds")));
    // No subject ids in labels.
    assert!(!scrape
        .samples
        .iter()
        .any(|s| s.labels.values().any(|v| v.contains("user-42"))));
}

#[test]
fn readyz_waits_for_keys_and_missing_keys_fail_closed_with_503() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(TestKey::jwks(&[&key]));
    jwks.set_up(false);
    let upstream = Upstream::start();
    let gw = Gateway::start(GatewayOptions {
        audit_queue_size: 100,
        ..GatewayOptions::new(jwks.uri(), upstream.addr, TEST_POLICY)
    });
    // The JWKS server is answering 503: never ready.
    assert!(eventually(Duration::from_secs(5), || (jwks.fetches() >= 2).then_some(())).is_some());
    let r = http::get(gw.admin, "/readyz").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["keys"], false);
    // Requests needing a token fail closed with 503, not 401.
    let token = key.sign(&claims("user/Patient.rs"));
    let read = || {
        let auth = format!("Bearer {token}");
        http::request(
            gw.proxy,
            "GET",
            "/fhir/Patient/1",
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap()
    };
    assert_deny(&read(), 503, "keys_unavailable");
    // Public routes still work.
    assert_eq!(http::get(gw.proxy, "/fhir/metadata").unwrap().status, 200);
    jwks.set_up(true);
    gw.wait_ready();
    let r = read();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http::get(gw.admin, "/healthz").unwrap().status, 200);
}

#[test]
fn rotated_key_is_accepted_after_refetch() {
    let e = env();
    let new_key = TestKey::es256("k2");
    let token = new_key.sign(&claims("user/Patient.rs"));
    let before = e.jwks.fetches();
    e.jwks.set_jwks(TestKey::jwks(&[&e.key, &new_key]));
    let r = get_with_token(&e, "/fhir/Patient/1", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(e.jwks.fetches() > before, "unknown kid triggered a refetch");
}

#[test]
fn upstream_connections_are_pooled() {
    let e = env();
    let token = e.key.sign(&claims("user/Patient.rs"));
    for _ in 0..10 {
        assert_eq!(get_with_token(&e, "/fhir/Patient/1", &token).status, 200);
    }
    assert_eq!(e.upstream.requests().len(), 10);
    assert!(
        e.upstream.connections() < 10,
        "keep-alive reuse: {} connections for 10 requests",
        e.upstream.connections()
    );
}

#[test]
fn dev_endpoints_do_not_exist_in_run_mode() {
    let e = env();
    assert_eq!(http::get(e.gw.admin, "/dev/token").unwrap().status, 404);
    assert_eq!(http::get(e.gw.admin, "/dev/jwks.json").unwrap().status, 404);
}
