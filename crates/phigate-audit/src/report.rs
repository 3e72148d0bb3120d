//! `phigate audit report`: who was granted what, what they used, denials,
//! break-glass use and how many patients each user reached.
//!
//! "Used" scopes: a granted scope counts as used when the record's
//! `scope_used` names it (the gateway records the grants that satisfied each
//! allowed request). For records without `scope_used` (older spools), a
//! granted scope `g` counts as used when, for an
//! *allowed* record, `g` alone satisfies at least one of the record's
//! `scopes_required` entries (the policy core's own
//! [`phigate_policy::scope_satisfied`]). Granted scopes never used are the
//! "unused or abused scopes [that] are compliance risks": a principal with any
//! is flagged over-granted. Identity and launch-context scopes (`openid`,
//! `fhirUser`, `profile`, `offline_access`, `online_access`, `launch`,
//! `launch/…`) authorise no FHIR data access, so they are listed apart and
//! never count as unused.
//!
//! Patient ids never appear in the per-principal sections, only their count;
//! break-glass events name the patient, because each one must be reviewed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::record::{RecordBody, SpoolRecord};
use crate::segment::open_segment;
use crate::verify::segment_files;
use crate::{AuditError, AuditRecord, LogoutDecision, LogoutRecord, LogoutSource, Phase};

/// The report. Its JSON form is a stable structure (fields are only added).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageReport {
    /// Only records at or after this instant were counted (RFC 3339).
    pub since: Option<String>,
    /// Access records read (a request with effects has two: intent and
    /// outcome; per-principal `requests` count each request once).
    pub records: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Lines that could not be read as records (run `audit verify`).
    pub unreadable_lines: u64,
    /// Access records without a validated token (no client, no subject).
    pub unauthenticated: u64,
    /// Per `client_id`, sorted by id.
    pub clients: Vec<PrincipalUsage>,
    /// Per `sub`, sorted by id.
    pub subjects: Vec<PrincipalUsage>,
    /// Clients with granted scopes they never used.
    pub over_granted_clients: Vec<String>,
    /// Every denial, by reason.
    pub denials_by_reason: BTreeMap<String, u64>,
    pub break_glass: Vec<BreakGlassEvent>,
    /// Allowed requests that did not end well, by reason
    /// (`upstream_timeout`, `upstream_incomplete`, `client_aborted`,
    /// `aborted_shutdown`, …), counted once per request.
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Requests with effects whose `intent` record has no `outcome` in the
    /// records read: still in flight when the spool was read, or cut off by
    /// a crash (`kill -9`, power loss) — the upstream may have executed them.
    pub open_intents: Vec<OpenIntent>,
    /// Session logouts (`logout` records): back-channel logouts and
    /// administrators' revocations.
    pub logouts: LogoutSummary,
}

/// The `logout` records read (see [`UsageReport::logouts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogoutSummary {
    /// Logouts carried out (`decision: allow`).
    pub accepted: u64,
    /// Logouts refused (`decision: deny`).
    pub refused: u64,
    /// Of all logouts, those asked for by an administrator (`source: admin`).
    pub admin: u64,
    /// Every refusal, by reason (`logout_token_bad_signature`, …).
    pub refused_by_reason: BTreeMap<String, u64>,
}

/// An `intent` record without its `outcome` (see [`UsageReport::open_intents`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenIntent {
    pub seq: u64,
    pub event_id: String,
    pub ts: String,
    pub request_id: String,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrincipalUsage {
    pub id: String,
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Union of the scopes granted in this principal's records (data scopes).
    pub scopes_granted: Vec<String>,
    pub scopes_used: Vec<String>,
    /// Granted, never used: the compliance risk.
    pub scopes_unused: Vec<String>,
    /// Identity / launch-context scopes (not judged).
    pub context_scopes: Vec<String>,
    pub over_granted: bool,
    pub denials_by_reason: BTreeMap<String, u64>,
    /// Distinct patients reached by allowed requests (a count, never the ids).
    pub patients_accessed: u64,
    pub break_glass: u64,
}

/// One break-glass (emergency access) attempt or use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlassEvent {
    pub ts: String,
    pub seq: u64,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub method: String,
    pub path: String,
    pub patient: Option<String>,
    pub justification: Option<String>,
    pub decision: String,
    pub reason: String,
}

