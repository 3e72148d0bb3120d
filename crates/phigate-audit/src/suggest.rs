//! `phigate policy suggest`: least privilege from observed use.
//!
//! For every allowed request (its first record: `outcome` follow-ups are
//! skipped, an `intent` counts as the request) the gateway recorded in
//! `scope_used` the granted scopes that satisfied it. Per client this module
//! derives:
//!
//! - **used**: every scope named in `scope_used`;
//! - **suggested**: the smallest set of scopes that would still have allowed
//!   every one of those requests, by a greedy set cover. A request whose
//!   `scope_used` names one scope needs that scope. A request whose
//!   `scope_used` names several is either met by any one of them alone (an
//!   `user/*.cruds` next to `user/Patient.rs`) or only by them together
//!   (`user/Patient.r` + `user/Patient.s` adding up to `.rs`, an `all_of`
//!   route): a scope counts as sufficient alone when it satisfies every
//!   entry of `scopes_required` that the whole `scope_used` set satisfied
//!   (conservative: when in doubt, all of them are kept). Among
//!   alternatives a named scope is preferred over a wildcard (`*`) one, then
//!   the scope that covers the most remaining requests;
//! - **unused**: data scopes granted (`scopes_granted`) and never used.
//!   Identity and launch-context scopes (`openid`, `fhirUser`, `launch/…`)
//!   authorise no data access; they are kept in the suggested grant as
//!   granted and never called unused.
//!
//! With role proposals, subjects are grouped by the suggested set computed
//! the same way from their own requests.
//!
//! Records written before `scope_used` existed: a granted scope counts as
//! satisfying the request when it alone satisfies one of `scopes_required`.
//!
//! Only what happened in the window is seen: a scope used once a quarter or
//! once a year looks unused in a 30-day window. The text output says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::html::LeastPrivilegeRow;
use crate::report::is_context_scope;
pub use crate::scan::{scan, ScanStats};
use crate::{AuditError, AuditRecord, Phase};

/// What one client used, and the grant that would have sufficed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientSuggestion {
    pub client: String,
    /// Allowed requests that needed a scope (public routes excluded).
    pub allowed_requests: u64,
    /// Denied requests (for context; they do not shape the suggestion).
    pub denied_requests: u64,
    /// Data scopes granted in any of the client's records.
    pub granted: Vec<String>,
    /// Identity / launch-context scopes granted (kept as they are).
    pub context_scopes: Vec<String>,
    /// Every scope that satisfied one of its allowed requests.
    pub used: Vec<String>,
    /// The minimal data-scope set that would have allowed every request.
    pub suggested: Vec<String>,
    /// Granted data scopes never used.
    pub unused: Vec<String>,
    /// Used, but not needed once `suggested` is granted (another suggested
    /// scope covers each request it satisfied).
    pub redundant: Vec<String>,
    /// A ready-to-paste YAML snippet of the suggested grant.
    pub yaml: String,
}

/// A proposed role: subjects with the same (suggested) used-scope set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoleProposal {
    pub name: String,
    pub scopes: Vec<String>,
    /// The subjects it covers, sorted.
    pub subjects: Vec<String>,
}

/// The result of [`UsageAccumulator::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Suggestions {
    /// Per client, sorted by id.
    pub clients: Vec<ClientSuggestion>,
    /// Role proposals, most subjects first.
    pub roles: Vec<RoleProposal>,
    /// The first and last record seen (RFC 3339).
    pub window_from: Option<String>,
    pub window_to: Option<String>,
    /// Access records given to [`UsageAccumulator::add`].
    pub records: u64,
}

/// One allowed request's scope need: any one of `any` alone, or all of `all`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Need {
    /// Any one of these scopes alone would have allowed the request.
    Any(BTreeSet<String>),
    /// Only these scopes together would have.
    All(BTreeSet<String>),
}

#[derive(Debug, Default)]
struct Usage {
    allowed: u64,
    denied: u64,
    granted: BTreeSet<String>,
    used: BTreeSet<String>,
    /// Distinct needs, with how many requests had each.
    needs: HashMap<Need, u64>,
}

/// Streams access records and keeps, per client and per subject, only scope
/// sets and distinct needs: memory grows with the variety of requests, not
/// their number.
#[derive(Debug, Default)]
pub struct UsageAccumulator {
    records: u64,
    first: Option<String>,
    last: Option<String>,
    clients: BTreeMap<String, Usage>,
    subjects: BTreeMap<String, Usage>,
    /// (scope, required) → scope alone satisfies required.
    satisfied: HashMap<(String, String), bool>,
}

