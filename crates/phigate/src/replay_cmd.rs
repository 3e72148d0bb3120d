//! `phigate policy replay`: what a policy change would do to real traffic.
//!
//! Every recorded policy decision in an audit spool is decided again with a
//! new policy by the same pure core the gateway runs
//! ([`phigate_policy::prepare`] + [`phigate_policy::decide`]), from what the
//! record keeps: method, canonical path and `query`, the break-glass
//! `justification`, the client certificate, `ts` as the time of the
//! decision, and the token as the policy saw it (`iss`, `sub`,
//! `client_id`, `scopes_granted`, and `claims`: roles, `acr`, `amr`,
//! `auth_time`, `patient` and the claims conditions read). Decisions that
//! would change are reported allow→deny and deny→allow, grouped by route,
//! client and new reason, with example `event_id`s to look up in the chain.
//!
//! The chain is verified first; the spool is streamed, never loaded.
//!
//! Exit codes: 0 no allow→deny change; 1 some allowed request would now be
//! denied (for CI on a policy repository); 2 the replay could not run
//! (policy errors, unreadable spool, broken chain without `--allow-broken`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use phigate_audit::{verify, AuditRecord, Phase};
use phigate_policy::{Authn, Claims, HeaderList, HttpVersion, PolicySet, PolicySource, RawRequest, Reason};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Example `event_id`s kept per group of changes.
const EXAMPLES: usize = 3;

/// `phigate policy replay`.
pub fn run(
    policies: &Path,
    paths: &[PathBuf],
    since: Option<&str>,
    allow_broken: bool,
    json: bool,
) -> ExitCode {
    let since = match since.map(phigate_audit::report::parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return cannot(format!("--since: {e}")),
    };
    let policy = match load(policies) {
        Ok(p) => p,
        Err(d) => {
            for e in &d {
                eprintln!("{e}");
            }
            return cannot(format!("{}: {} policy error(s)", policies.display(), d.len()));
        }
    };
    let mut r = match replay(&policy, paths, since, allow_broken) {
        Ok(r) => r,
        Err(e) => return cannot(e),
    };
    r.policy = policies.display().to_string();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", r.to_text());
    }
    ExitCode::from(r.exit_code())
}

fn cannot(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("phigate policy replay: {e}");
    ExitCode::from(2)
}

/// A policy directory, or a single policy file.
fn load(path: &Path) -> Result<PolicySet, Vec<phigate_policy::Diagnostic>> {
    if path.is_file() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![phigate_policy::Diagnostic::new(
                &name,
                None,
                format!("cannot read: {e}"),
            )]
        })?;
        phigate_policy::compile(&[PolicySource::new(name, text)])
    } else {
        phigate_gateway::policy_loader::load_dir(path)
    }
}

/// Which way a decision changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    AllowToDeny,
    DenyToAllow,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::AllowToDeny => "allow_to_deny",
            Change::DenyToAllow => "deny_to_allow",
        }
    }
}

/// Requests whose decision would change the same way, on the same route,
/// for the same client, with the same new reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub count: u64,
    /// The reasons recorded for these requests, counted.
    pub recorded_reasons: BTreeMap<String, u64>,
    /// How many of them could not be replayed exactly (see [`Inexact`]).
    pub inexact: u64,
    /// The first few `event_id`s, in spool order.
    pub examples: Vec<String>,
}

/// (change, route, client_id, new reason).
type GroupKey = (Change, Option<String>, Option<String>, String);

/// Why a record was not decided again, or not exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inexact {
    /// Skipped: a batch/transaction Bundle or a `POST _search` form is
    /// decided on its body, which is never recorded.
    BodyNotRecorded,
    /// Skipped: a search-result page is decided as the search it continues,
    /// which the gateway remembered and the record does not name.
    SearchPage,
    /// Replayed: a record with a validated token but no `claims` (and so
    /// perhaps no `query`): written by a phigate before they were recorded.
    OlderRecord,
    /// Replayed: some claims were left out of the record (`truncated`).
    ClaimsTruncated,
    /// Replayed: the path, query or justification was cut to its bound.
    RequestTruncated,
    /// Replayed: a public route did not validate a token (none is
    /// recorded), and the new policy protects the route.
    TokenNotValidated,
}

impl Inexact {
    fn as_str(self) -> &'static str {
        match self {
            Inexact::BodyNotRecorded => "body_not_recorded",
            Inexact::SearchPage => "search_page",
            Inexact::OlderRecord => "older_record",
            Inexact::ClaimsTruncated => "claims_truncated",
            Inexact::RequestTruncated => "request_truncated",
            Inexact::TokenNotValidated => "token_not_validated",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Inexact::BodyNotRecorded => {
                "decided on a body that is never recorded (batch/transaction Bundle, POST _search form)"
            }
            Inexact::SearchPage => "a search-result page, decided as the search it continues (not recorded)",
            Inexact::OlderRecord => "written by an older phigate: no `claims` (nor `query`) recorded",
            Inexact::ClaimsTruncated => "claims left out of the record at its 4 KiB bound",
            Inexact::RequestTruncated => "path, query or justification cut to its bound",
            Inexact::TokenNotValidated => {
                "a public route: a token, if one was sent, was not validated nor recorded"
            }
        }
    }
}

