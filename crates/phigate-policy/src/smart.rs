//! SMART on FHIR scopes (App Launch v1 and v2), parsed rather than
//! string-compared.
//!
//! A SMART scope is `(patient|user|system)/(ResourceType|*).(perms)[?query]`:
//!
//! - v2 permissions are a non-empty subsequence of `c r u d s` in that order
//!   (`rs`, `cruds`, `cud`); `sr` and `rr` are rejected, not normalised;
//! - v1 permissions `read`, `write` and `*` are mapped to `rs`, `cud` and
//!   `cruds`, so `patient/Observation.read` and `patient/Observation.rs`
//!   parse to the same [`SmartScope`];
//! - a `?k=v&k2=v2` suffix (v2 "granular" scopes) is only valid with v2
//!   permissions; keys and values are percent-decoded and must be non-empty.
//!
//! Everything that does not fit is an error: a scope that only looks
//! almost right must never grant anything.

use std::fmt;

/// The launch context a scope applies to: the `patient/`, `user/` or
/// `system/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: data in the compartment of the patient in context.
    Patient,
    /// `user/`: data the signed-in user may access.
    User,
    /// `system/`: backend-service access without a user.
    System,
}

impl Context {
    /// The scope prefix without the slash: `patient`, `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// One SMART v2 permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// `c`: create.
    C,
    /// `r`: read (instance read, vread, instance history).
    R,
    /// `u`: update (and patch).
    U,
    /// `d`: delete.
    D,
    /// `s`: search (type-level search and history).
    S,
}

impl Perm {
    /// All permissions in canonical `c r u d s` order.
    pub const ALL: [Perm; 5] = [Perm::C, Perm::R, Perm::U, Perm::D, Perm::S];

    /// The permission's letter in a v2 scope.
    pub fn letter(self) -> char {
        match self {
            Perm::C => 'c',
            Perm::R => 'r',
            Perm::U => 'u',
            Perm::D => 'd',
            Perm::S => 's',
        }
    }

    /// The permission for a v2 letter, if it is one of `c r u d s`.
    pub fn from_letter(letter: char) -> Option<Perm> {
        Perm::ALL.into_iter().find(|p| p.letter() == letter)
    }

    fn bit(self) -> u8 {
        match self {
            Perm::C => 1,
            Perm::R => 1 << 1,
            Perm::U => 1 << 2,
            Perm::D => 1 << 3,
            Perm::S => 1 << 4,
        }
    }
}

/// A set of [`Perm`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Perms(u8);

impl Perms {
    /// No permission at all.
    pub const NONE: Perms = Perms(0);
    /// `cruds`, what v1 `*` means.
    pub const ALL: Perms = Perms(0b1_1111);
    /// `rs`, what v1 `read` means.
    pub const V1_READ: Perms = Perms(0b1_0010);
    /// `cud`, what v1 `write` means.
    pub const V1_WRITE: Perms = Perms(0b0_1101);

    /// Whether `perm` is in the set.
    pub fn contains(self, perm: Perm) -> bool {
        self.0 & perm.bit() != 0
    }

    /// The set with `perm` added.
    pub fn with(self, perm: Perm) -> Perms {
        Perms(self.0 | perm.bit())
    }

    /// Every permission in either set.
    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as v2 letters in `cruds` order, e.g. `"rs"`; empty for
    /// [`Perms::NONE`].
    pub fn as_str(self) -> String {
        Perm::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .map(Perm::letter)
            .collect()
    }
}

impl From<Perm> for Perms {
    fn from(perm: Perm) -> Perms {
        Perms(perm.bit())
    }
}

