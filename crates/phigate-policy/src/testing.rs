//! Policy test files (`*.test.yaml`) and explanations.
//!
//! A test file sits next to the policies it exercises and lists requests,
//! the token presented, and the expected decision:
//!
//! ```yaml
//! tests:
//!   - name: nurse reads records
//!     request: { method: GET, path: /api/v1/patients/7/records }
//!     token: { roles: [nurse] }
//!     expect: { decision: allow, reason: allowed }
//! ```
//!
//! Pure: the caller reads the files; [`run_tests`] only compiles and decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use phigate_yaml::{Diagnostic, Locator, PathSeg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    decide, prepare, Access, Authn, Claims, Decision, HeaderList, HttpVersion, PolicySet, RawRequest, Reason,
};

/// A policy test file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub tests: Vec<TestCase>,
}

/// One test case.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub request: TestRequest,
    /// The token presented; absent = no token.
    #[serde(default)]
    pub token: Option<TestToken>,
    pub expect: Expectation,
}

/// The request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    pub method: String,
    /// Request target as sent (path and optional `?query`); canonicalised like the gateway does.
    pub path: String,
    /// Request headers, as the gateway sees them: a value, or a list of
    /// values for a header sent more than once.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// The request body (e.g. a batch Bundle or a `_search` form), read
    /// when deciding needs it, exactly like the gateway does.
    #[serde(default)]
    pub body: Option<String>,
    /// When the request happens, RFC 3339 (default: now).
    #[serde(default)]
    pub at: Option<String>,
}

/// One header value, or several (the header repeated).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    fn values(&self) -> &[String] {
        match self {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(v) => v,
        }
    }
}

/// Headers of a test request as the list the core reads.
pub fn header_list(headers: &BTreeMap<String, HeaderValues>) -> HeaderList {
    HeaderList(
        headers
            .iter()
            .flat_map(|(k, v)| v.values().iter().map(move |v| (k.clone(), v.as_bytes().to_vec())))
            .collect(),
    )
}

/// A (validated) token, or an invalid one.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestToken {
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Other claims (`patient`, `acr`, `amr`, `tenant`, ...).
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
    /// Time since authentication (sets `auth_time`), e.g. `5m`.
    #[serde(default)]
    pub auth_age: Option<String>,
    /// Simulate a rejected token with this reason (e.g. `token_expired`).
    #[serde(default)]
    pub invalid: Option<String>,
}

/// What the test expects.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `allow` or `deny`.
    pub decision: String,
    /// Expected reason (optional).
    #[serde(default)]
    pub reason: Option<String>,
    /// Expected shadow decision (`deny`) for report_only routes (optional).
    #[serde(default)]
    pub shadow_decision: Option<String>,
    /// Expected HTTP status of a denial (optional).
    #[serde(default)]
    pub status: Option<u16>,
}

/// The result of one test case.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub name: String,
    /// `file:line:column` of the case.
    pub origin: String,
    pub passed: bool,
    /// What went wrong (empty when passed).
    pub message: String,
}

/// Parse `text` (a test file named `file`) and run every case against `policy`.
/// `now` is used when a case has no `at`.
pub fn run_tests(
    policy: &PolicySet,
    file: &str,
    text: &str,
    now: i64,
) -> Result<Vec<TestResult>, Vec<Diagnostic>> {
    let parsed: TestFile = phigate_yaml::parse(file, text).map_err(|d| vec![d])?;
    let loc = Locator::new(text);
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for (i, case) in parsed.tests.iter().enumerate() {
        let at = |k: &'static str| [PathSeg::Key("tests"), PathSeg::Index(i), PathSeg::Key(k)];
        let origin = match loc.locate(&[PathSeg::Key("tests"), PathSeg::Index(i)]) {
            Some(l) => format!("{file}:{}:{}", l.line, l.column),
            None => file.to_string(),
        };
        let mut bad = |k: &'static str, m: String| errors.push(Diagnostic::new(file, loc.locate(&at(k)), m));
        if !matches!(case.expect.decision.as_str(), "allow" | "deny") {
            bad(
                "expect",
                format!(
                    "decision must be `allow` or `deny`, not `{}`",
                    case.expect.decision
                ),
            );
            continue;
        }
        if let Some(r) = &case.expect.reason {
            if Reason::from_name(r).is_none() {
                bad("expect", format!("unknown reason `{r}`"));
                continue;
            }
        }
        let when = match &case.request.at {
            None => now,
            Some(t) => match t.parse::<jiff::Timestamp>() {
                Ok(ts) => ts.as_second(),
                Err(_) => {
                    bad("request", format!("`at: {t}` is not an RFC 3339 timestamp"));
                    continue;
                }
            },
        };
        let authn = match build_authn(case.token.as_ref(), when) {
            Ok(a) => a,
            Err(m) => {
                bad("token", m);
                continue;
            }
        };
        let d = evaluate(
            policy,
            &case.request.method,
            &case.request.path,
            &header_list(&case.request.headers),
            case.request.body.as_deref().map(str::as_bytes),
            &authn,
            when,
        );
        let mut problems = Vec::new();
        let got = d.outcome.as_str();
        if got != case.expect.decision {
            problems.push(format!("decision {got}, expected {}", case.expect.decision));
        }
        if let Some(r) = &case.expect.reason {
            if d.reason.as_str() != r {
                problems.push(format!("reason {}, expected {r}", d.reason));
            }
        }
        if let Some(s) = &case.expect.shadow_decision {
            let shadow = if d.shadow.is_some() { "deny" } else { "none" };
            if shadow != s {
                problems.push(format!("shadow_decision {shadow}, expected {s}"));
            }
        }
        if let Some(st) = case.expect.status {
            if d.is_allow() || d.deny_status() != st {
                problems.push(format!(
                    "status {}, expected {st}",
                    if d.is_allow() { 200 } else { d.deny_status() }
                ));
            }
        }
        if !problems.is_empty() {
            if let Some(detail) = &d.detail {
                problems.push(format!("({detail})"));
            }
        }
        results.push(TestResult {
            name: case.name.clone(),
            origin,
            passed: problems.is_empty(),
            message: problems.join("; "),
        });
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(errors)
    }
}

