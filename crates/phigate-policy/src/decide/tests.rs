use serde_json::json;

use super::*;
use crate::{compile, prepare, HeaderList, HttpVersion, PolicySet, PolicySource, RawRequest};

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

/// Prepare and decide `method target` with headers and a body, at `now`.
fn run_full(
    p: &PolicySet,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    authn: &Authn,
    now: i64,
) -> Decision {
    let h = HeaderList::from_pairs(headers.iter().copied());
    let prepared = prepare(
        p,
        &RawRequest {
            method,
            target: target.as_bytes(),
            version: HttpVersion::Http11,
            headers: &h,
            now,
            client_cert_sha256: None,
        },
    );
    decide(&prepared, body.map(str::as_bytes), authn)
}

fn run(p: &PolicySet, method: &str, target: &str, authn: &Authn, bg: Option<&str>) -> Decision {
    let headers: Vec<(&str, &str)> = bg.map(|j| ("X-Break-Glass-Reason", j)).into_iter().collect();
    run_full(p, method, target, &headers, None, authn, NOW)
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
        ("GET", "/fhir/Observation?patient=123&_include=Observation:subject", token(&["patient/Observation.rs"], pat.clone()), None, InsufficientScope, "_include of types not granted"),
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
        ("GET", "/fhir/Observation?patient=9", token(&["emergency.phi.read"], none.clone()), Some("EMERG: code blue"), BreakGlass, "break glass search"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), None, InsufficientScope, "no justification"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("   "), BreakGlassRejected, "empty justification"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("because"), BreakGlassRejected, "unknown code"),
        ("GET", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("ETREAT: this justification is far too long to accept"), BreakGlassRejected, "too long"),
        ("PUT", "/fhir/Patient/9", token(&["emergency.phi.read"], none.clone()), Some("ETREAT: unconscious"), BreakGlassRejected, "write"),
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
        Some("ETREAT: unconscious"),
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
    let at = |now: i64| run_full(&p, "GET", "/api/billing?org=o1", &[], None, &t, now).reason;
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
        Some(
            "Bearer error=\"insufficient_scope\", scope=\"patient/Patient.r user/Patient.r system/Patient.r \
             patient/Patient.read user/Patient.read system/Patient.read\""
        )
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
    let needs_token = |method: &str, target: &str| {
        let h = HeaderList::default();
        prepare(
            &p,
            &RawRequest {
                method,
                target: target.as_bytes(),
                version: HttpVersion::Http11,
                headers: &h,
                now: NOW,
                client_cert_sha256: None,
            },
        )
        .needs_token()
    };
    assert!(!needs_token("HEAD", "/fhir/metadata"));
    assert!(needs_token("POST", "/fhir/metadata"));
    assert!(needs_token("GET", "/nope"));
}

#[test]
fn batch_and_transaction_entries_are_each_authorised() {
    let text = POLICY.replace(
        "  - name: patient-read\n",
        "  - name: fhir-batch\n    methods: [POST]\n    path: /fhir\n    fhir: { base: /fhir }\n  - name: patient-read\n",
    );
    let p = compile(&[PolicySource::new("p.yaml", &text)]).unwrap();
    let decide_body = |body: &str, authn: &Authn| run_full(&p, "POST", "/fhir", &[], Some(body), authn, NOW);
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
    assert_eq!(
        run_full(&p, "POST", "/fhir", &[], None, &user, NOW).reason,
        Reason::UnmappedInteraction
    );
}

/// The policy of the side-door tests: FHIR-aware routes, a WebSocket route,
/// a form route and break-glass with the default justification rules.
const SIDE_DOORS: &str = r#"
version: 1
break_glass:
  scope: emergency.phi.read
  header: X-Break-Glass-Reason
