//! The review over a synthetic spool of known traffic: 20 ordinary
//! clinicians and nurses over two working weeks, and one planted anomaly
//! per rule, each by its own subject. Every planted anomaly must be found,
//! with the planted records as evidence, and nobody else may be flagged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::config::ReviewConfig;
use super::*;
use crate::testing::Running;
use crate::{Durability, SpoolOptions};

const REVIEW_YAML: &str = r#"# the thresholds of the synthetic test
breadth:
  k: 5
off_hours:
  - roles: [clinician]
    timezone: America/New_York
    days: [mon..fri]
    hours: "07:00-19:00"
  - roles: [nurse]
    timezone: America/New_York
    days: [mon..sun]
    hours: "06:00-22:00"
probing:
  window: 5m
  min_denials: 20
break_glass:
  window: 24h
  max_patients: 3
restricted:
  patients:
    vip-1: VIP
    staff-7: staff-as-patient
dormant:
  silent_for: 5d
token:
  window: 10m
  min_addresses: 4
"#;

/// A seeded generator, so the traffic is the same on every run.
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

/// Milliseconds of a New York wall-clock time on day `day` after Monday 2026-11-02.
fn ny(day: i64, hour: i8, minute: i8, second: i8) -> i64 {
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let date = jiff::civil::date(2026, 11, 2)
        .checked_add(jiff::Span::new().days(day))
        .unwrap();
    date.at(hour, minute, second, 0)
        .to_zoned(tz)
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn ts(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&fmt)
        .unwrap()
}

struct Req {
    ms: i64,
    sub: String,
    role: &'static str,
    patient: String,
    ip: String,
    deny: Option<&'static str>,
    break_glass: Option<&'static str>,
    /// Which planted anomaly this record belongs to (`""`: ordinary traffic).
    tag: &'static str,
}

fn record(q: &Req, i: usize) -> AuditRecord {
    let mut claims = BTreeMap::new();
    claims.insert("roles".to_string(), serde_json::json!([q.role]));
    AuditRecord {
        ts: ts(q.ms),
        request_id: format!("req-{i}"),
        decision: if q.deny.is_some() { "deny" } else { "allow" }.into(),
        reason: q.deny.unwrap_or("allowed").into(),
        status: if q.deny.is_some() { 403 } else { 200 },
        method: "GET".into(),
        path: format!("/fhir/r4/Patient/{}", q.patient),
        route: Some("fhir-patient".into()),
        sub: Some(q.sub.clone()),
        client_id: Some("ehr-web".into()),
        iss: Some("https://idp.example.org".into()),
        scopes_granted: vec!["user/Patient.rs".into()],
        scopes_required: vec!["user/Patient.r".into()],
        scope_used: if q.deny.is_some() {
            vec![]
        } else {
            vec!["user/Patient.rs".into()]
        },
        claims: Some(claims),
        upstream_status: q.deny.is_none().then_some(200),
        duration_ms: 12.0,
        remote_addr: Some(format!("{}:{}", q.ip, 40_000 + i % 20_000)),
        policy_version: "sha256:test".into(),
        // Denials carry the path only: the compartment id stands in.
        patient: q.deny.is_none().then(|| q.patient.clone()),
        break_glass: q.break_glass.is_some(),
        justification: q.break_glass.map(str::to_owned),
        ..AuditRecord::default()
    }
}

/// Working days of the two weeks (Monday 2026-11-02 is day 0).
const WORKDAYS: [i64; 8] = [0, 1, 2, 3, 4, 7, 8, 9];

/// An ordinary working day of `sub`: 08:00–18:00, 3–10 patients an hour
/// from a panel of 40, one to three requests each, the odd denial.
fn ordinary_day(
    reqs: &mut Vec<Req>,
    rng: &mut Rng,
    sub: &str,
    role: &'static str,
    u: usize,
    day: i64,
    skip_hour: Option<i8>,
) {
    for hour in 8..18i8 {
        if Some(hour) == skip_hour {
            continue;
        }
        let patients = 3 + rng.below(8);
        for _ in 0..patients {
            let patient = format!("pt-{u:02}-{:02}", rng.below(40));
            for _ in 0..1 + rng.below(3) {
                let ms = ny(day, hour, rng.below(60) as i8, rng.below(60) as i8);
                let ip = if rng.below(10) == 0 {
                    format!("10.2.{u}.11")
                } else {
                    format!("10.1.{u}.10")
                };
                let deny = (rng.below(50) == 0).then_some("insufficient_scope");
                reqs.push(Req {
                    ms,
                    sub: sub.into(),
                    role,
                    patient: patient.clone(),
                    ip,
                    deny,
                    break_glass: None,
                    tag: "",
                });
            }
        }
    }
}

