//! The review rules as streaming detectors.
//!
//! Each detector sees every access record of the window once, in spool
//! order, and keeps state per subject, client, client address or (subject,
//! watched patient) only — never per record — so memory grows with the
//! number of distinct principals and patients, not with the spool. Event
//! ids kept as evidence are capped per finding (`evidence_cap`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use super::config::{ReviewConfig, WorkingHours};
use super::stats::{threshold, Histogram};
use super::{fmt_ms, Finding, Rule, Severity};

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// What the rules read of one access record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ev<'a> {
    pub ms: i64,
    pub event_id: &'a str,
    pub sub: Option<&'a str>,
    pub client: Option<&'a str>,
    pub allowed: bool,
    pub reason: &'a str,
    /// The `patient` field, else the compartment id in the path.
    pub patient: Option<&'a str>,
    pub roles: &'a [String],
    /// The client address without its port.
    pub ip: Option<&'a str>,
    pub break_glass: bool,
    pub justification: Option<&'a str>,
}

fn hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The entry of `key`, made with `new` if absent; allocates the key only
/// then (the per-record path looks keys up by `&str`).
fn slot<'m, V>(map: &'m mut HashMap<Box<str>, V>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.into(), new());
    }
    map.get_mut(key).expect("inserted above")
}

/// Event ids proving a finding: the first `cap`, and how many there were.
#[derive(Debug, Clone, Default)]
pub(crate) struct Evidence {
    pub ids: Vec<Box<str>>,
    pub count: u64,
}

impl Evidence {
    fn push(&mut self, id: &str, cap: usize) {
        self.count += 1;
        if self.ids.len() < cap {
            self.ids.push(id.into());
        }
    }
}

fn finding(
    rule: Rule,
    severity: Severity,
    subject: Option<&str>,
    client: Option<&str>,
    at_ms: i64,
    explanation: String,
    evidence: Evidence,
) -> Finding {
    Finding {
        rule,
        severity,
        subject: subject.map(str::to_owned),
        client: client.map(str::to_owned),
        at: Some(fmt_ms(at_ms)),
        explanation,
        event_ids: evidence.ids.into_iter().map(String::from).collect(),
        event_count: evidence.count,
    }
}

/// All detectors.
pub(crate) struct Rules {
    cap: usize,
    config: ReviewConfig,
    breadth: Breadth,
    off_hours: HashMap<Box<str>, OffHours>,
    probing: HashMap<ProbeKey, Probe>,
    break_glass: HashMap<Box<str>, BreakGlassUse>,
    restricted: HashMap<(Box<str>, Box<str>), Restricted>,
    dormant_subjects: HashMap<Box<str>, LastSeen>,
    dormant_clients: HashMap<Box<str>, LastSeen>,
    dormant_findings: Vec<Finding>,
    token: HashMap<Box<str>, Addresses>,
}

impl Rules {
    pub fn new(config: ReviewConfig) -> Rules {
        Rules {
            cap: config.evidence_cap,
            config,
            breadth: Breadth::default(),
            off_hours: HashMap::new(),
            probing: HashMap::new(),
            break_glass: HashMap::new(),
            restricted: HashMap::new(),
            dormant_subjects: HashMap::new(),
            dormant_clients: HashMap::new(),
            dormant_findings: Vec::new(),
            token: HashMap::new(),
        }
    }

    /// A record from before the window: only the dormancy rule looks back.
    pub fn history(&mut self, e: &Ev<'_>) {
        if self.config.dormant.enabled {
            self.dormant(e, false);
        }
    }

    /// A record of the window.
    pub fn add(&mut self, e: &Ev<'_>) {
        let cap = self.cap;
        let c = &self.config;
        if c.breadth.enabled && e.allowed {
            if let (Some(sub), Some(p)) = (e.sub, e.patient) {
                self.breadth.add(sub, e, p, cap);
            }
        }
        if !c.off_hours.is_empty() && e.allowed {
            if let Some(sub) = e.sub {
                off_hours(&mut self.off_hours, &c.off_hours, sub, e, cap);
            }
        }
        let probing = c.probing.enabled && !e.allowed && c.probing.reasons.contains(e.reason);
        let break_glass = c.break_glass.enabled && e.break_glass;
        let restricted = !c.restricted.patients.is_empty() && e.allowed;
        let dormant = c.dormant.enabled;
        let token = c.token.enabled;
        if probing {
            self.probe(e);
        }
        if break_glass {
            self.break_glass(e);
        }
        if restricted {
            self.restricted(e);
        }
        if dormant {
            self.dormant(e, true);
        }
        if token {
            if let (Some(sub), Some(ip)) = (e.sub, e.ip) {
                self.token(sub, ip, e);
            }
        }
    }

