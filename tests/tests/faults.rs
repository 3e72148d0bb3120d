//! Issue 11 end to end: faults around the gateway, each asserting what the
//! client saw, what reached the upstream, and that every request that
//! reached the upstream has its records — intent before effect, an honest
//! outcome after — in order, in a spool whose chain verifies.
//!
//! - upstream faults (refused, stalled, closed, garbage, cut mid-body);
//! - clients that leave before or during the response;
//! - SIGTERM and SIGINT with requests in flight;
//! - an audit spool that cannot take more writes (a full `max_bytes`, and a
//!   real full filesystem on a tmpfs when the test may mount one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use phigate_tests::faults::{spool_records, FaultUpstream};
use phigate_tests::keys::claims;
use phigate_tests::{eventually, free_addr, http, Gateway, GatewayOptions, JwksServer, TestKey};
use serde_json::Value;

const POLICY: &str = r#"
version: 1
routes:
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
  - methods: [POST]
    path: /fhir/Observation
    scopes: { any_of: [user/Observation.c] }
"#;

const FAST_TIMEOUTS: &str = "  connect_timeout: 1s\n  read_timeout: 1s\n";

const OBSERVATION: &[u8] = br#"{"resourceType":"Observation","status":"final","code":{"text":"hr"}}"#;

struct Env {
    token: String,
    _jwks: JwksServer,
    gw: Gateway,
}

impl Env {
    /// Upstream timeouts of 1 s; `audit`: extra keys of the `audit:` section.
    fn start(upstream: SocketAddr, audit: &str) -> Env {
        Self::start_with(upstream, FAST_TIMEOUTS, audit, None)
    }

    /// With extra keys of the `upstream:` section, and the audit spool at
    /// `spool` (default: in the temp dir).
    fn start_with(
        upstream: SocketAddr,
        upstream_yaml: &str,
        audit: &str,
        spool: Option<&std::path::Path>,
    ) -> Env {
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(TestKey::jwks(&[&key]));
        let gw = Gateway::start(GatewayOptions {
            audit_yaml: audit,
            upstream_yaml,
            spool_dir: spool.map(std::path::Path::to_path_buf),
            ..GatewayOptions::new(jwks.uri(), upstream, POLICY)
        });
        gw.wait_ready();
        Env {
            token: key.sign(&claims("user/Patient.rs user/Observation.c")),
            _jwks: jwks,
            gw,
        }
    }

    fn token(&self) -> String {
        self.token.clone()
    }

    /// Send one request with `x-request-id: id` and an `x-fault`.
    fn send(&self, method: &str, target: &str, id: &str, fault: &str) -> std::io::Result<http::Response> {
        let auth = format!("Bearer {}", self.token());
        let body: &[u8] = if method == "POST" { OBSERVATION } else { b"" };
        http::request(
            self.gw.proxy,
            method,
            target,
            &[
                ("Authorization", auth.as_str()),
                ("x-request-id", id),
                ("x-fault", fault),
                ("content-type", "application/fhir+json"),
            ],
            body,
        )
    }

    /// The spool's records for `id`, in spool order (waits for `n`).
    fn records(&self, id: &str, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(10), || {
            let r = records_of(&spool_records(&self.gw.spool_dir), id);
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} records for {id}, have {:#?}\nlog:\n{}",
                records_of(&spool_records(&self.gw.spool_dir), id),
                self.gw.log()
            )
        })
    }
}

fn records_of(all: &[Value], id: &str) -> Vec<Value> {
    all.iter().filter(|r| r["request_id"] == id).cloned().collect()
}

fn verify(dir: &std::path::Path) {
    let (ok, out) =
        phigate_tests::run_phigate([std::ffi::OsStr::new("audit"), "verify".as_ref(), dir.as_os_str()]);
    assert!(ok, "audit verify failed:\n{out}");
}

/// An intent and its outcome, linked and in order.
fn assert_intent_then_outcome(recs: &[Value], reason: &str, complete: bool) -> Value {
    assert_eq!(recs.len(), 2, "intent + outcome expected: {recs:#?}");
    let (intent, outcome) = (&recs[0], &recs[1]);
    assert_eq!(intent["phase"], "intent", "{intent:#}");
    assert_eq!(intent["decision"], "allow");
    assert_eq!(intent["reason"], "allowed");
    assert_eq!(outcome["phase"], "outcome", "{outcome:#}");
    assert_eq!(
        outcome["completes"], intent["event_id"],
        "outcome links its intent"
    );
    assert_eq!(outcome["reason"], reason, "{outcome:#}");
    assert_eq!(outcome["complete"], complete, "{outcome:#}");
    assert!(
        outcome["seq"].as_u64().unwrap() > intent["seq"].as_u64().unwrap(),
        "outcome after intent"
    );
    outcome.clone()
}