/// Build the authentication input from a test token.
pub fn build_authn(token: Option<&TestToken>, now: i64) -> Result<Authn, String> {
    let Some(t) = token else { return Ok(Authn::Missing) };
    if let Some(r) = &t.invalid {
        return match Reason::from_name(r) {
            Some(reason) if reason.deny_status() == 401 => Ok(Authn::Invalid(reason)),
            _ => Err(format!("`invalid: {r}` is not a token rejection reason")),
        };
    }
    let mut claims: Map<String, Value> = t.claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(age) = &t.auth_age {
        let d = humantime::parse_duration(age).map_err(|e| format!("`auth_age: {age}`: {e}"))?;
        claims.insert("auth_time".into(), Value::from(now - d.as_secs() as i64));
    }
    if !t.roles.is_empty() {
        claims.insert("roles".into(), Value::from(t.roles.clone()));
    }
    Ok(Authn::Valid(Claims {
        issuer: "policy-test".into(),
        subject: claims.get("sub").and_then(Value::as_str).map(str::to_string),
        client_id: claims
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        scopes: t.scopes.clone(),
        roles: t.roles.clone(),
        claims: Arc::new(claims),
    }))
}

/// Decide a request the way the gateway does: the same [`prepare`] and
/// [`decide`], with the body when deciding needs it. (The gateway skips the
/// body when the token is missing or invalid on a protected route; the
/// decision is a 401 either way.)
pub fn evaluate(
    policy: &PolicySet,
    method: &str,
    target: &str,
    headers: &HeaderList,
    body: Option<&[u8]>,
    authn: &Authn,
    now: i64,
) -> Decision {
    let prepared = prepare(
        policy,
        &RawRequest {
            method,
            target: target.as_bytes(),
            version: HttpVersion::Http11,
            headers,
            now,
            client_cert_sha256: None,
        },
    );
    let body = prepared.needs_body().and(body);
    decide(&prepared, body, authn)
}

/// A human- and machine-readable account of one decision (`policy explain`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    /// Where the matched route is defined.
    pub origin: Option<String>,
    /// What the route requires, in words.
    pub requires: Vec<String>,
    pub token_scopes: Vec<String>,
    pub effective_scopes: Vec<String>,
    pub decision: String,
    pub reason: String,
    pub status: u16,
    pub shadow_decision: Option<String>,
    pub break_glass: bool,
    pub patient: Option<String>,
    pub detail: Option<String>,
    pub www_authenticate: Option<String>,
}

