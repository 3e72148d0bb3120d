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

/// Every line of every segment in the spool, parsed.
fn spool_records(dir: &std::path::Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn audit_verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(Gateway::binary())
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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
        "segment_max_bytes: 65536\n  max_bytes: 65536",
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
