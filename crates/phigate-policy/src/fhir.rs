//! Classification of a FHIR REST request into an interaction.
//!
//! [`classify`] maps `(method, path relative to the FHIR base, query)` onto
//! one FHIR RESTful interaction, the resource type and id it targets and its
//! decoded query parameters. Only the shapes listed on [`classify`] are
//! recognised; anything else (compartment search, system-level search and
//! history, unknown methods, bad ids or type names) is [`Unmapped`], so
//! callers can fail closed.
//!
//! A patient-scoped search must name the patient through the parameters of
//! the FHIR R4 Patient CompartmentDefinition ([`compartment_search`], data in
//! [`crate::fhir_data`]); [`includes`] and [`Include::returned_types`] say
//! which resource types `_include`/`_revinclude` can add to a search result,
//! so every one of them can be authorised; [`has_cross_patient_params`]
//! spots parameters that filter on other resources (chains, `_has`, ...).

use crate::smart::{is_type_name, percent_decode, Perm};

/// A FHIR RESTful interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `GET /T/{id}`.
    Read,
    /// `GET /T/{id}/_history/{vid}`.
    Vread,
    /// `GET /T/{id}/_history` (instance) or `GET /T/_history` (type).
    History,
    /// `GET /T` or `POST /T/_search`.
    Search,
    /// `POST /T`.
    Create,
    /// `PUT /T/{id}`.
    Update,
    /// `PATCH /T/{id}`.
    Patch,
    /// `DELETE /T/{id}`.
    Delete,
    /// `PUT /T?criteria`: update the resource the criteria select.
    ConditionalUpdate,
    /// `PATCH /T?criteria`.
    ConditionalPatch,
    /// `DELETE /T?criteria`: delete the resources the criteria select.
    ConditionalDelete,
    /// `GET /metadata`.
    Capabilities,
    /// `POST /`: a batch or transaction Bundle (body not inspected).
    Batch,
    /// A `$operation` at system, type or instance level.
    Operation,
}

/// A classified FHIR request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirRequest {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type; `None` for system-level requests (batch,
    /// capabilities, system operations).
    pub resource_type: Option<String>,
    /// The resource id for instance-level requests.
    pub id: Option<String>,
    /// Decoded query parameters in request order (form-urlencoded: `+` is a
    /// space, `%XX` decoded). Repeated names are kept. For a conditional
    /// update, patch or delete these are the criteria (see [`Self::criteria`]).
    pub params: Vec<(String, String)>,
    /// The search a conditional interaction runs before its effect: the
    /// query of a conditional update/patch/delete, or the `If-None-Exist`
    /// criteria of a conditional create. `None` for unconditional requests.
    pub criteria: Option<Vec<(String, String)>>,
}

impl FhirRequest {
    /// The SMART permission the interaction needs, following SMART App
    /// Launch v2: read, vread and instance history need `r`; search and
    /// type-level history need `s`; create `c`; update and patch `u`;
    /// delete `d`. `None` for capabilities, batch and operations, which no
    /// single resource permission covers: the caller decides.
    pub fn required_perm(&self) -> Option<Perm> {
        match self.interaction {
            Interaction::Read | Interaction::Vread => Some(Perm::R),
            Interaction::History if self.id.is_some() => Some(Perm::R),
            Interaction::History | Interaction::Search => Some(Perm::S),
            Interaction::Create => Some(Perm::C),
            Interaction::Update
            | Interaction::Patch
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch => Some(Perm::U),
            Interaction::Delete | Interaction::ConditionalDelete => Some(Perm::D),
            Interaction::Capabilities | Interaction::Batch | Interaction::Operation => None,
        }
    }
}

/// Why a request could not be classified. `Display` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmapped {
    /// A method no supported interaction uses (methods are case-sensitive).
    #[error("HTTP method {0:?} is not used by any supported FHIR interaction")]
    Method(String),
    /// The path does not start with `/`.
    #[error("path {0:?} must start with '/' (relative to the FHIR base)")]
    NotRelative(String),
    /// The path has an empty segment (`//` or a trailing `/`).
    #[error("path {0:?} has an empty segment")]
    EmptySegment(String),
    /// A segment in resource-type position is not a type name.
    #[error("{0:?} is not a FHIR resource type name (expected [A-Z][A-Za-z0-9]*)")]
    ResourceType(String),
    /// A segment in id or version position is not a FHIR id.
    #[error("{0:?} is not a valid FHIR id (expected 1 to 64 of A-Z a-z 0-9 - .)")]
    Id(String),
    /// A `$` segment that is not a valid operation name.
    #[error("{0:?} is not a valid FHIR operation name (expected '$' followed by A-Z a-z 0-9 - _)")]
    OperationName(String),
    /// The query string does not decode (or uses `;` as a separator, which
    /// servers read differently).
    #[error("invalid query string: {0}")]
    Query(String),
    /// The method and path form no supported interaction.
    #[error("{method} {path} is not a supported FHIR interaction: {why}")]
    Unsupported {
        /// The request method.
        method: String,
        /// The path relative to the FHIR base.
        path: String,
        /// What the request looks like and why it is not mapped.
        why: &'static str,
    },
}

/// The FHIR-relative path of a canonical request path under `base`
/// (`/fhir/Patient/1` under `/fhir` → `/Patient/1`; the base itself → `/`).
/// A path not under the base maps to `/`, which classifies as nothing but a batch.
pub fn relative_to_base<'a>(path: &'a str, base: &str) -> &'a str {
    match path.strip_prefix(base) {
        Some("") | None => "/",
        Some(rel) => rel,
    }
}

