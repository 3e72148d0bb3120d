//! The FHIR R4 Patient compartment: the search parameters that name a
//! patient ([`compartment_naming_params`]), whether a search stays in one
//! patient's compartment ([`compartment_search`]), parameters that filter on
//! other resources ([`has_cross_patient_params`]), and the patient ids a
//! request names, for the audit record ([`patient_refs`]).

use super::interaction::is_fhir_id;
use super::FhirRequest;

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
/// filters: they add resources, and [`includes`](super::includes) says which.)
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
