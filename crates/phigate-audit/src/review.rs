//! `phigate audit review`: anomalies in the audit spool, each with the
//! event ids that prove it.
//!
//! The chain is verified first ([`crate::verify::verify`], on its own thread
//! while the records are read); a broken chain is refused unless the caller
//! allows it, and the report then says where it broke. The records are read
//! as a stream ([`crate::verify::segment_files`], [`crate::segment::open_segment`]:
//! plain or zstd segments) and fed once, in spool order, to the detectors of
//! [`rules`], which keep state per subject, client, client address or
//! watched patient only: memory grows with the distinct principals and
//! patients of the window, never with the number of records.
//!
//! Rules (thresholds in [`config::ReviewConfig`], defaults in the README):
//! `breadth`, `off_hours`, `probing`, `break_glass`, `restricted`,
//! `dormant`, `token`. A request counts once: the `outcome` record that
//! completes an `intent` is skipped.

pub mod config;
mod rules;
pub mod stats;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::checkpoint::VerifyKey;
use crate::html::{BreakGlassRow, FindingRow, HtmlReport, LeastPrivilegeRow, TimelinePoint};
use crate::segment::open_segment;
use crate::suggest::UsageAccumulator;
use crate::verify::{segment_files, verify, VerifyReport};
use crate::{AuditError, AuditRecord, Phase};

pub use config::ReviewConfig;
use rules::{Ev, Rules, HOUR_MS};

/// Which rule found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Breadth,
    OffHours,
    Probing,
    BreakGlass,
    Restricted,
    Dormant,
    Token,
}

impl Rule {
    /// The rule id, as in the JSON output and `review.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Breadth => "breadth",
            Rule::OffHours => "off_hours",
            Rule::Probing => "probing",
            Rule::BreakGlass => "break_glass",
            Rule::Restricted => "restricted",
            Rule::Dormant => "dormant",
            Rule::Token => "token",
        }
    }
}

/// How urgently a finding should be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One anomaly, with the records that prove it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: Rule,
    pub severity: Severity,
    pub subject: Option<String>,
    pub client: Option<String>,
    /// When it happened (the first record, or the start of the hour/day).
    pub at: Option<String>,
    /// One line.
    pub explanation: String,
    /// The `event_id`s of the records that prove it (at most
    /// `evidence_cap`; check them with `phigate audit verify`).
    pub event_ids: Vec<String>,
    /// How many records prove it (`event_ids` may list fewer).
    pub event_count: u64,
}

/// The state of the hash chain the review ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChainStatus {
    pub verified: bool,
    /// Lines the verifier checked.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Where and why the chain broke (`file:line (seq N): message`).
    pub broken_at: Option<String>,
    /// Caveats of an intact chain (it starts mid-chain; crash recoveries).
    pub notes: Vec<String>,
}

/// The review. Its JSON form is a stable structure (fields are only added).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReviewReport {
    pub chain: ChainStatus,
    /// Only records at or after this instant were reviewed (RFC 3339).
    pub since: Option<String>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Requests reviewed (an `outcome` record completing an `intent` is not
    /// counted again).
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Records before `since`, read only to know when principals were last seen.
    pub history_records: u64,
    /// Lines that could not be read as records, or without a valid `ts`.
    pub unreadable_lines: u64,
    pub subjects: u64,
    pub clients: u64,
    /// Most severe first.
    pub findings: Vec<Finding>,
    pub findings_by_severity: BTreeMap<String, u64>,
    pub findings_by_rule: BTreeMap<String, u64>,
    pub denials_by_reason: BTreeMap<String, u64>,
    /// The 10 busiest clients and subjects (requests).
    pub top_clients: Vec<(String, u64)>,
    pub top_subjects: Vec<(String, u64)>,
    /// Every break-glass request (at most [`MAX_BREAK_GLASS_ROWS`]).
    pub break_glass: Vec<BreakGlassRow>,
    /// Requests per hour (start, allowed, denied), for the HTML chart.
    #[serde(skip)]
    pub hourly: Vec<(i64, u64, u64)>,
    /// Granted vs used scopes per client (with [`ReviewOptions::least_privilege`]).
    #[serde(skip)]
    pub least_privilege: Vec<LeastPrivilegeRow>,
}