/// Classifies a FHIR REST request.
///
/// `method` is the HTTP method, compared case-sensitively (`HEAD` is treated
/// as `GET`). `rel_path` is the path relative to the FHIR base, starting
/// with `/` and already canonicalised (`/Patient/123`, `/Observation`, `/`).
/// `query` is the raw query string without `?`; for `POST /T/_search` pass
/// the form body instead. `T` must match `[A-Z][A-Za-z0-9]*` and ids and
/// version ids `[A-Za-z0-9\-\.]{1,64}`.
///
/// | request                          | interaction                 |
/// |----------------------------------|-----------------------------|
/// | `GET /metadata`                  | Capabilities                |
/// | `GET /T/{id}`                    | Read                        |
/// | `GET /T/{id}/_history/{vid}`     | Vread                       |
/// | `GET /T/{id}/_history`           | History (instance)          |
/// | `GET /T/_history`                | History (type)              |
/// | `GET /T`, `POST /T/_search`      | Search                      |
/// | `POST /T`                        | Create                      |
/// | `PUT /T/{id}`                    | Update                      |
/// | `PATCH /T/{id}`                  | Patch                       |
/// | `DELETE /T/{id}`                 | Delete                      |
/// | `PUT /T?criteria`                | ConditionalUpdate           |
/// | `PATCH /T?criteria`              | ConditionalPatch            |
/// | `DELETE /T?criteria`             | ConditionalDelete           |
/// | `POST /`                         | Batch                       |
/// | `GET`/`POST /$op`, `/T/$op`, `/T/{id}/$op` | Operation         |
///
/// Everything else is [`Unmapped`]. An operation name kept percent-encoded
/// by canonicalisation (`%24everything`) is not recognised as an operation
/// and so is unmapped too.
pub fn classify(method: &str, rel_path: &str, query: Option<&str>) -> Result<FhirRequest, Unmapped> {
    use Interaction::*;

    let method = match method {
        "HEAD" => "GET",
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => method,
        other => return Err(Unmapped::Method(other.to_owned())),
    };
    let rest = rel_path
        .strip_prefix('/')
        .ok_or_else(|| Unmapped::NotRelative(rel_path.to_owned()))?;
    let segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(Unmapped::EmptySegment(rel_path.to_owned()));
    }
    let unsupported = |why: &'static str| Unmapped::Unsupported {
        method: method.to_owned(),
        path: rel_path.to_owned(),
        why,
    };

    // Operations: any `$` segment, in one of the three operation shapes.
    if let Some(op) = segments.iter().find(|s| s.starts_with('$')) {
        const SHAPES: &str = "an operation must be the last segment of /$op, /T/$op or /T/id/$op";
        check_operation_name(op)?;
        if segments.last() != Some(op) {
            return Err(unsupported(SHAPES));
        }
        let (resource_type, id) = match segments.as_slice() {
            [_op] => (None, None),
            [t, _op] => (Some(type_name(t)?), None),
            [t, id, _op] => (Some(type_name(t)?), Some(fhir_id(id)?)),
            _ => return Err(unsupported(SHAPES)),
        };
        if !matches!(method, "GET" | "POST") {
            return Err(unsupported("operations are invoked with GET or POST"));
        }
        return Ok(FhirRequest {
            interaction: Operation,
            resource_type,
            id,
            params: parse_query(query)?,
            criteria: None,
        });
    }

    let (interaction, resource_type, id) = match (method, segments.as_slice()) {
        ("POST", []) => (Batch, None, None),
        (_, []) => {
            return Err(unsupported(
                "system-level interactions other than batch (POST /) are not mapped",
            ))
        }
        ("GET", ["metadata"]) => (Capabilities, None, None),
        (_, ["metadata"]) => return Err(unsupported("the capability statement is read with GET /metadata")),
        (_, ["_history"]) => return Err(unsupported("system-level history is not mapped")),
        (_, ["_search"]) => return Err(unsupported("system-level search is not mapped")),
        ("GET", [t]) => (Search, Some(type_name(t)?), None),
        ("POST", [t]) => (Create, Some(type_name(t)?), None),
        ("PUT" | "PATCH" | "DELETE", [t]) => {
            let t = type_name(t)?;
            let criteria = parse_query(query)?;
            if criteria.is_empty() {
                return Err(unsupported(
                    "a conditional update, patch or delete needs search criteria in the query",
                ));
            }
            let interaction = match method {
                "PUT" => ConditionalUpdate,
                "PATCH" => ConditionalPatch,
                _ => ConditionalDelete,
            };
            return Ok(FhirRequest {
                interaction,
                resource_type: Some(t),
                id: None,
                params: criteria.clone(),
                criteria: Some(criteria),
            });
        }
        ("POST", [t, "_search"]) => (Search, Some(type_name(t)?), None),
        (_, [_, "_search"]) => return Err(unsupported("search via _search must use POST")),
        ("GET", [t, "_history"]) => (History, Some(type_name(t)?), None),
        (_, [_, "_history"]) => return Err(unsupported("history must use GET")),
        ("GET", [t, id]) => (Read, Some(type_name(t)?), Some(fhir_id(id)?)),
        ("PUT", [t, id]) => (Update, Some(type_name(t)?), Some(fhir_id(id)?)),
        ("PATCH", [t, id]) => (Patch, Some(type_name(t)?), Some(fhir_id(id)?)),
        ("DELETE", [t, id]) => (Delete, Some(type_name(t)?), Some(fhir_id(id)?)),
        ("POST", [_, _]) => return Err(unsupported("POST on a resource instance is not an interaction")),
        ("GET", [t, id, "_history"]) => (History, Some(type_name(t)?), Some(fhir_id(id)?)),
        ("GET", [t, id, "_history", vid]) => {
            fhir_id(vid)?;
            (Vread, Some(type_name(t)?), Some(fhir_id(id)?))
        }
        (_, [_, _, "_history"] | [_, _, "_history", _]) => {
            return Err(unsupported("history and vread must use GET"))
        }
        (_, [_, _, _]) => {
            return Err(unsupported(
                "compartment search and other instance sub-paths are not mapped",
            ))
        }
        _ => return Err(unsupported("unknown path shape")),
    };
    Ok(FhirRequest {
        interaction,
        resource_type,
        id,
        params: parse_query(query)?,
        criteria: None,
    })
}

/// The name of the operation in `rel_path` without the `$` (`"everything"`
/// for `/Patient/123/$everything`), or `None` when no segment starts with
/// `$`. Use it after [`classify`] returned [`Interaction::Operation`].
pub fn operation_name(rel_path: &str) -> Option<&str> {
    rel_path.split('/').find_map(|s| s.strip_prefix('$'))
}

/// The patient ids a request names in its query parameters, in order and
/// with duplicates kept: a hint for the audit record's `patient` field,
/// never an authorisation input (see [`compartment_search`] for that).
///
/// Looked at: `patient` and `subject` (also with the `:Patient` type
/// modifier), and `_id` when the resource type is `Patient`. Values are
/// split on `,` (FHIR OR). `Patient/X` yields `X` and a bare id yields
/// itself (`_id` takes only bare ids). A value in any other form (another
/// resource type such as `Group/1`, an absolute URL, an empty value) is
/// returned verbatim. The path id of `/Patient/{id}` is not included; see
/// [`FhirRequest::id`].
pub fn patient_refs(req: &FhirRequest) -> Vec<String> {
    let is_patient_search = req.resource_type.as_deref() == Some("Patient");
    let mut refs = Vec::new();
    for (name, value) in &req.params {
        let allow_typed = match name.as_str() {
            "patient" | "patient:Patient" | "subject" | "subject:Patient" => true,
            "_id" if is_patient_search => false,
            _ => continue,
        };
        for v in value.split(',') {
            let id = match v.strip_prefix("Patient/") {
                Some(id) if allow_typed && is_fhir_id(id) => id,
                _ => v,
            };
            refs.push(id.to_owned());
        }
    }
    refs
}