/// Why a record is not a policy decision to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// `phase: outcome`: how a request with an earlier record ended.
    OutcomeRecord,
    /// Refused by the request's shape before the policy was consulted
    /// (bad target, method override, refused upgrade, unreadable body, …).
    RequestShape,
    /// Rate or concurrency limits.
    RateLimit,
    /// The audit pipeline, the issuer's keys or introspection, the session
    /// store: fail-closed refusals that say nothing about the policy.
    Infrastructure,
    /// Allowed by the policy, then refused for want of an upstream.
    Upstream,
    /// A reason this phigate does not know (a newer writer).
    UnknownReason,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::OutcomeRecord => "outcome_record",
            Skip::RequestShape => "request_shape",
            Skip::RateLimit => "rate_limit",
            Skip::Infrastructure => "infrastructure",
            Skip::Upstream => "upstream",
            Skip::UnknownReason => "unknown_reason",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Skip::OutcomeRecord => "outcome records (how an earlier recorded request ended)",
            Skip::RequestShape => "refused by the request's shape before the policy",
            Skip::RateLimit => "rate and concurrency limits",
            Skip::Infrastructure => "audit, key, introspection or session-store failures (fail closed)",
            Skip::Upstream => "refused after the policy allowed it: no upstream",
            Skip::UnknownReason => "reasons this phigate does not know",
        }
    }
}

/// Which records are skipped, by their recorded reason (the decision
/// itself for denials; failures after an allow are replayed as allows).
fn skip_of(decision: &str, reason: Option<Reason>) -> Option<Skip> {
    let Some(reason) = reason else {
        return Some(Skip::UnknownReason);
    };
    if decision == "allow" {
        return None;
    }
    Some(match reason {
        Reason::MissingToken => return None,
        r if r.is_invalid_token() => return None,
        Reason::StepUpRequired
        | Reason::InsufficientScope
        | Reason::NoMatchingRoute
        | Reason::OutsidePatientCompartment
        | Reason::ConditionFailed
        | Reason::OutsideTimeWindow
        | Reason::UnmappedInteraction
        | Reason::BreakGlassRejected => return None,
        Reason::RateLimited | Reason::ConcurrencyLimited => Skip::RateLimit,
        Reason::AuditUnavailable
        | Reason::KeysUnavailable
        | Reason::IntrospectionUnavailable
        | Reason::SessionStoreUnavailable => Skip::Infrastructure,
        Reason::NoUpstream | Reason::UpstreamUnavailable => Skip::Upstream,
        r if r.is_failure_after_allow() => Skip::Upstream,
        _ => Skip::RequestShape,
    })
}

/// The result of a replay.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The policy replayed with (as given on the command line).
    pub policy: String,
    pub policy_version: String,
    pub since: Option<String>,
    /// The chain verified.
    pub chain_ok: bool,
    /// The first problem of a broken chain (replayed with `--allow-broken`).
    pub chain_problem: Option<String>,
    /// Lines the verifier checked.
    pub chain_lines: u64,
    /// `access` records in the window.
    pub records: u64,
    /// Decisions made again.
    pub replayed: u64,
    pub unchanged: u64,
    /// Denials that stay denials with another reason.
    pub reason_changed: u64,
    pub groups: BTreeMap<GroupKey, Group>,
    /// Replayed, but not exactly (a record may count under several).
    pub inexact: BTreeMap<Inexact, u64>,
    /// Not replayed: what the decision needs was not recorded.
    pub not_replayed: BTreeMap<Inexact, u64>,
    /// Not policy decisions: by why, then by recorded reason.
    pub skipped: BTreeMap<Skip, BTreeMap<String, u64>>,
    /// Lines that are not records (only in a broken chain).
    pub unreadable_lines: u64,
}

impl Replay {
    /// Requests whose decision would change that way.
    pub fn count(&self, change: Change) -> u64 {
        self.groups
            .iter()
            .filter(|(k, _)| k.0 == change)
            .map(|(_, g)| g.count)
            .sum()
    }

