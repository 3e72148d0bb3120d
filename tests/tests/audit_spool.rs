//! Issue 5 end to end: the durable hash-chained spool behind the real
//! gateway — crash (`kill -9`) mid-load loses no answered request, the chain
//! verifies after recovery, `audit verify` catches tampering, and a full
//! spool fails closed with 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phigate_tests::keys::claims;
use phigate_tests::{eventually, http, Gateway, TestEnv, TEST_POLICY};
use serde_json::Value;

/// Every record in the spool (compressed segments included), in order.
fn spool_records(dir: &std::path::Path) -> Vec<Value> {
    phigate_tests::faults::spool_records(dir)
}

fn audit_verify(dir: &std::path::Path) -> (bool, String) {
    phigate_tests::run_phigate([std::ffi::OsStr::new("audit"), "verify".as_ref(), dir.as_os_str()])
}

fn crash_mid_load_loses_nothing(durability: &str) {
    let mut e = TestEnv::start_audited(TEST_POLICY, "", "rate_limit: { invalid_tokens: 0 }\n", durability);
    let token = e.key.sign(&claims("user/Patient.rs"));
    let weak = e.key.sign(&claims("user/Observation.rs"));
    let answered: Arc<Mutex<HashMap<String, u16>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = e.gw.proxy;
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (answered, stop, token, weak) = (answered.clone(), stop.clone(), token.clone(), weak.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("crash-{t}-{i}");
                    let auth = match i % 3 {
                        0 => format!("Bearer {token}"),
                        1 => format!("Bearer {weak}"),
                        _ => String::new(),
                    };
                    let mut headers = vec![("X-Request-Id", id.as_str())];
                    if !auth.is_empty() {
                        headers.push(("Authorization", auth.as_str()));
                    }
                    // A request cut off by the crash gets no answer: not counted.
                    if let Ok(r) = http::request(proxy, "GET", "/fhir/Patient/1", &headers, b"") {
                        answered.lock().unwrap().insert(id, r.status);
                    }
                }
            })
        })
        .collect();
    // Let load build up, then SIGKILL mid-stream.
    eventually(Duration::from_secs(30), || {
        (answered.lock().unwrap().len() >= 300).then_some(())
    })
    .expect("load is flowing");
    e.gw.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let statuses: HashSet<u16> = answered.values().copied().collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&401) && statuses.contains(&403),
        "{statuses:?}"
    );

    // Restart on the same spool: recovery runs, the chain verifies.
    e.gw.restart();
    let (ok, report) = audit_verify(&e.gw.spool_dir);
    assert!(ok, "chain must verify after a crash:\n{report}");

    let records = spool_records(&e.gw.spool_dir);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in records.iter().filter(|r| r["kind"] == "access") {
        *seen
            .entry(r["request_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let missing: Vec<&String> = answered.keys().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no audit record ({durability}): {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(seen.values().all(|n| *n == 1), "each request recorded once");
    for (id, status) in &answered {
        let r = records.iter().find(|r| r["request_id"] == id.as_str()).unwrap();
        assert_eq!(
            r["status"], *status,
            "{id}: recorded status is the one the client saw"
        );
    }
}

#[test]
fn kill_9_mid_load_loses_no_answered_request_per_request_durability() {
    crash_mid_load_loses_nothing("durability: per_request");
}

#[test]
fn kill_9_mid_load_loses_no_answered_request_interval_durability() {
    crash_mid_load_loses_nothing("durability: interval");
}

#[test]
fn audit_verify_catches_an_edited_record() {
    let e = TestEnv::start(TEST_POLICY);
    let token = e.key.sign(&claims("user/Patient.rs"));
    for _ in 0..5 {
        assert_eq!(e.get("/fhir/Patient/1", &token).status, 200);
    }
    e.gw.wait_audit(5);
    let (ok, report) = audit_verify(&e.gw.spool_dir);
    assert!(ok, "{report}");
    // Copy the spool, change one field of the third record, verify again.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&e.gw.spool_dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("segment-") {
            let text = std::fs::read_to_string(&p).unwrap();
            let edited: Vec<String> = text
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    if i == 2 {
                        l.replace("\"status\":200", "\"status\":403")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            std::fs::write(copy.path().join(&name), edited.join("\n") + "\n").unwrap();
        }
    }
    let (ok, report) = audit_verify(copy.path());
    assert!(!ok, "tampering must be detected:\n{report}");
    assert!(report.contains(":3"), "names the edited line:\n{report}");
}

#[test]
fn a_full_spool_fails_closed_with_503_and_loses_nothing() {
    let e = TestEnv::start_audited(
        TEST_POLICY,
        "",
        "",
        "segment_max_bytes: 65536\n  max_bytes: 65536\n  compress: false",
    );
    let token = e.key.sign(&claims("user/Patient.rs"));
    let mut answered = Vec::new();
    let refused = eventually(Duration::from_secs(60), || {
        let id = format!("full-{}", answered.len());
        let r = e.send("GET", "/fhir/Patient/1", &token, &[("X-Request-Id", &id)], b"");
        if r.status == 503 {
            return Some(r);
        }
        answered.push(id);
        None
    })
    .expect("the spool fills up and requests are refused");
    assert_eq!(refused.json()["error"], "audit_unavailable");
    assert!(e.gw.metrics().value("phigate_audit_fail_closed_total", &[]) >= 1.0);
    assert_eq!(http::get(e.gw.admin, "/readyz").unwrap().status, 503);
    let ids: HashSet<String> = spool_records(&e.gw.spool_dir)
        .iter()
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    assert!(
        answered.iter().all(|id| ids.contains(id)),
        "every served request is in the spool"
    );
}

#[test]
fn configured_sinks_stream_the_spool_and_report_lag_and_health() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let repo = rt.block_on(phigate_tests::audit_repo::AuditRepo::start());
    let sinks = format!(
        "sinks:\n  - {{ type: fhir, name: fhir-repo, base_url: \"{}\" }}\n",
        repo.base_url()
    );
    let e = TestEnv::start_with(TEST_POLICY, "", &sinks);
    let token = e.key.sign(&claims("user/Patient.rs"));
    for i in 0..10 {
        let id = format!("sink-{i}");
        let r = e.send("GET", "/fhir/Patient/1", &token, &[("X-Request-Id", &id)], b"");
        assert_eq!(r.status, 200);
    }
    assert_eq!(http::get(e.gw.proxy, "/fhir/Patient/1").unwrap().status, 401);
    let events = eventually(Duration::from_secs(20), || {
        let a = repo.accepted();
        (a.len() >= 11).then_some(a)
    })
    .expect("every record reaches the FHIR audit repository");
    assert!(events.iter().all(|ev| ev["resourceType"] == "AuditEvent"));
    let m = eventually(Duration::from_secs(10), || {
        let m = e.gw.metrics();
        (m.value("phigate_audit_sink_lag_records", &[("sink", "fhir-repo")]) == 0.0).then_some(m)
    })
    .expect("lag drains to zero");
    assert_eq!(
        m.value("phigate_audit_sink_healthy", &[("sink", "fhir-repo")]),
        1.0
    );
    let ready = http::get(e.gw.admin, "/readyz").unwrap().json();
    assert_eq!(ready["sinks"]["fhir-repo"]["healthy"], true, "{ready}");
    // The cursor file lives inside the spool directory; verify ignores it.
    assert!(e.gw.spool_dir.join("cursors/fhir-repo.json").exists());
    let (ok, report) = audit_verify(&e.gw.spool_dir);
    assert!(ok, "{report}");
}

#[test]
fn audit_export_fhir_prints_a_bundle_of_balp_audit_events() {
    let e = TestEnv::start(TEST_POLICY);
    let token = e.key.sign(&claims("user/Patient.rs"));
    assert_eq!(e.get("/fhir/Patient/7", &token).status, 200);
    assert_eq!(http::get(e.gw.proxy, "/fhir/Patient/7").unwrap().status, 401);
    e.gw.wait_audit(2);
    let out = Command::new(Gateway::binary())
        .args(["audit", "export", "--format", "fhir"])
        .arg(&e.gw.spool_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let events: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|ev| ev["resourceType"] == "AuditEvent"));
    let outcomes: HashSet<String> = events
        .iter()
        .map(|ev| ev["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(outcomes.contains("0") && outcomes.len() == 2, "{outcomes:?}");
}
