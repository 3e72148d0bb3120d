use super::*;
use crate::smart::Perm;
use Interaction::*;

fn req(interaction: Interaction, t: Option<&str>, id: Option<&str>, params: &[(&str, &str)]) -> FhirRequest {
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
        bundle_links(br#"{"resourceType":"Bundle","text":"\"link\":[{\"relation\":\"next\"}]"}"#).is_empty()
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
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