    /// 1 when an allowed request would now be denied, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.count(Change::AllowToDeny) > 0)
    }

    /// Groups of one change, largest first.
    fn sorted(&self, change: Change) -> Vec<(&GroupKey, &Group)> {
        let mut v: Vec<_> = self.groups.iter().filter(|(k, _)| k.0 == change).collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        v
    }

    pub fn to_json(&self) -> Value {
        let groups = |change| {
            self.sorted(change)
                .into_iter()
                .map(|((_, route, client, reason), g)| {
                    json!({
                        "route": route,
                        "client_id": client,
                        "new_reason": reason,
                        "count": g.count,
                        "recorded_reasons": g.recorded_reasons,
                        "inexact": g.inexact,
                        "examples": g.examples,
                    })
                })
                .collect::<Vec<_>>()
        };
        let listed = |m: &BTreeMap<Inexact, u64>| {
            m.iter()
                .map(|(k, n)| json!({ "code": k.as_str(), "why": k.why(), "count": n }))
                .collect::<Vec<_>>()
        };
        let mut changes = Map::new();
        for c in [Change::AllowToDeny, Change::DenyToAllow] {
            changes.insert(c.as_str().to_string(), Value::Array(groups(c)));
        }
        json!({
            "policy": self.policy,
            "policy_version": self.policy_version,
            "since": self.since,
            "chain": {
                "ok": self.chain_ok,
                "lines": self.chain_lines,
                "problem": self.chain_problem,
                "replayed_anyway": !self.chain_ok,
            },
            "records": self.records,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "allow_to_deny": self.count(Change::AllowToDeny),
            "deny_to_allow": self.count(Change::DenyToAllow),
            "reason_changed": self.reason_changed,
            "changes": changes,
            "not_replayed": listed(&self.not_replayed),
            "inexact": listed(&self.inexact),
            "skipped": self.skipped.iter().map(|(k, reasons)| json!({
                "code": k.as_str(),
                "why": k.why(),
                "count": reasons.values().sum::<u64>(),
                "reasons": reasons,
            })).collect::<Vec<_>>(),
            "unreadable_lines": self.unreadable_lines,
        })
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let (a2d, d2a) = (self.count(Change::AllowToDeny), self.count(Change::DenyToAllow));
        let _ = writeln!(out, "policy:   {} ({})", self.policy, self.policy_version);
        if self.chain_ok {
            let _ = writeln!(out, "chain:    verified ({} lines)", self.chain_lines);
        } else {
            let _ = writeln!(
                out,
                "chain:    BROKEN, replayed anyway (--allow-broken): {}",
                self.chain_problem.as_deref().unwrap_or("?")
            );
        }
        if let Some(s) = &self.since {
            let _ = writeln!(out, "since:    {s}");
        }
        let _ = writeln!(
            out,
            "replayed: {} of {} access records: {} unchanged, {a2d} allow→deny, {d2a} deny→allow",
            self.replayed, self.records, self.unchanged
        );
        if self.reason_changed > 0 {
            let _ = writeln!(
                out,
                "          ({} denials would be denied for another reason)",
                self.reason_changed
            );
        }
        for (change, title) in [
            (Change::AllowToDeny, "allow → deny"),
            (Change::DenyToAllow, "deny → allow"),
        ] {
            let groups = self.sorted(change);
            if groups.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title} ({}):", self.count(change));
            for ((_, route, client, reason), g) in groups {
                let was: Vec<String> = g.recorded_reasons.keys().cloned().collect();
                let _ = write!(
                    out,
                    "  {:>6}  route {}  client {}  → {reason} (was {})",
                    g.count,
                    route.as_deref().unwrap_or("(none)"),
                    client.as_deref().unwrap_or("(none)"),
                    was.join(", ")
                );
                if g.inexact > 0 {
                    let _ = write!(out, "  [{} not exact]", g.inexact);
                }
                let _ = writeln!(out, "\n          e.g. {}", g.examples.join(" "));
            }
        }
        if !self.not_replayed.is_empty() {
            let n: u64 = self.not_replayed.values().sum();
            let _ = writeln!(out, "\nnot replayed ({n}):");
            for (k, n) in &self.not_replayed {
                let _ = writeln!(out, "  {n:>6}  {}", k.why());
            }
        }
        if !self.inexact.is_empty() {
            let _ = writeln!(out, "\nreplayed, not exactly:");
            for (k, n) in &self.inexact {
                let _ = writeln!(out, "  {n:>6}  {}", k.why());
            }
        }
        if !self.skipped.is_empty() {
            let n: u64 = self.skipped.values().flat_map(|m| m.values()).sum();
            let _ = writeln!(out, "\nskipped, not policy decisions ({n}):");
            for (k, reasons) in &self.skipped {
                let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
                let _ = writeln!(
                    out,
                    "  {:>6}  {}: {}",
                    reasons.values().sum::<u64>(),
                    k.why(),
                    list.join(", ")
                );
            }
        }
        if self.unreadable_lines > 0 {
            let _ = writeln!(out, "\nunreadable lines: {}", self.unreadable_lines);
        }
        if a2d > 0 {
            let _ = writeln!(
                out,
                "\n{a2d} request(s) allowed under the recorded policy would be DENIED by {}",
                self.policy
            );
        }
        out
    }
}

