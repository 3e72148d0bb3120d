//! Policy hot reload, end to end: the real binary picks up changes to its
//! policy directory, keeps serving the last good policy when a change is
//! invalid, and reloads on SIGHUP without dying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phigate_tests::http::{self, Response};
use phigate_tests::keys::claims;
use phigate_tests::{eventually, DevProcess, Gateway, TestEnv, TEST_POLICY};

/// Upper bound for asynchronous effects (a poll every second, one more for
/// the change to settle); generous because CI machines are slow.
const LIMIT: Duration = Duration::from_secs(30);

const ENCOUNTER_POLICY: &str = r#"
version: 1
routes:
  - name: fhir-encounter
    methods: [GET]
    path: /fhir/Encounter/{id}
    scopes: { any_of: [user/Encounter.rs] }
"#;

const BROKEN_POLICY: &str = "version: 1\nroutes: [ {methods: [GET], path: /x, bogus: 1} ]\n";

const FIXED_POLICY: &str = "version: 1\nroutes: [ {methods: [GET], path: /fhir/ping, public: true} ]\n";

type Env = TestEnv;

fn env() -> Env {
    TestEnv::start(TEST_POLICY)
}

fn get(e: &Env, target: &str, token: &str) -> Response {
    e.get(target, token)
}

/// Write a policy file the way deploy tools do: a temporary (ignored) name,
/// then a rename over the target, so the gateway never sees it half-written.
fn deploy(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn sighup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -HUP {pid} failed");
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metrics()
        .value("phigate_policy_reload_total", &[("result", result)])
}

/// The `policy_version` of the newest audit record for `path` with `decision`.
fn audited_version(gw: &Gateway, path: &str, decision: &str) -> String {
    eventually(Duration::from_secs(10), || {
        gw.audit_records()
            .iter()
            .rev()
            .find(|r| r["path"] == path && r["decision"] == decision)
            .map(|r| r["policy_version"].as_str().unwrap().to_string())
    })
    .unwrap_or_else(|| panic!("no {decision} record for {path}: {}", gw.audit_text()))
}

#[test]
fn policy_changes_are_picked_up_invalid_ones_rejected_and_sighup_reloads() {
    let mut e = env();
    let dir = e.gw.policy_dir();
    let token = e.key.sign(&claims("user/Encounter.rs"));

    // The start-up policy has no Encounter route: default deny.
    let r = get(&e, "/fhir/Encounter/7", &token);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "no_matching_route");
    let v1 = audited_version(&e.gw, "/fhir/Encounter/7", "deny");
    let m = e.gw.metrics();
    assert_eq!(m.value("phigate_policy_info", &[("version", &v1)]), 1.0);
    assert_eq!(m.value("phigate_policy_reload_total", &[("result", "ok")]), 0.0);
    assert_eq!(m.value("phigate_policy_last_reload_success", &[]), 1.0);

    // A new file adding the route is picked up without a restart.
    deploy(&dir, "encounter.yaml", ENCOUNTER_POLICY);
    let allowed = eventually(LIMIT, || {
        (get(&e, "/fhir/Encounter/7", &token).status == 200).then_some(())
    });
    assert!(allowed.is_some(), "new route never allowed:\n{}", e.gw.log());
    let v2 = audited_version(&e.gw, "/fhir/Encounter/7", "allow");
    assert_ne!(v1, v2, "audit records carry the new policy version");
    let m = e.gw.metrics();
    assert!(m.value("phigate_policy_reload_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(m.value("phigate_policy_info", &[("version", &v2)]), 1.0);
    assert_eq!(
        m.value("phigate_policy_info", &[("version", &v1)]),
        0.0,
        "old version no longer reported as loaded"
    );
    assert!(m.value("phigate_policy_last_reload_timestamp_seconds", &[]) > 0.0);
    assert!(e.gw.log().contains("policy reloaded"), "{}", e.gw.log());

    // An invalid file is rejected: the last good policy keeps serving, and
    // the log says exactly where the problem is.
    let errors_before = reloads(&e.gw, "error");
    let broken = dir.join("broken.yaml");
    // Written in place (not renamed): the poller waits for it to settle.
    std::fs::write(&broken, BROKEN_POLICY).unwrap();
    let rejected = eventually(LIMIT, || (reloads(&e.gw, "error") > errors_before).then_some(()));
    assert!(rejected.is_some(), "broken file never rejected:\n{}", e.gw.log());
    let log = e.gw.log();
    let at = format!("{}:2:", broken.display());
    assert!(
        log.lines().any(|l| l.contains(&at) && l.contains("bogus")),
        "diagnostic {at}…bogus not logged:\n{log}"
    );
    assert_eq!(
        e.gw.metrics().value("phigate_policy_last_reload_success", &[]),
        0.0
    );
    let r = get(&e, "/fhir/Encounter/8", &token);
    assert_eq!(r.status, 200, "the previous policy still serves: {}", r.text());
    assert_eq!(audited_version(&e.gw, "/fhir/Encounter/8", "allow"), v2);

    // SIGHUP forces a reload attempt even though nothing changed (polling
    // does not retry unchanged content), and does not kill the process.
    let errors_before = reloads(&e.gw, "error");
    sighup(e.gw.pid());
    let retried = eventually(LIMIT, || (reloads(&e.gw, "error") > errors_before).then_some(()));
    assert!(retried.is_some(), "SIGHUP did not reload:\n{}", e.gw.log());
    assert!(e.gw.is_running(), "SIGHUP killed the gateway:\n{}", e.gw.log());
    assert!(e.gw.log().contains("SIGHUP"), "{}", e.gw.log());

    // Fix the file and SIGHUP: the fix is in force and the gateway is up.
    deploy(&dir, "broken.yaml", FIXED_POLICY);
    sighup(e.gw.pid());
    let fixed = eventually(LIMIT, || {
        (http::get(e.gw.proxy, "/fhir/ping").map(|r| r.status).ok() == Some(200)).then_some(())
    });
    assert!(fixed.is_some(), "fixed policy never served:\n{}", e.gw.log());
    assert!(e.gw.is_running(), "SIGHUP killed the gateway:\n{}", e.gw.log());
    assert_eq!(http::get(e.gw.admin, "/healthz").unwrap().status, 200);
    assert_eq!(get(&e, "/fhir/Encounter/9", &token).status, 200);
    let m = e.gw.metrics();
    assert_eq!(m.value("phigate_policy_last_reload_success", &[]), 1.0);
    let v3 = audited_version(&e.gw, "/fhir/ping", "allow");
    assert_ne!(v3, v2);
    assert_eq!(m.value("phigate_policy_info", &[("version", &v3)]), 1.0);
}

#[test]
fn dev_mode_with_a_policy_directory_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("dev.yaml"),
        "version: 1\nroutes: [ {methods: [GET], path: /fhir/metadata, public: true} ]\n",
    )
    .unwrap();
    let dev = DevProcess::start(dir.path(), &["--policies".as_ref(), policies.as_os_str()], LIMIT);
    let proxy = dev.proxy;
    let log_text = || dev.log();
    assert_eq!(http::get(proxy, "/fhir/Patient/123").unwrap().status, 401);

    deploy(
        &policies,
        "patient.yaml",
        "version: 1\nroutes: [ {methods: [GET], path: \"/fhir/Patient/{id}\", public: true} ]\n",
    );
    let reloaded = eventually(LIMIT, || {
        (http::get(proxy, "/fhir/Patient/123").map(|r| r.status).ok() == Some(200)).then_some(())
    });
    assert!(reloaded.is_some(), "dev mode did not reload:\n{}", log_text());
}
