//! The self-contained HTML report (`--html`): one file with inline CSS and
//! inline SVG charts drawn here; no script, font, image or network fetch
//! (a Content-Security-Policy `default-src 'none'` says so to the browser
//! too). Every string is audit data from untrusted requests and is
//! HTML-escaped, attributes included.
//!
//! Chart points are testable: the requests-over-time chart has one
//! `<circle class="pt allowed|denied" data-count="N">` per bucket per series,
//! the denials chart one `<rect class="bar" data-count="N">` per reason.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::suggest::{scan, UsageAccumulator};
use crate::{AuditError, AuditRecord, Phase};

/// One bucket of the requests-over-time chart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimelinePoint {
    /// RFC 3339 start of the bucket.
    pub start: String,
    pub allowed: u64,
    pub denied: u64,
}

/// One finding of `audit review`, with the event ids that prove it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FindingRow {
    pub rule: String,
    pub severity: String,
    pub subject: Option<String>,
    pub client: Option<String>,
    pub explanation: String,
    pub event_ids: Vec<String>,
}

/// One break-glass access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BreakGlassRow {
    pub ts: String,
    pub subject: Option<String>,
    pub client: Option<String>,
    pub justification: Option<String>,
    pub event_id: String,
}

/// One client's granted vs used scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeastPrivilegeRow {
    pub client: String,
    pub granted: Vec<String>,
    pub used: Vec<String>,
    pub unused: Vec<String>,
}

/// Everything the HTML report shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HtmlReport {
    pub title: String,
    pub generated_at: String,
    pub window_from: Option<String>,
    pub window_to: Option<String>,
    pub chain_verified: bool,
    /// Shown under the chain banner (the verifier's first problem, …).
    pub chain_note: Option<String>,
    pub records: u64,
    pub timeline: Vec<TimelinePoint>,
    pub denials_by_reason: Vec<(String, u64)>,
    pub top_clients: Vec<(String, u64)>,
    pub top_subjects: Vec<(String, u64)>,
    pub findings: Vec<FindingRow>,
    pub break_glass: Vec<BreakGlassRow>,
    pub least_privilege: Vec<LeastPrivilegeRow>,
}

/// Bucket widths the timeline may use, in seconds: the smallest giving at
/// most [`MAX_BUCKETS`] buckets is chosen.
const BUCKET_WIDTHS: [i64; 10] = [
    60,
    300,
    900,
    3_600,
    3 * 3_600,
    6 * 3_600,
    86_400,
    7 * 86_400,
    30 * 86_400,
    365 * 86_400,
];
/// The most buckets a timeline has (unless the span exceeds them all).
pub const MAX_BUCKETS: i64 = 96;

/// Counts requests per minute while streaming; [`TimelineAccumulator::finish`]
/// picks a bucket width for the span seen and fills empty buckets with zeros.
/// Memory: one entry per minute that had a request.
#[derive(Debug, Default)]
pub struct TimelineAccumulator {
    minutes: BTreeMap<i64, (u64, u64)>,
}