/// Verify the chain of `paths`, then replay every recorded policy decision
/// at or after `since` with `policy`. Streams the spool.
pub fn replay(
    policy: &PolicySet,
    paths: &[PathBuf],
    since: Option<OffsetDateTime>,
    allow_broken: bool,
) -> Result<Replay, String> {
    let verified = verify::verify(paths, &[]).map_err(|e| e.to_string())?;
    let mut r = Replay {
        policy_version: policy.version().to_string(),
        since: since.and_then(|s| s.format(&Rfc3339).ok()),
        chain_ok: verified.ok,
        chain_problem: verified.problem.as_ref().map(ToString::to_string),
        chain_lines: verified.records,
        ..Replay::default()
    };
    if !verified.ok && !allow_broken {
        return Err(format!(
            "the audit chain does not verify ({}); refusing to replay evidence that may have been altered (--allow-broken replays it anyway, marked)",
            r.chain_problem.as_deref().unwrap_or("?")
        ));
    }
    // Every access record at or after `since`, one at a time.
    let stats = phigate_audit::scan::scan(paths, since, |_, event_id, a| {
        r.records += 1;
        r.add(policy, a, event_id);
    })
    .map_err(|e| e.to_string())?;
    r.unreadable_lines += stats.unreadable_lines;
    Ok(r)
}

impl Replay {
    fn add(&mut self, policy: &PolicySet, a: &AuditRecord, event_id: &str) {
        let reason = Reason::from_name(&a.reason);
        let skip = if a.phase == Some(Phase::Outcome) {
            Some(Skip::OutcomeRecord)
        } else {
            skip_of(&a.decision, reason)
        };
        if let Some(skip) = skip {
            *self
                .skipped
                .entry(skip)
                .or_default()
                .entry(a.reason.clone())
                .or_default() += 1;
            return;
        }
        let Some(reason) = reason else { return };
        match replay_one(policy, a, reason) {
            Err(why) => *self.not_replayed.entry(why).or_default() += 1,
            Ok(done) => {
                self.replayed += 1;
                for i in &done.inexact {
                    *self.inexact.entry(*i).or_default() += 1;
                }
                let recorded_allow = a.decision == "allow";
                let change = match (recorded_allow, done.decision.is_allow()) {
                    (true, false) => Change::AllowToDeny,
                    (false, true) => Change::DenyToAllow,
                    (allow, _) => {
                        self.unchanged += 1;
                        if !allow && done.decision.reason != reason {
                            self.reason_changed += 1;
                        }
                        return;
                    }
                };
                let route = done
                    .decision
                    .route
                    .as_deref()
                    .map(str::to_string)
                    .or_else(|| a.route.clone());
                let key = (
                    change,
                    route,
                    a.client_id.clone(),
                    done.decision.reason.as_str().to_string(),
                );
                let g = self.groups.entry(key).or_default();
                g.count += 1;
                *g.recorded_reasons.entry(a.reason.clone()).or_default() += 1;
                if !done.inexact.is_empty() {
                    g.inexact += 1;
                }
                if g.examples.len() < EXAMPLES {
                    g.examples.push(event_id.to_string());
                }
            }
        }
    }
}

/// A record decided again.
#[derive(Debug)]
pub struct Replayed {
    pub decision: phigate_policy::Decision,
    /// Why the replay may differ from what the gateway would have decided.
    pub inexact: Vec<Inexact>,
}

/// Decide the request of record `a` (recorded with `reason`) again with
/// `policy`; `Err` when what the decision needs was not recorded.
pub fn replay_one(policy: &PolicySet, a: &AuditRecord, reason: Reason) -> Result<Replayed, Inexact> {
    let mut inexact = Vec::new();
    let target = match &a.query {
        Some(q) => format!("{}?{q}", a.path),
        None => a.path.clone(),
    };
    let mut headers = HeaderList::default();
    if let (Some(bg), Some(j)) = (policy.break_glass(), &a.justification) {
        headers.0.push((bg.header.clone(), j.clone().into_bytes()));
    }
    let now = OffsetDateTime::parse(&a.ts, &Rfc3339).map_or(0, OffsetDateTime::unix_timestamp);
    let version = match a.http_version.as_deref() {
        Some("HTTP/2" | "HTTP/2.0") => HttpVersion::Http2,
        Some("HTTP/1.0" | "HTTP/0.9") => HttpVersion::Http10,
        _ => HttpVersion::Http11,
    };
    let prepared = phigate_policy::prepare(
        policy,
        &RawRequest {
            method: &a.method,
            target: target.as_bytes(),
            version,
            headers: &headers,
            now,
            client_cert_sha256: a.client_cert.as_ref().map(|c| c.sha256.as_str()),
        },
    );
    if prepared.needs_body().is_some() {
        return Err(Inexact::BodyNotRecorded);
    }
    if prepared.is_paging_candidate() {
        return Err(Inexact::SearchPage);
    }
    let authn = authn_of(a, reason, &mut inexact);
    if matches!(authn, Authn::Missing) && reason == Reason::PublicRoute && prepared.needs_token() {
        inexact.push(Inexact::TokenNotValidated);
    }
    if ["path", "query", "justification"]
        .iter()
        .any(|f| a.truncated.contains_key(*f))
    {
        inexact.push(Inexact::RequestTruncated);
    }
    let decision = phigate_policy::decide(&prepared, None, &authn);
    Ok(Replayed { decision, inexact })
}

