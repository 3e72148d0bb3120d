//! Sessions across replicas, end to end: two real phigate processes (A and
//! B) sharing one real `nats-server` (JetStream KV), one JWKS server and one
//! recording upstream. Automatic log-off (idle timeout), back-channel logout,
//! administrator revocation, DPoP proof replay and server nonces, the store
//! going away and coming back, and write coalescing.
//!
//! Each test starts its own nats-server and gateways on ephemeral ports.
//! Timeouts are small (seconds) so the suite stays quick; the only timing
//! assertion is the spec's "a logout on one replica refuses the session on
//! the others within one second" (measured, and printed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use phigate_tests::keys::DpopKey;
use phigate_tests::run_phigate;
use phigate_tests::sessions::{
    bearer, dpop_get, dpop_yaml, logout_claims, logout_yaml, post_logout, reason, record_of, session_claims,
    sessions_yaml, sleep_past_second_boundary, wait_record, Cluster, KeepAlive, PUBLIC_BASE_URL,
};
use phigate_tests::{eventually, Gateway, TestKey};
use serde_json::{json, Value};

/// Two protected read routes; `/fhir/Observation` only for DPoP-bound tokens.
const POLICY: &str = r#"
version: 1
routes:
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
  - methods: [GET]
    path: /fhir/Observation
    scopes: { any_of: [user/Observation.rs] }
    require_dpop: true
"#;

const SCOPE: &str = "user/Patient.rs user/Observation.rs";
const PATIENT: &str = "/fhir/Patient/1";
const OBSERVATION: &str = "/fhir/Observation";
/// The default `dpop.algorithms`, as a challenge lists them.
const ALGS: &str = "ES256 ES384 PS256 RS256 EdDSA";

const IDLE_CHALLENGE: &str = r#"Bearer error="invalid_token", error_description="session idle timeout""#;
const REVOKED_CHALLENGE: &str = r#"Bearer error="invalid_token", error_description="session revoked""#;

/// Assert a refusal: status, reason (JSON `error` / `error_description`).
#[track_caller]
fn assert_refused(r: &phigate_tests::http::Response, status: u16, why: &str) {
    assert_eq!(
        (r.status, reason(r).as_str()),
        (status, why),
        "{:?}\n{}",
        r.headers,
        r.text()
    );
}

/// The access record of the refusal `r` on `gw` says `why` with `status`.
#[track_caller]
fn assert_audited(gw: &Gateway, r: &phigate_tests::http::Response, status: u16, why: &str) {
    let rec = record_of(gw, r);
    assert_eq!(
        (
            rec["kind"].as_str(),
            rec["decision"].as_str(),
            rec["reason"].as_str(),
            rec["status"].as_u64()
        ),
        (Some("access"), Some("deny"), Some(why), Some(u64::from(status))),
        "{rec}"
    );
}

/// The `logout` audit record on `gw` with this `reason` (and `jti`, if given).
fn logout_record(gw: &Gateway, why: &str, jti: Option<&str>) -> Value {
    wait_record(gw, &format!("kind=logout reason={why} jti={jti:?}"), |r| {
        r["kind"] == "logout" && r["reason"] == why && jti.is_none_or(|j| r["jti"] == j)
    })
}