#[test]
fn upstream_faults_get_precise_statuses_metrics_and_honest_records() {
    let up = FaultUpstream::start();
    let e = Env::start(up.addr, "");

    // (fault, status for the client, reason)
    let cases = [
        ("stall", 504, "upstream_timeout"),
        ("close", 502, "upstream_unreachable"),
        ("garbage", 502, "upstream_invalid_response"),
    ];
    for (fault, status, reason) in cases {
        for method in ["GET", "POST"] {
            let id = format!("{method}-{fault}");
            let target = if method == "GET" {
                "/fhir/Patient/1"
            } else {
                "/fhir/Observation"
            };
            let r = e.send(method, target, &id, fault).unwrap();
            assert_eq!(r.status, status, "{id}: {}", r.text());
            assert_eq!(r.json()["error"], reason, "{id}: the body names the reason");
            // It reached the upstream, body intact.
            let got = up.received_with_id(&id);
            assert_eq!(got.len(), 1, "{id} reached the upstream once");
            if method == "POST" {
                assert_eq!(got[0].body, OBSERVATION);
                let outcome = assert_intent_then_outcome(&e.records(&id, 2), reason, false);
                assert_eq!(outcome["status"], status);
                assert_eq!(outcome["bytes_from_client"], OBSERVATION.len());
            } else {
                let recs = e.records(&id, 1);
                assert_eq!(recs.len(), 1, "{recs:#?}");
                assert_eq!(recs[0]["reason"], reason);
                assert_eq!(recs[0]["status"], status);
                assert!(recs[0].get("phase").is_none());
            }
        }
    }

    // A body cut mid-way: the client got 200 and a truncated body; the
    // record says so (incomplete, with the bytes delivered).
    for method in ["GET", "POST"] {
        let id = format!("{method}-cut");
        let target = if method == "GET" {
            "/fhir/Patient/1"
        } else {
            "/fhir/Observation"
        };
        let r = e.send(method, target, &id, "cut-body").unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.len() < 100_000, "the client saw a short body");
        assert_eq!(up.received_with_id(&id).len(), 1);
        let outcome = if method == "POST" {
            assert_intent_then_outcome(&e.records(&id, 2), "upstream_incomplete", false)
        } else {
            let recs = e.records(&id, 2);
            assert_eq!(recs.len(), 2, "{recs:#?}");
            assert_eq!(recs[0]["reason"], "allowed");
            assert_eq!(recs[0]["status"], 200);
            assert_eq!(recs[1]["phase"], "outcome");
            assert_eq!(recs[1]["completes"], recs[0]["event_id"]);
            assert_eq!(recs[1]["reason"], "upstream_incomplete");
            assert_eq!(recs[1]["complete"], false);
            recs[1].clone()
        };
        assert_eq!(outcome["upstream_status"], 200);
        assert_eq!(outcome["bytes_to_client"], r.body.len() as u64, "{outcome:#}");
    }

    // A healthy write: intent, then a complete outcome with the upstream status.
    let r = e.send("POST", "/fhir/Observation", "POST-ok", "").unwrap();
    assert_eq!(r.status, 200);
    let outcome = assert_intent_then_outcome(&e.records("POST-ok", 2), "allowed", true);
    assert_eq!(outcome["upstream_status"], 200);
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["bytes_to_client"], r.body.len() as u64);
    // A healthy read: one record.
    let r = e.send("GET", "/fhir/Patient/1", "GET-ok", "").unwrap();
    assert_eq!(r.status, 200);
    e.records("GET-ok", 1);

    // Each failure kind is counted, and the request metric carries the reason.
    let m = e.gw.metrics();
    for (kind, n) in [
        ("timeout", 2.0),
        ("unreachable", 2.0),
        ("invalid_response", 2.0),
        ("incomplete", 2.0),
    ] {
        assert_eq!(
            m.value("phigate_upstream_errors_total", &[("kind", kind)]),
            n,
            "kind {kind}"
        );
    }
    assert!(m.value("phigate_requests_total", &[("reason", "upstream_timeout")]) >= 2.0);
    // No request reached the upstream without its records.
    let all = spool_records(&e.gw.spool_dir);
    for got in up.received() {
        let id = got.header("x-request-id").unwrap();
        assert!(
            !records_of(&all, &id).is_empty(),
            "{id} reached the upstream unrecorded"
        );
    }
    verify(&e.gw.spool_dir);
}