    fn probe(&mut self, e: &Ev<'_>) {
        // The principal: the user; a client-credentials client; the address
        // of requests without a token.
        let key = match (e.sub, e.client, e.ip) {
            (Some(s), _, _) => ProbeKey::Subject(s.into()),
            (None, Some(c), _) => ProbeKey::Client(c.into()),
            (None, None, Some(ip)) => ProbeKey::Address(ip.into()),
            (None, None, None) => return,
        };
        let cfg = &self.config.probing;
        let p = self.probing.entry(key).or_default();
        if p.client.is_none() {
            p.client = e.client.map(Into::into);
        }
        if p.in_burst && e.ms - p.last_ms > cfg.window_ms {
            p.in_burst = false;
        }
        p.recent.push_back((e.ms, e.event_id.into(), e.reason.into()));
        while p.recent.len() > cfg.min_denials {
            p.recent.pop_front();
        }
        if p.in_burst {
            p.current += 1;
            p.evidence.push(e.event_id, self.cap);
            count_reason(&mut p.reasons, e.reason);
        } else if p.recent.len() == cfg.min_denials
            && p.recent
                .front()
                .is_some_and(|(t, _, _)| e.ms - t <= cfg.window_ms)
        {
            // The burst starts with the denials that make it one.
            p.in_burst = true;
            p.bursts += 1;
            p.current = p.recent.len() as u64;
            if p.first_ms.is_none() {
                p.first_ms = p.recent.front().map(|(t, _, _)| *t);
            }
            for (_, id, reason) in &p.recent {
                p.evidence.push(id, self.cap);
                count_reason(&mut p.reasons, reason);
            }
        }
        p.peak = p.peak.max(p.current);
        p.last_ms = e.ms;
    }

    fn break_glass(&mut self, e: &Ev<'_>) {
        let Some(sub) = e.sub else { return };
        let window = self.config.break_glass.window_ms;
        let b = self.break_glass.entry(sub.into()).or_default();
        let patient = hash(e.patient.unwrap_or(""));
        if b.first_ms.is_none() {
            b.first_ms = Some(e.ms);
            b.client = e.client.map(Into::into);
        }
        b.evidence.push(e.event_id, self.cap);
        b.patients.insert(patient);
        b.recent.push_back((e.ms, patient));
        while b.recent.front().is_some_and(|(t, _)| e.ms - t > window) || b.recent.len() > 1024 {
            b.recent.pop_front();
        }
        let distinct = b.recent.iter().map(|(_, p)| *p).collect::<HashSet<_>>().len();
        b.max_in_window = b.max_in_window.max(distinct);
        if let Some(j) = e.justification.map(str::trim).filter(|j| !j.is_empty()) {
            let entry = b.justifications.entry(hash(j)).or_insert_with(|| {
                let mut text: String = j.chars().take(80).collect();
                if text.len() < j.len() {
                    text.push('…');
                }
                (text.into(), HashSet::new())
            });
            entry.1.insert(patient);
        }
    }

    fn restricted(&mut self, e: &Ev<'_>) {
        let r = &self.config.restricted;
        let Some(patient) = e.patient else { return };
        let Some(principal) = e.sub.or(e.client) else {
            return;
        };
        if !r.patients.contains_key(patient) || r.exempt.contains(principal) {
            return;
        }
        let s = self
            .restricted
            .entry((principal.into(), patient.into()))
            .or_insert_with(|| Restricted {
                first_ms: e.ms,
                is_subject: e.sub.is_some(),
                client: e.client.map(Into::into),
                evidence: Evidence::default(),
            });
        s.evidence.push(e.event_id, self.cap);
    }