/// Break-glass rows kept for the report; the finding counts every one.
pub const MAX_BREAK_GLASS_ROWS: usize = 1000;

/// How to review.
#[derive(Debug, Default)]
pub struct ReviewOptions {
    /// Only records at or after this instant are reviewed (earlier ones
    /// only tell the dormancy rule when a principal was last seen).
    pub since: Option<OffsetDateTime>,
    /// Review a broken chain anyway (the report says where it broke).
    pub allow_broken: bool,
    /// Keys that check checkpoint signatures.
    pub checkpoint_keys: Vec<VerifyKey>,
    /// Also compute granted vs used scopes per client (the HTML report's table).
    pub least_privilege: bool,
}

/// Why a review could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The chain is broken and the caller did not allow it.
    #[error("chain BROKEN at {0}; refusing to review it (--allow-broken reviews it anyway, marked)")]
    ChainBroken(String),
}

/// Verify the chain of `paths` and review their records.
pub fn review(
    paths: &[PathBuf],
    config: &ReviewConfig,
    options: &ReviewOptions,
) -> Result<ReviewReport, ReviewError> {
    let files = segment_files(paths)?;
    let (verified, reviewed) = std::thread::scope(|s| {
        let verifier = s.spawn(|| verify(paths, &options.checkpoint_keys));
        let reviewed = scan(&files, config, options);
        let verified = verifier.join().unwrap_or_else(|_| {
            Err(AuditError::Corrupt {
                path: PathBuf::new(),
                message: "the chain verifier panicked".into(),
            })
        });
        (verified, reviewed)
    });
    let chain = chain_status(&verified?);
    if let Some(at) = &chain.broken_at {
        if !options.allow_broken {
            return Err(ReviewError::ChainBroken(at.clone()));
        }
    }
    let mut report = reviewed?;
    report.chain = chain;
    Ok(report)
}

fn chain_status(v: &VerifyReport) -> ChainStatus {
    let mut notes = Vec::new();
    if v.starts_mid_chain {
        notes.push(format!(
            "the chain starts at seq {} (earlier segments not given or removed by retention)",
            v.first_seq.unwrap_or_default()
        ));
    }
    for g in &v.recoveries {
        notes.push(format!(
            "crash recovery at {} cut bytes {}..{} of {}",
            g.at, g.truncated_from, g.truncated_to, g.segment
        ));
    }
    ChainStatus {
        verified: v.ok,
        records: v.records,
        first_seq: v.first_seq,
        last_seq: v.last_seq,
        broken_at: v.problem.as_ref().map(ToString::to_string),
        notes,
    }
}

/// The fields read before deciding whether a line is an access record.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
}

fn scan(
    files: &[PathBuf],
    config: &ReviewConfig,
    options: &ReviewOptions,
) -> Result<ReviewReport, AuditError> {
    let mut s = Scan {
        since_ms: options
            .since
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        rules: Rules::new(config.clone()),
        report: ReviewReport {
            since: options
                .since
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            ..ReviewReport::default()
        },
        first_ms: None,
        last_ms: None,
        clients: HashMap::new(),
        subjects: HashMap::new(),
        hourly: BTreeMap::new(),
        usage: options.least_privilege.then(UsageAccumulator::new),
        roles: Vec::new(),
    };
    let mut buf = Vec::new();
    for path in files {
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let mut reader = open_segment(path).map_err(io)?;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                // A corrupt compressed segment: the verifier reports it.
                Err(_) if reader.is_compressed() => {
                    s.report.unreadable_lines += 1;
                    break;
                }
                Err(e) => return Err(io(e)),
            }
            s.line(&buf);
        }
    }
    Ok(s.finish())
}

