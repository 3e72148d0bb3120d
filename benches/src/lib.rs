//! Shared fixtures for the benchmarks and the load tools.
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
#![forbid(unsafe_code)]

pub mod devproc;
pub mod http1;

use phigate_policy::{compile, PolicySet, PolicySource};

/// A policy with `n` routes: the FHIR routes a real deployment has (one FHIR-aware `/fhir/**`), padded
/// with `n - 5` distinct API routes mixing literal and `{param}` segments.
pub fn policy_with_routes(n: usize) -> PolicySet {
    compile(&[PolicySource::new("bench.yaml", policy_text_with_routes(n))])
        .unwrap_or_else(|e| panic!("bench policy: {e:?}"))
}

/// The text of [`policy_with_routes`]: `GET /fhir/Patient/{id}` needs
/// `user/Patient.rs`, `GET /fhir/metadata` is public (the load tools write
/// it to a policy file).
pub fn policy_text_with_routes(n: usize) -> String {
    let mut text = String::from(
        "version: 1\nroutes:\n  - methods: [\"*\"]\n    path: /fhir/**\n    fhir: { base: /fhir }\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n  - methods: [GET]\n    path: /fhir/Observation\n    scopes: { any_of: [user/Observation.rs] }\n  - methods: [POST]\n    path: /fhir/Observation\n    scopes: { all_of: [user/Observation.c] }\n",
    );
    for i in 0..n.saturating_sub(5) {
        text.push_str(&format!(
            "  - methods: [GET, PUT]\n    path: /api/v{}/service{}/items/{{id}}/detail{}\n    scopes: {{ all_of: [svc{}.read, v1.patient.records.read] }}\n",
            i % 7,
            i,
            i % 3,
            i
        ));
    }
    text
}
