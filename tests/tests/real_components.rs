//! phigate against real third-party software, each started by the harness on
//! a loopback ephemeral port (see `phigate_tests::realworld`):
//!
//! - npm `oidc-provider` as the OAuth 2.0 authorization server: RFC 9068 JWT
//!   access tokens (`typ: at+jwt`, ES256 and RS256) from the client
//!   credentials grant with resource indicators, keys found by OIDC
//!   discovery, a key rotation at the server;
//! - Medplum's FHIR engine (`@medplum/fhir-router`, in-memory repository) as
//!   the upstream: reads, searches and creates answered by a real FHIR
//!   server, and proof from its own request log that denied requests never
//!   reached it;
//! - Debian's Prometheus scraping phigate's admin listener with the
//!   repository's alert rules loaded.
//!
//! A component that is not installed skips its test with a message, or fails
//! it under `PHIGATE_REQUIRE_REAL=1` (CI). `scripts/bootstrap.sh` installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use phigate_tests::http::{self, Response};
use phigate_tests::keys::{claims, now};
use phigate_tests::realworld::{
    jwt_parts, observation, prometheus_or_skip, repo_root, Prometheus, RealEnv, AUDIENCE, OTHER_AUDIENCE,
    OTHER_PATIENT, PATIENT, PATIENT_RS256, SHORT_LIVED, SHORT_LIVED_TTL, SYSTEM_ES256,
};
use phigate_tests::{eventually, TestEnv, TEST_POLICY};
use serde_json::{json, Value};

const SYSTEM_SCOPES: &str = "system/Patient.rs system/Observation.rs system/Observation.c";
const PATIENT_SCOPES: &str = "patient/Patient.rs patient/Observation.rs";

fn assert_deny(r: &Response, status: u16, reason: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], reason, "{body}");
    body["request_id"].as_str().unwrap().to_string()
}

/// The subjects of the Observations in a search result bundle.
fn subjects(bundle: &Value) -> Vec<String> {
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    assert_eq!(bundle["type"], "searchset", "{bundle}");
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    e["resource"]["subject"]["reference"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn oidc_provider_tokens_read_search_and_create_on_medplum() {
    let Some(e) = RealEnv::start("oidc_provider_tokens_read_search_and_create_on_medplum", "") else {
        return;
    };

    // A backend service with system/ scopes, ES256-signed by the authorization server.
    let system = e.auth.token(SYSTEM_ES256, SYSTEM_SCOPES, AUDIENCE);
    let (header, payload) = jwt_parts(&system);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(payload["iss"], e.auth.issuer.as_str());
    assert_eq!(payload["aud"], AUDIENCE);

    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &system);
    assert_eq!(r.status, 200, "{}", r.text());
    let patient = r.json();
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(patient["id"], PATIENT);
    assert_eq!(patient["name"][0]["family"], "Alpha");
    let read_id = r.header("x-request-id").unwrap().to_string();

    // Search by patient: system/ scopes are not bound to a compartment.
    let r = e.get(&format!("/fhir/Observation?subject=Patient/{PATIENT}"), &system);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(subjects(&r.json()), vec![format!("Patient/{PATIENT}")]);
    let r = e.get(
        &format!("/fhir/Observation?patient=Patient/{OTHER_PATIENT}"),
        &system,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(subjects(&r.json()), vec![format!("Patient/{OTHER_PATIENT}")]);

    // Create: the FHIR server assigns the id and says where it is.
    let body = observation(PATIENT, "8310-5", "Body temperature").to_string();
    let r = e.send("POST", "/fhir/Observation", Some(&system), body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let new_id = created["id"].as_str().expect("server-assigned id").to_string();
    assert_eq!(created["code"]["coding"][0]["code"], "8310-5");
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(&format!("/fhir/Observation/{new_id}/"))),
        "{:?}",
        r.headers
    );
    let r = e.get(&format!("/fhir/Observation/{new_id}"), &system);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], new_id.as_str());

    // A SMART patient-context app: RS256, `patient` claim from the server.
    let patient_token = e.auth.token(PATIENT_RS256, PATIENT_SCOPES, AUDIENCE);
    let (header, payload) = jwt_parts(&patient_token);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(payload["patient"], PATIENT, "{payload}");
    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &patient_token);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.get(
        &format!("/fhir/Observation?subject=Patient/{PATIENT}"),
        &patient_token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let found = subjects(&r.json());
    assert_eq!(
        found.len(),
        2,
        "the seeded and the created Observation: {found:?}"
    );
    assert!(
        found.iter().all(|s| *s == format!("Patient/{PATIENT}")),
        "{found:?}"
    );
    let patient_search_id = r.header("x-request-id").unwrap().to_string();

    // What the FHIR server received: each request once, as sent, with the
    // bearer token forwarded (the server may do its own checks).
    let seen = e.fhir.proxied_requests();
    let targets: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    let observation_path = format!("/fhir/Observation/{new_id}");
    assert_eq!(
        targets,
        vec![
            ("GET", format!("/fhir/Patient/{PATIENT}").as_str()),
            (
                "GET",
                format!("/fhir/Observation?subject=Patient/{PATIENT}").as_str()
            ),
            (
                "GET",
                format!("/fhir/Observation?patient=Patient/{OTHER_PATIENT}").as_str()
            ),
            ("POST", "/fhir/Observation"),
            ("GET", observation_path.as_str()),
            ("GET", format!("/fhir/Patient/{PATIENT}").as_str()),
            (
                "GET",
                format!("/fhir/Observation?subject=Patient/{PATIENT}").as_str()
            ),
        ]
    );
    assert!(seen.iter().all(|r| r["authorization"] == true));
    assert_eq!(seen[3]["body_bytes"], body.len());

    // The audit trail names the real issuer, client and patient.
    let rec = e.gw.record(&read_id);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["iss"], e.auth.issuer.as_str());
    assert_eq!(rec["client_id"], SYSTEM_ES256);
    assert_eq!(rec["upstream_status"], 200);
    let rec = e.gw.record(&patient_search_id);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["client_id"], PATIENT_RS256);
    assert_eq!(rec["patient"], PATIENT);
    assert_eq!(
        rec["scopes_granted"],
        json!(["patient/Patient.rs", "patient/Observation.rs"])
    );
}