impl UsageAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one access record (any decision, any phase).
    pub fn add(&mut self, r: &AuditRecord) {
        self.records += 1;
        if self.first.as_ref().is_none_or(|t| r.ts < *t) {
            self.first = Some(r.ts.clone());
        }
        if self.last.as_ref().is_none_or(|t| r.ts > *t) {
            self.last = Some(r.ts.clone());
        }
        // An outcome completes a request already counted at its first record.
        if r.phase == Some(Phase::Outcome) {
            return;
        }
        let allowed = r.decision == "allow";
        let need = if allowed { self.need(r) } else { None };
        if allowed && need.is_none() {
            // Public route, or nothing recorded to learn from.
            return;
        }
        for (map, id) in [(&mut self.clients, &r.client_id), (&mut self.subjects, &r.sub)] {
            let Some(id) = id else { continue };
            let u = map.entry(id.clone()).or_default();
            for g in &r.scopes_granted {
                if !u.granted.contains(g) {
                    u.granted.insert(g.clone());
                }
            }
            match &need {
                None => u.denied += 1,
                Some(n) => {
                    u.allowed += 1;
                    let scopes = match n {
                        Need::Any(s) | Need::All(s) => s,
                    };
                    if r.scope_used.is_empty() {
                        u.used.extend(scopes.iter().cloned());
                    } else {
                        u.used.extend(r.scope_used.iter().cloned());
                    }
                    if let Some(c) = u.needs.get_mut(n) {
                        *c += 1;
                    } else {
                        u.needs.insert(n.clone(), 1);
                    }
                }
            }
        }
    }

    /// What an allowed request needed; `None` when it needed no scope.
    fn need(&mut self, r: &AuditRecord) -> Option<Need> {
        let used: BTreeSet<String> = r.scope_used.iter().cloned().collect();
        if used.len() == 1 {
            return Some(Need::Any(used));
        }
        if used.is_empty() {
            // Before `scope_used`: the granted scopes that alone satisfy a requirement.
            let any: BTreeSet<String> = r
                .scopes_granted
                .iter()
                .filter(|g| r.scopes_required.iter().any(|req| self.satisfies(g, req)))
                .cloned()
                .collect();
            return (!any.is_empty()).then_some(Need::Any(any));
        }
        // Several scopes together satisfied it: which requirement entries did
        // the whole set meet, and which single scope meets them all?
        let met: Vec<&String> = r
            .scopes_required
            .iter()
            .filter(|req| self.set_satisfies(&used, req))
            .collect();
        if met.is_empty() {
            return Some(Need::All(used));
        }
        let alone: BTreeSet<String> = used
            .iter()
            .filter(|u| met.iter().all(|req| self.satisfies(u, req)))
            .cloned()
            .collect();
        Some(if alone.is_empty() {
            Need::All(used)
        } else {
            Need::Any(alone)
        })
    }

    fn satisfies(&mut self, scope: &str, required: &str) -> bool {
        if scope == required {
            return true;
        }
        let key = (scope.to_owned(), required.to_owned());
        *self.satisfied.entry(key).or_insert_with(|| {
            let g = [scope.to_owned()];
            phigate_policy::scope_satisfied(required, &g, &phigate_policy::smart::granted(&g))
        })
    }

    fn set_satisfies(&self, set: &BTreeSet<String>, required: &str) -> bool {
        if set.contains(required) {
            return true;
        }
        let g: Vec<String> = set.iter().cloned().collect();
        phigate_policy::scope_satisfied(required, &g, &phigate_policy::smart::granted(&g))
    }

    /// The suggestions, per client and (role proposals) per subject.
    pub fn finish(self) -> Suggestions {
        let (window_from, window_to) = (self.first, self.last);
        let clients = self
            .clients
            .into_iter()
            .map(|(client, u)| client_suggestion(client, u, &window_from, &window_to))
            .collect();
        let mut groups: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        for (sub, u) in self.subjects {
            let set = minimal_cover(&u.needs);
            let data: Vec<String> = set.into_iter().filter(|s| !is_context_scope(s)).collect();
            if !data.is_empty() {
                groups.entry(data).or_default().push(sub);
            }
        }
        let mut groups: Vec<(Vec<String>, Vec<String>)> = groups.into_iter().collect();
        // Most subjects first; ties by scope list, for a stable numbering.
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        let roles = groups
            .into_iter()
            .enumerate()
            .map(|(i, (scopes, subjects))| RoleProposal {
                name: format!("proposed-role-{}", i + 1),
                scopes,
                subjects,
            })
            .collect();
        Suggestions {
            clients,
            roles,
            window_from,
            window_to,
            records: self.records,
        }
    }
}

