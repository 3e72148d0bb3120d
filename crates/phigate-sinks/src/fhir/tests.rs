use super::*;
use serde_json::json;

const EVENT_ID: &str = "01a2122d-b73c-7409-b61c-cfca4fee05ea";

/// A spool `access` record like the gateway writes, with `extra` merged in.
fn access(method: &str, path: &str, extra: Value) -> Value {
    let mut r = json!({
        "v": 1, "kind": "access", "seq": 3, "event_id": EVENT_ID, "ts": "2026-11-25T10:08:35.644Z",
        "prev_hash": "0".repeat(64), "hash": "1".repeat(64),
        "request_id": "01a2122d-b73a-775a-bb68-07399dabb2f3", "decision": "allow", "reason": "allowed",
        "status": 200, "method": method, "path": path, "route": "r", "sub": "alice", "client_id": "dev-client",
        "iss": "https://idp.example", "scopes_granted": ["user/Patient.rs"], "scopes_required": ["user/Patient.r"],
        "upstream_status": 200, "duration_ms": 1.5, "remote_addr": "10.1.2.3:44404",
        "policy_version": "sha256:3b42a76d2fb05d80", "outcome": "success"
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        r[k] = v;
    }
    r
}

fn profile(ev: &Value) -> Option<&str> {
    ev["meta"]["profile"][0].as_str()
}

fn entity_with_role<'a>(ev: &'a Value, role: &str) -> Option<&'a Value> {
    ev["entity"]
        .as_array()?
        .iter()
        .find(|e| e["role"]["code"] == role)
}

fn event_id_of(ev: &Value) -> Option<&str> {
    ev["entity"]
        .as_array()?
        .iter()
        .find(|e| e["what"]["identifier"]["system"] == EVENT_ID_SYSTEM)?["what"]["identifier"]["value"]
        .as_str()
}

fn agent_of_type<'a>(ev: &'a Value, code: &str) -> Option<&'a Value> {
    ev["agent"]
        .as_array()?
        .iter()
        .find(|a| a["type"]["coding"][0]["code"] == code)
}

#[test]
fn interactions_are_derived_from_method_and_path() {
    use Interaction::*;
    let cases = [
        ("GET", "/fhir/Patient/123", Some(Read)),
        ("GET", "/fhir/Patient/123/_history/2", Some(Vread)),
        ("GET", "/fhir/Patient/123/_history", Some(HistoryInstance)),
        ("GET", "/fhir/Observation?patient=123", Some(SearchType)),
        ("GET", "/fhir/Observation", Some(SearchType)),
        ("POST", "/fhir/Observation/_search", Some(SearchType)),
        ("POST", "/fhir/Observation", Some(Create)),
        ("PUT", "/fhir/Observation/9", Some(Update)),
        ("PATCH", "/fhir/Observation/9", Some(Patch)),
        ("DELETE", "/fhir/Observation/9", Some(Delete)),
        ("GET", "/fhir/metadata", Some(Capabilities)),
        ("POST", "/fhir", Some(Transaction)),
        ("GET", "/fhir/Patient/123/$everything", Some(Operation)),
        ("GET", "/fhir?_type=Patient", Some(SearchSystem)),
        ("OPTIONS", "/fhir/Patient/1", None),
    ];
    for (m, p, want) in cases {
        assert_eq!(classify(m, p).map(|t| t.interaction), want, "{m} {p}");
    }
    let t = classify("GET", "/r4/Patient/123/_history/2").unwrap();
    assert_eq!(
        (t.resource_type.as_deref(), t.id.as_deref(), t.version.as_deref()),
        (Some("Patient"), Some("123"), Some("2"))
    );
}