impl FromIterator<Perm> for Perms {
    fn from_iter<I: IntoIterator<Item = Perm>>(iter: I) -> Perms {
        iter.into_iter().fold(Perms::NONE, Perms::with)
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A parsed SMART scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartScope {
    /// The `patient/`, `user/` or `system/` prefix.
    pub context: Context,
    /// The FHIR resource type; `None` means `*` (every type).
    pub resource: Option<String>,
    /// The granted permissions (v1 forms already mapped to v2).
    pub perms: Perms,
    /// v2 granular filters `?param=value(&param=value)*`, percent-decoded,
    /// in scope order. Empty for a non-granular scope.
    pub filters: Vec<(String, String)>,
}

impl SmartScope {
    /// Whether this scope grants `perm` on `resource_type`, ignoring
    /// filters. Resource types compare case-sensitively; `*` matches every
    /// type.
    pub fn grants(&self, resource_type: &str, perm: Perm) -> bool {
        self.perms.contains(perm) && self.resource.as_deref().is_none_or(|r| r == resource_type)
    }

    /// Whether the scope carries `?param=value` filters (v2 granular scope).
    pub fn is_granular(&self) -> bool {
        !self.filters.is_empty()
    }
}

/// Why a scope string is not a valid SMART scope. `Display` names the scope
/// and explains what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A character outside the RFC 6749 `scope-token` alphabet.
    #[error(
        "scope {scope:?}: invalid character {ch:?}; a scope is a single token of printable ASCII \
         without spaces, '\"' or '\\'"
    )]
    InvalidCharacter {
        /// The scope as given.
        scope: String,
        /// The offending character.
        ch: char,
    },
    /// The scope does not start with `patient/`, `user/` or `system/`.
    #[error("scope {0:?} is not a SMART scope: it must start with \"patient/\", \"user/\" or \"system/\"")]
    Context(String),
    /// No `.` between resource type and permissions.
    #[error(
        "scope {0:?}: missing '.' between the resource type and the permissions \
         (expected e.g. \"patient/Observation.rs\")"
    )]
    MissingDot(String),
    /// The resource type is neither `*` nor a FHIR type name.
    #[error(
        "scope {scope:?}: resource type {resource:?} must be '*' or a FHIR resource type name \
         (an upper-case ASCII letter followed by ASCII letters and digits, e.g. \"Observation\")"
    )]
    ResourceType {
        /// The scope as given.
        scope: String,
        /// The resource type part.
        resource: String,
    },
    /// The permissions are neither v1 nor a valid v2 subsequence.
    #[error(
        "scope {scope:?}: invalid permissions {perms:?} ({why}); permissions must be a subsequence \
         of c r u d s in that order (v2, e.g. \"rs\" or \"cruds\") or one of read, write, * (v1)"
    )]
    Permissions {
        /// The scope as given.
        scope: String,
        /// The permissions part.
        perms: String,
        /// What exactly is wrong with it.
        why: String,
    },
    /// A `?` filter on a v1 scope.
    #[error(
        "scope {0:?}: a '?' filter is only valid with SMART v2 permissions (e.g. \".rs\"), \
         not with v1 read, write or *"
    )]
    FilterOnV1(String),
    /// A malformed `?param=value` filter.
    #[error("scope {scope:?}: invalid filter: {why}")]
    Filter {
        /// The scope as given.
        scope: String,
        /// What exactly is wrong with it.
        why: String,
    },
}

/// Whether `scope` claims to be a SMART scope: it starts with `patient/`,
/// `user/` or `system/`. Says nothing about whether it parses.
pub fn looks_like_smart(scope: &str) -> bool {
    ["patient/", "user/", "system/"]
        .iter()
        .any(|p| scope.starts_with(p))
}