/// `--since`: an RFC 3339 instant, or a duration before now (`24h`, `7d`, `90m`).
pub fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    parse_since_at(text, OffsetDateTime::now_utc())
}

/// [`parse_since`] relative to `now`.
pub fn parse_since_at(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is neither an RFC 3339 time nor a duration like 24h: {e}"))?;
    Ok(now - d)
}

/// Build the report from spool directories or segment files (plain or
/// zstd-compressed, decoded as a stream). Does not check the chain (that is
/// `audit verify`).
pub fn report(paths: &[PathBuf], since: Option<OffsetDateTime>) -> Result<UsageReport, AuditError> {
    let mut b = Builder::default();
    b.report.since = since.and_then(|s| s.format(&Rfc3339).ok());
    for path in segment_files(paths)? {
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let reader = open_segment(&path).map_err(io)?;
        for line in reader.split(b'\n') {
            let line = line.map_err(io)?;
            let record = match serde_json::from_slice::<SpoolRecord>(&line) {
                Ok(r) => r,
                Err(_) => {
                    b.report.unreadable_lines += 1;
                    continue;
                }
            };
            let ts = match &record.body {
                RecordBody::Access(a) => &a.record.ts,
                RecordBody::Logout(l) => &l.ts,
                RecordBody::Recovery(_) | RecordBody::Checkpoint(_) => continue,
            };
            if let Some(since) = since {
                match OffsetDateTime::parse(ts, &Rfc3339) {
                    Ok(ts) if ts >= since => {}
                    Ok(_) => continue,
                    Err(_) => {
                        b.report.unreadable_lines += 1;
                        continue;
                    }
                }
            }
            match &record.body {
                RecordBody::Access(a) => b.add(record.seq, &record.event_id, &a.record),
                RecordBody::Logout(l) => b.add_logout(l),
                RecordBody::Recovery(_) | RecordBody::Checkpoint(_) => {}
            }
        }
    }
    Ok(b.finish())
}

#[derive(Default)]
struct Acc {
    requests: u64,
    allowed: u64,
    denied: u64,
    granted: BTreeSet<String>,
    used: BTreeSet<String>,
    denials: BTreeMap<String, u64>,
    patients: HashSet<String>,
    break_glass: u64,
}

#[derive(Default)]
struct Builder {
    report: UsageReport,
    clients: BTreeMap<String, Acc>,
    subjects: BTreeMap<String, Acc>,
    /// (granted, required) → satisfied; scope parsing is the expensive part.
    satisfied: HashMap<(String, String), bool>,
    /// Intents not yet completed, by event id.
    open: BTreeMap<String, OpenIntent>,
}

/// Scopes that authorise no FHIR data access by themselves (SMART App Launch).
pub fn is_context_scope(scope: &str) -> bool {
    matches!(
        scope,
        "openid" | "fhirUser" | "profile" | "offline_access" | "online_access" | "launch"
    ) || scope.starts_with("launch/")
}

