//! The decision: a plain function over plain data.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::compile::{Access, ClaimCondition, ConditionOp, Operand, PolicySet, Route, RouteMatch};
use crate::fhir::{self, FhirRequest, Interaction};
use crate::smart::{self, Context, SmartScope};
use crate::Reason;

/// Facts about the request, extracted once by the gateway.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Canonical path (see [`crate::canonicalize`]).
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// Current time, seconds since the Unix epoch (time windows, `max_auth_age`).
    pub now: i64,
    /// The break-glass justification header, when the policy enables
    /// break-glass and the request carries exactly one such header.
    pub break_glass_justification: Option<&'a str>,
    /// The request body, only when [`needs_body`] asked for it (FHIR
    /// batch/transaction bundles, whose entries are each authorised).
    pub body: Option<&'a [u8]>,
}

impl<'a> RequestFacts<'a> {
    pub fn new(method: &'a str, path: &'a str, query: Option<&'a str>, now: i64) -> Self {
        Self {
            method,
            path,
            query,
            now,
            break_glass_justification: None,
            body: None,
        }
    }
}

/// What phigate knows about the caller from a *validated* token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// Roles from the issuer's configured role claim.
    pub roles: Vec<String>,
    /// The whole payload (claim conditions, `patient`, `acr`, `amr`, `auth_time`).
    pub claims: Arc<Map<String, Value>>,
}

impl Claims {
    /// A claim by dotted path (`realm_access.roles`).
    pub fn get_path(&self, path: &[String]) -> Option<&Value> {
        let mut cur = self.claims.get(path.first()?)?;
        for k in &path[1..] {
            cur = cur.as_object()?.get(k)?;
        }
        Some(cur)
    }

    /// The SMART launch context patient (`patient` claim).
    pub fn patient(&self) -> Option<&str> {
        self.claims
            .get("patient")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    }
}

/// The outcome of authentication, as input to [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Authn {
    /// No bearer token was presented.
    Missing,
    /// A token was presented and rejected for this reason.
    Invalid(Reason),
    /// A token was presented and validated.
    Valid(Claims),
}

/// Whether the request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// The RFC 9470 step-up challenge for a `step_up_required` denial.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepUpChallenge {
    pub acr_values: Vec<String>,
    pub max_age: Option<u64>,
    pub description: String,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// For a shadow-mode allow this is the would-be denial's reason.
    pub reason: Reason,
    /// The matched route's label (name or template); `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// Scopes the matched route required (for FHIR-aware routes: the SMART
    /// scopes that would have sufficed).
    pub scopes_required: Vec<String>,
    /// Shadow mode: the request was let through although the policy says deny.
    pub shadow: Option<Reason>,
    /// Emergency access was used.
    pub break_glass: bool,
    /// Set for `step_up_required`.
    pub step_up: Option<StepUpChallenge>,
    /// The patient this access concerns, when known (token context or request).
    pub patient: Option<String>,
    /// Human-readable detail for operators (`policy explain`, logs); never sent to clients.
    pub detail: Option<String>,
}

impl Decision {
    /// A denial that happens before any route is consulted (bad path, audit down, ...).
    pub fn deny(reason: Reason) -> Self {
        Self {
            outcome: Outcome::Deny,
            reason,
            route: None,
            scopes_required: Vec::new(),
            shadow: None,
            break_glass: false,
            step_up: None,
            patient: None,
            detail: None,
        }
    }

