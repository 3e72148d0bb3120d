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