/// Poll `gw` with `token` until it is refused; the response and how long it took.
fn first_refusal(
    gw: &Gateway,
    token: &str,
    limit: Duration,
) -> Option<(phigate_tests::http::Response, Duration)> {
    let start = Instant::now();
    loop {
        let r = bearer(gw, PATIENT, token);
        if r.status != 200 {
            return Some((r, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn idle_session_is_logged_off_on_both_replicas_and_a_later_token_starts_a_new_session() {
    let c = Cluster::start(POLICY, "", |nats| sessions_yaml(nats, "2s", "200ms", "2s"));
    let old = c.token(SCOPE, Some("sid-idle"), "user-1");
    assert_eq!(bearer(&c.a, PATIENT, &old).status, 200);
    assert_eq!(bearer(&c.b, PATIENT, &old).status, 200);
    let forwarded = c.forwarded();
    assert_eq!(forwarded, 2);

    // Idle for longer than the 2 s timeout, on both replicas.
    std::thread::sleep(Duration::from_millis(2600));
    let on_a = bearer(&c.a, PATIENT, &old);
    let on_b = bearer(&c.b, PATIENT, &old);
    for (gw, r) in [(&c.a, &on_a), (&c.b, &on_b)] {
        assert_refused(r, 401, "session_idle_timeout");
        assert_eq!(r.header("www-authenticate"), Some(IDLE_CHALLENGE));
        assert_audited(gw, r, 401, "session_idle_timeout");
    }
    assert_eq!(
        c.forwarded(),
        forwarded,
        "refused requests never reach the upstream"
    );

    // The same IdP session (same sid) with a token issued after the end: a
    // fresh login, on either replica. The old token stays refused.
    sleep_past_second_boundary();
    let fresh = c.token(SCOPE, Some("sid-idle"), "user-1");
    assert_eq!(bearer(&c.b, PATIENT, &fresh).status, 200);
    assert_eq!(bearer(&c.a, PATIENT, &fresh).status, 200);
    assert_eq!(c.forwarded(), forwarded + 2);
    for gw in [&c.a, &c.b] {
        assert_refused(&bearer(gw, PATIENT, &old), 401, "session_idle_timeout");
    }
    assert_eq!(c.forwarded(), forwarded + 2);
}

#[test]
fn activity_on_one_replica_keeps_the_session_alive_on_the_other() {
    // The issuer's own idle timeout (2 s) overrides the global one (1 h).
    let c = Cluster::start(POLICY, "    sessions:\n      idle_timeout: 2s\n", |nats| {
        sessions_yaml(nats, "1h", "200ms", "2s")
    });
    let token = c.token(SCOPE, Some("sid-busy"), "user-2");
    // B holds the session from here on: only A's writes (through the
    // store's watch) can keep B's view of it fresh.
    assert_eq!(bearer(&c.b, PATIENT, &token).status, 200);
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_millis(5000) {
        assert_eq!(bearer(&c.a, PATIENT, &token).status, 200);
        std::thread::sleep(Duration::from_millis(500)); // idle / 4
    }
    // B's own last request was > 2 × idle ago.
    let r = bearer(&c.b, PATIENT, &token);
    assert_eq!(
        r.status,
        200,
        "A's activity keeps B's session alive: {}",
        r.text()
    );

    // No activity anywhere for longer than the idle timeout.
    std::thread::sleep(Duration::from_millis(2600));
    let r = bearer(&c.b, PATIENT, &token);
    assert_refused(&r, 401, "session_idle_timeout");
    assert_eq!(r.header("www-authenticate"), Some(IDLE_CHALLENGE));
    assert_refused(&bearer(&c.a, PATIENT, &token), 401, "session_idle_timeout");
}

#[test]
fn backchannel_logout_on_one_replica_refuses_the_session_on_the_other_within_a_second() {
    let c = Cluster::start(POLICY, "", |nats| {
        sessions_yaml(nats, "1h", "250ms", "2s") + &logout_yaml()
    });
    // Two IdP sessions of the same user; B and A both hold the first.
    let out = c.token(SCOPE, Some("sid-out"), "user-3");
    let stay = c.token(SCOPE, Some("sid-stay"), "user-3");
    for (gw, t) in [(&c.b, &out), (&c.b, &stay), (&c.a, &out)] {
        assert_eq!(bearer(gw, PATIENT, t).status, 200);
    }

    let claims = logout_claims(Some("sid-out"), None);
    let logout = c.logout_token(&claims);
    let r = post_logout(&c.a, &logout);
    assert_eq!((r.status, r.text()), (200, String::new()), "{:?}", r.headers);
    let before = c.forwarded();
    let (refused, took) =
        first_refusal(&c.b, &out, Duration::from_secs(5)).expect("B never refused the logged-out session");
    eprintln!("logout on A -> first 401 on B after {took:?}");
    assert!(
        took <= Duration::from_secs(1),
        "B refused the logged-out session only {took:?} after A's 200 (spec: within one second)"
    );
    assert_refused(&refused, 401, "session_revoked");
    assert_eq!(refused.header("www-authenticate"), Some(REVOKED_CHALLENGE));
    assert_audited(&c.b, &refused, 401, "session_revoked");
    let polled_ok = c.forwarded() - before; // answered 200 before the news arrived
    assert_refused(&bearer(&c.a, PATIENT, &out), 401, "session_revoked");
    assert_eq!(
        c.forwarded() - before,
        polled_ok,
        "refused requests never reach the upstream"
    );
    // Another IdP session of the same user is not touched by a `sid` logout.
    assert_eq!(bearer(&c.b, PATIENT, &stay).status, 200);

    let rec = logout_record(&c.a, "logged_out", claims["jti"].as_str());
    assert_eq!(
        (
            rec["source"].as_str(),
            rec["decision"].as_str(),
            rec["status"].as_u64(),
            rec["sid"].as_str()
        ),
        (Some("backchannel"), Some("allow"), Some(200), Some("sid-out")),
        "{rec}"
    );

    // The same logout token again, on the other replica: its jti is spent.
    let r = post_logout(&c.b, &logout);
    assert_refused(&r, 400, "logout_token_replayed");
    assert_eq!(r.json()["error"], "invalid_request");
    logout_record(&c.b, "logout_token_replayed", claims["jti"].as_str());

    // Tokens a logout receiver must refuse (§2.6), each with its reason.
    let with = |f: &dyn Fn(&mut Value)| {
        let mut claims = logout_claims(Some("sid-stay"), None);
        f(&mut claims);
        claims
    };
    let unknown_key = TestKey::es256("k-unknown");
    let bad: Vec<(&str, Value, &TestKey)> = vec![
        (
            "logout_token_has_nonce",
            with(&|c| c["nonce"] = json!("n-1")),
            &c.key,
        ),
        (
            "logout_token_wrong_audience",
            with(&|c| c["aud"] = json!("another-client")),
            &c.key,
        ),
        (
            "logout_token_missing_event",
            with(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
            &c.key,
        ),
        ("logout_token_bad_signature", with(&|_| {}), &unknown_key),
    ];
    for (why, claims, key) in bad {
        let r = post_logout(&c.a, &key.sign_with_typ(&claims, "logout+jwt"));
        assert_refused(&r, 400, why);
        assert_eq!(r.json()["error"], "invalid_request", "{why}");
        // Refused by validation: the record names the token's claims as
        // stated (unverified), never the token.
        let rec = logout_record(&c.a, why, claims["jti"].as_str());
        assert_eq!(
            (
                rec["source"].as_str(),
                rec["decision"].as_str(),
                rec["status"].as_u64(),
                rec["sid"].as_str(),
                rec["issuer"].as_str()
            ),
            (
                Some("backchannel"),
                Some("deny"),
                Some(400),
                Some("sid-stay"),
                Some(phigate_tests::ISSUER)
            ),
            "{rec}"
        );
        assert_eq!(rec["request_id"], r.header("x-request-id").unwrap(), "{rec}");
    }
    // None of those ended anything.
    assert_eq!(bearer(&c.b, PATIENT, &stay).status, 200);
    assert_eq!(bearer(&c.a, PATIENT, &stay).status, 200);
    let m = c.a.metrics();
    assert_eq!(
        m.value(
            "phigate_logouts_total",
            &[("source", "backchannel"), ("reason", "logged_out")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "phigate_logouts_total",
            &[("source", "backchannel"), ("reason", "logout_token_has_nonce")]
        ),
        1.0
    );
}

#[test]
fn dpop_proofs_are_single_use_across_replicas_and_bound_to_key_uri_and_scheme() {
    let c = Cluster::start(POLICY, "    max_token_lifetime: 1h\n", |nats| {
        sessions_yaml(nats, "1h", "250ms", "2s") + &dpop_yaml(false)
    });
    let client = DpopKey::generate();
    let mut claims = session_claims(SCOPE, Some("sid-dpop"), "user-4");
    claims["cnf"] = json!({ "jkt": client.jkt() });
    let token = c.key.sign(&claims);
    let htu = format!("{PUBLIC_BASE_URL}{PATIENT}");

    let proof = client.proof("GET", &htu, &token, None);
    let r = dpop_get(&c.a, PATIENT, &token, &proof);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.forwarded(), 1);

    // The very same proof on the other replica: its jti is spent everywhere.
    let r = dpop_get(&c.b, PATIENT, &token, &proof);
    assert_refused(&r, 401, "dpop_proof_replayed");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(r#"DPoP error="invalid_dpop_proof", algs="{ALGS}""#).as_str())
    );
    assert_audited(&c.b, &r, 401, "dpop_proof_replayed");

    // A bound token without its proof, as a bearer token.
    let r = bearer(&c.a, PATIENT, &token);
    assert_refused(&r, 401, "dpop_bound_token_as_bearer");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(r#"DPoP error="invalid_token", algs="{ALGS}""#).as_str())
    );

    // A valid proof by another key.
    let thief = DpopKey::generate();
    let r = dpop_get(&c.b, PATIENT, &token, &thief.proof("GET", &htu, &token, None));
    assert_refused(&r, 401, "dpop_key_mismatch");

    // A proof for another URI.
    let elsewhere = client.proof("GET", "http://evil.test/fhir/Patient/1", &token, None);
    let r = dpop_get(&c.a, PATIENT, &token, &elsewhere);
    assert_refused(&r, 401, "dpop_proof_htu_mismatch");
    assert_audited(&c.a, &r, 401, "dpop_proof_htu_mismatch");
    assert_eq!(c.forwarded(), 1, "only the first request reached the upstream");

    // `require_dpop` on a route: a plain bearer token is refused with a
    // DPoP challenge; the bound token with a fresh proof passes.
    let plain = c.token(SCOPE, Some("sid-plain"), "user-5");
    let r = bearer(&c.b, OBSERVATION, &plain);
    assert_refused(&r, 401, "dpop_required");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(r#"DPoP algs="{ALGS}""#).as_str())
    );
    assert_audited(&c.b, &r, 401, "dpop_required");
    assert_eq!(
        bearer(&c.b, PATIENT, &plain).status,
        200,
        "other routes take bearer tokens"
    );
    let obs_htu = format!("{PUBLIC_BASE_URL}{OBSERVATION}");
    let r = dpop_get(
        &c.b,
        OBSERVATION,
        &token,
        &client.proof("GET", &obs_htu, &token, None),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.forwarded(), 3);
    let upstream = c.upstream.requests();
    assert_eq!(
        upstream.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        [PATIENT, PATIENT, OBSERVATION]
    );
}

#[test]
fn dpop_nonce_issued_by_one_replica_is_accepted_by_the_other() {
    // `require_dpop` for the whole issuer this time.
    let c = Cluster::start(POLICY, "    require_dpop: true\n", |nats| {
        sessions_yaml(nats, "1h", "250ms", "2s") + &dpop_yaml(true)
    });
    let client = DpopKey::generate();
    let mut claims = session_claims(SCOPE, Some("sid-nonce"), "user-6");
    claims["cnf"] = json!({ "jkt": client.jkt() });
    let token = c.key.sign(&claims);
    let htu = format!("{PUBLIC_BASE_URL}{PATIENT}");

    let r = dpop_get(&c.a, PATIENT, &token, &client.proof("GET", &htu, &token, None));
    assert_refused(&r, 401, "dpop_nonce_required");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"DPoP error="use_dpop_nonce""#),
        "{challenge}"
    );
    let nonce = r
        .header("dpop-nonce")
        .expect("DPoP-Nonce with use_dpop_nonce")
        .to_string();

    // A nonce the gateway never issued.
    let r = dpop_get(
        &c.b,
        PATIENT,
        &token,
        &client.proof("GET", &htu, &token, Some("bm90LWlzc3VlZA")),
    );
    assert_refused(&r, 401, "dpop_nonce_required");
    assert!(r.header("dpop-nonce").is_some());

    // A's nonce on B: the nonce key is shared through the store.
    let r = dpop_get(
        &c.b,
        PATIENT,
        &token,
        &client.proof("GET", &htu, &token, Some(&nonce)),
    );
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
    assert_eq!(c.forwarded(), 1);
    // Every DPoP response carries a fresh nonce (RFC 9449 §8.2), valid on A too.
    let fresh = r.header("dpop-nonce").expect("DPoP-Nonce on the 200").to_string();
    let r = dpop_get(
        &c.a,
        PATIENT,
        &token,
        &client.proof("GET", &htu, &token, Some(&fresh)),
    );
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
    assert_eq!(c.forwarded(), 2);

    // The issuer requires DPoP: an unbound bearer token is refused.
    let plain = c.token(SCOPE, Some("sid-plain"), "user-6");
    let r = bearer(&c.a, PATIENT, &plain);
    assert_refused(&r, 401, "dpop_required");
    assert_eq!(c.forwarded(), 2);
}

/// With the store down, what degrades and what fails closed:
/// - degrades, for at most `stale_grace`: sessions this replica already
///   holds are checked against its local view (idle log-off and touches are
///   decided locally and written when the store is back);
/// - fails closed at once with 503 `session_store_unavailable`: a session
///   this replica does not hold (even one another replica holds: it might
///   have been ended there), every DPoP proof (its one-time use cannot be
///   proven), every logout and revocation (it could not reach the other
///   replicas; the IdP retries), and — after `stale_grace` — every session.
#[test]
fn store_outage_degrades_for_known_sessions_then_fails_closed_and_recovers() {
    let mut c = Cluster::start(POLICY, "", |nats| {
        sessions_yaml(nats, "1h", "250ms", "3s") + &logout_yaml() + &dpop_yaml(false)
    });
    let known = c.token(SCOPE, Some("sid-known"), "user-7");
    assert_eq!(bearer(&c.a, PATIENT, &known).status, 200);
    let client = DpopKey::generate();
    let mut claims = session_claims(SCOPE, Some("sid-dpop"), "user-7");
    claims["cnf"] = json!({ "jkt": client.jkt() });
    let bound = c.key.sign(&claims);
    let htu = format!("{PUBLIC_BASE_URL}{PATIENT}");
    assert_eq!(
        dpop_get(&c.a, PATIENT, &bound, &client.proof("GET", &htu, &bound, None)).status,
        200
    );
    let up = |gw: &Gateway| gw.metrics().value("phigate_session_store_up", &[]);
    assert_eq!((up(&c.a), up(&c.b)), (1.0, 1.0));

    c.nats.stop();
    let stopped = Instant::now();
    // Degrades: a session A holds is still served from A's view.
    let r = bearer(&c.a, PATIENT, &known);
    assert_eq!(
        r.status,
        200,
        "{:?} after the stop (stale_grace 3s): {}",
        stopped.elapsed(),
        r.text()
    );
    // Fails closed: a new session, and a session only the other replica holds.
    let new = c.token(SCOPE, Some("sid-new"), "user-8");
    let r = bearer(&c.a, PATIENT, &new);
    assert_refused(&r, 503, "session_store_unavailable");
    assert_audited(&c.a, &r, 503, "session_store_unavailable");
    assert_refused(&bearer(&c.b, PATIENT, &known), 503, "session_store_unavailable");
    // Fails closed: a DPoP proof's single use cannot be recorded.
    let r = dpop_get(&c.a, PATIENT, &bound, &client.proof("GET", &htu, &bound, None));
    assert_refused(&r, 503, "session_store_unavailable");
    // Fails closed: a logout cannot reach the other replicas; audited.
    let logout_claims_new = logout_claims(Some("sid-new"), None);
    let logout = c.logout_token(&logout_claims_new);
    let r = post_logout(&c.a, &logout);
    assert_refused(&r, 503, "session_store_unavailable");
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let rec = logout_record(
        &c.a,
        "session_store_unavailable",
        logout_claims_new["jti"].as_str(),
    );
    assert_eq!(
        (rec["decision"].as_str(), rec["status"].as_u64()),
        (Some("deny"), Some(503)),
        "{rec}"
    );
    // So does an administrator's revocation.
    let (ok, out) = run_phigate([
        "sessions",
        "revoke",
        "--sub",
        "user-8",
        "--admin",
        &c.b.admin.to_string(),
    ]);
    assert!(!ok && out.contains("503"), "{out}");
    assert_eq!((up(&c.a), up(&c.b)), (0.0, 0.0));
    assert_eq!(
        c.forwarded(),
        3,
        "only the two warm-up requests and the one degraded one"
    );

    // Past stale_grace even the known session fails closed.
    let r = eventually(Duration::from_secs(15), || {
        let r = bearer(&c.a, PATIENT, &known);
        (r.status != 200).then_some(r)
    })
    .expect("the known session is refused once stale_grace has passed");
    eprintln!(
        "known session refused {:?} after the store stopped (stale_grace 3s)",
        stopped.elapsed()
    );
    assert_refused(&r, 503, "session_store_unavailable");

    // The store is back (same port and JetStream store): everything works,
    // the known session included, and the IdP's retried logout goes through.
    c.nats.restart();
    let back = Instant::now();
    eventually(Duration::from_secs(20), || {
        (bearer(&c.a, PATIENT, &known).status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("A never recovered:\n{}", c.a.log()));
    eprintln!("A serving again {:?} after the store restarted", back.elapsed());
    eventually(Duration::from_secs(20), || {
        (bearer(&c.b, PATIENT, &new).status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("B never recovered:\n{}", c.b.log()));
    assert_eq!(bearer(&c.a, PATIENT, &new).status, 200);
    assert_eq!(
        dpop_get(&c.a, PATIENT, &bound, &client.proof("GET", &htu, &bound, None)).status,
        200
    );
    let r = post_logout(&c.a, &logout);
    assert_eq!(r.status, 200, "the retried logout: {}", r.text());
    let (refused, took) = first_refusal(&c.b, &new, Duration::from_secs(5)).expect("logout applied on B");
    eprintln!("after the outage: logout on A -> first 401 on B after {took:?}");
    assert_refused(&refused, 401, "session_revoked");
    assert!(eventually(Duration::from_secs(10), || {
        (up(&c.a) == 1.0 && up(&c.b) == 1.0).then_some(())
    })
    .is_some());
}

#[test]
fn admin_revocation_through_the_cli_on_one_replica_refuses_the_subject_on_the_other() {
    let c = Cluster::start(POLICY, "", |nats| sessions_yaml(nats, "1h", "250ms", "2s"));
    let first = c.token(SCOPE, Some("sid-77a"), "user-77");
    let second = c.token(SCOPE, Some("sid-77b"), "user-77");
    let other = c.token(SCOPE, Some("sid-78"), "user-78");
    for (gw, t) in [(&c.b, &first), (&c.b, &other), (&c.a, &second)] {
        assert_eq!(bearer(gw, PATIENT, t).status, 200);
    }

    let (ok, out) = run_phigate([
        "sessions",
        "revoke",
        "--sub",
        "user-77",
        "--actor",
        "security-officer-1",
        "--admin",
        &c.a.admin.to_string(),
    ]);
    assert!(ok, "{out}");
    let answer: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answer["revoked"]["sub"], "user-77", "{answer}");
    let (r, took) =
        first_refusal(&c.b, &first, Duration::from_secs(5)).expect("B refuses the revoked subject");
    eprintln!("CLI revocation on A -> first 401 on B after {took:?}");
    assert_refused(&r, 401, "session_revoked");
    assert_eq!(r.header("www-authenticate"), Some(REVOKED_CHALLENGE));
    assert_audited(&c.b, &r, 401, "session_revoked");
    // Every session of the subject, on either replica; not other subjects.
    assert_refused(&bearer(&c.b, PATIENT, &second), 401, "session_revoked");
    assert_refused(&bearer(&c.a, PATIENT, &first), 401, "session_revoked");
    assert_eq!(bearer(&c.b, PATIENT, &other).status, 200);

    let rec = logout_record(&c.a, "revoked", None);
    assert_eq!(
        (
            rec["source"].as_str(),
            rec["decision"].as_str(),
            rec["status"].as_u64(),
            rec["sub"].as_str(),
            rec["actor"].as_str(),
            rec["issuer"].as_str()
        ),
        (
            Some("admin"),
            Some("allow"),
            Some(200),
            Some("user-77"),
            Some("security-officer-1"),
            Some(phigate_tests::ISSUER)
        ),
        "{rec}"
    );
    assert_eq!(
        c.a.metrics().value(
            "phigate_logouts_total",
            &[("source", "admin"), ("reason", "revoked")]
        ),
        1.0
    );

    // A login after the revocation: a token minted later passes.
    sleep_past_second_boundary();
    let later = c.token(SCOPE, Some("sid-77c"), "user-77");
    assert_eq!(bearer(&c.b, PATIENT, &later).status, 200);
    assert_eq!(bearer(&c.a, PATIENT, &later).status, 200);
    assert_refused(&bearer(&c.a, PATIENT, &second), 401, "session_revoked");
}

#[test]
fn activity_writes_are_coalesced() {
    let c = Cluster::start(POLICY, "", |nats| sessions_yaml(nats, "30s", "250ms", "2s"));
    let token = c.token(SCOPE, Some("sid-hot"), "user-9");
    let auth = format!("Bearer {token}");
    let writes = |gw: &Gateway| gw.metrics().value("phigate_session_store_writes_total", &[]);
    let reads = |gw: &Gateway| gw.metrics().value("phigate_session_store_reads_total", &[]);
    let (writes_before, reads_before) = (writes(&c.a), reads(&c.a));

    let mut conn = KeepAlive::new(c.a.proxy);
    let started = Instant::now();
    for i in 0..2000 {
        let r = conn.get(PATIENT, &[("Authorization", &auth)]).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let took = started.elapsed();
    // Let the flusher write the last touch.
    std::thread::sleep(Duration::from_millis(600));
    let (written, read) = (writes(&c.a) - writes_before, reads(&c.a) - reads_before);
    eprintln!(
        "2000 requests in {took:?} over {} connection(s): {written} store writes, {read} store reads",
        conn.connections
    );
    assert!(
        written < 100.0,
        "2000 requests of one session took {written} store writes (in {took:?})"
    );
    assert!(written >= 1.0, "the session was written at all");
    assert_eq!(c.a.metrics().value("phigate_sessions_local", &[]), 1.0);
    assert_eq!(c.forwarded(), 2000);
    // B learns of the activity through the store.
    assert_eq!(bearer(&c.b, PATIENT, &token).status, 200);
}