/// Parses one SMART scope (v1 or v2). See the module docs for the grammar.
pub fn parse(scope: &str) -> Result<SmartScope, ScopeError> {
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    if let Some(ch) = scope
        .chars()
        .find(|c| !matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E'))
    {
        return Err(ScopeError::InvalidCharacter {
            scope: scope.to_owned(),
            ch,
        });
    }
    let (context, rest) = scope
        .split_once('/')
        .ok_or_else(|| ScopeError::Context(scope.to_owned()))?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return Err(ScopeError::Context(scope.to_owned())),
    };
    let (body, query) = match rest.split_once('?') {
        Some((body, query)) => (body, Some(query)),
        None => (rest, None),
    };
    let (resource, perms) = body
        .split_once('.')
        .ok_or_else(|| ScopeError::MissingDot(scope.to_owned()))?;
    let resource = match resource {
        "*" => None,
        r if is_type_name(r) => Some(r.to_owned()),
        r => {
            return Err(ScopeError::ResourceType {
                scope: scope.to_owned(),
                resource: r.to_owned(),
            })
        }
    };
    let (perms, v2) = match perms {
        "read" => (Perms::V1_READ, false),
        "write" => (Perms::V1_WRITE, false),
        "*" => (Perms::ALL, false),
        p => match parse_v2_perms(p) {
            Ok(perms) => (perms, true),
            Err(why) => {
                return Err(ScopeError::Permissions {
                    scope: scope.to_owned(),
                    perms: p.to_owned(),
                    why,
                })
            }
        },
    };
    let filters = match query {
        None => Vec::new(),
        Some(_) if !v2 => return Err(ScopeError::FilterOnV1(scope.to_owned())),
        Some(q) => parse_filters(q).map_err(|why| ScopeError::Filter {
            scope: scope.to_owned(),
            why,
        })?,
    };
    Ok(SmartScope {
        context,
        resource,
        perms,
        filters,
    })
}

/// The SMART scopes in a list of granted scope strings, in order.
/// Non-SMART entries (`openid`, `launch/patient`, ...) and SMART-looking
/// entries that do not parse are skipped: they grant nothing.
pub fn granted(scopes: &[String]) -> Vec<SmartScope> {
    scopes
        .iter()
        .filter(|s| looks_like_smart(s))
        .filter_map(|s| parse(s).ok())
        .collect()
}

/// As [`granted`], keeping each scope's string (for `scope_used`).
pub fn granted_with_sources(scopes: &[String]) -> Vec<(&str, SmartScope)> {
    scopes
        .iter()
        .filter(|s| looks_like_smart(s))
        .filter_map(|s| parse(s).ok().map(|p| (s.as_str(), p)))
        .collect()
}

/// Does a granular filter value accept the request's values for that
/// search parameter?
///
/// `request_values` is the (decoded) value of one request parameter; it is
/// split on unescaped `,` (FHIR OR) and EVERY value must match, otherwise
/// the request could widen past the filter. A value matches when it equals
/// `filter_value`, or when it is a token `system|code` and `filter_value`
/// is the bare `code` (the request narrows to one system). A `system|code`
/// filter does not accept a bare `code` request, which would also match
/// other systems. Empty values never match. Values are compared in their
/// escaped form (`\,` `\|` `\\`), so differently-escaped spellings of the
/// same value do not match: fail closed.
pub fn filter_accepts(filter_value: &str, request_values: &str) -> bool {
    if filter_value.is_empty() {
        return false;
    }
    split_unescaped(request_values, ',').into_iter().all(|value| {
        if value.is_empty() {
            return false;
        }
        if value == filter_value {
            return true;
        }
        let filter_is_bare = split_unescaped(filter_value, '|').len() == 1;
        match split_unescaped(value, '|').as_slice() {
            [_system, code] => filter_is_bare && *code == filter_value,
            _ => false,
        }
    })
}

