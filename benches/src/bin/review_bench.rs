//! `phigate audit review` over a large spool: records per second and peak
//! memory, to show that the review streams (its peak memory follows the
//! number of distinct subjects, clients and patients, not of records).
//!
//! 1. Generates a spool of `--records` access records (default 10 million)
//!    with the real audit writer (`durability: none`, 64 MiB segments, closed
//!    segments zstd-compressed): 4,000 subjects in three roles with their
//!    own patient panels and workstations, 8 clients, 200,000 patients, 30
//!    days of traffic, ~3 % denials, rare break-glass, plus a few planted
//!    anomalies. Reused if the directory already holds a complete spool.
//! 2. Runs the review (chain verification on its own thread, every rule,
//!    working hours for two roles) in a child process, so that its peak
//!    resident memory (`VmHWM`) is the review's alone, and prints
//!    records/s, wall time, peak memory and the findings per rule.
//!
//! `cargo run --release -p phigate-benches --bin review_bench -- [--records 10000000] [--dir /dev/shm/phigate-review-10000000] [--remove] [--verify-alone]`
//!
//! `--verify-alone` also times `audit verify`'s chain walk on its own
//! afterwards (the review runs it on a second thread and cannot be faster).
//!
//! The default directory is on tmpfs (`/dev/shm`): the spool is read from
//! the page cache either way once written, and 10 million records are
//! ~1 GB compressed.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phigate_audit::review::{review, ReviewConfig, ReviewOptions};
use phigate_audit::{AuditRecord, Durability, Spool, SpoolOptions};

const REVIEW_YAML: &str = r#"off_hours:
  - roles: [clinician]
    timezone: America/New_York
    days: [mon..fri]
    hours: "06:00-22:00"
  - roles: [admin]
    timezone: America/New_York
    days: [mon..fri]
    hours: "07:00-19:00"
restricted:
  patients: { pt-000007: VIP, pt-000042: staff }
"#;

const SUBJECTS: u64 = 4_000;
const PATIENTS: u64 = 200_000;
const CLIENTS: [&str; 8] = [
    "ehr-web",
    "ehr-mobile",
    "nursing-station",
    "radiology-viewer",
    "lab-portal",
    "pharmacy",
    "scheduling",
    "analytics-batch",
];
const TYPES: [&str; 6] = [
    "Observation",
    "Patient",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "DiagnosticReport",
];
/// 2026-10-01T00:00:00Z.
const START_MS: i64 = 1_790_812_800_000;
const SPAN_MS: i64 = 30 * 24 * 3_600_000;

fn main() {
    let mut records: u64 = 10_000_000;
    let mut dir: Option<PathBuf> = None;
    let mut review_only = false;
    let mut remove = false;
    let mut verify_alone = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().and_then(|v| v.parse().ok()).unwrap_or(records),
            "--dir" => dir = args.next().map(PathBuf::from),
            "--review-only" => review_only = true,
            "--remove" => remove = true,
            "--verify-alone" => verify_alone = true,
            other => {
                eprintln!("unknown argument {other}; see the source for usage");
                std::process::exit(2);
            }
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("/dev/shm/phigate-review-{records}")));
    if review_only {
        run_review(&dir, verify_alone);
        return;
    }
    let done = dir.join("COMPLETE");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, records);
        std::fs::write(&done, records.to_string()).expect("marker");
    } else {
        println!("reusing the spool in {}", dir.display());
    }
    let me = std::env::current_exe().expect("own path");
    let status = std::process::Command::new(me)
        .args(["--review-only", "--dir"])
        .arg(&dir)
        .args(verify_alone.then_some("--verify-alone"))
        .status()
        .expect("run the review");
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// A seeded xorshift generator: the same spool on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generate(dir: &Path, records: u64) {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (spool, worker) = Spool::open(
        dir,
        SpoolOptions {
            durability: Durability::None,
            min_free_bytes: 0,
            max_bytes: u64::MAX / 2,
            ..SpoolOptions::default()
        },
    )
    .expect("open spool");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let writer = rt.spawn(worker.run(rx));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    rt.block_on(async {
        for i in 0..records {
            let r = record(&mut rng, i, records);
            let slot = loop {
                match spool.reserve() {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            };
            slot.commit(r).await.expect("commit");
            if i > 0 && i % 1_000_000 == 0 {
                println!("  {i} records, {:.0} s", started.elapsed().as_secs_f64());
            }
        }
    });
    // Let the background compression catch up before stopping the writer
    // (stopping pauses it): only the current segment stays plain.
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let files = phigate_audit::segment::list_segment_files(dir).expect("list");
        if files.iter().filter(|f| !f.compressed).count() <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = stop.send(true);
    let _ = rt.block_on(writer);
    spool.close(Duration::from_secs(600));
    let bytes: u64 = phigate_audit::segment::list_segment_files(dir)
        .expect("list")
        .iter()
        .map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "generated {records} records in {:.0} s: {:.1} MB on disk",
        started.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
}

