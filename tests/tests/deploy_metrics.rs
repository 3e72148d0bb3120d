//! The deployment artefacts query metrics that exist: every `phigate_*`
//! metric name used by the Grafana dashboard (deploy/grafana/phigate.json)
//! and the Prometheus rules (deploy/prometheus/rules.yml) appears in a real
//! `/metrics` scrape of a running phigate — one that has seen the traffic
//! those panels and alerts are about (allowed, denied, public, break-glass and
//! shadow-mode requests; an issuer, a sink, an upstream with health checks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use phigate_tests::keys::claims;
use phigate_tests::{
    eventually, free_addr, http, Gateway, GatewayOptions, JwksServer, Network, TestKey, Upstream,
};

/// A request: target, headers, expected status.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16);

const POLICY: &str = r#"
version: 1
break_glass:
  scope: emergency.phi.read
  header: X-Break-Glass-Reason
routes:
  - name: metadata
    methods: [GET]
    path: /fhir/metadata
    public: true
  - name: patient-read
    methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
  - name: observation-shadow
    methods: [GET]
    path: /fhir/Observation/{id}
    scopes: { any_of: [user/Observation.rs] }
    mode: report_only
"#;

/// `phigate_…` names in a deployment file (recording rules are named
/// `phigate:…` and are not metrics phigate exports).
fn metric_names(file: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("phigate_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    assert!(!names.is_empty(), "{file} names no phigate metric");
    names
}

#[test]
fn every_metric_the_dashboard_and_rules_query_is_exported() {
    let key = TestKey::es256("deploy-1");
    let jwks = JwksServer::start(TestKey::jwks(&[&key]));
    let upstream = Upstream::start();
    let proxy = free_addr();
    let network = Network {
        proxy,
        yaml: format!(
            "listen: {proxy}\nupstreams:\n  - name: fhir\n    prefix: /fhir\n    addresses: [\"{}\"]\n    health_check: {{ path: /fhir/metadata, interval: 1s, timeout: 1s }}\n",
            upstream.addr
        ),
    };
    let gw = Gateway::start(GatewayOptions {
        network: Some(network),
        extra_yaml: "sinks:\n  - type: stdout\n    name: stdout\n",
        ..GatewayOptions::new(jwks.uri(), upstream.addr, POLICY)
    });
    gw.wait_ready();

    let reader = key.sign(&claims("user/Patient.rs"));
    let emergency = key.sign(&claims("emergency.phi.read"));
    let auth = |t: &str| format!("Bearer {t}");
    let cases: [Case; 5] = [
        ("/fhir/metadata", vec![], 200),
        ("/fhir/Patient/1", vec![("Authorization", auth(&reader))], 200),
        ("/fhir/Patient/1", vec![], 401),
        (
            "/fhir/Patient/2",
            vec![
                ("Authorization", auth(&emergency)),
                ("X-Break-Glass-Reason", "unconscious patient in ED".into()),
            ],
            200,
        ),
        ("/fhir/Observation/3", vec![("Authorization", auth(&reader))], 200),
    ];
    for (target, headers, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http::request(gw.proxy, "GET", target, &h, b"").unwrap();
        assert_eq!(r.status, *want, "GET {target}: {}", r.text());
    }

    // The upstream's health has been checked at least once, and every
    // request counted, before the names are compared.
    let scrape = eventually(Duration::from_secs(20), || {
        let m = gw.metrics();
        let counted = m.value("phigate_requests_total", &[]) >= cases.len() as f64;
        let checked = m.samples.iter().any(|s| s.metric == "phigate_upstream_healthy");
        (counted && checked).then_some(m)
    })
    .expect("requests counted and upstream health reported");
    assert_eq!(scrape.value("phigate_break_glass_total", &[]), 1.0);
    assert_eq!(scrape.value("phigate_shadow_denials_total", &[]), 1.0);
    assert_eq!(scrape.value("phigate_ready", &[]), 1.0);
    assert!(scrape.value("phigate_audit_spool_max_bytes", &[]) > 0.0);

    let exported: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for file in ["deploy/grafana/phigate.json", "deploy/prometheus/rules.yml"] {
        let missing: Vec<String> = metric_names(file)
            .into_iter()
            .filter(|n| !exported.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics phigate does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
