use serde_json::json;

use super::*;
use crate::{compile, PolicySource};

/// 2026-11-25T10:00:00Z, a Wednesday (11:00 in Europe/Berlin).
const NOW: i64 = 1_795_600_800;

const POLICY: &str = r#"
version: 1
roles:
  nurse: [v1.patient.records.read]
  admin: [v1.patient.records.read, v1.patient.records.write, billing.info.access]
break_glass:
  scope: emergency.phi.read
  header: X-Break-Glass-Reason
  max_length: 40
  reason_codes: [ETREAT, EMERG]
routes:
  - methods: [GET]
    path: /fhir/metadata
    public: true
  - name: fhir
    methods: ["*"]
    path: /fhir/**
    fhir: { base: /fhir }
  - name: patient-read
    methods: [GET]
    path: /fhir/Patient/{id}
    fhir: { base: /fhir }
  - name: patient-delete
    methods: [DELETE]
    path: /fhir/Patient/{id}
    scopes: { all_of: [user/Patient.d] }
    require_amr: [mfa]
    max_auth_age: 15m
  - name: records
    methods: [GET]
    path: /api/v1/patients/{pid}/records
    scopes: { any_of: [v1.patient.records.read] }
    when:
      claims:
        - { claim: tenant, equals: { value: acme } }
        - { claim: patient, equals: { param: pid } }
  - name: billing
    methods: [GET]
    path: /api/billing
    scopes: { all_of: [billing.info.access] }
    require_acr: [urn:loa:3]
    when:
      claims:
        - { claim: org, equals: { query: org } }
      time:
        timezone: Europe/Berlin
        days: [mon, tue, wed, thu, fri]
        hours: "08:00-18:00"
  - name: shadowed
    methods: [GET]
    path: /api/new
    scopes: { all_of: [v2.new.read] }
    mode: report_only
"#;

fn policy() -> PolicySet {
    compile(&[PolicySource::new("p.yaml", POLICY)]).unwrap()
}

fn token(scopes: &[&str], extra: serde_json::Value) -> Authn {
    let map = extra.as_object().cloned().unwrap_or_default();
    let roles = map
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Authn::Valid(Claims {
        issuer: "iss".into(),
        subject: Some("u1".into()),
        client_id: Some("c1".into()),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        roles,
        claims: Arc::new(map),
    })
}

fn run(p: &PolicySet, method: &str, target: &str, authn: &Authn, bg: Option<&str>) -> Decision {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut f = RequestFacts::new(method, path, query, NOW);
    f.break_glass_justification = bg;
    decide(p, &f, authn)
}

#[test]
#[allow(clippy::type_complexity)]
fn decision_table() {
    use Reason::*;
    let p = policy();
    let none = json!({});
    let pat = json!({"patient": "123"});
    let mfa = json!({"amr": ["pwd", "mfa"], "auth_time": NOW - 60});
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Authn, Option<&str>, Reason, &str)> = vec![
        // public / authn / default deny
        ("GET", "/fhir/metadata", Authn::Missing, None, PublicRoute, "public"),
        ("GET", "/fhir/Patient/1", Authn::Missing, None, MissingToken, "no token"),
        ("GET", "/fhir/Patient/1", Authn::Invalid(TokenExpired), None, TokenExpired, "expired"),
        ("GET", "/other", token(&["user/Patient.rs"], none.clone()), None, NoMatchingRoute, "no route"),
        // SMART parsed, not string-compared
        ("GET", "/fhir/Patient/1", token(&["user/Patient.rs"], none.clone()), None, Allowed, "v2 rs reads"),
        ("GET", "/fhir/Patient/1", token(&["user/Patient.read"], none.clone()), None, Allowed, "v1 read"),
        ("GET", "/fhir/Patient/1", token(&["user/*.cruds"], none.clone()), None, Allowed, "wildcard type"),
        ("GET", "/fhir/Patient/1", token(&["user/Patient.s"], none.clone()), None, InsufficientScope, "search-only cannot read"),
        ("GET", "/fhir/Patient/1", token(&["user/Observation.rs"], none.clone()), None, InsufficientScope, "other type"),
        ("GET", "/fhir/Observation", token(&["user/Observation.s"], none.clone()), None, Allowed, "search needs s"),
        ("POST", "/fhir/Observation/_search", token(&["user/Observation.s"], none.clone()), None, Allowed, "POST _search"),
        ("POST", "/fhir/Observation", token(&["user/Observation.rs"], none.clone()), None, InsufficientScope, "create needs c"),
        ("POST", "/fhir/Observation", token(&["user/Observation.c"], none.clone()), None, Allowed, "create"),
        ("PUT", "/fhir/Observation/9", token(&["user/Observation.u"], none.clone()), None, Allowed, "update"),
        ("PATCH", "/fhir/Observation/9", token(&["user/Observation.write"], none.clone()), None, Allowed, "patch v1 write"),
        ("DELETE", "/fhir/Observation/9", token(&["user/Observation.cu"], none.clone()), None, InsufficientScope, "delete needs d"),
        ("GET", "/fhir/Observation/9/_history/2", token(&["user/Observation.r"], none.clone()), None, Allowed, "vread"),
        ("POST", "/fhir", token(&["user/*.cruds"], none.clone()), None, NoMatchingRoute, "batch: base itself has no route"),
        ("GET", "/fhir/Patient/1/_history", token(&["user/Patient.r"], none.clone()), None, Allowed, "instance history"),
        ("GET", "/fhir/Patient/1/$everything", token(&["user/*.cruds"], none.clone()), None, UnmappedInteraction, "operation"),
        ("GET", "/fhir/lowercase", token(&["user/*.cruds"], none.clone()), None, UnmappedInteraction, "bad type"),
        ("GET", "/fhir/Patient/1", token(&["v1.patient"], none.clone()), None, InsufficientScope, "custom scopes do not grant SMART"),
        // patient compartment
        ("GET", "/fhir/Patient/123", token(&["patient/Patient.rs"], pat.clone()), None, Allowed, "own patient"),
        ("GET", "/fhir/Patient/124", token(&["patient/Patient.rs"], pat.clone()), None, OutsidePatientCompartment, "other patient"),
        ("GET", "/fhir/Patient/123", token(&["patient/Patient.rs"], none.clone()), None, OutsidePatientCompartment, "no patient claim"),
        ("GET", "/fhir/Observation?patient=123", token(&["patient/Observation.rs"], pat.clone()), None, Allowed, "search own"),
        ("GET", "/fhir/Observation?subject=Patient/123", token(&["patient/Observation.rs"], pat.clone()), None, Allowed, "subject ref"),
        ("GET", "/fhir/Observation?patient=124", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "search other"),
        ("GET", "/fhir/Observation", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "search without patient"),
        ("GET", "/fhir/Observation?patient=123&patient=124", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "two patients"),
        ("GET", "/fhir/Observation?patient=123,124", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "OR list"),
        ("GET", "/fhir/Observation?patient=123&subject.name=x", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "chained"),
        ("GET", "/fhir/Observation?patient=123&_include=Observation:subject", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "_include"),
        ("GET", "/fhir/Patient?_id=123&_has:Observation:patient:code=x", token(&["patient/Patient.rs"], pat.clone()), None, OutsidePatientCompartment, "_has"),
        ("GET", "/fhir/Observation/9", token(&["patient/Observation.rs"], pat.clone()), None, OutsidePatientCompartment, "read by id unverifiable"),
        ("GET", "/fhir/Observation/9", token(&["patient/Observation.rs", "user/Observation.r"], pat.clone()), None, Allowed, "user scope not compartment-bound"),
        // granular scopes
        ("GET", "/fhir/Observation?patient=123&category=laboratory", token(&["patient/Observation.rs?category=laboratory"], pat.clone()), None, Allowed, "granular match"),
        ("GET", "/fhir/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", token(&["patient/Observation.rs?category=laboratory"], pat.clone()), None, Allowed, "token system|code"),
        ("GET", "/fhir/Observation?patient=123&category=vital-signs", token(&["patient/Observation.rs?category=laboratory"], pat.clone()), None, InsufficientScope, "granular mismatch"),
        ("GET", "/fhir/Observation?patient=123&category=vital-signs", token(&["patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=vital-signs"], pat.clone()), None, Allowed, "granular OR"),
        ("GET", "/fhir/Observation?patient=123", token(&["patient/Observation.rs?category=laboratory"], pat.clone()), None, InsufficientScope, "granular needs the param"),
        ("GET", "/fhir/Observation?category=laboratory", token(&["user/Observation.rs?category=laboratory"], none.clone()), None, Allowed, "user granular search"),
        ("GET", "/fhir/Observation/9", token(&["user/Observation.rs?category=laboratory"], none.clone()), None, InsufficientScope, "granular read by id"),
        // roles
        ("GET", "/api/v1/patients/123/records", token(&[], json!({"roles": ["nurse"], "tenant": "acme", "patient": "123"})), None, Allowed, "role grants"),
        ("GET", "/api/v1/patients/123/records", token(&[], json!({"roles": ["unknown"], "tenant": "acme", "patient": "123"})), None, InsufficientScope, "unknown role"),
        ("GET", "/api/v1/patients/123/records", token(&["v1.patient"], json!({"tenant": "acme", "patient": "123"})), None, InsufficientScope, "no hierarchy"),
        // claim conditions
        ("GET", "/api/v1/patients/124/records", token(&["v1.patient.records.read"], json!({"tenant": "acme", "patient": "123"})), None, ConditionFailed, "param mismatch"),
        ("GET", "/api/v1/patients/123/records", token(&["v1.patient.records.read"], json!({"tenant": "evil", "patient": "123"})), None, ConditionFailed, "literal mismatch"),
        ("GET", "/api/v1/patients/123/records", token(&["v1.patient.records.read"], json!({"patient": "123"})), None, ConditionFailed, "claim missing"),
        // time window, query condition, acr
        ("GET", "/api/billing?org=o1", token(&["billing.info.access"], json!({"org": "o1", "acr": "urn:loa:3"})), None, Allowed, "in window"),
        ("GET", "/api/billing?org=o2", token(&["billing.info.access"], json!({"org": "o1", "acr": "urn:loa:3"})), None, ConditionFailed, "query mismatch"),
        ("GET", "/api/billing?org=o1&org=o1", token(&["billing.info.access"], json!({"org": "o1", "acr": "urn:loa:3"})), None, ConditionFailed, "repeated query"),
        ("GET", "/api/billing?org=o1", token(&["billing.info.access"], json!({"org": "o1", "acr": "urn:loa:1"})), None, StepUpRequired, "weak acr"),
        // MFA + max_auth_age
        ("DELETE", "/fhir/Patient/1", token(&["user/Patient.d"], mfa.clone()), None, Allowed, "mfa fresh"),
        ("DELETE", "/fhir/Patient/1", token(&["user/Patient.d"], json!({"amr": ["pwd"], "auth_time": NOW - 60})), None, StepUpRequired, "no mfa"),
        ("DELETE", "/fhir/Patient/1", token(&["user/Patient.d"], json!({"amr": ["mfa"], "auth_time": NOW - 3600})), None, StepUpRequired, "stale auth"),
        ("DELETE", "/fhir/Patient/1", token(&["user/Patient.d"], json!({"amr": ["mfa"]})), None, StepUpRequired, "no auth_time"),
        ("DELETE", "/fhir/Patient/1", token(&["user/Patient.rs"], mfa.clone()), None, InsufficientScope, "scope before step-up"),
        // break-glass
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("ETREAT: unconscious patient"), BreakGlass, "break glass read"),
        ("GET", "/fhir/Observation?patient=9", token(&["emergency.phi.read"], none.clone()), Some("EMERG"), BreakGlass, "break glass search"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), None, InsufficientScope, "no justification"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("   "), BreakGlassRejected, "empty justification"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("because"), BreakGlassRejected, "unknown code"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("ETREAT: this justification is far too long to accept"), BreakGlassRejected, "too long"),
        ("PUT", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("ETREAT"), BreakGlassRejected, "write"),
        ("GET", "/fhir/Patient/9", token(&["user/Observation.rs"], none.clone()), Some("ETREAT"), InsufficientScope, "no emergency scope"),
        ("GET", "/nowhere", token(&["emergency.phi.read"], none.clone()), Some("ETREAT"), NoMatchingRoute, "never opens unknown routes"),
        ("DELETE", "/fhir/Patient/9", token(&["emergency.phi.read"], mfa.clone()), Some("ETREAT"), BreakGlassRejected, "delete"),
    ];
    let mut failures = Vec::new();
    for (method, target, authn, bg, want, name) in &cases {
        let d = run(&p, method, target, authn, *bg);
        if d.reason != *want || d.is_allow() != want.is_allow() {
            failures.push(format!(
                "{name}: {method} {target} → {:?} ({:?}), want {want:?}",
                d.reason, d.detail
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn break_glass_is_marked_and_carries_the_patient() {
    let p = policy();
    let d = run(
        &p,
        "GET",
        "/fhir/Patient/9",
        &token(&["emergency.phi.read"], json!({})),
        Some("ETREAT: x"),
    );
    assert!(d.is_allow() && d.break_glass);
    assert_eq!(d.patient.as_deref(), Some("9"));
    assert_eq!(d.route.as_deref(), Some("patient-read"));
}

#[test]
fn shadow_mode_allows_and_reports() {
    let p = policy();
    let d = run(&p, "GET", "/api/new", &token(&[], json!({})), None);
    assert!(d.is_allow());
    assert_eq!(d.shadow, Some(Reason::InsufficientScope));
    assert_eq!(d.reason, Reason::InsufficientScope);
    let d = run(&p, "GET", "/api/new", &Authn::Missing, None);
    assert!(d.is_allow());
    assert_eq!(d.shadow, Some(Reason::MissingToken));
    let d = run(&p, "GET", "/api/new", &token(&["v2.new.read"], json!({})), None);
    assert_eq!((d.reason, d.shadow), (Reason::Allowed, None));
    // Never shadows routes that are not report_only.
    let d = run(&p, "GET", "/fhir/Patient/1", &Authn::Missing, None);
    assert!(!d.is_allow());
}

#[test]
fn time_window_edges() {
    let p = policy();
    let t = token(&["billing.info.access"], json!({"org": "o1", "acr": "urn:loa:3"}));
    let at = |now: i64| {
        decide(
            &p,
            &RequestFacts::new("GET", "/api/billing", Some("org=o1"), now),
            &t,
        )
        .reason
    };
    // 2026-11-25 is a Wednesday; Berlin is UTC+1 in November.
    assert_eq!(at(NOW), Reason::Allowed); // 11:00 local
    assert_eq!(at(NOW - 3 * 3600 + 60), Reason::Allowed); // 07:01 UTC = 08:01 local
    assert_eq!(at(NOW - 3 * 3600 - 60), Reason::OutsideTimeWindow); // 07:59 local
    assert_eq!(at(NOW + 7 * 3600 - 60), Reason::Allowed); // 17:59 local
    assert_eq!(at(NOW + 7 * 3600), Reason::OutsideTimeWindow); // 18:00 local: end exclusive
    assert_eq!(at(NOW + 3 * 86400), Reason::OutsideTimeWindow); // Saturday
}

#[test]
fn roles_cap_mode_intersects() {
    let text = POLICY.replacen("version: 1\n", "version: 1\nsettings: { roles_mode: cap }\n", 1);
    let p = compile(&[PolicySource::new("p.yaml", &text)]).unwrap();
    let ok = json!({"roles": ["nurse"], "tenant": "acme", "patient": "123"});
    let d = run(
        &p,
        "GET",
        "/api/v1/patients/123/records",
        &token(&["v1.patient.records.read"], ok),
        None,
    );
    assert_eq!(d.reason, Reason::Allowed);
    let no_role = json!({"tenant": "acme", "patient": "123"});
    let d = run(
        &p,
        "GET",
        "/api/v1/patients/123/records",
        &token(&["v1.patient.records.read"], no_role),
        None,
    );
    assert_eq!(d.reason, Reason::InsufficientScope, "cap: no role, no scopes");
    let only_role = json!({"roles": ["nurse"], "tenant": "acme", "patient": "123"});
    let d = run(
        &p,
        "GET",
        "/api/v1/patients/123/records",
        &token(&[], only_role),
        None,
    );
    assert_eq!(d.reason, Reason::InsufficientScope, "cap: roles never add scopes");
}

#[test]
fn www_authenticate_per_reason() {
    let p = policy();
    let d = run(
        &p,
        "DELETE",
        "/fhir/Patient/1",
        &token(&["user/Patient.d"], json!({"amr": ["pwd"]})),
        None,
    );
    let h = d.www_authenticate().unwrap();
    assert!(
        h.starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{h}"
    );
    assert!(h.contains("max_age=900"), "{h}");
    let d = run(
        &p,
        "GET",
        "/api/billing?org=o1",
        &token(&["billing.info.access"], json!({"org": "o1"})),
        None,
    );
    assert!(d.www_authenticate().unwrap().contains("acr_values=\"urn:loa:3\""));
    let d = run(&p, "GET", "/fhir/Patient/1", &token(&[], json!({})), None);
    assert_eq!(
        d.www_authenticate().as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"user/Patient.r patient/Patient.r\"")
    );
    assert_eq!(
        Decision::deny(Reason::MissingToken).www_authenticate().as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        Decision::deny(Reason::TokenExpired).www_authenticate().as_deref(),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(Decision::deny(Reason::NoMatchingRoute).www_authenticate(), None);
    assert_eq!(Decision::deny(Reason::KeysUnavailable).www_authenticate(), None);
}

#[test]
fn explicit_scope_routes_use_smart_semantics() {
    let p = compile(&[PolicySource::new(
        "p.yaml",
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    scopes: { any_of: [user/Patient.rs] }\n",
    )])
    .unwrap();
    for (scopes, ok) in [
        (&["user/Patient.rs"][..], true),
        (&["user/Patient.read"][..], true),
        (&["user/Patient.r", "user/Patient.s"][..], true),
        (&["user/*.rs"][..], true),
        (&["user/Patient.r"][..], false),
        (&["patient/Patient.rs"][..], false),
        (&["user/Patient.rs?category=x"][..], false),
    ] {
        let d = run(&p, "GET", "/x/1", &token(scopes, json!({})), None);
        assert_eq!(d.is_allow(), ok, "{scopes:?}");
    }
}

#[test]
fn head_is_authorised_as_get_and_needs_token() {
    let p = policy();
    let d = run(
        &p,
        "HEAD",
        "/fhir/Patient/1",
        &token(&["user/Patient.r"], json!({})),
        None,
    );
    assert_eq!(d.reason, Reason::Allowed);
    assert!(!needs_token(
        &p,
        &RequestFacts::new("HEAD", "/fhir/metadata", None, NOW)
    ));
    assert!(needs_token(
        &p,
        &RequestFacts::new("POST", "/fhir/metadata", None, NOW)
    ));
    assert!(needs_token(&p, &RequestFacts::new("GET", "/nope", None, NOW)));
}

#[test]
fn batch_and_transaction_entries_are_each_authorised() {
    let text = POLICY.replace(
        "  - name: patient-read\n",
        "  - name: fhir-batch\n    methods: [POST]\n    path: /fhir\n    fhir: { base: /fhir }\n  - name: patient-read\n",
    );
    let p = compile(&[PolicySource::new("p.yaml", &text)]).unwrap();
    let decide_body = |body: &str, authn: &Authn| {
        let mut f = RequestFacts::new("POST", "/fhir", None, NOW);
        assert!(needs_body(&p, &f));
        f.body = Some(body.as_bytes());
        decide(&p, &f, authn)
    };
    let bundle =
        |entries: &str| format!(r#"{{"resourceType":"Bundle","type":"transaction","entry":[{entries}]}}"#);
    let get = |url: &str| format!(r#"{{"request":{{"method":"GET","url":"{url}"}}}}"#);
    let post = |url: &str| {
        format!(
            r#"{{"resource":{{"resourceType":"Observation"}},"request":{{"method":"POST","url":"{url}"}}}}"#
        )
    };
    let user = token(&["user/Patient.r", "user/Observation.c"], json!({}));
    let ok = bundle(&format!("{},{}", get("Patient/1"), post("Observation")));
    assert_eq!(decide_body(&ok, &user).reason, Reason::Allowed);
    let d = decide_body(
        &bundle(&format!("{},{}", get("Patient/1"), get("Encounter/2"))),
        &user,
    );
    assert_eq!(d.reason, Reason::InsufficientScope);
    assert!(
        d.detail.unwrap().starts_with("entry 1"),
        "names the failing entry"
    );
    let pt = token(
        &["patient/Patient.rs", "patient/Observation.rs"],
        json!({"patient": "123"}),
    );
    let own = bundle(&format!(
        "{},{}",
        get("Patient/123"),
        get("Observation?patient=123")
    ));
    let d = decide_body(&own, &pt);
    assert_eq!((d.reason, d.patient.as_deref()), (Reason::Allowed, Some("123")));
    let other = bundle(&format!(
        "{},{}",
        get("Patient/123"),
        get("Observation?patient=999")
    ));
    assert_eq!(decide_body(&other, &pt).reason, Reason::OutsidePatientCompartment);
    for bad in [
        "not json".to_string(),
        r#"{"resourceType":"Bundle","type":"collection"}"#.to_string(),
        bundle(&get("http://evil.example/fhir/Patient/1")),
        bundle(&get("Patient/../Secret/1")),
        bundle(r#"{"request":{"method":"POST","url":""}}"#),
        bundle(r#"{"request":{"url":"Patient/1"}}"#),
    ] {
        assert_eq!(
            decide_body(&bad, &user).reason,
            Reason::UnmappedInteraction,
            "{bad}"
        );
    }
    // Without the body the bundle cannot be checked.
    let f = RequestFacts::new("POST", "/fhir", None, NOW);
    assert_eq!(decide(&p, &f, &user).reason, Reason::UnmappedInteraction);
    // Other requests never need a body.
    assert!(!needs_body(
        &p,
        &RequestFacts::new("POST", "/fhir/Observation", None, NOW)
    ));
}
