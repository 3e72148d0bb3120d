//! Issue 9 end to end: requests phigate authorised but the backend would
//! have executed differently. Each test drives the real gateway binary and
//! asserts what reached (or did not reach) a recording upstream and what the
//! audit spool says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use phigate_tests::http::{self, Response};
use phigate_tests::keys::claims;
use phigate_tests::{
    eventually, Gateway, GatewayOptions, JwksServer, RawMode, RawUpstream, TestEnv, TestKey,
};
use serde_json::{json, Value};

const POLICY: &str = r#"
version: 1
break_glass:
  scope: emergency.phi.read
  header: X-Break-Glass-Reason
routes:
  - { name: fhir-metadata, methods: [GET], path: /fhir/metadata, public: true }
  - { name: fhir, methods: ["*"], path: /fhir/**, fhir: { base: /fhir } }
  - { name: fhir-batch, methods: [GET, POST], path: /fhir, fhir: { base: /fhir } }
  - name: subscriptions
    methods: [GET]
    path: /ws/subscriptions
    scopes: { any_of: [user/Subscription.r] }
    upgrade: websocket
"#;

const WS: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Extra request headers of a case.
type Headers = &'static [(&'static str, &'static str)];

fn token(e: &TestEnv, scope: &str, extra: Value) -> String {
    let mut c = claims(scope);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    e.key.sign(&c)
}

/// `method target` with a bearer token, extra headers, a body and an
/// `X-Request-Id` to find its audit record by.
fn send(
    e: &TestEnv,
    id: &str,
    method: &str,
    target: &str,
    t: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut h = vec![("X-Request-Id", id)];
    h.extend_from_slice(headers);
    e.send(method, target, t, &h, body)
}

fn assert_deny(r: &Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], reason, "{}", r.text());
}

fn records_for(gw: &Gateway, id: &str) -> Vec<Value> {
    gw.audit_records()
        .into_iter()
        .filter(|r| r["request_id"] == id)
        .collect()
}

#[test]
fn upgrade_requests_are_refused_where_the_route_does_not_opt_in() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/Patient.rs", json!({}));
    let h2c: &[(&str, &str)] = &[
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    ];
    let cases: &[(&str, &str, Headers)] = &[
        ("ws", "/fhir/Patient/1", WS),
        ("h2c", "/fhir/Patient/1", h2c),
        ("conn", "/fhir/Patient/1", &[("Connection", "upgrade")]),
        ("upg", "/fhir/Patient/1", &[("Upgrade", "websocket")]),
        ("public", "/fhir/metadata", WS),
    ];
    for (id, target, headers) in cases {
        let r = send(&e, id, "GET", target, &t, headers, b"");
        assert_deny(&r, 400, "upgrade_refused");
        let rec = e.gw.record(id);
        assert_eq!(
            (rec["reason"].as_str(), rec["status"].as_u64()),
            (Some("upgrade_refused"), Some(400))
        );
    }
    assert!(
        e.upstream.requests().is_empty(),
        "no upgrade request reached the upstream"
    );
    // The same GET without the upgrade is fine.
    let r = send(&e, "plain", "GET", "/fhir/Patient/1", &t, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(e.upstream.requests().len(), 1);
}

/// A gateway in front of a hand-written upstream that speaks WebSocket.
fn raw_env(mode: RawMode) -> (TestKey, JwksServer, RawUpstream, Gateway) {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(TestKey::jwks(&[&key]));
    let upstream = RawUpstream::start(mode);
    let gw = Gateway::start(GatewayOptions::new(jwks.uri(), upstream.addr, POLICY));
    gw.wait_ready();
    (key, jwks, upstream, gw)
}

fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn an_opted_in_websocket_tunnel_is_audited_at_open_and_close() {
    let (key, _jwks, upstream, gw) = raw_env(RawMode::WebSocketEcho);
    let t = key.sign(&claims("user/Subscription.r"));
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "GET /ws/subscriptions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nX-Request-Id: tunnel-1\r\n",
        gw.proxy
    );
    for (k, v) in WS {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The open record is committed before the 101 is released.
    let open = records_for(&gw, "tunnel-1");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["status"], 101);
    assert_eq!(open[0]["tunnel"]["phase"], "open");
    assert_eq!(open[0]["reason"], "allowed");
    s.write_all(b"hello tunnel").unwrap();
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello tunnel");
    drop(s);
    let both = eventually(Duration::from_secs(10), || {
        let r = records_for(&gw, "tunnel-1");
        (r.len() == 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("no close record:\n{}", gw.audit_text()));
    let close = &both[1]["tunnel"];
    assert_eq!(close["phase"], "close");
    assert_eq!(close["bytes_from_client"], 12);
    assert_eq!(close["bytes_to_client"], 12);
    assert!(close["duration_ms"].as_u64().is_some());
    assert_eq!(upstream.tunnelled(), b"hello tunnel");
    assert_eq!(upstream.heads().len(), 1);
    assert!(upstream.heads()[0]
        .to_ascii_lowercase()
        .contains("upgrade: websocket"));
    let m = eventually(Duration::from_secs(5), || {
        let m = gw.metrics();
        (m.value("phigate_tunnels_open", &[]) == 0.0).then_some(m)
    });
    assert!(m.is_some(), "tunnel gauge back to 0");
    // Without a token there is no tunnel and nothing reaches the backend.
    let r = http::request(gw.proxy, "GET", "/ws/subscriptions", WS, b"").unwrap();
    assert_deny(&r, 401, "missing_token");
    assert_eq!(upstream.heads().len(), 1);
}

#[test]
fn a_101_from_the_backend_to_a_plain_request_never_opens_a_tunnel() {
    let (key, _jwks, upstream, gw) = raw_env(RawMode::Always101);
    let t = key.sign(&claims("user/Patient.rs"));
    let r = http::request(
        gw.proxy,
        "GET",
        "/fhir/Patient/1",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Request-Id", "bogus-101"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let rec = gw.record("bogus-101");
    assert_eq!(rec["status"], 502);
    assert!(rec.get("tunnel").is_none(), "{rec}");
    assert!(upstream.tunnelled().is_empty());
}

#[test]
fn method_overrides_are_refused_and_never_forwarded() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/*.cruds", json!({}));
    let cases: &[(&str, &str, &str, Headers, &[u8])] = &[
        (
            "h1",
            "GET",
            "/fhir/Patient/1",
            &[("X-HTTP-Method-Override", "DELETE")],
            b"",
        ),
        ("h2", "GET", "/fhir/Patient/1", &[("X-HTTP-Method", "PUT")], b""),
        (
            "h3",
            "POST",
            "/fhir/Observation",
            &[("X-Method-Override", "DELETE")],
            b"{}",
        ),
        ("q", "GET", "/fhir/Patient/1?_method=DELETE", &[], b""),
        (
            "form",
            "POST",
            "/fhir/Observation/_search",
            &[FORM],
            b"patient=1&_method=DELETE",
        ),
    ];
    for (id, method, target, headers, body) in cases {
        let r = send(&e, id, method, target, &t, headers, body);
        assert_deny(&r, 400, "method_override");
        assert_eq!(e.gw.record(id)["reason"], "method_override");
    }
    // Read-only break-glass cannot be turned into a write either.
    let eg = token(&e, "emergency.phi.read", json!({}));
    let r = send(
        &e,
        "bg",
        "GET",
        "/fhir/Patient/1",
        &eg,
        &[
            ("X-Break-Glass-Reason", "unconscious patient in ED"),
            ("X-HTTP-Method-Override", "DELETE"),
        ],
        b"",
    );
    assert_deny(&r, 400, "method_override");
    assert!(e.upstream.requests().is_empty(), "{:?}", e.upstream.requests());
}

#[test]
fn hop_by_hop_headers_are_stripped_before_forwarding() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/Patient.rs", json!({}));
    let r = send(
        &e,
        "hop",
        "GET",
        "/fhir/Patient/1",
        &t,
        &[
            ("Connection", "X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-Checksum"),
            ("X-Kept", "yes"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &e.upstream.requests()[0];
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[test]
fn requests_the_http_layer_refuses_are_audited_as_bad_request() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/*.cruds", json!({}));
    let auth = format!("Authorization: Bearer {t}\r\n");
    let cases: Vec<(&str, String)> = vec![
        ("nohost", format!("GET /fhir/Patient/1 HTTP/1.1\r\n{auth}X-Request-Id: nohost\r\n\r\n")),
        (
            "dupcl",
            format!("POST /fhir HTTP/1.1\r\nHost: a\r\n{auth}X-Request-Id: dupcl\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}"),
        ),
        (
            "tecl",
            format!("POST /fhir HTTP/1.1\r\nHost: a\r\n{auth}X-Request-Id: tecl\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "connect",
            format!("CONNECT fhir.example.org:443 HTTP/1.1\r\nHost: fhir.example.org:443\r\n{auth}X-Request-Id: connect\r\n\r\n"),
        ),
        (
            "badheader",
            "GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: badheader\r\nBad Header: x\r\n\r\n".to_string(),
        ),
        (
            "twohosts",
            format!("GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}X-Request-Id: twohosts\r\n\r\n"),
        ),
    ];
    for (id, raw) in &cases {
        let r = http::raw(e.gw.proxy, raw.as_bytes(), Duration::from_secs(10)).unwrap();
        assert_deny(&r, 400, "bad_request");
        assert_eq!(r.json()["request_id"], *id);
        let rec = e.gw.record(id);
        assert_eq!(
            (rec["reason"].as_str(), rec["status"].as_u64()),
            (Some("bad_request"), Some(400)),
            "{id}"
        );
        assert_eq!(rec["decision"], "deny");
    }
    // Not HTTP at all (a TLS ClientHello on the plaintext port): still one record.
    let before = e.gw.audit_records().len();
    let r = http::raw(
        e.gw.proxy,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_deny(&r, 400, "bad_request");
    let all = e.gw.wait_audit(before + 1);
    assert_eq!(all.last().unwrap()["reason"], "bad_request");
    assert!(e.upstream.requests().is_empty(), "{:?}", e.upstream.requests());
    let m = e.gw.metrics();
    assert_eq!(
        m.value(
            "phigate_requests_total",
            &[("decision", "deny"), ("reason", "bad_request")]
        ),
        (cases.len() + 1) as f64
    );
}

#[test]
fn expect_100_continue_is_answered_before_an_inspected_body_is_read() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/Patient.r", json!({}));
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/1"}}
    ]})
    .to_string();
    let mut s = TcpStream::connect(e.gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /fhir HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Type: application/fhir+json\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bundle.len()
    )
    .unwrap();
    let interim = read_head(&mut s);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    s.write_all(bundle.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let r = http::parse(&rest).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = &e.upstream.requests()[0];
    assert_eq!(
        &seen.body[..],
        bundle.as_bytes(),
        "the inspected body is forwarded intact"
    );
    assert!(seen.header("expect").is_none(), "Expect was answered by phigate");
}

#[test]
fn patient_searches_must_use_the_searched_types_compartment_parameters() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "patient/*.rs", json!({"patient": "123"}));
    for (id, target) in [
        ("p1", "/fhir/Patient?patient=123"),
        ("p2", "/fhir/Patient?subject=Patient/123"),
        ("g", "/fhir/Group?patient=123"),
        ("b", "/fhir/Bundle?patient=123"),
        ("bare", "/fhir/Observation?subject=123"),
    ] {
        let r = send(&e, id, "GET", target, &t, &[], b"");
        assert_deny(&r, 403, "outside_patient_compartment");
    }
    assert!(e.upstream.requests().is_empty());
    let r = send(&e, "ok", "GET", "/fhir/Observation?patient=123", &t, &[], b"");
    assert_eq!(r.status, 200);
    let r = send(
        &e,
        "ok2",
        "GET",
        "/fhir/Observation?subject=Patient/123",
        &t,
        &[("Prefer", "return=minimal, handling=lenient")],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = e.upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("prefer"), Some("handling=strict"));
    assert_eq!(seen[1].header("prefer"), Some("return=minimal, handling=strict"));
    assert_eq!(e.gw.record("ok")["patient"], "123");
}

#[test]
fn post_search_body_parameters_are_decided_together_with_the_query() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "patient/Observation.rs", json!({"patient": "123"}));
    let cases: &[(&str, Headers, &[u8], u16, &str)] = &[
        (
            "other",
            &[FORM],
            b"patient=999",
            403,
            "outside_patient_compartment",
        ),
        (
            "has",
            &[FORM],
            b"_has:Observation:patient:code=x",
            403,
            "outside_patient_compartment",
        ),
        (
            "chain",
            &[FORM],
            b"subject.name=smith",
            403,
            "outside_patient_compartment",
        ),
        (
            "include",
            &[FORM],
            b"_include=Observation:performer",
            403,
            "insufficient_scope",
        ),
        (
            "text",
            &[("Content-Type", "text/plain")],
            b"patient=999",
            415,
            "unsupported_media_type",
        ),
    ];
    for (id, headers, body, status, reason) in cases {
        let r = send(
            &e,
            id,
            "POST",
            "/fhir/Observation/_search?patient=123",
            &t,
            headers,
            body,
        );
        assert_deny(&r, *status, reason);
    }
    assert!(e.upstream.requests().is_empty(), "{:?}", e.upstream.requests());
    let r = send(
        &e,
        "ok",
        "POST",
        "/fhir/Observation/_search",
        &t,
        &[FORM],
        b"patient=123&code=x",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = &e.upstream.requests()[0];
    assert_eq!(&seen.body[..], b"patient=123&code=x");
    assert_eq!(seen.header("prefer"), Some("handling=strict"));
}

#[test]
fn includes_need_a_grant_for_every_type_they_return() {
    let e = TestEnv::start(POLICY);
    let obs = token(&e, "user/Observation.rs", json!({}));
    for (id, q) in [
        ("subject", "_include=Observation:subject"),
        ("prov", "_revinclude=Provenance:target"),
        ("all", "_include=*"),
        ("iter", "_include:iterate=Observation:patient"),
    ] {
        let r = send(&e, id, "GET", &format!("/fhir/Observation?{q}"), &obs, &[], b"");
        assert_deny(&r, 403, "insufficient_scope");
    }
    let r = send(
        &e,
        "custom",
        "GET",
        "/fhir/Observation?_include=Observation:not-a-param",
        &obs,
        &[],
        b"",
    );
    assert_deny(&r, 403, "unmapped_interaction");
    assert!(e.upstream.requests().is_empty());
    let both = token(&e, "user/Observation.rs user/Patient.r", json!({}));
    let r = send(
        &e,
        "typed",
        "GET",
        "/fhir/Observation?_include=Observation:subject:Patient",
        &both,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        e.upstream.requests()[0].target,
        "/fhir/Observation?_include=Observation:subject:Patient"
    );
    // A patient app gets its own Patient through an include, nothing else.
    let pt = token(
        &e,
        "patient/Observation.rs patient/Patient.r",
        json!({"patient": "123"}),
    );
    let r = send(
        &e,
        "pt-own",
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:patient",
        &pt,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = send(
        &e,
        "pt-perf",
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:performer",
        &pt,
        &[],
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(e.upstream.requests().len(), 2);
}

#[test]
fn conditional_operations_authorise_their_criteria_as_a_search() {
    let e = TestEnv::start(POLICY);
    let ine = ("If-None-Exist", "identifier=http://acme.example|17");
    let create_only = token(&e, "user/Observation.c", json!({}));
    let r = send(&e, "c", "POST", "/fhir/Observation", &create_only, &[ine], b"{}");
    assert_deny(&r, 403, "insufficient_scope");
    let delete_only = token(&e, "user/Observation.d", json!({}));
    let r = send(
        &e,
        "d",
        "DELETE",
        "/fhir/Observation?identifier=x",
        &delete_only,
        &[],
        b"",
    );
    assert_deny(&r, 403, "insufficient_scope");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation"},
        "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"}
    }]})
    .to_string();
    let r = send(
        &e,
        "bundle",
        "POST",
        "/fhir",
        &create_only,
        &[],
        bundle.as_bytes(),
    );
    assert_deny(&r, 403, "insufficient_scope");
    assert!(e.upstream.requests().is_empty());

    let cs = token(&e, "user/Observation.cs", json!({}));
    let r = send(&e, "cs", "POST", "/fhir/Observation", &cs, &[ine], b"{}");
    assert_eq!(r.status, 201);
    let ds = token(&e, "user/Observation.ds", json!({}));
    let r = send(
        &e,
        "ds",
        "DELETE",
        "/fhir/Observation?identifier=x",
        &ds,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = e.upstream.requests();
    assert_eq!(
        seen[0].header("if-none-exist"),
        Some("identifier=http://acme.example|17")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].target.as_str()),
        ("DELETE", "/fhir/Observation?identifier=x")
    );
}

#[test]
fn bundles_with_duplicate_json_members_are_refused() {
    let e = TestEnv::start(POLICY);
    let t = token(&e, "user/Patient.r", json!({}));
    let body = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1","url":"Patient/2"}}]}"#;
    let r = send(&e, "dup", "POST", "/fhir", &t, &[], body.as_bytes());
    assert_deny(&r, 400, "bad_request_body");
    let body = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}],"entry":[{"request":{"method":"DELETE","url":"Patient/1"}}]}"#;
    let r = send(&e, "dup2", "POST", "/fhir", &t, &[], body.as_bytes());
    assert_deny(&r, 400, "bad_request_body");
    assert!(e.upstream.requests().is_empty());
    assert_eq!(e.gw.record("dup")["reason"], "bad_request_body");
}

#[test]
fn a_slow_request_head_gets_408_and_is_audited() {
    let e = TestEnv::start_with(POLICY, "", "limits:\n  request_header_timeout: 500ms\n");
    // An idle keep-alive connection is not cut by the head deadline ...
    let mut idle = TcpStream::connect(e.gw.proxy).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    idle.write_all(
        b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: idle\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = idle.read_to_end(&mut raw);
    assert_deny(&http::parse(&raw).unwrap(), 401, "missing_token");
    // ... a head that trickles in is.
    let mut slow = TcpStream::connect(e.gw.proxy).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: slow-head\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    let r = http::parse(&raw).unwrap();
    assert_deny(&r, 408, "request_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "cut by the deadline, not the read timeout"
    );
    let rec = e.gw.record("slow-head");
    assert_eq!(
        (rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("request_timeout"), Some(408))
    );
    assert_eq!(rec["path"], "/fhir/Patient/1");
    assert_eq!(rec["method"], "GET");
}

#[test]
fn slow_request_bodies_hold_no_audit_slot_and_time_out() {
    // Four audit slots for everyone: before this change, four slow bodies
    // held them all and every other request got 503 audit_unavailable.
    let e = TestEnv::start_full(POLICY, "", "limits:\n  request_body_timeout: 2s\n", "", 4);
    let t = token(&e, "user/Patient.r", json!({}));
    let mut slow = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(e.gw.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        write!(
            s,
            "POST /fhir HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nX-Request-Id: slow-{i}\r\nContent-Type: application/fhir+json\r\nContent-Length: 200\r\n\r\n{{\"resourceType\":"
        )
        .unwrap();
        slow.push(s);
        // Staggered, so their deadlines (and 408 records) do not all fall
        // into the same millisecond of a four-slot queue.
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..10 {
        let r = send(&e, &format!("fast-{i}"), "GET", "/fhir/Patient/1", &t, &[], b"");
        assert_eq!(r.status, 200, "request {i} while bodies trickle: {}", r.text());
    }
    for (i, mut s) in slow.into_iter().enumerate() {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let r = http::parse(&raw).unwrap();
        assert_deny(&r, 408, "request_timeout");
        assert_eq!(e.gw.record(&format!("slow-{i}"))["reason"], "request_timeout");
    }
    assert_eq!(
        e.upstream.requests().len(),
        10,
        "no partial bundle reached the upstream"
    );
}

#[test]
fn one_client_address_cannot_hold_every_in_flight_place() {
    let e = TestEnv::start_with(POLICY, "", "limits:\n  max_in_flight_per_client: 2\n");
    let t = token(&e, "user/Patient.r", json!({}));
    let auth = format!("Bearer {t}");
    let slow_req = |id: String| {
        let proxy = e.gw.proxy;
        let auth = auth.clone();
        std::thread::spawn(move || {
            http::request(
                proxy,
                "GET",
                "/fhir/Patient/1",
                &[
                    ("Authorization", &auth),
                    ("X-Request-Id", &id),
                    ("X-Test-Delay-Ms", "2000"),
                ],
                b"",
            )
            .unwrap()
        })
    };
    let held: Vec<_> = (0..2).map(|i| slow_req(format!("held-{i}"))).collect();
    std::thread::sleep(Duration::from_millis(500));
    let r = send(&e, "third", "GET", "/fhir/Patient/1", &t, &[], b"");
    assert_deny(&r, 429, "concurrency_limited");
    assert_eq!(e.gw.record("third")["reason"], "concurrency_limited");
    // Another client address is not affected.
    let other = http::request_from(
        "127.0.0.2".parse().unwrap(),
        e.gw.proxy,
        "GET",
        "/fhir/Patient/1",
        &[("Authorization", &auth), ("X-Request-Id", "other-client")],
    )
    .unwrap();
    assert_eq!(other.status, 200, "{}", other.text());
    for h in held {
        assert_eq!(h.join().unwrap().status, 200);
    }
}

#[test]
fn audit_records_bound_every_client_controlled_field() {
    let e = TestEnv::start(POLICY);
    let before = e.gw.metrics().value("phigate_audit_bytes_total", &[]);
    // Just under the 64 KiB the HTTP layer accepts for a target.
    let long_path = format!("/fhir/Patient/{}", "a".repeat(60 * 1024));
    let ua = "x".repeat(1000);
    let r = http::request(
        e.gw.proxy,
        "GET",
        &long_path,
        &[("X-Request-Id", "huge"), ("User-Agent", &ua)],
        b"",
    )
    .unwrap();
    assert_deny(&r, 401, "missing_token");
    let rec = e.gw.record("huge");
    let path = rec["path"].as_str().unwrap();
    assert!(
        path.len() <= 2048 && long_path.starts_with(path),
        "{}",
        path.len()
    );
    assert_eq!(rec["truncated"]["path"]["length"], long_path.len());
    assert_eq!(rec["truncated"]["path"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(rec["user_agent"].as_str().unwrap().len(), 256);
    assert_eq!(rec["truncated"]["user_agent"]["length"], 1000);
    let line =
        e.gw.audit_text()
            .lines()
            .find(|l| l.contains("\"huge\""))
            .unwrap()
            .len();
    assert!(line < 4096, "one record is {line} bytes");
    let grown = eventually(Duration::from_secs(5), || {
        let now = e.gw.metrics().value("phigate_audit_bytes_total", &[]);
        (now > before).then_some(now - before)
    })
    .unwrap();
    assert!(grown < 4096.0, "phigate_audit_bytes_total grew by {grown}");
    // Longer than the HTTP layer accepts: refused as bad_request, bounded the same way.
    let too_long = format!("/fhir/Patient/{}", "b".repeat(70 * 1024));
    let r = http::request(e.gw.proxy, "GET", &too_long, &[("X-Request-Id", "too-long")], b"").unwrap();
    assert_deny(&r, 400, "bad_request");
    let rec = e.gw.record("too-long");
    assert!(rec["path"].as_str().unwrap().len() <= 2048);
    assert_eq!(rec["truncated"]["path"]["length"], too_long.len());
    assert_eq!(rec["truncated"]["path"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn break_glass_justifications_without_information_are_rejected() {
    let e = TestEnv::start(POLICY);
    let eg = token(&e, "emergency.phi.read", json!({}));
    for (id, j) in [
        (
            "zw",
            "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}",
        ),
        ("short", "help"),
        ("bidi", "emergency \u{202E}gnirotinom"),
    ] {
        let r = send(
            &e,
            id,
            "GET",
            "/fhir/Patient/9",
            &eg,
            &[("X-Break-Glass-Reason", j)],
            b"",
        );
        assert_deny(&r, 403, "break_glass_rejected");
        assert_eq!(e.gw.record(id)["break_glass"], Value::Null);
    }
    assert!(e.upstream.requests().is_empty());
    let r = send(
        &e,
        "ok",
        "GET",
        "/fhir/Patient/9",
        &eg,
        &[("X-Break-Glass-Reason", "Unconscious patient, ED bay 4")],
        b"",
    );
    assert_eq!(r.status, 200);
    let rec = e.gw.record("ok");
    assert_eq!(
        (rec["reason"].as_str(), rec["break_glass"].as_bool()),
        (Some("break_glass"), Some(true))
    );
    assert_eq!(rec["justification"], "Unconscious patient, ED bay 4");
}

/// Issue 10: HAPI-style paging links (`GET [base]?_getpages=…`) were denied
/// even after an allowed search. They are followed for the caller whose
/// search produced them, and for nobody else.
#[test]
fn paging_links_of_an_allowed_search_are_followed_by_the_same_caller_only() {
    let e = TestEnv::start_with(POLICY, "", "paging:\n  ttl: 2s\n");
    let next =
        "http://backend.internal:8080/fhir?_getpages=a1b2&_getpagesoffset=20&_count=20&_bundletype=searchset";
    let page = "/fhir?_getpages=a1b2&_getpagesoffset=20&_count=20&_bundletype=searchset";
    let alice = token(
        &e,
        "patient/Observation.rs",
        json!({"patient": "123", "sub": "alice"}),
    );
    // Before any search: refused.
    let r = send(&e, "early", "GET", page, &alice, &[], b"");
    assert_deny(&r, 403, "unmapped_interaction");
    let r = send(
        &e,
        "search",
        "GET",
        "/fhir/Observation?patient=123&_count=20",
        &alice,
        &[("X-Test-Next-Link", next), ("Accept-Encoding", "gzip")],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = e.upstream.requests();
    assert!(
        seen[0].header("accept-encoding").is_none(),
        "asked for an uncompressed result"
    );
    // The same caller follows the link: decided as the search, forwarded as the page.
    let r = send(&e, "page2", "GET", page, &alice, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(e.upstream.requests()[1].target, page);
    let rec = e.gw.record("page2");
    assert_eq!(
        (rec["reason"].as_str(), rec["patient"].as_str()),
        (Some("allowed"), Some("123"))
    );
    // Another subject, another client, or another page id: refused, not forwarded.
    let bob = token(
        &e,
        "patient/Observation.rs",
        json!({"patient": "123", "sub": "bob"}),
    );
    let r = send(&e, "bob", "GET", page, &bob, &[], b"");
    assert_deny(&r, 403, "unmapped_interaction");
    let other_app = token(
        &e,
        "patient/Observation.rs",
        json!({"patient": "123", "sub": "alice", "client_id": "other-app"}),
    );
    let r = send(&e, "other-app", "GET", page, &other_app, &[], b"");
    assert_deny(&r, 403, "unmapped_interaction");
    let r = send(
        &e,
        "forged",
        "GET",
        "/fhir?_getpages=zzz&_getpagesoffset=20",
        &alice,
        &[],
        b"",
    );
    assert_deny(&r, 403, "unmapped_interaction");
    // A token that lost the search scope cannot page on either.
    let narrowed = token(&e, "patient/Patient.r", json!({"patient": "123", "sub": "alice"}));
    let r = send(&e, "narrowed", "GET", page, &narrowed, &[], b"");
    assert_deny(&r, 403, "insufficient_scope");
    assert_eq!(e.upstream.requests().len(), 2);
    // Links expire.
    std::thread::sleep(Duration::from_millis(2200));
    let r = send(&e, "late", "GET", page, &alice, &[], b"");
    assert_deny(&r, 403, "unmapped_interaction");
}
