//! The runtime policy model: what [`compile`](super::compile) produces and
//! [`decide`](crate::decide()) reads, holding only validated data.
//! [`PolicySet`] with its [`Route`]s and route matching; access rules and
//! scope requirements ([`Access`], [`RequiredScopes`], [`scope_satisfied`]);
//! claim conditions, time windows and step-up; break-glass and its
//! justification checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use phigate_yaml::Diagnostic;

use crate::file::RolesMode;
use crate::smart;

use super::router::{route_param_name, Routers};

/// Default longest break-glass justification (characters).
pub const DEFAULT_JUSTIFICATION_MAX: usize = 500;
/// Default fewest visible characters in a break-glass justification.
pub const DEFAULT_JUSTIFICATION_MIN: usize = 8;

/// What a route requires of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token carrying these scopes.
    Scopes(RequiredScopes),
    /// FHIR-aware: the SMART permission is derived from the interaction.
    Fhir { base: String },
}

/// Scopes required by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredScopes {
    AllOf(Vec<String>),
    AnyOf(Vec<String>),
}

impl RequiredScopes {
    /// The listed scopes, in policy order.
    pub fn scopes(&self) -> &[String] {
        match self {
            RequiredScopes::AllOf(s) | RequiredScopes::AnyOf(s) => s,
        }
    }

    /// Whether `granted` satisfies this requirement. Custom scopes are opaque,
    /// exact-match strings with no implicit hierarchy; SMART scopes are parsed,
    /// so `user/Patient.read` (v1) or `user/*.cruds` satisfy `user/Patient.rs`.
    pub fn is_satisfied_by(&self, granted: &[String]) -> bool {
        self.satisfied_by(granted).is_some()
    }

    /// The granted scopes that satisfy this requirement (`scope_used`), or
    /// `None` when it is not satisfied. For a required SMART scope met by
    /// several granted ones adding up (`user/Patient.r` + `user/Patient.s`
    /// for `user/Patient.rs`), every contributing scope is listed.
    pub fn satisfied_by(&self, granted: &[String]) -> Option<Vec<String>> {
        // Exact matches need no parsing; SMART scopes are parsed only when needed.
        let smart = std::cell::OnceCell::new();
        let used_for = |s: &String| -> Option<Vec<String>> {
            if granted.iter().any(|g| g == s) {
                return Some(vec![s.clone()]);
            }
            let parsed = smart.get_or_init(|| smart::granted(granted));
            if !scope_satisfied(s, granted, parsed) {
                return None;
            }
            // Which granted SMART scopes contribute: those that alone cover
            // part of the requirement.
            let req = smart::parse(s).ok()?;
            Some(
                granted
                    .iter()
                    .filter(|g| {
                        smart::parse(g).is_ok_and(|g| {
                            g.context == req.context
                                && !g.is_granular()
                                && req
                                    .resource
                                    .as_ref()
                                    .is_none_or(|r| g.resource.as_ref().is_none_or(|t| t == r))
                                && smart::Perm::ALL
                                    .iter()
                                    .any(|p| req.perms.contains(*p) && g.perms.contains(*p))
                        })
                    })
                    .cloned()
                    .collect(),
            )
        };
        match self {
            RequiredScopes::AllOf(req) => {
                let mut used = Vec::new();
                for s in req {
                    for u in used_for(s)? {
                        if !used.contains(&u) {
                            used.push(u);
                        }
                    }
                }
                Some(used)
            }
            RequiredScopes::AnyOf(req) => req.iter().find_map(used_for),
        }
    }
}

/// One required scope against the granted ones (see [`RequiredScopes::is_satisfied_by`]).
pub fn scope_satisfied(required: &str, granted: &[String], granted_smart: &[smart::SmartScope]) -> bool {
    if granted.iter().any(|g| g == required) {
        return true;
    }
    let Ok(req) = smart::parse(required) else {
        return false;
    };
    if req.is_granular() {
        // Filters cannot be compared structurally: exact match only (above).
        return false;
    }
    // Granted scopes add up: every required permission must be granted by some
    // non-granular scope of the same context covering the resource type.
    [
        smart::Perm::C,
        smart::Perm::R,
        smart::Perm::U,
        smart::Perm::D,
        smart::Perm::S,
    ]
    .into_iter()
    .filter(|p| req.perms.contains(*p))
    .all(|p| {
        granted_smart.iter().any(|g| {
            g.context == req.context
                && !g.is_granular()
                && g.perms.contains(p)
                && match (&req.resource, &g.resource) {
                    (_, None) => true,
                    (Some(r), Some(t)) => r == t,
                    (None, Some(_)) => false,
                }
        })
    })
}