impl TimelineAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one request at `ts` (RFC 3339); an unparsable `ts` is skipped.
    pub fn add(&mut self, ts: &str, allowed: bool) {
        let Ok(t) = OffsetDateTime::parse(ts, &Rfc3339) else {
            return;
        };
        let e = self.minutes.entry(t.unix_timestamp().div_euclid(60)).or_default();
        if allowed {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Count a record as the timeline does: its first record per request
    /// (`outcome` follow-ups are skipped), `allow` vs everything else.
    pub fn add_record(&mut self, r: &AuditRecord) {
        if r.phase != Some(Phase::Outcome) {
            self.add(&r.ts, r.decision == "allow");
        }
    }

    /// Consecutive buckets from the first request's to the last's.
    pub fn finish(self) -> Vec<TimelinePoint> {
        let (Some((&first, _)), Some((&last, _))) =
            (self.minutes.first_key_value(), self.minutes.last_key_value())
        else {
            return Vec::new();
        };
        let (first, last) = (first * 60, last * 60);
        let width = BUCKET_WIDTHS
            .iter()
            .copied()
            .find(|w| last.div_euclid(*w) - first.div_euclid(*w) < MAX_BUCKETS)
            .unwrap_or(BUCKET_WIDTHS[BUCKET_WIDTHS.len() - 1]);
        let (b0, b1) = (first.div_euclid(width), last.div_euclid(width));
        let mut points: Vec<TimelinePoint> = (b0..=b1)
            .map(|b| TimelinePoint {
                start: OffsetDateTime::from_unix_timestamp(b * width)
                    .ok()
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .unwrap_or_default(),
                allowed: 0,
                denied: 0,
            })
            .collect();
        for (minute, (a, d)) in self.minutes {
            let i = ((minute * 60).div_euclid(width) - b0) as usize;
            if let Some(p) = points.get_mut(i) {
                p.allowed += a;
                p.denied += d;
            }
        }
        points
    }
}

/// How many entries the top-clients and top-subjects tables show.
pub const TOP_N: usize = 10;

/// Build the report from spool directories or segment files: verify the
/// chain (the banner says whether it held), then stream the access records
/// at or after `since` once. `findings` is left empty for `audit review` to
/// fill.
pub fn build_report(
    paths: &[PathBuf],
    since: Option<OffsetDateTime>,
    title: &str,
) -> Result<HtmlReport, AuditError> {
    let verified = crate::verify::verify(paths, &[])?;
    let chain_note = match &verified.problem {
        Some(p) => Some(format!(
            "{}:{} (seq {}): {}",
            p.file,
            p.line,
            p.seq.map_or("-".to_string(), |s| s.to_string()),
            p.message
        )),
        None => Some(format!(
            "{} line(s) checked, seq {}..{}",
            verified.records,
            verified.first_seq.unwrap_or(0),
            verified.last_seq.unwrap_or(0)
        )),
    };
    let mut timeline = TimelineAccumulator::new();
    let mut usage = UsageAccumulator::new();
    let mut denials: HashMap<String, u64> = HashMap::new();
    let mut clients: HashMap<String, u64> = HashMap::new();
    let mut subjects: HashMap<String, u64> = HashMap::new();
    let mut break_glass = Vec::new();
    let stats = scan(paths, since, |_, event_id, r| {
        usage.add(r);
        timeline.add_record(r);
        if r.phase == Some(Phase::Outcome) {
            return;
        }
        if r.decision != "allow" {
            *denials.entry(r.reason.clone()).or_default() += 1;
        }
        if let Some(c) = &r.client_id {
            *clients.entry(c.clone()).or_default() += 1;
        }
        if let Some(s) = &r.sub {
            *subjects.entry(s.clone()).or_default() += 1;
        }
        if r.break_glass {
            break_glass.push(BreakGlassRow {
                ts: r.ts.clone(),
                subject: r.sub.clone(),
                client: r.client_id.clone(),
                justification: r.justification.clone(),
                event_id: event_id.to_string(),
            });
        }
    })?;
    let suggestions = usage.finish();
    let sorted = |m: HashMap<String, u64>, limit: usize| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        v
    };
    Ok(HtmlReport {
        title: title.to_string(),
        generated_at: crate::now_rfc3339(),
        window_from: since
            .and_then(|s| s.format(&Rfc3339).ok())
            .or_else(|| suggestions.window_from.clone()),
        window_to: suggestions.window_to.clone(),
        chain_verified: verified.ok,
        chain_note,
        records: stats.access_records,
        timeline: timeline.finish(),
        denials_by_reason: sorted(denials, usize::MAX),
        top_clients: sorted(clients, TOP_N),
        top_subjects: sorted(subjects, TOP_N),
        findings: Vec::new(),
        break_glass,
        least_privilege: suggestions.least_privilege_rows(),
    })
}