/// Whether any parameter filters on resources other than the searched ones,
/// which a patient-scoped token cannot be trusted with (the filter itself
/// leaks whether other patients' data matches): chained parameters (a `.`
/// in the name, e.g. `subject.name` or `subject:Patient.name`), reverse
/// chaining (`_has`, `_has:...`), `_contained` and `_containedType`.
/// `_filter` and `_query` are also reported, since their expressions or
/// named queries can do the same. (`_include`/`_revinclude` are not
/// filters: they add resources, and [`includes`] says which.)
pub fn has_cross_patient_params(params: &[(String, String)]) -> bool {
    params.iter().any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        name.contains('.')
            || matches!(
                base,
                "_has" | "_contained" | "_containedType" | "_filter" | "_query"
            )
    })
}

/// The search parameters that name a patient compartment on resource type
/// `ty`: the FHIR R4 Patient CompartmentDefinition's parameters for `ty`,
/// plus `patient` where `ty` defines a `patient` reference parameter that
/// can only point at a Patient (e.g. `Observation.patient`, a restriction
/// of the compartment parameter `subject`), plus `_id` for `Patient`
/// itself. Empty when `ty` is not in the compartment.
pub fn compartment_naming_params(ty: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = crate::fhir_data::compartment_params(ty)
        .map(<[&str]>::to_vec)
        .unwrap_or_default();
    if names.is_empty() {
        return names;
    }
    if crate::fhir_data::reference_targets(ty, "patient") == Some(&["Patient"][..])
        && !names.contains(&"patient")
    {
        names.push("patient");
    }
    if ty == "Patient" {
        names.push("_id");
    }
    names
}

/// Whether a search on `ty` with `params` stays inside the compartment of
/// `patient`. `Err` says why not.
///
/// The rules (FHIR R4 Patient CompartmentDefinition, see
/// [`compartment_naming_params`]):
/// - `ty` must be in the compartment (a `Bundle`, `Practitioner` or
///   `Medication` search is refused: nothing in it can be tied to the
///   patient);
/// - at least one of `ty`'s naming parameters must be present, and every
///   value of every naming parameter (comma-separated values included) must
///   be the patient. Parameters that are not naming parameters for `ty`
///   (`Patient?patient=123`, `Group?patient=123`) name nothing: a lenient
///   server ignores them and would return everything;
/// - a naming parameter that can point at other resource types (`subject`:
///   Patient, Group, Device, Location) needs a typed value, `Patient/123`,
///   or the `:Patient` modifier: a bare `subject=123` could mean `Group/123`;
///   `patient` and `_id` take bare ids;
/// - filters on other resources ([`has_cross_patient_params`]) are refused.
///
/// Other parameters and other modifiers of naming parameters are AND-ed by
/// FHIR search, so they can only narrow the result.
pub fn compartment_search(ty: &str, params: &[(String, String)], patient: &str) -> Result<(), String> {
    let naming = compartment_naming_params(ty);
    if naming.is_empty() {
        return Err(format!(
            "{ty} is not in the FHIR R4 Patient compartment: a patient-scoped search cannot be tied to the patient"
        ));
    }
    if has_cross_patient_params(params) {
        return Err(
            "chained, _has, _contained, _filter and _query parameters filter on other resources".into(),
        );
    }
    let mut named = 0usize;
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        if !naming.contains(&base) || !matches!(modifier, None | Some("Patient")) {
            continue;
        }
        let bare_ok = base == "_id"
            || modifier == Some("Patient")
            || crate::fhir_data::reference_targets(ty, base) == Some(&["Patient"][..]);
        for v in value.split(',') {
            named += 1;
            let id = match v.strip_prefix("Patient/") {
                Some(id) if base != "_id" && is_fhir_id(id) => id,
                _ if bare_ok => v,
                _ => {
                    return Err(format!(
                        "`{name}={v}` is ambiguous ({base} can point at other resource types): use {base}=Patient/{v} or {base}:Patient={v}"
                    ))
                }
            };
            if id != patient {
                return Err(format!("`{name}` names a patient other than the token's patient"));
            }
        }
    }
    if named == 0 {
        return Err(format!(
            "a patient-scoped search on {ty} must name the token's patient with one of: {}",
            naming.join(", ")
        ));
    }
    Ok(())
}

/// One `_include` or `_revinclude` parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude` (resources that reference the matches) rather than
    /// `_include` (resources the matches reference).
    pub reverse: bool,
    /// `:iterate` (or the R3 `:recurse`): also applied to included resources.
    pub iterate: bool,
    /// The source resource type; `None` for the wildcard `*`.
    pub source: Option<String>,
    /// The reference search parameter; `None` for a wildcard.
    pub param: Option<String>,
    /// The target type (`Observation:subject:Patient`), when given.
    pub target: Option<String>,
}

/// What an include can add to a search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Any resource type (a wildcard, or a `Reference(Any)` parameter).
    AnyType,
    /// Exactly these types.
    Types(Vec<String>),
}

impl Include {
    /// The resource types this include can add to a result (FHIR R4 search
    /// parameter targets, [`crate::fhir_data::reference_targets`]). `Err` for
    /// a parameter phigate does not know (a custom search parameter, a
    /// typo) or a target the parameter cannot point at: what it returns
    /// cannot be known, so it cannot be authorised.
    pub fn returned_types(&self) -> Result<Returned, String> {
        let (Some(source), Some(param)) = (&self.source, &self.param) else {
            return Ok(if self.reverse {
                match &self.source {
                    Some(s) => Returned::Types(vec![s.clone()]),
                    None => Returned::AnyType,
                }
            } else {
                Returned::AnyType
            });
        };
        if self.reverse {
            // `_revinclude=Provenance:target` adds Provenance resources; the
            // parameter only has to exist.
            if crate::fhir_data::reference_targets(source, param).is_none() {
                return Err(format!(
                    "`{source}:{param}` is not a reference search parameter of {source}"
                ));
            }
            return Ok(Returned::Types(vec![source.clone()]));
        }
        let targets = crate::fhir_data::reference_targets(source, param)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("`{source}:{param}` is not a reference search parameter of {source}"))?;
        let any = targets == ["*"];
        match &self.target {
            Some(t) if any || targets.contains(&t.as_str()) => Ok(Returned::Types(vec![t.clone()])),
            Some(t) => Err(format!("`{source}:{param}` cannot point at {t}")),
            None if any => Ok(Returned::AnyType),
            None => Ok(Returned::Types(targets.iter().map(|t| t.to_string()).collect())),
        }
    }
}