/// Everything planted, by tag: the expected rule and subject.
const PLANTED: [(&str, Rule, &str); 7] = [
    ("breadth", Rule::Breadth, "dr-snoop"),
    ("off_hours", Rule::OffHours, "dr-night"),
    ("probing", Rule::Probing, "dr-probe"),
    ("break_glass", Rule::BreakGlass, "dr-glass"),
    ("restricted", Rule::Restricted, "dr-curious"),
    ("dormant", Rule::Dormant, "dr-away"),
    ("token", Rule::Token, "dr-roam"),
];

fn traffic() -> Vec<Req> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut reqs = Vec::new();
    let role = |u: usize| if u % 3 == 2 { "nurse" } else { "clinician" };
    for u in 1..=20usize {
        for day in WORKDAYS {
            ordinary_day(&mut reqs, &mut rng, &format!("dr-{u:02}"), role(u), u, day, None);
        }
    }
    let planted = |reqs: &mut Vec<Req>,
                   tag: &'static str,
                   sub: &str,
                   role: &'static str,
                   ms: i64,
                   patient: String,
                   ip: &str| {
        reqs.push(Req {
            ms,
            sub: sub.into(),
            role,
            patient,
            ip: ip.into(),
            deny: None,
            break_glass: None,
            tag,
        });
    };
    // breadth: 120 distinct patients in one afternoon hour (instead of the usual few).
    for day in WORKDAYS {
        ordinary_day(
            &mut reqs,
            &mut rng,
            "dr-snoop",
            "clinician",
            21,
            day,
            (day == 2).then_some(14),
        );
    }
    for k in 0..120 {
        planted(
            &mut reqs,
            "breadth",
            "dr-snoop",
            "clinician",
            ny(2, 14, (k / 2) as i8, (k % 2 * 20) as i8),
            format!("pt-any-{k:03}"),
            "10.1.21.10",
        );
    }
    // off_hours: a clinician at 02:30 on a Tuesday night.
    for day in WORKDAYS {
        ordinary_day(&mut reqs, &mut rng, "dr-night", "clinician", 22, day, None);
    }
    for k in 0..3 {
        planted(
            &mut reqs,
            "off_hours",
            "dr-night",
            "clinician",
            ny(1, 2, 30 + k, 0),
            format!("pt-22-{k:02}"),
            "10.1.22.10",
        );
    }
    // probing: 30 denials within three minutes.
    for day in WORKDAYS {
        ordinary_day(
            &mut reqs,
            &mut rng,
            "dr-probe",
            "nurse",
            23,
            day,
            (day == 3).then_some(10),
        );
    }
    for k in 0..30i64 {
        reqs.push(Req {
            ms: ny(3, 10, 0, 0) + k * 6_000,
            sub: "dr-probe".into(),
            role: "nurse",
            patient: format!("pt-other-{k:02}"),
            ip: "10.1.23.10".into(),
            deny: Some(if k % 3 == 0 {
                "outside_patient_compartment"
            } else {
                "insufficient_scope"
            }),
            break_glass: None,
            tag: "probing",
        });
    }
    // break_glass: four patients in two hours, one justification for all.
    for day in WORKDAYS {
        ordinary_day(&mut reqs, &mut rng, "dr-glass", "clinician", 24, day, None);
    }
    for k in 0..4i8 {
        reqs.push(Req {
            ms: ny(4, 13, 0, 0) + i64::from(k) * 30 * 60_000,
            sub: "dr-glass".into(),
            role: "clinician",
            patient: format!("pt-er-{k}"),
            ip: "10.1.24.10".into(),
            deny: None,
            break_glass: Some("patient unresponsive"),
            tag: "break_glass",
        });
    }
    // restricted: one look at the VIP.
    for day in WORKDAYS {
        ordinary_day(&mut reqs, &mut rng, "dr-curious", "clinician", 25, day, None);
    }
    planted(
        &mut reqs,
        "restricted",
        "dr-curious",
        "clinician",
        ny(8, 16, 5, 0),
        "vip-1".into(),
        "10.1.25.10",
    );
    // dormant: works Monday of week one, then not until Tuesday of week two.
    ordinary_day(&mut reqs, &mut rng, "dr-away", "clinician", 26, 0, None);
    planted(
        &mut reqs,
        "dormant",
        "dr-away",
        "clinician",
        ny(0, 19, 0, 0) - 3_600_000,
        "pt-26-00".into(),
        "10.1.26.10",
    );
    planted(
        &mut reqs,
        "dormant",
        "dr-away",
        "clinician",
        ny(8, 7, 30, 0),
        "pt-26-01".into(),
        "10.1.26.10",
    );
    ordinary_day(&mut reqs, &mut rng, "dr-away", "clinician", 26, 8, None);
    // token: five addresses in four minutes.
    for day in WORKDAYS {
        ordinary_day(&mut reqs, &mut rng, "dr-roam", "clinician", 27, day, None);
    }
    for k in 0..5i8 {
        planted(
            &mut reqs,
            "token",
            "dr-roam",
            "clinician",
            ny(1, 12, 30 + k, 0),
            format!("pt-27-{k:02}"),
            &format!("203.0.113.{}", k + 1),
        );
    }
    reqs.sort_by_key(|q| q.ms);
    reqs
}

