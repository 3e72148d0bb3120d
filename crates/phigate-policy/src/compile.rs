//! Compilation of policy files into the runtime [`PolicySet`].
//!
//! Everything an ops team can get wrong is caught here, once, with its
//! `file:line:column`; the runtime types below hold only validated data, so
//! [`crate::decide`] has no error paths of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use phigate_yaml::{Diagnostic, PathSeg};
use sha2::{Digest, Sha256};

use crate::file::{self, Mode, PolicyFile, RolesMode, RouteSpec};
use crate::smart;

/// Methods a route may name. Anything else in a request never matches.
/// `HEAD` is not listed: a HEAD request is authorised exactly like a GET.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Default longest break-glass justification (characters).
pub const DEFAULT_JUSTIFICATION_MAX: usize = 500;
/// Default fewest visible characters in a break-glass justification.
pub const DEFAULT_JUSTIFICATION_MIN: usize = 8;

/// A policy source: a file name (for diagnostics) and its text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

impl PolicySource {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

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
    routes: Vec<Route>,
    /// One router per method: a `GET` lookup never lands on a `DELETE`-only
    /// route that happens to have a more specific template.
    routers: HashMap<&'static str, matchit::Router<usize>>,
    version: String,
    roles: BTreeMap<String, Vec<String>>,
    roles_mode: RolesMode,
    break_glass: Option<BreakGlass>,
    warnings: Vec<Diagnostic>,
}

impl PolicySet {
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

/// The `&'static`-free parameter name as it appears in the template (matchit
/// hands back names borrowed from the router; we map them to the route's own).
fn route_param_name<'a>(template: &'a str, name: &str) -> Option<&'a str> {
    if name == "rest" && template.ends_with("**") {
        return Some(&template[template.len() - 2..]);
    }
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .find(|n| *n == name)
}

/// Translate our template syntax to matchit's and validate it.
fn to_matchit(template: &str) -> Result<String, String> {
    if !template.starts_with('/') {
        return Err("path must start with '/'".into());
    }
    if template == "/" {
        return Ok("/".into());
    }
    let segments: Vec<&str> = template[1..].split('/').collect();
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        out.push('/');
        if seg.is_empty() {
            return Err("path has an empty segment".into());
        }
        if *seg == "**" {
            if !last {
                return Err("'**' may only be the last segment".into());
            }
            out.push_str("{*rest}");
            continue;
        }
        if *seg == "." || *seg == ".." {
            return Err("path has a dot segment".into());
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid parameter name '{{{name}}}'"));
            }
            out.push_str(seg);
            continue;
        }
        if seg.contains(['{', '}', '*', '%', ';', '?', '#', '\\', ' ']) {
            return Err(format!(
                "segment '{seg}' must be a literal, a whole '{{param}}' or a final '**'"
            ));
        }
        out.push_str(seg);
    }
    Ok(out)
}