    fn allow(reason: Reason, route: &Route) -> Self {
        Self {
            outcome: Outcome::Allow,
            route: Some(route.label.clone()),
            ..Self::deny(reason)
        }
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn is_allow(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The status to answer a denial with.
    pub fn deny_status(&self) -> u16 {
        self.reason.deny_status()
    }

    /// The `WWW-Authenticate` header for this denial (RFC 6750 §3, RFC 9470).
    ///
    /// No `error` attribute when no token was sent; `invalid_token` for a
    /// rejected token; `insufficient_scope` with the required scopes when the
    /// token lacks them; `insufficient_user_authentication` with `acr_values`
    /// / `max_age` when step-up authentication is needed.
    pub fn www_authenticate(&self) -> Option<String> {
        if self.is_allow() {
            return None;
        }
        match self.reason {
            Reason::MissingToken => Some("Bearer".to_string()),
            Reason::InsufficientScope => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                self.scopes_required.join(" ")
            )),
            Reason::StepUpRequired => {
                let c = self.step_up.clone().unwrap_or_default();
                let mut h = format!(
                    "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\"",
                    c.description
                );
                if !c.acr_values.is_empty() {
                    h.push_str(&format!(", acr_values=\"{}\"", c.acr_values.join(" ")));
                }
                if let Some(m) = c.max_age {
                    h.push_str(&format!(", max_age={m}"));
                }
                Some(h)
            }
            r if r.is_invalid_token() => Some("Bearer error=\"invalid_token\"".to_string()),
            _ => None,
        }
    }
}

/// Decide one request.
///
/// Order: a public route is allowed whatever the token; otherwise the caller
/// must be authenticated (so unauthenticated callers learn nothing about which
/// routes exist); then an unmatched route is denied (default deny); then the
/// route's access rule (scopes, or the FHIR interaction's SMART permission and
/// patient compartment), claim conditions and time window; a denial there may
/// be turned into an allow by break-glass; then step-up authentication
/// (`require_acr`, `require_amr`, `max_auth_age`), which break-glass does not
/// bypass. Finally a `report_only` route turns a denial into an allow that
/// carries `shadow`.
pub fn decide(policy: &PolicySet, facts: &RequestFacts<'_>, authn: &Authn) -> Decision {
    let method = if facts.method == "HEAD" {
        "GET"
    } else {
        facts.method
    };
    let m = policy.match_with_params(method, facts.path);
    let d = decide_inner(policy, facts, method, m.as_ref(), authn);
    match &m {
        Some(m) if m.route.report_only && !d.is_allow() && d.reason.is_shadowable() => Decision {
            outcome: Outcome::Allow,
            shadow: Some(d.reason),
            ..d
        },
        _ => d,
    }
}

