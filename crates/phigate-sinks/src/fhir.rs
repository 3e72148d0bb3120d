//! FHIR R4 AuditEvent mapping following IHE Basic Audit Log Patterns
//! (BALP), the FHIR export Bundle, and the sink that POSTs AuditEvents to a
//! FHIR server (an IHE ATNA Audit Record Repository with the FHIR feed).
//!
//! Mapping of an `access` record (see `docs/sinks.md` for the full table):
//! - allow → BALP RESTful-interaction pattern: `type` = audit-event-type
//!   `rest`, `subtype` = the FHIR interaction derived from method and path,
//!   `action` C/R/U/D/E, `outcome` 0 (success), 4 (upstream 4xx) or
//!   8 (upstream 5xx/unreachable). `meta.profile` names the BALP profile of
//!   a successful interaction (`IHE.BasicAudit.[Patient]Read|Query|Create|Update|Delete`),
//!   the `Patient*` one when the patient is known.
//! - deny → BALP authorization-decision pattern (`IHE.BasicAudit.AuthZconsent`):
//!   `type` DCM 110113 "Security Alert", `subtype` AuthZ-Role, `action` E,
//!   `outcome` 4 (refused: 4xx) or 8 (gateway could not decide: 5xx),
//!   `outcomeDesc` = the reason.
//! - agents: the user (`sub`, `who.identifier.system` = `iss`, requestor),
//!   the client application (`client_id`, DCM 110153 Source Role ID, with the
//!   network address from `remote_addr`), the gateway (DCM 110152, policy
//!   version in `agent.policy`). `source.observer` = `phigate`.
//! - entities: the patient (`Patient/<id>`, role 1 "Patient") when known; the
//!   data (`<Type>/<id>`, role 4) or the query (role 24, base64 request
//!   target — `path`, and `?query` when recorded — in `entity.query`); the request id (BALP `XrequestId`); and the
//!   record's `event_id` as `entity.what.identifier` with system
//!   [`EVENT_ID_SYSTEM`] — the de-duplication key (`AuditEvent.id` is left to
//!   the server).
//! - break-glass → `purposeOfEvent` v3-ActReason `ETREAT` + `BTG`, the
//!   justification in `purposeOfEvent.text`.
//!
//! Mapping of a `logout` record (a back-channel logout or an administrator's
//! revocation; BALP has no logout pattern, so DICOM's): `type` DCM 110114
//! "User Authentication", `subtype` DCM 110123 "Logout", `action` E,
//! `outcome` 0 (carried out), 4 (refused: 4xx) or 8 (gateway could not
//! carry it out: 5xx), `outcomeDesc` = reason, status and detail. Agents:
//! the subject logged out (`sub` with `issuer` as identifier system,
//! v3-ParticipationType SBJ), the requestor (the identity provider `issuer`
//! with `client_ip`, or the administrator `actor`; DCM 110153) and the
//! gateway. Entities: the session (`sid`, [`SID_SYSTEM`]) and the logout
//! token (`jti`, [`LOGOUT_JTI_SYSTEM`]) as security resources, the request
//! id, the event id.
//!
//! (Over 600 lines on purpose: the whole BALP mapping reads top to bottom in
//! one place, next to the sink that sends it; splitting it would scatter one
//! table across files.)

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::forwarder::{Sink, SinkError};
use crate::spool::SpoolRecord;

/// `entity.what.identifier.system` of the entity carrying the record's
/// `event_id` (the de-duplication key).
pub const EVENT_ID_SYSTEM: &str = "urn:phigate:event-id";
/// `agent.who.identifier.system` of the client application agent.
pub const CLIENT_ID_SYSTEM: &str = "urn:phigate:client-id";
/// `entity.what.identifier.system` of the session (`sid`) a logout ended.
pub const SID_SYSTEM: &str = "urn:phigate:sid";
/// `entity.what.identifier.system` of a logout token's `jti`.
pub const LOGOUT_JTI_SYSTEM: &str = "urn:phigate:logout-token-jti";
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const NETWORK_TYPE_IP: &str = "2";

/// A FHIR RESTful interaction (http://hl7.org/fhir/restful-interaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    SearchType,
    SearchSystem,
    Capabilities,
    Transaction,
    Operation,
}

