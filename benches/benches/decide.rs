//! prepare() + decide() (what the gateway runs per request: canonicalise,
//! match, shape checks, decide) and path canonicalisation.
//!
//! Route matching must not grow with the number of routes: the 10,000-route
//! case is compared with the 10-route baseline measured in the same run
//! (`cargo run -p phigate-benches --bin bench-report` prints the ratios).
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use phigate_benches::policy_with_routes;
use std::sync::Arc;

use phigate_policy::{
    canonicalize, decide, prepare, Authn, Claims, HeaderList, HttpVersion, PolicySet, RawRequest,
};

/// Prepare and decide one request, as the gateway does.
fn run(policy: &PolicySet, target: &str, headers: &HeaderList, authn: &Authn) -> bool {
    let prepared = prepare(
        policy,
        &RawRequest {
            method: "GET",
            target: target.as_bytes(),
            version: HttpVersion::Http11,
            headers,
            now: 1_795_600_800,
            client_cert_sha256: None,
        },
    );
    decide(&prepared, None, authn).is_allow()
}

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
        // A typical header set (the core looks up a handful of names).
        let headers = HeaderList::from_pairs([
            ("Host", "fhir.example.org"),
            ("Accept", "application/fhir+json"),
            ("User-Agent", "smart-app/1.0"),
            ("Authorization", "Bearer x"),
        ]);
        let read = "/fhir/Patient/123";
        assert!(run(&policy, read, &headers, &authn));
        g.bench_with_input(BenchmarkId::new("routes", n), &policy, |b, p| {
            b.iter(|| {
                run(
                    black_box(p),
                    black_box(read),
                    black_box(&headers),
                    black_box(&authn),
                )
            })
        });
        let search = "/fhir/Encounter?patient=123&date=ge2026-01-01";
        let fhir_app = Authn::Valid(Claims {
            scopes: vec!["patient/Encounter.rs".into()],
            ..match &patient_app {
                Authn::Valid(c) => c.clone(),
                _ => unreachable!(),
            }
        });
        assert!(run(&policy, search, &headers, &fhir_app));
        g.bench_with_input(BenchmarkId::new("fhir_patient_search", n), &policy, |b, p| {
            b.iter(|| {
                run(
                    black_box(p),
                    black_box(search),
                    black_box(&headers),
                    black_box(&fhir_app),
                )
            })
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