#[test]
fn denied_requests_never_reach_medplum() {
    let Some(e) = RealEnv::start("denied_requests_never_reach_medplum", "") else {
        return;
    };
    let mut denied = Vec::new();

    let r = e.send("GET", &format!("/fhir/Patient/{PATIENT}"), None, b"");
    denied.push(assert_deny(&r, 401, "missing_token"));

    // Wrong scope: the client asked the server for Patient reads only.
    let patients_only = e.auth.token(SYSTEM_ES256, "system/Patient.rs", AUDIENCE);
    assert_eq!(jwt_parts(&patients_only).1["scope"], "system/Patient.rs");
    let r = e.get(
        &format!("/fhir/Observation?subject=Patient/{PATIENT}"),
        &patients_only,
    );
    denied.push(assert_deny(&r, 403, "insufficient_scope"));
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("system/Observation.s"), "{challenge}");
    let body = observation(PATIENT, "8867-4", "Heart rate").to_string();
    let r = e.send("POST", "/fhir/Observation", Some(&patients_only), body.as_bytes());
    denied.push(assert_deny(&r, 403, "insufficient_scope"));

    // Wrong audience: a token the same server issued for another resource server.
    let elsewhere = e.auth.token(SYSTEM_ES256, SYSTEM_SCOPES, OTHER_AUDIENCE);
    assert_eq!(jwt_parts(&elsewhere).1["aud"], OTHER_AUDIENCE);
    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &elsewhere);
    denied.push(assert_deny(&r, 401, "wrong_audience"));
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("error=\"invalid_token\"")));

    // The patient app stays in its patient's compartment.
    let patient_token = e.auth.token(PATIENT_RS256, PATIENT_SCOPES, AUDIENCE);
    let r = e.get(&format!("/fhir/Patient/{OTHER_PATIENT}"), &patient_token);
    denied.push(assert_deny(&r, 403, "outside_patient_compartment"));
    let r = e.get(
        &format!("/fhir/Observation?subject=Patient/{OTHER_PATIENT}"),
        &patient_token,
    );
    denied.push(assert_deny(&r, 403, "outside_patient_compartment"));

    // The authorization server itself refuses scopes the client may not have.
    let r = e
        .auth
        .token_response(PATIENT_RS256, "system/Patient.rs", AUDIENCE);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_scope");

    // A positive control: an allowed request is seen by the FHIR server.
    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &patients_only);
    assert_eq!(r.status, 200, "{}", r.text());
    let allowed = r.header("x-request-id").unwrap().to_string();

    let seen = e.fhir.proxied_requests();
    assert_eq!(
        seen.len(),
        1,
        "only the allowed request reached the FHIR server: {seen:?}"
    );
    assert_eq!(seen[0]["request_id"], allowed.as_str());
    // Nor did anything else: the server's whole log is the seeding (2
    // patients, 2 observations, sent straight to it) plus that one request.
    let everything = e.fhir.requests();
    assert_eq!(everything.len(), 4 + 1, "{everything:?}");
    for id in &denied {
        let rec = e.gw.record(id);
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert!(rec.get("upstream_status").is_none(), "{rec}");
    }
    assert_eq!(e.gw.record(&denied[3])["reason"], "wrong_audience");
}