impl Interaction {
    /// The restful-interaction code.
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Operation => "operation",
        }
    }

    /// AuditEvent.action: C, R, U, D or E (BALP records queries as E).
    pub fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Read
            | Interaction::Vread
            | Interaction::HistoryInstance
            | Interaction::HistoryType
            | Interaction::HistorySystem
            | Interaction::Capabilities => "R",
            Interaction::Update | Interaction::Patch => "U",
            Interaction::Delete => "D",
            Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::Transaction
            | Interaction::Operation => "E",
        }
    }

    /// The BALP profile name of a successful interaction of this kind.
    fn balp_profile(self) -> Option<&'static str> {
        match self {
            Interaction::Read | Interaction::Vread => Some("Read"),
            Interaction::SearchType | Interaction::SearchSystem => Some("Query"),
            Interaction::Create => Some("Create"),
            Interaction::Update | Interaction::Patch => Some("Update"),
            Interaction::Delete => Some("Delete"),
            _ => None,
        }
    }

    fn is_query(self) -> bool {
        matches!(self, Interaction::SearchType | Interaction::SearchSystem)
    }
}

/// What a request addressed: the interaction, resource type and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub interaction: Interaction,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
}

/// Derive the FHIR interaction from an HTTP method and request path. The
/// resource type is the first path segment starting with an upper-case
/// letter, so any base prefix (`/fhir`, `/r4`) is skipped. `None` when the
/// request is not a recognisable FHIR interaction.
pub fn classify(method: &str, path: &str) -> Option<Target> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let type_at = segments
        .iter()
        .position(|s| s.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
    let method = method.to_ascii_uppercase();
    let target = |interaction, rt: Option<&str>, id: Option<&str>, version: Option<&str>| Target {
        interaction,
        resource_type: rt.map(str::to_owned),
        id: id.map(str::to_owned),
        version: version.map(str::to_owned),
    };
    let Some(i) = type_at else {
        // System level: [base], [base]/metadata, [base]/_history, [base]/$op.
        let last = segments.last().copied().unwrap_or("");
        return match (method.as_str(), last) {
            (_, l) if l.starts_with('$') => Some(target(Interaction::Operation, None, None, None)),
            ("GET" | "HEAD", "metadata") => Some(target(Interaction::Capabilities, None, None, None)),
            ("GET" | "HEAD", "_history") => Some(target(Interaction::HistorySystem, None, None, None)),
            ("GET" | "HEAD", _) if query.is_some() => {
                Some(target(Interaction::SearchSystem, None, None, None))
            }
            ("POST", "_search") => Some(target(Interaction::SearchSystem, None, None, None)),
            ("POST", _) => Some(target(Interaction::Transaction, None, None, None)),
            _ => None,
        };
    };
    let rt = Some(segments[i]);
    let rest = &segments[i + 1..];
    if rest.iter().any(|s| s.starts_with('$')) {
        let id = rest.first().filter(|s| !s.starts_with('$')).copied();
        return Some(target(Interaction::Operation, rt, id, None));
    }
    let t = match (method.as_str(), rest) {
        ("GET" | "HEAD", []) => target(Interaction::SearchType, rt, None, None),
        ("GET" | "HEAD", ["_history"]) => target(Interaction::HistoryType, rt, None, None),
        ("GET" | "HEAD", [id]) => target(Interaction::Read, rt, Some(id), None),
        ("GET" | "HEAD", [id, "_history"]) => target(Interaction::HistoryInstance, rt, Some(id), None),
        ("GET" | "HEAD", [id, "_history", vid]) => target(Interaction::Vread, rt, Some(id), Some(vid)),
        ("POST", []) => target(Interaction::Create, rt, None, None),
        ("POST", ["_search"]) => target(Interaction::SearchType, rt, None, None),
        ("PUT", [id]) => target(Interaction::Update, rt, Some(id), None),
        ("PUT", []) => target(Interaction::Update, rt, None, None), // conditional update
        ("PATCH", [id]) => target(Interaction::Patch, rt, Some(id), None),
        ("PATCH", []) => target(Interaction::Patch, rt, None, None),
        ("DELETE", [id]) => target(Interaction::Delete, rt, Some(id), None),
        ("DELETE", []) => target(Interaction::Delete, rt, None, None), // conditional delete
        _ => return None,
    };
    Some(t)
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

fn str_field<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The IP address of `ip:port` / `[ip]:port` (the input when it has no port).
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    }
}