/// The 146 concrete FHIR R4 (4.0.1) resource type names, sorted (the
/// abstract `Resource` and `DomainResource` are not included).
pub const KNOWN_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Whether `name` is one of the FHIR R4 resource types in
/// [`KNOWN_RESOURCE_TYPES`] (case-sensitive).
pub fn is_known_resource_type(name: &str) -> bool {
    KNOWN_RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// `[A-Z][A-Za-z0-9]*`: the shape of a FHIR resource type name.
pub(crate) fn is_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

fn parse_v2_perms(p: &str) -> Result<Perms, String> {
    if p.is_empty() {
        return Err("they are empty".to_owned());
    }
    let mut perms = Perms::NONE;
    let mut last: Option<Perm> = None;
    for ch in p.chars() {
        let perm = Perm::from_letter(ch).ok_or_else(|| format!("{ch:?} is not one of c r u d s"))?;
        if let Some(last) = last {
            if perm == last {
                return Err(format!("{ch:?} is repeated"));
            }
            if (perm as u8) < (last as u8) {
                return Err(format!("{ch:?} comes after {:?}", last.letter()));
            }
        }
        perms = perms.with(perm);
        last = Some(perm);
    }
    Ok(perms)
}

fn parse_filters(query: &str) -> Result<Vec<(String, String)>, String> {
    if query.is_empty() {
        return Err("nothing after '?'".to_owned());
    }
    query
        .split('&')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not of the form param=value"))?;
            let k = percent_decode(k, false).map_err(|e| format!("parameter {k:?}: {e}"))?;
            let v = percent_decode(v, false).map_err(|e| format!("value {v:?}: {e}"))?;
            if k.is_empty() {
                return Err(format!("{pair:?} has an empty parameter name"));
            }
            if v.is_empty() {
                return Err(format!("{pair:?} has an empty value"));
            }
            Ok((k, v))
        })
        .collect()
}

/// Strict percent-decoding: every `%` must start a `%XX` escape and the
/// result must be UTF-8. With `plus_as_space`, `+` decodes to a space
/// (application/x-www-form-urlencoded).
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err("invalid percent-encoding ('%' must be followed by two hex digits)"),
                }
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding does not decode to UTF-8")
}