    fn dormant(&mut self, e: &Ev<'_>, report: bool) {
        let silent = self.config.dormant.silent_ms;
        for (map, id, is_subject) in [
            (&mut self.dormant_subjects, e.sub, true),
            (&mut self.dormant_clients, e.client, false),
        ] {
            let Some(id) = id else { continue };
            match map.get_mut(id) {
                Some(last) => {
                    if report && e.ms - last.ms >= silent {
                        let mut evidence = Evidence::default();
                        evidence.push(&last.event_id, 2);
                        evidence.push(e.event_id, 2);
                        let what = if is_subject { "subject" } else { "client" };
                        let explanation = format!(
                            "{what} silent for {} days (last seen {}) became active again",
                            (e.ms - last.ms) / DAY_MS,
                            fmt_ms(last.ms)
                        );
                        let (subject, client) = if is_subject {
                            (Some(id), e.client)
                        } else {
                            (None, Some(id))
                        };
                        self.dormant_findings.push(finding(
                            Rule::Dormant,
                            Severity::Medium,
                            subject,
                            client,
                            e.ms,
                            explanation,
                            evidence,
                        ));
                    }
                    if e.ms >= last.ms {
                        last.ms = e.ms;
                        last.event_id.clear();
                        last.event_id.push_str(e.event_id);
                    }
                }
                None => {
                    map.insert(
                        id.into(),
                        LastSeen {
                            ms: e.ms,
                            event_id: e.event_id.to_owned(),
                        },
                    );
                }
            }
        }
    }

    fn token(&mut self, sub: &str, ip: &str, e: &Ev<'_>) {
        let cfg = &self.config.token;
        let a = slot(&mut self.token, sub, Addresses::default);
        if a.client.is_none() {
            a.client = e.client.map(Into::into);
        }
        match a.seen.get_mut(ip) {
            Some(s) if e.ms - s.0 <= cfg.window_ms => s.0 = s.0.max(e.ms),
            Some(s) => *s = (e.ms, e.event_id.into()),
            None => {
                a.seen.insert(ip.into(), (e.ms, e.event_id.into()));
            }
        }
        if a.seen.len() < cfg.min_addresses {
            a.in_episode = false;
            return;
        }
        a.seen.retain(|_, (t, _)| e.ms - *t <= cfg.window_ms);
        if a.seen.len() < cfg.min_addresses {
            a.in_episode = false;
            return;
        }
        if !a.in_episode {
            a.in_episode = true;
            a.episodes += 1;
        }
        if a.seen.len() > a.worst {
            a.worst = a.seen.len();
            a.worst_ms = e.ms;
            let mut seen: Vec<_> = a.seen.iter().collect();
            seen.sort_by_key(|(_, (t, _))| *t);
            a.addresses = seen.iter().map(|(ip, _)| (*ip).clone()).collect();
            a.evidence = Evidence::default();
            for (_, (_, id)) in seen {
                a.evidence.push(id, self.cap);
            }
        }
    }

