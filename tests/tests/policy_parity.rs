//! Issue 10: `phigate policy test` and the running gateway decide the same.
//!
//! One table of requests (bodies, repeated headers and batch bundles
//! included) is sent to the real gateway; each decision is read back from
//! the audit spool and written, as the expectation, into a `*.test.yaml`
//! file next to the same policy; `phigate policy test` must then pass every
//! case. Both run `prepare()` + `decide()` from the core, so a divergence
//! here means the gateway or the policy tools build requests their own way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use phigate_tests::keys::{claims, now};
use phigate_tests::TestEnv;
use serde_json::{json, Value};

const DEV_POLICY: &str = include_str!("../../policies/dev/fhir.yaml");

struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<String>,
    /// Scopes and extra claims of the token; `None`: no token.
    token: Option<(&'static str, Value)>,
}

fn case(name: &'static str, method: &'static str, target: &'static str) -> Case {
    Case {
        name,
        method,
        target,
        headers: Vec::new(),
        body: None,
        token: None,
    }
}

impl Case {
    fn token(mut self, scopes: &'static str, extra: Value) -> Self {
        self.token = Some((scopes, extra));
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn body(mut self, b: impl Into<String>) -> Self {
        self.body = Some(b.into());
        self
    }
}

fn bundle(entries: Value) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn table() -> Vec<Case> {
    let pt = json!({"patient": "123"});
    let none = json!({});
    let mfa = json!({"amr": ["pwd", "mfa"], "auth_time": now() - 60});
    vec![
        case("public metadata", "GET", "/fhir/metadata"),
        case("no token", "GET", "/fhir/Patient/123"),
        case("user read", "GET", "/fhir/Patient/123").token("user/Patient.rs", none.clone()),
        case("system search", "GET", "/fhir/Observation?code=x").token("system/Observation.rs", none.clone()),
        case("other type", "GET", "/fhir/Encounter/1").token("user/Patient.rs", none.clone()),
        case("own patient", "GET", "/fhir/Patient/123").token("patient/Patient.r", pt.clone()),
        case("other patient", "GET", "/fhir/Patient/124").token("patient/Patient.r", pt.clone()),
        case("compartment search", "GET", "/fhir/Observation?patient=123").token("patient/Observation.rs", pt.clone()),
        case("no compartment param", "GET", "/fhir/Patient?patient=123").token("patient/Patient.rs", pt.clone()),
        case("bare subject", "GET", "/fhir/Observation?subject=123").token("patient/Observation.rs", pt.clone()),
        case("include of ungranted type", "GET", "/fhir/Observation?_include=Observation:subject")
            .token("user/Observation.rs", none.clone()),
        case("form search body", "POST", "/fhir/Observation/_search?patient=123")
            .token("patient/Observation.rs", pt.clone())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("patient=999"),
        case("form search ok", "POST", "/fhir/Observation/_search")
            .token("patient/Observation.rs", pt.clone())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("patient=123&code=x"),
        case("method override header", "GET", "/fhir/Patient/1")
            .token("user/Patient.rs", none.clone())
            .header("X-HTTP-Method-Override", "DELETE"),
        case("method override query", "GET", "/fhir/Patient/1?_method=DELETE").token("user/Patient.rs", none.clone()),
        case("conditional create", "POST", "/fhir/Observation")
            .token("user/Observation.c", none.clone())
            .header("If-None-Exist", "identifier=x")
            .body("{}"),
        case("delete without mfa", "DELETE", "/fhir/Patient/42").token("user/Patient.d", json!({"amr": ["pwd"]})),
        case("delete with mfa", "DELETE", "/fhir/Patient/42").token("user/Patient.d", mfa.clone()),
        case("break-glass read", "GET", "/fhir/Patient/77")
            .token("emergency.phi.read", none.clone())
            .header("X-Break-Glass-Reason", "ED: unconscious patient"),
        case("break-glass zero-width", "GET", "/fhir/Patient/77")
            .token("emergency.phi.read", none.clone())
            .header("X-Break-Glass-Reason", "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}"),
        case("break-glass header twice", "GET", "/fhir/Patient/77")
            .token("emergency.phi.read", none.clone())
            .header("X-Break-Glass-Reason", "ED: unconscious patient")
            .header("X-Break-Glass-Reason", "ED: unconscious patient"),
        case("batch allowed", "POST", "/fhir")
            .token("user/Patient.r user/Observation.c", none.clone())
            .body(bundle(json!([
                {"request": {"method": "GET", "url": "Patient/42"}},
                {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Observation"}}
            ]))),
        case("batch entry denied", "POST", "/fhir")
            .token("user/Patient.r user/Observation.c", none.clone())
            .body(bundle(json!([
                {"request": {"method": "GET", "url": "Patient/42"}},
                {"request": {"method": "DELETE", "url": "Patient/42"}}
            ]))),
        case("batch duplicate member", "POST", "/fhir")
            .token("user/Patient.r", none.clone())
            .body(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1","url":"Patient/2"}}]}"#),
        case("default deny", "GET", "/admin").token("user/*.cruds", none.clone()),
        case("path trick", "GET", "/fhir/Patient/..%2F..%2Fadmin"),
    ]
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn policy_test_and_the_gateway_decide_the_same() {
    let e = TestEnv::start(DEV_POLICY);
    let cases = table();
    let mut yaml = String::from("tests:\n");
    for (i, c) in cases.iter().enumerate() {
        let id = format!("parity-{i}");
        let mut headers: Vec<(&str, &str)> = vec![("X-Request-Id", &id)];
        headers.extend(c.headers.iter().copied());
        let token = c.token.as_ref().map(|(scopes, extra)| {
            let mut t = claims(scopes);
            for (k, v) in extra.as_object().unwrap() {
                t[k] = v.clone();
            }
            e.key.sign(&t)
        });
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let body = c.body.clone().unwrap_or_default();
        let r =
            phigate_tests::http::request(e.gw.proxy, c.method, c.target, &headers, body.as_bytes()).unwrap();
        let rec = e.gw.record(&id);
        let decision = rec["decision"].as_str().unwrap().to_string();
        let reason = rec["reason"].as_str().unwrap().to_string();
        if decision == "deny" {
            assert_eq!(r.status, rec["status"].as_u64().unwrap() as u16, "{}", c.name);
        }

        // The same request as a policy test case, expecting what the gateway did.
        yaml.push_str(&format!("  - name: {}\n    request:\n", yaml_str(c.name)));
        yaml.push_str(&format!(
            "      method: {}\n      path: {}\n",
            c.method,
            yaml_str(c.target)
        ));
        if !c.headers.is_empty() {
            yaml.push_str("      headers:\n");
            let mut names: Vec<&str> = c.headers.iter().map(|(k, _)| *k).collect();
            names.dedup();
            for n in names {
                let values: Vec<String> = c
                    .headers
                    .iter()
                    .filter(|(k, _)| *k == n)
                    .map(|(_, v)| yaml_str(v))
                    .collect();
                yaml.push_str(&format!("        {n}: [{}]\n", values.join(", ")));
            }
        }
        if let Some(b) = &c.body {
            yaml.push_str(&format!("      body: {}\n", yaml_str(b)));
        }
        if let Some((scopes, extra)) = &c.token {
            let scopes: Vec<String> = scopes.split(' ').map(yaml_str).collect();
            yaml.push_str(&format!(
                "    token: {{ scopes: [{}], claims: {} }}\n",
                scopes.join(", "),
                extra
            ));
        }
        let status = if decision == "deny" {
            format!(", status: {}", rec["status"])
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "    expect: {{ decision: {decision}, reason: {reason}{status} }}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fhir.yaml"), DEV_POLICY).unwrap();
    std::fs::write(dir.path().join("parity.test.yaml"), &yaml).unwrap();
    let (ok, text) = phigate_tests::run_phigate([
        std::ffi::OsStr::new("policy"),
        "test".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert!(ok, "policy test disagrees with the gateway:\n{text}\n---\n{yaml}");
    assert!(
        text.contains(&format!("{} passed, 0 failed", cases.len())),
        "{text}"
    );
    // The table is not trivial: both outcomes and many reasons.
    let reasons: std::collections::BTreeSet<&str> = yaml
        .lines()
        .filter_map(|l| l.split("reason: ").nth(1))
        .map(|r| r.split([',', ' ', '}']).next().unwrap_or(""))
        .collect();
    assert!(reasons.len() >= 10, "{reasons:?}");
}