/// The `_include` / `_revinclude` parameters of a search, parsed. Values
/// are `*`, `Source:param`, `Source:*` or `Source:param:Target`; several
/// comma-separated values count as several includes. Modifiers other than
/// `:iterate` / `:recurse` are an error, as is any malformed value.
pub fn includes(params: &[(String, String)]) -> Result<Vec<Include>, String> {
    let mut out = Vec::new();
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        let reverse = match base {
            "_include" => false,
            "_revinclude" => true,
            _ => continue,
        };
        let iterate = match modifier {
            None => false,
            Some("iterate" | "recurse") => true,
            Some(m) => return Err(format!("`{base}:{m}`: unknown modifier")),
        };
        for v in value.split(',') {
            let bad = || format!("`{name}={v}` is not `*`, `Type:param` or `Type:param:Target`");
            let parts: Vec<&str> = v.split(':').collect();
            let inc = match parts.as_slice() {
                ["*"] => Include {
                    reverse,
                    iterate,
                    source: None,
                    param: None,
                    target: None,
                },
                [src, p] | [src, p, _] => {
                    let source = match *src {
                        "*" => None,
                        t if is_type_name(t) => Some(t.to_string()),
                        _ => return Err(bad()),
                    };
                    let param = match *p {
                        "*" => None,
                        p if !p.is_empty()
                            && p.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                        {
                            Some(p.to_string())
                        }
                        _ => return Err(bad()),
                    };
                    let target = match parts.get(2) {
                        None => None,
                        Some(t) if is_type_name(t) => Some(t.to_string()),
                        Some(_) => return Err(bad()),
                    };
                    Include {
                        reverse,
                        iterate,
                        source,
                        param,
                        target,
                    }
                }
                _ => return Err(bad()),
            };
            out.push(inc);
        }
    }
    Ok(out)
}

fn type_name(segment: &str) -> Result<String, Unmapped> {
    if is_type_name(segment) {
        Ok(segment.to_owned())
    } else {
        Err(Unmapped::ResourceType(segment.to_owned()))
    }
}

fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        // Never true after canonicalisation, but never let "." or ".." pass as an id.
        && s != "."
        && s != ".."
}

fn fhir_id(segment: &str) -> Result<String, Unmapped> {
    if is_fhir_id(segment) {
        Ok(segment.to_owned())
    } else {
        Err(Unmapped::Id(segment.to_owned()))
    }
}

fn check_operation_name(segment: &str) -> Result<(), Unmapped> {
    let name = segment.strip_prefix('$').unwrap_or(segment);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Unmapped::OperationName(segment.to_owned()))
    }
}