#[test]
fn allowed_patient_read_maps_to_balp_patient_read() {
    let ev = to_audit_event(&access("GET", "/fhir/Patient/123", json!({"patient": "123"})));
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert!(ev.get("id").is_none(), "the server assigns the id");
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead")
    );
    assert_eq!(
        ev["type"]["system"],
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    );
    assert_eq!(ev["type"]["code"], "rest");
    assert_eq!(
        ev["subtype"][0]["system"],
        "http://hl7.org/fhir/restful-interaction"
    );
    assert_eq!(ev["subtype"][0]["code"], "read");
    assert_eq!(ev["action"], "R");
    assert_eq!(ev["outcome"], "0");
    assert!(ev.get("outcomeDesc").is_none());
    assert_eq!(ev["recorded"], "2026-11-25T10:08:35.644Z");
    // Agents: user requestor with iss/sub, client app with its address, gateway.
    let user = agent_of_type(&ev, "IRCP").unwrap();
    assert_eq!(user["requestor"], true);
    assert_eq!(
        user["who"]["identifier"],
        json!({"system": "https://idp.example", "value": "alice"})
    );
    let client = agent_of_type(&ev, "110153").unwrap();
    assert_eq!(client["requestor"], false);
    assert_eq!(client["who"]["identifier"]["value"], "dev-client");
    assert_eq!(client["network"], json!({"address": "10.1.2.3", "type": "2"}));
    let gw = agent_of_type(&ev, "110152").unwrap();
    assert_eq!(gw["policy"][0], "urn:phigate:policy:sha256:3b42a76d2fb05d80");
    assert_eq!(ev["source"]["observer"]["display"], "phigate");
    // Entities: the patient, the request id, the event id (dedup key).
    let p = entity_with_role(&ev, "1").unwrap();
    assert_eq!(p["what"]["reference"], "Patient/123");
    assert_eq!(p["type"]["code"], "1");
    assert_eq!(event_id_of(&ev), Some(EVENT_ID));
    assert!(ev["entity"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"]["code"] == "XrequestId"
            && e["what"]["identifier"]["value"] == "01a2122d-b73a-775a-bb68-07399dabb2f3"));
    assert!(ev.get("purposeOfEvent").is_none());
}

#[test]
fn read_without_known_patient_uses_the_plain_read_profile_and_no_patient_entity() {
    let ev = to_audit_event(&access("GET", "/fhir/Observation/9", json!({})));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read")
    );
    assert!(entity_with_role(&ev, "1").is_none());
    assert_eq!(
        entity_with_role(&ev, "4").unwrap()["what"]["reference"],
        "Observation/9"
    );
}

#[test]
fn search_maps_to_patient_query_with_base64_query() {
    let path = "/fhir/Observation?patient=123&category=laboratory";
    let ev = to_audit_event(&access("GET", path, json!({"patient": "123"})));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery")
    );
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    assert_eq!(ev["action"], "E");
    let q = entity_with_role(&ev, "24").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(q["query"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, path.as_bytes());
    assert_eq!(q["what"]["type"], "Observation");
    assert_eq!(
        entity_with_role(&ev, "1").unwrap()["what"]["reference"],
        "Patient/123"
    );
}

/// The gateway records the canonical path and the query apart.
#[test]
fn the_recorded_query_is_part_of_the_balp_query() {
    let record = access(
        "GET",
        "/fhir/Observation",
        json!({"patient": "123", "query": "patient=123&category=laboratory"}),
    );
    let ev = to_audit_event(&record);
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    let q = entity_with_role(&ev, "24").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(q["query"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, b"/fhir/Observation?patient=123&category=laboratory");
    assert_eq!(
        q["description"],
        "/fhir/Observation?patient=123&category=laboratory"
    );
}

#[test]
fn create_maps_to_create_profile_and_action_c() {
    let ev = to_audit_event(&access("POST", "/fhir/Observation", json!({"status": 201})));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create")
    );
    assert_eq!(ev["subtype"][0]["code"], "create");
    assert_eq!(ev["action"], "C");
    assert_eq!(entity_with_role(&ev, "4").unwrap()["what"]["type"], "Observation");
    let ev = to_audit_event(&access("PUT", "/fhir/Observation/9", json!({"patient": "7"})));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientUpdate")
    );
    assert_eq!(ev["action"], "U");
    let ev = to_audit_event(&access("DELETE", "/fhir/Observation/9", json!({})));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Delete")
    );
    assert_eq!(ev["action"], "D");
}

