use super::*;

fn one(text: &str) -> Result<PolicySet, Vec<Diagnostic>> {
    compile(&[PolicySource::new("p.yaml", text)])
}

#[test]
fn compiles_and_matches_templates() {
    let p = one(
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n  - name: everything\n    methods: [\"*\"]\n    path: /fhir/**\n    scopes: { all_of: [admin] }\n",
        )
        .unwrap();
    assert_eq!(
        p.match_route("GET", "/fhir/Patient/1").unwrap().template,
        "/fhir/Patient/{id}"
    );
    assert_eq!(
        p.match_route("GET", "/fhir/metadata").unwrap().access,
        Access::Public
    );
    assert_eq!(
        &*p.match_route("DELETE", "/fhir/Patient/1").unwrap().label,
        "everything"
    );
    assert_eq!(
        &*p.match_route("GET", "/fhir/Patient/1/_history/2").unwrap().label,
        "everything"
    );
    assert!(p.match_route("GET", "/fhir").is_none());
    assert!(p.match_route("GET", "/other").is_none());
    assert!(p.match_route("BREW", "/fhir/metadata").is_none());
    // Case-sensitive.
    assert_eq!(
        &*p.match_route("GET", "/fhir/patient/1").unwrap().label,
        "everything"
    );
    assert!(p.match_route("GET", "/FHIR/metadata").is_none());
    assert!(p.version().starts_with("sha256:"));
}

#[test]
fn reports_every_error_with_location() {
    let errs = compile(&[
            PolicySource::new(
                "a.yaml",
                "version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    scopes: { any_of: [a] }\n  - methods: [FETCH]\n    path: /y/**/z\n    scopes: { any_of: [] }\n  - methods: [GET]\n    path: /x\n    public: true\n",
            ),
            PolicySource::new("b.yaml", "version: 1\nroutes:\n  - methods: [GET]\n    path: /z\n    scopez: {}\n"),
        ])
        .unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let joined = text.join("\n");
    assert!(joined.contains("a.yaml:6:"), "{joined}"); // unknown method
    assert!(
        joined.contains("a.yaml:7:") && joined.contains("'**'"),
        "{joined}"
    );
    assert!(
        joined.contains("a.yaml:8:") && joined.contains("must not be empty"),
        "{joined}"
    );
    assert!(
        joined.contains("a.yaml:10:") && joined.contains("duplicate route GET /x"),
        "{joined}"
    );
    assert!(
        joined.contains("b.yaml:5:") && joined.contains("unknown field `scopez`"),
        "{joined}"
    );
}

#[test]
fn duplicate_across_files_is_an_error() {
    let r = "version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n";
    let errs = compile(&[PolicySource::new("a.yaml", r), PolicySource::new("b.yaml", r)]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].to_string().contains("first defined at a.yaml:3:"),
        "{}",
        errs[0]
    );
}

#[test]
fn conflicting_parameter_names_are_errors() {
    let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n  - methods: [GET]\n    path: /x/{name}\n    public: true\n").unwrap_err();
    assert!(errs[0].to_string().contains("conflicts"), "{}", errs[0]);
}

#[test]
fn route_needs_access_declaration() {
    let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n").unwrap_err();
    assert!(errs[0].message.contains("`scopes`, `fhir` or `public: true`"));
    let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    public: true\n    scopes: { all_of: [a] }\n").unwrap_err();
    assert!(errs[0].message.contains("exactly one of"));
}

#[test]
fn version_hash_ignores_the_directory() {
    let text = "version: 1\nroutes: []\n";
    let a = compile(&[PolicySource::new("/etc/phigate/policies/p.yaml", text)]).unwrap();
    let b = compile(&[PolicySource::new("p.yaml", text)]).unwrap();
    assert_eq!(a.version(), b.version());
}

#[test]
fn version_hash_changes_with_content() {
    let a = one("version: 1\nroutes: []\n").unwrap();
    let b = one("version: 1\nroutes: []\n# changed\n").unwrap();
    assert_ne!(a.version(), b.version());
}

#[test]
fn no_sources_is_an_error() {
    assert!(compile(&[]).is_err());
}

#[test]
fn scope_requirements() {
    let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let all = RequiredScopes::AllOf(g(&["a", "b"]));
    let any = RequiredScopes::AnyOf(g(&["a", "b"]));
    assert!(all.is_satisfied_by(&g(&["b", "a", "c"])));
    assert!(!all.is_satisfied_by(&g(&["a"])));
    assert!(any.is_satisfied_by(&g(&["b"])));
    assert!(!any.is_satisfied_by(&g(&["c"])));
    // No implicit hierarchy.
    let versioned = RequiredScopes::AllOf(g(&["v1.patient.records.read"]));
    assert!(!versioned.is_satisfied_by(&g(&["v1.patient", "v1", "v1.patient.records"])));
}

#[test]
fn route_session_and_dpop_settings() {
    let p = one(
        "version: 1\nroutes:\n  - methods: [POST]\n    path: /fhir/Observation\n    scopes: { any_of: [user/Observation.c] }\n    idle_timeout: 5m\n    require_dpop: true\n  - methods: [GET]\n    path: /fhir/Observation\n    scopes: { any_of: [user/Observation.rs] }\n",
    )
    .unwrap();
    let w = p.match_route("POST", "/fhir/Observation").unwrap();
    assert_eq!(w.idle_timeout, Some(std::time::Duration::from_secs(300)));
    assert!(w.require_dpop);
    let r = p.match_route("GET", "/fhir/Observation").unwrap();
    assert_eq!(r.idle_timeout, None);
    assert!(!r.require_dpop);

    let errors = one(
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /a\n    scopes: { any_of: [x] }\n    idle_timeout: soon\n  - methods: [GET]\n    path: /b\n    scopes: { any_of: [x] }\n    idle_timeout: 0s\n  - methods: [GET]\n    path: /c\n    public: true\n    require_dpop: true\n",
    )
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("p.yaml:6:") && t.contains("not a duration")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("p.yaml:10:") && t.contains("between 1s and 24h")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("public route takes no token")),
        "{text:?}"
    );
}

#[test]
fn claim_paths_lists_every_condition_claim_once() {
    let p = one(
        "version: 1\nroutes:\n  - methods: [GET]\n    path: /a/{t}\n    scopes: { any_of: [a] }\n    when:\n      claims:\n        - { claim: tenant, equals: { param: t } }\n        - { claim: realm_access.roles, contains: { value: doctor } }\n  - methods: [GET]\n    path: /b\n    scopes: { any_of: [b] }\n    when:\n      claims:\n        - { claim: tenant, equals: { value: north } }\n  - methods: [GET]\n    path: /c\n    public: true\n",
    )
    .unwrap();
    let dotted: Vec<String> = p.claim_paths().iter().map(|c| c.join(".")).collect();
    assert_eq!(dotted, ["realm_access.roles", "tenant"]);
    assert!(one("version: 1\nroutes: []\n").unwrap().claim_paths().is_empty());
}