fn client_suggestion(
    client: String,
    u: Usage,
    from: &Option<String>,
    to: &Option<String>,
) -> ClientSuggestion {
    let suggested: Vec<String> = minimal_cover(&u.needs)
        .into_iter()
        .filter(|s| !is_context_scope(s))
        .collect();
    let (context, granted): (Vec<String>, Vec<String>) =
        u.granted.iter().cloned().partition(|s| is_context_scope(s));
    let used: Vec<String> = u.used.iter().filter(|s| !is_context_scope(s)).cloned().collect();
    let unused: Vec<String> = granted.iter().filter(|s| !u.used.contains(*s)).cloned().collect();
    let redundant: Vec<String> = used.iter().filter(|s| !suggested.contains(s)).cloned().collect();
    let mut s = ClientSuggestion {
        client,
        allowed_requests: u.allowed,
        denied_requests: u.denied,
        granted,
        context_scopes: context,
        used,
        suggested,
        unused,
        redundant,
        yaml: String::new(),
    };
    s.yaml = grant_yaml(&s, from, to);
    s
}

/// The greedy set cover: every `All` need's scopes, then repeatedly the scope
/// that meets the most remaining `Any` needs (named scopes before wildcards;
/// ties by request count, then name).
fn minimal_cover(needs: &HashMap<Need, u64>) -> BTreeSet<String> {
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    let mut open: Vec<(BTreeSet<String>, u64)> = Vec::new();
    for (need, n) in needs {
        match need {
            Need::All(s) => chosen.extend(s.iter().cloned()),
            Need::Any(s) => {
                // Prefer the narrow: wildcards only where nothing named would do.
                let named: BTreeSet<String> = s.iter().filter(|x| !x.contains('*')).cloned().collect();
                open.push((if named.is_empty() { s.clone() } else { named }, *n));
            }
        }
    }
    loop {
        open.retain(|(s, _)| s.is_disjoint(&chosen));
        if open.is_empty() {
            return chosen;
        }
        let mut score: BTreeMap<&String, (usize, u64)> = BTreeMap::new();
        for (s, n) in &open {
            for x in s {
                let e = score.entry(x).or_default();
                e.0 += 1;
                e.1 += n;
            }
        }
        // BTreeMap iterates by name: `max_by` keeps the last maximum, so
        // compare names reversed to pick the first name on a tie.
        let best = score
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(s, _)| s.clone());
        match best {
            Some(b) => {
                chosen.insert(b);
            }
            None => return chosen,
        }
    }
}

/// A YAML scalar: plain when it is obviously safe, else double-quoted (JSON
/// string syntax is valid YAML).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn yaml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| yaml_scalar(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A comment line: no newline from audit data may end the comment early.
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn grant_yaml(s: &ClientSuggestion, from: &Option<String>, to: &Option<String>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# client {}: {} allowed request(s) between {} and {}",
        comment(&s.client),
        s.allowed_requests,
        from.as_deref().unwrap_or("-"),
        to.as_deref().unwrap_or("-")
    );
    if s.unused.is_empty() {
        let _ = writeln!(out, "# every granted data scope was used");
    } else {
        let _ = writeln!(
            out,
            "# never used in this window (check before removing): {}",
            comment(&s.unused.join(" "))
        );
    }
    if !s.redundant.is_empty() {
        let _ = writeln!(
            out,
            "# used, but covered by the scopes below: {}",
            comment(&s.redundant.join(" "))
        );
    }
    let mut scopes = s.context_scopes.clone();
    scopes.extend(s.suggested.iter().cloned());
    let _ = writeln!(out, "{}:", yaml_scalar(&s.client));
    let _ = writeln!(out, "  scopes: {}", yaml_list(&scopes));
    out
}

