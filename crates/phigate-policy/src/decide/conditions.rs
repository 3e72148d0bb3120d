//! A route's claim conditions (`when.claims`) and step-up authentication
//! requirements (`require_acr`, `require_amr`, `max_auth_age`; RFC 9470).

use serde_json::Value;

use crate::compile::{ClaimCondition, ConditionOp, Operand, Route};

use super::{Claims, StepUpChallenge};

/// The first claim condition that fails, described.
pub(super) fn failed_condition(
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
pub(super) fn step_up_challenge(route: &Route, now: i64, claims: &Claims) -> Option<StepUpChallenge> {
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