routes:
  - { name: fhir, methods: ["*"], path: /fhir/**, fhir: { base: /fhir } }
  - { name: batch, methods: [POST], path: /fhir, fhir: { base: /fhir } }
  - { name: subscriptions, methods: [GET], path: /ws/subscriptions, scopes: { any_of: [user/Subscription.r] }, upgrade: websocket }
  - { name: form, methods: [POST], path: /api/notes, scopes: { any_of: [notes.write] } }
  - { name: public, methods: [GET], path: /status, public: true }
"#;

fn side_doors() -> PolicySet {
    compile(&[PolicySource::new("p.yaml", SIDE_DOORS)]).unwrap()
}

const WS: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

type Row = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    &'static [&'static str],
    Reason,
    &'static str,
);

fn check_rows(p: &PolicySet, claims: serde_json::Value, rows: &[Row]) {
    let mut failures = Vec::new();
    for (method, target, headers, body, scopes, want, name) in rows {
        let d = run_full(
            p,
            method,
            target,
            headers,
            *body,
            &token(scopes, claims.clone()),
            NOW,
        );
        if d.reason != *want || d.is_allow() != want.is_allow() {
            failures.push(format!(
                "{name}: {method} {target} → {:?} ({:?}), want {want:?}",
                d.reason, d.detail
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn method_overrides_are_refused_wherever_they_hide() {
    use Reason::*;
    let p = side_doors();
    let all = &["user/*.cruds", "notes.write"][..];
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("GET", "/fhir/Patient/1", &[("X-HTTP-Method-Override", "DELETE")], None, all, MethodOverride, "header"),
        ("GET", "/fhir/Patient/1", &[("X-HTTP-Method", "DELETE")], None, all, MethodOverride, "X-HTTP-Method"),
        ("POST", "/fhir/Observation", &[("X-Method-Override", "DELETE")], None, all, MethodOverride, "X-Method-Override"),
        ("GET", "/fhir/Patient/1?_method=DELETE", &[], None, all, MethodOverride, "query"),
        ("POST", "/fhir/Observation/_search", &[FORM], Some("patient=1&_method=DELETE"), all, MethodOverride, "_search body"),
        ("POST", "/api/notes", &[FORM], Some("text=hi&_method=DELETE"), all, MethodOverride, "form body, custom route"),
        ("POST", "/api/notes", &[FORM], Some("text=hi"), all, Allowed, "plain form body"),
        ("POST", "/fhir", &[], Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1?_method=DELETE"}}]}"#), all, MethodOverride, "bundle entry"),
        ("GET", "/status", &[("X-HTTP-Method-Override", "PUT")], None, &[], MethodOverride, "even on public routes"),
    ];
    check_rows(&p, json!({}), rows);
    // Refused before any token is looked at.
    let d = run_full(
        &p,
        "GET",
        "/fhir/Patient/1?_method=PUT",
        &[],
        None,
        &Authn::Missing,
        NOW,
    );
    assert_eq!((d.reason, d.deny_status()), (MethodOverride, 400));
}

#[test]
fn upgrades_are_refused_unless_the_route_opts_in() {
    use Reason::*;
    let p = side_doors();
    let sub = &["user/Subscription.r"][..];
    let h2c: &[(&str, &str)] = &[
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    ];
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("GET", "/ws/subscriptions", WS, None, sub, Allowed, "opted-in websocket"),
        ("GET", "/ws/subscriptions", h2c, None, sub, UpgradeRefused, "h2c on a websocket route"),
        ("GET", "/ws/subscriptions", WS, None, &["other"], InsufficientScope, "scopes still apply"),
        ("GET", "/fhir/Patient/1", WS, None, &["user/Patient.r"], UpgradeRefused, "allowed GET, no opt-in"),
        ("GET", "/fhir/Patient/1", &[("Upgrade", "websocket")], None, &["user/Patient.r"], UpgradeRefused, "bare Upgrade header"),
        ("GET", "/fhir/Patient/1", &[("Connection", "upgrade")], None, &["user/Patient.r"], UpgradeRefused, "Connection: upgrade"),
        ("GET", "/fhir/Patient/1", h2c, None, &["user/Patient.r"], UpgradeRefused, "h2c"),
        ("GET", "/fhir/Patient/1", WS, None, &[], InsufficientScope, "a denial stays a denial"),
        ("GET", "/status", WS, None, &[], UpgradeRefused, "public route without opt-in"),
    ];
    check_rows(&p, json!({}), rows);
    let d = run_full(
        &p,
        "GET",
        "/ws/subscriptions",
        WS,
        None,
        &token(sub, json!({})),
        NOW,
    );
    assert!(d.forward.websocket);
    let d = run_full(
        &p,
        "GET",
        "/fhir/Patient/1",
        &[],
        None,
        &token(&["user/Patient.r"], json!({})),
        NOW,
    );
    assert!(!d.forward.websocket);
    // Unauthenticated callers learn nothing about which routes opt in.
    let d = run_full(&p, "GET", "/fhir/Patient/1", WS, None, &Authn::Missing, NOW);
    assert_eq!(d.reason, MissingToken);
    // Break-glass never opens a tunnel.
    let d = run_full(
        &p,
        "GET",
        "/ws/subscriptions",
        &[WS, &[("X-Break-Glass-Reason", "ETREAT: cardiac arrest in bay 4")]].concat(),
        None,
        &token(&["emergency.phi.read"], json!({})),
        NOW,
    );
    assert_eq!(d.reason, BreakGlassRejected, "break-glass never opens a tunnel");
    let d = run_full(
        &p,
        "GET",
        "/fhir/Patient/1",
        &[WS, &[("X-Break-Glass-Reason", "ETREAT: cardiac arrest in bay 4")]].concat(),
        None,
        &token(&["emergency.phi.read"], json!({})),
        NOW,
    );
    assert_eq!(d.reason, BreakGlassRejected);
}

#[test]
fn patient_searches_must_use_the_types_compartment_parameters() {
    use Reason::*;
    let p = side_doors();
    let pt = &["patient/*.rs"][..];
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("GET", "/fhir/Observation?patient=123", &[], None, pt, Allowed, "patient alias of subject"),
        ("GET", "/fhir/Observation?subject=Patient/123", &[], None, pt, Allowed, "typed subject"),
        ("GET", "/fhir/Observation?subject:Patient=123", &[], None, pt, Allowed, ":Patient modifier"),
        ("GET", "/fhir/Observation?subject=123", &[], None, pt, OutsidePatientCompartment, "bare subject is ambiguous"),
        ("GET", "/fhir/Patient?_id=123", &[], None, pt, Allowed, "Patient by _id"),
        ("GET", "/fhir/Patient?patient=123", &[], None, pt, OutsidePatientCompartment, "Patient has no patient param"),
        ("GET", "/fhir/Patient?subject=Patient/123", &[], None, pt, OutsidePatientCompartment, "Patient has no subject param"),
        ("GET", "/fhir/Group?patient=123", &[], None, pt, OutsidePatientCompartment, "Group's is member"),
        ("GET", "/fhir/Group?member=Patient/123", &[], None, pt, Allowed, "Group by member"),
        ("GET", "/fhir/Bundle?patient=123", &[], None, pt, OutsidePatientCompartment, "Bundle is not in the compartment"),
        ("GET", "/fhir/Encounter?patient=123", &[], None, pt, Allowed, "Encounter patient"),
        ("GET", "/fhir/Encounter?subject=123", &[], None, pt, OutsidePatientCompartment, "Encounter bare subject"),
    ];
    check_rows(&p, json!({"patient": "123"}), rows);
}

#[test]
fn patient_scoped_searches_are_forwarded_with_strict_handling() {
    let p = side_doors();
    let pt = token(&["patient/Observation.rs"], json!({"patient": "123"}));
    let d = run_full(&p, "GET", "/fhir/Observation?patient=123", &[], None, &pt, NOW);
    assert!(d.is_allow() && d.forward.prefer_strict);
    let user = token(&["user/Observation.rs"], json!({}));
    let d = run_full(&p, "GET", "/fhir/Observation?patient=123", &[], None, &user, NOW);
    assert!(
        d.is_allow() && !d.forward.prefer_strict,
        "user scopes do not rely on parameters"
    );
    let granular = token(&["user/Observation.rs?category=laboratory"], json!({}));
    let d = run_full(
        &p,
        "GET",
        "/fhir/Observation?category=laboratory",
        &[],
        None,
        &granular,
        NOW,
    );
    assert!(
        d.is_allow() && d.forward.prefer_strict,
        "granular scopes rely on parameters"
    );
    let d = run_full(&p, "GET", "/fhir/Observation/1", &[], None, &user, NOW);
    assert!(!d.forward.prefer_strict, "reads by id do not");
}

#[test]
fn post_search_bodies_are_merged_with_the_query() {
    use Reason::*;
    let p = side_doors();
    let pt = &["patient/Observation.rs"][..];
    const TEXT: (&str, &str) = ("Content-Type", "text/plain");
    const LATIN1: (&str, &str) = (
        "Content-Type",
        "application/x-www-form-urlencoded; charset=ISO-8859-1",
    );
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some(""), pt, Allowed, "empty body"),
        ("POST", "/fhir/Observation/_search", &[FORM], Some("patient=123"), pt, Allowed, "patient in body"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some("patient=999"), pt, OutsidePatientCompartment, "body names another patient"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some("_has:Observation:patient:code=x"), pt, OutsidePatientCompartment, "_has in body"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some("subject.name=x"), pt, OutsidePatientCompartment, "chain in body"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some("_include=Observation:performer"), pt, InsufficientScope, "include in body"),
        ("POST", "/fhir/Observation/_search?patient=123", &[TEXT], Some("patient=999"), pt, UnsupportedMediaType, "not a form"),
        ("POST", "/fhir/Observation/_search?patient=123", &[LATIN1], Some("patient=999"), pt, UnsupportedMediaType, "not UTF-8 form"),
        ("POST", "/fhir/Observation/_search?patient=123", &[], Some("patient=999"), pt, UnsupportedMediaType, "no content type"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], Some("a=%zz"), pt, UnmappedInteraction, "bad encoding"),
        ("POST", "/fhir/Observation/_search?patient=123", &[FORM], None, pt, Allowed, "no body at all"),
    ];
    check_rows(&p, json!({"patient": "123"}), rows);
    let granular = &["user/Observation.rs?category=laboratory"][..];
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("POST", "/fhir/Observation/_search?category=laboratory", &[FORM], Some("category=vital-signs"), granular, InsufficientScope, "granular widened by body"),
        ("POST", "/fhir/Observation/_search", &[FORM], Some("category=laboratory"), granular, Allowed, "granular in body"),
    ];
    check_rows(&p, json!({}), rows);
}

#[test]
fn includes_need_a_grant_for_every_type_they_return() {
    use Reason::*;
    let p = side_doors();
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("GET", "/fhir/Observation?_include=Observation:subject", &[], None, &["user/Observation.rs"], InsufficientScope, "subject can be Patient, Group, ..."),
        ("GET", "/fhir/Observation?_include=Observation:subject:Patient", &[], None, &["user/Observation.rs"], InsufficientScope, "typed, Patient not granted"),
        ("GET", "/fhir/Observation?_include=Observation:subject:Patient", &[], None, &["user/Observation.rs", "user/Patient.r"], Allowed, "typed and granted"),
        ("GET", "/fhir/Observation?_include=Observation:patient", &[], None, &["user/Observation.rs", "user/Patient.r"], Allowed, "patient param targets Patient only"),
        ("GET", "/fhir/Observation?_revinclude=Provenance:target", &[], None, &["user/Observation.rs"], InsufficientScope, "revinclude returns Provenance"),
        ("GET", "/fhir/Observation?_revinclude=Provenance:target", &[], None, &["user/Observation.rs", "user/Provenance.s"], Allowed, "revinclude needs s"),
        ("GET", "/fhir/Observation?_revinclude=Provenance:target", &[], None, &["user/Observation.rs", "user/Provenance.r"], InsufficientScope, "r is not s"),
        ("GET", "/fhir/Observation?_include=*", &[], None, &["user/Observation.rs", "user/Patient.r"], InsufficientScope, "wildcard"),
        ("GET", "/fhir/Observation?_include=*", &[], None, &["user/*.rs"], Allowed, "wildcard with every type granted"),
        ("GET", "/fhir/Observation?_include:iterate=*", &[], None, &["user/Observation.rs"], InsufficientScope, "wildcard iterate"),
        ("GET", "/fhir/Patient?_include:iterate=Patient:link", &[], None, &["user/Patient.rs"], InsufficientScope, "link can be RelatedPerson"),
        ("GET", "/fhir/Patient?_include:iterate=Patient:link", &[], None, &["user/Patient.rs", "user/RelatedPerson.r"], Allowed, "iterate, every type granted"),
        ("GET", "/fhir/Observation?_include=Observation:custom-param", &[], None, &["user/*.cruds"], UnmappedInteraction, "unknown parameter"),
        ("GET", "/fhir/Observation?_include=Observation:patient", &[], None, &["user/Observation.rs", "user/Patient.rs?gender=female"], InsufficientScope, "granular grants cannot filter includes"),
        ("GET", "/fhir/Observation?category=laboratory&_revinclude=Observation:has-member", &[], None, &["user/Observation.rs?category=laboratory"], InsufficientScope, "granular categories cannot leak through includes"),
    ];
    check_rows(&p, json!({}), rows);
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("GET", "/fhir/Observation?patient=123&_include=Observation:patient", &[], None, &["patient/Observation.rs", "patient/Patient.r"], Allowed, "includes the patient itself"),
        ("GET", "/fhir/Observation?patient=123&_include=Observation:patient", &[], None, &["patient/Observation.rs"], InsufficientScope, "Patient not granted"),
        ("GET", "/fhir/Observation?patient=123&_include=Observation:subject", &[], None, &["patient/*.rs"], OutsidePatientCompartment, "subject can be a Group"),
        ("GET", "/fhir/Observation?patient=123&_include=Observation:performer", &[], None, &["patient/*.rs"], OutsidePatientCompartment, "performers are not the patient's"),
        ("GET", "/fhir/Patient?_id=123&_revinclude=Observation:patient", &[], None, &["patient/Patient.rs", "patient/Observation.s"], Allowed, "the patient's observations"),
        ("GET", "/fhir/Patient?_id=123&_revinclude=Provenance:target", &[], None, &["patient/*.rs"], OutsidePatientCompartment, "Provenance by target is not provable"),
        ("GET", "/fhir/Patient?_id=123&_include:iterate=Patient:link", &[], None, &["patient/*.rs"], OutsidePatientCompartment, "iterate is never provable"),
        ("GET", "/fhir/Observation?patient=123&_include=*", &[], None, &["patient/*.rs"], OutsidePatientCompartment, "wildcard"),
        ("GET", "/fhir/Observation?patient=123&_include=Observation:patient", &[], None, &["patient/Observation.rs", "user/Patient.r"], Allowed, "user scope covers the include"),
    ];
    check_rows(&p, json!({"patient": "123"}), rows);
}

#[test]
fn conditional_operations_are_authorised_as_searches_too() {
    use Reason::*;
    let p = side_doors();
    const INE: (&str, &str) = ("If-None-Exist", "identifier=http://acme|1");
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("POST", "/fhir/Observation", &[INE], None, &["user/Observation.c"], InsufficientScope, "create-only token cannot search"),
        ("POST", "/fhir/Observation", &[INE], None, &["user/Observation.cs"], Allowed, "create + search"),
        ("POST", "/fhir/Observation", &[("If-None-Exist", "Observation?identifier=x")], None, &["user/Observation.cs"], Allowed, "Type?query form"),
        ("POST", "/fhir/Observation", &[INE, INE], None, &["user/Observation.cs"], UnmappedInteraction, "repeated If-None-Exist"),
        ("POST", "/fhir/Observation", &[("If-None-Exist", "")], None, &["user/Observation.cs"], UnmappedInteraction, "empty criteria"),
        ("GET", "/fhir/Observation/1", &[INE], None, &["user/Observation.rs"], UnmappedInteraction, "If-None-Exist on a read"),
        ("PUT", "/fhir/Observation?identifier=x", &[], None, &["user/Observation.u"], InsufficientScope, "conditional update needs s"),
        ("PUT", "/fhir/Observation?identifier=x", &[], None, &["user/Observation.us"], Allowed, "conditional update"),
        ("DELETE", "/fhir/Observation?identifier=x", &[], None, &["user/Observation.d"], InsufficientScope, "conditional delete needs s"),
        ("DELETE", "/fhir/Observation?identifier=x", &[], None, &["user/Observation.ds"], Allowed, "conditional delete"),
        ("PATCH", "/fhir/Observation?identifier=x", &[], None, &["user/Observation.us"], Allowed, "conditional patch"),
        ("DELETE", "/fhir/Observation", &[], None, &["user/Observation.ds"], UnmappedInteraction, "no criteria"),
        ("DELETE", "/fhir/Observation?category=vital-signs", &[], None, &["user/Observation.d", "user/Observation.s?category=laboratory"], InsufficientScope, "granular search cannot select others"),
        ("DELETE", "/fhir/Observation?category=laboratory", &[], None, &["user/Observation.d", "user/Observation.s?category=laboratory"], Allowed, "granular search selects its own"),
    ];
    check_rows(&p, json!({}), rows);
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("PUT", "/fhir/Observation?patient=123", &[], None, &["patient/Observation.rus"], OutsidePatientCompartment, "patient writes of other types stay unverifiable"),
        ("PUT", "/fhir/Patient?_id=123", &[], None, &["patient/Patient.rus"], Allowed, "own Patient by criteria"),
        ("PUT", "/fhir/Patient?_id=124", &[], None, &["patient/Patient.rus"], OutsidePatientCompartment, "another Patient by criteria"),
        ("DELETE", "/fhir/Patient?name=smith", &[], None, &["patient/Patient.ds"], OutsidePatientCompartment, "criteria must name the patient"),
    ];
    check_rows(&p, json!({"patient": "123"}), rows);
    let bundle =
        |entry: &str| format!(r#"{{"resourceType":"Bundle","type":"transaction","entry":[{entry}]}}"#);
    let create = bundle(
        r#"{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation","ifNoneExist":"identifier=x"}}"#,
    );
    let d = run_full(
        &p,
        "POST",
        "/fhir",
        &[],
        Some(&create),
        &token(&["user/Observation.c"], json!({})),
        NOW,
    );
    assert_eq!(d.reason, InsufficientScope, "{:?}", d.detail);
    let d = run_full(
        &p,
        "POST",
        "/fhir",
        &[],
        Some(&create),
        &token(&["user/Observation.cs"], json!({})),
        NOW,
    );
    assert_eq!(d.reason, Allowed, "{:?}", d.detail);
    let cond_delete = bundle(r#"{"request":{"method":"DELETE","url":"Observation?identifier=x"}}"#);
    let d = run_full(
        &p,
        "POST",
        "/fhir",
        &[],
        Some(&cond_delete),
        &token(&["user/Observation.d"], json!({})),
        NOW,
    );
    assert_eq!(d.reason, InsufficientScope, "{:?}", d.detail);
}

#[test]
fn bundles_with_duplicate_json_members_are_refused() {
    let p = side_doors();
    let user = token(&["user/Patient.r"], json!({}));
    for body in [
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}],"entry":[{"request":{"method":"DELETE","url":"Patient/1"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1","url":"Patient/2"}}]}"#,
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","method":"DELETE","url":"Patient/1"}}]}"#,
        r#"{"resourceType":"Bundle","resourceType":"Bundle","type":"batch"}"#,
    ] {
        let d = run_full(&p, "POST", "/fhir", &[], Some(body), &user, NOW);
        assert_eq!(d.reason, Reason::BadRequestBody, "{body}");
    }
    let ok = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}]}"#;
    assert!(run_full(&p, "POST", "/fhir", &[], Some(ok), &user, NOW).is_allow());
}

#[test]
fn break_glass_justifications_must_carry_information() {
    let p = side_doors();
    let eg = token(&["emergency.phi.read"], json!({}));
    let with = |j: &str| {
        run_full(
            &p,
            "GET",
            "/fhir/Patient/9",
            &[("X-Break-Glass-Reason", j)],
            None,
            &eg,
            NOW,
        )
    };
    for good in [
        "unconscious patient in ED",
        "Patient bewusstlos, Notaufnahme",
        "ｅｍｅｒｇｅｎｃｙ in bay 4",
        "e\u{301}mergency care now", // decomposed, NFC-normalised
    ] {
        assert_eq!(with(good).reason, Reason::BreakGlass, "{good:?}");
    }
    for (bad, why) in [
        ("", "empty"),
        ("        ", "whitespace only"),
        (
            "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}",
            "zero-width only",
        ),
        ("a\u{200B}b\u{200C}c\u{200D}d\u{2060}e\u{FEFF}", "five visible"),
        ("short", "below the minimum"),
        ("emergency \u{202E}lanigiro", "bidi override"),
        ("emergency \u{2067}x\u{2069} now", "bidi isolate"),
        (
            "\u{2800}\u{2800}\u{2800}\u{2800}\u{2800}\u{2800}\u{2800}\u{2800}",
            "braille blanks",
        ),
        (
            "a\u{301}\u{301}\u{301}\u{301}\u{301}\u{301}\u{301}\u{301}",
            "combining marks",
        ),
    ] {
        let d = with(bad);
        assert_eq!(
            d.reason,
            Reason::BreakGlassRejected,
            "{why}: {bad:?} → {:?}",
            d.detail
        );
    }
    // Not UTF-8: refused, never decoded lossily into an accepted value.
    let h = HeaderList(vec![(
        "X-Break-Glass-Reason".into(),
        b"emergency \xff\xfe care".to_vec(),
    )]);
    let prepared = prepare(
        &p,
        &RawRequest {
            method: "GET",
            target: b"/fhir/Patient/9",
            version: HttpVersion::Http11,
            headers: &h,
            now: NOW,
            client_cert_sha256: None,
        },
    );
    assert_eq!(decide(&prepared, None, &eg).reason, Reason::BreakGlassRejected);
    // Sent twice: ambiguous.
    let d = run_full(
        &p,
        "GET",
        "/fhir/Patient/9",
        &[
            ("X-Break-Glass-Reason", "unconscious patient"),
            ("X-Break-Glass-Reason", "unconscious patient"),
        ],
        None,
        &eg,
        NOW,
    );
    assert_eq!(d.reason, Reason::BreakGlassRejected);
    // min_length is configurable.
    let lenient = compile(&[PolicySource::new(
        "p.yaml",
        SIDE_DOORS.replace(
            "  header: X-Break-Glass-Reason\n",
            "  header: X-Break-Glass-Reason\n  min_length: 3\n",
        ),
    )])
    .unwrap();
    let d = run_full(
        &lenient,
        "GET",
        "/fhir/Patient/9",
        &[("X-Break-Glass-Reason", "ED!")],
        None,
        &eg,
        NOW,
    );
    assert_eq!(d.reason, Reason::BreakGlass);
}

#[test]
fn scopes_required_names_every_form_that_would_satisfy_and_scope_used_the_one_that_did() {
    let p = side_doors();
    // A backend service with system/ scopes (issue 10: was reported as user/ + patient/).
    let svc = token(&["system/Observation.rs"], json!({}));
    let d = run_full(&p, "GET", "/fhir/Observation?code=x", &[], None, &svc, NOW);
    assert!(d.is_allow());
    assert_eq!(d.scope_used, ["system/Observation.rs"]);
    assert_eq!(
        d.scopes_required,
        [
            "patient/Observation.s",
            "user/Observation.s",
            "system/Observation.s",
            "patient/Observation.read",
            "user/Observation.read",
            "system/Observation.read"
        ]
    );
    let refused = token(&["system/Observation.r"], json!({}));
    let d = run_full(&p, "GET", "/fhir/Observation?code=x", &[], None, &refused, NOW);
    assert_eq!(d.reason, Reason::InsufficientScope);
    let h = d.www_authenticate().unwrap();
    assert!(h.contains("system/Observation.s"), "{h}");
    // A read by id of a non-Patient resource can never be granted by a patient/ scope.
    let d = run_full(&p, "GET", "/fhir/Observation/1", &[], None, &refused, NOW);
    assert_eq!(d.scope_used, ["system/Observation.r"]);
    assert!(
        d.scopes_required.iter().all(|s| !s.starts_with("patient/")),
        "{:?}",
        d.scopes_required
    );
    // v1 scopes are named as what they are.
    let v1 = token(&["user/Observation.read"], json!({}));
    let d = run_full(&p, "GET", "/fhir/Observation/1", &[], None, &v1, NOW);
    assert_eq!(d.scope_used, ["user/Observation.read"]);
    // Includes and conditional criteria add what they used.
    let two = token(&["user/Observation.rs", "user/Patient.r"], json!({}));
    let d = run_full(
        &p,
        "GET",
        "/fhir/Observation?_include=Observation:patient",
        &[],
        None,
        &two,
        NOW,
    );
    assert_eq!(d.scope_used, ["user/Observation.rs", "user/Patient.r"]);
    let cs = token(&["user/Observation.c", "system/Observation.s"], json!({}));
    let d = run_full(
        &p,
        "POST",
        "/fhir/Observation",
        &[("If-None-Exist", "identifier=x")],
        None,
        &cs,
        NOW,
    );
    assert_eq!(d.scope_used, ["user/Observation.c", "system/Observation.s"]);
    // Explicit routes: the granted scopes that met the requirement.
    let explicit = compile(&[PolicySource::new(
        "p.yaml",
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    scopes: { all_of: [user/Patient.rs, notes.read] }\n",
    )])
    .unwrap();
    let d = run_full(
        &explicit,
        "GET",
        "/x",
        &[],
        None,
        &token(
            &["openid", "user/Patient.r", "user/Patient.s", "notes.read"],
            json!({}),
        ),
        NOW,
    );
    assert!(d.is_allow());
    assert_eq!(d.scope_used, ["user/Patient.r", "user/Patient.s", "notes.read"]);
    // Break-glass used its own scope.
    let eg = token(&["emergency.phi.read"], json!({}));
    let d = run_full(
        &p,
        "GET",
        "/fhir/Patient/9",
        &[("X-Break-Glass-Reason", "unconscious patient in ED")],
        None,
        &eg,
        NOW,
    );
    assert_eq!(
        (d.reason, d.scope_used.clone()),
        (Reason::BreakGlass, vec!["emergency.phi.read".to_string()])
    );
}

#[test]
fn policy_check_reports_every_error_of_a_file_at_once() {
    let text = "version: 1\nroutes:\n  - methods: [GET]\n    path: /a\n    public: true\n    colour: red\n  - methods: [GET]\n    path: /b\n    scopes: { any_of: [x] }\n    max_auth_age: 10 parsecs\n  - methods: GET\n    path: /c\n    public: true\n  - methods: [BREW]\n    path: /d\n    public: true\n";
    let errors = compile(&[PolicySource::new("p.yaml", text)]).unwrap_err();
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for want in [
        "p.yaml:6:13: unknown field `colour`",
        "p.yaml:10:19: `10 parsecs` is not a duration",
        "p.yaml:11:14: invalid type: string \"GET\"",
        "p.yaml:14:14: unknown method 'BREW'",
    ] {
        assert!(
            shown.iter().any(|s| s.starts_with(want)),
            "missing {want:?} in {shown:#?}"
        );
    }
}