fn decide_inner(
    policy: &PolicySet,
    facts: &RequestFacts<'_>,
    method: &str,
    m: Option<&RouteMatch<'_>>,
    authn: &Authn,
) -> Decision {
    let route = m.map(|m| m.route);
    if let Some(r) = route {
        if r.access == Access::Public {
            return Decision::allow(Reason::PublicRoute, r);
        }
    }
    let claims = match authn {
        Authn::Missing => return with_route(Decision::deny(Reason::MissingToken), route),
        Authn::Invalid(reason) => return with_route(Decision::deny(*reason), route),
        Authn::Valid(c) => c,
    };
    let Some(m) = m else {
        return Decision::deny(Reason::NoMatchingRoute);
    };
    let route = m.route;
    let scopes = policy.effective_scopes(&claims.scopes, &claims.roles);

    // 1. Access rule, conditions, time window.
    let mut is_read = matches!(method, "GET" | "HEAD");
    let mut d = match &route.access {
        Access::Public => Decision::allow(Reason::PublicRoute, route),
        Access::Scopes(req) => {
            let mut d = if req.is_satisfied_by(&scopes) {
                Decision::allow(Reason::Allowed, route)
            } else {
                with_route(Decision::deny(Reason::InsufficientScope), Some(route))
            };
            d.scopes_required = req.scopes().to_vec();
            d.patient = claims.patient().map(str::to_string);
            d
        }
        Access::Fhir { base } => {
            let rel = crate::fhir::relative_to_base(facts.path, base);
            match fhir::classify(method, rel, facts.query) {
                Err(e) => with_route(Decision::deny(Reason::UnmappedInteraction), Some(route))
                    .with_detail(format!("not an authorisable FHIR interaction: {e}")),
                Ok(req) if req.interaction == Interaction::Batch => {
                    batch_decision(route, facts.body, claims, &scopes)
                }
                Ok(req) => {
                    is_read |= req.interaction == Interaction::Search;
                    fhir_decision(route, &req, claims, &scopes)
                }
            }
        }
    };
    if d.is_allow() {
        if let Some(why) = failed_condition(route, &m.params, facts, claims) {
            d = with_route(Decision::deny(Reason::ConditionFailed), Some(route)).with_detail(why);
        } else if route.time.as_ref().is_some_and(|w| !w.contains(facts.now)) {
            let tz = route.time.as_ref().map(|w| w.tz_name.clone()).unwrap_or_default();
            d = with_route(Decision::deny(Reason::OutsideTimeWindow), Some(route))
                .with_detail(format!("outside the route's time window ({tz})"));
        }
    }

    // 2. Break-glass.
    if !d.is_allow()
        && matches!(
            d.reason,
            Reason::InsufficientScope
                | Reason::OutsidePatientCompartment
                | Reason::ConditionFailed
                | Reason::OutsideTimeWindow
                | Reason::UnmappedInteraction
        )
    {
        if let (Some(bg), Some(j)) = (policy.break_glass(), facts.break_glass_justification) {
            if claims.scopes.iter().chain(scopes.iter()).any(|s| *s == bg.scope) {
                let original = d.reason;
                d = if bg.read_only && !is_read {
                    with_route(Decision::deny(Reason::BreakGlassRejected), Some(route))
                        .with_detail(format!("break-glass is read-only (would have been {original})"))
                } else {
                    match bg.check_justification(j) {
                        Err(why) => with_route(Decision::deny(Reason::BreakGlassRejected), Some(route))
                            .with_detail(format!("{why} (would have been {original})")),
                        Ok(()) => {
                            let mut a = Decision::allow(Reason::BreakGlass, route);
                            a.break_glass = true;
                            a.patient = d.patient.clone().or_else(|| claims.patient().map(str::to_string));
                            a.scopes_required = d.scopes_required.clone();
                            a.detail = Some(format!("emergency access overriding {original}"));
                            a
                        }
                    }
                };
            }
        }
    }

    // 3. Step-up authentication.
    if d.is_allow() {
        if let Some(challenge) = step_up_challenge(route, facts.now, claims) {
            let mut s = with_route(Decision::deny(Reason::StepUpRequired), Some(route));
            s.detail = Some(challenge.description.clone());
            s.step_up = Some(challenge);
            s.scopes_required = d.scopes_required;
            s.patient = d.patient;
            return s;
        }
    }
    d
}

fn with_route(mut d: Decision, route: Option<&Route>) -> Decision {
    d.route = route.map(|r| r.label.clone());
    d
}