/// Write the traffic through the real spool (segments rotated and
/// compressed); returns the event ids of each planted anomaly, by tag.
async fn write_spool(dir: &Path) -> BTreeMap<&'static str, Vec<String>> {
    let run = Running::start(
        dir,
        SpoolOptions {
            durability: Durability::None,
            segment_max_bytes: 2 * 1024 * 1024,
            min_free_bytes: 0,
            ..SpoolOptions::default()
        },
    );
    let mut planted: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for (i, q) in traffic().iter().enumerate() {
        let info = run.commit_record(record(q, i)).await;
        if !q.tag.is_empty() {
            planted.entry(q.tag).or_default().push(info.event_id);
        }
    }
    run.stop().await;
    planted
}

fn config() -> ReviewConfig {
    ReviewConfig::parse("review.yaml", REVIEW_YAML).unwrap()
}

fn run_review(dir: &Path, options: &ReviewOptions) -> ReviewReport {
    review(&[dir.to_path_buf()], &config(), options).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_every_planted_anomaly_and_nothing_in_ordinary_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let planted = write_spool(dir.path()).await;
    let report = run_review(dir.path(), &ReviewOptions::default());
    assert!(report.chain.verified, "{:?}", report.chain);
    assert!(report.requests > 10_000, "{}", report.requests);
    let text = report.to_text();

    let found: BTreeSet<(Rule, &str)> = report
        .findings
        .iter()
        .map(|f| (f.rule, f.subject.as_deref().unwrap_or("-")))
        .collect();
    let expected: BTreeSet<(Rule, &str)> = PLANTED.iter().map(|(_, r, s)| (*r, *s)).collect();
    assert_eq!(
        found, expected,
        "ordinary users flagged, or an anomaly missed:\n{text}"
    );

    for (tag, rule, sub) in PLANTED {
        let ids = &planted[tag];
        // Breadth: the hour (the day around it is flagged too).
        let f = report
            .findings
            .iter()
            .find(|f| {
                f.rule == rule
                    && f.subject.as_deref() == Some(sub)
                    && (rule != Rule::Breadth || f.explanation.contains("in the hour"))
            })
            .unwrap();
        assert!(!f.event_ids.is_empty() && f.event_ids.len() <= 20, "{f:?}");
        assert!(f.event_count >= f.event_ids.len() as u64);
        match rule {
            // Evidence is exactly the planted records (capped at 20).
            Rule::Breadth | Rule::Probing | Rule::BreakGlass | Rule::Restricted | Rule::OffHours => {
                let want: Vec<&String> = ids.iter().take(20).collect();
                let got: Vec<&String> = f.event_ids.iter().collect();
                assert_eq!(got, want, "{tag}: {f:?}");
                assert_eq!(f.event_count, ids.len() as u64, "{tag}: {f:?}");
            }
            // The last record before the silence and the first after it.
            Rule::Dormant => assert_eq!(f.event_ids, *ids, "{f:?}"),
            // One record per address, the planted five among them.
            Rule::Token => {
                for id in ids {
                    assert!(f.event_ids.contains(id), "{f:?}");
                }
            }
        }
    }
    let bg = report
        .findings
        .iter()
        .find(|f| f.rule == Rule::BreakGlass)
        .unwrap();
    assert_eq!(bg.severity, Severity::High);
    let probe = report.findings.iter().find(|f| f.rule == Rule::Probing).unwrap();
    assert!(
        probe
            .explanation
            .ends_with("insufficient_scope 20, outside_patient_compartment 10"),
        "{}",
        probe.explanation
    );
    assert!(
        bg.explanation
            .contains("\"patient unresponsive\" repeated verbatim for 4 patients"),
        "{}",
        bg.explanation
    );
    assert_eq!(report.break_glass.len(), 4);
    let breadth: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.rule == Rule::Breadth)
        .collect();
    assert_eq!(breadth.len(), 2, "the hour and its day: {breadth:?}");
    assert!(
        breadth
            .iter()
            .any(|f| f.explanation.starts_with("120 distinct patients in the hour")),
        "{breadth:?}"
    );
    assert!(
        breadth
            .iter()
            .all(|f| f.explanation.contains("peers [clinician]")),
        "{breadth:?}"
    );
    // The text output names every finding and its evidence.
    for f in &report.findings {
        assert!(
            text.contains(&f.explanation) && text.contains(&f.event_ids[0]),
            "{text}"
        );
    }
    // The HTML data: a point per hour of the window, findings, break glass.
    let html = report.to_html_report("t");
    let hours = (report.hourly.last().unwrap().0 - report.hourly[0].0) / rules::HOUR_MS + 1;
    assert_eq!(html.timeline.len() as i64, hours);
    assert_eq!(
        html.timeline.iter().map(|p| p.allowed + p.denied).sum::<u64>(),
        report.requests
    );
    assert_eq!(html.findings.len(), report.findings.len());
    assert_eq!(html.break_glass.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn since_limits_the_window_but_dormancy_looks_back() {
    let dir = tempfile::tempdir().unwrap();
    write_spool(dir.path()).await;
    let since = time::OffsetDateTime::from_unix_timestamp(ny(7, 0, 0, 0) / 1000).unwrap();
    let report = run_review(
        dir.path(),
        &ReviewOptions {
            since: Some(since),
            ..ReviewOptions::default()
        },
    );
    assert!(report.history_records > 0);
    let rules: BTreeSet<Rule> = report.findings.iter().map(|f| f.rule).collect();
    // Week two holds the VIP access and dr-away's return; the rest was week one.
    assert!(
        rules.contains(&Rule::Restricted) && rules.contains(&Rule::Dormant),
        "{rules:?}"
    );
    assert!(
        !rules.contains(&Rule::Probing) && !rules.contains(&Rule::BreakGlass),
        "{rules:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chain_is_refused_unless_allowed_and_then_marked() {
    let dir = tempfile::tempdir().unwrap();
    write_spool(dir.path()).await;
    // Alter one record of the first segment (decompressing it if needed).
    let files = segment_files(&[dir.path().to_path_buf()]).unwrap();
    let first: PathBuf = files[0].clone();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_segment(&first).unwrap(), &mut text).unwrap();
    std::fs::remove_file(&first).unwrap();
    let plain = dir.path().join(crate::segment::segment_file_name(1));
    std::fs::write(
        &plain,
        text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1),
    )
    .unwrap();

    let err = review(&[dir.path().to_path_buf()], &config(), &ReviewOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("chain BROKEN at ") && message.contains("hash mismatch"),
        "{message}"
    );
    let report = run_review(
        dir.path(),
        &ReviewOptions {
            allow_broken: true,
            ..ReviewOptions::default()
        },
    );
    assert!(!report.chain.verified);
    assert!(
        report.to_text().starts_with("chain BROKEN at "),
        "{}",
        report.to_text()
    );
    assert!(report.to_html_report("t").chain_note.unwrap().contains("BROKEN"));
    assert!(!report.findings.is_empty());
}

