//! Compilation of policy files into the runtime [`PolicySet`].
//!
//! Everything an ops team can get wrong is caught here, once, with its
//! `file:line:column`; the runtime types (`model`) hold only validated data, so
//! [`crate::decide`] has no error paths of its own.
//!
//! This module owns [`compile`] itself: reading every source, the
//! policy-wide declarations (`settings.roles_mode`, `roles`, `break_glass`),
//! registering each compiled route in the per-method routers, and the policy
//! hash. The parts:
//! - `model`: the runtime types ([`PolicySet`], [`Route`], [`Access`], ...);
//! - `route`: compiling one route spec (methods, access rule, conditions,
//!   time window, step-up);
//! - `router`: route templates, their matchit translation and the
//!   per-method routers;
//! - `warnings`: the non-fatal findings `policy check` prints.

use std::collections::{BTreeMap, HashMap};

use phigate_yaml::{Diagnostic, PathSeg};
use sha2::{Digest, Sha256};

use crate::file::{PolicyFile, RolesMode};
use crate::smart;

mod model;
mod route;
mod router;
mod warnings;

pub(crate) use model::sanitize_justification;
pub use model::{
    scope_satisfied, Access, BreakGlass, ClaimCondition, ConditionOp, Operand, PolicySet, RequiredScopes,
    Route, RouteMatch, StepUp, TimeWindow, DEFAULT_JUSTIFICATION_MAX, DEFAULT_JUSTIFICATION_MIN,
};
pub use warnings::is_broad_scope;

use route::compile_route;
use router::Routers;
use warnings::{overlap_warnings, scope_warnings, unused_role_warnings};

/// Methods a route may name. Anything else in a request never matches.
/// `HEAD` is not listed: a HEAD request is authorised exactly like a GET.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

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

/// Compile policy sources into a [`PolicySet`].
///
/// Every source is parsed and validated; all problems across all files are
/// returned together, each with its `file:line:column`.
pub fn compile(sources: &[PolicySource]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut routers: Routers = HashMap::new();
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
    let mut claim_paths: Vec<Vec<String>> = routes
        .iter()
        .flat_map(|r| r.conditions.iter().map(|c| c.claim.clone()))
        .collect();
    claim_paths.sort_by_key(|p| p.join("."));
    claim_paths.dedup_by_key(|p| p.join("."));
    Ok(PolicySet {
        claim_paths,
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
mod tests;