/// The BALP/FHIR R4 AuditEvent for one spool record (`access`, `logout` or
/// `recovery`); `Value::Null` for kinds that are not audit events
/// (`checkpoint`: a signature over the chain, checked by `phigate audit verify`).
pub fn to_audit_event(record: &Value) -> Value {
    match record.get("kind").and_then(Value::as_str) {
        Some("access") => access_event(record),
        Some("logout") => logout_event(record),
        Some("recovery") => recovery_event(record),
        _ => Value::Null,
    }
}

fn access_event(r: &Value) -> Value {
    let allow = str_field(r, "decision") == Some("allow");
    let method = str_field(r, "method").unwrap_or("");
    // The request target: the path and, when recorded, the query (BALP
    // records a search's query).
    let path = match (str_field(r, "path").unwrap_or(""), str_field(r, "query")) {
        (p, Some(q)) => std::borrow::Cow::Owned(format!("{p}?{q}")),
        (p, None) => std::borrow::Cow::Borrowed(p),
    };
    let path: &str = &path;
    let target = classify(method, path);
    let patient = str_field(r, "patient");
    let reason = str_field(r, "reason").unwrap_or("unknown");
    let status = r.get("status").and_then(Value::as_u64);

    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    let (outcome, outcome_desc) = if allow {
        match str_field(r, "outcome") {
            Some("client_error") => (
                "4",
                Some(format!(
                    "upstream answered {}",
                    r.get("upstream_status").unwrap_or(&Value::Null)
                )),
            ),
            Some("upstream_error") => (
                "8",
                Some(format!(
                    "upstream failed ({})",
                    r.get("upstream_status")
                        .filter(|s| !s.is_null())
                        .map(|s| format!("status {s}"))
                        .unwrap_or_else(|| "unreachable".into())
                )),
            ),
            Some("client_aborted") => (
                "4",
                Some(match r.get("upstream_status").filter(|s| !s.is_null()) {
                    Some(s) => format!("client went away before the response was complete (upstream answered {s})"),
                    None => "client went away before the upstream answered".into(),
                }),
            ),
            Some("aborted_shutdown") => (
                "8",
                Some("phigate shut down while the request was in flight".into()),
            ),
            Some("pending") => (
                "0",
                Some("authorized and forwarded; the outcome is recorded in a later AuditEvent of the same request".into()),
            ),
            _ => ("0", None),
        }
    } else {
        let code = if status.is_some_and(|s| s >= 500) {
            "8"
        } else {
            "4"
        };
        let desc = match status {
            Some(s) => format!("{reason} (HTTP {s})"),
            None => reason.to_owned(),
        };
        (code, Some(desc))
    };
    if allow {
        if let (Some(profile), "0") = (
            target.as_ref().and_then(|t| t.interaction.balp_profile()),
            outcome,
        ) {
            let prefix = if patient.is_some() { "Patient" } else { "" };
            ev.insert(
                "meta".into(),
                json!({ "profile": [format!("{BALP}{prefix}{profile}")] }),
            );
        }
        ev.insert(
            "type".into(),
            coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        );
        if let Some(t) = &target {
            let code = t.interaction.code();
            ev.insert("subtype".into(), json!([coding(RESTFUL_INTERACTION, code, code)]));
        }
        let action = target.as_ref().map(|t| t.interaction.action()).unwrap_or("E");
        ev.insert("action".into(), json!(action));
    } else {
        ev.insert(
            "meta".into(),
            json!({ "profile": [format!("{BALP}AuthZconsent")] }),
        );
        ev.insert("type".into(), coding(DCM, "110113", "Security Alert"));
        ev.insert(
            "subtype".into(),
            json!([coding(
                "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType",
                "AuthZ-Role",
                "Authorization Decision using only Roles"
            )]),
        );
        ev.insert("action".into(), json!("E"));
    }
    if let Some(ts) = str_field(r, "ts") {
        ev.insert("recorded".into(), json!(ts));
    }
    ev.insert("outcome".into(), json!(outcome));
    let mut desc = outcome_desc;
    if let Some(shadow) = r.get("shadow_decision").filter(|v| !v.is_null()) {
        let s = match shadow {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        desc = Some(match desc {
            Some(d) => format!("{d}; shadow decision: {s}"),
            None => format!("shadow decision: {s}"),
        });
    }
    if r.get("complete").and_then(Value::as_bool) == Some(false) {
        let delivered = r.get("bytes_to_client").and_then(Value::as_u64).unwrap_or(0);
        let note = format!("{reason}: response incomplete, {delivered} body bytes delivered");
        desc = Some(match desc {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
    }
    if let Some(first) = r.get("completes").and_then(Value::as_str) {
        // An outcome record: the request's first AuditEvent has this event id.
        let note = format!("outcome of event {first}");
        desc = Some(match desc {
            Some(d) => format!("{note}; {d}"),
            None => note,
        });
    }
    if let Some(d) = desc {
        ev.insert("outcomeDesc".into(), json!(d));
    }
    if r.get("break_glass").and_then(Value::as_bool) == Some(true) {
        let mut pou = json!({ "coding": [
            coding(ACT_REASON, "ETREAT", "Emergency Treatment"),
            coding(ACT_REASON, "BTG", "break the glass"),
        ]});
        if let Some(j) = str_field(r, "justification") {
            pou["text"] = json!(j);
        }
        ev.insert("purposeOfEvent".into(), json!([pou]));
    }

    // Agents: user (requestor), client application, gateway.
    let mut agents = Vec::new();
    let sub = str_field(r, "sub");
    if let Some(sub) = sub {
        let mut identifier = json!({ "value": sub });
        if let Some(iss) = str_field(r, "iss") {
            identifier["system"] = json!(iss);
        }
        agents.push(json!({
            "type": { "coding": [coding(PARTICIPATION_TYPE, "IRCP", "information recipient")] },
            "who": { "identifier": identifier },
            "requestor": true,
        }));
    }
    let mut client = json!({
        "type": { "coding": [coding(DCM, "110153", "Source Role ID")] },
        "requestor": sub.is_none(),
    });
    match str_field(r, "client_id") {
        Some(cid) => client["who"] = json!({ "identifier": { "system": CLIENT_ID_SYSTEM, "value": cid } }),
        None => client["who"] = json!({ "display": "unauthenticated client" }),
    }
    if let Some(addr) = str_field(r, "remote_addr") {
        client["network"] = json!({ "address": host_of(addr), "type": NETWORK_TYPE_IP });
    }
    agents.push(client);
    let mut gateway = json!({
        "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
        "who": { "identifier": { "value": "phigate" }, "display": "phigate" },
        "requestor": false,
    });
    if let Some(pv) = str_field(r, "policy_version") {
        gateway["policy"] = json!([format!("urn:phigate:policy:{pv}")]);
    }
    agents.push(gateway);
    ev.insert("agent".into(), json!(agents));
    ev.insert(
        "source".into(),
        source(if allow {
            ("4", "Application Server")
        } else {
            ("6", "Security Server")
        }),
    );

    // Entities: patient, data/query, request id, event id.
    let mut entities = Vec::new();
    if let Some(p) = patient {
        entities.push(json!({
            "what": { "reference": format!("Patient/{p}") },
            "type": coding(AUDIT_ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if let Some(t) = &target {
        if t.interaction.is_query() {
            let mut q = json!({
                "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "24", "Query"),
                "query": base64::engine::general_purpose::STANDARD.encode(path.as_bytes()),
                "description": path,
            });
            if let Some(rt) = &t.resource_type {
                q["what"] = json!({ "type": rt });
            }
            entities.push(q);
        } else if let Some(rt) = &t.resource_type {
            let what = match (&t.id, &t.version) {
                (Some(id), Some(v)) => json!({ "reference": format!("{rt}/{id}/_history/{v}") }),
                (Some(id), None) => json!({ "reference": format!("{rt}/{id}") }),
                _ => json!({ "type": rt }),
            };
            // The patient entity already covers a Patient read.
            if !(rt == "Patient" && patient.is_some() && t.id.as_deref() == patient) {
                entities.push(json!({
                    "what": what,
                    "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                    "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
                }));
            }
        }
    }
    if let Some(e) = request_id_entity(r) {
        entities.push(e);
    }
    entities.push(event_id_entity(r));
    ev.insert("entity".into(), json!(entities));
    Value::Object(ev)
}

/// The AuditEvent of a `logout` record (see the module documentation).
fn logout_event(r: &Value) -> Value {
    let allow = str_field(r, "decision") == Some("allow");
    let admin = str_field(r, "source") == Some("admin");
    let status = r.get("status").and_then(Value::as_u64);
    let outcome = match (allow, status) {
        (true, _) => "0",
        (false, Some(s)) if s >= 500 => "8",
        (false, _) => "4",
    };
    let mut desc = str_field(r, "reason").unwrap_or("unknown").to_owned();
    if let Some(s) = status {
        desc.push_str(&format!(" (HTTP {s})"));
    }
    if let Some(d) = str_field(r, "detail") {
        desc.push_str(&format!(": {d}"));
    }

    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    ev.insert("type".into(), coding(DCM, "110114", "User Authentication"));
    ev.insert("subtype".into(), json!([coding(DCM, "110123", "Logout")]));
    ev.insert("action".into(), json!("E"));
    if let Some(ts) = str_field(r, "ts") {
        ev.insert("recorded".into(), json!(ts));
    }
    ev.insert("outcome".into(), json!(outcome));
    ev.insert("outcomeDesc".into(), json!(desc));

    // Agents: the subject logged out, who asked for it, the gateway.
    let mut agents = Vec::new();
    let issuer = str_field(r, "issuer");
    if let Some(sub) = str_field(r, "sub") {
        let mut identifier = json!({ "value": sub });
        if let Some(iss) = issuer {
            identifier["system"] = json!(iss);
        }
        agents.push(json!({
            "type": { "coding": [coding(PARTICIPATION_TYPE, "SBJ", "subject")] },
            "who": { "identifier": identifier },
            "requestor": false,
        }));
    }
    let mut requestor = json!({
        "type": { "coding": [coding(DCM, "110153", "Source Role ID")] },
        "requestor": true,
    });
    requestor["who"] = match (admin, str_field(r, "actor"), issuer) {
        (true, Some(actor), _) => json!({ "display": actor }),
        (true, None, _) => json!({ "display": "administrator" }),
        (false, _, Some(iss)) => json!({ "identifier": { "value": iss }, "display": "identity provider" }),
        (false, _, None) => json!({ "display": "unidentified logout token sender" }),
    };
    if let Some(ip) = str_field(r, "client_ip") {
        requestor["network"] = json!({ "address": host_of(ip), "type": NETWORK_TYPE_IP });
    }
    agents.push(requestor);
    agents.push(json!({
        "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
        "who": { "identifier": { "value": "phigate" }, "display": "phigate" },
        "requestor": false,
    }));
    ev.insert("agent".into(), json!(agents));
    ev.insert(
        "source".into(),
        source(if allow {
            ("4", "Application Server")
        } else {
            ("6", "Security Server")
        }),
    );

    // Entities: the session, the logout token, request id, event id.
    let mut entities = Vec::new();
    for (field, system, description) in [
        ("sid", SID_SYSTEM, "OpenID Connect session id (sid)"),
        ("jti", LOGOUT_JTI_SYSTEM, "logout token id (jti)"),
    ] {
        if let Some(value) = str_field(r, field) {
            entities.push(json!({
                "what": { "identifier": { "system": system, "value": value } },
                "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "13", "Security Resource"),
                "description": description,
            }));
        }
    }
    if let Some(e) = request_id_entity(r) {
        entities.push(e);
    }
    entities.push(event_id_entity(r));
    ev.insert("entity".into(), json!(entities));
    Value::Object(ev)
}

/// BALP `XrequestId` entity of the record's `request_id`.
fn request_id_entity(r: &Value) -> Option<Value> {
    let rid = str_field(r, "request_id")?;
    Some(json!({
        "what": { "identifier": { "value": rid } },
        "type": coding("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId", "X-Request-Id"),
    }))
}

fn source((code, display): (&str, &str)) -> Value {
    json!({
        "observer": { "identifier": { "value": "phigate" }, "display": "phigate" },
        "type": [coding(SOURCE_TYPE, code, display)],
    })
}

fn event_id_entity(r: &Value) -> Value {
    let mut e = json!({
        "what": { "identifier": { "system": EVENT_ID_SYSTEM, "value": str_field(r, "event_id").unwrap_or("") } },
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "description": "phigate audit event_id (de-duplication key)",
    });
    if let Some(seq) = r.get("seq").and_then(Value::as_u64) {
        e["detail"] = json!([{ "type": "phigate-spool-seq", "valueString": seq.to_string() }]);
    }
    e
}

fn recovery_event(r: &Value) -> Value {
    let desc = format!(
        "audit spool recovery: segment {} truncated from byte {} to {} ({})",
        str_field(r, "segment").unwrap_or("?"),
        r.get("truncated_from").unwrap_or(&Value::Null),
        r.get("truncated_to").unwrap_or(&Value::Null),
        str_field(r, "reason").unwrap_or("unknown reason"),
    );
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "type": coding(DCM, "110113", "Security Alert"),
        "action": "E",
        "outcome": "4",
        "outcomeDesc": desc,
        "agent": [{
            "type": { "coding": [coding(DCM, "110150", "Application")] },
            "who": { "identifier": { "value": "phigate" }, "display": "phigate" },
            "requestor": false,
        }],
        "source": source(("4", "Application Server")),
        "entity": [event_id_entity(r)],
    });
    if let Some(ts) = str_field(r, "ts") {
        ev["recorded"] = json!(ts);
    }
    ev
}

/// A FHIR Bundle (type `collection`) of the AuditEvents of `records`
/// (records without an AuditEvent, i.e. checkpoints, are left out), for
/// `phigate audit export --format fhir`.
pub fn export_fhir<'a>(records: impl IntoIterator<Item = &'a Value>) -> Value {
    let entries: Vec<Value> = records
        .into_iter()
        .filter_map(|r| {
            let ev = to_audit_event(r);
            if ev.is_null() {
                return None;
            }
            let mut entry = json!({ "resource": ev });
            if let Some(id) = str_field(r, "event_id").filter(|id| is_uuid(id)) {
                entry["fullUrl"] = json!(format!("urn:uuid:{id}"));
            }
            Some(entry)
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "collection", "total": entries.len(), "entry": entries })
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Runtime configuration of a [`FhirSink`].
#[derive(Debug, Clone)]
pub struct FhirConfig {
    /// The FHIR base URL; AuditEvents go to `<base_url>/AuditEvent`.
    pub base_url: String,
    /// Per-request timeout (connect + response).
    pub timeout: Duration,
    /// Extra CA certificates (PEM) to trust, on top of the webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A file holding a bearer token, re-read for every batch (rotation).
    pub bearer_token_file: Option<std::path::PathBuf>,
}

/// POSTs one AuditEvent per record to `<base>/AuditEvent`.
///
/// A 2xx answer acknowledges the record. Anything else — including a 4xx
/// that will never succeed (a "poison" record, e.g. the server rejects the
/// profile) — is an error that is retried with back-off and turns the sink
/// unhealthy: records are never skipped, so an operator must fix the server
/// or the mapping (the error names the status and the server's answer).
pub struct FhirSink {
    config: FhirConfig,
    url: String,
    client: reqwest::Client,
}

impl FhirSink {
    /// Build the HTTP client: rustls, no redirects, timeouts.
    pub fn new(config: FhirConfig) -> Result<FhirSink, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("phigate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate found", ca.display()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let url = format!("{}/AuditEvent", config.base_url.trim_end_matches('/'));
        Ok(FhirSink { config, url, client })
    }

    fn token(&self) -> Result<Option<String>, SinkError> {
        match &self.config.bearer_token_file {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| SinkError::new(format!("{}: {e}", p.display()))),
        }
    }
}

#[async_trait]
impl Sink for FhirSink {
    fn kind(&self) -> &'static str {
        "fhir"
    }

    async fn send(&mut self, batch: &[SpoolRecord]) -> Result<(), SinkError> {
        let token = self.token()?;
        for (i, record) in batch.iter().enumerate() {
            let event = to_audit_event(&record.value);
            if event.is_null() {
                continue; // checkpoints have no AuditEvent (see to_audit_event)
            }
            let mut req = self
                .client
                .post(&self.url)
                .header("Content-Type", "application/fhir+json")
                .header("Accept", "application/fhir+json")
                .body(event.to_string());
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| SinkError::after(i, format!("POST {}: {e}", self.url)))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                let snippet: String = body.chars().take(300).collect();
                let kind = match status.as_u16() {
                    408 | 429 => "temporary",
                    400..=499 => {
                        "rejected (fix the server or the mapping; the record is retried, never skipped)"
                    }
                    _ => "server error",
                };
                return Err(SinkError::after(
                    i,
                    format!(
                        "POST {} for event {} answered {status}: {kind}: {snippet}",
                        self.url, record.event_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
