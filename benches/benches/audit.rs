//! Audit spool throughput: records/s committed by concurrent committers with
//! `Durability::None` (no fsync: the baseline), `Interval(10ms)` (the
//! default) and `PerRequest` (group commit: one write + fsync per batch).
//! `cargo run -p phigate-benches --bin bench-report` prints each as a ratio
//! of the `none` time measured in the same run.
//!
//! The spool lives under `CARGO_TARGET_TMPDIR` (the target directory's disk,
//! not a tmpfs), so the fsyncs are real.
#![allow(clippy::unwrap_used)] // test/bench code: a panic is the failure report
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phigate_audit::{now_rfc3339, AuditRecord, Durability, Spool, SpoolOptions};

/// Concurrent committers (in-flight requests).
const COMMITTERS: u64 = 64;

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        ts: now_rfc3339(),
        request_id: format!("01930e5c-7f3a-7d2e-9a1b-{i:012}"),
        decision: "allow".into(),
        reason: "allowed".into(),
        status: 200,
        method: "GET".into(),
        path: format!("/fhir/Observation/{i}"),
        route: Some("/fhir/**".into()),
        sub: Some("practitioner-123".into()),
        client_id: Some("ehr-app".into()),
        iss: Some("https://idp.example.org/realms/clinic".into()),
        scopes_granted: vec!["openid".into(), "fhirUser".into(), "user/Observation.rs".into()],
        scopes_required: vec!["user/Observation.r".into()],
        upstream_status: Some(200),
        duration_ms: 3.217,
        remote_addr: Some("10.0.3.17:51234".into()),
        policy_version: "sha256:3f1c0de9a4b2".into(),
        patient: Some("patient-42".into()),
        break_glass: false,
        justification: None,
        shadow_decision: None,
        ..AuditRecord::default()
    }
}

fn bench_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(10);
    for (name, durability) in [
        ("none", Durability::None),
        ("interval_10ms", Durability::Interval(Duration::from_millis(10))),
        ("per_request", Durability::PerRequest),
    ] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let options = SpoolOptions {
            durability,
            max_bytes: u64::MAX,
            shutdown_idle: Duration::ZERO,
            ..SpoolOptions::default()
        };
        let (spool, worker) = Spool::open(dir.path(), options).unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = rt.spawn(worker.run(rx));
        let spool = Arc::new(spool);
        g.bench_function(BenchmarkId::new("commit", name), |b| {
            // One iteration = one record, committed by one of COMMITTERS tasks.
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for t in 0..COMMITTERS {
                        let spool = spool.clone();
                        let n = iters / COMMITTERS + u64::from(t < iters % COMMITTERS);
                        tasks.push(tokio::spawn(async move {
                            for i in 0..n {
                                let slot = loop {
                                    match spool.reserve() {
                                        Ok(s) => break s,
                                        Err(_) => tokio::task::yield_now().await,
                                    }
                                };
                                slot.commit(record(i)).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
        let stats = spool.stats();
        eprintln!(
            "audit/{name}: {} records, {} fsyncs ({:.1} records per fsync)",
            stats.records_written,
            stats.fsyncs,
            stats.records_written as f64 / stats.fsyncs.max(1) as f64
        );
        stop.send(true).unwrap();
        rt.block_on(task).unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);
