//! Batch and transaction Bundles (`POST` to the FHIR base): every entry is
//! classified and authorised as a FHIR request of its own.

use serde_json::Value;

use crate::compile::Route;
use crate::fhir::{self, Interaction};
use crate::Reason;

use super::fhir_access::fhir_decision;
use super::{with_route, Claims, Decision};

/// Most entries a batch/transaction may have.
pub const MAX_BUNDLE_ENTRIES: usize = 500;

/// Authorise every entry of a batch/transaction bundle; the first denial wins.
///
/// The body is parsed strictly: a duplicate JSON member anywhere (`entry`,
/// `url`, `method`, ...) refuses the bundle, since phigate forwards the
/// bytes and the server might act on the member phigate did not read.
pub(super) fn batch_decision(
    route: &Route,
    body: Option<&[u8]>,
    claims: &Claims,
    scopes: &[String],
) -> Decision {
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