/// Parses an application/x-www-form-urlencoded query (or `POST _search`
/// body, or `If-None-Exist` value). Empty pieces (`a=1&&b=2`) are skipped; a
/// piece without `=` has an empty value. Bad percent-encoding is an error
/// rather than being passed through, and so is a literal `;`: some servers
/// split parameters on it (`a=1;_method=DELETE`), so it must be sent as
/// `%3B` to mean a character of a value.
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, Unmapped> {
    let Some(query) = query else { return Ok(Vec::new()) };
    if query.contains(';') {
        return Err(Unmapped::Query(
            "a literal ';' is ambiguous (some servers separate parameters with it); encode it as %3B".into(),
        ));
    }
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            let decode =
                |s: &str| percent_decode(s, true).map_err(|e| Unmapped::Query(format!("{piece:?}: {e}")));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The `link` entries (`relation`, `url`) of a FHIR Bundle, read from the
/// first bytes of its JSON (`prefix` may be cut anywhere): servers write
/// `link` before `entry`, so a bounded prefix of a large search result
/// holds its paging links. A `link` array that is cut off, or that comes
/// after the prefix, yields what could be read — links never found are
/// simply not known (a continuation through them is refused).
pub fn bundle_links(prefix: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Link {
        relation: Option<String>,
        url: Option<String>,
    }
    let Some(start) = top_level_value(prefix, b"link") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let array = &prefix[start..];
    if array.first() != Some(&b'[') {
        return out;
    }
    // Read the array element by element, so a cut-off tail still yields the
    // complete elements before it.
    let mut pos = 1;
    loop {
        while array
            .get(pos)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
        {
            pos += 1;
        }
        if array.get(pos).is_none_or(|b| *b == b']') {
            break;
        }
        let mut items = serde_json::Deserializer::from_slice(&array[pos..]).into_iter::<Link>();
        match items.next() {
            Some(Ok(link)) => {
                if let (Some(r), Some(u)) = (link.relation, link.url) {
                    out.push((r, u));
                }
                pos += items.byte_offset();
            }
            _ => break,
        }
    }
    out
}

/// The byte offset of the value of top-level member `key` in a JSON object
/// (a prefix of one), skipping strings and nested values.
fn top_level_value(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut expecting_key = false;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = i.min(json.len());
                if depth == 1 && expecting_key && &json[start..end] == key {
                    // Skip to the value after the colon.
                    let mut j = end + 1;
                    while j < json.len() && (json[j].is_ascii_whitespace() || json[j] == b':') {
                        j += 1;
                    }
                    return (j < json.len()).then_some(j);
                }
                expecting_key = false;
            }
            b'{' | b'[' => {
                depth += 1;
                expecting_key = json[i] == b'{' && depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting_key = true,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    fn req(
        interaction: Interaction,
        t: Option<&str>,
        id: Option<&str>,
        params: &[(&str, &str)],
    ) -> FhirRequest {
        FhirRequest {
            interaction,
            resource_type: t.map(str::to_owned),
            id: id.map(str::to_owned),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            criteria: None,
        }
    }

    fn search(t: &str, params: &[(&str, &str)]) -> FhirRequest {
        req(Search, Some(t), None, params)
    }

    #[test]
    fn classifies_every_mapping_row() {
        // (method, path, query, interaction, type, id)
        type Row = (
            &'static str,
            &'static str,
            Option<&'static str>,
            Interaction,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: &[Row] = &[
            ("GET", "/metadata", None, Capabilities, None, None),
            ("HEAD", "/metadata", None, Capabilities, None, None),
            ("GET", "/Patient/123", None, Read, Some("Patient"), Some("123")),
            ("HEAD", "/Patient/123", None, Read, Some("Patient"), Some("123")),
            (
                "GET",
                "/Observation/a-b.c",
                None,
                Read,
                Some("Observation"),
                Some("a-b.c"),
            ),
            (
                "GET",
                "/Patient/metadata",
                None,
                Read,
                Some("Patient"),
                Some("metadata"),
            ),
            (
                "GET",
                "/Patient/123/_history/4",
                None,
                Vread,
                Some("Patient"),
                Some("123"),
            ),
            (
                "GET",
                "/Patient/123/_history",
                None,
                History,
                Some("Patient"),
                Some("123"),
            ),
            ("GET", "/Patient/_history", None, History, Some("Patient"), None),
            (
                "GET",
                "/Observation",
                Some("patient=123"),
                Search,
                Some("Observation"),
                None,
            ),
            ("GET", "/Observation", None, Search, Some("Observation"), None),
            ("HEAD", "/Observation", None, Search, Some("Observation"), None),
            (
                "POST",
                "/Observation/_search",
                Some("patient=123"),
                Search,
                Some("Observation"),
                None,
            ),
            ("POST", "/Observation", None, Create, Some("Observation"), None),
            (
                "PUT",
                "/Observation/1",
                None,
                Update,
                Some("Observation"),
                Some("1"),
            ),
            (
                "PATCH",
                "/Observation/1",
                None,
                Patch,
                Some("Observation"),
                Some("1"),
            ),
            (
                "DELETE",
                "/Observation/1",
                None,
                Delete,
                Some("Observation"),
                Some("1"),
            ),
            ("POST", "/", None, Batch, None, None),
            ("GET", "/$export", None, Operation, None, None),
            ("POST", "/$export", None, Operation, None, None),
            (
                "GET",
                "/Patient/$everything",
                None,
                Operation,
                Some("Patient"),
                None,
            ),
            (
                "GET",
                "/Patient/123/$everything",
                None,
                Operation,
                Some("Patient"),
                Some("123"),
            ),
            (
                "HEAD",
                "/Patient/123/$everything",
                None,
                Operation,
                Some("Patient"),
                Some("123"),
            ),
            (
                "POST",
                "/Observation/$lastn",
                Some("patient=1"),
                Operation,
                Some("Observation"),
                None,
            ),
            (
                "POST",
                "/ValueSet/$validate-code",
                None,
                Operation,
                Some("ValueSet"),
                None,
            ),
            (
                "GET",
                "/Group/g1/$export",
                None,
                Operation,
                Some("Group"),
                Some("g1"),
            ),
            ("POST", "/$member_match", None, Operation, None, None),
        ];
        for (method, path, query, interaction, t, id) in cases {
            let got = classify(method, path, *query).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(got.interaction, *interaction, "{method} {path}");
            assert_eq!(got.resource_type.as_deref(), *t, "{method} {path}");
            assert_eq!(got.id.as_deref(), *id, "{method} {path}");
        }
    }

    #[test]
    fn unmapped_cases() {
        // (method, path, query, expected substring of the message)
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            // methods
            ("OPTIONS", "/Patient", None, "HTTP method \"OPTIONS\""),
            ("get", "/Patient/1", None, "HTTP method \"get\""),
            ("TRACE", "/metadata", None, "HTTP method"),
            ("CONNECT", "/", None, "HTTP method"),
            ("", "/Patient", None, "HTTP method"),
            // path form
            ("GET", "Patient/1", None, "must start with '/'"),
            ("GET", "", None, "must start with '/'"),
            ("GET", "/Patient/", None, "empty segment"),
            ("GET", "//Patient", None, "empty segment"),
            ("GET", "/Patient//1", None, "empty segment"),
            // system level
            ("GET", "/", None, "system-level interactions other than batch"),
            ("GET", "/", Some("_type=Patient"), "system-level"),
            ("PUT", "/", None, "system-level"),
            ("DELETE", "/", None, "system-level"),
            ("GET", "/_history", None, "system-level history"),
            ("POST", "/_search", None, "system-level search"),
            ("POST", "/metadata", None, "GET /metadata"),
            ("PUT", "/metadata", None, "GET /metadata"),
            // conditional interactions need criteria
            ("PUT", "/Patient", None, "needs search criteria"),
            ("DELETE", "/Patient", Some(""), "needs search criteria"),
            ("PATCH", "/Patient", Some("&"), "needs search criteria"),
            (
                "PUT",
                "/patient",
                Some("identifier=x|1"),
                "not a FHIR resource type name",
            ),
            // ';' is a parameter separator for some servers
            (
                "GET",
                "/Observation",
                Some("patient=1;_method=DELETE"),
                "literal ';'",
            ),
            ("DELETE", "/Observation", Some("code=1;x=2"), "literal ';'"),
            // wrong method for shape
            ("GET", "/Patient/_search", None, "must use POST"),
            ("PUT", "/Patient/_search", None, "must use POST"),
            ("POST", "/Patient/_history", None, "history must use GET"),
            ("DELETE", "/Patient/1/_history", None, "must use GET"),
            ("DELETE", "/Patient/1/_history/2", None, "must use GET"),
            ("PUT", "/Patient/1/_history/2", None, "must use GET"),
            ("POST", "/Patient/1", None, "POST on a resource instance"),
            ("PUT", "/Patient/1/$everything", None, "GET or POST"),
            ("DELETE", "/$export", None, "GET or POST"),
            // bad type names
            (
                "GET",
                "/patient",
                None,
                "\"patient\" is not a FHIR resource type name",
            ),
            ("GET", "/patient/1", None, "not a FHIR resource type name"),
            ("POST", "/1Patient", None, "not a FHIR resource type name"),
            ("GET", "/Pat_ient/1", None, "not a FHIR resource type name"),
            ("GET", "/Pat%69ent/1", None, "not a FHIR resource type name"),
            ("GET", "/patient/_history", None, "not a FHIR resource type name"),
            ("POST", "/patient/_search", None, "not a FHIR resource type name"),
            (
                "GET",
                "/patient/$everything",
                None,
                "not a FHIR resource type name",
            ),
            (
                "GET",
                "/patient/1/_history/2",
                None,
                "not a FHIR resource type name",
            ),
            // bad ids
            ("GET", "/Patient/a_b", None, "\"a_b\" is not a valid FHIR id"),
            ("GET", "/Patient/a%20b", None, "not a valid FHIR id"),
            ("GET", "/Patient/a~b", None, "not a valid FHIR id"),
            ("GET", "/Patient/a:b", None, "not a valid FHIR id"),
            ("PUT", "/Patient/..", None, "not a valid FHIR id"),
            ("DELETE", "/Patient/.", None, "not a valid FHIR id"),
            (
                "GET",
                "/Patient/12345678901234567890123456789012345678901234567890123456789012345",
                None,
                "not a valid FHIR id",
            ),
            ("GET", "/Patient/1_/_history", None, "not a valid FHIR id"),
            (
                "GET",
                "/Patient/1/_history/v_1",
                None,
                "\"v_1\" is not a valid FHIR id",
            ),
            ("GET", "/Patient/1*/$everything", None, "not a valid FHIR id"),
            // operations
            ("GET", "/Patient/$", None, "not a valid FHIR operation name"),
            (
                "GET",
                "/Patient/$every%20thing",
                None,
                "not a valid FHIR operation name",
            ),
            (
                "GET",
                "/Patient/$every.thing",
                None,
                "not a valid FHIR operation name",
            ),
            ("GET", "/$export/Patient", None, "last segment"),
            ("GET", "/Patient/1/_history/2/$meta", None, "last segment"),
            ("GET", "/Patient/$everything/x", None, "last segment"),
            // percent-encoded '$' is not an operation, and not anything else either
            ("GET", "/Patient/1/%24everything", None, "compartment search"),
            ("GET", "/Patient/%24everything", None, "not a valid FHIR id"),
            // other shapes
            ("GET", "/Patient/1/Observation", None, "compartment search"),
            ("GET", "/Patient/1/_history/2/x", None, "unknown path shape"),
            ("GET", "/a/b/c/d/e", None, "unknown path shape"),
            // bad query
            ("GET", "/Observation", Some("patient=%zz"), "invalid query string"),
            ("GET", "/Observation", Some("code=%"), "invalid query string"),
            ("GET", "/Observation", Some("co%de=1"), "invalid query string"),
            ("GET", "/Observation", Some("code=%ff"), "UTF-8"),
            ("GET", "/Patient/1", Some("_format=%"), "invalid query string"),
        ];
        for (method, path, query, needle) in cases {
            match classify(method, path, *query) {
                Ok(r) => panic!("{method} {path}: expected Unmapped, got {r:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(needle),
                        "{method} {path}: {msg:?} does not contain {needle:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unmapped_variants() {
        assert_eq!(classify("FOO", "/", None), Err(Unmapped::Method("FOO".into())));
        assert_eq!(classify("GET", "x", None), Err(Unmapped::NotRelative("x".into())));
        assert_eq!(
            classify("GET", "/A//1", None),
            Err(Unmapped::EmptySegment("/A//1".into()))
        );
        assert_eq!(
            classify("GET", "/a/1", None),
            Err(Unmapped::ResourceType("a".into()))
        );
        assert_eq!(classify("GET", "/A/_1", None), Err(Unmapped::Id("_1".into())));
        assert_eq!(
            classify("GET", "/$", None),
            Err(Unmapped::OperationName("$".into()))
        );
        assert!(matches!(
            classify("GET", "/A", Some("a=%")),
            Err(Unmapped::Query(_))
        ));
        assert_eq!(
            classify("PUT", "/Patient", None),
            Err(Unmapped::Unsupported {
                method: "PUT".into(),
                path: "/Patient".into(),
                why: "a conditional update, patch or delete needs search criteria in the query",
            })
        );
        assert_eq!(
            classify("PUT", "/Patient", None).unwrap_err().to_string(),
            "PUT /Patient is not a supported FHIR interaction: a conditional update, patch or delete needs \
             search criteria in the query"
        );
    }

    #[test]
    fn conditional_interactions_carry_their_criteria() {
        for (method, want, perm) in [
            ("PUT", ConditionalUpdate, Perm::U),
            ("PATCH", ConditionalPatch, Perm::U),
            ("DELETE", ConditionalDelete, Perm::D),
        ] {
            let r = classify(method, "/Observation", Some("identifier=x%7C1&patient=7")).unwrap();
            assert_eq!(r.interaction, want, "{method}");
            assert_eq!(r.resource_type.as_deref(), Some("Observation"));
            assert_eq!(r.required_perm(), Some(perm));
            let criteria = vec![
                ("identifier".to_string(), "x|1".to_string()),
                ("patient".to_string(), "7".to_string()),
            ];
            assert_eq!(r.criteria.as_ref(), Some(&criteria), "{method}");
        }
        assert_eq!(
            classify("GET", "/Observation", Some("a=1")).unwrap().criteria,
            None
        );
    }

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn compartment_search_follows_the_compartment_definition() {
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Result<(), &'static str>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // the usual forms
            ("Observation", &[("patient", "123")], Ok(())),
            ("Observation", &[("patient", "Patient/123")], Ok(())),
            ("Observation", &[("subject", "Patient/123")], Ok(())),
            ("Observation", &[("subject:Patient", "123")], Ok(())),
            ("Observation", &[("performer", "Patient/123")], Ok(())),
            ("Observation", &[("patient", "123"), ("code", "x"), ("subject:missing", "false")], Ok(())),
            ("Observation", &[("patient", "123"), ("subject", "Patient/123")], Ok(())),
            ("Encounter", &[("patient", "123")], Ok(())),
            ("Condition", &[("patient", "123")], Ok(())),
            ("MedicationRequest", &[("subject", "Patient/123")], Ok(())),
            ("MedicationRequest", &[("patient", "123")], Ok(())),
            ("Patient", &[("_id", "123")], Ok(())),
            ("Patient", &[("link", "Patient/123")], Ok(())),
            ("Group", &[("member", "Patient/123")], Ok(())),
            // a parameter the type does not have names nothing
            ("Patient", &[("patient", "123")], Err("must name the token's patient")),
            ("Patient", &[("subject", "Patient/123")], Err("must name the token's patient")),
            ("Group", &[("patient", "123")], Err("must name the token's patient")),
            ("Observation", &[("code", "x")], Err("must name the token's patient")),
            ("Observation", &[("patient:missing", "false")], Err("must name the token's patient")),
            // not in the compartment at all
            ("Bundle", &[("patient", "123")], Err("not in the FHIR R4 Patient compartment")),
            ("Practitioner", &[("_id", "123")], Err("not in the FHIR R4 Patient compartment")),
            ("Device", &[("patient", "123")], Err("not in the FHIR R4 Patient compartment")),
            // ambiguous bare references
            ("Observation", &[("subject", "123")], Err("ambiguous")),
            ("Group", &[("member", "123")], Err("ambiguous")),
            ("Patient", &[("link", "123")], Err("ambiguous")),
            // another patient, lists, other forms
            ("Observation", &[("patient", "124")], Err("other than the token's patient")),
            ("Observation", &[("patient", "123,124")], Err("other than the token's patient")),
            ("Observation", &[("patient", "123"), ("subject", "Patient/124")], Err("other than")),
            ("Observation", &[("subject", "Group/123")], Err("ambiguous")),
            ("Observation", &[("patient", "")], Err("other than")),
            ("Patient", &[("_id", "Patient/123")], Err("other than")),
            // filters on other resources
            ("Observation", &[("patient", "123"), ("subject.name", "x")], Err("filter on other resources")),
            ("Observation", &[("patient", "123"), ("_has:Observation:patient:code", "x")], Err("filter on other")),
            ("Observation", &[("patient", "123"), ("_filter", "x eq 1")], Err("filter on other")),
        ];
        for (ty, p, want) in cases {
            let got = compartment_search(ty, &params(p), "123");
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(needle), Err(msg)) => {
                    assert!(msg.contains(needle), "{ty} {p:?}: {msg:?} lacks {needle:?}")
                }
                _ => panic!("{ty} {p:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn paging_links_are_read_from_a_bundle_prefix() {
        let bundle =
            br#"{"resourceType":"Bundle","id":"x","meta":{"link":"not this"},"type":"searchset","total":3,
            "link":[{"relation":"self","url":"http://h/fhir/Observation?patient=1"},
                    {"relation":"next","url":"http://h/fhir?_getpages=abc&_getpagesoffset=20"}],
            "entry":[{"resource":{"resourceType":"Observation","link":[{"url":"no"}]}}]}"#;
        let links = bundle_links(bundle);
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[1],
            (
                "next".to_string(),
                "http://h/fhir?_getpages=abc&_getpagesoffset=20".to_string()
            )
        );
        // Cut inside the second link: the first is still read.
        let cut = &bundle[..bundle.iter().position(|b| *b == b'_').unwrap()];
        assert_eq!(bundle_links(cut).len(), 1);
        // Strings that look like keys are skipped; no link: nothing.
        assert!(
            bundle_links(br#"{"resourceType":"Bundle","text":"\"link\":[{\"relation\":\"next\"}]"}"#)
                .is_empty()
        );
        assert!(bundle_links(b"not json").is_empty());
        assert!(bundle_links(b"").is_empty());
    }

    #[test]
    fn includes_and_what_they_return() {
        let types = |v: &[&str]| Returned::Types(v.iter().map(|s| s.to_string()).collect());
        let one = |name: &str, value: &str| {
            let mut all = includes(&params(&[(name, value)])).unwrap();
            assert_eq!(all.len(), 1, "{name}={value}");
            all.remove(0)
        };
        let i = one("_include", "Observation:patient");
        assert!(!i.reverse && !i.iterate);
        assert_eq!(i.returned_types(), Ok(types(&["Patient"])));
        let got = one("_include", "Observation:subject").returned_types().unwrap();
        let Returned::Types(t) = got else { panic!() };
        assert!(
            ["Patient", "Group", "Device", "Location"]
                .iter()
                .all(|x| t.iter().any(|y| y == x)),
            "{t:?}"
        );
        assert_eq!(
            one("_include", "Observation:subject:Patient").returned_types(),
            Ok(types(&["Patient"]))
        );
        assert!(one("_include", "Observation:patient:Group")
            .returned_types()
            .is_err());
        assert_eq!(one("_include", "*").returned_types(), Ok(Returned::AnyType));
        assert_eq!(
            one("_include", "Observation:*").returned_types(),
            Ok(Returned::AnyType)
        );
        assert_eq!(
            one("_include", "Provenance:target").returned_types(),
            Ok(Returned::AnyType)
        );
        assert!(
            one("_include", "Observation:code").returned_types().is_err(),
            "token param"
        );
        assert!(
            one("_include", "Observation:custom-x").returned_types().is_err(),
            "unknown param"
        );
        let r = one("_revinclude", "Provenance:target");
        assert!(r.reverse);
        assert_eq!(r.returned_types(), Ok(types(&["Provenance"])));
        assert_eq!(one("_revinclude", "*").returned_types(), Ok(Returned::AnyType));
        assert_eq!(
            one("_revinclude", "Provenance:*").returned_types(),
            Ok(types(&["Provenance"]))
        );
        assert!(one("_revinclude", "Provenance:nope").returned_types().is_err());
        assert!(one("_include:iterate", "Patient:link").iterate);
        assert!(one("_include:recurse", "Patient:link").iterate);
        assert_eq!(
            includes(&params(&[(
                "_include",
                "Observation:patient,Observation:performer"
            )]))
            .unwrap()
            .len(),
            2
        );
        for bad in [
            "",
            "Observation",
            "observation:patient",
            "Observation:pa tient",
            "a:b:c:d",
            "Observation:patient:group",
        ] {
            assert!(includes(&params(&[("_include", bad)])).is_err(), "{bad:?}");
        }
        assert!(includes(&params(&[("_include:weird", "Observation:patient")])).is_err());
        assert!(includes(&params(&[("patient", "1")])).unwrap().is_empty());
    }

    #[test]
    fn id_length_limit() {
        let id64 = "a".repeat(64);
        let r = classify("GET", &format!("/Patient/{id64}"), None).unwrap();
        assert_eq!(r.id.as_deref(), Some(id64.as_str()));
        assert!(classify("GET", &format!("/Patient/{id64}a"), None).is_err());
        let r = classify("GET", &format!("/Patient/1/_history/{id64}"), None).unwrap();
        assert_eq!(r.interaction, Vread);
        assert!(classify("GET", &format!("/Patient/1/_history/{id64}a"), None).is_err());
    }

    #[test]
    fn decodes_query_params_in_order() {
        type Params = &'static [(&'static str, &'static str)];
        let cases: &[(Option<&str>, Params)] = &[
            (None, &[]),
            (Some(""), &[]),
            (
                Some("patient=123&_count=10"),
                &[("patient", "123"), ("_count", "10")],
            ),
            (Some("name=John+Smith"), &[("name", "John Smith")]),
            (Some("name=John%20Smith%2B"), &[("name", "John Smith+")]),
            (
                Some("code=http%3A%2F%2Floinc.org%7C1234-5"),
                &[("code", "http://loinc.org|1234-5")],
            ),
            (
                Some("code=http://loinc.org|1234-5"),
                &[("code", "http://loinc.org|1234-5")],
            ),
            (Some("a=1&&b=2&"), &[("a", "1"), ("b", "2")]),
            (Some("_summary"), &[("_summary", "")]),
            (Some("a="), &[("a", "")]),
            (Some("=x"), &[("", "x")]),
            (Some("a=1=2"), &[("a", "1=2")]),
            (Some("code=a&code=b"), &[("code", "a"), ("code", "b")]),
            (Some("subject%3APatient=1"), &[("subject:Patient", "1")]),
            (Some("n=%C3%A9"), &[("n", "\u{e9}")]),
        ];
        for (query, want) in cases {
            let got = classify("GET", "/Observation", *query).unwrap();
            let want: Vec<(String, String)> =
                want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(got.params, want, "{query:?}");
            // The same decoding applies to every interaction.
            assert_eq!(
                classify("GET", "/Observation/1", *query).unwrap().params,
                want,
                "{query:?}"
            );
            assert_eq!(
                classify("POST", "/Observation/_search", *query).unwrap().params,
                want,
                "{query:?}"
            );
        }
    }

    #[test]
    fn required_perms() {
        let cases: &[(&str, &str, Option<Perm>)] = &[
            ("GET", "/Patient/1", Some(Perm::R)),
            ("GET", "/Patient/1/_history/2", Some(Perm::R)),
            ("GET", "/Patient/1/_history", Some(Perm::R)),
            ("GET", "/Patient/_history", Some(Perm::S)),
            ("GET", "/Patient", Some(Perm::S)),
            ("POST", "/Patient/_search", Some(Perm::S)),
            ("POST", "/Patient", Some(Perm::C)),
            ("PUT", "/Patient/1", Some(Perm::U)),
            ("PATCH", "/Patient/1", Some(Perm::U)),
            ("DELETE", "/Patient/1", Some(Perm::D)),
            ("GET", "/metadata", None),
            ("POST", "/", None),
            ("GET", "/Patient/1/$everything", None),
            ("POST", "/$export", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                classify(method, path, None).unwrap().required_perm(),
                *want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn operation_names() {
        let cases = [
            ("/Patient/123/$everything", Some("everything")),
            ("/$export", Some("export")),
            ("/ValueSet/$validate-code", Some("validate-code")),
            ("/Patient/123", None),
            ("/", None),
        ];
        for (path, want) in cases {
            assert_eq!(operation_name(path), want, "{path}");
        }
    }

    #[test]
    fn patient_refs_table() {
        let cases: Vec<(FhirRequest, &[&str])> = vec![
            (search("Observation", &[]), &[]),
            (search("Observation", &[("_count", "10")]), &[]),
            (search("Observation", &[("patient", "123")]), &["123"]),
            (search("Observation", &[("patient", "Patient/123")]), &["123"]),
            (search("Observation", &[("patient:Patient", "123")]), &["123"]),
            (search("Observation", &[("subject", "123")]), &["123"]),
            (search("Observation", &[("subject", "Patient/123")]), &["123"]),
            (
                search("Observation", &[("subject:Patient", "Patient/123")]),
                &["123"],
            ),
            // OR lists: every value, duplicates kept
            (search("Observation", &[("patient", "1,2")]), &["1", "2"]),
            (search("Observation", &[("patient", "1,Patient/1")]), &["1", "1"]),
            (
                search("Observation", &[("patient", "1"), ("subject", "Patient/1")]),
                &["1", "1"],
            ),
            (
                search("Observation", &[("patient", "1"), ("subject", "2")]),
                &["1", "2"],
            ),
            // other forms are returned verbatim so they never match a bare id
            (search("Observation", &[("subject", "Group/5")]), &["Group/5"]),
            (
                search("Observation", &[("patient", "1,Group/5")]),
                &["1", "Group/5"],
            ),
            (
                search("Observation", &[("subject", "http://x/fhir/Patient/1")]),
                &["http://x/fhir/Patient/1"],
            ),
            (search("Observation", &[("patient", "")]), &[""]),
            (search("Observation", &[("patient", "1,")]), &["1", ""]),
            (search("Observation", &[("patient", "Patient/")]), &["Patient/"]),
            (
                search("Observation", &[("patient", "Patient/a_b")]),
                &["Patient/a_b"],
            ),
            // modifiers other than :Patient and chains are not ids
            (search("Observation", &[("patient:missing", "true")]), &[]),
            (search("Observation", &[("subject:Group", "5")]), &[]),
            (search("Observation", &[("subject.name", "Smith")]), &[]),
            (search("Observation", &[("subject:Patient.name", "Smith")]), &[]),
            (search("Observation", &[("Patient", "1")]), &[]),
            // _id only for Patient, only bare ids
            (search("Patient", &[("_id", "1")]), &["1"]),
            (search("Patient", &[("_id", "1,2")]), &["1", "2"]),
            (search("Patient", &[("_id", "Patient/1")]), &["Patient/1"]),
            (search("Observation", &[("_id", "1")]), &[]),
            (req(Read, Some("Patient"), Some("9"), &[("_id", "1")]), &["1"]),
            (req(Read, Some("Patient"), Some("9"), &[]), &[]),
            (req(Batch, None, None, &[("patient", "1")]), &["1"]),
        ];
        for (r, want) in cases {
            assert_eq!(patient_refs(&r), *want, "{:?}", r.params);
        }
    }

    #[test]
    fn patient_refs_after_classify() {
        let r = classify("GET", "/Observation", Some("patient=Patient%2F123&code=x")).unwrap();
        assert_eq!(patient_refs(&r), ["123"]);
        let r = classify("GET", "/Observation", Some("subject%3APatient=7")).unwrap();
        assert_eq!(patient_refs(&r), ["7"]);
    }

    #[test]
    fn cross_patient_params_table() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (
                &[
                    ("patient", "1"),
                    ("code", "x"),
                    ("_count", "10"),
                    ("_sort", "-date"),
                ],
                false,
            ),
            (&[("subject:Patient", "1")], false),
            (
                &[("_id", "1"), ("_lastUpdated", "gt2020"), ("_summary", "count")],
                false,
            ),
            (&[("category", "a.b")], false), // a '.' in a value is not a chain
            // chains
            (&[("subject.name", "Smith")], true),
            (&[("subject:Patient.name", "Smith")], true),
            (&[("patient.identifier", "x|1")], true),
            (&[("patient", "1"), ("general-practitioner.name", "x")], true),
            // reverse chains
            (&[("_has", "x")], true),
            (&[("_has:Observation:patient:code", "1234")], true),
            // includes add resources, they do not filter: see `includes`
            (&[("_include", "Observation:patient")], false),
            (&[("_revinclude", "Provenance:target")], false),
            // contained
            (&[("_contained", "true")], true),
            (&[("_containedType", "contained")], true),
            // expression and named queries
            (&[("_filter", "subject.name eq x")], true),
            (&[("_query", "custom")], true),
            // near misses
            (&[("_hash", "x")], false),
            (&[("_included", "x")], false),
            (&[("has", "x")], false),
        ];
        for (params, want) in cases {
            let r = search("Observation", params);
            assert_eq!(has_cross_patient_params(&r.params), *want, "{params:?}");
        }
    }
}