struct Scan {
    since_ms: Option<i64>,
    rules: Rules,
    report: ReviewReport,
    first_ms: Option<(i64, String)>,
    last_ms: Option<(i64, String)>,
    clients: HashMap<Box<str>, u64>,
    subjects: HashMap<Box<str>, u64>,
    hourly: BTreeMap<i64, (u64, u64)>,
    usage: Option<UsageAccumulator>,
    roles: Vec<String>,
}

impl Scan {
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(head) = serde_json::from_slice::<Head<'_>>(line) else {
            self.report.unreadable_lines += 1;
            return;
        };
        if head.kind != "access" {
            return;
        }
        // Deserialised directly (unknown keys ignored): much cheaper than
        // the flattened `SpoolRecord`.
        let Ok(r) = serde_json::from_slice::<AuditRecord>(line) else {
            self.report.unreadable_lines += 1;
            return;
        };
        let Some(ms) = parse_ts_ms(&r.ts) else {
            self.report.unreadable_lines += 1;
            return;
        };
        if r.phase == Some(Phase::Outcome) {
            return;
        }
        roles_of(&r, &mut self.roles);
        let patient = r.patient.as_deref().or_else(|| compartment(&r.path));
        let ev = Ev {
            ms,
            event_id: &head.event_id,
            sub: r.sub.as_deref(),
            client: r.client_id.as_deref(),
            allowed: r.decision == "allow",
            reason: &r.reason,
            patient,
            roles: &self.roles,
            ip: r.remote_addr.as_deref().map(address),
            break_glass: r.break_glass,
            justification: r.justification.as_deref(),
        };
        if self.since_ms.is_some_and(|since| ms < since) {
            self.report.history_records += 1;
            self.rules.history(&ev);
            return;
        }
        self.rules.add(&ev);
        let rep = &mut self.report;
        rep.requests += 1;
        let hour = self.hourly.entry(ms.div_euclid(HOUR_MS)).or_default();
        if ev.allowed {
            rep.allowed += 1;
            hour.0 += 1;
        } else {
            rep.denied += 1;
            hour.1 += 1;
            match rep.denials_by_reason.get_mut(&r.reason) {
                Some(n) => *n += 1,
                None => {
                    rep.denials_by_reason.insert(r.reason.clone(), 1);
                }
            }
        }
        if self.first_ms.as_ref().is_none_or(|(t, _)| ms < *t) {
            self.first_ms = Some((ms, r.ts.clone()));
        }
        if self.last_ms.as_ref().is_none_or(|(t, _)| ms > *t) {
            self.last_ms = Some((ms, r.ts.clone()));
        }
        for (map, id) in [(&mut self.clients, &r.client_id), (&mut self.subjects, &r.sub)] {
            if let Some(id) = id {
                match map.get_mut(id.as_str()) {
                    Some(n) => *n += 1,
                    None => {
                        map.insert(id.as_str().into(), 1);
                    }
                }
            }
        }
        if r.break_glass && rep.break_glass.len() < MAX_BREAK_GLASS_ROWS {
            rep.break_glass.push(BreakGlassRow {
                ts: r.ts.clone(),
                subject: r.sub.clone(),
                client: r.client_id.clone(),
                justification: r.justification.clone(),
                event_id: head.event_id.to_string(),
            });
        }
        if let Some(u) = &mut self.usage {
            u.add(&r);
        }
    }

    fn finish(self) -> ReviewReport {
        let mut rep = self.report;
        rep.first_ts = self.first_ms.map(|(_, ts)| ts);
        rep.last_ts = self.last_ms.map(|(_, ts)| ts);
        rep.subjects = self.subjects.len() as u64;
        rep.clients = self.clients.len() as u64;
        let top = |m: HashMap<Box<str>, u64>| {
            let mut v: Vec<(String, u64)> = m.into_iter().map(|(k, n)| (k.into(), n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(10);
            v
        };
        rep.top_clients = top(self.clients);
        rep.top_subjects = top(self.subjects);
        rep.hourly = self
            .hourly
            .into_iter()
            .map(|(h, (a, d))| (h * HOUR_MS, a, d))
            .collect();
        if let Some(u) = self.usage {
            rep.least_privilege = u.finish().least_privilege_rows();
        }
        let mut findings = self.rules.finish();
        findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.rule.cmp(&b.rule))
                .then_with(|| a.subject.cmp(&b.subject))
                .then_with(|| a.client.cmp(&b.client))
                .then_with(|| a.at.cmp(&b.at))
        });
        for f in &findings {
            *rep.findings_by_severity
                .entry(f.severity.as_str().into())
                .or_default() += 1;
            *rep.findings_by_rule.entry(f.rule.as_str().into()).or_default() += 1;
        }
        rep.findings = findings;
        rep
    }
}

