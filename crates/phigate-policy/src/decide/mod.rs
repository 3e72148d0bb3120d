//! The decision: a plain function over plain data.
//!
//! This module owns the [`Decision`] and its inputs ([`Authn`], [`Claims`]),
//! [`decide`] and [`decide_continuation`], and the order of the checks
//! (`decide_inner`). The checks themselves:
//! - `fhir_access`: SMART scopes and the patient compartment for a FHIR
//!   interaction, the search a conditional interaction runs, and includes;
//! - `bundle`: every entry of a batch/transaction Bundle;
//! - `conditions`: claim conditions and step-up authentication.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::compile::{Access, Route, RouteMatch};
use crate::fhir::{self, Interaction};
use crate::request::{BodyKind, JustificationHeader, Prepared, Upgrade};
use crate::Reason;

mod bundle;
mod conditions;
mod fhir_access;

pub use bundle::MAX_BUNDLE_ENTRIES;

use bundle::batch_decision;
use conditions::{failed_condition, step_up_challenge};
use fhir_access::{fhir_decision, fhir_request};

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

#[cfg(test)]
mod tests;