#[test]
fn deny_maps_to_authorization_decision_with_failure_outcome_and_reason() {
    let ev = to_audit_event(&access(
        "POST",
        "/fhir/Observation",
        json!({"decision": "deny", "reason": "insufficient_scope", "status": 403, "outcome": "denied", "upstream_status": null}),
    ));
    assert_eq!(
        profile(&ev),
        Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.AuthZconsent")
    );
    assert_eq!(
        ev["type"],
        json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113", "display": "Security Alert"})
    );
    assert_eq!(ev["subtype"][0]["code"], "AuthZ-Role");
    assert_eq!(ev["action"], "E");
    assert_eq!(ev["outcome"], "4");
    assert_eq!(ev["outcomeDesc"], "insufficient_scope (HTTP 403)");
    assert_eq!(event_id_of(&ev), Some(EVENT_ID));
    // Still says what was attempted.
    assert_eq!(entity_with_role(&ev, "4").unwrap()["what"]["type"], "Observation");
}

#[test]
fn anonymous_deny_makes_the_client_the_requestor() {
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/123",
        json!({"decision": "deny", "reason": "missing_token", "status": 401, "sub": null, "client_id": null, "iss": null}),
    ));
    assert!(agent_of_type(&ev, "IRCP").is_none());
    let client = agent_of_type(&ev, "110153").unwrap();
    assert_eq!(client["requestor"], true);
    assert_eq!(client["who"]["display"], "unauthenticated client");
    assert_eq!(ev["outcomeDesc"], "missing_token (HTTP 401)");
}

#[test]
fn gateway_side_failure_is_a_serious_failure() {
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/1",
        json!({"decision": "deny", "reason": "keys_unavailable", "status": 503}),
    ));
    assert_eq!(ev["outcome"], "8");
}

#[test]
fn upstream_failures_are_not_claimed_as_successful_balp_interactions() {
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/1",
        json!({"outcome": "upstream_error", "upstream_status": 502}),
    ));
    assert_eq!(ev["outcome"], "8");
    assert_eq!(ev["outcomeDesc"], "upstream failed (status 502)");
    assert!(ev.get("meta").is_none());
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/1",
        json!({"outcome": "client_error", "upstream_status": 404}),
    ));
    assert_eq!(ev["outcome"], "4");
}

#[test]
fn break_glass_adds_purpose_of_event_with_justification() {
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/123",
        json!({"patient": "123", "reason": "break_glass", "break_glass": true, "justification": "ER trauma, unconscious"}),
    ));
    let pou = &ev["purposeOfEvent"][0];
    let codes: Vec<&str> = pou["coding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["ETREAT", "BTG"]);
    assert!(pou["coding"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActReason"));
    assert_eq!(pou["text"], "ER trauma, unconscious");
    assert_eq!(ev["outcome"], "0");
}

#[test]
fn shadow_decision_is_noted_in_outcome_desc() {
    let ev = to_audit_event(&access(
        "GET",
        "/fhir/Patient/1",
        json!({"shadow_decision": "deny"}),
    ));
    assert_eq!(ev["outcomeDesc"], "shadow decision: deny");
}

#[test]
fn recovery_is_a_security_alert_and_checkpoint_has_no_audit_event() {
    let rec = json!({"v":1,"kind":"recovery","seq":10,"event_id":"e10","ts":"2026-01-01T00:00:00.000Z",
        "segment":"segment-00000000000000000001.jsonl","truncated_from":100,"truncated_to":150,"reason":"torn last line"});
    let ev = to_audit_event(&rec);
    assert_eq!(ev["type"]["code"], "110113");
    assert_eq!(ev["outcome"], "4");
    assert!(ev["outcomeDesc"]
        .as_str()
        .unwrap()
        .contains("truncated from byte 100 to 150"));
    assert_eq!(event_id_of(&ev), Some("e10"));
    assert!(to_audit_event(&json!({"kind":"checkpoint","seq":11,"event_id":"e11"})).is_null());
}

#[test]
fn export_is_a_collection_bundle_of_audit_events() {
    let records = [
        access("GET", "/fhir/Patient/123", json!({"patient": "123"})),
        json!({"kind":"checkpoint","seq":4,"event_id":"x"}),
        access(
            "GET",
            "/fhir/Observation",
            json!({"event_id": "not-a-uuid", "seq": 5}),
        ),
    ];
    let b = export_fhir(&records);
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "collection");
    assert_eq!(b["total"], 2);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["fullUrl"], format!("urn:uuid:{EVENT_ID}"));
    assert_eq!(entries[0]["resource"]["resourceType"], "AuditEvent");
    assert!(entries[1].get("fullUrl").is_none());
}

