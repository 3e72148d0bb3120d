//! Compilation of one route spec into a [`Route`]: its methods, access rule
//! (`public`, `scopes` or `fhir`), claim conditions and time window
//! (`when`), step-up requirements, mode and upgrade, with every problem
//! reported against the key of the spec it concerns.

use std::sync::Arc;
use std::time::Duration;

use crate::file::{self, Mode, RouteSpec};

use super::router::to_matchit;
use super::{
    check_scope_syntax, Access, ClaimCondition, ConditionOp, Operand, RequiredScopes, Route, StepUp,
    TimeWindow, METHODS,
};

pub(super) type RouteProblems = Vec<(&'static str, String)>;

pub(super) fn compile_route(
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
    let mut idle_timeout = None;
    if let Some(t) = &spec.idle_timeout {
        match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(24 * 3600) => {
                idle_timeout = Some(d)
            }
            Ok(_) => problems.push(("idle_timeout", "idle_timeout must be between 1s and 24h".into())),
            Err(e) => problems.push(("idle_timeout", format!("`{t}` is not a duration like 5m: {e}"))),
        }
    }
    if spec.public && (idle_timeout.is_some() || spec.require_dpop) {
        problems.push((
            "public",
            "a public route takes no token, so it cannot have `idle_timeout` or `require_dpop`".into(),
        ));
    }
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
                idle_timeout,
                require_dpop: spec.require_dpop,
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