#[test]
fn refused_upstream_is_502_unreachable_with_records() {
    // Nothing listens there.
    let e = Env::start(free_addr(), "");
    let r = e.send("GET", "/fhir/Patient/1", "refused-get", "").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unreachable");
    let r = e.send("POST", "/fhir/Observation", "refused-post", "").unwrap();
    assert_eq!(r.status, 502);
    assert_intent_then_outcome(&e.records("refused-post", 2), "upstream_unreachable", false);
    let rec = &e.records("refused-get", 1)[0];
    assert_eq!(rec["reason"], "upstream_unreachable");
    assert!(rec.get("upstream_status").is_none());
    assert_eq!(
        e.gw.metrics()
            .value("phigate_upstream_errors_total", &[("kind", "unreachable")]),
        2.0
    );

    // A dead backend under load does not flood the log: each kind of
    // failure is logged at most once per second (with the number
    // suppressed); the metric and the audit carry every one.
    let started = std::time::Instant::now();
    for i in 0..40 {
        let r = e
            .send("GET", "/fhir/Patient/1", &format!("flood-{i}"), "")
            .unwrap();
        assert_eq!(r.status, 502);
    }
    let elapsed = started.elapsed().as_secs();
    assert_eq!(
        e.gw.metrics()
            .value("phigate_upstream_errors_total", &[("kind", "unreachable")]),
        42.0
    );
    let log = e.gw.log();
    let lines = log.lines().filter(|l| l.contains("upstream failure")).count() as u64;
    assert!(
        lines <= elapsed + 2,
        "{lines} upstream failure lines in {elapsed} s:\n{log}"
    );
    assert!(
        !log.contains("Fail to proxy"),
        "pingora's per-request error lines are replaced"
    );
    verify(&e.gw.spool_dir);
}

/// Send a request and hang up after `after` (reading the head first when
/// `read_head`).
fn send_and_leave(
    e: &Env,
    method: &str,
    target: &str,
    id: &str,
    fault: &str,
    read_head: bool,
    after: Duration,
) {
    let mut s = std::net::TcpStream::connect(e.gw.proxy).unwrap();
    let body: &[u8] = if method == "POST" { OBSERVATION } else { b"" };
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nx-request-id: {id}\r\nx-fault: {fault}\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n",
        e.token(),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    if read_head {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    std::thread::sleep(after);
    drop(s);
}

#[test]
fn clients_that_leave_are_recorded_as_client_aborted() {
    let up = FaultUpstream::start();
    let e = Env::start(up.addr, "");

    // Mid-response: the client read the head, then left.
    send_and_leave(
        &e,
        "GET",
        "/fhir/Patient/1",
        "leave-mid-body",
        "slow-body",
        true,
        Duration::ZERO,
    );
    let recs = e.records("leave-mid-body", 2);
    assert_eq!(recs[0]["reason"], "allowed");
    assert_eq!(recs[1]["phase"], "outcome");
    assert_eq!(recs[1]["completes"], recs[0]["event_id"]);
    assert_eq!(recs[1]["reason"], "client_aborted", "{:#}", recs[1]);
    assert_eq!(recs[1]["complete"], false);
    assert_eq!(recs[1]["upstream_status"], 200);

    // Before the answer: the write reached the upstream, the client left
    // while it worked. phigate notices the close, stops waiting, and the
    // outcome says so (no upstream status: none had arrived).
    send_and_leave(
        &e,
        "POST",
        "/fhir/Observation",
        "leave-before-answer",
        "slow:800",
        false,
        Duration::from_millis(200),
    );
    let recs = e.records("leave-before-answer", 2);
    assert_eq!(up.received_with_id("leave-before-answer").len(), 1);
    let outcome = assert_intent_then_outcome(&recs, "client_aborted", false);
    assert_eq!(outcome["status"], 0, "{outcome:#}");
    assert!(
        e.gw.metrics()
            .value("phigate_requests_total", &[("reason", "client_aborted")])
            >= 2.0
    );
    verify(&e.gw.spool_dir);
}

/// Start `n` slow requests of each method on threads; wait until each
/// reached the upstream. Returns their ids.
fn in_flight(e: &Env, up: &FaultUpstream, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        for method in ["GET", "POST"] {
            let id = format!("{prefix}-{method}-{i}");
            let target = if method == "GET" {
                "/fhir/Patient/1"
            } else {
                "/fhir/Observation"
            };
            let (proxy, token, id2) = (e.gw.proxy, e.token(), id.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                let body: &[u8] = if method == "POST" { OBSERVATION } else { b"" };
                let _ = http::request(
                    proxy,
                    method,
                    target,
                    &[
                        ("Authorization", auth.as_str()),
                        ("x-request-id", id2.as_str()),
                        ("x-fault", "slow:30000"),
                    ],
                    body,
                );
            });
            ids.push(id);
        }
    }
    let all_arrived = eventually(Duration::from_secs(10), || {
        ids.iter()
            .all(|id| !up.received_with_id(id).is_empty())
            .then_some(())
    });
    assert!(all_arrived.is_some(), "requests did not reach the upstream");
    ids
}

