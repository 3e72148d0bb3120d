//! The decision: a plain function over plain data.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::compile::{Access, ClaimCondition, ConditionOp, Operand, Route, RouteMatch};
use crate::fhir::{self, FhirRequest, Include, Interaction, Returned};
use crate::request::{BodyKind, JustificationHeader, Prepared, Upgrade};
use crate::smart::{self, Context, Perm, SmartScope};
use crate::Reason;

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
    /// Scopes the matched route required (for FHIR-aware routes: every SMART
    /// scope form that would satisfy the request — `patient/` where the
    /// compartment can apply, `user/`, `system/`, and the v1 `read`/`write`
    /// forms).
    pub scopes_required: Vec<String>,
    /// The granted scopes that did satisfy an allowed request (one or more per
    /// part: the interaction, a conditional search, each included type, each
    /// bundle entry; effective scopes, so a role's scope appears as such).
    pub scope_used: Vec<String>,
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
    /// How an allowed request must be forwarded.
    pub forward: Forward,
}

/// What the gateway must do when forwarding an allowed request, so that the
/// backend executes what was authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forward {
    /// Send `Prefer: handling=strict` (replacing any `handling` preference
    /// of the client): the decision relied on search parameters (a
    /// patient-compartment or granular-scope search), so a server must fail
    /// on parameters it does not know rather than ignore them and return more.
    pub prefer_strict: bool,
    /// Forward the WebSocket upgrade handshake (the route opted in with
    /// `upgrade: websocket`); every other upgrade is refused.
    pub websocket: bool,
    /// An allowed FHIR search: the paging links of its result (`next`,
    /// `previous`, ...) may be followed by the same caller (see
    /// [`decide_continuation`]).
    pub search_links: bool,
}

impl Decision {
    /// A denial that happens before any route is consulted (bad path, audit down, ...).
    pub fn deny(reason: Reason) -> Self {
        Self {
            outcome: Outcome::Deny,
            reason,
            route: None,
            scopes_required: Vec::new(),
            scope_used: Vec::new(),
            shadow: None,
            break_glass: false,
            step_up: None,
            patient: None,
            detail: None,
            forward: Forward::default(),
        }
    }

    fn allow(reason: Reason, route: &Route) -> Self {
        Self {
            outcome: Outcome::Allow,
            route: Some(route.label.clone()),
            ..Self::deny(reason)
        }
    }