impl Builder {
    fn add(&mut self, seq: u64, event_id: &str, r: &AuditRecord) {
        let rep = &mut self.report;
        rep.records += 1;
        let failed = r.decision == "allow" && r.reason != "allowed";
        match r.phase {
            Some(Phase::Outcome) => {
                // Completes a request counted at its first record.
                if let Some(first) = &r.completes {
                    self.open.remove(first);
                }
                if failed {
                    *rep.failures_by_reason.entry(r.reason.clone()).or_default() += 1;
                }
                return;
            }
            Some(Phase::Intent) => {
                self.open.insert(
                    event_id.to_string(),
                    OpenIntent {
                        seq,
                        event_id: event_id.to_string(),
                        ts: r.ts.clone(),
                        request_id: r.request_id.clone(),
                        sub: r.sub.clone(),
                        client_id: r.client_id.clone(),
                        method: r.method.clone(),
                        path: r.path.clone(),
                    },
                );
            }
            None if failed => {
                *rep.failures_by_reason.entry(r.reason.clone()).or_default() += 1;
            }
            None => {}
        }
        if rep.first_ts.as_ref().is_none_or(|t| r.ts < *t) {
            rep.first_ts = Some(r.ts.clone());
        }
        if rep.last_ts.as_ref().is_none_or(|t| r.ts > *t) {
            rep.last_ts = Some(r.ts.clone());
        }
        let allowed = r.decision == "allow";
        if !allowed {
            *rep.denials_by_reason.entry(r.reason.clone()).or_default() += 1;
        }
        if r.break_glass {
            rep.break_glass.push(BreakGlassEvent {
                ts: r.ts.clone(),
                seq,
                sub: r.sub.clone(),
                client_id: r.client_id.clone(),
                method: r.method.clone(),
                path: r.path.clone(),
                patient: r.patient.clone(),
                justification: r.justification.clone(),
                decision: r.decision.clone(),
                reason: r.reason.clone(),
            });
        }
        if r.client_id.is_none() && r.sub.is_none() {
            rep.unauthenticated += 1;
            return;
        }
        let used: Vec<&String> = if allowed && !r.scope_used.is_empty() {
            // Recorded by the gateway: exactly the grants that satisfied it.
            r.scopes_granted
                .iter()
                .filter(|g| r.scope_used.contains(g))
                .collect()
        } else if allowed {
            // Records written before `scope_used` existed: infer from what
            // the route required.
            let mut used = Vec::new();
            for g in &r.scopes_granted {
                if r.scopes_required.iter().any(|req| self.satisfies(g, req)) {
                    used.push(g);
                }
            }
            used
        } else {
            Vec::new()
        };
        for (map, id) in [(&mut self.clients, &r.client_id), (&mut self.subjects, &r.sub)] {
            let Some(id) = id else { continue };
            let acc = map.entry(id.clone()).or_default();
            acc.requests += 1;
            if allowed {
                acc.allowed += 1;
                if let Some(p) = &r.patient {
                    acc.patients.insert(p.clone());
                }
            } else {
                acc.denied += 1;
                *acc.denials.entry(r.reason.clone()).or_default() += 1;
            }
            if r.break_glass {
                acc.break_glass += 1;
            }
            for g in &r.scopes_granted {
                if !acc.granted.contains(g) {
                    acc.granted.insert(g.clone());
                }
            }
            for g in &used {
                if !acc.used.contains(*g) {
                    acc.used.insert((*g).clone());
                }
            }
        }
    }

    fn add_logout(&mut self, l: &LogoutRecord) {
        let s = &mut self.report.logouts;
        match l.decision {
            LogoutDecision::Allow => s.accepted += 1,
            LogoutDecision::Deny => {
                s.refused += 1;
                *s.refused_by_reason.entry(l.reason.clone()).or_default() += 1;
            }
        }
        if l.source == LogoutSource::Admin {
            s.admin += 1;
        }
    }

    fn satisfies(&mut self, granted: &str, required: &str) -> bool {
        if granted == required {
            return true;
        }
        let key = (granted.to_owned(), required.to_owned());
        *self.satisfied.entry(key).or_insert_with(|| {
            let g = [granted.to_owned()];
            phigate_policy::scope_satisfied(required, &g, &phigate_policy::smart::granted(&g))
        })
    }

    fn finish(mut self) -> UsageReport {
        self.report.open_intents = std::mem::take(&mut self.open).into_values().collect();
        self.report.open_intents.sort_by_key(|o| o.seq);
        let usage = |(id, acc): (String, Acc)| {
            let (context, data): (Vec<String>, Vec<String>) =
                acc.granted.into_iter().partition(|s| is_context_scope(s));
            let unused: Vec<String> = data.iter().filter(|s| !acc.used.contains(*s)).cloned().collect();
            PrincipalUsage {
                id,
                requests: acc.requests,
                allowed: acc.allowed,
                denied: acc.denied,
                over_granted: !unused.is_empty(),
                scopes_granted: data,
                scopes_used: acc.used.into_iter().filter(|s| !is_context_scope(s)).collect(),
                scopes_unused: unused,
                context_scopes: context,
                denials_by_reason: acc.denials,
                patients_accessed: acc.patients.len() as u64,
                break_glass: acc.break_glass,
            }
        };
        self.report.clients = std::mem::take(&mut self.clients).into_iter().map(usage).collect();
        self.report.subjects = std::mem::take(&mut self.subjects)
            .into_iter()
            .map(usage)
            .collect();
        self.report.over_granted_clients = self
            .report
            .clients
            .iter()
            .filter(|c| c.over_granted)
            .map(|c| c.id.clone())
            .collect();
        self.report
    }
}

