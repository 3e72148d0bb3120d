//! The audit spool as a working tool, end to end over a spool written by the
//! real gateway in dev mode (`phigate dev`, its token issuer and demo FHIR
//! upstream): allowed, denied and break-glass requests, then
//!
//! - `phigate audit report --html` rendered by a real browser: Debian's
//!   headless Chromium takes a screenshot, the page logs nothing to the
//!   console (a planted `<script>` in a break-glass justification stays
//!   text), and the requests-over-time chart has one point per bucket per
//!   series;
//! - `phigate policy suggest --roles`: the unused grant is named, the
//!   suggested grant and the role proposal match what was done.
//!
//! Chromium is installed by `scripts/bootstrap.sh` (apt package `chromium`).
//! When it is missing the browser test is skipped with a message, or fails
//! under `PHIGATE_REQUIRE_REAL=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phigate_tests::nats::find_binary;
use phigate_tests::realworld::real_components_required;
use phigate_tests::{eventually, http, read_jsonl, run_phigate, DevProcess};
use serde_json::Value;

/// A justification that would log to the console (and fetch an image) if
/// the report let audit data through as markup.
const HOSTILE_JUSTIFICATION: &str = r#"<script>console.error("phigate-xss")</script><img src=x onerror="console.error('phigate-xss')"> unresponsive patient, ED bay 3"#;

/// The spool of a dev gateway after a known mix of traffic; the dev process
/// has been stopped, so the spool is complete.
struct DevSpool {
    dir: tempfile::TempDir,
    /// The access records (the plain JSONL copy), in order.
    records: Vec<Value>,
}

impl DevSpool {
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The plain segment files of the spool.
    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.spool())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
            .collect();
        v.sort();
        v
    }

    /// Every line of the spool, parsed.
    fn spool_lines(&self) -> Vec<Value> {
        self.segments().iter().flat_map(|p| read_jsonl(p)).collect()
    }
}

/// Stands for the spool directory in [`args`].
const SPOOL: &str = "{spool}";

/// Command-line arguments, `SPOOL` replaced by the spool directory.
fn args(list: &[&str], spool: &DevSpool) -> Vec<std::ffi::OsString> {
    list.iter()
        .map(|a| {
            if *a == SPOOL {
                spool.spool().into_os_string()
            } else {
                (*a).into()
            }
        })
        .collect()
}

fn token(admin: std::net::SocketAddr, query: &str) -> String {
    let r = http::get(admin, &format!("/dev/token?{query}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Traffic: two clinicians of `ehr-web` (one over-granted with
/// `user/Condition.rs` they never use), a lab client that creates
/// Observations, one break-glass read, and denials (no token, wrong scope).
fn dev_spool() -> DevSpool {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(dir.path(), &[], Duration::from_secs(30));
    let (proxy, admin) = (dev.proxy, dev.admin);
    let send = |method: &str, target: &str, token: Option<&str>, extra: &[(&str, &str)], body: &[u8]| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        h.extend_from_slice(extra);
        http::request(proxy, method, target, &h, body).unwrap().status
    };
    let clinician =
        "scope=openid%20user/Patient.rs%20user/Observation.rs%20user/Condition.rs&client_id=ehr-web";
    let alice = token(admin, &format!("{clinician}&sub=alice"));
    let bob = token(admin, &format!("{clinician}&sub=bob"));
    let lab = token(
        admin,
        "scope=user/Observation.c%20user/Patient.rs&client_id=lab-feed&sub=lab-robot",
    );
    let er = token(admin, "scope=emergency.phi.read&client_id=ed-console&sub=dr-er");
    let mut expected_allowed = 0;
    let mut expected_denied = 0;
    for who in [&alice, &bob] {
        for target in ["/fhir/Patient/123", "/fhir/Observation?patient=123"] {
            assert_eq!(send("GET", target, Some(who.as_str()), &[], b""), 200);
            expected_allowed += 1;
        }
    }
    assert_eq!(
        send("GET", "/fhir/Patient/123", Some(alice.as_str()), &[], b""),
        200
    );
    expected_allowed += 1;
    let obs = br#"{"resourceType":"Observation","status":"final"}"#;
    assert_eq!(
        send("POST", "/fhir/Observation", Some(lab.as_str()), &[], obs),
        201
    );
    expected_allowed += 1;
    // Denied: a clinician may not create, nobody without a token.
    assert_eq!(
        send("POST", "/fhir/Observation", Some(alice.as_str()), &[], obs),
        403
    );
    assert_eq!(send("GET", "/fhir/Patient/123", None, &[], b""), 401);
    assert_eq!(send("GET", "/fhir/Patient/124", None, &[], b""), 401);
    expected_denied += 3;
    // Break-glass: a read the token's scopes alone would not allow.
    assert_eq!(
        send(
            "GET",
            "/fhir/Patient/123",
            Some(er.as_str()),
            &[("X-Break-Glass-Reason", HOSTILE_JUSTIFICATION)],
            b""
        ),
        200
    );
    expected_allowed += 1;
    // The create has two records (intent, outcome).
    let want = expected_allowed + expected_denied + 1;
    let jsonl = dir.path().join("audit.jsonl");
    let records = eventually(Duration::from_secs(10), || {
        let r = read_jsonl(&jsonl);
        (r.len() >= want).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} audit records, want {want}:\n{}",
            read_jsonl(&jsonl).len(),
            dev.log()
        )
    });
    assert_eq!(records.len(), want);
    drop(dev);
    let firsts = || records.iter().filter(|r| r["phase"] != "outcome");
    assert_eq!(
        firsts().filter(|r| r["decision"] == "allow").count(),
        expected_allowed
    );
    assert_eq!(
        firsts().filter(|r| r["decision"] == "deny").count(),
        expected_denied
    );
    let bg: Vec<&Value> = records.iter().filter(|r| r["break_glass"] == true).collect();
    assert_eq!(bg.len(), 1, "{records:?}");
    assert_eq!(bg[0]["justification"], HOSTILE_JUSTIFICATION);
    DevSpool { dir, records }
}

