//! Non-fatal findings of a policy (`policy check` prints them): broad
//! scopes and unknown SMART resource types, public routes carved out of a
//! protected `**` prefix, FHIR-aware routes no interaction can reach, and
//! roles whose scopes no route requires.

use std::collections::{BTreeMap, HashMap};

use phigate_yaml::Diagnostic;

use crate::smart;

use super::{scope_satisfied, Access, BreakGlass, Route};

/// Warnings for broad scopes and unknown SMART resource types.
pub(super) fn scope_warnings(scope: &str, warnings: &mut Vec<Diagnostic>, at: impl Fn() -> Diagnostic) {
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
pub(super) fn overlap_warnings(routes: &[Route], warnings: &mut Vec<Diagnostic>) {
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

pub(super) fn unused_role_warnings(
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
