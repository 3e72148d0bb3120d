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

// Source layout (private modules, re-exported below): `interaction`
// (interactions, `classify`, `parse_query`), `compartment` (the Patient
// compartment rules), `include` (what `_include`/`_revinclude` add) and
// `links` (the paging links of a search-result Bundle, `bundle_links`).
mod compartment;
mod include;
mod interaction;
mod links;

pub use compartment::{
    compartment_naming_params, compartment_search, has_cross_patient_params, patient_refs,
};
pub use include::{includes, Include, Returned};
pub use interaction::{
    classify, operation_name, parse_query, relative_to_base, FhirRequest, Interaction, Unmapped,
};
pub use links::bundle_links;

#[cfg(test)]
mod tests;
