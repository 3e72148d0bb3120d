//! decide() and path canonicalisation.
//!
//! Route matching must not grow with the number of routes: the 10,000-route
//! case is compared with the 10-route baseline measured in the same run
//! (`cargo run -p phigate-benches --bin bench-report` prints the ratios).
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use phigate_benches::policy_with_routes;
use std::sync::Arc;

use phigate_policy::{canonicalize, decide, Authn, Claims, RequestFacts};

fn bench_decide(c: &mut Criterion) {
    let authn = Authn::Valid(Claims {
        issuer: "https://idp".into(),
        subject: Some("u".into()),
        client_id: Some("c".into()),
        scopes: vec![
            "user/Patient.rs".into(),
            "user/Observation.rs".into(),
            "launch".into(),
            "openid".into(),
        ],
        ..Claims::default()
    });
    // A patient-context SMART app searching its own Observations (FHIR-aware route).
    let mut patient_claims = serde_json::Map::new();
    patient_claims.insert("patient".into(), "123".into());
    let patient_app = Authn::Valid(Claims {
        issuer: "https://idp".into(),
        scopes: vec!["patient/Observation.rs".into(), "launch/patient".into()],
        claims: Arc::new(patient_claims),
        ..Claims::default()
    });
    let mut g = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000] {
        let policy = policy_with_routes(n);
        let facts = RequestFacts::new("GET", "/fhir/Patient/123", None, 1_795_600_800);
        assert!(decide(&policy, &facts, &authn).is_allow());
        g.bench_with_input(BenchmarkId::new("routes", n), &policy, |b, p| {
            b.iter(|| decide(black_box(p), black_box(&facts), black_box(&authn)))
        });
        let search = RequestFacts::new(
            "GET",
            "/fhir/Encounter",
            Some("patient=123&date=ge2026-01-01"),
            1_795_600_800,
        );
        let fhir_app = Authn::Valid(Claims {
            scopes: vec!["patient/Encounter.rs".into()],
            ..match &patient_app {
                Authn::Valid(c) => c.clone(),
                _ => unreachable!(),
            }
        });
        assert!(decide(&policy, &search, &fhir_app).is_allow());
        g.bench_with_input(BenchmarkId::new("fhir_patient_search", n), &policy, |b, p| {
            b.iter(|| decide(black_box(p), black_box(&search), black_box(&fhir_app)))
        });
    }
    g.finish();
}

fn bench_canonicalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonicalize");
    for (name, target) in [
        (
            "plain",
            "/fhir/Observation?patient=123&category=laboratory&_count=50",
        ),
        ("escaped", "/fhir/%50atient/abc%7Edef%3A1?x=1"),
    ] {
        g.bench_function(name, |b| b.iter(|| canonicalize(black_box(target))));
    }
    g.finish();
}

criterion_group!(benches, bench_decide, bench_canonicalize);
criterion_main!(benches);