fn shutdown_with_requests_in_flight(signal: &str) {
    let up = FaultUpstream::start();
    // The upstream answers after 30 s: longer than shutdown_grace (1 s).
    let mut e = Env::start_with(up.addr, "  read_timeout: 60s\n", "", None);
    let ids = in_flight(&e, &up, signal, 3);
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &e.gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = e.gw.wait_exit(Duration::from_secs(30));
    assert!(exited.is_some(), "phigate did not exit:\n{}", e.gw.log());

    let all = spool_records(&e.gw.spool_dir);
    for id in &ids {
        let recs = records_of(&all, id);
        if id.contains("POST") {
            assert_intent_then_outcome(&recs, "aborted_shutdown", false);
        } else {
            assert_eq!(recs.len(), 1, "{id}: {recs:#?}");
            assert_eq!(recs[0]["reason"], "aborted_shutdown", "{id}: {:#}", recs[0]);
            assert_eq!(recs[0]["status"], 0);
        }
    }
    verify(&e.gw.spool_dir);
    let log = e.gw.log();
    assert!(log.contains("audit spool drained"), "{log}");
}

#[test]
fn sigterm_records_requests_cut_off_at_the_end_of_the_grace_period() {
    shutdown_with_requests_in_flight("TERM");
}

#[test]
fn sigint_records_requests_cut_off_at_once() {
    shutdown_with_requests_in_flight("INT");
}

/// Fill the spool until it refuses: from then on every request is refused
/// with 503 `audit_unavailable`, `/readyz` says why, and no request reached
/// the upstream without its records.
fn fill_until_refused(e: &Env, up: &FaultUpstream) -> usize {
    let mut refused_at = None;
    for i in 0..20_000 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let target = if method == "GET" {
            "/fhir/Patient/1"
        } else {
            "/fhir/Observation"
        };
        let id = format!("fill-{i}");
        let r = e.send(method, target, &id, "").unwrap();
        if r.status == 503 {
            assert_eq!(r.json()["error"], "audit_unavailable");
            refused_at = Some(i);
            break;
        }
        assert_eq!(r.status, 200, "{id}: {}", r.text());
    }
    let refused_at = refused_at.expect("the spool never filled");
    // Everything after is refused too, and never forwarded.
    for i in 0..5 {
        let id = format!("after-full-{i}");
        let r = e.send("POST", "/fhir/Observation", &id, "").unwrap();
        assert_eq!(r.status, 503, "{id}");
        assert!(up.received_with_id(&id).is_empty(), "{id} reached the upstream");
    }
    let ready = http::get(e.gw.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["audit"], false, "{}", ready.text());
    assert!(
        ready.json()["audit_spool"]["not_accepting"].is_string(),
        "{}",
        ready.text()
    );

    // Every request the upstream received is on record, whole.
    let all = spool_records(&e.gw.spool_dir);
    let mut per_id: HashMap<String, Vec<Value>> = HashMap::new();
    for r in &all {
        if let Some(id) = r["request_id"].as_str() {
            per_id.entry(id.to_string()).or_default().push(r.clone());
        }
    }
    for got in up.received() {
        let id = got.header("x-request-id").unwrap();
        let recs = per_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} reached the upstream unrecorded"));
        if got.request_line().starts_with("POST") {
            assert_intent_then_outcome(recs, "allowed", true);
        }
    }
    verify(&e.gw.spool_dir);
    refused_at
}