#[test]
fn expired_token_from_the_authorization_server_is_refused() {
    // A 1 s leeway instead of the default 30 s keeps the wait short.
    let Some(e) = RealEnv::start(
        "expired_token_from_the_authorization_server_is_refused",
        "    leeway: 1s\n",
    ) else {
        return;
    };
    let token = e.auth.token(SHORT_LIVED, "system/Patient.rs", AUDIENCE);
    let exp = jwt_parts(&token).1["exp"].as_i64().unwrap();
    let iat = jwt_parts(&token).1["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, SHORT_LIVED_TTL);
    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &token);
    assert_eq!(r.status, 200, "valid until it expires: {}", r.text());

    // Wait (bounded) for the clock to pass exp + leeway, then use it again.
    let past = eventually(Duration::from_secs(30), || (now() > exp + 1).then_some(()));
    assert!(past.is_some());
    let r = e.get(&format!("/fhir/Patient/{PATIENT}"), &token);
    let id = assert_deny(&r, 401, "token_expired");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("error=\"invalid_token\"")));
    assert_eq!(
        e.fhir.proxied_requests().len(),
        1,
        "only the request before expiry"
    );
    assert_eq!(e.gw.record(&id)["reason"], "token_expired");
}

#[test]
fn key_rotation_at_the_authorization_server_is_followed() {
    let Some(e) = RealEnv::start("key_rotation_at_the_authorization_server_is_followed", "") else {
        return;
    };
    let target = format!("/fhir/Patient/{PATIENT}");
    let old = e.auth.token(SYSTEM_ES256, "system/Patient.rs", AUDIENCE);
    let old_kid = jwt_parts(&old).0["kid"].as_str().unwrap().to_string();
    assert_eq!(e.get(&target, &old).status, 200);

    let kids = e.auth.rotate_keys();
    assert!(!kids.contains(&old_kid), "{kids:?}");
    assert_eq!(e.auth.published_kids(), kids, "the old keys left the JWKS");

    // A token signed with the new key: phigate refetches on the unknown kid.
    // The first request joins that fetch and waits at most 1 s for it, so a
    // very slow fetch may answer `unknown_key` once; retry a few times,
    // spaced out (each miss counts against the invalid-token rate limit).
    let new = e.auth.token(SYSTEM_ES256, "system/Patient.rs", AUDIENCE);
    let new_kid = jwt_parts(&new).0["kid"].as_str().unwrap().to_string();
    assert!(kids.contains(&new_kid), "{new_kid} not in {kids:?}");
    let mut attempts = 0;
    let accepted = eventually(Duration::from_secs(20), || {
        attempts += 1;
        let r = e.get(&target, &new);
        if r.status == 200 {
            return Some(());
        }
        assert_deny(&r, 401, "unknown_key");
        assert!(attempts < 10, "the new key was never accepted:\n{}", e.gw.log());
        std::thread::sleep(Duration::from_millis(300));
        None
    });
    assert!(accepted.is_some(), "{}", e.gw.log());

    // The RS256 key rotated too.
    let patient_token = e.auth.token(PATIENT_RS256, PATIENT_SCOPES, AUDIENCE);
    assert!(kids.contains(&jwt_parts(&patient_token).0["kid"].as_str().unwrap().to_string()));
    let r = e.get(
        &format!("/fhir/Observation?subject=Patient/{PATIENT}"),
        &patient_token,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The old key is gone from phigate's key set too: its token (validated
    // and cached before) is refused now.
    let r = e.get(&target, &old);
    assert_deny(&r, 401, "unknown_key");

    let m = e.gw.metrics();
    assert!(
        m.value(
            "phigate_jwks_fetch_total",
            &[("issuer", e.auth.issuer.as_str()), ("result", "ok")]
        ) >= 2.0,
        "start-up fetch and the refetch for the new kid"
    );
    assert_eq!(
        m.value("phigate_jwks_keys", &[("issuer", e.auth.issuer.as_str())]),
        2.0
    );
    assert!(e.gw.log().contains("OIDC discovery"), "{}", e.gw.log());
}

#[test]
fn prometheus_scrapes_the_request_count_and_loads_the_alert_rules() {
    let test = "prometheus_scrapes_the_request_count_and_loads_the_alert_rules";
    let Some(binary) = prometheus_or_skip(test) else {
        return;
    };
    let e = TestEnv::start(TEST_POLICY);
    let rules = repo_root().join("deploy/prometheus/rules.yml");
    let prom = Prometheus::start(&binary, e.gw.admin, std::slice::from_ref(&rules));

    let up = eventually(Duration::from_secs(30), || {
        let targets = prom.targets();
        (targets.len() == 1 && targets[0]["health"] == "up").then_some(targets)
    });
    let targets = up.unwrap_or_else(|| panic!("target never up: {:?}\n{}", prom.targets(), prom.log()));
    assert_eq!(targets[0]["labels"]["job"], "phigate");
    assert_eq!(targets[0]["scrapeUrl"], format!("http://{}/metrics", e.gw.admin));

    // 5 allowed (3 reads, 1 search, 1 public) and 3 denied requests.
    let token = e.key.sign(&claims("user/Patient.rs user/Observation.rs"));
    for _ in 0..3 {
        assert_eq!(e.get("/fhir/Patient/7", &token).status, 200);
    }
    assert_eq!(e.get("/fhir/Observation?patient=7", &token).status, 200);
    assert_eq!(http::get(e.gw.proxy, "/fhir/metadata").unwrap().status, 200);
    for _ in 0..2 {
        assert_eq!(http::get(e.gw.proxy, "/fhir/Patient/7").unwrap().status, 401);
    }
    let r = e.send("POST", "/fhir/Observation", &token, &[], b"{}");
    assert_eq!(r.status, 403, "{}", r.text());
    let made = 8.0;

    let total = eventually(Duration::from_secs(30), || {
        (prom.scalar("sum(phigate_requests_total)") == Some(made)).then_some(())
    });
    assert!(
        total.is_some(),
        "Prometheus saw {:?} requests, the test made {made}",
        prom.scalar("sum(phigate_requests_total)")
    );
    assert_eq!(
        prom.scalar("sum(phigate_requests_total{decision=\"deny\"})"),
        Some(3.0)
    );
    assert_eq!(
        prom.scalar("sum(phigate_requests_total{reason=\"missing_token\"})"),
        Some(2.0)
    );

    // The repository's rule file loaded, and every rule evaluates cleanly
    // against the real series.
    let expected_groups: BTreeSet<String> = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("  - name: "))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(!expected_groups.is_empty());
    let evaluated = eventually(Duration::from_secs(30), || {
        let groups = prom.api("rules")["groups"].as_array().unwrap().clone();
        let all_ok = groups.iter().all(|g| {
            g["rules"]
                .as_array()
                .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| r["health"] == "ok"))
        });
        all_ok.then_some(groups)
    });
    let groups = evaluated.unwrap_or_else(|| panic!("rules not all healthy: {}", prom.api("rules")));
    let names: BTreeSet<String> = groups
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, expected_groups);
    assert!(groups
        .iter()
        .all(|g| g["file"].as_str() == Some(rules.to_str().unwrap())));
}