/// Step-up authentication requirements (RFC 9470).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepUp {
    /// `acr` must be one of these (empty: not checked).
    pub acr: Vec<String>,
    /// `amr` must contain all of these.
    pub amr: Vec<String>,
    /// Maximum age of `auth_time`.
    pub max_age: Option<Duration>,
}

/// A compiled claim condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    /// Claim path (`realm_access.roles` → `["realm_access", "roles"]`).
    pub claim: Vec<String>,
    pub op: ConditionOp,
    pub operand: Operand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOp {
    Equals,
    Contains,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Value(String),
    Param(String),
    Query(String),
}

/// A compiled time window.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    pub tz_name: String,
    pub tz: jiff::tz::TimeZone,
    /// Bit 0 = Monday … bit 6 = Sunday; `None` = every day.
    pub days: Option<u8>,
    /// Minutes since local midnight: start inclusive, end exclusive (may wrap).
    pub hours: Option<(u16, u16)>,
    pub from: Option<jiff::civil::Date>,
    pub until: Option<jiff::civil::Date>,
}

impl PartialEq for TimeWindow {
    fn eq(&self, o: &Self) -> bool {
        self.tz_name == o.tz_name
            && self.days == o.days
            && self.hours == o.hours
            && self.from == o.from
            && self.until == o.until
    }
}

impl TimeWindow {
    /// Whether the instant `unix_secs` falls inside the window.
    pub fn contains(&self, unix_secs: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_second(unix_secs) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        let date = local.date();
        if self.from.is_some_and(|f| date < f) || self.until.is_some_and(|u| date > u) {
            return false;
        }
        if let Some(mask) = self.days {
            let bit = local.weekday().to_monday_zero_offset();
            if mask & (1 << bit) == 0 {
                return false;
            }
        }
        if let Some((a, b)) = self.hours {
            let m = local.hour() as u16 * 60 + local.minute() as u16;
            let inside = if a < b { m >= a && m < b } else { m >= a || m < b };
            if !inside {
                return false;
            }
        }
        true
    }
}

/// Break-glass configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    pub scope: String,
    /// Header name, lower case.
    pub header: String,
    pub max_length: usize,
    /// Fewest visible characters (not whitespace, control, format or
    /// combining characters) after NFC normalisation.
    pub min_length: usize,
    pub reason_codes: Option<Vec<String>>,
    pub read_only: bool,
}

/// Bidirectional-text controls: they can make a justification read
/// differently in a review tool than it was written (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that render as nothing (or nothing on their own): whitespace,
/// controls, format characters (zero-width space/joiners, BOM, soft
/// hyphen, ...) and combining marks.
fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::NonspacingMark
                | GeneralCategory::EnclosingMark
                | GeneralCategory::SpacingMark
                | GeneralCategory::Unassigned
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
        )
        || matches!(c, '\u{2800}' | '\u{3164}' | '\u{115F}' | '\u{1160}' | '\u{FFA0}')
    // blank "letters"
}

/// A justification as recorded: NFC, control characters replaced, at most
/// 500 characters (invalid UTF-8 is replaced, never dropped silently).
pub(crate) fn sanitize_justification(raw: &[u8]) -> String {
    use unicode_normalization::UnicodeNormalization;
    String::from_utf8_lossy(raw)
        .nfc()
        .take(DEFAULT_JUSTIFICATION_MAX)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

impl BreakGlass {
    /// Check a justification header value; `Ok` holds the normalised
    /// (NFC, trimmed) text, `Err` says why it is refused: not UTF-8, bidi
    /// controls, control characters, fewer than `min_length` visible
    /// characters (whitespace, zero-width and format characters do not
    /// count), more than `max_length` characters, or no accepted reason code.
    pub fn check_justification(&self, raw: &[u8]) -> Result<String, &'static str> {
        use unicode_normalization::UnicodeNormalization;
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err("justification is not valid UTF-8");
        };
        let t: String = text.nfc().collect::<String>().trim().to_string();
        if t.is_empty() {
            return Err("justification is empty");
        }
        if t.chars().any(is_bidi_control) {
            return Err("justification contains bidirectional-text controls");
        }
        if t.chars().any(char::is_control) {
            return Err("justification contains control characters");
        }
        if t.chars().count() > self.max_length {
            return Err("justification is too long");
        }
        if t.chars().filter(|c| !is_invisible(*c)).count() < self.min_length {
            return Err("justification has too few visible characters");
        }
        if let Some(codes) = &self.reason_codes {
            let ok = codes.iter().any(|c| {
                t.strip_prefix(c.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', ' ']))
            });
            if !ok {
                return Err("justification does not start with an accepted reason code");
            }
        }
        Ok(t)
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The `route` label: the route's name, or its path template.
    pub label: Arc<str>,
    /// The path template as written.
    pub template: String,
    pub methods: Vec<String>,
    pub access: Access,
    pub conditions: Vec<ClaimCondition>,
    pub time: Option<TimeWindow>,
    pub step_up: Option<StepUp>,
    /// Shadow mode: denials are reported, not enforced.
    pub report_only: bool,
    /// `upgrade: websocket`: a WebSocket handshake may be forwarded (the
    /// tunnel is audited at open and close); every other route refuses upgrades.
    pub websocket: bool,
    /// A session idle timeout shorter than the gateway's, for this route.
    pub idle_timeout: Option<Duration>,
    /// Only DPoP-bound tokens with a valid proof (RFC 9449).
    pub require_dpop: bool,
    /// `file:line:column` of the route, for explanations.
    pub origin: String,
}

/// A route matched by a request, with its path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch<'p> {
    pub route: &'p Route,
    pub params: Vec<(&'p str, String)>,
}

/// The compiled, immutable policy. Cheap to share behind an `Arc`; a reload
/// builds a new one and swaps it in.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub(super) routes: Vec<Route>,
    /// One router per method: a `GET` lookup never lands on a `DELETE`-only
    /// route that happens to have a more specific template.
    pub(super) routers: Routers,
    pub(super) version: String,
    pub(super) roles: BTreeMap<String, Vec<String>>,
    pub(super) roles_mode: RolesMode,
    pub(super) break_glass: Option<BreakGlass>,
    pub(super) warnings: Vec<Diagnostic>,
    /// Every claim path a route condition reads, ordered by dotted name,
    /// each once (computed at compile time: the gateway records these
    /// claims with every request).
    pub(super) claim_paths: Vec<Vec<String>>,
}