/// Compile policy sources into a [`PolicySet`].
///
/// Every source is parsed and validated; all problems across all files are
/// returned together, each with its `file:line:column`.
pub fn compile(sources: &[PolicySource]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut routers: HashMap<&'static str, matchit::Router<usize>> = HashMap::new();
    // (method, matchit template) -> origin of the first definition
    let mut seen: HashMap<(&'static str, String), String> = HashMap::new();
    let mut roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut role_origin: HashMap<String, String> = HashMap::new();
    let mut roles_mode: Option<(RolesMode, String)> = None;
    let mut break_glass: Option<(BreakGlass, String)> = None;

    if sources.is_empty() {
        errors.push(Diagnostic::new("<policies>", None, "no policy files found"));
    }

    for src in sources {
        // Every serde problem of the file (unknown keys, wrong types) is
        // reported; what could be read is checked further below.
        let (file, problems, locator) = phigate_yaml::parse_all_located::<PolicyFile>(&src.name, &src.text);
        errors.extend(problems);
        let Some(file) = file else { continue };
        let at = |path: &[PathSeg<'_>], msg: String| Diagnostic::new(&src.name, locator.locate(path), msg);
        let origin_of = |path: &[PathSeg<'_>]| match locator.locate(path) {
            Some(l) => format!("{}:{}:{}", src.name, l.line, l.column),
            None => src.name.clone(),
        };

        if file.version != 1 {
            errors.push(at(
                &[PathSeg::Key("version")],
                format!("unsupported version {}, expected 1", file.version),
            ));
        }
        if let Some(settings) = &file.settings {
            if let Some(m) = settings.roles_mode {
                let here = origin_of(&[PathSeg::Key("settings"), PathSeg::Key("roles_mode")]);
                match &roles_mode {
                    Some((_, first)) => errors.push(at(
                        &[PathSeg::Key("settings"), PathSeg::Key("roles_mode")],
                        format!("`roles_mode` is already set at {first}"),
                    )),
                    None => roles_mode = Some((m, here)),
                }
            }
        }
        for (name, scopes) in &file.roles {
            let p = [PathSeg::Key("roles"), PathSeg::Key(name)];
            if let Some(first) = role_origin.get(name) {
                errors.push(at(&p, format!("role `{name}` is already defined at {first}")));
                continue;
            }
            if name.is_empty() || scopes.is_empty() {
                errors.push(at(
                    &p,
                    format!("role `{name}` needs a name and at least one scope"),
                ));
            }
            for s in scopes {
                if let Err(m) = check_scope_syntax(s) {
                    errors.push(at(&p, m));
                }
                scope_warnings(s, &mut warnings, || at(&p, String::new()));
            }
            role_origin.insert(name.clone(), origin_of(&p));
            roles.insert(name.clone(), scopes.clone());
        }
        if let Some(bg) = &file.break_glass {
            let p = [PathSeg::Key("break_glass")];
            let field = |k: &'static str| [PathSeg::Key("break_glass"), PathSeg::Key(k)];
            if let Some((_, first)) = &break_glass {
                errors.push(at(&p, format!("`break_glass` is already declared at {first}")));
            } else {
                let mut ok = true;
                if let Err(m) = check_scope_syntax(&bg.scope) {
                    errors.push(at(&field("scope"), m));
                    ok = false;
                }
                if bg.header.is_empty()
                    || !bg
                        .header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    errors.push(at(
                        &field("header"),
                        format!("`{}` is not a valid header name", bg.header),
                    ));
                    ok = false;
                }
                let max_length = bg.max_length.unwrap_or(DEFAULT_JUSTIFICATION_MAX);
                if max_length == 0 || max_length > 4096 {
                    errors.push(at(
                        &field("max_length"),
                        "max_length must be between 1 and 4096".into(),
                    ));
                    ok = false;
                }
                let min_length = bg.min_length.unwrap_or(DEFAULT_JUSTIFICATION_MIN);
                if min_length == 0 || min_length > max_length {
                    errors.push(at(
                        &field("min_length"),
                        format!("min_length must be between 1 and max_length ({max_length})"),
                    ));
                    ok = false;
                }
                if let Some(codes) = &bg.reason_codes {
                    if codes.is_empty()
                        || codes
                            .iter()
                            .any(|c| c.is_empty() || c.contains(char::is_whitespace))
                    {
                        errors.push(at(
                            &field("reason_codes"),
                            "reason codes must be non-empty words".into(),
                        ));
                        ok = false;
                    }
                }
                if bg.read_only == Some(false) {
                    warnings.push(at(
                        &field("read_only"),
                        "break-glass allows writes (`read_only: false`); HIPAA emergency access is usually read-only"
                            .into(),
                    ));
                }
                if ok {
                    break_glass = Some((
                        BreakGlass {
                            scope: bg.scope.clone(),
                            header: bg.header.to_ascii_lowercase(),
                            max_length,
                            min_length,
                            reason_codes: bg.reason_codes.clone(),
                            read_only: bg.read_only.unwrap_or(true),
                        },
                        origin_of(&p),
                    ));
                }
            }
        }

        for (i, spec) in file.routes.iter().enumerate() {
            let route_path = [PathSeg::Key("routes"), PathSeg::Index(i)];
            let field = |k: &'static str| [PathSeg::Key("routes"), PathSeg::Index(i), PathSeg::Key(k)];
            let origin = origin_of(&route_path);
            match compile_route(spec, file.mode, origin.clone()) {
                Err(problems) => {
                    for (key, msg) in problems {
                        errors.push(at(&field(key), msg));
                    }
                }
                Ok((route, pattern, methods)) => {
                    if let Access::Scopes(req) = &route.access {
                        for s in req.scopes() {
                            scope_warnings(s, &mut warnings, || at(&field("scopes"), String::new()));
                        }
                    }
                    if route.report_only {
                        warnings.push(at(
                            &route_path,
                            format!(
                                "route `{}` is report_only: its denials are logged, not enforced",
                                route.label
                            ),
                        ));
                    }
                    let idx = routes.len();
                    let mut inserted = false;
                    for m in methods {
                        if let Some(first) = seen.get(&(m, pattern.clone())) {
                            errors.push(at(
                                &field("path"),
                                format!("duplicate route {m} {} (first defined at {first})", spec.path),
                            ));
                            continue;
                        }
                        if let Err(e) = routers.entry(m).or_default().insert(pattern.clone(), idx) {
                            errors.push(at(
                                &field("path"),
                                format!("route {m} {} conflicts: {e}", spec.path),
                            ));
                            continue;
                        }
                        seen.insert((m, pattern.clone()), origin.clone());
                        inserted = true;
                    }
                    if inserted {
                        routes.push(route);
                    }
                }
            }
        }
    }

    if let Some((bg, origin)) = &break_glass {
        scope_warnings(&bg.scope, &mut warnings, || {
            Diagnostic::new(origin, None, String::new())
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    overlap_warnings(&routes, &mut warnings);
    unused_role_warnings(
        &routes,
        &roles,
        &role_origin,
        break_glass.as_ref().map(|b| &b.0),
        &mut warnings,
    );
    Ok(PolicySet {
        routes,
        routers,
        version: policy_hash(sources),
        roles,
        roles_mode: roles_mode.map(|m| m.0).unwrap_or_default(),
        break_glass: break_glass.map(|b| b.0),
        warnings,
    })
}

/// RFC 6749 scope-token syntax, plus SMART syntax for `patient/`, `user/`, `system/` scopes.
fn check_scope_syntax(scope: &str) -> Result<(), String> {
    if scope.is_empty()
        || scope
            .bytes()
            .any(|b| b <= 0x20 || b >= 0x7f || b == b'"' || b == b'\\')
    {
        return Err(format!("invalid scope {scope:?} (RFC 6749 scope-token)"));
    }
    if smart::looks_like_smart(scope) {
        smart::parse(scope).map_err(|e| format!("invalid SMART scope `{scope}`: {e}"))?;
    }
    Ok(())
}

/// Warnings for broad scopes and unknown SMART resource types.
fn scope_warnings(scope: &str, warnings: &mut Vec<Diagnostic>, at: impl Fn() -> Diagnostic) {
    let mut warn = |msg: String| {
        let mut d = at();
        d.message = msg;
        warnings.push(d);
    };
    if is_broad_scope(scope) {
        warn(format!(
            "scope `{scope}` is very broad; prefer resource- and action-specific scopes (minimum necessary)"
        ));
    }
    if let Ok(s) = smart::parse(scope) {
        if let Some(t) = &s.resource {
            if !smart::is_known_resource_type(t) {
                warn(format!(
                    "scope `{scope}` names `{t}`, which is not a FHIR R4 resource type"
                ));
            }
        }
    }
}

/// `*`, `*.*`, SMART `*` resource types, and names with an `all` component.
pub fn is_broad_scope(scope: &str) -> bool {
    if scope.contains('*') {
        return true;
    }
    scope
        .split(['.', '/', ':', '_', '-'])
        .any(|part| part.eq_ignore_ascii_case("all"))
}

/// Public routes carved out of a protected `**` prefix are worth a second look.
fn overlap_warnings(routes: &[Route], warnings: &mut Vec<Diagnostic>) {
    for wide in routes
        .iter()
        .filter(|r| r.template.ends_with("/**") && r.access != Access::Public)
    {
        let prefix = &wide.template[..wide.template.len() - 2];
        // SMART requires the capability statement to be public: expected, not a hole.
        let metadata = match &wide.access {
            Access::Fhir { base } => format!("{base}/metadata"),
            _ => String::new(),
        };
        for r in routes.iter().filter(|r| {
            r.access == Access::Public && r.template.starts_with(prefix) && r.template != metadata
        }) {
            if r.methods.iter().any(|m| wide.methods.contains(m)) {
                warnings.push(Diagnostic::new(
                    r.origin.clone(),
                    None,
                    format!(
                        "public route `{}` overlaps protected route `{}` ({}); requests it matches need no token",
                        r.label, wide.label, wide.origin
                    ),
                ));
            }
        }
    }
    // FHIR-aware routes that no FHIR interaction can ever reach.
    for r in routes {
        if let Access::Fhir { base } = &r.access {
            if r.template.ends_with("**") {
                continue;
            }
            let sample: String = r
                .template
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let rel = crate::fhir::relative_to_base(&sample, base);
            let reachable = r
                .methods
                .iter()
                .any(|m| crate::fhir::classify(m, rel, None).is_ok());
            if !reachable {
                warnings.push(Diagnostic::new(
                    r.origin.clone(),
                    None,
                    format!(
                        "route `{}` is unreachable: no request it matches is a FHIR interaction",
                        r.label
                    ),
                ));
            }
        }
    }
}

fn unused_role_warnings(
    routes: &[Route],
    roles: &BTreeMap<String, Vec<String>>,
    role_origin: &HashMap<String, String>,
    bg: Option<&BreakGlass>,
    warnings: &mut Vec<Diagnostic>,
) {
    let fhir_routes = routes.iter().any(|r| matches!(r.access, Access::Fhir { .. }));
    for (name, scopes) in roles {
        let used = scopes.iter().any(|s| {
            bg.is_some_and(|b| &b.scope == s)
                || (fhir_routes && smart::parse(s).is_ok())
                || routes.iter().any(|r| match &r.access {
                    Access::Scopes(req) => {
                        let g = std::slice::from_ref(s);
                        let gs = smart::granted(g);
                        req.scopes().iter().any(|rs| scope_satisfied(rs, g, &gs))
                    }
                    _ => false,
                })
        });
        if !used {
            warnings.push(Diagnostic::new(
                role_origin.get(name).cloned().unwrap_or_default(),
                None,
                format!("role `{name}` is unused: none of its scopes is required by any route"),
            ));
        }
    }
}

type RouteProblems = Vec<(&'static str, String)>;

fn compile_route(
    spec: &RouteSpec,
    file_mode: Option<Mode>,
    origin: String,
) -> Result<(Route, String, Vec<&'static str>), RouteProblems> {
    let mut problems: RouteProblems = Vec::new();
    let pattern = to_matchit(&spec.path)
        .map_err(|e| problems.push(("path", e)))
        .ok();

    let mut methods: Vec<&'static str> = Vec::new();
    if spec.methods.is_empty() {
        problems.push((
            "methods",
            "at least one method is required (use [\"*\"] for any)".into(),
        ));
    }
    for m in &spec.methods {
        if m == "*" {
            methods.extend_from_slice(METHODS);
        } else if m == "HEAD" {
            problems.push((
                "methods",
                "HEAD is authorised exactly like GET; list GET instead".into(),
            ));
        } else if let Some(known) = METHODS.iter().find(|k| **k == m) {
            methods.push(known);
        } else {
            problems.push((
                "methods",
                format!(
                    "unknown method '{m}' (expected one of {}, or \"*\")",
                    METHODS.join(", ")
                ),
            ));
        }
    }
    methods.sort_unstable();
    methods.dedup();

    let declared = [spec.public, spec.scopes.is_some(), spec.fhir.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let access = if declared > 1 {
        problems.push((
            "public",
            "declare exactly one of `public: true`, `scopes` or `fhir`".into(),
        ));
        None
    } else if spec.public {
        if spec.when.is_some()
            || spec.require_acr.is_some()
            || spec.require_amr.is_some()
            || spec.max_auth_age.is_some()
        {
            problems.push((
                "public",
                "a public route cannot have conditions or step-up requirements".into(),
            ));
        }
        Some(Access::Public)
    } else if let Some(f) = &spec.fhir {
        let base = f.base.trim_end_matches('/');
        if !f.base.starts_with('/') || base.contains(['{', '}', '*']) {
            problems.push((
                "fhir",
                format!("FHIR base `{}` must be a literal path like /fhir", f.base),
            ));
        } else if !(spec.path == base || spec.path.starts_with(&format!("{base}/"))) {
            problems.push((
                "fhir",
                format!(
                    "route path `{}` is not under the FHIR base `{}`",
                    spec.path, f.base
                ),
            ));
        }
        Some(Access::Fhir {
            base: base.to_string(),
        })
    } else if let Some(s) = &spec.scopes {
        let (list, req) = match (&s.all_of, &s.any_of) {
            (Some(v), None) => (v.as_slice(), RequiredScopes::AllOf(v.clone())),
            (None, Some(v)) => (v.as_slice(), RequiredScopes::AnyOf(v.clone())),
            _ => {
                problems.push((
                    "scopes",
                    "`scopes` needs exactly one of `all_of` or `any_of`".into(),
                ));
                (&[][..], RequiredScopes::AllOf(Vec::new()))
            }
        };
        if list.is_empty() && (s.all_of.is_some() != s.any_of.is_some()) {
            problems.push(("scopes", "scope list must not be empty".into()));
        }
        for scope in list {
            if let Err(m) = check_scope_syntax(scope) {
                problems.push(("scopes", m));
            }
        }
        Some(Access::Scopes(req))
    } else {
        problems.push((
            "path",
            "route must declare `scopes`, `fhir` or `public: true`".into(),
        ));
        None
    };
    if let Some(name) = &spec.name {
        if name.is_empty() || name.len() > 128 || name.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'"') {
            problems.push((
                "name",
                "route name must be 1-128 printable ASCII characters".into(),
            ));
        }
    }

    let params: Vec<&str> = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    let mut conditions = Vec::new();
    let mut time = None;
    if let Some(when) = &spec.when {
        for c in &when.claims {
            let op = match (&c.equals, &c.contains) {
                (Some(o), None) => Some((ConditionOp::Equals, o)),
                (None, Some(o)) => Some((ConditionOp::Contains, o)),
                _ => {
                    problems.push((
                        "when",
                        format!(
                            "condition on `{}` needs exactly one of `equals` or `contains`",
                            c.claim
                        ),
                    ));
                    None
                }
            };
            let path: Vec<String> = c.claim.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                problems.push(("when", format!("`{}` is not a valid claim path", c.claim)));
            }
            if let Some((op, o)) = op {
                let operand = match (&o.value, &o.param, &o.query) {
                    (Some(v), None, None) => Some(Operand::Value(v.clone())),
                    (None, Some(p), None) => {
                        if !params.contains(&p.as_str()) {
                            problems.push((
                                "when",
                                format!(
                                    "path parameter `{p}` is not in the route template `{}`",
                                    spec.path
                                ),
                            ));
                        }
                        Some(Operand::Param(p.clone()))
                    }
                    (None, None, Some(q)) if !q.is_empty() => Some(Operand::Query(q.clone())),
                    _ => {
                        problems.push((
                            "when",
                            format!(
                                "operand for `{}` needs exactly one of `value`, `param` or `query`",
                                c.claim
                            ),
                        ));
                        None
                    }
                };
                if let Some(operand) = operand {
                    conditions.push(ClaimCondition {
                        claim: path,
                        op,
                        operand,
                    });
                }
            }
        }
        if let Some(t) = &when.time {
            match compile_time_window(t) {
                Ok(w) => time = Some(w),
                Err(m) => problems.push(("when", m)),
            }
        }
    }

    let mut step_up = StepUp::default();
    if let Some(acr) = &spec.require_acr {
        if acr.is_empty() || acr.iter().any(String::is_empty) {
            problems.push((
                "require_acr",
                "require_acr needs at least one non-empty value".into(),
            ));
        }
        step_up.acr = acr.clone();
    }
    if let Some(amr) = &spec.require_amr {
        if amr.is_empty() || amr.iter().any(String::is_empty) {
            problems.push((
                "require_amr",
                "require_amr needs at least one non-empty value".into(),
            ));
        }
        step_up.amr = amr.clone();
    }
    if let Some(age) = &spec.max_auth_age {
        match humantime::parse_duration(age) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(7 * 24 * 3600) => {
                step_up.max_age = Some(d)
            }
            Ok(_) => problems.push(("max_auth_age", "max_auth_age must be between 1s and 7d".into())),
            Err(e) => problems.push(("max_auth_age", format!("`{age}` is not a duration like 15m: {e}"))),
        }
    }
    let step_up = (step_up != StepUp::default()).then_some(step_up);
    let report_only = spec.mode.or(file_mode) == Some(Mode::ReportOnly);
    let websocket = match spec.upgrade {
        None => false,
        Some(file::UpgradeSpec::Websocket) => {
            if !methods.iter().all(|m| *m == "GET") {
                problems.push((
                    "upgrade",
                    "`upgrade: websocket` needs `methods: [GET]` (a WebSocket handshake is a GET)".into(),
                ));
            }
            if matches!(access, Some(Access::Fhir { .. })) {
                problems.push((
                    "upgrade",
                    "`upgrade: websocket` belongs on an explicit route (`scopes` or `public`), not a FHIR-aware one"
                        .into(),
                ));
            }
            true
        }
    };

    match (problems.is_empty(), pattern, access) {
        (true, Some(pattern), Some(access)) => {
            let label: Arc<str> = Arc::from(spec.name.clone().unwrap_or_else(|| spec.path.clone()));
            let route = Route {
                label,
                template: spec.path.clone(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
                access,
                conditions,
                time,
                step_up,
                report_only,
                websocket,
                origin,
            };
            Ok((route, pattern, methods))
        }
        _ => Err(problems),
    }
}

fn compile_time_window(t: &file::TimeWindowSpec) -> Result<TimeWindow, String> {
    let tz = jiff::tz::TimeZone::get(&t.timezone).map_err(|_| {
        format!(
            "unknown time zone `{}` (use an IANA name like America/New_York)",
            t.timezone
        )
    })?;
    let days = match &t.days {
        None => None,
        Some(list) => {
            let mut mask = 0u8;
            for d in list {
                let bit = match d.to_ascii_lowercase().as_str() {
                    "mon" => 0,
                    "tue" => 1,
                    "wed" => 2,
                    "thu" => 3,
                    "fri" => 4,
                    "sat" => 5,
                    "sun" => 6,
                    other => return Err(format!("unknown weekday `{other}` (use mon … sun)")),
                };
                mask |= 1 << bit;
            }
            if mask == 0 {
                return Err("`days` must list at least one weekday".into());
            }
            Some(mask)
        }
    };
    let hours = match &t.hours {
        None => None,
        Some(h) => {
            let (a, b) = h
                .split_once('-')
                .ok_or_else(|| format!("`{h}` is not HH:MM-HH:MM"))?;
            let hm = |s: &str| -> Result<u16, String> {
                let (hh, mm) = s
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| format!("`{s}` is not HH:MM"))?;
                let (hh, mm): (u16, u16) = (
                    hh.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
                    mm.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
                );
                if hh > 24 || mm > 59 || (hh == 24 && mm != 0) {
                    return Err(format!("`{s}` is not a time of day"));
                }
                Ok(hh * 60 + mm)
            };
            let (a, b) = (hm(a)?, hm(b)?);
            if a == b {
                return Err(format!("`{h}` is an empty window"));
            }
            Some((a, b))
        }
    };
    let date = |s: &Option<String>, k: &str| -> Result<Option<jiff::civil::Date>, String> {
        s.as_ref()
            .map(|v| {
                v.parse::<jiff::civil::Date>()
                    .map_err(|_| format!("`{k}: {v}` is not a date like 2026-01-31"))
            })
            .transpose()
    };
    let (from, until) = (date(&t.from, "from")?, date(&t.until, "until")?);
    if let (Some(f), Some(u)) = (from, until) {
        if f > u {
            return Err("`from` is after `until`".into());
        }
    }
    Ok(TimeWindow {
        tz_name: t.timezone.clone(),
        tz,
        days,
        hours,
        from,
        until,
    })
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

fn policy_hash(sources: &[PolicySource]) -> String {
    let mut sorted: Vec<&PolicySource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for s in sorted {
        // The file name, not its directory: the same policy files hash the
        // same wherever they are deployed (and embedded in dev mode).
        let name = std::path::Path::new(&s.name)
            .file_name()
            .map_or(s.name.as_str(), |n| n.to_str().unwrap_or(&s.name));
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((s.text.len() as u64).to_be_bytes());
        h.update(s.text.as_bytes());
    }
    let digest = h.finalize();
    format!("sha256:{}", &hex::encode(digest)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<PolicySet, Vec<Diagnostic>> {
        compile(&[PolicySource::new("p.yaml", text)])
    }

    #[test]
    fn compiles_and_matches_templates() {
        let p = one(
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n  - name: everything\n    methods: [\"*\"]\n    path: /fhir/**\n    scopes: { all_of: [admin] }\n",
        )
        .unwrap();
        assert_eq!(
            p.match_route("GET", "/fhir/Patient/1").unwrap().template,
            "/fhir/Patient/{id}"
        );
        assert_eq!(
            p.match_route("GET", "/fhir/metadata").unwrap().access,
            Access::Public
        );
        assert_eq!(
            &*p.match_route("DELETE", "/fhir/Patient/1").unwrap().label,
            "everything"
        );
        assert_eq!(
            &*p.match_route("GET", "/fhir/Patient/1/_history/2").unwrap().label,
            "everything"
        );
        assert!(p.match_route("GET", "/fhir").is_none());
        assert!(p.match_route("GET", "/other").is_none());
        assert!(p.match_route("BREW", "/fhir/metadata").is_none());
        // Case-sensitive.
        assert_eq!(
            &*p.match_route("GET", "/fhir/patient/1").unwrap().label,
            "everything"
        );
        assert!(p.match_route("GET", "/FHIR/metadata").is_none());
        assert!(p.version().starts_with("sha256:"));
    }

    #[test]
    fn reports_every_error_with_location() {
        let errs = compile(&[
            PolicySource::new(
                "a.yaml",
                "version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    scopes: { any_of: [a] }\n  - methods: [FETCH]\n    path: /y/**/z\n    scopes: { any_of: [] }\n  - methods: [GET]\n    path: /x\n    public: true\n",
            ),
            PolicySource::new("b.yaml", "version: 1\nroutes:\n  - methods: [GET]\n    path: /z\n    scopez: {}\n"),
        ])
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let joined = text.join("\n");
        assert!(joined.contains("a.yaml:6:"), "{joined}"); // unknown method
        assert!(
            joined.contains("a.yaml:7:") && joined.contains("'**'"),
            "{joined}"
        );
        assert!(
            joined.contains("a.yaml:8:") && joined.contains("must not be empty"),
            "{joined}"
        );
        assert!(
            joined.contains("a.yaml:10:") && joined.contains("duplicate route GET /x"),
            "{joined}"
        );
        assert!(
            joined.contains("b.yaml:5:") && joined.contains("unknown field `scopez`"),
            "{joined}"
        );
    }

    #[test]
    fn duplicate_across_files_is_an_error() {
        let r = "version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n";
        let errs = compile(&[PolicySource::new("a.yaml", r), PolicySource::new("b.yaml", r)]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().contains("first defined at a.yaml:3:"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn conflicting_parameter_names_are_errors() {
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n  - methods: [GET]\n    path: /x/{name}\n    public: true\n").unwrap_err();
        assert!(errs[0].to_string().contains("conflicts"), "{}", errs[0]);
    }

    #[test]
    fn route_needs_access_declaration() {
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n").unwrap_err();
        assert!(errs[0].message.contains("`scopes`, `fhir` or `public: true`"));
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    public: true\n    scopes: { all_of: [a] }\n").unwrap_err();
        assert!(errs[0].message.contains("exactly one of"));
    }

    #[test]
    fn version_hash_ignores_the_directory() {
        let text = "version: 1\nroutes: []\n";
        let a = compile(&[PolicySource::new("/etc/phigate/policies/p.yaml", text)]).unwrap();
        let b = compile(&[PolicySource::new("p.yaml", text)]).unwrap();
        assert_eq!(a.version(), b.version());
    }

    #[test]
    fn version_hash_changes_with_content() {
        let a = one("version: 1\nroutes: []\n").unwrap();
        let b = one("version: 1\nroutes: []\n# changed\n").unwrap();
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn no_sources_is_an_error() {
        assert!(compile(&[]).is_err());
    }

    #[test]
    fn scope_requirements() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = RequiredScopes::AllOf(g(&["a", "b"]));
        let any = RequiredScopes::AnyOf(g(&["a", "b"]));
        assert!(all.is_satisfied_by(&g(&["b", "a", "c"])));
        assert!(!all.is_satisfied_by(&g(&["a"])));
        assert!(any.is_satisfied_by(&g(&["b"])));
        assert!(!any.is_satisfied_by(&g(&["c"])));
        // No implicit hierarchy.
        let versioned = RequiredScopes::AllOf(g(&["v1.patient.records.read"]));
        assert!(!versioned.is_satisfied_by(&g(&["v1.patient", "v1", "v1.patient.records"])));
    }
}