    /// The same decision with operator detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
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

/// Decide one prepared request ([`crate::prepare`]). `body` is the body
/// [`Prepared::needs_body`] asked for (`None` when it was not read).
///
/// Order: a request-shape refusal (bad target, method override, refused
/// upgrade) stands; a public route is allowed whatever the token; otherwise
/// the caller must be authenticated (so unauthenticated callers learn
/// nothing about which routes exist); then an unmatched route is denied
/// (default deny); then the route's access rule (scopes, or the FHIR
/// interaction's SMART permissions — for the interaction itself, the search
/// a conditional interaction runs, and every resource type an
/// `_include`/`_revinclude` adds — and the patient compartment), claim
/// conditions and time window; a denial there may be turned into an allow by
/// break-glass; then step-up authentication (`require_acr`, `require_amr`,
/// `max_auth_age`), which break-glass does not bypass; then a protocol
/// upgrade must be one the route opts into. Finally a `report_only` route
/// turns a denial into an allow that carries `shadow`.
pub fn decide(p: &Prepared<'_>, body: Option<&[u8]>, authn: &Authn) -> Decision {
    if let Some(r) = &p.refusal {
        return r.clone();
    }
    let m = p.route.as_ref();
    let d = decide_inner(p, m, body, authn);
    match m {
        Some(m) if m.route.report_only && !d.is_allow() && d.reason.is_shadowable() => Decision {
            outcome: Outcome::Allow,
            shadow: Some(d.reason),
            ..d
        },
        _ => d,
    }
}

fn decide_inner(
    p: &Prepared<'_>,
    m: Option<&RouteMatch<'_>>,
    body: Option<&[u8]>,
    authn: &Authn,
) -> Decision {
    let route = m.map(|m| m.route);
    let method = if p.method == "HEAD" {
        "GET"
    } else {
        p.method.as_str()
    };
    // A form body may ask for another method, whatever the route.
    if let (Some(BodyKind::Form), Some(b)) = (p.body, body) {
        if crate::request::query_has_method_override(Some(&String::from_utf8_lossy(b))) {
            return with_route(Decision::deny(Reason::MethodOverride), route)
                .with_detail("the `_method` form parameter asks the backend to execute another method");
        }
    }
    if let Some(r) = route {
        if r.access == Access::Public {
            let mut d = Decision::allow(Reason::PublicRoute, r);
            d.forward.websocket = p.upgrade == Upgrade::WebSocket;
            return d;
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
    let scopes = p.policy.effective_scopes(&claims.scopes, &claims.roles);
    let (path, query) = match &p.target {
        Some(t) => (t.path.as_str(), t.query.as_deref()),
        None => return Decision::deny(Reason::BadRequestPath),
    };

    // 1. Access rule, conditions, time window.
    let mut is_read = matches!(method, "GET" | "HEAD");
    let mut d = match &route.access {
        Access::Public => Decision::allow(Reason::PublicRoute, route),
        Access::Scopes(req) => {
            let mut d = match req.satisfied_by(&scopes) {
                Some(used) => {
                    let mut d = Decision::allow(Reason::Allowed, route);
                    d.scope_used = used;
                    d
                }
                None => with_route(Decision::deny(Reason::InsufficientScope), Some(route)),
            };
            d.scopes_required = req.scopes().to_vec();
            d.patient = claims.patient().map(str::to_string);
            d
        }
        Access::Fhir { base } => {
            let rel = fhir::relative_to_base(path, base);
            match fhir_request(p, method, rel, query, body) {
                Err((reason, why)) => with_route(Decision::deny(reason), Some(route)).with_detail(why),
                Ok(req) if req.interaction == Interaction::Batch => {
                    batch_decision(route, body, claims, &scopes)
                }
                Ok(req) => {
                    is_read |= req.interaction == Interaction::Search;
                    fhir_decision(route, &req, claims, &scopes)
                }
            }
        }
    };
    if d.is_allow() {
        if let Some(why) = failed_condition(route, &m.params, query, claims) {
            d = with_route(Decision::deny(Reason::ConditionFailed), Some(route)).with_detail(why);
        } else if route.time.as_ref().is_some_and(|w| !w.contains(p.now)) {
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
        if let (Some(bg), false) = (
            p.policy.break_glass(),
            p.justification == JustificationHeader::Absent,
        ) {
            if claims.scopes.iter().chain(scopes.iter()).any(|s| *s == bg.scope) {
                let original = d.reason;
                let rejected = |why: String| {
                    with_route(Decision::deny(Reason::BreakGlassRejected), Some(route))
                        .with_detail(format!("{why} (would have been {original})"))
                };
                let checked = match &p.justification {
                    JustificationHeader::One(j) => bg.check_justification(j),
                    _ => Err("the justification header was sent more than once"),
                };
                d = if bg.read_only && !is_read {
                    rejected("break-glass is read-only".into())
                } else if p.upgrade != Upgrade::None {
                    rejected("break-glass never opens a protocol upgrade".into())
                } else {
                    match checked {
                        Err(why) => rejected(why.into()),
                        Ok(_) => {
                            let mut a = Decision::allow(Reason::BreakGlass, route);
                            a.break_glass = true;
                            a.patient = d.patient.clone().or_else(|| claims.patient().map(str::to_string));
                            a.scopes_required = d.scopes_required.clone();
                            a.scope_used = vec![bg.scope.clone()];
                            a.forward = d.forward;
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
        if let Some(challenge) = step_up_challenge(route, p.now, claims) {
            let mut s = with_route(Decision::deny(Reason::StepUpRequired), Some(route));
            s.detail = Some(challenge.description.clone());
            s.step_up = Some(challenge);
            s.scopes_required = d.scopes_required;
            s.patient = d.patient;
            return s;
        }
    }

    // 4. Protocol upgrades only where the route opts in.
    if p.upgrade != Upgrade::None && d.is_allow() {
        if route.websocket && p.upgrade == Upgrade::WebSocket {
            d.forward.websocket = true;
        } else {
            return with_route(Decision::deny(Reason::UpgradeRefused), Some(route)).with_detail(
                "protocol upgrades are refused unless the route opts in with `upgrade: websocket`",
            );
        }
    }
    d
}

fn with_route(mut d: Decision, route: Option<&Route>) -> Decision {
    d.route = route.map(|r| r.label.clone());
    d
}

type Refusal = (Reason, String);

/// Classify a request under a FHIR-aware route, with what the backend will
/// also act on: the form body of `POST [type]/_search` (merged with the
/// query string, as FHIR combines them) and `If-None-Exist`.
fn fhir_request(
    p: &Prepared<'_>,
    method: &str,
    rel: &str,
    query: Option<&str>,
    body: Option<&[u8]>,
) -> Result<FhirRequest, Refusal> {
    let unmapped = |why: String| (Reason::UnmappedInteraction, why);
    let mut req = fhir::classify(method, rel, query)
        .map_err(|e| unmapped(format!("not an authorisable FHIR interaction: {e}")))?;
    if req.interaction == Interaction::Search && method == "POST" {
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            match &p.content_type {
                Some((t, true)) if t == "application/x-www-form-urlencoded" => {}
                _ => {
                    return Err((
                        Reason::UnsupportedMediaType,
                        "a POST _search body must be application/x-www-form-urlencoded (UTF-8)".into(),
                    ))
                }
            }
            let text = std::str::from_utf8(body).map_err(|_| {
                (
                    Reason::BadRequestBody,
                    "the _search form body is not UTF-8".to_string(),
                )
            })?;
            let form =
                fhir::parse_query(Some(text)).map_err(|e| unmapped(format!("the _search form body: {e}")))?;
            req.params.extend(form);
        }
    }
    match p.if_none_exist.as_slice() {
        [] => {}
        [one] if req.interaction == Interaction::Create => {
            let text = std::str::from_utf8(one).map_err(|_| unmapped("If-None-Exist is not UTF-8".into()))?;
            // The header carries the query part only (`identifier=x|1`), but
            // some clients send `Type?query`.
            let criteria = text.split_once('?').map_or(text, |(_, q)| q);
            let parsed = fhir::parse_query(Some(criteria.trim()))
                .map_err(|e| unmapped(format!("If-None-Exist: {e}")))?;
            if parsed.is_empty() {
                return Err(unmapped("If-None-Exist carries no search criteria".into()));
            }
            req.criteria = Some(parsed);
        }
        [_] => return Err(unmapped("If-None-Exist is only meaningful on a create".into())),
        _ => return Err(unmapped("If-None-Exist was sent more than once".into())),
    }
    Ok(req)
}

/// What one part of a FHIR request needs from the caller's SMART scopes.
enum Need<'a> {
    /// A search (or the search a conditional interaction runs) over `params`.
    Search {
        ty: &'a str,
        params: &'a [(String, String)],
    },
    /// Type-level history: spans every instance of the type.
    TypeHistory { ty: &'a str },
    /// An interaction on one instance (read, vread, history, update, patch, delete).
    Instance {
        ty: &'a str,
        id: &'a str,
        interaction: Interaction,
    },
    /// A create, or a conditional update/patch/delete (its search is a separate Need).
    Write {
        ty: &'a str,
        interaction: Interaction,
        criteria: Option<&'a [(String, String)]>,
    },
    /// Resources an `_include`/`_revinclude` adds; `patient_ok` when they are
    /// provably the token's patient or in its compartment.
    Included {
        ty: &'a str,
        by: &'a Include,
        patient_ok: bool,
    },
}

impl Need<'_> {
    fn ty(&self) -> &str {
        match self {
            Need::Search { ty, .. }
            | Need::TypeHistory { ty }
            | Need::Instance { ty, .. }
            | Need::Write { ty, .. }
            | Need::Included { ty, .. } => ty,
        }
    }

    /// Whether some `patient/` scope could ever grant this part (for the
    /// `scopes_required` hint): not for types outside the compartment, nor
    /// for what phigate cannot tie to a patient without the resource body.
    fn patient_possible(&self) -> bool {
        match self {
            Need::Search { ty, .. } => !fhir::compartment_naming_params(ty).is_empty(),
            Need::TypeHistory { .. } => false,
            Need::Instance { ty, .. } => *ty == "Patient",
            Need::Write { ty, criteria, .. } => *ty == "Patient" && criteria.is_some(),
            Need::Included { patient_ok, .. } => *patient_ok,
        }
    }

    fn search_params(&self) -> Option<&[(String, String)]> {
        match self {
            Need::Search { params, .. } => Some(params),
            _ => None,
        }
    }

    /// Whether this part stays in the compartment of `patient`.
    fn in_compartment(&self, patient: &str) -> Result<(), String> {
        match self {
            Need::Search { ty, params } => fhir::compartment_search(ty, params, patient),
            Need::TypeHistory { ty } => Err(format!("type-level {ty} history spans patients")),
            Need::Instance { ty: "Patient", id, .. } if *id == patient => Ok(()),
            Need::Instance { ty: "Patient", .. } => Err("the Patient id differs from the token's patient".into()),
            Need::Write { ty: "Patient", criteria: Some(c), .. } => fhir::compartment_search("Patient", c, patient),
            Need::Instance { ty, interaction, .. } | Need::Write { ty, interaction, .. } => Err(format!(
                "{interaction:?} of {ty} by a patient-scoped token cannot be verified without the resource body; use a search with patient="
            )),
            Need::Included { patient_ok: true, .. } => Ok(()),
            Need::Included { ty, by, .. } => Err(format!(
                "{} resources added by {} cannot be tied to the token's patient",
                if *ty == "*" { "any" } else { ty },
                describe_include(by)
            )),
        }
    }
}

fn describe_include(i: &Include) -> String {
    format!(
        "{}{}={}:{}{}",
        if i.reverse { "_revinclude" } else { "_include" },
        if i.iterate { ":iterate" } else { "" },
        i.source.as_deref().unwrap_or("*"),
        i.param.as_deref().unwrap_or("*"),
        i.target.as_deref().map(|t| format!(":{t}")).unwrap_or_default(),
    )
}

/// How a part of a request was granted.
#[derive(Debug, Clone, Default)]
struct Via {
    /// By a `patient/` scope, through the compartment check.
    patient_bound: bool,
    /// By a granular scope, through its search-parameter filters.
    granular: bool,
    /// The granted scope that did it.
    scope: String,
}

/// Every SMART scope form that would grant `perm` on `ty` for this part of
/// a request: v2 (`user/Observation.s`) and v1 (`user/Observation.read`),
/// for `patient/` only where the compartment can apply, and for `system/`.
fn satisfying_forms(need: &Need<'_>, perm: Perm) -> Vec<String> {
    let ty = need.ty();
    let v1 = if matches!(perm, Perm::R | Perm::S) {
        "read"
    } else {
        "write"
    };
    let contexts: &[&str] = if need.patient_possible() {
        &["patient", "user", "system"]
    } else {
        &["user", "system"]
    };
    let mut out: Vec<String> = contexts
        .iter()
        .map(|c| format!("{c}/{ty}.{}", perm.letter()))
        .collect();
    out.extend(contexts.iter().map(|c| format!("{c}/{ty}.{v1}")));
    out
}

/// Whether the caller's scopes grant `perm` for one part of a request.
fn authorize(
    need: &Need<'_>,
    perm: Perm,
    claims: &Claims,
    granted: &[(&str, SmartScope)],
) -> Result<Via, Refusal> {
    let ty = need.ty();
    let what = if ty == "*" {
        "every resource type".to_string()
    } else {
        ty.to_string()
    };
    let candidates: Vec<(&str, &SmartScope)> = granted
        .iter()
        .filter(|(_, g)| g.grants(ty, perm))
        .map(|(s, g)| (*s, g))
        .collect();
    if candidates.is_empty() {
        return Err((
            Reason::InsufficientScope,
            format!("no SMART scope grants `{}` on {what}", perm.letter()),
        ));
    }
    let filters_ok = |g: &SmartScope| {
        !g.is_granular()
            || need
                .search_params()
                .is_some_and(|params| filters_accept(g, params))
    };
    // user/ and system/ scopes are not compartment-bound.
    if let Some((s, g)) = candidates
        .iter()
        .find(|(_, g)| g.context != Context::Patient && filters_ok(g))
    {
        return Ok(Via {
            patient_bound: false,
            granular: g.is_granular(),
            scope: s.to_string(),
        });
    }
    let patient_scoped: Vec<&(&str, &SmartScope)> = candidates
        .iter()
        .filter(|(_, g)| g.context == Context::Patient)
        .collect();
    if patient_scoped.is_empty() {
        return Err((
            Reason::InsufficientScope,
            format!("granular scopes for {what} do not cover this request (granular filters are checked on searches only)"),
        ));
    }
    let Some(patient) = claims.patient() else {
        return Err((
            Reason::OutsidePatientCompartment,
            "patient/ scope but the token has no `patient` claim".into(),
        ));
    };
    need.in_compartment(patient)
        .map_err(|why| (Reason::OutsidePatientCompartment, why))?;
    match patient_scoped.iter().find(|(_, g)| filters_ok(g)) {
        Some((s, g)) => Ok(Via {
            patient_bound: true,
            granular: g.is_granular(),
            scope: s.to_string(),
        }),
        None => Err((
            Reason::InsufficientScope,
            format!("granular patient scopes for {what} do not cover this request"),
        )),
    }
}

/// SMART permissions + patient compartment for a classified FHIR request:
/// the interaction itself, the search a conditional interaction runs, and
/// every resource type an `_include`/`_revinclude` adds to a search result.
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
    let granted = smart::granted_with_sources(scopes);
    let request_patient = {
        let refs = fhir::patient_refs(req);
        match (ty, &req.id) {
            ("Patient", Some(id)) => Some(id.clone()),
            _ if refs.len() == 1 => refs.into_iter().next(),
            _ => None,
        }
    };
    let deny = |(reason, detail): Refusal, need: &Need<'_>, perm: Perm| {
        let mut d = with_route(Decision::deny(reason), Some(route)).with_detail(detail);
        d.scopes_required = satisfying_forms(need, perm);
        d.patient = claims
            .patient()
            .map(str::to_string)
            .or_else(|| request_patient.clone());
        d
    };
    let id = req.id.as_deref().unwrap_or_default();
    let main = match req.interaction {
        Interaction::Search => Need::Search {
            ty,
            params: &req.params,
        },
        Interaction::History if req.id.is_none() => Need::TypeHistory { ty },
        Interaction::Read
        | Interaction::Vread
        | Interaction::History
        | Interaction::Update
        | Interaction::Patch
        | Interaction::Delete => Need::Instance {
            ty,
            id,
            interaction: req.interaction,
        },
        _ => Need::Write {
            ty,
            interaction: req.interaction,
            criteria: req.criteria.as_deref(),
        },
    };
    let mut prefer_strict = false;
    let mut patient_bound = false;
    let mut used: Vec<String> = Vec::new();
    let note = |v: Via, used: &mut Vec<String>| {
        if !used.contains(&v.scope) {
            used.push(v.scope);
        }
    };
    match authorize(&main, perm, claims, &granted) {
        Ok(v) => {
            patient_bound |= v.patient_bound;
            prefer_strict |= main.search_params().is_some() && (v.patient_bound || v.granular);
            note(v, &mut used);
        }
        Err(r) => return deny(r, &main, perm),
    }
    // The search a conditional create/update/patch/delete runs first.
    if let Some(criteria) = &req.criteria {
        let search = Need::Search { ty, params: criteria };
        match authorize(&search, Perm::S, claims, &granted) {
            Ok(v) => {
                patient_bound |= v.patient_bound;
                prefer_strict |= v.patient_bound || v.granular;
                note(v, &mut used);
            }
            Err((reason, why)) => {
                return deny(
                    (reason, format!("conditional criteria (searched as `s`): {why}")),
                    &search,
                    Perm::S,
                )
            }
        }
    }
    if req.interaction == Interaction::Search {
        let includes = match fhir::includes(&req.params) {
            Ok(i) => i,
            Err(why) => return deny((Reason::UnmappedInteraction, why), &main, perm),
        };
        let compartment_bound = claims
            .patient()
            .is_some_and(|pt| fhir::compartment_search(ty, &req.params, pt).is_ok());
        for inc in &includes {
            let returned = match inc.returned_types() {
                Ok(r) => r,
                Err(why) => {
                    return deny(
                        (
                            Reason::UnmappedInteraction,
                            format!(
                                "{}: {why}; what it returns cannot be authorised",
                                describe_include(inc)
                            ),
                        ),
                        &main,
                        perm,
                    )
                }
            };
            let inc_perm = if inc.reverse { Perm::S } else { Perm::R };
            let types: Vec<&str> = match &returned {
                Returned::AnyType => vec!["*"],
                Returned::Types(t) => t.iter().map(String::as_str).collect(),
            };
            for t in types {
                let need = Need::Included {
                    ty: t,
                    by: inc,
                    patient_ok: compartment_bound && include_stays_in_compartment(ty, inc, t),
                };
                match authorize(&need, inc_perm, claims, &granted) {
                    Ok(v) => note(v, &mut used),
                    Err((reason, why)) => {
                        let why = format!("{} adds {t} resources: {why}", describe_include(inc));
                        return deny((reason, why), &need, inc_perm);
                    }
                }
            }
        }
    }
    let mut d = Decision::allow(Reason::Allowed, route);
    d.scopes_required = satisfying_forms(&main, perm);
    d.scope_used = used;
    d.patient = match (patient_bound, claims.patient()) {
        (true, Some(pt)) => Some(pt.to_string()),
        _ => claims.patient().map(str::to_string).or(request_patient),
    };
    d.forward.prefer_strict = prefer_strict;
    d.forward.search_links = req.interaction == Interaction::Search;
    d
}

/// Decide a request for a search-result page (`GET [base]?_getpages=…`, or
/// any link a server returned in `Bundle.link`) that phigate recorded from
/// the allowed search `original` of the same caller: the page is decided as
/// that search, with the caller's current token (a scope revoked since
/// then ends the paging), and is allowed only if the search still is.
/// `page` is the request itself (its route must be FHIR-aware).
pub fn decide_continuation(page: &Prepared<'_>, original: &Prepared<'_>, authn: &Authn) -> Decision {
    if !page.is_paging_candidate() {
        return decide(page, None, authn);
    }
    let mut d = decide(original, None, authn);
    let what = format!("page of the search GET {}", original.path());
    d.detail = Some(match d.detail.take() {
        Some(x) => format!("{what}: {x}"),
        None => what,
    });
    if d.is_allow() && !d.forward.search_links {
        // Only searches have pages.
        return with_route(
            Decision::deny(Reason::UnmappedInteraction),
            original.route.as_ref().map(|m| m.route),
        )
        .with_detail("the recorded original is not a search");
    }
    d.route = page.route_label().cloned();
    d
}

/// Whether the resources `inc` adds (of type `t`) to a search on `ty` that
/// is bound to the token's patient are provably that patient's:
/// - `_include` of a compartment parameter of `ty` pointing at `Patient`
///   (`Observation?patient=123&_include=Observation:patient`) adds the
///   patient itself;
/// - `_revinclude` on a `Patient` search of resources that reference the
///   patient through one of their compartment parameters
///   (`Patient?_id=123&_revinclude=Observation:patient`) adds resources in
///   the compartment.
///
/// Iterating includes can walk anywhere and are never provable.
fn include_stays_in_compartment(ty: &str, inc: &Include, t: &str) -> bool {
    if inc.iterate {
        return false;
    }
    let (Some(source), Some(param)) = (inc.source.as_deref(), inc.param.as_deref()) else {
        return false;
    };
    if inc.reverse {
        ty == "Patient"
            && source == t
            && fhir::compartment_naming_params(source).contains(&param)
            && param != "_id"
    } else {
        source == ty
            && t == "Patient"
            && fhir::compartment_naming_params(ty).contains(&param)
            && param != "_id"
    }
}

fn filters_accept(g: &SmartScope, params: &[(String, String)]) -> bool {
    g.filters.iter().all(|(k, v)| {
        let mut values = params.iter().filter(|(n, _)| n == k).peekable();
        values.peek().is_some() && values.all(|(_, rv)| smart::filter_accepts(v, rv))
    })
}

/// The first claim condition that fails, described.
fn failed_condition(
    route: &Route,
    params: &[(&str, String)],
    query: Option<&str>,
    claims: &Claims,
) -> Option<String> {
    route
        .conditions
        .iter()
        .find_map(|c| (!condition_holds(c, params, query, claims)).then(|| describe(c)))
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
    query: Option<&str>,
    claims: &Claims,
) -> bool {
    let operand: Option<String> = match &c.operand {
        Operand::Value(v) => Some(v.clone()),
        Operand::Param(p) => params.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone()),
        Operand::Query(q) => {
            let mut found = form_urlencoded::parse(query.unwrap_or("").as_bytes()).filter(|(k, _)| k == q);
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

/// Most entries a batch/transaction may have.
pub const MAX_BUNDLE_ENTRIES: usize = 500;

/// Authorise every entry of a batch/transaction bundle; the first denial wins.
///
/// The body is parsed strictly: a duplicate JSON member anywhere (`entry`,
/// `url`, `method`, ...) refuses the bundle, since phigate forwards the
/// bytes and the server might act on the member phigate did not read.
fn batch_decision(route: &Route, body: Option<&[u8]>, claims: &Claims, scopes: &[String]) -> Decision {
    let unmapped =
        |why: String| with_route(Decision::deny(Reason::UnmappedInteraction), Some(route)).with_detail(why);
    let Some(body) = body else {
        return unmapped("batch/transaction body was not available for inspection".into());
    };
    let bundle = match phigate_json::parse(body) {
        Ok(b) => b,
        Err(e) if e.to_string().contains("duplicate key") => {
            return with_route(Decision::deny(Reason::BadRequestBody), Some(route))
                .with_detail(format!("ambiguous bundle JSON: {e}"))
        }
        Err(_) => return unmapped("batch/transaction body is not a JSON Bundle".into()),
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
    let mut prefer_strict = false;
    let mut scope_used: Vec<String> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let request = entry.get("request");
        let field = |k: &str| request.and_then(|r| r.get(k));
        let method = field("method").and_then(Value::as_str);
        let url = field("url").and_then(Value::as_str);
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
        if crate::request::query_has_method_override(target.query.as_deref()) {
            return with_route(Decision::deny(Reason::MethodOverride), Some(route)).with_detail(format!(
                "entry {i}: `_method` asks the server to execute another method"
            ));
        }
        let mut req = match fhir::classify(method, &target.path, target.query.as_deref()) {
            Ok(r) if r.interaction == Interaction::Batch => {
                return unmapped(format!("entry {i}: nested batch/transaction"));
            }
            Ok(r) if r.interaction == Interaction::Search && method == "POST" => {
                return unmapped(format!("entry {i}: searches in a bundle use GET entries"));
            }
            Ok(r) => r,
            Err(e) => return unmapped(format!("entry {i}: {e}")),
        };
        match field("ifNoneExist") {
            None => {}
            Some(Value::String(ine)) if req.interaction == Interaction::Create => {
                let criteria = ine.split_once('?').map_or(ine.as_str(), |(_, q)| q);
                match fhir::parse_query(Some(criteria)) {
                    Ok(c) if !c.is_empty() => req.criteria = Some(c),
                    Ok(_) => return unmapped(format!("entry {i}: ifNoneExist carries no search criteria")),
                    Err(e) => return unmapped(format!("entry {i}: ifNoneExist: {e}")),
                }
            }
            Some(_) => {
                return unmapped(format!(
                    "entry {i}: ifNoneExist must be a string on a POST (create) entry"
                ))
            }
        }
        let d = fhir_decision(route, &req, claims, scopes);
        if !d.is_allow() {
            let detail = format!(
                "entry {i} ({method} {url}): {}",
                d.detail.clone().unwrap_or_default()
            );
            return d.with_detail(detail);
        }
        prefer_strict |= d.forward.prefer_strict;
        for u in d.scope_used {
            if !scope_used.contains(&u) {
                scope_used.push(u);
            }
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
    d.scope_used = scope_used;
    d.forward.prefer_strict = prefer_strict;
    // One patient across all entries is recorded; several are not named in one field.
    d.patient = if patients.len() == 1 { patients.pop() } else { None };
    d
}

#[cfg(test)]
mod tests;