/// SMART permission + patient compartment for a classified FHIR request.
fn fhir_decision(route: &Route, req: &FhirRequest, claims: &Claims, scopes: &[String]) -> Decision {
    if req.interaction == Interaction::Capabilities {
        return Decision::allow(Reason::Allowed, route);
    }
    let (Some(perm), Some(ty)) = (req.required_perm(), req.resource_type.as_deref()) else {
        return with_route(Decision::deny(Reason::UnmappedInteraction), Some(route)).with_detail(format!(
            "{:?} requests need an explicit route (batch/transaction entries and operations are not derived)",
            req.interaction
        ));
    };
    let p = perm_char(perm);
    let hint = vec![format!("user/{ty}.{p}"), format!("patient/{ty}.{p}")];
    let granted = smart::granted(scopes);
    let candidates: Vec<&SmartScope> = granted.iter().filter(|g| g.grants(ty, perm)).collect();
    let request_patient = {
        let refs = fhir::patient_refs(req);
        match (ty, &req.id) {
            ("Patient", Some(id)) => Some(id.clone()),
            _ if refs.len() == 1 => refs.into_iter().next(),
            _ => None,
        }
    };
    let deny = |reason: Reason, detail: String| {
        let mut d = with_route(Decision::deny(reason), Some(route)).with_detail(detail);
        d.scopes_required = hint.clone();
        d.patient = claims
            .patient()
            .map(str::to_string)
            .or_else(|| request_patient.clone());
        d
    };
    if candidates.is_empty() {
        return deny(
            Reason::InsufficientScope,
            format!("no SMART scope grants `{p}` on {ty}"),
        );
    }
    let allow = |patient: Option<String>| {
        let mut d = Decision::allow(Reason::Allowed, route);
        d.scopes_required = hint.clone();
        d.patient = patient;
        d
    };
    let is_search = req.interaction == Interaction::Search;
    let filters_ok = |g: &SmartScope| !g.is_granular() || (is_search && filters_accept(g, &req.params));
    // user/ and system/ scopes are not compartment-bound.
    if candidates
        .iter()
        .any(|g| g.context != Context::Patient && filters_ok(g))
    {
        return allow(
            claims
                .patient()
                .map(str::to_string)
                .or_else(|| request_patient.clone()),
        );
    }
    let patient_scoped: Vec<&&SmartScope> = candidates
        .iter()
        .filter(|g| g.context == Context::Patient)
        .collect();
    if patient_scoped.is_empty() {
        return deny(
            Reason::InsufficientScope,
            format!(
                "granular scopes for {ty} do not cover this request (reads by id cannot be checked against filters)"
            ),
        );
    }
    let Some(patient) = claims.patient() else {
        return deny(
            Reason::OutsidePatientCompartment,
            "patient/ scope but the token has no `patient` claim".into(),
        );
    };
    if let Err(why) = in_compartment(req, ty, patient) {
        return deny(Reason::OutsidePatientCompartment, why);
    }
    if patient_scoped.iter().any(|g| filters_ok(g)) {
        return allow(Some(patient.to_string()));
    }
    deny(
        Reason::InsufficientScope,
        format!("granular patient scopes for {ty} do not cover this search"),
    )
}

/// Whether a request stays inside the token's patient compartment.
fn in_compartment(req: &FhirRequest, ty: &str, patient: &str) -> Result<(), String> {
    let search_refs = || -> Result<(), String> {
        if fhir::has_cross_patient_params(req) {
            return Err("chained, _has, _include and _revinclude parameters can reach other patients".into());
        }
        let refs = fhir::patient_refs(req);
        match refs.as_slice() {
            [only] if only == patient => Ok(()),
            [] => Err(format!(
                "a patient-scoped search on {ty} must name the token's patient"
            )),
            [_] => Err("the search names a different patient".into()),
            _ => Err("the search must name exactly one patient".into()),
        }
    };
    match (ty, req.interaction) {
        ("Patient", Interaction::Search) => search_refs(),
        (
            "Patient",
            Interaction::Read
            | Interaction::Vread
            | Interaction::History
            | Interaction::Update
            | Interaction::Patch
            | Interaction::Delete,
        ) => match &req.id {
            Some(id) if id == patient => Ok(()),
            Some(_) => Err("the Patient id differs from the token's patient".into()),
            None => Err("type-level Patient history spans patients".into()),
        },
        (_, Interaction::Search) => search_refs(),
        _ => Err(format!(
            "{:?} of {ty} by a patient-scoped token cannot be verified without the resource body; use a search with patient=",
            req.interaction
        )),
    }
}

fn filters_accept(g: &SmartScope, params: &[(String, String)]) -> bool {
    g.filters.iter().all(|(k, v)| {
        let mut values = params.iter().filter(|(n, _)| n == k).peekable();
        values.peek().is_some() && values.all(|(_, rv)| smart::filter_accepts(v, rv))
    })
}