#[test]
fn a_spool_at_its_bound_refuses_before_forwarding_and_readyz_says_why() {
    let up = FaultUpstream::start();
    let e = Env::start(
        up.addr,
        "max_bytes: 200000\n  segment_max_bytes: 65536\n  compress: false\n",
    );
    let refused_at = fill_until_refused(&e, &up);
    assert!(refused_at > 10);
    assert!(e.gw.metrics().value("phigate_audit_spool_fill_ratio", &[]) > 0.9);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop;
/// `None` when this process may not mount (not root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_filesystem_refuses_before_forwarding_and_at_start() {
    let Some(fs) = Tmpfs::mount("2M") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the max_bytes test covers the refusal path"
        );
        return;
    };
    let up = FaultUpstream::start();
    let spool = fs.path().join("spool");
    {
        // Reserve 1 MiB of the 2: the spool refuses once free space drops below it.
        let e = Env::start_with(
            up.addr,
            FAST_TIMEOUTS,
            "min_free_bytes: 1048576\n  segment_max_bytes: 65536\n  compress: false",
            Some(&spool),
        );
        fill_until_refused(&e, &up);
    }
    // A fresh spool on a filesystem with no space left: phigate starts (to
    // answer health checks and metrics), is not ready, refuses before
    // forwarding, and says why.
    std::fs::remove_dir_all(&spool).unwrap();
    let spool = fs.path().join("spool2");
    let filler = fs.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 65536]).is_ok() {}
    drop(f);
    let before = up.received().len();
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(TestKey::jwks(&[&key]));
    let gw = Gateway::start(GatewayOptions {
        audit_queue_size: 100,
        audit_yaml: "min_free_bytes: 1048576",
        spool_dir: Some(spool.clone()),
        ..GatewayOptions::new(jwks.uri(), up.addr, POLICY)
    });
    let ready = http::get(gw.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    let auth = format!("Bearer {}", key.sign(&claims("user/Patient.rs")));
    let read = || {
        http::request(
            gw.proxy,
            "GET",
            "/fhir/Patient/1",
            &[("Authorization", auth.as_str())],
            b"",
        )
        .unwrap()
    };
    let r = read();
    assert_eq!(r.status, 503);
    assert_eq!(up.received().len(), before, "nothing reached the upstream");
    // Space comes back: the spool accepts again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let back = eventually(Duration::from_secs(10), || {
        (http::get(gw.admin, "/readyz").unwrap().status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "readyz stayed 503 after space came back:\n{}",
        gw.log()
    );
    let r = read();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// No reserve: the filesystem fills under the writer and writes fail for
/// real (ENOSPC). A write whose intent could not be written is never
/// forwarded; a read whose record could not be written is answered 503,
/// never with its data; after a restart (recovery) the chain verifies.
#[test]
fn failing_spool_writes_never_release_unrecorded_effects_or_data() {
    let Some(fs) = Tmpfs::mount("1M") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let up = FaultUpstream::start();
    let spool = fs.path().join("spool");
    let mut e = Env::start_with(
        up.addr,
        FAST_TIMEOUTS,
        "min_free_bytes: 0\n  segment_max_bytes: 65536\n  compress: false\n  durability: per_request",
        Some(&spool),
    );
    let mut statuses = HashMap::new();
    let mut refused = 0;
    for i in 0..5_000 {
        let (method, target) = if i % 2 == 0 {
            ("GET", "/fhir/Patient/1")
        } else {
            ("POST", "/fhir/Observation")
        };
        let id = format!("enospc-{i}");
        let r = e.send(method, target, &id, "").unwrap();
        statuses.insert(id, r.status);
        if r.status == 503 {
            refused += 1;
            if refused >= 10 {
                break;
            }
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!(refused >= 10, "the filesystem never filled");
    let ready = http::get(e.gw.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());

    // Recovery on restart trims a torn tail; then read and verify.
    e.gw.restart_unready();
    let all = spool_records(&spool);
    verify(&spool);
    for got in up.received() {
        let id = got.header("x-request-id").unwrap();
        let recs = records_of(&all, &id);
        if got.request_line().starts_with("POST") {
            assert!(
                recs.first().is_some_and(|r| r["phase"] == "intent"),
                "{id} was forwarded without its intent on record: {recs:#?}"
            );
        } else if recs.is_empty() {
            assert_eq!(statuses[&id], 503, "{id}: data released without a record");
        }
    }
    // Every answer the client got as a success is on record.
    for (id, status) in &statuses {
        if *status == 200 {
            assert!(
                !records_of(&all, id).is_empty(),
                "{id} answered 200 without a record"
            );
        }
    }
}
