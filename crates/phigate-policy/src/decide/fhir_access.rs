//! FHIR-aware access: a request under a `fhir` route, classified with what
//! the backend also acts on ([`fhir_request`]), is authorised part by part
//! ([`Need`]) against the caller's SMART scopes and the patient compartment
//! ([`authorize`], [`fhir_decision`]): the interaction itself, the search a
//! conditional interaction runs, and every resource type an
//! `_include`/`_revinclude` adds.

use crate::compile::Route;
use crate::fhir::{self, FhirRequest, Include, Interaction, Returned};
use crate::request::Prepared;
use crate::smart::{self, Context, Perm, SmartScope};
use crate::Reason;

use super::{with_route, Claims, Decision};

type Refusal = (Reason, String);

/// Classify a request under a FHIR-aware route, with what the backend will
/// also act on: the form body of `POST [type]/_search` (merged with the
/// query string, as FHIR combines them) and `If-None-Exist`.
pub(super) fn fhir_request(
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
pub(super) fn fhir_decision(
    route: &Route,
    req: &FhirRequest,
    claims: &Claims,
    scopes: &[String],
) -> Decision {
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