/// HTML-escape text for element content and (double- or single-quoted)
/// attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a report (and some are
            // not allowed in HTML): show them as U+FFFD.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "-".to_string(), escape)
}

fn scopes(list: &[String]) -> String {
    if list.is_empty() {
        return "<span class=\"muted\">-</span>".to_string();
    }
    list.iter()
        .map(|s| format!("<code>{}</code>", escape(s)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The anchor id of an event in the evidence list.
fn evidence_id(event_id: &str) -> String {
    format!("ev-{}", escape(event_id))
}

const STYLE: &str = r#"
:root { color-scheme: light; --allowed: #2e7d32; --denied: #c62828; --ink: #1c2430; --muted: #667085; --line: #d0d5dd; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; background: #f6f7f9; }
header, section { max-width: 1180px; margin: 0 auto; padding: 16px 24px; }
header { padding-top: 24px; }
h1 { margin: 0 0 4px; font-size: 1.6rem; }
h2 { font-size: 1.2rem; margin: 0 0 12px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin-top: 16px; }
.meta { color: var(--muted); margin: 0; }
.banner { margin-top: 12px; padding: 10px 14px; border-radius: 6px; font-weight: 600; }
.banner.ok { background: #e8f5e9; color: #1b5e20; border: 1px solid #a5d6a7; }
.banner.broken { background: #ffebee; color: #b71c1c; border: 2px solid #c62828; font-size: 1.1rem; }
.banner small { display: block; font-weight: 400; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; overflow-wrap: anywhere; }
th { background: #f2f4f7; white-space: nowrap; }
td.ts { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.85em; background: #f2f4f7; padding: 1px 4px; border-radius: 3px; }
.muted { color: var(--muted); }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.sev-high { color: var(--denied); font-weight: 700; }
.sev-medium { color: #b54708; font-weight: 600; }
.unused code { background: #fff4e5; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-size: 11px; fill: var(--muted); }
.line.allowed { stroke: var(--allowed); } .line.denied { stroke: var(--denied); }
.line { fill: none; stroke-width: 2; }
.area.allowed { fill: var(--allowed); opacity: 0.12; } .area.denied { fill: var(--denied); opacity: 0.12; }
.pt.allowed { fill: var(--allowed); } .pt.denied { fill: var(--denied); }
.bar { fill: var(--denied); opacity: 0.85; }
.axis { stroke: var(--line); }
.legend span { display: inline-block; margin-right: 16px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; margin-right: 4px; }
ul.evidence { columns: 2; font-family: ui-monospace, monospace; font-size: 0.85rem; }
ul.evidence li:target { background: #fff59d; }
"#;

/// Render the report as one self-contained HTML document.
pub fn render_html(r: &HtmlReport) -> String {
    let mut o = String::new();
    let title = escape(&r.title);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"phigate\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    header(&mut o, r);
    timeline_section(&mut o, &r.timeline);
    denials_section(&mut o, &r.denials_by_reason);
    let _ = write!(o, "<section id=\"top\"><div class=\"grid\">");
    top_table(&mut o, "Top clients", "top-clients", "Client", &r.top_clients);
    top_table(&mut o, "Top subjects", "top-subjects", "Subject", &r.top_subjects);
    let _ = writeln!(o, "</div></section>");
    findings_section(&mut o, &r.findings);
    break_glass_section(&mut o, &r.break_glass);
    least_privilege_section(&mut o, &r.least_privilege);
    evidence_section(&mut o, r);
    let _ = writeln!(
        o,
        "<section><p class=\"meta\">Generated by phigate at {}. Self-contained: no scripts, fonts, images or network. \
         Check any event id against the verified chain: <code>phigate audit export --format jsonl SPOOL | grep EVENT_ID</code>.</p></section>",
        escape(&r.generated_at)
    );
    let _ = writeln!(o, "</body>\n</html>");
    o
}

fn header(o: &mut String, r: &HtmlReport) {
    let _ = writeln!(
        o,
        "<header>\n<h1>{}</h1>\n<p class=\"meta\" id=\"window\">Window: {} .. {} &middot; <span id=\"records\">{}</span> access record(s) &middot; generated {}</p>",
        escape(&r.title),
        opt(&r.window_from),
        opt(&r.window_to),
        r.records,
        escape(&r.generated_at)
    );
    let note = r
        .chain_note
        .as_deref()
        .map(|n| format!("<small>{}</small>", escape(n)))
        .unwrap_or_default();
    if r.chain_verified {
        let _ = writeln!(
            o,
            "<div class=\"banner ok\" id=\"chain\" data-verified=\"true\">Hash chain verified{note}</div>"
        );
    } else {
        let _ = writeln!(
            o,
            "<div class=\"banner broken\" id=\"chain\" data-verified=\"false\">HASH CHAIN BROKEN: these records may have been altered; everything below is unverified{note}</div>"
        );
    }
    let _ = writeln!(o, "</header>");
}

fn timeline_section(o: &mut String, points: &[TimelinePoint]) {
    let _ = writeln!(
        o,
        "<section id=\"timeline\">\n<h2>Requests over time by decision</h2>"
    );
    if points.is_empty() {
        let _ = writeln!(o, "<p class=\"muted\">No requests in the window.</p>\n</section>");
        return;
    }
    let (w, h) = (1100.0_f64, 260.0_f64);
    let (left, right, top, bottom) = (48.0, 16.0, 12.0, 36.0);
    let max = points
        .iter()
        .map(|p| p.allowed.max(p.denied))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = points.len();
    let x = |i: usize| {
        if n == 1 {
            left + (w - left - right) / 2.0
        } else {
            left + (w - left - right) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: u64| top + (h - top - bottom) * (1.0 - v as f64 / max);
    let base = y(0);
    let _ = writeln!(
        o,
        "<p class=\"legend\"><span><i class=\"swatch\" style=\"background:var(--allowed)\"></i>allowed</span>\
         <span><i class=\"swatch\" style=\"background:var(--denied)\"></i>denied</span>\
         <span class=\"muted\">{n} bucket(s) from {}</span></p>",
        escape(&points[0].start)
    );
    let _ = writeln!(
        o,
        "<svg class=\"chart timeline\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Requests over time by decision\" data-buckets=\"{n}\" data-series=\"2\">"
    );
    let _ = writeln!(
        o,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\"/>\
         <line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{base:.1}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>",
        w - right,
        left - 6.0,
        top + 10.0,
        max as u64,
        left - 6.0,
        base
    );
    for (series, get) in [
        (
            "allowed",
            (|p: &TimelinePoint| p.allowed) as fn(&TimelinePoint) -> u64,
        ),
        ("denied", |p: &TimelinePoint| p.denied),
    ] {
        let line: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(get(p))))
            .collect();
        let _ = writeln!(
            o,
            "<polygon class=\"area {series}\" points=\"{:.1},{base:.1} {} {:.1},{base:.1}\"/>\
             <polyline class=\"line {series}\" points=\"{}\"/>",
            x(0),
            line.join(" "),
            x(n - 1),
            line.join(" ")
        );
        for (i, p) in points.iter().enumerate() {
            let v = get(p);
            let _ = writeln!(
                o,
                "<circle class=\"pt {series}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" data-count=\"{v}\" data-start=\"{}\"><title>{}: {v} {series}</title></circle>",
                x(i),
                y(v),
                escape(&p.start),
                escape(&p.start)
            );
        }
    }
    // First and last bucket labels on the x axis (one, centred, for one bucket).
    if n == 1 {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(0),
            h - 12.0,
            escape(&points[0].start)
        );
    } else {
        let _ = writeln!(
            o,
            "<text x=\"{left}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            h - 12.0,
            escape(&points[0].start),
            w - right,
            h - 12.0,
            escape(&points[n - 1].start)
        );
    }
    let _ = writeln!(o, "</svg>\n</section>");
}

fn denials_section(o: &mut String, denials: &[(String, u64)]) {
    let _ = writeln!(o, "<section id=\"denials\">\n<h2>Denials by reason</h2>");
    if denials.is_empty() {
        let _ = writeln!(o, "<p class=\"muted\">No denials in the window.</p>\n</section>");
        return;
    }
    let (w, row, label) = (1100.0_f64, 26.0_f64, 260.0_f64);
    let h = row * denials.len() as f64 + 8.0;
    let max = denials.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let span = w - label - 80.0;
    let _ = writeln!(
        o,
        "<svg class=\"chart denials\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Denials by reason\" data-bars=\"{}\">",
        denials.len()
    );
    for (i, (reason, n)) in denials.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let bw = (span * *n as f64 / max).max(2.0);
        let reason = escape(reason);
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{reason}</text>\
             <rect class=\"bar\" x=\"{label}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" rx=\"3\" data-reason=\"{reason}\" data-count=\"{n}\"><title>{reason}: {n}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
            label - 8.0,
            y + row * 0.6,
            row - 8.0,
            label + bw + 6.0,
            y + row * 0.6
        );
    }
    let _ = writeln!(o, "</svg>\n</section>");
}

fn top_table(o: &mut String, title: &str, id: &str, what: &str, rows: &[(String, u64)]) {
    let _ = writeln!(
        o,
        "<div id=\"{id}\"><h2>{title}</h2><table><thead><tr><th>{what}</th><th class=\"num\">Requests</th></tr></thead><tbody>"
    );
    if rows.is_empty() {
        let _ = writeln!(o, "<tr><td colspan=\"2\" class=\"muted\">none</td></tr>");
    }
    for (name, n) in rows {
        let _ = writeln!(o, "<tr><td>{}</td><td class=\"num\">{n}</td></tr>", escape(name));
    }
    let _ = writeln!(o, "</tbody></table></div>");
}

fn findings_section(o: &mut String, findings: &[FindingRow]) {
    let _ = writeln!(
        o,
        "<section id=\"findings\">\n<h2>Findings ({})</h2>",
        findings.len()
    );
    if findings.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"muted\">No findings (run <code>phigate audit review</code> for anomaly findings).</p>\n</section>"
        );
        return;
    }
    let _ = writeln!(
        o,
        "<table><thead><tr><th>Rule</th><th>Severity</th><th>Subject</th><th>Client</th><th>Explanation</th><th>Evidence</th></tr></thead><tbody>"
    );
    for f in findings {
        let sev = escape(&f.severity);
        let links: Vec<String> = f
            .event_ids
            .iter()
            .map(|e| format!("<a href=\"#{}\">{}</a>", evidence_id(e), escape(e)))
            .collect();
        let _ = writeln!(
            o,
            "<tr class=\"finding\"><td><code>{}</code></td><td class=\"sev-{sev}\">{sev}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.rule),
            opt(&f.subject),
            opt(&f.client),
            escape(&f.explanation),
            links.join("<br>")
        );
    }
    let _ = writeln!(o, "</tbody></table>\n</section>");
}

fn break_glass_section(o: &mut String, rows: &[BreakGlassRow]) {
    let _ = writeln!(
        o,
        "<section id=\"break-glass\">\n<h2>Break-glass accesses ({})</h2>",
        rows.len()
    );
    if rows.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"muted\">No break-glass access in the window.</p>\n</section>"
        );
        return;
    }
    let _ = writeln!(
        o,
        "<table><thead><tr><th>Time</th><th>Subject</th><th>Client</th><th>Justification</th><th>Event</th></tr></thead><tbody>"
    );
    for b in rows {
        let _ = writeln!(
            o,
            "<tr class=\"break-glass\"><td class=\"ts\">{}</td><td>{}</td><td>{}</td><td class=\"justification\">{}</td><td><a href=\"#{}\">{}</a></td></tr>",
            escape(&b.ts),
            opt(&b.subject),
            opt(&b.client),
            b.justification
                .as_deref()
                .map_or_else(|| "<span class=\"muted\">(none given)</span>".to_string(), escape),
            evidence_id(&b.event_id),
            escape(&b.event_id)
        );
    }
    let _ = writeln!(o, "</tbody></table>\n</section>");
}

fn least_privilege_section(o: &mut String, rows: &[LeastPrivilegeRow]) {
    let _ = writeln!(
        o,
        "<section id=\"least-privilege\">\n<h2>Least privilege: granted vs used scopes</h2>\
         <p class=\"meta\">Data scopes per client. Unused scopes are compliance risks, but a short window under-counts rare legitimate use: see <code>phigate policy suggest</code>.</p>"
    );
    if rows.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"muted\">No client made a request that needed a scope.</p>\n</section>"
        );
        return;
    }
    let _ = writeln!(
        o,
        "<table><thead><tr><th>Client</th><th>Granted</th><th>Used</th><th>Unused</th></tr></thead><tbody>"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"unused\">{}</td></tr>",
            escape(&r.client),
            scopes(&r.granted),
            scopes(&r.used),
            scopes(&r.unused)
        );
    }
    let _ = writeln!(o, "</tbody></table>\n</section>");
}

/// Every event id the findings and break-glass rows link to, once, in order
/// of first mention, each the target of its links.
fn evidence_section(o: &mut String, r: &HtmlReport) {
    let mut seen = std::collections::HashSet::new();
    let mut ids: Vec<(&str, String)> = Vec::new();
    for f in &r.findings {
        for e in &f.event_ids {
            if seen.insert(e.as_str()) {
                ids.push((e.as_str(), format!("finding {}", f.rule)));
            }
        }
    }
    for b in &r.break_glass {
        if seen.insert(b.event_id.as_str()) {
            ids.push((b.event_id.as_str(), "break-glass".to_string()));
        }
    }
    let _ = writeln!(
        o,
        "<section id=\"evidence\">\n<h2>Evidence ({} event(s))</h2>",
        ids.len()
    );
    if ids.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"muted\">No event is referenced above.</p>\n</section>"
        );
        return;
    }
    let _ = writeln!(
        o,
        "<p class=\"meta\">Event ids of the records that prove each finding and break-glass access; each is one line of the hash chain.</p>\n<ul class=\"evidence\">"
    );
    for (id, why) in ids {
        let _ = writeln!(
            o,
            "<li id=\"{}\"><code>{}</code> <span class=\"muted\">{}</span></li>",
            evidence_id(id),
            escape(id),
            escape(&why)
        );
    }
    let _ = writeln!(o, "</ul>\n</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HtmlReport {
        HtmlReport {
            title: "phigate audit report".into(),
            generated_at: "2026-01-02T00:00:00Z".into(),
            window_from: Some("2026-01-01T00:00:00Z".into()),
            window_to: Some("2026-01-01T01:00:00Z".into()),
            chain_verified: true,
            chain_note: None,
            records: 7,
            timeline: vec![
                TimelinePoint {
                    start: "2026-01-01T00:00:00Z".into(),
                    allowed: 3,
                    denied: 1,
                },
                TimelinePoint {
                    start: "2026-01-01T00:01:00Z".into(),
                    allowed: 2,
                    denied: 0,
                },
                TimelinePoint {
                    start: "2026-01-01T00:02:00Z".into(),
                    allowed: 0,
                    denied: 1,
                },
            ],
            denials_by_reason: vec![("insufficient_scope".into(), 1), ("missing_token".into(), 1)],
            top_clients: vec![("ehr".into(), 7)],
            top_subjects: vec![("alice".into(), 5), ("<b>bob</b>".into(), 2)],
            findings: vec![FindingRow {
                rule: "probing".into(),
                severity: "high".into(),
                subject: Some("mallory".into()),
                client: None,
                explanation: "3 denials in 1 minute".into(),
                event_ids: vec!["e-1".into(), "e-2".into()],
            }],
            break_glass: vec![BreakGlassRow {
                ts: "2026-01-01T00:01:30Z".into(),
                subject: Some("dr-who".into()),
                client: Some("ehr".into()),
                justification: Some("<script>alert(1)</script> \"x\" & 'y'".into()),
                event_id: "e-3".into(),
            }],
            least_privilege: vec![LeastPrivilegeRow {
                client: "ehr".into(),
                granted: vec!["user/Patient.rs".into(), "user/Condition.rs".into()],
                used: vec!["user/Patient.rs".into()],
                unused: vec!["user/Condition.rs".into()],
            }],
        }
    }

    #[test]
    fn a_script_in_audit_data_is_rendered_inert() {
        let html = render_html(&sample());
        assert!(!html.contains("<script"), "no script element at all");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &quot;x&quot; &amp; &#39;y&#39;"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;bob&lt;/b&gt;"));
        assert!(
            html.contains("default-src 'none'"),
            "CSP forbids anything but inline style"
        );
    }

    #[test]
    fn is_self_contained() {
        let html = render_html(&sample());
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!html.contains(needle), "found {needle}");
        }
    }

    #[test]
    fn the_timeline_has_one_point_per_bucket_per_series() {
        let html = render_html(&sample());
        assert_eq!(html.matches("<circle class=\"pt allowed\"").count(), 3);
        assert_eq!(html.matches("<circle class=\"pt denied\"").count(), 3);
        assert!(html.contains("data-buckets=\"3\" data-series=\"2\""));
        assert_eq!(html.matches("<rect class=\"bar\"").count(), 2);
    }

    #[test]
    fn findings_link_to_their_evidence() {
        let html = render_html(&sample());
        for id in ["e-1", "e-2", "e-3"] {
            assert!(html.contains(&format!("href=\"#ev-{id}\"")), "{id}");
            assert_eq!(html.matches(&format!("<li id=\"ev-{id}\"")).count(), 1, "{id}");
        }
    }

    #[test]
    fn a_broken_chain_is_a_banner() {
        let mut r = sample();
        assert!(render_html(&r).contains("Hash chain verified"));
        r.chain_verified = false;
        r.chain_note = Some("segment-1.jsonl:2 (seq 2): hash mismatch".into());
        let html = render_html(&r);
        assert!(html.contains("HASH CHAIN BROKEN"));
        assert!(html.contains("hash mismatch"));
    }

    #[test]
    fn empty_report_renders() {
        let html = render_html(&HtmlReport::default());
        assert!(html.contains("No requests in the window."));
        assert!(!html.contains("<circle"));
    }

    #[test]
    fn timeline_buckets_are_contiguous_and_sized_for_the_span() {
        let mut t = TimelineAccumulator::new();
        t.add("2026-01-01T00:00:10Z", true);
        t.add("2026-01-01T00:00:50Z", false);
        t.add("2026-01-01T00:03:05Z", true);
        t.add("garbage", true);
        let p = t.finish();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p[0].start, "2026-01-01T00:00:00Z");
        assert_eq!((p[0].allowed, p[0].denied), (1, 1));
        assert_eq!((p[1].allowed, p[2].allowed, p[3].allowed), (0, 0, 1));
        // Two days: 5-minute buckets are too many (576), 1 hour gives 49.
        let mut t = TimelineAccumulator::new();
        t.add("2026-01-01T00:00:00Z", true);
        t.add("2026-01-03T00:00:00Z", true);
        let p = t.finish();
        assert_eq!(p.len(), 49);
        assert_eq!(p[1].start, "2026-01-01T01:00:00Z");
        assert!(TimelineAccumulator::new().finish().is_empty());
    }

    #[test]
    fn escape_covers_attribute_quotes_and_controls() {
        assert_eq!(escape("a\"b'c<d>&\u{1b}"), "a&quot;b&#39;c&lt;d&gt;&amp;\u{fffd}");
    }
}