/// One access record of the mix; `i` sets the time (spread evenly over 30 days).
fn record(rng: &mut Rng, i: u64, total: u64) -> AuditRecord {
    let ms = START_MS + (i as i128 * SPAN_MS as i128 / total.max(1) as i128) as i64;
    // A few heavy users, many light ones.
    let u = if rng.below(4) == 0 {
        rng.below(200)
    } else {
        rng.below(SUBJECTS)
    };
    let role = match u % 10 {
        0 => "admin",
        1 | 2 => "nurse",
        _ => "clinician",
    };
    let client = CLIENTS[((u + rng.below(2)) % CLIENTS.len() as u64) as usize];
    // Each subject's panel: 60 patients near its own slice of the population.
    let mut p = (u * 50 + rng.below(60)) % PATIENTS;
    // Planted: one subject sweeps the population for an hour on day 12
    // (one request in 20 of that hour).
    let mut u = u;
    if (ms - START_MS) / 3_600_000 == 12 * 24 + 15 && rng.below(20) == 0 {
        u = 17;
        p = rng.below(PATIENTS);
    }
    let role = if u == 17 { "clinician" } else { role };
    let patient = format!("pt-{p:06}");
    let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
    let deny = rng.below(33) == 0;
    let break_glass = !deny && rng.below(50_000) == 0;
    let read = rng.below(10) < 8;
    let (method, action) = if read { ("GET", "rs") } else { ("POST", "cu") };
    let path = if ty == "Patient" {
        format!("/fhir/r4/Patient/{patient}")
    } else if read {
        format!("/fhir/r4/{ty}/{:x}", rng.next() % (1 << 40))
    } else {
        format!("/fhir/r4/{ty}")
    };
    let ip = if rng.below(20) == 0 {
        format!("10.9.{}.{}", u % 256, u / 256)
    } else {
        format!("10.1.{}.{}", u % 256, u / 256)
    };
    let mut claims = std::collections::BTreeMap::new();
    claims.insert("roles".to_string(), serde_json::json!([role]));
    let reason = if deny {
        [
            "insufficient_scope",
            "outside_patient_compartment",
            "no_matching_route",
        ][rng.below(3) as usize]
    } else {
        "allowed"
    };
    AuditRecord {
        ts: ts(ms),
        request_id: format!("{:032x}", (u128::from(rng.next()) << 64) | u128::from(rng.next())),
        decision: if deny { "deny" } else { "allow" }.into(),
        reason: reason.into(),
        status: if deny {
            403
        } else if read {
            200
        } else {
            201
        },
        method: method.into(),
        path,
        route: Some(format!("fhir-{}", ty.to_lowercase())),
        sub: Some(format!("Practitioner/pr-{u:05}")),
        client_id: Some(client.into()),
        iss: Some("https://idp.example.org/realms/clinic".into()),
        scopes_granted: vec![
            "openid".into(),
            "fhirUser".into(),
            format!("user/{ty}.{action}"),
            "user/Patient.rs".into(),
        ],
        scopes_required: vec![format!("user/{ty}.{}", &action[..1])],
        scope_used: if deny {
            vec![]
        } else {
            vec![format!("user/{ty}.{action}")]
        },
        claims: Some(claims),
        upstream_status: (!deny).then_some(if read { 200 } else { 201 }),
        duration_ms: rng.below(250_000) as f64 / 1000.0,
        remote_addr: Some(format!("{ip}:{}", 30_000 + rng.below(30_000))),
        policy_version: "sha256:3f1c0de9a4b2".into(),
        patient: (!deny).then_some(patient),
        break_glass,
        justification: break_glass.then(|| "emergency department, patient unresponsive".to_string()),
        user_agent: Some("ehr-web/5.2.1 (fetch)".into()),
        ..AuditRecord::default()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `ms`.
fn ts(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn run_review(dir: &Path, verify_alone: bool) {
    let config = ReviewConfig::parse("review_bench.yaml", REVIEW_YAML).expect("bench config");
    let started = Instant::now();
    let report = review(&[dir.to_path_buf()], &config, &ReviewOptions::default()).expect("review");
    let secs = started.elapsed().as_secs_f64();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "review: {} requests ({} chain records verified) in {secs:.1} s = {:.0} records/s; peak RSS (VmHWM) {hwm}",
        report.requests,
        report.chain.records,
        report.requests as f64 / secs
    );
    println!(
        "  {} subjects, {} clients; findings {} by rule {:?}",
        report.subjects,
        report.clients,
        report.findings.len(),
        report.findings_by_rule
    );
    for f in report
        .findings
        .iter()
        .filter(|f| f.rule.as_str() == "breadth")
        .take(3)
    {
        println!("  breadth: {:?} {}", f.subject, f.explanation);
    }
    if !verify_alone {
        return;
    }
    // The chain walk alone, for comparison (after VmHWM was read).
    let started = Instant::now();
    let verified = phigate_audit::verify::verify(&[dir.to_path_buf()], &[]).expect("verify");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  chain verification alone: {} records in {secs:.1} s = {:.0} records/s",
        verified.records,
        verified.records as f64 / secs
    );
}