#[test]
fn config_errors_point_at_file_line_column() {
    let text = "breadth:\n  k: -1\n  colour: red\noff_hours:\n  - roles: [clinician]\n    timezone: Mars/Olympus\n    days: [mon..fry]\n    hours: \"19:00-19:00\"\nprobing:\n  window: soon\n";
    let errors = ReviewConfig::parse("review.yaml", text).unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |prefix: &str, needle: &str| shown.iter().any(|e| e.starts_with(prefix) && e.contains(needle));
    assert!(has("review.yaml:3:", "unknown field `colour`"), "{shown:#?}");
    assert!(has("review.yaml:10:", "not a duration"), "{shown:#?}");
    assert!(has("review.yaml:2:", "k must be a positive number"), "{shown:#?}");
    assert!(
        has("review.yaml:6:", "unknown time zone `Mars/Olympus`"),
        "{shown:#?}"
    );
    assert!(has("review.yaml:7:", "unknown weekday `fry`"), "{shown:#?}");
    assert!(has("review.yaml:8:", "empty range"), "{shown:#?}");
    assert!(ReviewConfig::parse("r.yaml", "# nothing\n").is_ok());
    assert!(
        ReviewConfig::parse("r.yaml", "token: {min_addresses: 1}\n").unwrap_err()[0]
            .to_string()
            .starts_with("r.yaml:1:")
    );
}