impl PolicySet {
    /// Every claim path a route condition (`when.claims[].claim`) reads, as
    /// its segments (`realm_access.roles` → `["realm_access", "roles"]`),
    /// ordered by dotted name, each once. With `roles`, `acr`, `amr`,
    /// `auth_time` and `patient` these are the claims a decision can depend
    /// on: the audit record keeps them so `phigate policy replay` can decide
    /// the request again.
    pub fn claim_paths(&self) -> &[Vec<String>] {
        &self.claim_paths
    }

    /// Hash of the loaded policy sources (file names and contents), recorded
    /// as `policy_version` in every audit record.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// All compiled routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Role → scopes.
    pub fn roles(&self) -> &BTreeMap<String, Vec<String>> {
        &self.roles
    }

    pub fn roles_mode(&self) -> RolesMode {
        self.roles_mode
    }

    /// Break-glass configuration, when enabled.
    pub fn break_glass(&self) -> Option<&BreakGlass> {
        self.break_glass.as_ref()
    }

    /// Non-fatal findings (`policy check` prints them).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The route matching `method` and canonical `path`, if any.
    pub fn match_route(&self, method: &str, path: &str) -> Option<&Route> {
        self.match_with_params(method, path).map(|m| m.route)
    }

    /// The matching route and its path parameters.
    pub fn match_with_params(&self, method: &str, path: &str) -> Option<RouteMatch<'_>> {
        // HEAD is authorised exactly like GET.
        let method = if method == "HEAD" { "GET" } else { method };
        let router = self.routers.get(method)?;
        let m = router.at(path).ok()?;
        let route = self.routes.get(*m.value)?;
        let params = m
            .params
            .iter()
            .filter_map(|(k, v)| {
                let name = route_param_name(&route.template, k)?;
                Some((name, v.to_string()))
            })
            .collect();
        Some(RouteMatch { route, params })
    }

    /// Effective scopes of a token, after roles (see [`RolesMode`]).
    pub fn effective_scopes<'a>(
        &self,
        scopes: &'a [String],
        roles: &[String],
    ) -> std::borrow::Cow<'a, [String]> {
        let from_roles = || roles.iter().filter_map(|r| self.roles.get(r)).flatten();
        if self.roles_mode == RolesMode::Grant && from_roles().next().is_none() {
            return std::borrow::Cow::Borrowed(scopes);
        }
        std::borrow::Cow::Owned(match self.roles_mode {
            RolesMode::Grant => {
                let mut out: Vec<String> = scopes.to_vec();
                for s in from_roles() {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                }
                out
            }
            RolesMode::Cap => {
                let allowed: Vec<&String> = from_roles().collect();
                let allowed_owned: Vec<String> = allowed.iter().map(|s| (*s).clone()).collect();
                let allowed_smart = smart::granted(&allowed_owned);
                scopes
                    .iter()
                    .filter(|s| allowed.contains(s) || scope_satisfied(s, &allowed_owned, &allowed_smart))
                    .cloned()
                    .collect()
            }
        })
    }
}
