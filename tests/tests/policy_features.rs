//! Issue 3 end to end: the bundled dev policy (FHIR-aware SMART scopes,
//! patient compartment, MFA step-up, break-glass) plus a report_only route,
//! enforced by the real gateway binary against a real JWKS server and upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use phigate_tests::http::{self, Response};
use phigate_tests::keys::{claims, now};
use phigate_tests::TestEnv;
use serde_json::{json, Value};

const DEV_POLICY: &str = include_str!("../../policies/dev/fhir.yaml");
const SHADOW_ROUTE: &str = r#"
  - name: new-reports
    methods: [GET]
    path: /reports/{id}
    scopes: { all_of: [reports.read] }
    mode: report_only
"#;

type Env = TestEnv;

fn env() -> Env {
    TestEnv::start(&format!("{DEV_POLICY}{SHADOW_ROUTE}"))
}

fn token(e: &Env, scope: &str, extra: Value) -> String {
    let mut c = claims(scope);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    e.key.sign(&c)
}

fn send(e: &Env, method: &str, target: &str, token: &str, headers: &[(&str, &str)]) -> Response {
    e.send(method, target, token, headers, b"")
}

#[test]
fn smart_scopes_compartment_step_up_break_glass_and_shadow() {
    let e = env();
    let mut expected_records = 0;
    let mut check = |r: &Response, status: u16, reason: Option<&str>| {
        expected_records += 1;
        assert_eq!(r.status, status, "{}", r.text());
        if let Some(reason) = reason {
            assert_eq!(r.json()["error"], reason, "{}", r.text());
        }
    };

    // SMART v1 scope parsed: user/Patient.read reads any Patient.
    let r = send(
        &e,
        "GET",
        "/fhir/Patient/42",
        &token(&e, "user/Patient.read", json!({})),
        &[],
    );
    check(&r, 200, None);

    // Patient compartment.
    let pt = token(
        &e,
        "patient/Observation.rs patient/Patient.r",
        json!({"patient": "123"}),
    );
    check(
        &send(&e, "GET", "/fhir/Observation?patient=123", &pt, &[]),
        200,
        None,
    );
    check(
        &send(&e, "GET", "/fhir/Observation?patient=124", &pt, &[]),
        403,
        Some("outside_patient_compartment"),
    );
    check(
        &send(&e, "GET", "/fhir/Patient/124", &pt, &[]),
        403,
        Some("outside_patient_compartment"),
    );

    // Step-up: DELETE needs amr mfa + auth_time within 15m → RFC 9470 challenge.
    let weak = token(
        &e,
        "user/Patient.d",
        json!({"amr": ["pwd"], "auth_time": now() - 30}),
    );
    let r = send(&e, "DELETE", "/fhir/Patient/42", &weak, &[]);
    check(&r, 401, Some("step_up_required"));
    let h = r.header("www-authenticate").unwrap();
    assert!(
        h.starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{h}"
    );
    assert!(h.contains("max_age=900"), "{h}");
    let strong = token(
        &e,
        "user/Patient.d",
        json!({"amr": ["pwd", "mfa"], "auth_time": now() - 30}),
    );
    check(&send(&e, "DELETE", "/fhir/Patient/42", &strong, &[]), 200, None);

    // Break-glass: read allowed with justification, write refused, no header denied.
    let eg = token(&e, "emergency.phi.read", json!({}));
    let why = "ED: unconscious patient";
    check(
        &send(
            &e,
            "GET",
            "/fhir/Patient/77",
            &eg,
            &[("X-Break-Glass-Reason", why)],
        ),
        200,
        None,
    );
    check(
        &send(&e, "GET", "/fhir/Patient/77", &eg, &[]),
        403,
        Some("insufficient_scope"),
    );
    check(
        &send(
            &e,
            "PUT",
            "/fhir/Patient/77",
            &eg,
            &[("X-Break-Glass-Reason", why)],
        ),
        403,
        Some("break_glass_rejected"),
    );

    // Batch/transaction: every entry authorised; body forwarded intact.
    let bundle = |second: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": "Patient/42"}},
            {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": second}},
        ]})
        .to_string()
    };
    let writer = format!(
        "Bearer {}",
        token(&e, "user/Patient.r user/Observation.c", json!({}))
    );
    let ok = bundle("Observation");
    let r = http::request(
        e.gw.proxy,
        "POST",
        "/fhir",
        &[("Authorization", &writer)],
        ok.as_bytes(),
    )
    .unwrap();
    check(&r, 201, None); // the test upstream answers POSTs with 201
    let forwarded = e
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.target == "/fhir")
        .unwrap();
    assert_eq!(
        &forwarded.body[..],
        ok.as_bytes(),
        "bundle forwarded byte for byte"
    );
    let bad = bundle("Encounter");
    let r = http::request(
        e.gw.proxy,
        "POST",
        "/fhir",
        &[("Authorization", &writer)],
        bad.as_bytes(),
    )
    .unwrap();
    check(&r, 403, Some("insufficient_scope"));
    let huge = format!(
        r#"{{"resourceType":"Bundle","type":"batch","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = http::request(
        e.gw.proxy,
        "POST",
        "/fhir",
        &[("Authorization", &writer)],
        huge.as_bytes(),
    )
    .unwrap();
    check(&r, 413, Some("payload_too_large"));

    // Shadow mode: would-be deny is let through and reported.
    check(
        &send(&e, "GET", "/reports/1", &token(&e, "other", json!({})), &[]),
        200,
        None,
    );

    let records = e.gw.wait_audit(expected_records);
    let by_path = |method: &str, path: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["method"] == method && r["path"] == path)
            .collect()
    };
    let bg = by_path("GET", "/fhir/Patient/77");
    let allowed = bg
        .iter()
        .find(|r| r["decision"] == "allow")
        .expect("break-glass record");
    assert_eq!(allowed["reason"], "break_glass");
    assert_eq!(allowed["break_glass"], true);
    assert_eq!(allowed["justification"], why);
    assert_eq!(allowed["patient"], "77");
    let denied = bg.iter().find(|r| r["decision"] == "deny").unwrap();
    assert!(denied.get("break_glass").is_none(), "{denied}");

    let shadow = by_path("GET", "/reports/1")[0];
    assert_eq!(shadow["decision"], "allow");
    assert_eq!(shadow["shadow_decision"], "deny");
    assert_eq!(shadow["reason"], "insufficient_scope");

    let compartment = by_path("GET", "/fhir/Observation")
        .into_iter()
        .find(|r| r["decision"] == "allow")
        .unwrap()
        .clone();
    assert_eq!(compartment["patient"], "123");

    // Denied requests never reached the upstream; allowed ones did.
    let reached: Vec<String> = e
        .upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(
        reached.contains(&"GET /fhir/Patient/77".to_string()),
        "{reached:?}"
    );
    assert!(!reached.iter().any(|t| t.starts_with("PUT")), "{reached:?}");
    assert!(!reached.iter().any(|t| t.contains("patient=124")), "{reached:?}");

    let m = e.gw.metrics();
    assert_eq!(m.value("phigate_break_glass_total", &[]), 1.0);
    assert_eq!(
        m.value(
            "phigate_shadow_denials_total",
            &[("reason", "insufficient_scope")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "phigate_requests_total",
            &[("decision", "deny"), ("reason", "step_up_required")]
        ),
        1.0
    );
}