impl Suggestions {
    /// The least-privilege table of the HTML report, one row per client.
    pub fn least_privilege_rows(&self) -> Vec<LeastPrivilegeRow> {
        self.clients
            .iter()
            .map(|c| LeastPrivilegeRow {
                client: c.client.clone(),
                granted: c.granted.clone(),
                used: c.used.clone(),
                unused: c.unused.clone(),
            })
            .collect()
    }

    /// The window in words, with the caveat that a short window under-counts
    /// rare legitimate use.
    pub fn window_caveat(&self) -> String {
        let span = match (&self.window_from, &self.window_to) {
            (Some(a), Some(b)) => {
                match (
                    OffsetDateTime::parse(a, &Rfc3339),
                    OffsetDateTime::parse(b, &Rfc3339),
                ) {
                    (Ok(x), Ok(y)) => Some((y - x).whole_seconds().max(0)),
                    _ => None,
                }
            }
            _ => None,
        };
        let days = match span {
            Some(s) if s < 86_400 => "less than 1 day".to_string(),
            Some(s) => {
                let d = s.div_euclid(86_400) + i64::from(s.rem_euclid(86_400) > 0);
                format!("{d} day(s)")
            }
            None => "no records".to_string(),
        };
        format!(
            "Based on {days} of audit records ({} .. {}): a short window under-counts rare legitimate use — scopes used only monthly, quarterly or yearly will look unused. Review before removing a grant.",
            self.window_from.as_deref().unwrap_or("-"),
            self.window_to.as_deref().unwrap_or("-"),
        )
    }