#[test]
fn working_hours_follow_the_time_zone_and_wrap_past_midnight() {
    let c = ReviewConfig::parse(
        "r.yaml",
        "off_hours:\n  - {timezone: America/New_York, days: [mon..fri], hours: \"07:00-19:00\"}\n  - {roles: [night], timezone: America/New_York, days: [fri..mon], hours: \"22:00-06:00\"}\n",
    )
    .unwrap();
    let (day, night) = (&c.off_hours[0], &c.off_hours[1]);
    assert!(day.contains(ny(0, 7, 0, 0)) && day.contains(ny(4, 18, 59, 0)));
    assert!(
        !day.contains(ny(0, 6, 59, 0)) && !day.contains(ny(0, 19, 0, 0)) && !day.contains(ny(5, 12, 0, 0))
    );
    // Friday 23:00 and the Saturday 03:00 after it belong to Friday's night shift.
    assert!(night.contains(ny(4, 23, 0, 0)) && night.contains(ny(5, 3, 0, 0)));
    // Tuesday 03:00 belongs to Monday's shift; Wednesday 03:00 to Tuesday's (not a night day).
    assert!(night.contains(ny(1, 3, 0, 0)) && !night.contains(ny(2, 3, 0, 0)));
    assert!(night.applies_to(&["night".into()]) && !night.applies_to(&["day".into()]));
    assert!(day.applies_to(&[]));
}

#[test]
fn helpers_read_addresses_compartments_and_timestamps() {
    assert_eq!(address("10.0.0.1:4321"), "10.0.0.1");
    assert_eq!(address("[2001:db8::1]:443"), "2001:db8::1");
    assert_eq!(address("2001:db8::1"), "2001:db8::1");
    assert_eq!(compartment("/fhir/r4/Patient/123/Observation"), Some("123"));
    assert_eq!(compartment("/fhir/r4/Patient/abc?x=1"), Some("abc"));
    assert_eq!(compartment("/fhir/r4/Patient/_search"), None);
    assert_eq!(compartment("/fhir/r4/Observation"), None);
    for t in [
        "2026-11-30T08:00:00.123Z",
        "1970-01-01T00:00:00.000Z",
        "2024-02-29T23:59:59.999Z",
    ] {
        assert_eq!(
            parse_ts_ms(t),
            Some(t.parse::<jiff::Timestamp>().unwrap().as_millisecond()),
            "{t}"
        );
    }
    assert_eq!(
        parse_ts_ms("2026-11-30T09:00:00+01:00"),
        parse_ts_ms("2026-11-30T08:00:00.000Z")
    );
    assert_eq!(parse_ts_ms("yesterday"), None);
}

#[test]
fn probing_without_a_subject_is_by_client_then_by_client_address() {
    let mut rules = rules::Rules::new(ReviewConfig::default());
    let roles: Vec<String> = Vec::new();
    for i in 0..25i64 {
        let id = format!("e{i}");
        for (client, ip) in [(Some("backend"), "10.0.0.9"), (None, "192.0.2.7")] {
            rules.add(&rules::Ev {
                ms: 1_790_000_000_000 + i * 1000,
                event_id: &id,
                sub: None,
                client,
                allowed: false,
                reason: "no_matching_route",
                patient: None,
                roles: &roles,
                ip: Some(ip),
                break_glass: false,
                justification: None,
            });
        }
    }
    let mut findings = rules.finish();
    findings.sort_by(|a, b| a.client.cmp(&b.client));
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert!(findings
        .iter()
        .all(|f| f.rule == Rule::Probing && f.subject.is_none()));
    assert!(findings[0].client.is_none());
    assert!(
        findings[0]
            .explanation
            .contains("from address 192.0.2.7 without a token"),
        "{}",
        findings[0].explanation
    );
    assert_eq!(findings[1].client.as_deref(), Some("backend"));
    assert_eq!(findings[1].event_count, 25);
    assert_eq!(findings[1].event_ids.len(), 20);
}