/// Splits on `sep` where it is not escaped by a backslash (FHIR search
/// escaping: `\,` `\|` `\$` `\\`). The parts keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &str) -> Perms {
        s.chars().map(|c| Perm::from_letter(c).unwrap()).collect()
    }

    fn scope(context: Context, resource: Option<&str>, p: &str, filters: &[(&str, &str)]) -> SmartScope {
        SmartScope {
            context,
            resource: resource.map(str::to_owned),
            perms: perms(p),
            filters: filters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parses_valid_scopes() {
        use Context::*;
        let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let cases: Vec<(&str, SmartScope)> = vec![
            // v2
            ("patient/Observation.rs", scope(Patient, Some("Observation"), "rs", &[])),
            ("patient/Observation.r", scope(Patient, Some("Observation"), "r", &[])),
            ("user/Patient.cruds", scope(User, Some("Patient"), "cruds", &[])),
            ("system/Encounter.cud", scope(System, Some("Encounter"), "cud", &[])),
            ("system/Encounter.s", scope(System, Some("Encounter"), "s", &[])),
            ("user/Task.cs", scope(User, Some("Task"), "cs", &[])),
            ("patient/*.rs", scope(Patient, None, "rs", &[])),
            ("system/*.cruds", scope(System, None, "cruds", &[])),
            // v1
            ("patient/Observation.read", scope(Patient, Some("Observation"), "rs", &[])),
            ("user/Patient.write", scope(User, Some("Patient"), "cud", &[])),
            ("user/Patient.*", scope(User, Some("Patient"), "cruds", &[])),
            ("patient/*.*", scope(Patient, None, "cruds", &[])),
            ("system/*.read", scope(System, None, "rs", &[])),
            // Not a known R4 type, but a type name: accepted (R5 types, custom).
            ("user/Foo2.r", scope(User, Some("Foo2"), "r", &[])),
            // granular
            (
                "patient/Observation.rs?category=laboratory",
                scope(Patient, Some("Observation"), "rs", &[("category", "laboratory")]),
            ),
            (
                "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                scope(Patient, Some("Observation"), "rs", &[("category", lab)]),
            ),
            (
                "patient/Observation.rs?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory",
                scope(Patient, Some("Observation"), "rs", &[("category", lab)]),
            ),
            (
                "user/Condition.rs?category=problem-list-item&clinical-status=active",
                scope(
                    User,
                    Some("Condition"),
                    "rs",
                    &[("category", "problem-list-item"), ("clinical-status", "active")],
                ),
            ),
            ("patient/*.s?_security=N", scope(Patient, None, "s", &[("_security", "N")])),
            // percent-decoding of keys and of '+' (kept literal: not form encoding)
            ("user/Observation.r?%63ode=a+b%20c", scope(User, Some("Observation"), "r", &[("code", "a+b c")])),
            // duplicate keys kept, in order (FHIR AND)
            (
                "user/Observation.rs?code=a&code=b",
                scope(User, Some("Observation"), "rs", &[("code", "a"), ("code", "b")]),
            ),
        ];
        for (input, want) in cases {
            let got = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn rejects_invalid_scopes_with_helpful_messages() {
        let order = "permissions must be a subsequence of c r u d s in that order";
        let cases: &[(&str, &[&str])] = &[
            ("patient/Observation.sr", &[order, "'r' comes after 's'"]),
            ("patient/Observation.rr", &[order, "'r' is repeated"]),
            ("patient/Observation.rsr", &[order]),
            ("patient/Observation.scrud", &[order]),
            ("patient/Observation.", &[order, "empty"]),
            ("patient/Observation.x", &[order, "'x' is not one of c r u d s"]),
            ("patient/Observation.R", &[order, "'R' is not one of"]),
            ("patient/Observation.READ", &[order]),
            ("patient/Observation.reads", &[order]),
            ("patient/Observation.all", &[order]),
            ("patient/Observation.**", &[order]),
            ("patient/Observation.rs.r", &[order]),
            ("patient/Observation", &["missing '.'"]),
            ("patient/", &["missing '.'"]),
            (
                "patient/observation.rs",
                &["resource type \"observation\"", "FHIR resource type name"],
            ),
            ("patient/.rs", &["resource type \"\""]),
            ("patient/Obs-ervation.rs", &["resource type \"Obs-ervation\""]),
            ("patient/1Observation.rs", &["resource type \"1Observation\""]),
            ("patient/Obs*.rs", &["resource type \"Obs*\""]),
            ("patient/Patient/1.rs", &["resource type \"Patient/1\""]),
            ("patient/Ob%73ervation.rs", &["resource type"]),
            (
                "Patient/Observation.rs",
                &["must start with \"patient/\", \"user/\" or \"system/\""],
            ),
            ("practitioner/Observation.rs", &["must start with"]),
            ("launch/patient", &["must start with"]),
            ("openid", &["must start with"]),
            ("", &["must start with"]),
            ("patient/Observation.rs ", &["invalid character ' '"]),
            (
                "patient/Observation.rs user/Patient.r",
                &["invalid character ' '"],
            ),
            ("patient/Observation.rs?code=\"a\"", &["invalid character '\"'"]),
            ("patient/Observation.rs?code=a\\,b", &["invalid character '\\\\'"]),
            ("patient/Observ\u{e9}tion.rs", &["invalid character '\u{e9}'"]),
            ("patient/Observation.rs\n", &["invalid character '\\n'"]),
            (
                "patient/Observation.read?category=laboratory",
                &["only valid with SMART v2 permissions"],
            ),
            (
                "patient/Observation.write?category=laboratory",
                &["only valid with SMART v2"],
            ),
            (
                "patient/Observation.*?category=laboratory",
                &["only valid with SMART v2"],
            ),
            (
                "patient/Observation.rs?",
                &["invalid filter", "nothing after '?'"],
            ),
            (
                "patient/Observation.rs?category",
                &["invalid filter", "not of the form param=value"],
            ),
            ("patient/Observation.rs?=laboratory", &["empty parameter name"]),
            ("patient/Observation.rs?category=", &["empty value"]),
            (
                "patient/Observation.rs?category=a&",
                &["not of the form param=value"],
            ),
            (
                "patient/Observation.rs?a=1&&b=2",
                &["not of the form param=value"],
            ),
            (
                "patient/Observation.rs?category=%zz",
                &["invalid percent-encoding"],
            ),
            (
                "patient/Observation.rs?category=lab%2",
                &["invalid percent-encoding"],
            ),
            (
                "patient/Observation.rs?category=lab%",
                &["invalid percent-encoding"],
            ),
            (
                "patient/Observation.rs?cat%g0=lab",
                &["parameter", "invalid percent-encoding"],
            ),
            (
                "patient/Observation.rs?category=%ff",
                &["does not decode to UTF-8"],
            ),
            ("patient/Observation.rs?category=%25", &[]), // valid: decodes to "%"
        ];
        for (input, needles) in cases {
            match parse(input) {
                Ok(s) if needles.is_empty() => assert_eq!(s.filters[0].1, "%", "{input}"),
                Ok(s) => panic!("{input}: expected an error, got {s:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!needles.is_empty(), "{input}: unexpected error {msg}");
                    assert!(
                        msg.contains(&format!("{input:?}")),
                        "{input}: message does not name scope: {msg}"
                    );
                    for needle in *needles {
                        assert!(
                            msg.contains(needle),
                            "{input}: {msg:?} does not contain {needle:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn error_variants() {
        assert!(matches!(parse("openid"), Err(ScopeError::Context(_))));
        assert!(matches!(
            parse("patient/Observation"),
            Err(ScopeError::MissingDot(_))
        ));
        assert!(matches!(
            parse("patient/obs.rs"),
            Err(ScopeError::ResourceType { .. })
        ));
        assert!(matches!(
            parse("patient/Obs.sr"),
            Err(ScopeError::Permissions { .. })
        ));
        assert!(matches!(
            parse("patient/Obs.read?a=b"),
            Err(ScopeError::FilterOnV1(_))
        ));
        assert!(matches!(
            parse("patient/Obs.rs?a"),
            Err(ScopeError::Filter { .. })
        ));
        assert!(matches!(
            parse("patient/Obs.rs a"),
            Err(ScopeError::InvalidCharacter { ch: ' ', .. })
        ));
    }

    #[test]
    fn v1_and_v2_are_equivalent() {
        let pairs = [
            ("patient/Observation.read", "patient/Observation.rs"),
            ("user/Patient.write", "user/Patient.cud"),
            ("system/*.*", "system/*.cruds"),
        ];
        for (v1, v2) in pairs {
            assert_eq!(parse(v1).unwrap(), parse(v2).unwrap(), "{v1} vs {v2}");
        }
    }

    #[test]
    fn grants_by_type_and_perm() {
        // (scope, resource type, perm, granted)
        let cases: &[(&str, &str, Perm, bool)] = &[
            ("patient/Observation.read", "Observation", Perm::R, true),
            ("patient/Observation.read", "Observation", Perm::S, true),
            ("patient/Observation.read", "Observation", Perm::C, false),
            ("patient/Observation.read", "Observation", Perm::U, false),
            ("patient/Observation.read", "Observation", Perm::D, false),
            ("patient/Observation.read", "Patient", Perm::R, false),
            ("patient/Observation.read", "observation", Perm::R, false),
            ("user/Observation.write", "Observation", Perm::C, true),
            ("user/Observation.write", "Observation", Perm::U, true),
            ("user/Observation.write", "Observation", Perm::D, true),
            ("user/Observation.write", "Observation", Perm::R, false),
            ("user/Observation.write", "Observation", Perm::S, false),
            ("user/Observation.*", "Observation", Perm::D, true),
            ("patient/Observation.r", "Observation", Perm::R, true),
            ("patient/Observation.r", "Observation", Perm::S, false),
            ("patient/Observation.s", "Observation", Perm::R, false),
            ("patient/Observation.s", "Observation", Perm::S, true),
            ("patient/*.rs", "Observation", Perm::R, true),
            ("patient/*.rs", "Patient", Perm::S, true),
            ("patient/*.rs", "Patient", Perm::U, false),
            ("system/*.*", "AnythingAtAll", Perm::D, true),
            // filters are ignored by grants()
            (
                "patient/Observation.rs?category=laboratory",
                "Observation",
                Perm::S,
                true,
            ),
            (
                "patient/Observation.rs?category=laboratory",
                "Condition",
                Perm::S,
                false,
            ),
        ];
        for (s, rt, perm, want) in cases {
            assert_eq!(parse(s).unwrap().grants(rt, *perm), *want, "{s} {rt} {perm:?}");
        }
    }

    #[test]
    fn is_granular() {
        assert!(parse("patient/Observation.rs?category=laboratory")
            .unwrap()
            .is_granular());
        assert!(!parse("patient/Observation.rs").unwrap().is_granular());
        assert!(!parse("patient/Observation.read").unwrap().is_granular());
    }

    #[test]
    fn looks_like_smart_checks_prefix_only() {
        let cases = [
            ("patient/Observation.rs", true),
            ("user/x", true),
            ("system/", true),
            ("patient/Observation.sr", true),
            ("patient", false),
            ("Patient/Observation.rs", false),
            ("launch/patient", false),
            ("openid", false),
            ("fhirUser", false),
            ("offline_access", false),
            ("", false),
        ];
        for (s, want) in cases {
            assert_eq!(looks_like_smart(s), want, "{s}");
        }
    }

    #[test]
    fn granted_skips_non_smart_and_invalid() {
        let scopes: Vec<String> = [
            "openid",
            "fhirUser",
            "launch/patient",
            "patient/Observation.rs",
            "patient/Observation.sr",
            "offline_access",
            "user/*.read",
            "patient/Observation.read?x=y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = granted(&scopes);
        assert_eq!(
            got,
            vec![
                scope(Context::Patient, Some("Observation"), "rs", &[]),
                scope(Context::User, None, "rs", &[])
            ]
        );
        assert!(granted(&[]).is_empty());
    }

    #[test]
    fn perms_bitset() {
        assert!(Perms::NONE.is_empty());
        assert!(Perms::default().is_empty());
        assert_eq!(Perms::NONE.as_str(), "");
        assert_eq!(Perms::ALL.as_str(), "cruds");
        assert_eq!(Perms::V1_READ.as_str(), "rs");
        assert_eq!(Perms::V1_WRITE.as_str(), "cud");
        assert_eq!(Perms::V1_READ.union(Perms::V1_WRITE), Perms::ALL);
        assert_eq!(perms("sr"), perms("rs")); // the bitset itself is order-free
        assert_eq!(Perms::from(Perm::D).as_str(), "d");
        assert_eq!(Perms::from(Perm::S).with(Perm::C).to_string(), "cs");
        let p = perms("ud");
        assert!(p.contains(Perm::U) && p.contains(Perm::D));
        assert!(!p.contains(Perm::C) && !p.contains(Perm::R) && !p.contains(Perm::S));
        assert!(!p.is_empty());
        for perm in Perm::ALL {
            assert_eq!(Perm::from_letter(perm.letter()), Some(perm));
        }
        assert_eq!(Perm::from_letter('x'), None);
    }

    #[test]
    fn every_v2_subsequence_parses_and_round_trips() {
        for bits in 1u8..32 {
            let p: Perms = Perm::ALL
                .into_iter()
                .filter(|perm| bits & perm.bit() != 0)
                .collect();
            let s = format!("user/Observation.{}", p.as_str());
            assert_eq!(parse(&s).unwrap().perms, p, "{s}");
        }
    }

    #[test]
    fn context_as_str() {
        for (c, s) in [
            (Context::Patient, "patient"),
            (Context::User, "user"),
            (Context::System, "system"),
        ] {
            assert_eq!(c.as_str(), s);
            assert_eq!(parse(&format!("{s}/Patient.r")).unwrap().context, c);
        }
    }

    #[test]
    fn filter_accepts_table() {
        let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let cases: &[(&str, &str, bool)] = &[
            // equality
            ("laboratory", "laboratory", true),
            ("laboratory", "vital-signs", false),
            ("laboratory", "Laboratory", false),
            ("laboratory", "laboratory ", false),
            // comma OR: every value must match
            ("laboratory", "laboratory,laboratory", true),
            ("laboratory", "laboratory,vital-signs", false),
            ("laboratory", "vital-signs,laboratory", false),
            ("laboratory", "laboratory,", false),
            ("laboratory", ",laboratory", false),
            ("laboratory", "", false),
            ("", "", false),
            ("", "x", false),
            // token system|code in the request, bare code in the filter
            ("laboratory", lab, true),
            ("laboratory", "|laboratory", true),
            ("laboratory", "http://other|laboratory", true),
            ("laboratory", "http://x|vital-signs", false),
            ("laboratory", "http://x|", false),
            ("laboratory", &format!("{lab},laboratory"), true),
            ("laboratory", &format!("{lab},http://x|vital-signs"), false),
            // both system|code
            (lab, lab, true),
            (lab, "http://other|laboratory", false),
            (lab, &format!("{lab},{lab}"), true),
            // system|code filter does not accept a bare code: other systems
            (lab, "laboratory", false),
            (lab, &format!("{lab},laboratory"), false),
            (lab, "|laboratory", false),
            // escapes: \, and \| are literal, compared in escaped form
            ("a\\,b", "a\\,b", true),
            ("a\\,b", "a,b", false),
            ("a", "a\\,b", false),
            ("b", "a\\|b", false),
            ("a\\|b", "a\\|b", true),
            ("c", "s\\|x|c", true),
            ("c", "s|x|c", false),
        ];
        for (filter, request, want) in cases {
            assert_eq!(
                filter_accepts(filter, request),
                *want,
                "filter {filter:?} request {request:?}"
            );
        }
    }

    #[test]
    fn known_resource_types() {
        assert_eq!(KNOWN_RESOURCE_TYPES.len(), 146);
        assert!(
            KNOWN_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique"
        );
        assert!(KNOWN_RESOURCE_TYPES.iter().all(|t| is_type_name(t)));
        for t in [
            "Patient",
            "Observation",
            "Account",
            "VisionPrescription",
            "MedicinalProductPackaged",
        ] {
            assert!(is_known_resource_type(t), "{t}");
        }
        for t in [
            "patient",
            "Foo",
            "",
            "*",
            "DomainResource",
            "Resource",
            "PatientX",
        ] {
            assert!(!is_known_resource_type(t), "{t}");
        }
    }

    #[test]
    fn type_name_shape() {
        for (s, want) in [
            ("Patient", true),
            ("A", true),
            ("A1b", true),
            ("a", false),
            ("", false),
            ("1A", false),
        ] {
            assert_eq!(is_type_name(s), want, "{s}");
        }
        assert!(!is_type_name("Pat_ient"));
        assert!(!is_type_name("Pat\u{e9}ient"));
    }

    #[test]
    fn percent_decode_strict() {
        assert_eq!(percent_decode("a%20b+c", false).unwrap(), "a b+c");
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("%7c%7C", false).unwrap(), "||");
        assert_eq!(percent_decode("%C3%A9", false).unwrap(), "\u{e9}");
        assert!(percent_decode("%", false).is_err());
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("%4g", false).is_err());
        assert!(percent_decode("%C3", false).is_err());
    }
}