    /// The human-readable output of `phigate policy suggest`.
    pub fn to_text(&self, roles: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "policy suggest: {} access record(s), {} client(s)",
            self.records,
            self.clients.len()
        );
        let _ = writeln!(out, "NOTE: {}", self.window_caveat());
        for c in &self.clients {
            let _ = writeln!(
                out,
                "\nclient {}: {} allowed, {} denied request(s)",
                c.client, c.allowed_requests, c.denied_requests
            );
            let _ = writeln!(out, "  granted:   {}", join(&c.granted));
            let _ = writeln!(out, "  used:      {}", join(&c.used));
            let _ = writeln!(out, "  suggested: {}", join(&c.suggested));
            if !c.unused.is_empty() {
                let _ = writeln!(out, "  UNUSED:    {}", join(&c.unused));
            }
            if !c.redundant.is_empty() {
                let _ = writeln!(out, "  redundant: {}", join(&c.redundant));
            }
            if !c.context_scopes.is_empty() {
                let _ = writeln!(out, "  context:   {} (kept)", join(&c.context_scopes));
            }
        }
        if !self.clients.is_empty() {
            let _ = writeln!(out, "\nSuggested grants (YAML):\n");
            for c in &self.clients {
                out.push_str(&c.yaml);
            }
        }
        if roles {
            let _ = writeln!(
                out,
                "\nProposed roles ({}), subjects grouped by the scopes they used (policy `roles:` syntax):\n",
                self.roles.len()
            );
            out.push_str(&self.roles_yaml());
        }
        out
    }

    /// The role proposals as a policy `roles:` block.
    pub fn roles_yaml(&self) -> String {
        let mut out = String::from("roles:\n");
        if self.roles.is_empty() {
            out = String::from("roles: {}  # no subject made an allowed request that needed a scope\n");
        }
        for r in &self.roles {
            let _ = writeln!(
                out,
                "  # covers {} subject(s): {}",
                r.subjects.len(),
                comment(&r.subjects.join(", "))
            );
            let _ = writeln!(out, "  {}: {}", r.name, yaml_list(&r.scopes));
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

/// [`UsageAccumulator`] over [`scan`].
pub fn suggest(paths: &[PathBuf], since: Option<OffsetDateTime>) -> Result<Suggestions, AuditError> {
    let mut acc = UsageAccumulator::new();
    scan(paths, since, |_, _, r| acc.add(r))?;
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(client: &str, sub: &str, granted: &[&str], used: &[&str], required: &[&str]) -> AuditRecord {
        AuditRecord {
            ts: "2026-01-01T10:00:00.000Z".into(),
            request_id: "r".into(),
            decision: "allow".into(),
            reason: "allowed".into(),
            status: 200,
            method: "GET".into(),
            path: "/fhir/Patient/1".into(),
            sub: Some(sub.into()),
            client_id: Some(client.into()),
            scopes_granted: granted.iter().map(|s| s.to_string()).collect(),
            scope_used: used.iter().map(|s| s.to_string()).collect(),
            scopes_required: required.iter().map(|s| s.to_string()).collect(),
            upstream_status: Some(200),
            policy_version: "v".into(),
            ..AuditRecord::default()
        }
    }

    const PATIENT_READ: &[&str] = &["patient/Patient.r", "user/Patient.r", "system/Patient.r"];
    const OBS_SEARCH: &[&str] = &[
        "patient/Observation.s",
        "user/Observation.s",
        "system/Observation.s",
    ];

    #[test]
    fn suggests_the_used_scopes_and_names_the_unused_ones() {
        let granted = [
            "openid",
            "user/Patient.rs",
            "user/Observation.rs",
            "user/Condition.rs",
        ];
        let mut acc = UsageAccumulator::new();
        for _ in 0..3 {
            acc.add(&allowed(
                "ehr",
                "alice",
                &granted,
                &["user/Patient.rs"],
                PATIENT_READ,
            ));
        }
        acc.add(&allowed(
            "ehr",
            "alice",
            &granted,
            &["user/Observation.rs"],
            OBS_SEARCH,
        ));
        let mut denied = allowed("ehr", "alice", &granted, &[], PATIENT_READ);
        denied.decision = "deny".into();
        denied.reason = "insufficient_scope".into();
        acc.add(&denied);
        let s = acc.finish();
        assert_eq!(s.records, 5);
        let c = &s.clients[0];
        assert_eq!(c.client, "ehr");
        assert_eq!((c.allowed_requests, c.denied_requests), (4, 1));
        assert_eq!(c.suggested, ["user/Observation.rs", "user/Patient.rs"]);
        assert_eq!(c.unused, ["user/Condition.rs"]);
        assert_eq!(c.context_scopes, ["openid"]);
        assert!(
            c.yaml
                .contains("ehr:\n  scopes: [openid, user/Observation.rs, user/Patient.rs]\n"),
            "{}",
            c.yaml
        );
        assert!(c
            .yaml
            .contains("# never used in this window (check before removing): user/Condition.rs"));
        let rows = s.least_privilege_rows();
        assert_eq!(rows[0].unused, ["user/Condition.rs"]);
    }

    #[test]
    fn outcome_records_and_public_routes_are_not_counted_as_requests() {
        let mut acc = UsageAccumulator::new();
        let mut intent = allowed("c", "u", &["user/Observation.c"], &["user/Observation.c"], &[]);
        intent.phase = Some(Phase::Intent);
        let mut outcome = intent.clone();
        outcome.phase = Some(Phase::Outcome);
        let mut public = allowed("c", "u", &["user/Observation.c"], &[], &[]);
        public.reason = "public_route".into();
        acc.add(&intent);
        acc.add(&outcome);
        acc.add(&public);
        let s = acc.finish();
        assert_eq!(s.records, 3);
        assert_eq!(s.clients[0].allowed_requests, 1);
        assert_eq!(s.clients[0].suggested, ["user/Observation.c"]);
    }

    #[test]
    fn a_wildcard_next_to_a_named_scope_is_redundant_and_unneeded() {
        // scope_used lists every contributing grant: the wildcard and the named one.
        let granted = ["user/*.cruds", "user/Patient.rs"];
        let mut acc = UsageAccumulator::new();
        acc.add(&allowed(
            "c",
            "u",
            &granted,
            &["user/*.cruds", "user/Patient.rs"],
            PATIENT_READ,
        ));
        let s = acc.finish();
        let c = &s.clients[0];
        assert_eq!(c.used, ["user/*.cruds", "user/Patient.rs"]);
        assert_eq!(c.suggested, ["user/Patient.rs"]);
        assert_eq!(c.redundant, ["user/*.cruds"]);
        assert!(c.unused.is_empty());
    }

    #[test]
    fn scopes_that_only_together_satisfy_a_request_are_all_kept() {
        // `.r` + `.s` add up to the `.rs` an explicit all_of route requires.
        let mut acc = UsageAccumulator::new();
        acc.add(&allowed(
            "c",
            "u",
            &["user/Patient.r", "user/Patient.s", "notes.read", "notes.write"],
            &["user/Patient.r", "user/Patient.s", "notes.read"],
            &["user/Patient.rs", "notes.read"],
        ));
        let s = acc.finish();
        assert_eq!(
            s.clients[0].suggested,
            ["notes.read", "user/Patient.r", "user/Patient.s"]
        );
        assert_eq!(s.clients[0].unused, ["notes.write"]);
    }

    #[test]
    fn greedy_cover_picks_the_scope_meeting_most_needs_first() {
        let mut needs = HashMap::new();
        let any = |s: &[&str]| Need::Any(s.iter().map(|x| x.to_string()).collect());
        needs.insert(any(&["a", "b"]), 1);
        needs.insert(any(&["b", "c"]), 1);
        needs.insert(any(&["c"]), 5);
        needs.insert(Need::All(["d".to_string()].into()), 1);
        let cover: Vec<String> = minimal_cover(&needs).into_iter().collect();
        // d forced; c forced by {c}; {b,c} met by c; {a,b}: a and b tie → a.
        assert_eq!(cover, ["a", "c", "d"]);
    }

    #[test]
    fn older_records_without_scope_used_are_inferred_from_the_requirement() {
        let mut acc = UsageAccumulator::new();
        acc.add(&allowed(
            "c",
            "u",
            &["user/Patient.read", "user/Encounter.read"],
            &[],
            PATIENT_READ,
        ));
        let s = acc.finish();
        assert_eq!(s.clients[0].suggested, ["user/Patient.read"]);
        assert_eq!(s.clients[0].unused, ["user/Encounter.read"]);
    }

    #[test]
    fn roles_group_subjects_with_the_same_used_scopes() {
        let g = ["user/Patient.rs", "user/Observation.rs", "user/Observation.c"];
        let mut acc = UsageAccumulator::new();
        for sub in ["nurse-1", "nurse-2", "nurse-3"] {
            acc.add(&allowed("ehr", sub, &g, &["user/Patient.rs"], PATIENT_READ));
            acc.add(&allowed("ehr", sub, &g, &["user/Observation.rs"], OBS_SEARCH));
        }
        acc.add(&allowed("ehr", "clerk", &g, &["user/Patient.rs"], PATIENT_READ));
        let s = acc.finish();
        assert_eq!(s.roles.len(), 2);
        assert_eq!(s.roles[0].name, "proposed-role-1");
        assert_eq!(s.roles[0].scopes, ["user/Observation.rs", "user/Patient.rs"]);
        assert_eq!(s.roles[0].subjects, ["nurse-1", "nurse-2", "nurse-3"]);
        assert_eq!(s.roles[1].subjects, ["clerk"]);
        let yaml = s.roles_yaml();
        assert!(
            yaml.contains(
                "  # covers 3 subject(s): nurse-1, nurse-2, nurse-3\n  proposed-role-1: [user/Observation.rs, user/Patient.rs]\n"
            ),
            "{yaml}"
        );
        // The block parses as a policy `roles:` map.
        let text = format!("version: 1\n{yaml}");
        let parsed = phigate_policy::compile(&[phigate_policy::PolicySource::new("p.yaml", &text)]);
        assert!(parsed.is_ok(), "{yaml}");
    }

    #[test]
    fn text_says_a_short_window_under_counts_rare_use() {
        let mut acc = UsageAccumulator::new();
        let mut a = allowed("c", "u", &["user/Patient.rs"], &["user/Patient.rs"], PATIENT_READ);
        acc.add(&a);
        a.ts = "2026-01-03T09:00:00.000Z".into();
        acc.add(&a);
        let s = acc.finish();
        let text = s.to_text(true);
        assert!(text.contains("Based on 2 day(s) of audit records"), "{text}");
        assert!(text.contains("will look unused"), "{text}");
        assert!(text.contains("proposed-role-1: [user/Patient.rs]"), "{text}");
    }

    #[test]
    fn yaml_quotes_what_is_not_plainly_safe() {
        assert_eq!(yaml_scalar("user/Patient.rs"), "user/Patient.rs");
        assert_eq!(
            yaml_scalar("patient/Observation.rs?category=laboratory"),
            "\"patient/Observation.rs?category=laboratory\""
        );
        assert_eq!(yaml_scalar("*"), "\"*\"");
        assert_eq!(yaml_scalar("a: b\n#x"), "\"a: b\\n#x\"");
        assert_eq!(comment("x\ny"), "x y");
    }
}