/// The authentication of a recorded request: `Missing` for `missing_token`
/// (and requests without a validated token), `Invalid` for a refused token,
/// else the token as recorded.
fn authn_of(a: &AuditRecord, reason: Reason, inexact: &mut Vec<Inexact>) -> Authn {
    if reason == Reason::MissingToken {
        return Authn::Missing;
    }
    if reason.is_invalid_token() {
        return Authn::Invalid(reason);
    }
    let Some(issuer) = a.iss.clone() else {
        return Authn::Missing;
    };
    let mut payload = Map::new();
    let mut roles = Vec::new();
    match &a.claims {
        Some(claims) => {
            for (path, value) in claims {
                set_path(&mut payload, path, value.clone());
            }
            if let Some(Value::Array(r)) = claims.get("roles") {
                roles = r.iter().filter_map(Value::as_str).map(str::to_string).collect();
            }
            if a.truncated.keys().any(|k| k.starts_with("claims.")) {
                inexact.push(Inexact::ClaimsTruncated);
            }
        }
        None => {
            inexact.push(Inexact::OlderRecord);
            // The best guess at the launch context: the recorded patient.
            if let Some(p) = &a.patient {
                payload.insert("patient".into(), Value::String(p.clone()));
            }
        }
    }
    if let Some(sub) = &a.sub {
        payload.entry("sub").or_insert_with(|| Value::String(sub.clone()));
    }
    Authn::Valid(Claims {
        issuer,
        subject: a.sub.clone(),
        client_id: a.client_id.clone(),
        scopes: a.scopes_granted.clone(),
        roles,
        claims: Arc::new(payload),
    })
}