fn perm_char(p: smart::Perm) -> char {
    match p {
        smart::Perm::C => 'c',
        smart::Perm::R => 'r',
        smart::Perm::U => 'u',
        smart::Perm::D => 'd',
        smart::Perm::S => 's',
    }
}

/// The first claim condition that fails, described.
fn failed_condition(
    route: &Route,
    params: &[(&str, String)],
    facts: &RequestFacts<'_>,
    claims: &Claims,
) -> Option<String> {
    route
        .conditions
        .iter()
        .find_map(|c| (!condition_holds(c, params, facts, claims)).then(|| describe(c)))
}

fn describe(c: &ClaimCondition) -> String {
    let op = match c.op {
        ConditionOp::Equals => "equal",
        ConditionOp::Contains => "contain",
    };
    let operand = match &c.operand {
        Operand::Value(v) => format!("`{v}`"),
        Operand::Param(p) => format!("path parameter `{p}`"),
        Operand::Query(q) => format!("query parameter `{q}`"),
    };
    format!("claim `{}` must {op} {operand}", c.claim.join("."))
}

fn condition_holds(
    c: &ClaimCondition,
    params: &[(&str, String)],
    facts: &RequestFacts<'_>,
    claims: &Claims,
) -> bool {
    let operand: Option<String> = match &c.operand {
        Operand::Value(v) => Some(v.clone()),
        Operand::Param(p) => params.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone()),
        Operand::Query(q) => {
            let mut found =
                form_urlencoded::parse(facts.query.unwrap_or("").as_bytes()).filter(|(k, _)| k == q);
            match (found.next(), found.next()) {
                (Some((_, v)), None) => Some(v.into_owned()),
                _ => None, // absent or repeated: fail closed
            }
        }
    };
    let (Some(operand), Some(claim)) = (operand, claims.get_path(&c.claim)) else {
        return false;
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match c.op {
        ConditionOp::Equals => scalar(claim).is_some_and(|s| s == operand),
        ConditionOp::Contains => match claim {
            Value::Array(a) => a.iter().filter_map(scalar).any(|s| s == operand),
            Value::String(s) => s.split_ascii_whitespace().any(|p| p == operand),
            _ => false,
        },
    }
}

/// The step-up challenge when the token's authentication falls short.
fn step_up_challenge(route: &Route, now: i64, claims: &Claims) -> Option<StepUpChallenge> {
    let s = route.step_up.as_ref()?;
    let mut missing = Vec::new();
    if !s.acr.is_empty() {
        let acr = claims.claims.get("acr").and_then(Value::as_str);
        if !acr.is_some_and(|a| s.acr.iter().any(|x| x == a)) {
            missing.push(format!("acr must be one of {}", s.acr.join(", ")));
        }
    }
    if !s.amr.is_empty() {
        let amr: Vec<&str> = match claims.claims.get("amr") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let lacking: Vec<&str> = s
            .amr
            .iter()
            .map(String::as_str)
            .filter(|m| !amr.contains(m))
            .collect();
        if !lacking.is_empty() {
            missing.push(format!("authentication methods required: {}", lacking.join(", ")));
        }
    }
    if let Some(max) = s.max_age {
        let auth_time = claims.claims.get("auth_time").and_then(Value::as_i64);
        let fresh = auth_time.is_some_and(|t| now.saturating_sub(t) <= max.as_secs() as i64);
        if !fresh {
            missing.push(format!("authentication must be at most {}s old", max.as_secs()));
        }
    }
    if missing.is_empty() {
        return None;
    }
    Some(StepUpChallenge {
        acr_values: s.acr.clone(),
        max_age: s.max_age.map(|d| d.as_secs()),
        description: missing.join("; "),
    })
}

/// Largest batch/transaction body phigate inspects (pingora replays at most
/// this much to the upstream after reading it); larger bundles are refused.
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;
/// Most entries a batch/transaction may have.
pub const MAX_BUNDLE_ENTRIES: usize = 500;

