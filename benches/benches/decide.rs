//! decide() and path canonicalisation.
//!
//! Route matching must not grow with the number of routes: the 10,000-route
//! case is compared with the 10-route baseline measured in the same run
//! (`cargo run -p phigate-benches --bin bench-report` prints the ratios).
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use phigate_benches::policy_with_routes;
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
    });
    let mut g = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000] {
        let policy = policy_with_routes(n);
        let facts = RequestFacts {
            method: "GET",
            path: "/fhir/Patient/123",
            query: None,
        };
        assert!(decide(&policy, &facts, &authn).is_allow());
        g.bench_with_input(BenchmarkId::new("routes", n), &policy, |b, p| {
            b.iter(|| decide(black_box(p), black_box(&facts), black_box(&authn)))
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
