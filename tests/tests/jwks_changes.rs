//! Key-set changes through the real gateway binary: a `jwks_file` is watched
//! (a removed key is refused within about a second and nothing more reaches
//! the upstream; a key added by atomic rename is accepted within about a
//! second, even right after an unknown-kid miss for it), and requests with an
//! unknown `kid` share one fetch against a hanging JWKS server instead of
//! queueing behind it.
//!
//! Timing: changes are awaited with bounded polls (generous limits); the
//! observed latencies are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use phigate_tests::http::{self, Response};
use phigate_tests::jwks_helpers::{replace_file, start_with_jwks_file, start_with_key_source, HangingJwks};
use phigate_tests::keys::claims;
use phigate_tests::{eventually, TestKey, TEST_POLICY};

/// No invalid-token rate limit: these tests send unknown-kid tokens on purpose.
const NO_RATE_LIMIT: &str = "rate_limit: { invalid_tokens: 0 }\n";
/// Limit for "eventually" (noisy machines); the expected latency is ~1 s
/// (the default key TTL, which used to bound it, is 10 min).
const EVENTUALLY: Duration = Duration::from_secs(10);

fn get(proxy: SocketAddr, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    http::request(
        proxy,
        "GET",
        "/fhir/Patient/1",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .unwrap()
}

fn reason(r: &Response) -> String {
    if r.status == 200 {
        return "ok".into();
    }
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn key_removed_from_jwks_file_is_refused_within_seconds_and_nothing_reaches_the_upstream() {
    let (k1, k2) = (TestKey::es256("k1"), TestKey::es256("k2"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, TestKey::jwks(&[&k1, &k2])).unwrap();
    let env = start_with_jwks_file(TEST_POLICY, "", NO_RATE_LIMIT, &file);
    let (gw, upstream) = (&env.gw, &env.upstream);
    let t1 = k1.sign(&claims("user/Patient.rs"));
    assert_eq!(get(gw.proxy, &t1).status, 200);
    assert_eq!(get(gw.proxy, &t1).status, 200, "served from the token cache");

    std::fs::write(&file, TestKey::jwks(&[&k2])).unwrap();
    let removed = Instant::now();
    let r = eventually(EVENTUALLY, || {
        let r = get(gw.proxy, &t1);
        (r.status != 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("removed key still accepted:\n{}", gw.log()));
    eprintln!("key removal applied after {:?}", removed.elapsed());
    assert_eq!(r.status, 401);
    assert_eq!(reason(&r), "unknown_key");

    let reached = upstream.requests().len();
    for _ in 0..5 {
        let r = get(gw.proxy, &t1);
        assert_eq!((r.status, reason(&r).as_str()), (401, "unknown_key"));
    }
    assert_eq!(
        upstream.requests().len(),
        reached,
        "nothing signed by the removed key reaches the upstream"
    );
    assert_eq!(get(gw.proxy, &k2.sign(&claims("user/Patient.rs"))).status, 200);
}

#[test]
fn key_added_by_atomic_rename_is_accepted_within_seconds_even_right_after_a_miss() {
    let (k1, k2) = (TestKey::es256("k1"), TestKey::es256("k2"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, TestKey::jwks(&[&k1])).unwrap();
    // A long cooldown: the miss must not hold the new key back for it.
    let env = start_with_jwks_file(
        TEST_POLICY,
        "    unknown_kid_cooldown: 60s\n",
        NO_RATE_LIMIT,
        &file,
    );
    let (gw, upstream) = (&env.gw, &env.upstream);
    let t2 = k2.sign(&claims("user/Patient.rs"));
    for _ in 0..2 {
        let r = get(gw.proxy, &t2);
        assert_eq!((r.status, reason(&r).as_str()), (401, "unknown_key"));
    }

    replace_file(&file, &TestKey::jwks(&[&k1, &k2]));
    let added = Instant::now();
    eventually(EVENTUALLY, || (get(gw.proxy, &t2).status == 200).then_some(()))
        .unwrap_or_else(|| panic!("added key never accepted:\n{}", gw.log()));
    eprintln!("key addition (rename-over) applied after {:?}", added.elapsed());
    assert_eq!(get(gw.proxy, &k1.sign(&claims("user/Patient.rs"))).status, 200);
    assert_eq!(
        upstream.requests().len(),
        2,
        "only the two accepted requests reached the upstream"
    );
}

#[test]
fn unknown_kids_against_a_hanging_jwks_server_are_answered_without_queueing() {
    let k1 = TestKey::es256("k1");
    let jwks = HangingJwks::start(TestKey::jwks(&[&k1]));
    let env = start_with_key_source(
        TEST_POLICY,
        "",
        NO_RATE_LIMIT,
        &format!("jwks_uri: {}", jwks.uri()),
    );
    let (gw, upstream) = (&env.gw, &env.upstream);
    let good = k1.sign(&claims("user/Patient.rs"));
    assert_eq!(get(gw.proxy, &good).status, 200);

    jwks.set_hang(true);
    let before = jwks.requests();
    let start = Instant::now();
    let proxy = gw.proxy;
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let token = TestKey::es256(&format!("stranger-{i}")).sign(&claims("user/Patient.rs"));
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = get(proxy, &token);
                (r, t.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for t in threads {
        let (r, took) = t.join().unwrap();
        assert_eq!((r.status, reason(&r).as_str()), (401, "unknown_key"));
        slowest = slowest.max(took);
    }
    let all = start.elapsed();
    eprintln!("20 concurrent unknown-kid requests, JWKS server hanging: slowest {slowest:?}, all {all:?}");
    // Queued behind the hanging fetch they would take its whole 5 s timeout
    // (and more, one cooldown after another).
    assert!(
        all < Duration::from_millis(4500),
        "requests queued behind the hanging fetch: {all:?}\n{}",
        gw.log()
    );
    assert_eq!(
        jwks.requests() - before,
        1,
        "one fetch in flight, shared by all requests"
    );
    assert_eq!(jwks.hanging(), 1);
    assert_eq!(
        get(gw.proxy, &good).status,
        200,
        "known keys keep serving meanwhile"
    );
    assert_eq!(upstream.requests().len(), 2);
}