/// Whether deciding this request needs its body: a POST to the base of a
/// FHIR-aware route (a batch or transaction bundle).
pub fn needs_body(policy: &PolicySet, facts: &RequestFacts<'_>) -> bool {
    let Some(route) = policy.match_route(facts.method, facts.path) else {
        return false;
    };
    match &route.access {
        Access::Fhir { base } => {
            let rel = crate::fhir::relative_to_base(facts.path, base);
            matches!(fhir::classify(facts.method, rel, facts.query), Ok(r) if r.interaction == Interaction::Batch)
        }
        _ => false,
    }
}

/// Authorise every entry of a batch/transaction bundle; the first denial wins.
fn batch_decision(route: &Route, body: Option<&[u8]>, claims: &Claims, scopes: &[String]) -> Decision {
    let unmapped =
        |why: String| with_route(Decision::deny(Reason::UnmappedInteraction), Some(route)).with_detail(why);
    let Some(body) = body else {
        return unmapped("batch/transaction body was not available for inspection".into());
    };
    let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
        return unmapped("batch/transaction body is not a JSON Bundle".into());
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || !matches!(
            bundle.get("type").and_then(Value::as_str),
            Some("batch" | "transaction")
        )
    {
        return unmapped("POST to the FHIR base must be a batch or transaction Bundle".into());
    }
    let entries = match bundle.get("entry") {
        None => return Decision::allow(Reason::Allowed, route),
        Some(Value::Array(e)) if e.len() <= MAX_BUNDLE_ENTRIES => e,
        Some(_) => {
            return unmapped(format!(
                "`entry` must be an array of at most {MAX_BUNDLE_ENTRIES} entries"
            ))
        }
    };
    let mut patients: Vec<String> = Vec::new();
    let mut required: Vec<String> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let request = entry.get("request");
        let method = request.and_then(|r| r.get("method")).and_then(Value::as_str);
        let url = request.and_then(|r| r.get("url")).and_then(Value::as_str);
        let (Some(method), Some(url)) = (method, url) else {
            return unmapped(format!("entry {i}: request.method and request.url are required"));
        };
        // Entry URLs are relative to the base (`Patient/1`, `Observation?patient=1`);
        // absolute URLs could point anywhere and are refused.
        if url.contains("://") || url.starts_with('/') {
            return unmapped(format!(
                "entry {i}: request.url must be relative to the FHIR base"
            ));
        }
        let Ok(target) = crate::canonicalize(&format!("/{url}")) else {
            return unmapped(format!(
                "entry {i}: request.url `{url}` is not a clean relative reference"
            ));
        };
        let req = match fhir::classify(method, &target.path, target.query.as_deref()) {
            Ok(r) if r.interaction == Interaction::Batch => {
                return unmapped(format!("entry {i}: nested batch/transaction"));
            }
            Ok(r) => r,
            Err(e) => return unmapped(format!("entry {i}: {e}")),
        };
        let d = fhir_decision(route, &req, claims, scopes);
        if !d.is_allow() {
            let detail = format!(
                "entry {i} ({method} {url}): {}",
                d.detail.clone().unwrap_or_default()
            );
            return d.with_detail(detail);
        }
        if let Some(p) = d.patient {
            if !patients.contains(&p) {
                patients.push(p);
            }
        }
        for r in d.scopes_required {
            if !required.contains(&r) {
                required.push(r);
            }
        }
    }
    let mut d = Decision::allow(Reason::Allowed, route);
    d.scopes_required = required;
    // One patient across all entries is recorded; several are not named in one field.
    d.patient = if patients.len() == 1 { patients.pop() } else { None };
    d
}

/// Whether a request needs a validated token to be decided, so the gateway
/// can skip token validation (and its possible key fetch) for public routes.
pub fn needs_token(policy: &PolicySet, facts: &RequestFacts<'_>) -> bool {
    !matches!(policy.match_route(facts.method, facts.path), Some(r) if r.access == Access::Public)
}

#[cfg(test)]
mod tests;