/// The subject's roles (`claims.roles`: a list, or a space-separated string).
fn roles_of(r: &AuditRecord, out: &mut Vec<String>) {
    out.clear();
    let Some(v) = r.claims.as_ref().and_then(|c| c.get("roles")) else {
        return;
    };
    match v {
        serde_json::Value::Array(a) => out.extend(a.iter().filter_map(|x| x.as_str()).map(str::to_owned)),
        serde_json::Value::String(s) => out.extend(s.split_whitespace().map(str::to_owned)),
        _ => {}
    }
}

/// The patient compartment id in a FHIR path (`…/Patient/123[/…]`).
fn compartment(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut segments = path.split('/');
    while let Some(s) = segments.next() {
        if s == "Patient" {
            return segments
                .next()
                .filter(|id| !id.is_empty() && !id.starts_with('_') && !id.starts_with('$'));
        }
    }
    None
}

/// The IP of a socket address (`10.0.0.1:4321` → `10.0.0.1`, `[::1]:80` → `::1`).
fn address(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // One colon: IPv4 (or a name) with a port; more: a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}

/// Milliseconds since the epoch of an RFC 3339 `ts`; the spool's own form
/// (`2026-11-30T08:00:00.123Z`) without a general parser.
pub(crate) fn parse_ts_ms(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    let fast = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if fast {
        let n = |r: std::ops::Range<usize>| -> Option<i64> {
            let mut v = 0i64;
            for &c in &b[r] {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + i64::from(c - b'0');
            }
            Some(v)
        };
        let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
        let (h, mi, s, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
        if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 61 {
            let days = days_from_civil(y, mo, d);
            return Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms);
        }
    }
    ts.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 UTC of `ms` (`2026-11-30T08:00:00Z`, milliseconds when not 0).
pub(crate) fn fmt_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

impl ReviewReport {
    /// The human-readable review: chain, window, summary, findings table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let c = &self.chain;
        match &c.broken_at {
            Some(at) => {
                let _ = writeln!(
                    out,
                    "chain BROKEN at {at}\n  reviewed anyway (--allow-broken): records after the break are not proven unaltered"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "chain: verified ({} records, seq {}..{})",
                    c.records,
                    c.first_seq.unwrap_or_default(),
                    c.last_seq.unwrap_or_default()
                );
            }
        }
        for n in &c.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        let _ = writeln!(
            out,
            "window: {} .. {}{}",
            self.first_ts.as_deref().unwrap_or("-"),
            self.last_ts.as_deref().unwrap_or("-"),
            self.since
                .as_ref()
                .map(|s| format!(" (since {s})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "requests: {} ({} allowed, {} denied) from {} subject(s), {} client(s)",
            self.requests, self.allowed, self.denied, self.subjects, self.clients
        );
        if self.unreadable_lines > 0 {
            let _ = writeln!(
                out,
                "unreadable lines: {} (run `phigate audit verify`)",
                self.unreadable_lines
            );
        }
        let by_sev: Vec<String> = [Severity::High, Severity::Medium, Severity::Low, Severity::Info]
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.as_str(),
                    self.findings_by_severity.get(s.as_str()).unwrap_or(&0)
                )
            })
            .collect();
        let _ = writeln!(out, "findings: {} ({})", self.findings.len(), by_sev.join(", "));
        if self.findings.is_empty() {
            return out;
        }
        let w = |f: fn(&Finding) -> String| {
            self.findings
                .iter()
                .map(|x| f(x).chars().count())
                .max()
                .unwrap_or(0)
        };
        let ws = w(|f| f.subject.clone().unwrap_or_else(|| "-".into())).max(7);
        let wc = w(|f| f.client.clone().unwrap_or_else(|| "-".into())).max(6);
        let _ = writeln!(
            out,
            "\n{:<8} {:<11} {:<ws$} {:<wc$} EXPLANATION",
            "SEVERITY", "RULE", "SUBJECT", "CLIENT"
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<8} {:<11} {:<ws$} {:<wc$} {}",
                f.severity.as_str(),
                f.rule.as_str(),
                f.subject.as_deref().unwrap_or("-"),
                f.client.as_deref().unwrap_or("-"),
                f.explanation
            );
            let more = f.event_count.saturating_sub(f.event_ids.len() as u64);
            let _ = writeln!(
                out,
                "{:<8} at {}; evidence ({}): {}{}",
                "",
                f.at.as_deref().unwrap_or("-"),
                f.event_count,
                f.event_ids.join(" "),
                if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                }
            );
        }
        out
    }

    /// The data of the self-contained HTML report. Timeline buckets are
    /// hours, or days when the window is longer than 14 days.
    pub fn to_html_report(&self, title: &str) -> HtmlReport {
        let daily = self.hourly.len() > 14 * 24;
        let mut buckets: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        if let (Some(first), Some(last)) = (self.hourly.first(), self.hourly.last()) {
            // Every bucket of the window, empty ones included.
            let step = if daily { rules::DAY_MS } else { HOUR_MS };
            let mut t = first.0.div_euclid(step) * step;
            while t <= last.0 {
                buckets.insert(t, (0, 0));
                t += step;
            }
            for (h, a, d) in &self.hourly {
                let b = buckets.entry(h.div_euclid(step) * step).or_default();
                b.0 += a;
                b.1 += d;
            }
        }
        let chain_note = match &self.chain.broken_at {
            Some(at) => Some(format!("chain BROKEN at {at}; reviewed anyway (--allow-broken)")),
            None if self.chain.notes.is_empty() => None,
            None => Some(self.chain.notes.join("; ")),
        };
        let mut denials: Vec<(String, u64)> = self
            .denials_by_reason
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        denials.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        HtmlReport {
            title: title.to_owned(),
            generated_at: crate::now_rfc3339(),
            window_from: self.first_ts.clone(),
            window_to: self.last_ts.clone(),
            chain_verified: self.chain.verified,
            chain_note,
            records: self.requests,
            timeline: buckets
                .into_iter()
                .map(|(t, (allowed, denied))| TimelinePoint {
                    start: fmt_ms(t),
                    allowed,
                    denied,
                })
                .collect(),
            denials_by_reason: denials,
            top_clients: self.top_clients.clone(),
            top_subjects: self.top_subjects.clone(),
            findings: self
                .findings
                .iter()
                .map(|f| FindingRow {
                    rule: f.rule.as_str().into(),
                    severity: f.severity.as_str().into(),
                    subject: f.subject.clone(),
                    client: f.client.clone(),
                    explanation: f.explanation.clone(),
                    event_ids: f.event_ids.clone(),
                })
                .collect(),
            break_glass: self.break_glass.clone(),
            least_privilege: self.least_privilege.clone(),
        }
    }
}