#[test]
fn intent_and_outcome_records_map_to_linked_events_with_honest_outcomes() {
    let intent = access(
        "POST",
        "/fhir/Observation",
        json!({ "phase": "intent", "outcome": "pending", "status": 0, "event_id": "ev-1" }),
    );
    let ev = to_audit_event(&intent);
    assert_eq!(ev["outcome"], "0");
    assert!(ev["outcomeDesc"]
        .as_str()
        .unwrap()
        .contains("outcome is recorded in a later AuditEvent"));

    let cases = [
        (
            json!({ "outcome": "client_aborted", "upstream_status": 201 }),
            "4",
            "upstream answered 201",
        ),
        (
            json!({ "outcome": "client_aborted", "upstream_status": null }),
            "4",
            "before the upstream answered",
        ),
        (json!({ "outcome": "aborted_shutdown" }), "8", "shut down"),
        (
            json!({ "outcome": "upstream_error", "reason": "upstream_incomplete", "upstream_status": 200, "complete": false, "bytes_to_client": 1000 }),
            "8",
            "response incomplete, 1000 body bytes delivered",
        ),
        (
            json!({ "outcome": "success", "upstream_status": 201, "complete": true }),
            "0",
            "outcome of event ev-1",
        ),
    ];
    for (extra, code, text) in cases {
        let mut fields = json!({ "phase": "outcome", "completes": "ev-1" });
        for (k, v) in extra.as_object().unwrap() {
            fields[k] = v.clone();
        }
        let ev = to_audit_event(&access("POST", "/fhir/Observation", fields));
        assert_eq!(ev["outcome"], code, "{ev:#}");
        let desc = ev["outcomeDesc"].as_str().unwrap();
        assert!(desc.contains(text), "{desc}");
        assert!(desc.starts_with("outcome of event ev-1"), "{desc}");
    }
}

/// A spool `logout` record like the gateway writes, with `extra` merged in.
fn logout(extra: Value) -> Value {
    let mut r = json!({
        "v": 1, "kind": "logout", "seq": 8, "event_id": EVENT_ID, "ts": "2026-11-25T10:09:00.001Z",
        "prev_hash": "0".repeat(64), "hash": "1".repeat(64),
        "request_id": "01a2122d-b73a-775a-bb68-07399dabb2f4", "source": "backchannel",
        "decision": "allow", "reason": "logged_out", "status": 200,
        "issuer": "https://idp.example", "sid": "08a5019c-17e1", "sub": "alice",
        "jti": "bWJq", "client_ip": "10.9.8.7"
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        r[k] = v;
    }
    r
}

fn entity_with_system<'a>(ev: &'a Value, system: &str) -> Option<&'a Value> {
    ev["entity"]
        .as_array()?
        .iter()
        .find(|e| e["what"]["identifier"]["system"] == system)
}