impl UsageReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let span = match (&self.first_ts, &self.last_ts) {
            (Some(a), Some(b)) => format!(", {a} .. {b}"),
            _ => String::new(),
        };
        let since = self
            .since
            .as_ref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "audit report: {} access record(s){since}{span}",
            self.records
        );
        if self.unreadable_lines > 0 {
            let _ = writeln!(
                out,
                "warning: {} line(s) could not be read as records; run `phigate audit verify`",
                self.unreadable_lines
            );
        }
        if self.unauthenticated > 0 {
            let _ = writeln!(out, "requests without a valid token: {}", self.unauthenticated);
        }
        for (title, list) in [("Clients", &self.clients), ("Subjects", &self.subjects)] {
            let _ = writeln!(out, "\n{title} ({})", list.len());
            for p in list {
                let flag = if p.over_granted { "  [OVER-GRANTED]" } else { "" };
                let _ = writeln!(
                    out,
                    "  {}: {} request(s), {} allowed, {} denied, {} patient(s) accessed{}{flag}",
                    p.id,
                    p.requests,
                    p.allowed,
                    p.denied,
                    p.patients_accessed,
                    if p.break_glass > 0 {
                        format!(", {} break-glass", p.break_glass)
                    } else {
                        String::new()
                    }
                );
                let _ = writeln!(out, "    granted: {}", join(&p.scopes_granted));
                let _ = writeln!(out, "    used:    {}", join(&p.scopes_used));
                if !p.scopes_unused.is_empty() {
                    let _ = writeln!(out, "    UNUSED:  {}", join(&p.scopes_unused));
                }
                if !p.context_scopes.is_empty() {
                    let _ = writeln!(out, "    context: {}", join(&p.context_scopes));
                }
                if !p.denials_by_reason.is_empty() {
                    let d: Vec<String> = p
                        .denials_by_reason
                        .iter()
                        .map(|(r, n)| format!("{r} {n}"))
                        .collect();
                    let _ = writeln!(out, "    denials: {}", d.join(", "));
                }
            }
        }
        let _ = writeln!(out, "\nDenials by reason");
        if self.denials_by_reason.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for (reason, n) in &self.denials_by_reason {
            let _ = writeln!(out, "  {reason:<32} {n}");
        }
        let _ = writeln!(out, "\nBreak-glass events ({})", self.break_glass.len());
        for e in &self.break_glass {
            let _ = writeln!(
                out,
                "  {} seq {} {} sub={} client={} {} {} patient={} justification={:?}",
                e.ts,
                e.seq,
                e.decision,
                e.sub.as_deref().unwrap_or("-"),
                e.client_id.as_deref().unwrap_or("-"),
                e.method,
                e.path,
                e.patient.as_deref().unwrap_or("-"),
                e.justification.as_deref().unwrap_or(""),
            );
        }
        if !self.failures_by_reason.is_empty() {
            let _ = writeln!(out, "\nAllowed requests that failed, by reason");
            for (reason, n) in &self.failures_by_reason {
                let _ = writeln!(out, "  {reason:<32} {n}");
            }
        }
        if !self.open_intents.is_empty() {
            let _ = writeln!(
                out,
                "\nOpen intents ({}): forwarded, no outcome recorded — in flight when read, or cut off by a crash; check the upstream",
                self.open_intents.len()
            );
            for o in &self.open_intents {
                let _ = writeln!(
                    out,
                    "  {} seq {} request {} sub={} client={} {} {}",
                    o.ts,
                    o.seq,
                    o.request_id,
                    o.sub.as_deref().unwrap_or("-"),
                    o.client_id.as_deref().unwrap_or("-"),
                    o.method,
                    o.path
                );
            }
        }
        let l = &self.logouts;
        if l.accepted + l.refused > 0 {
            let _ = writeln!(
                out,
                "\nLogouts: {} accepted, {} refused ({} by an administrator)",
                l.accepted, l.refused, l.admin
            );
            for (reason, n) in &l.refused_by_reason {
                let _ = writeln!(out, "  refused {reason:<24} {n}");
            }
        }
        if !self.over_granted_clients.is_empty() {
            let _ = writeln!(
                out,
                "\nOver-granted clients ({}): {} — unused or abused scopes are compliance risks; reduce their grants",
                self.over_granted_clients.len(),
                self.over_granted_clients.join(", ")
            );
        }
        out
    }
}

fn join(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "-".into()
    } else {
        scopes.join(" ")
    }
}