    /// Every finding, in no particular order.
    pub fn finish(self) -> Vec<Finding> {
        let cap = self.cap;
        let c = self.config;
        let mut out = self.dormant_findings;
        out.extend(self.breadth.finish(&c));
        for (sub, o) in self.off_hours {
            let roles = if o.roles.is_empty() {
                "any role".to_string()
            } else {
                format!("role(s) {}", o.roles.join(", "))
            };
            let explanation = format!(
                "{} allowed access(es) outside the working hours of {roles} ({})",
                o.evidence.count, o.schedule
            );
            out.push(finding(
                Rule::OffHours,
                Severity::Low,
                Some(&sub),
                o.client.as_deref(),
                o.first_ms,
                explanation,
                o.evidence,
            ));
        }
        for (key, p) in self.probing {
            if p.bursts == 0 {
                continue;
            }
            let reasons: Vec<String> = p.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let (subject, client, who) = match &key {
                ProbeKey::Subject(s) => (Some(&**s), p.client.as_deref(), String::new()),
                ProbeKey::Client(cl) => (None, Some(&**cl), String::new()),
                ProbeKey::Address(a) => (None, None, format!(" from address {a} without a token")),
            };
            let explanation = format!(
                "{} denial(s){who} in {} burst(s) of at least {} within {} (largest {}): {}",
                p.evidence.count,
                p.bursts,
                c.probing.min_denials,
                fmt_dur(c.probing.window_ms),
                p.peak,
                reasons.join(", ")
            );
            out.push(finding(
                Rule::Probing,
                Severity::Medium,
                subject,
                client,
                p.first_ms.unwrap_or_default(),
                explanation,
                p.evidence,
            ));
        }
        for (sub, b) in self.break_glass {
            let mut why = Vec::new();
            if b.max_in_window >= c.break_glass.max_patients {
                why.push(format!(
                    "{} distinct patients within {} (flagged at {})",
                    b.max_in_window,
                    fmt_dur(c.break_glass.window_ms),
                    c.break_glass.max_patients
                ));
            }
            let mut reused: Vec<(&str, usize)> = b
                .justifications
                .values()
                .filter(|(_, p)| p.len() >= c.break_glass.same_justification_patients)
                .map(|(t, p)| (&**t, p.len()))
                .collect();
            reused.sort();
            for (text, n) in reused {
                why.push(format!(
                    "justification {text:?} repeated verbatim for {n} patients"
                ));
            }
            let severity = if why.is_empty() {
                Severity::Info
            } else {
                Severity::High
            };
            let mut explanation = format!(
                "{} break-glass access(es) to {} patient(s)",
                b.evidence.count,
                b.patients.len()
            );
            if !why.is_empty() {
                explanation.push_str(": ");
                explanation.push_str(&why.join("; "));
            }
            out.push(finding(
                Rule::BreakGlass,
                severity,
                Some(&sub),
                b.client.as_deref(),
                b.first_ms.unwrap_or_default(),
                explanation,
                b.evidence,
            ));
        }
        for ((principal, patient), r) in self.restricted {
            let label = c
                .restricted
                .patients
                .get(&*patient)
                .map(String::as_str)
                .unwrap_or("");
            let explanation = format!(
                "{} allowed access(es) to restricted patient {patient} ({label})",
                r.evidence.count
            );
            let (subject, client) = if r.is_subject {
                (Some(&*principal), r.client.as_deref())
            } else {
                (None, Some(&*principal))
            };
            out.push(finding(
                Rule::Restricted,
                Severity::High,
                subject,
                client,
                r.first_ms,
                explanation,
                r.evidence,
            ));
        }
        for (sub, a) in self.token {
            if a.episodes == 0 {
                continue;
            }
            let shown: Vec<&str> = a.addresses.iter().take(cap.min(8)).map(|s| &**s).collect();
            let explanation = format!(
                "one subject from {} distinct client addresses within {} ({}{}); {} episode(s)",
                a.worst,
                fmt_dur(c.token.window_ms),
                shown.join(", "),
                if a.addresses.len() > shown.len() {
                    ", …"
                } else {
                    ""
                },
                a.episodes
            );
            out.push(finding(
                Rule::Token,
                Severity::Medium,
                Some(&sub),
                a.client.as_deref(),
                a.worst_ms,
                explanation,
                a.evidence,
            ));
        }
        out
    }
}

fn count_reason(reasons: &mut BTreeMap<Box<str>, u64>, reason: &str) {
    match reasons.get_mut(reason) {
        Some(n) => *n += 1,
        None => {
            reasons.insert(reason.into(), 1);
        }
    }
}

