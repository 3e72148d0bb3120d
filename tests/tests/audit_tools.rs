//! The audit spool as a working tool, end to end over spools written by the
//! real gateway in dev mode: `phigate policy replay` (and, appended by their
//! authors, `audit review` and `policy suggest`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phigate_tests::{eventually, http, read_jsonl, run_phigate, DevProcess, Gateway};

/// The repository's bundled dev policy directory.
fn dev_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/dev")
}

/// Run `phigate` with `args`: exit code and stdout.
fn phigate(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(Gateway::binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_replay_finds_what_a_stricter_dev_policy_would_deny() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[], Duration::from_secs(20));
    let (proxy, admin) = (dev.proxy, dev.admin);
    let token = |query: &str| {
        let r = http::get(admin, &format!("/dev/token?{query}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.text())
    };
    let alice = token("scope=user/Patient.rs%20user/Observation.rs&sub=alice&roles=nurse,ward-3&amr=pwd,otp");
    let get = |target: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http::request(proxy, "GET", target, &h, b"").unwrap().status
    };
    assert_eq!(get("/fhir/Patient/123", Some(&alice)), 200);
    assert_eq!(get("/fhir/Observation?patient=123", Some(&alice)), 200);
    // Allowed (whatever the demo server makes of the parameter).
    let with_token_param = get(
        "/fhir/Observation?patient=123&access_token=sekrit-token",
        Some(&alice),
    );
    assert!(![401, 403].contains(&with_token_param), "{with_token_param}");
    assert_eq!(get("/fhir/Encounter/9", Some(&alice)), 403);
    assert_eq!(get("/fhir/Patient/123", None), 401);
    assert_eq!(get("/fhir/metadata", None), 200);

    // What replay needs is on record; never the token.
    let audit = dir.path().join("audit.jsonl");
    let records = eventually(Duration::from_secs(10), || {
        let r = read_jsonl(&audit);
        let done = r.iter().any(|r| r["path"] == "/fhir/metadata");
        (done && r.len() >= 6).then_some(r)
    })
    .expect("six records");
    let search = records
        .iter()
        .find(|r| r["path"] == "/fhir/Observation" && r["query"] == "patient=123")
        .expect("the search's record");
    assert_eq!(search["decision"], "allow");
    assert_eq!(search["claims"]["roles"], serde_json::json!(["nurse", "ward-3"]));
    assert_eq!(search["claims"]["amr"], serde_json::json!(["pwd", "otp"]));
    assert!(
        search["claims"].get("acr").is_none(),
        "claims the token lacks are left out"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.contains("\"query\":\"patient=123&access_token=[removed]\""),
        "{text}"
    );
    assert!(!text.contains("sekrit-token"));
    let unauthenticated = records.iter().find(|r| r["reason"] == "missing_token").unwrap();
    assert!(unauthenticated.get("claims").is_none());

    let spool = dir.path().join("spool");
    // The unchanged policy: nothing changes, exit 0.
    let (code, out, err) = phigate(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--policies".as_ref(),
        dev_policies().as_os_str(),
        spool.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chain:    verified"), "{out}");
    assert!(out.contains("6 unchanged, 0 allow→deny, 0 deny→allow"), "{out}");

    // A copy of the dev policy where user/ scopes no longer search
    // Observations (only the backend's system/ scope does).
    let stricter = dir.path().join("stricter");
    std::fs::create_dir(&stricter).unwrap();
    let policy = std::fs::read_to_string(dev_policies().join("fhir.yaml")).unwrap();
    let from = "  - name: observation-search\n    methods: [GET]\n    path: /fhir/Observation\n    fhir: { base: /fhir }";
    assert!(policy.contains(from), "the dev policy changed: update this test");
    let to = "  - name: observation-search\n    methods: [GET]\n    path: /fhir/Observation\n    scopes: { any_of: [system/Observation.rs] }";
    std::fs::write(stricter.join("fhir.yaml"), policy.replace(from, to)).unwrap();
    let (code, out, err) = phigate(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--policies".as_ref(),
        stricter.as_os_str(),
        spool.as_os_str(),
    ]);
    assert_eq!(code, 1, "an allow→deny change fails CI:\n{out}{err}");
    assert!(out.contains("allow → deny (2)"), "{out}");
    assert!(
        out.contains("route observation-search  client dev-client  → insufficient_scope (was allowed)"),
        "{out}"
    );
    let search_event = search["event_id"].as_str().unwrap();
    assert!(out.contains(search_event), "example event ids:\n{out}");

    let (ok, json) = run_phigate([
        "policy".as_ref(),
        "replay".as_ref(),
        "--json".as_ref(),
        "--since".as_ref(),
        "1h".as_ref(),
        "--policies".as_ref(),
        stricter.as_os_str(),
        spool.as_os_str(),
    ]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["allow_to_deny"], 2);
    assert_eq!(v["deny_to_allow"], 0);
    let group = &v["changes"]["allow_to_deny"][0];
    assert_eq!(group["route"], "observation-search");
    assert_eq!(group["client_id"], "dev-client");
    assert_eq!(group["count"], 2);
    assert_eq!(group["examples"].as_array().unwrap().len(), 2);
    assert_eq!(v["chain"]["ok"], true);

    // Errors are exit 2.
    let (code, _, err) = phigate(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--policies".as_ref(),
        dir.path().join("nowhere").as_os_str(),
        spool.as_os_str(),
    ]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn audit_review_finds_the_anomalies_planted_through_the_dev_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[], Duration::from_secs(20));
    let (proxy, admin) = (dev.proxy, dev.admin);
    let token = |query: &str| {
        let r = http::get(admin, &format!("/dev/token?{query}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.text())
    };
    let get = |target: &str, auth: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("Authorization", auth)];
        h.extend_from_slice(extra);
        http::request(proxy, "GET", target, &h, b"").unwrap().status
    };
    let mut sent = 0;
    // Ordinary clinicians.
    for sub in ["alice", "bob", "carol"] {
        let t = token(&format!(
            "scope=user/Patient.rs%20user/Observation.rs&sub={sub}&roles=clinician"
        ));
        for target in [
            "/fhir/Patient/123",
            "/fhir/Observation?patient=123",
            "/fhir/Patient/999",
        ] {
            assert_eq!(get(target, &t, &[]), 200);
            sent += 1;
        }
    }
    // probing: 25 denials in a few seconds.
    let mallory = token("scope=user/Observation.rs&sub=mallory&roles=clinician");
    for _ in 0..25 {
        assert_eq!(get("/fhir/Patient/123", &mallory, &[]), 403);
        sent += 1;
    }
    // break_glass: three patients, one copy-pasted justification.
    let er = token("scope=emergency.phi.read&sub=dr-er&roles=clinician");
    for p in ["123", "999", "example"] {
        let reason = [("X-Break-Glass-Reason", "ED: unconscious patient")];
        assert_eq!(get(&format!("/fhir/Patient/{p}"), &er, &reason), 200);
        sent += 1;
    }
    // restricted: the VIP's record.
    let curious = token("scope=user/Patient.rs&sub=dr-curious&roles=clinician");
    assert_eq!(get("/fhir/Patient/example", &curious, &[]), 200);
    // off_hours: a role whose working hours are never now.
    let night = token("scope=user/Patient.rs&sub=dr-night&roles=day-shift");
    assert_eq!(get("/fhir/Patient/123", &night, &[]), 200);
    // token: one subject from five loopback addresses.
    let roam = token("scope=user/Patient.rs&sub=dr-roam&roles=clinician");
    for a in 2..=6u8 {
        let source = std::net::IpAddr::from([127, 0, 0, a]);
        let h = [("Authorization", roam.as_str())];
        let r = http::request_from(source, proxy, "GET", "/fhir/Patient/123", &h).unwrap();
        assert_eq!(r.status, 200);
    }
    sent += 7;
    let audit = dir.path().join("audit.jsonl");
    let records = eventually(Duration::from_secs(10), || {
        let r = read_jsonl(&audit);
        (r.len() >= sent).then_some(r)
    })
    .expect("every request audited");

    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now_hour = unix.as_secs() / 3600 % 24;
    let away = (now_hour + 12) % 24;
    let config = dir.path().join("review.yaml");
    std::fs::write(
        &config,
        format!(
            "off_hours:\n  - roles: [day-shift]\n    timezone: UTC\n    days: [mon..sun]\n    hours: \"{away:02}:00-{:02}:00\"\nrestricted:\n  patients: {{ example: VIP }}\n",
            away + 1
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let (ok, json) = run_phigate([
        "audit".as_ref(),
        "review".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        spool.as_os_str(),
    ]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["chain"]["verified"], true, "{json}");
    let mut found: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_owned(),
                f["subject"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    found.sort();
    let want: Vec<(String, String)> = [
        ("break_glass", "dr-er"),
        ("off_hours", "dr-night"),
        ("probing", "mallory"),
        ("restricted", "dr-curious"),
        ("restricted", "dr-er"),
        ("token", "dr-roam"),
    ]
    .iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(found, want, "{json}");
    // The evidence is the gateway's own records.
    let probing = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "probing")
        .unwrap();
    assert_eq!(probing["event_count"], 25);
    let mallory_denials: Vec<&str> = records
        .iter()
        .filter(|r| r["sub"] == "mallory")
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    let evidence: Vec<&str> = probing["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(evidence, mallory_denials[..20]);

    // Text and HTML.
    let html = dir.path().join("review.html");
    let (code, out, err) = phigate(&[
        "audit".as_ref(),
        "review".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
        spool.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("chain: verified") && out.contains("findings: 6 (high 3, medium 2, low 1, info 0)"),
        "{out}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("ED: unconscious patient") && page.contains("mallory"));
}
