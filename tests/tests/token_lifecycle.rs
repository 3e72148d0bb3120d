//! Issue 4 end to end: JWKS lifecycle against a real JWKS HTTP server the
//! test controls (outage → last-known-good → 503 past the bound, garbage
//! refused, key removal, unknown-kid floods), the verified-token cache and
//! the invalid-token rate limit, through the real gateway binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use phigate_tests::http::{self, Response};
use phigate_tests::keys::claims;
use phigate_tests::{eventually, TestEnv, TestKey, TEST_POLICY};

type Env = TestEnv;

fn env(issuer_yaml: &str, top_yaml: &str) -> Env {
    TestEnv::start_with(TEST_POLICY, issuer_yaml, top_yaml)
}

fn get(e: &Env, token: &str) -> Response {
    e.get("/fhir/Patient/1", token)
}

fn reason(r: &Response) -> String {
    if r.status == 200 {
        return "ok".into();
    }
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn outage_serves_last_known_good_then_fails_closed_with_503_then_recovers() {
    let e = env("    jwks_ttl: 1s\n    max_stale: 3s\n", "");
    let token = e.key.sign(&claims("user/Patient.rs"));
    assert_eq!(get(&e, &token).status, 200);
    e.jwks.set_up(false);
    let down_at = Instant::now();
    // Still served from the last-known-good keys right after the outage starts.
    assert_eq!(
        get(&e, &token).status,
        200,
        "last-known-good keys serve during the outage"
    );
    // Past TTL + max_stale: fail closed with 503, not 401.
    let r = eventually(Duration::from_secs(15), || {
        let r = get(&e, &token);
        (r.status == 503).then_some(r)
    })
    .expect("requests fail closed once the keys are too old");
    assert_eq!(reason(&r), "keys_unavailable");
    assert!(
        down_at.elapsed() >= Duration::from_secs(3),
        "not before the bound"
    );
    assert_eq!(http::get(e.gw.admin, "/readyz").unwrap().status, 503);
    e.jwks.set_up(true);
    eventually(Duration::from_secs(15), || {
        (get(&e, &token).status == 200).then_some(())
    })
    .expect("recovers once the key server is back");
    assert_eq!(http::get(e.gw.admin, "/readyz").unwrap().status, 200);
}

#[test]
fn garbage_updates_are_refused_and_removed_keys_stop_working() {
    let e = env("    jwks_ttl: 1s\n", "");
    let token = e.key.sign(&claims("user/Patient.rs"));
    assert_eq!(get(&e, &token).status, 200);
    let before =
        e.gw.metrics()
            .value("phigate_jwks_fetch_total", &[("result", "invalid")]);
    for garbage in [
        "<html>oops</html>".to_string(),
        r#"{"keys":[]}"#.to_string(),
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0"}]}"#.to_string(),
    ] {
        e.jwks.set_jwks(garbage);
        let seen = eventually(Duration::from_secs(10), || {
            let n =
                e.gw.metrics()
                    .value("phigate_jwks_fetch_total", &[("result", "invalid")]);
            (n > before).then_some(n)
        });
        assert!(seen.is_some(), "the garbage update was fetched and refused");
        assert_eq!(get(&e, &token).status, 200, "previous keys kept");
    }
    // Rotate: k1 removed, k2 added → the old token stops working after the next refresh.
    let k2 = TestKey::es256("k2");
    e.jwks.set_jwks(TestKey::jwks(&[&k2]));
    let r = eventually(Duration::from_secs(10), || {
        let r = get(&e, &token);
        (r.status == 401).then_some(r)
    })
    .expect("removed key no longer accepted");
    assert_eq!(reason(&r), "unknown_key");
    assert_eq!(get(&e, &k2.sign(&claims("user/Patient.rs"))).status, 200);
}

#[test]
fn unknown_kid_flood_causes_at_most_one_fetch_per_cooldown() {
    let e = env(
        "    unknown_kid_cooldown: 2s\n",
        "rate_limit: { invalid_tokens: 0 }\n",
    );
    let started_fetches = e.jwks.fetches();
    let start = Instant::now();
    let n = 1000;
    for i in 0..n {
        let stranger = TestKey::es256(&format!("unknown-{}", i % 50));
        let r = get(&e, &stranger.sign(&claims("user/Patient.rs")));
        assert_eq!(r.status, 401);
        assert_eq!(reason(&r), "unknown_key");
    }
    let elapsed = start.elapsed();
    let fetches = e.jwks.fetches() - started_fetches;
    let cooldowns = elapsed.as_secs_f64() / 2.0;
    assert!(
        fetches as f64 <= cooldowns.ceil() + 1.0,
        "{fetches} fetches for {n} unknown-kid requests in {elapsed:?} (cooldown 2s)"
    );
}

#[test]
fn invalid_token_flood_is_rate_limited_per_address() {
    let e = env("", "rate_limit: { invalid_tokens: 5, window: 30s }\n");
    let good = e.key.sign(&claims("user/Patient.rs"));
    let forged = TestKey::es256("k1").sign(&claims("user/Patient.rs"));
    for _ in 0..5 {
        assert_eq!(reason(&get(&e, &forged)), "invalid_signature");
    }
    // Now even a valid token from this address waits out the window.
    let r = get(&e, &good);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(reason(&r), "rate_limited");
    // Requests without a token are not affected (no crypto to protect).
    assert_eq!(
        reason(&http::get(e.gw.proxy, "/fhir/Patient/1").unwrap()),
        "missing_token"
    );
    let m = e.gw.metrics();
    assert!(m.value("phigate_rate_limited_total", &[]) >= 1.0);
    assert!(m.value("phigate_requests_total", &[("reason", "rate_limited")]) >= 1.0);
}

#[test]
fn verified_token_cache_serves_repeat_tokens_and_metrics_show_key_age() {
    let e = env("", "");
    let token = e.key.sign(&claims("user/Patient.rs"));
    for _ in 0..5 {
        assert_eq!(get(&e, &token).status, 200);
    }
    let m = e.gw.metrics();
    assert!(m.value("phigate_token_cache_hits_total", &[]) >= 4.0);
    assert!(m.value("phigate_token_cache_misses_total", &[]) >= 1.0);
    assert_eq!(
        m.value("phigate_jwks_keys", &[("issuer", phigate_tests::ISSUER)]),
        1.0
    );
    assert!(m.samples.iter().any(|s| s.metric == "phigate_jwks_age_seconds"));
}

#[test]
fn behind_a_trusted_proxy_the_limit_is_per_forwarded_client() {
    let e = env(
        "",
        "rate_limit: { invalid_tokens: 3, window: 30s, trusted_proxies: [127.0.0.1/32] }\n",
    );
    let good = e.key.sign(&claims("user/Patient.rs"));
    let forged = TestKey::es256("k1").sign(&claims("user/Patient.rs"));
    let from = |client: &str, token: &str| {
        e.send(
            "GET",
            "/fhir/Patient/1",
            token,
            &[("X-Forwarded-For", client)],
            b"",
        )
    };
    for _ in 0..3 {
        assert_eq!(reason(&from("203.0.113.1", &forged)), "invalid_signature");
    }
    assert_eq!(
        reason(&from("203.0.113.1", &good)),
        "rate_limited",
        "the attacker is limited"
    );
    assert_eq!(
        from("203.0.113.2", &good).status,
        200,
        "another client behind the same proxy is not"
    );
    // A client cannot escape by prepending its own X-Forwarded-For entries.
    assert_eq!(reason(&from("198.51.100.1, 203.0.113.1", &good)), "rate_limited");
}