#[test]
fn accepted_backchannel_logout_maps_to_a_dicom_logout_event() {
    let ev = to_audit_event(&logout(json!({})));
    assert_eq!(ev["resourceType"], "AuditEvent");
    assert_eq!(
        ev["type"],
        json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"})
    );
    assert_eq!(
        ev["subtype"],
        json!([{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110123", "display": "Logout"}])
    );
    assert_eq!(ev["action"], "E");
    assert_eq!(ev["outcome"], "0");
    assert_eq!(ev["outcomeDesc"], "logged_out (HTTP 200)");
    assert_eq!(ev["recorded"], "2026-11-25T10:09:00.001Z");
    assert!(ev.get("meta").is_none(), "BALP has no logout profile");
    // Agents: the subject (sub @ issuer), the identity provider that asked, the gateway.
    let subject = agent_of_type(&ev, "SBJ").unwrap();
    assert_eq!(
        subject["who"]["identifier"],
        json!({"system": "https://idp.example", "value": "alice"})
    );
    assert_eq!(subject["requestor"], false);
    let idp = agent_of_type(&ev, "110153").unwrap();
    assert_eq!(idp["requestor"], true);
    assert_eq!(idp["who"]["identifier"]["value"], "https://idp.example");
    assert_eq!(idp["network"], json!({"address": "10.9.8.7", "type": "2"}));
    assert_eq!(agent_of_type(&ev, "110152").unwrap()["who"]["display"], "phigate");
    assert_eq!(ev["agent"].as_array().unwrap().len(), 3);
    assert_eq!(ev["source"]["observer"]["display"], "phigate");
    assert_eq!(ev["source"]["type"][0]["code"], "4");
    // Entities: the session and the logout token as security resources, request id, event id.
    let sid = entity_with_system(&ev, SID_SYSTEM).unwrap();
    assert_eq!(sid["what"]["identifier"]["value"], "08a5019c-17e1");
    assert_eq!(sid["role"]["code"], "13");
    let jti = entity_with_system(&ev, LOGOUT_JTI_SYSTEM).unwrap();
    assert_eq!(jti["what"]["identifier"]["value"], "bWJq");
    assert_eq!(event_id_of(&ev), Some(EVENT_ID));
    assert!(ev["entity"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"]["code"] == "XrequestId"
            && e["what"]["identifier"]["value"] == "01a2122d-b73a-775a-bb68-07399dabb2f4"));
}

#[test]
fn refused_logouts_fail_with_their_reason_and_a_gateway_failure_is_serious() {
    let ev = to_audit_event(&logout(json!({
        "decision": "deny", "reason": "logout_token_bad_signature", "status": 400,
        "detail": "no key of the issuer verifies the signature"
    })));
    assert_eq!(ev["subtype"][0]["code"], "110123");
    assert_eq!(ev["outcome"], "4");
    assert_eq!(
        ev["outcomeDesc"],
        "logout_token_bad_signature (HTTP 400): no key of the issuer verifies the signature"
    );
    assert_eq!(ev["source"]["type"][0]["code"], "6");
    let ev = to_audit_event(&logout(json!({
        "decision": "deny", "reason": "session_store_unavailable", "status": 503
    })));
    assert_eq!(ev["outcome"], "8", "the sessions may still be active");
    // An unverified token without claims: no subject, no session, still an event.
    let ev = to_audit_event(&logout(json!({
        "decision": "deny", "reason": "logout_token_malformed", "status": 400,
        "issuer": null, "sid": null, "sub": null, "jti": null, "client_ip": null
    })));
    assert!(agent_of_type(&ev, "SBJ").is_none());
    let sender = agent_of_type(&ev, "110153").unwrap();
    assert_eq!(sender["who"]["display"], "unidentified logout token sender");
    assert!(sender.get("network").is_none());
    assert!(entity_with_system(&ev, SID_SYSTEM).is_none());
    assert_eq!(event_id_of(&ev), Some(EVENT_ID));
}

#[test]
fn admin_revocation_names_the_officer_as_requestor() {
    let ev = to_audit_event(&logout(json!({
        "source": "admin", "reason": "revoked", "actor": "K. Jones (SEC-42)",
        "issuer": "https://idp.example", "client_ip": null, "jti": null
    })));
    assert_eq!(ev["outcome"], "0");
    let officer = agent_of_type(&ev, "110153").unwrap();
    assert_eq!(officer["who"], json!({"display": "K. Jones (SEC-42)"}));
    assert_eq!(officer["requestor"], true);
    assert_eq!(
        agent_of_type(&ev, "SBJ").unwrap()["who"]["identifier"]["value"],
        "alice"
    );
    assert!(entity_with_system(&ev, LOGOUT_JTI_SYSTEM).is_none());
    let anonymous = to_audit_event(&logout(json!({"source": "admin", "reason": "revoked"})));
    assert_eq!(
        agent_of_type(&anonymous, "110153").unwrap()["who"]["display"],
        "administrator"
    );
}

#[test]
fn export_includes_logouts() {
    let records = [
        access("GET", "/fhir/Patient/123", json!({"patient": "123"})),
        logout(json!({})),
        json!({"kind":"checkpoint","seq":9,"event_id":"x"}),
    ];
    let b = export_fhir(&records);
    assert_eq!(b["total"], 2);
    assert_eq!(b["entry"][1]["resource"]["subtype"][0]["code"], "110123");
    assert_eq!(b["entry"][1]["fullUrl"], format!("urn:uuid:{EVENT_ID}"));
}