/// Put `value` at the dotted `path` of `map`, making objects on the way
/// (`realm_access.roles` → `{"realm_access": {"roles": …}}`); a value
/// already in the way that is no object is left as it is.
fn set_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = map;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let next = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        match next {
            Value::Object(m) => cur = m,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phigate_audit::{Durability, Spool, SpoolOptions};
    use std::time::Duration;

    const BASE: &str = r#"
version: 1
break_glass:
  scope: emergency.phi.read
  header: X-Break-Glass-Reason
  read_only: true
routes:
  - { name: fhir-metadata, methods: [GET], path: /fhir/metadata, public: true }
  - { name: fhir, methods: ["*"], path: /fhir/**, fhir: { base: /fhir } }
  - { name: fhir-batch, methods: [GET, POST], path: /fhir, fhir: { base: /fhir } }
  - name: tenant-reports
    methods: [GET]
    path: /reports/{tenant}
    scopes: { any_of: [reports.read] }
    when:
      claims:
        - { claim: org.tenant, equals: { param: tenant } }
"#;

    fn policy(text: &str) -> PolicySet {
        phigate_policy::compile(&[PolicySource::new("p.yaml", text)]).unwrap()
    }

    /// Commit `records` to a new spool in `dir` with the audit crate's own
    /// writer; their `event_id`s.
    fn write_spool(dir: &Path, records: Vec<AuditRecord>) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let options = SpoolOptions {
                durability: Durability::None,
                compress_closed_segments: false,
                min_free_bytes: 0,
                shutdown_idle: Duration::ZERO,
                ..SpoolOptions::default()
            };
            let (spool, worker) = Spool::open(dir, options).unwrap();
            let (stop, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(worker.run(rx));
            let mut ids = Vec::new();
            for r in records {
                ids.push(spool.reserve().unwrap().commit(r).await.unwrap().event_id);
            }
            stop.send(true).unwrap();
            task.await.unwrap();
            ids
        })
    }

    /// A record as the gateway writes it for a request with a valid token.
    fn rec(
        method: &str,
        target: &str,
        decision: &str,
        reason: &str,
        scopes: &[&str],
        client: &str,
    ) -> AuditRecord {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        AuditRecord {
            ts: "2026-11-30T10:00:00.000Z".into(),
            request_id: "r".into(),
            decision: decision.into(),
            reason: reason.into(),
            status: if decision == "allow" { 200 } else { 403 },
            method: method.into(),
            path,
            query,
            route: Some("fhir".into()),
            sub: Some("alice".into()),
            client_id: Some(client.into()),
            iss: Some("https://idp.example".into()),
            scopes_granted: scopes.iter().map(|s| s.to_string()).collect(),
            claims: Some(BTreeMap::from([("roles".to_string(), json!([]))])),
            upstream_status: (decision == "allow").then_some(200),
            policy_version: "sha256:old".into(),
            ..AuditRecord::default()
        }
    }

    /// Traffic decided by [`BASE`], as recorded.
    fn traffic() -> Vec<AuditRecord> {
        let mut v = vec![
            rec(
                "GET",
                "/fhir/Patient/1",
                "allow",
                "allowed",
                &["user/Patient.rs"],
                "ehr",
            ),
            rec(
                "GET",
                "/fhir/Patient/2",
                "allow",
                "allowed",
                &["user/Patient.rs"],
                "ehr",
            ),
            rec(
                "GET",
                "/fhir/Observation?patient=1",
                "allow",
                "allowed",
                &["user/Observation.rs"],
                "ehr",
            ),
            rec(
                "GET",
                "/fhir/Observation?patient=1",
                "allow",
                "allowed",
                &["user/Observation.rs"],
                "lab",
            ),
            rec(
                "GET",
                "/fhir/Encounter/9",
                "deny",
                "insufficient_scope",
                &["user/Patient.rs"],
                "ehr",
            ),
            rec(
                "GET",
                "/admin",
                "deny",
                "no_matching_route",
                &["user/Patient.rs"],
                "ehr",
            ),
        ];
        // Break-glass read, allowed by its justification.
        let mut bg = rec(
            "GET",
            "/fhir/Condition/4",
            "allow",
            "break_glass",
            &["emergency.phi.read"],
            "ehr",
        );
        bg.justification = Some("ED: unconscious patient, no consent".into());
        bg.break_glass = true;
        v.push(bg);
        // A claim condition on a nested claim.
        let mut t = rec(
            "GET",
            "/reports/north",
            "allow",
            "allowed",
            &["reports.read"],
            "bi",
        );
        t.route = Some("tenant-reports".into());
        t.claims = Some(BTreeMap::from([
            ("org.tenant".to_string(), json!("north")),
            ("roles".to_string(), json!(["analyst"])),
        ]));
        v.push(t);
        // No token, an expired one, a public route.
        let mut missing = rec("GET", "/fhir/Patient/1", "deny", "missing_token", &[], "");
        (missing.iss, missing.sub, missing.client_id, missing.claims) = (None, None, None, None);
        v.push(missing);
        let mut expired = missing_like("token_expired");
        expired.status = 401;
        v.push(expired);
        let mut public = missing_like("public_route");
        (public.path, public.decision, public.route) = (
            "/fhir/metadata".into(),
            "allow".into(),
            Some("fhir-metadata".into()),
        );
        v.push(public);
        // Not policy decisions.
        let mut outcome = rec(
            "POST",
            "/fhir/Observation",
            "allow",
            "allowed",
            &["user/Observation.c"],
            "ehr",
        );
        outcome.phase = Some(Phase::Outcome);
        v.push(outcome);
        v.push(missing_like("rate_limited"));
        v.push(missing_like("bad_request_path"));
        v.push(missing_like("audit_unavailable"));
        // Needs its body.
        v.push(rec("POST", "/fhir", "allow", "allowed", &["user/*.cruds"], "ehr"));
        v
    }

    fn missing_like(reason: &str) -> AuditRecord {
        let mut r = rec("GET", "/fhir/Patient/1", "deny", reason, &[], "");
        (r.iss, r.sub, r.client_id, r.claims) = (None, None, None, None);
        r
    }

    fn run_replay(policy_text: &str, records: Vec<AuditRecord>) -> (Replay, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let ids = write_spool(dir.path(), records);
        let r = replay(&policy(policy_text), &[dir.path().to_path_buf()], None, false).unwrap();
        (r, ids)
    }

    #[test]
    fn the_unchanged_policy_changes_no_decision() {
        let (r, _) = run_replay(BASE, traffic());
        assert_eq!(r.records, 16);
        assert!(r.groups.is_empty(), "{}", r.to_text());
        assert_eq!(r.replayed, 11, "{}", r.to_text());
        assert_eq!(r.unchanged, 11);
        assert_eq!(r.reason_changed, 0);
        assert_eq!(r.exit_code(), 0);
        assert!(r.inexact.is_empty(), "{:?}", r.inexact);
        assert_eq!(r.not_replayed, BTreeMap::from([(Inexact::BodyNotRecorded, 1)]));
        let skipped: BTreeMap<&str, u64> = r
            .skipped
            .iter()
            .map(|(k, m)| (k.as_str(), m.values().sum()))
            .collect();
        assert_eq!(
            skipped,
            BTreeMap::from([
                ("outcome_record", 1),
                ("request_shape", 1),
                ("rate_limit", 1),
                ("infrastructure", 1)
            ])
        );
        assert!(r.chain_ok);
        let text = r.to_text();
        assert!(text.contains("0 allow→deny, 0 deny→allow"), "{text}");
    }

    #[test]
    fn a_stricter_policy_reports_allow_to_deny_by_route_client_and_reason() {
        // Observation searches now need a custom scope; the tenant condition
        // reads another claim; break-glass is gone.
        let stricter = r#"
version: 1
routes:
  - { name: fhir-metadata, methods: [GET], path: /fhir/metadata, public: true }
  - { name: fhir, methods: ["*"], path: /fhir/**, fhir: { base: /fhir } }
  - { name: fhir-batch, methods: [GET, POST], path: /fhir, fhir: { base: /fhir } }
  - { name: observation-search, methods: [GET], path: /fhir/Observation, scopes: { any_of: [observations.search] } }
  - name: tenant-reports
    methods: [GET]
    path: /reports/{tenant}
    scopes: { any_of: [reports.read] }
    when:
      claims:
        - { claim: org.tenant, equals: { param: tenant } }
        - { claim: roles, contains: { value: manager } }
"#;
        let (r, ids) = run_replay(stricter, traffic());
        let text = r.to_text();
        assert_eq!(r.count(Change::AllowToDeny), 4, "{text}");
        assert_eq!(r.count(Change::DenyToAllow), 0, "{text}");
        assert_eq!(r.exit_code(), 1);
        let key = |route: &str, client: &str, reason: &str| {
            (
                Change::AllowToDeny,
                Some(route.to_string()),
                Some(client.to_string()),
                reason.to_string(),
            )
        };
        let ehr = &r.groups[&key("observation-search", "ehr", "insufficient_scope")];
        assert_eq!((ehr.count, ehr.examples.clone()), (1, vec![ids[2].clone()]));
        let lab = &r.groups[&key("observation-search", "lab", "insufficient_scope")];
        assert_eq!(lab.examples, [ids[3].clone()]);
        assert_eq!(lab.recorded_reasons, BTreeMap::from([("allowed".to_string(), 1)]));
        let bg = &r.groups[&key("fhir", "ehr", "insufficient_scope")];
        assert_eq!(bg.examples, [ids[6].clone()]);
        assert_eq!(
            bg.recorded_reasons,
            BTreeMap::from([("break_glass".to_string(), 1)])
        );
        let tenant = &r.groups[&key("tenant-reports", "bi", "condition_failed")];
        assert_eq!(tenant.examples, [ids[7].clone()]);
        assert!(text.contains("allow → deny (4)"), "{text}");
        assert!(text.contains(&ids[2]), "{text}");
        let j = r.to_json();
        assert_eq!(j["allow_to_deny"], 4);
        assert_eq!(j["changes"]["allow_to_deny"].as_array().unwrap().len(), 4);
        // At most three examples per group.
        let many: Vec<AuditRecord> = (0..5)
            .map(|i| {
                rec(
                    "GET",
                    &format!("/fhir/Observation?patient={i}"),
                    "allow",
                    "allowed",
                    &["user/Observation.rs"],
                    "ehr",
                )
            })
            .collect();
        let (r, ids) = run_replay(stricter, many);
        let g = &r.groups[&key("observation-search", "ehr", "insufficient_scope")];
        assert_eq!(g.count, 5);
        assert_eq!(g.examples, ids[..3]);
    }

    #[test]
    fn a_looser_policy_reports_deny_to_allow() {
        let looser = format!("{BASE}  - {{ name: admin, methods: [GET], path: /admin, public: true }}\n");
        let (r, ids) = run_replay(&looser, traffic());
        assert_eq!(r.count(Change::AllowToDeny), 0);
        assert_eq!(r.count(Change::DenyToAllow), 1, "{}", r.to_text());
        assert_eq!(r.exit_code(), 0);
        let (key, g) = r.groups.iter().next().unwrap();
        assert_eq!(
            key,
            &(
                Change::DenyToAllow,
                Some("admin".to_string()),
                Some("ehr".to_string()),
                "public_route".to_string()
            )
        );
        assert_eq!(g.examples, [ids[5].clone()]);
        assert_eq!(
            g.recorded_reasons,
            BTreeMap::from([("no_matching_route".to_string(), 1)])
        );
        // A route made public lets the unauthenticated and expired requests through.
        let open = BASE.replace(
            "fhir: { base: /fhir } }\n  - { name: fhir-batch",
            "public: true }\n  - { name: fhir-batch",
        );
        let (r, _) = run_replay(&open, traffic());
        let by_reason: BTreeMap<&str, u64> = r
            .groups
            .iter()
            .filter(|(k, _)| k.0 == Change::DenyToAllow)
            .flat_map(|(_, g)| g.recorded_reasons.iter().map(|(k, n)| (k.as_str(), *n)))
            .collect();
        assert_eq!(by_reason["missing_token"], 1, "{}", r.to_text());
        assert_eq!(by_reason["token_expired"], 1);
        assert_eq!(by_reason["insufficient_scope"], 1);
    }

    #[test]
    fn records_without_query_or_claims_are_not_exactly_replayable() {
        let mut old = rec(
            "GET",
            "/fhir/Patient/1",
            "allow",
            "allowed",
            &["patient/Patient.rs"],
            "app",
        );
        old.claims = None;
        old.patient = Some("1".into());
        let mut cut = rec(
            "GET",
            "/reports/north",
            "deny",
            "condition_failed",
            &["reports.read"],
            "bi",
        );
        cut.truncated.insert(
            "claims.org.tenant".into(),
            phigate_audit::Truncation {
                length: 5000,
                sha256: "00".into(),
            },
        );
        let (r, _) = run_replay(BASE, vec![old, cut]);
        assert_eq!(r.replayed, 2);
        assert_eq!(r.unchanged, 2, "{}", r.to_text());
        assert_eq!(
            r.inexact,
            BTreeMap::from([(Inexact::OlderRecord, 1), (Inexact::ClaimsTruncated, 1)])
        );
        let text = r.to_text();
        assert!(
            text.contains("older phigate") && text.contains("4 KiB bound"),
            "{text}"
        );
    }

    #[test]
    fn a_broken_chain_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        write_spool(dir.path(), traffic());
        let seg = phigate_audit::segment::list_segments(dir.path()).unwrap()[0]
            .1
            .clone();
        let text = std::fs::read_to_string(&seg).unwrap();
        std::fs::write(&seg, text.replacen("\"/admin\"", "\"/admim\"", 1)).unwrap();
        let paths = [dir.path().to_path_buf()];
        let err = replay(&policy(BASE), &paths, None, false).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let r = replay(&policy(BASE), &paths, None, true).unwrap();
        assert!(!r.chain_ok);
        assert!(r.to_text().contains("BROKEN"));
        assert_eq!(r.to_json()["chain"]["replayed_anyway"], true);
    }

    #[test]
    fn command_line_parses_and_errors_exit_2() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from([
            "phigate",
            "policy",
            "replay",
            "--policies",
            "new/",
            "spool/",
            "old-spool/",
            "--since",
            "7d",
            "--allow-broken",
            "--json",
        ])
        .unwrap();
        match cli.command {
            crate::Command::Policy {
                command:
                    crate::PolicyCommand::Replay {
                        policies,
                        paths,
                        since,
                        allow_broken,
                        json,
                    },
            } => {
                assert_eq!(policies, PathBuf::from("new/"));
                assert_eq!(paths.len(), 2);
                assert_eq!(since.as_deref(), Some("7d"));
                assert!(allow_broken && json);
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::Cli::try_parse_from(["phigate", "policy", "replay", "spool/"]).is_err());
        assert!(crate::Cli::try_parse_from(["phigate", "policy", "replay", "--policies", "p"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, BASE).unwrap();
        let missing = [dir.path().join("no-spool")];
        assert_eq!(run(&p, &missing, None, false, false), ExitCode::from(2));
        assert_eq!(
            run(&p, &missing, Some("whenever"), false, false),
            ExitCode::from(2)
        );
        assert_eq!(
            run(&dir.path().join("nope"), &missing, None, false, false),
            ExitCode::from(2)
        );
        write_spool(&dir.path().join("spool"), traffic());
        let spool = [dir.path().join("spool")];
        assert_eq!(
            run(&p, &spool, Some("2026-01-01T00:00:00Z"), false, true),
            ExitCode::from(0)
        );
    }

    #[test]
    fn since_limits_the_window_and_dotted_claims_nest() {
        let mut early = rec(
            "GET",
            "/fhir/Patient/1",
            "allow",
            "allowed",
            &["user/Patient.rs"],
            "ehr",
        );
        early.ts = "2020-01-01T00:00:00.000Z".into();
        let late = rec(
            "GET",
            "/fhir/Patient/1",
            "allow",
            "allowed",
            &["user/Patient.rs"],
            "ehr",
        );
        let dir = tempfile::tempdir().unwrap();
        write_spool(dir.path(), vec![early, late]);
        let since = OffsetDateTime::parse("2025-01-01T00:00:00Z", &Rfc3339).unwrap();
        let r = replay(&policy(BASE), &[dir.path().to_path_buf()], Some(since), false).unwrap();
        assert_eq!((r.records, r.replayed), (1, 1));
        let mut m = Map::new();
        set_path(&mut m, "a.b.c", json!(1));
        set_path(&mut m, "a.d", json!(2));
        set_path(&mut m, "x", json!("s"));
        set_path(&mut m, "x.y", json!(3));
        assert_eq!(Value::Object(m), json!({"a": {"b": {"c": 1}, "d": 2}, "x": "s"}));
    }
}