/// Explain the decision for one request.
pub fn explain(
    policy: &PolicySet,
    method: &str,
    target: &str,
    headers: &HeaderList,
    body: Option<&[u8]>,
    authn: &Authn,
    now: i64,
) -> Explanation {
    let d = evaluate(policy, method, target, headers, body, authn, now);
    let canonical = crate::canonicalize(target).ok();
    let path = canonical
        .as_ref()
        .map_or_else(|| target.to_string(), |t| t.path.clone());
    let route = canonical
        .as_ref()
        .and_then(|t| policy.match_route(method, &t.path));
    let mut requires = Vec::new();
    if let Some(r) = route {
        requires.push(match &r.access {
            Access::Public => "nothing (public route)".to_string(),
            Access::Scopes(crate::RequiredScopes::AllOf(s)) => format!("all of scopes: {}", s.join(" ")),
            Access::Scopes(crate::RequiredScopes::AnyOf(s)) => format!("any of scopes: {}", s.join(" ")),
            Access::Fhir { base } => format!(
                "FHIR-aware under {base}: the SMART permission of the interaction ({}), patient/ scopes bound to the `patient` claim",
                d.scopes_required.join(" or ")
            ),
        });
        for c in &r.conditions {
            requires.push(format!(
                "claim `{}` {:?} {:?}",
                c.claim.join("."),
                c.op,
                c.operand
            ));
        }
        if let Some(w) = &r.time {
            requires.push(format!(
                "time window in {} (days/hours/dates as configured)",
                w.tz_name
            ));
        }
        if let Some(s) = &r.step_up {
            if !s.acr.is_empty() {
                requires.push(format!("acr one of: {}", s.acr.join(" ")));
            }
            if !s.amr.is_empty() {
                requires.push(format!("amr contains: {}", s.amr.join(" ")));
            }
            if let Some(m) = s.max_age {
                requires.push(format!("auth_time within {}s", m.as_secs()));
            }
        }
        if r.report_only {
            requires.push("report_only: denials are not enforced".into());
        }
    }
    let (token_scopes, effective_scopes) = match authn {
        Authn::Valid(c) => (
            c.scopes.clone(),
            policy.effective_scopes(&c.scopes, &c.roles).into_owned(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    Explanation {
        method: method.to_string(),
        path,
        route: route.map(|r| r.label.to_string()),
        origin: route.map(|r| r.origin.clone()),
        requires,
        token_scopes,
        effective_scopes,
        decision: d.outcome.as_str().into(),
        reason: d.reason.as_str().into(),
        status: if d.is_allow() { 200 } else { d.deny_status() },
        shadow_decision: d.shadow.map(|_| "deny".into()),
        break_glass: d.break_glass,
        patient: d.patient.clone(),
        www_authenticate: d.www_authenticate(),
        detail: d.detail,
    }
}

/// JSON Schema of the policy file format (committed as `docs/policy.schema.json`).
pub fn policy_schema() -> String {
    let schema = schemars::schema_for!(crate::file::PolicyFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// JSON Schema of policy test files (committed as `docs/policy-test.schema.json`).
pub fn test_schema() -> String {
    let schema = schemars::schema_for!(TestFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, PolicySource};

    const POLICY: &str =
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    scopes: { any_of: [a] }\n";

    #[test]
    fn runs_cases_and_reports_failures_with_origin() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        let text = "tests:\n  - name: ok\n    request: { method: GET, path: /x/1 }\n    token: { scopes: [a] }\n    expect: { decision: allow, reason: allowed }\n  - name: wrong\n    request: { method: GET, path: /x/1 }\n    expect: { decision: allow }\n  - name: bad path\n    request: { method: GET, path: /x/../y }\n    expect: { decision: deny, reason: bad_request_path, status: 400 }\n  - name: expired\n    request: { method: GET, path: /x/1 }\n    token: { invalid: token_expired }\n    expect: { decision: deny, reason: token_expired, status: 401 }\n";
        let r = run_tests(&p, "t.test.yaml", text, 0).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r[0].passed, "{:?}", r[0]);
        assert!(!r[1].passed);
        assert_eq!(r[1].origin, "t.test.yaml:6:5");
        assert!(
            r[1].message.contains("decision deny, expected allow"),
            "{}",
            r[1].message
        );
        assert!(r[2].passed && r[3].passed, "{r:?}");
    }

    #[test]
    fn invalid_test_files_are_diagnosed() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        let e = run_tests(
            &p,
            "t.yaml",
            "tests:\n  - name: x\n    request: { method: GET, path: /x }\n    expect: { decision: maybe }\n",
            0,
        )
        .unwrap_err();
        assert!(e[0].to_string().starts_with("t.yaml:4:"), "{}", e[0]);
        let e = run_tests(&p, "t.yaml", "tests:\n  - name: x\n    requets: {}\n", 0).unwrap_err();
        assert!(e[0].to_string().contains("unknown field"), "{}", e[0]);
    }

    #[test]
    fn explanation_names_route_and_requirement() {
        let p = compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap();
        let authn = build_authn(
            Some(&TestToken {
                scopes: vec!["b".into()],
                ..Default::default()
            }),
            0,
        )
        .unwrap();
        let e = explain(&p, "GET", "/x/1", &HeaderList::default(), None, &authn, 0);
        assert_eq!(e.route.as_deref(), Some("/x/{id}"));
        assert_eq!(e.origin.as_deref(), Some("p.yaml:3:5"));
        assert_eq!(e.requires, vec!["any of scopes: a"]);
        assert_eq!(
            (e.decision.as_str(), e.reason.as_str(), e.status),
            ("deny", "insufficient_scope", 403)
        );
    }

    #[test]
    fn committed_schemas_are_up_to_date() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        for (file, now) in [
            ("policy.schema.json", policy_schema()),
            ("policy-test.schema.json", test_schema()),
        ] {
            let committed = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            assert!(
                committed == now,
                "docs/{file} is out of date: run `cargo run -p phigate -- policy schema --write docs`"
            );
        }
    }
}
