//! Classification of a FHIR REST request: [`classify`] maps the method, the
//! path relative to the FHIR base and the query onto one [`Interaction`]
//! (or says why it is [`Unmapped`]); [`parse_query`] decodes the query
//! parameters; the resource type, id and operation name checks live here.

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

fn type_name(segment: &str) -> Result<String, Unmapped> {
    if is_type_name(segment) {
        Ok(segment.to_owned())
    } else {
        Err(Unmapped::ResourceType(segment.to_owned()))
    }
}

pub(super) fn is_fhir_id(s: &str) -> bool {
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