/// `300000` → `5m`, `86400000` → `24h` (the largest whole unit up to hours, then days).
pub(crate) fn fmt_dur(ms: i64) -> String {
    const MIN: i64 = 60_000;
    match ms {
        _ if ms >= 2 * DAY_MS && ms % DAY_MS == 0 => format!("{}d", ms / DAY_MS),
        _ if ms % HOUR_MS == 0 => format!("{}h", ms / HOUR_MS),
        _ if ms % MIN == 0 => format!("{}m", ms / MIN),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

// ---- breadth ----

#[derive(Default)]
struct Breadth {
    subjects: HashMap<Box<str>, SubjectBreadth>,
}

/// The distinct patients of one open hour or day of one subject.
#[derive(Default)]
struct Bucket {
    id: i64,
    patients: HashSet<u64>,
    evidence: Evidence,
}

/// The busiest closed bucket so far, with its evidence.
struct Best {
    id: i64,
    count: u32,
    evidence: Evidence,
}

#[derive(Default)]
struct Series {
    open: Option<Bucket>,
    /// Distinct patients of the closed active buckets.
    counts: Histogram,
    best: Option<Best>,
}

impl Series {
    fn add(&mut self, bucket: i64, patient: u64, event_id: &str, cap: usize) {
        // A record timestamped before the open bucket (a slow request
        // committed late) counts toward the open one.
        if self.open.as_ref().is_some_and(|b| bucket > b.id) {
            self.close();
        }
        let b = self.open.get_or_insert_with(|| Bucket {
            id: bucket,
            ..Bucket::default()
        });
        if b.patients.insert(patient) {
            b.evidence.push(event_id, cap);
        }
    }

    fn close(&mut self) {
        let Some(b) = self.open.take() else { return };
        let count = b.patients.len() as u32;
        self.counts.add(count);
        if self.best.as_ref().is_none_or(|best| count > best.count) {
            self.best = Some(Best {
                id: b.id,
                count,
                evidence: b.evidence,
            });
        }
    }
}

#[derive(Default)]
struct SubjectBreadth {
    /// The subject's roles as last seen (sorted, comma-joined): its peer group.
    group: Box<str>,
    client: Option<Box<str>>,
    hours: Series,
    days: Series,
}

impl Breadth {
    fn add(&mut self, sub: &str, e: &Ev<'_>, patient: &str, cap: usize) {
        let s = slot(&mut self.subjects, sub, SubjectBreadth::default);
        if s.client.is_none() {
            s.client = e.client.map(Into::into);
        }
        if !e.roles.is_empty() || s.group.is_empty() {
            let mut roles: Vec<&str> = e.roles.iter().map(String::as_str).collect();
            roles.sort_unstable();
            if *s.group != *roles.join(",") {
                s.group = roles.join(",").into();
            }
        }
        let p = hash(patient);
        s.hours.add(e.ms.div_euclid(HOUR_MS), p, e.event_id, cap);
        s.days.add(e.ms.div_euclid(DAY_MS), p, e.event_id, cap);
    }

    fn finish(mut self, c: &ReviewConfig) -> Vec<Finding> {
        let b = &c.breadth;
        // Peer pools: every active bucket of every subject in the group.
        let mut groups: HashMap<Box<str>, (Histogram, Histogram, usize)> = HashMap::new();
        for s in self.subjects.values_mut() {
            s.hours.close();
            s.days.close();
            let g = groups.entry(s.group.clone()).or_default();
            g.0.merge(&s.hours.counts);
            g.1.merge(&s.days.counts);
            g.2 += 1;
        }
        let peer_thresholds: HashMap<Box<str>, (Option<Peer>, Option<Peer>)> = groups
            .into_iter()
            .map(|(g, (hours, days, n))| {
                let enough = n >= b.min_peers;
                let peer = |v: &Histogram| {
                    (enough && !v.is_empty()).then(|| {
                        let (median, mad) = v.median_mad();
                        Peer {
                            median,
                            threshold: threshold(median, mad, b.k),
                            subjects: n,
                        }
                    })
                };
                let h = peer(&hours);
                let d = peer(&days);
                (g, (h, d))
            })
            .collect();
        let mut out = Vec::new();
        for (sub, s) in self.subjects {
            let (peer_h, peer_d) = peer_thresholds.get(&s.group).cloned().unwrap_or((None, None));
            for (series, unit, floor, min_baseline, peer, bucket_ms) in [
                (
                    s.hours,
                    "hour",
                    b.min_patients_per_hour,
                    b.min_baseline_hours,
                    peer_h,
                    HOUR_MS,
                ),
                (
                    s.days,
                    "day",
                    b.min_patients_per_day,
                    b.min_baseline_days,
                    peer_d,
                    DAY_MS,
                ),
            ] {
                let Some(best) = series.best else { continue };
                let counts = series.counts;
                let own = (counts.len() >= min_baseline as u64).then(|| {
                    let (median, mad) = counts.median_mad();
                    (median, threshold(median, mad, b.k))
                });
                if own.is_none() && peer.is_none() {
                    continue; // nothing to compare with
                }
                let limit = [
                    Some(f64::from(floor)),
                    own.map(|o| o.1),
                    peer.as_ref().map(|p| p.threshold),
                ]
                .into_iter()
                .flatten()
                .fold(0.0, f64::max);
                let over = |n: u32| f64::from(n) >= f64::from(floor) && f64::from(n) > limit;
                if !over(best.count) {
                    continue;
                }
                let others = counts.count_where(over).saturating_sub(1);
                let mut explanation = format!(
                    "{} distinct patients in the {unit} from {}",
                    best.count,
                    fmt_ms(best.id * bucket_ms)
                );
                match own {
                    Some((median, thr)) => explanation
                        .push_str(&format!("; own baseline median {median:.0}, threshold {thr:.1}")),
                    None => explanation.push_str("; too little history for an own baseline"),
                }
                match &peer {
                    Some(p) => explanation.push_str(&format!(
                        "; peers [{}] ({} subjects) median {:.0}, threshold {:.1}",
                        if s.group.is_empty() { "no roles" } else { &s.group },
                        p.subjects,
                        p.median,
                        p.threshold
                    )),
                    None => explanation.push_str("; too few peers with the same roles"),
                }
                if others > 0 {
                    explanation.push_str(&format!("; {others} other {unit}(s) over the threshold"));
                }
                let severity = if own.is_some() && peer.is_some() {
                    Severity::High
                } else {
                    Severity::Medium
                };
                out.push(finding(
                    Rule::Breadth,
                    severity,
                    Some(&sub),
                    s.client.as_deref(),
                    best.id * bucket_ms,
                    explanation,
                    best.evidence,
                ));
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Peer {
    median: f64,
    threshold: f64,
    subjects: usize,
}

// ---- off-hours ----

struct OffHours {
    roles: Vec<String>,
    schedule: String,
    client: Option<Box<str>>,
    first_ms: i64,
    evidence: Evidence,
}

fn off_hours(
    map: &mut HashMap<Box<str>, OffHours>,
    schedules: &[WorkingHours],
    sub: &str,
    e: &Ev<'_>,
    cap: usize,
) {
    let mut applicable = schedules.iter().filter(|w| w.applies_to(e.roles)).peekable();
    let Some(first) = applicable.peek().copied() else {
        return;
    };
    if applicable.any(|w| w.contains(e.ms)) {
        return;
    }
    let o = slot(map, sub, || OffHours {
        roles: first.roles.clone(),
        schedule: describe(first),
        client: e.client.map(Into::into),
        first_ms: e.ms,
        evidence: Evidence::default(),
    });
    o.evidence.push(e.event_id, cap);
}

fn describe(w: &WorkingHours) -> String {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let days: Vec<&str> = (0..7)
        .filter(|i| w.days & (1 << i) != 0)
        .map(|i| DAYS[i])
        .collect();
    let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    format!(
        "{} {}-{} {}",
        days.join(","),
        hm(w.hours.0),
        hm(w.hours.1),
        w.timezone
    )
}

// ---- probing ----

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ProbeKey {
    Subject(Box<str>),
    Client(Box<str>),
    Address(Box<str>),
}

#[derive(Default)]
struct Probe {
    /// The last `min_denials` denials: time, event id, reason.
    recent: VecDeque<(i64, Box<str>, Box<str>)>,
    in_burst: bool,
    last_ms: i64,
    bursts: u32,
    current: u64,
    peak: u64,
    first_ms: Option<i64>,
    client: Option<Box<str>>,
    reasons: BTreeMap<Box<str>, u64>,
    evidence: Evidence,
}

// ---- break-glass ----

#[derive(Default)]
struct BreakGlassUse {
    first_ms: Option<i64>,
    client: Option<Box<str>>,
    patients: HashSet<u64>,
    /// (time, patient) of the uses within the window.
    recent: VecDeque<(i64, u64)>,
    max_in_window: usize,
    /// Justification (hash) → (text shown, patients it was given for).
    justifications: HashMap<u64, (Box<str>, HashSet<u64>)>,
    evidence: Evidence,
}

// ---- restricted ----

struct Restricted {
    first_ms: i64,
    is_subject: bool,
    client: Option<Box<str>>,
    evidence: Evidence,
}

// ---- dormant ----

struct LastSeen {
    ms: i64,
    event_id: String,
}

// ---- token ----

#[derive(Default)]
struct Addresses {
    client: Option<Box<str>>,
    /// Address → (last seen, first event id from it in the window).
    seen: HashMap<Box<str>, (i64, Box<str>)>,
    in_episode: bool,
    episodes: u32,
    worst: usize,
    worst_ms: i64,
    addresses: Vec<Box<str>>,
    evidence: Evidence,
}