/// Minutes since the Unix epoch of an RFC 3339 UTC time (`…Z`).
fn epoch_minute(ts: &str) -> i64 {
    let n = |a: usize, b: usize| ts[a..b].parse::<i64>().unwrap();
    assert!(ts.ends_with('Z'), "{ts}");
    let (y, m, d, hh, mm) = (n(0, 4), n(5, 7), n(8, 10), n(11, 13), n(14, 16));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 24 + hh) * 60 + mm
}

/// A command with a deadline: killed (and the test failed) if it runs longer.
fn run_with_deadline(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Drain both pipes on threads so a chatty browser cannot block on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Headless Chromium with a throw-away profile, no network, console
/// messages logged to stderr.
struct Browser {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    fn find(test: &str) -> Option<Browser> {
        let Some(binary) = find_binary("chromium", &["/usr/bin/chromium", "/usr/lib/chromium/chromium"])
        else {
            if real_components_required() {
                panic!("{test}: `chromium` is not installed (PHIGATE_REQUIRE_REAL=1: a missing real component fails instead of skipping)");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: `chromium` is not installed; run scripts/bootstrap.sh (set PHIGATE_REQUIRE_REAL=1 to make this a failure)"
            );
            return None;
        };
        Some(Browser {
            binary,
            profile: tempfile::tempdir().unwrap(),
        })
    }

    /// Run headless Chromium on `page` with `args`; its stdout and stderr.
    fn run(&self, page: &Path, args: &[String]) -> (String, String) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--headless")
            // Tests run as root in containers, where the sandbox cannot start.
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg("--no-default-browser-check")
            .arg("--disable-extensions")
            .arg("--disable-background-networking")
            .arg("--disable-component-update")
            .arg("--disable-sync")
            .arg("--enable-logging=stderr")
            .arg("--v=0")
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .arg(format!("file://{}", page.display()));
        let out = run_with_deadline(&mut cmd, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "chromium failed ({}):\n{stderr}",
            out.status
        );
        (stdout, stderr)
    }

    /// The console messages and page errors Chromium logged while loading `page`.
    fn console_messages(&self, page: &Path) -> Vec<String> {
        let (_, stderr) = self.run(page, &["--dump-dom".to_string()]);
        stderr
            .lines()
            .filter(|l| {
                l.contains("CONSOLE")
                    || l.contains("Uncaught")
                    || l.contains("Content Security Policy")
                    || l.contains("Refused to")
            })
            .map(str::to_string)
            .collect()
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    (be(16), be(20))
}

fn count_attr(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

/// `data-count="N"` of every element whose tag starts with `prefix`.
fn data_counts(dom: &str, prefix: &str) -> Vec<u64> {
    dom.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &dom[i..];
            let end = rest.find('>').unwrap();
            let tag = &rest[..end];
            let at = tag.find("data-count=\"").unwrap() + "data-count=\"".len();
            let len = tag[at..].find('"').unwrap();
            tag[at..at + len].parse().unwrap()
        })
        .collect()
}

#[test]
fn html_report_of_a_dev_gateway_spool_renders_in_headless_chromium() {
    let test = "html_report_of_a_dev_gateway_spool_renders_in_headless_chromium";
    let Some(browser) = Browser::find(test) else {
        return;
    };
    let spool = dev_spool();
    let work = spool.dir.path();
    let html = work.join("report.html");
    let (ok, out) = run_phigate(args(
        &["audit", "report", SPOOL, "--html", &html.to_string_lossy()],
        &spool,
    ));
    assert!(ok, "{out}");
    assert!(out.contains("chain verified"), "{out}");
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains("<script"), "audit data stays text");
    assert!(
        text.contains("&lt;script&gt;console.error("),
        "justification shown, escaped"
    );

    // The control: the console check does see a page's console errors.
    let control = work.join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><html><body><script>console.error('planted-control')</script></body></html>",
    )
    .unwrap();
    let seen = browser.console_messages(&control);
    assert!(
        seen.iter().any(|l| l.contains("planted-control")),
        "the console check must see a planted console.error; saw {seen:?}"
    );

    // 1. A screenshot of the full report, kept in the test's temp dir.
    let png = work.join("report.png");
    browser.run(
        &html,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2000".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!(png_size(&bytes), (1280, 2000));
    assert!(
        bytes.len() > 20_000,
        "a rendered page, not a blank one: {} bytes",
        bytes.len()
    );

    // 2. No console messages or errors: nothing ran, nothing was blocked.
    let messages = browser.console_messages(&html);
    assert!(
        messages.is_empty(),
        "console output from the report: {messages:?}"
    );

    // 3. The DOM after load: the charts' points and the escaped justification.
    let (dom, _) = browser.run(&html, &["--dump-dom".to_string()]);
    assert!(dom.contains("Hash chain verified"), "{dom}");
    assert!(!dom.contains("<script"), "no script element reached the DOM");
    assert!(!dom.contains("<img"), "no img element reached the DOM");
    assert!(dom.contains("&lt;script&gt;console.error(\"phigate-xss\")&lt;/script&gt;"));

    // Requests (first records) span these minutes: one 1-minute bucket each,
    // empty ones included; two series (allowed, denied).
    let firsts: Vec<&Value> = spool.records.iter().filter(|r| r["phase"] != "outcome").collect();
    let minutes: Vec<i64> = firsts
        .iter()
        .map(|r| epoch_minute(r["ts"].as_str().unwrap()))
        .collect();
    let buckets = (minutes.iter().max().unwrap() - minutes.iter().min().unwrap() + 1) as usize;
    let allowed = count_attr(&dom, "<circle class=\"pt allowed\"");
    let denied = count_attr(&dom, "<circle class=\"pt denied\"");
    assert_eq!(
        (allowed, denied),
        (buckets, buckets),
        "one point per bucket per series"
    );
    assert_eq!(count_attr(&dom, "<circle class=\"pt "), buckets * 2);
    let sum = |v: Vec<u64>| v.into_iter().sum::<u64>() as usize;
    assert_eq!(
        sum(data_counts(&dom, "<circle class=\"pt allowed\"")),
        firsts.iter().filter(|r| r["decision"] == "allow").count()
    );
    assert_eq!(
        sum(data_counts(&dom, "<circle class=\"pt denied\"")),
        firsts.iter().filter(|r| r["decision"] == "deny").count()
    );
    // Denials by reason: missing_token (2) and insufficient_scope (1).
    assert_eq!(count_attr(&dom, "<rect class=\"bar\""), 2);
    assert!(
        dom.contains("data-reason=\"missing_token\" data-count=\"2\""),
        "{dom}"
    );
    assert!(
        dom.contains("data-reason=\"insufficient_scope\" data-count=\"1\""),
        "{dom}"
    );
    // The break-glass row links to its evidence entry: the record's event id.
    let bg = spool
        .spool_lines()
        .into_iter()
        .find(|r| r["break_glass"] == true)
        .unwrap();
    let ev = bg["event_id"].as_str().unwrap();
    assert!(dom.contains(&format!("href=\"#ev-{ev}\"")), "{dom}");
    assert_eq!(count_attr(&dom, &format!("<li id=\"ev-{ev}\"")), 1, "{dom}");
    // The over-granted clinicians' client shows its unused scope.
    assert!(dom.contains("<code>user/Condition.rs</code>"), "{dom}");
}

#[test]
fn policy_suggest_over_a_dev_gateway_spool_names_unused_scopes_and_proposes_roles() {
    let spool = dev_spool();
    let (ok, out) = run_phigate(args(&["policy", "suggest", SPOOL, "--roles"], &spool));
    assert!(ok, "{out}");
    assert!(out.contains("less than 1 day"), "{out}");
    assert!(out.contains("will look unused"), "{out}");
    assert!(out.contains("UNUSED:    user/Condition.rs"), "{out}");
    assert!(
        out.contains("ehr-web:\n  scopes: [openid, user/Observation.rs, user/Patient.rs]\n"),
        "{out}"
    );
    assert!(
        out.contains("lab-feed:\n  scopes: [user/Observation.c]\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "# covers 2 subject(s): alice, bob\n  proposed-role-1: [user/Observation.rs, user/Patient.rs]"
        ),
        "{out}"
    );

    let (ok, out) = run_phigate(args(&["policy", "suggest", SPOOL, "--json"], &spool));
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["chain_verified"], true);
    let ehr = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "ehr-web")
        .unwrap();
    assert_eq!(ehr["unused"], serde_json::json!(["user/Condition.rs"]));
    assert_eq!(ehr["allowed_requests"], 5);
    assert_eq!(ehr["denied_requests"], 1);

    // A tampered spool is refused.
    let seg = spool.segments().into_iter().next().unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("\"alice\"", "\"mallory\"", 1)).unwrap();
    let (ok, out) = run_phigate(args(&["policy", "suggest", SPOOL], &spool));
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN"), "{out}");
}
