//! Token checks beyond the signature, end to end: the real binary on real
//! sockets, a recording upstream, and what reached it.
//!
//! - certificate-bound tokens (RFC 8705, `cnf.x5t#S256`) on an mTLS
//!   listener and a plaintext one;
//! - `max_token_lifetime` on the issuer (`exp - iat`, `iat` required);
//! - RFC 7662 introspection of opaque tokens against a real HTTP
//!   introspection endpoint started here: request shape, caching, inactive
//!   and unavailable answers, JWTs still verified locally.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use phigate_tests::keys::{claims, now};
use phigate_tests::tls::{pem_to_der, x5t_s256, TestPki, TlsClient};
use phigate_tests::{
    eventually, free_addr, http, Gateway, GatewayOptions, JwksServer, Network, RecordedRequest, TestEnv,
    TestKey, Upstream, TEST_POLICY,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Certificate-bound tokens (RFC 8705)
// ---------------------------------------------------------------------------

/// A gateway with a TLS listener that asks for client certificates
/// (optional, verified against a client CA) and a plaintext listener.
struct MtlsEnv {
    key: TestKey,
    _jwks: JwksServer,
    upstream: Upstream,
    gw: Gateway,
    tls: SocketAddr,
    plain: SocketAddr,
    server_pki: TestPki,
    clients: TestPki,
    _dir: tempfile::TempDir,
}

fn yaml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

impl MtlsEnv {
    fn start() -> MtlsEnv {
        let dir = tempfile::tempdir().unwrap();
        let server_pki = TestPki::generate();
        let clients = TestPki::new("client CA");
        let (cert, key) = server_pki.server(&["localhost", "127.0.0.1"]);
        let cert = TestPki::write(dir.path(), "server.pem", &cert);
        let key_path = TestPki::write(dir.path(), "server.key", &key);
        let client_ca = TestPki::write(dir.path(), "clients.pem", clients.ca_pem());
        let upstream = Upstream::start();
        let (tls, plain) = (free_addr(), free_addr());
        let yaml = format!(
            "listeners:\n  - address: {tls}\n    tls: {{ cert: {c}, key: {k}, client_ca: {ca}, client_auth: optional }}\n  - address: {plain}\nupstream:\n  address: {up}\n",
            c = yaml_path(&cert),
            k = yaml_path(&key_path),
            ca = yaml_path(&client_ca),
            up = upstream.addr,
        );
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(TestKey::jwks(&[&key]));
        let gw = Gateway::start(GatewayOptions {
            network: Some(Network { proxy: tls, yaml }),
            ..GatewayOptions::new(jwks.uri(), upstream.addr, TEST_POLICY)
        });
        gw.wait_ready();
        MtlsEnv {
            key,
            _jwks: jwks,
            upstream,
            gw,
            tls,
            plain,
            server_pki,
            clients,
            _dir: dir,
        }
    }

    /// `GET target` over TLS with `token`, presenting `client` (cert, key) if given.
    fn tls_get(
        &self,
        target: &str,
        token: &str,
        id: &str,
        client: Option<&(String, String)>,
    ) -> http::Response {
        let auth = format!("Bearer {token}");
        let mut c = TlsClient::new(self.tls, "localhost", self.server_pki.ca_pem());
        if let Some((cert, key)) = client {
            c = c.with_client_cert(cert, key);
        }
        c.request(
            "GET",
            target,
            &[("Authorization", auth.as_str()), ("x-request-id", id)],
            b"",
        )
        .unwrap()
        .response
    }

    fn plain_get(&self, target: &str, token: &str, id: &str) -> http::Response {
        let auth = format!("Bearer {token}");
        http::request(
            self.plain,
            "GET",
            target,
            &[("Authorization", auth.as_str()), ("x-request-id", id)],
            b"",
        )
        .unwrap()
    }

    fn forwarded(&self, target: &str) -> bool {
        self.upstream.requests().iter().any(|r| r.target == target)
    }
}

/// A token for `user/Patient.rs` bound to the certificate with this thumbprint.
fn bound_claims(x5t: &str) -> Value {
    let mut c = claims("user/Patient.rs");
    c["cnf"] = json!({ "x5t#S256": x5t });
    c
}

#[test]
fn certificate_bound_token_is_forwarded_only_with_its_own_client_certificate() {
    let e = MtlsEnv::start();
    let alice = e.clients.client("app-alice");
    let mallory = e.clients.client("app-mallory"); // same trusted CA, another certificate
    let thumbprint = x5t_s256(&pem_to_der(&alice.0));
    let bound = e.key.sign(&bound_claims(&thumbprint));

    // Its own certificate: allowed and forwarded.
    let r = e.tls_get("/fhir/Patient/own-cert", &bound, "bind-own", Some(&alice));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(e.forwarded("/fhir/Patient/own-cert"));
    let rec = e.gw.record("bind-own");
    assert_eq!(rec["reason"], "allowed");
    assert_eq!(rec["client_cert"]["sha256"], thumbprint.as_str());

    // Another certificate of the same CA: refused, never forwarded.
    let r = e.tls_get("/fhir/Patient/other-cert", &bound, "bind-other", Some(&mallory));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "certificate_binding_mismatch");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\"")
            && challenge.contains("certificate binding mismatch"),
        "{challenge}"
    );
    assert!(!e.forwarded("/fhir/Patient/other-cert"));

    // TLS without a client certificate, and the plaintext listener: refused.
    let r = e.tls_get("/fhir/Patient/tls-anon", &bound, "bind-tls-anon", None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "certificate_binding_mismatch");
    let r = e.plain_get("/fhir/Patient/plain", &bound, "bind-plain");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "certificate_binding_mismatch");
    assert!(!e.forwarded("/fhir/Patient/tls-anon"));
    assert!(!e.forwarded("/fhir/Patient/plain"));

    // The audit records carry the reason (and who presented the token).
    for id in ["bind-other", "bind-tls-anon", "bind-plain"] {
        let rec = e.gw.record(id);
        assert_eq!(rec["reason"], "certificate_binding_mismatch", "{rec}");
        assert_eq!(rec["decision"], "deny", "{rec}");
        assert_eq!(rec["status"], 401, "{rec}");
        assert_eq!(rec["sub"], "user-42", "{rec}");
    }
    assert_eq!(
        e.upstream.requests().len(),
        1,
        "only the bound request with its certificate"
    );
}

#[test]
fn unbound_token_is_accepted_with_any_client_certificate_or_none() {
    let e = MtlsEnv::start();
    let token = e.key.sign(&claims("user/Patient.rs"));
    let a = e.clients.client("app-a");
    let b = e.clients.client("app-b");
    for (target, client) in [
        ("/fhir/Patient/unbound-a", Some(&a)),
        ("/fhir/Patient/unbound-b", Some(&b)),
        ("/fhir/Patient/unbound-anon", None),
    ] {
        let r = e.tls_get(target, &token, target, client);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
    }
    let r = e.plain_get("/fhir/Patient/unbound-plain", &token, "unbound-plain");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<String> = e.upstream.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        seen,
        [
            "/fhir/Patient/unbound-a",
            "/fhir/Patient/unbound-b",
            "/fhir/Patient/unbound-anon",
            "/fhir/Patient/unbound-plain"
        ]
    );
}

/// A `cnf` that is not a string thumbprint binds to nothing: refused.
#[test]
fn malformed_certificate_binding_is_refused_even_with_a_certificate() {
    let e = MtlsEnv::start();
    let a = e.clients.client("app-a");
    let mut c = claims("user/Patient.rs");
    c["cnf"] = json!({ "x5t#S256": 42 });
    let r = e.tls_get("/fhir/Patient/odd-cnf", &e.key.sign(&c), "odd-cnf", Some(&a));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "certificate_binding_mismatch");
    assert!(e.upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------
// max_token_lifetime
// ---------------------------------------------------------------------------

#[test]
fn max_token_lifetime_refuses_long_lived_tokens_and_tokens_without_iat() {
    let env = TestEnv::start_with(TEST_POLICY, "    max_token_lifetime: 1h\n", "");
    let t = now();
    let with = |iat: Option<i64>, exp: i64| {
        let mut c = claims("user/Patient.rs");
        match iat {
            Some(iat) => c["iat"] = json!(iat),
            None => {
                c.as_object_mut().unwrap().remove("iat");
            }
        }
        c["exp"] = json!(exp);
        env.key.sign(&c)
    };
    let cases = [
        ("life-2h", with(Some(t), t + 7200), 401, "token_lifetime_exceeded"),
        ("life-30m", with(Some(t), t + 1800), 200, "allowed"),
        // Issued an hour ago with an hour to live: exactly the cap, still valid.
        ("life-1h", with(Some(t - 1800), t + 1800), 200, "allowed"),
        ("life-no-iat", with(None, t + 300), 401, "token_lifetime_exceeded"),
    ];
    for (id, token, status, reason) in &cases {
        let target = format!("/fhir/Patient/{id}");
        let r = env.send("GET", &target, token, &[("x-request-id", id)], b"");
        assert_eq!(r.status, *status, "{id}: {}", r.text());
        if *status == 401 {
            assert_eq!(r.json()["error"], *reason, "{id}");
        }
        let rec = env.gw.record(id);
        assert_eq!(rec["reason"], *reason, "{id}: {rec}");
    }
    let seen: Vec<String> = env.upstream.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, ["/fhir/Patient/life-30m", "/fhir/Patient/life-1h"]);
}

// ---------------------------------------------------------------------------
// RFC 7662 introspection
// ---------------------------------------------------------------------------

/// A real RFC 7662 introspection endpoint on `127.0.0.1:0` (`POST
/// /introspect`): answers per token from a table (default `{"active":
/// false}`), records every request, and can be stopped (connections
/// refused afterwards).
struct IntrospectionServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<RecordedRequest>>>,
    answers: Arc<Mutex<HashMap<String, (u16, String)>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Runs the server; dropped with it.
    _rt: tokio::runtime::Runtime,
}

impl IntrospectionServer {
    fn start() -> IntrospectionServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let answers: Arc<Mutex<HashMap<String, (u16, String)>>> = Arc::new(Mutex::new(HashMap::new()));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, a, t) = (calls.clone(), answers.clone(), tasks.clone());
        let accept = rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, a) = (c.clone(), a.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (c, a) = (c.clone(), a.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let token = form_value(&body, "token").unwrap_or_default();
                            c.lock().unwrap().push(RecordedRequest::of(
                                &parts.method,
                                &parts.uri,
                                &parts.headers,
                                body,
                            ));
                            let (status, text) = if parts.uri.path() == "/introspect" {
                                a.lock()
                                    .unwrap()
                                    .get(&token)
                                    .cloned()
                                    .unwrap_or((200, json!({ "active": false }).to_string()))
                            } else {
                                (404, "not found".to_string())
                            };
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        IntrospectionServer {
            addr,
            calls,
            answers,
            tasks,
            _rt: rt,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Answer `token` with `status` and `body`.
    fn answer(&self, token: &str, status: u16, body: Value) {
        self.answers
            .lock()
            .unwrap()
            .insert(token.to_string(), (status, body.to_string()));
    }

    fn calls(&self) -> Vec<RecordedRequest> {
        self.calls.lock().unwrap().clone()
    }

    /// Stop listening and close every connection: the endpoint is down.
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let addr = self.addr;
        let down = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
        assert!(down.is_some(), "introspection server still accepting");
    }
}

/// The first value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"active": true, …}` for an opaque token of the test audience.
fn active(sub: &str) -> Value {
    json!({
        "active": true,
        "scope": "user/Observation.rs",
        "sub": sub,
        "client_id": "app",
        "exp": now() + 300,
        "aud": phigate_tests::AUDIENCE,
    })
}

fn introspecting_env(server: &IntrospectionServer) -> TestEnv {
    let issuer_yaml = format!(
        "    introspection:\n      endpoint: {}\n      client_id: phigate\n      client_secret: s3cret\n      cache_ttl: 60s\n",
        server.endpoint()
    );
    TestEnv::start_with(TEST_POLICY, &issuer_yaml, "")
}

#[test]
fn opaque_tokens_are_introspected_cached_and_forwarded() {
    let server = IntrospectionServer::start();
    server.answer("opaque-abc123", 200, active("u1"));
    let env = introspecting_env(&server);

    let r = env.send(
        "GET",
        "/fhir/Observation?patient=intro-1",
        "opaque-abc123",
        &[("x-request-id", "intro-1")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = env.upstream.requests();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].target, "/fhir/Observation?patient=intro-1");

    // The request the endpoint got (RFC 7662 §2.1, client_secret_basic).
    let calls = server.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.target, "/introspect");
    assert!(
        call.header("content-type")
            .unwrap_or_default()
            .starts_with("application/x-www-form-urlencoded"),
        "{call:?}"
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("phigate:s3cret")
    );
    assert_eq!(call.header("authorization"), Some(basic.as_str()));
    assert_eq!(form_value(&call.body, "token").as_deref(), Some("opaque-abc123"));
    assert_eq!(
        form_value(&call.body, "token_type_hint").as_deref(),
        Some("access_token")
    );

    // The audit record names the introspected identity.
    let rec = env.gw.record("intro-1");
    assert_eq!(rec["reason"], "allowed", "{rec}");
    assert_eq!(rec["sub"], "u1", "{rec}");
    assert!(
        !env.gw.audit_text().contains("opaque-abc123"),
        "the token itself is never audited"
    );

    // Second request: answered from the cache, the endpoint is not asked again.
    let r = env.send(
        "GET",
        "/fhir/Observation?patient=intro-2",
        "opaque-abc123",
        &[("x-request-id", "intro-2")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.calls().len(), 1, "served from the cache");
    assert_eq!(env.upstream.requests().len(), 2);
}

#[test]
fn inactive_and_unavailable_introspection_refuse_and_jwts_stay_local() {
    let server = IntrospectionServer::start();
    server.answer("opaque-abc123", 200, active("u1"));
    server.answer("opaque-inactive", 200, json!({ "active": false }));
    server.answer("opaque-broken", 500, json!({ "error": "server_error" }));
    // RFC 8705 §3.2: an introspection answer may bind the token to a certificate.
    let mut bound = active("u2");
    bound["cnf"] = json!({ "x5t#S256": "bm90LXRoaXMtY29ubmVjdGlvbg" });
    server.answer("opaque-bound", 200, bound);
    let env = introspecting_env(&server);
    let get = |token: &str, id: &str| {
        env.send(
            "GET",
            &format!("/fhir/Observation?patient={id}"),
            token,
            &[("x-request-id", id)],
            b"",
        )
    };

    // `active: false`: 401 token_inactive, not forwarded.
    let r = get("opaque-inactive", "inactive");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "token_inactive");
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("invalid_token"));
    assert_eq!(server.calls().len(), 1);

    // A 500 from the endpoint: 503 introspection_unavailable, and not cached.
    let r = get("opaque-broken", "broken-1");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "introspection_unavailable");
    let r = get("opaque-broken", "broken-2");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(server.calls().len(), 3, "a failure is asked again, not cached");

    // A certificate-bound answer on a connection without that certificate.
    let r = get("opaque-bound", "bound");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "certificate_binding_mismatch");
    assert_eq!(server.calls().len(), 4);

    // JWTs are verified locally: the endpoint never hears of them.
    let jwt = env.key.sign(&claims("user/Observation.rs"));
    let r = get(&jwt, "jwt-ok");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut expired = claims("user/Observation.rs");
    expired["iat"] = json!(now() - 600);
    expired["exp"] = json!(now() - 300);
    let r = get(&env.key.sign(&expired), "jwt-expired");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "token_expired");
    let stranger = TestKey::es256("k-unknown").sign(&claims("user/Observation.rs"));
    let r = get(&stranger, "jwt-unknown-key");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(server.calls().len(), 4, "JWTs never go to the endpoint");

    // An accepted answer is cached before the endpoint goes down...
    assert_eq!(get("opaque-abc123", "cached-1").status, 200);
    assert_eq!(server.calls().len(), 5);
    server.stop();
    // ...and keeps serving; an unknown opaque token fails closed with 503.
    let r = get("opaque-abc123", "cached-2");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get("opaque-never-seen", "down");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "introspection_unavailable");

    let forwarded: Vec<String> = env.upstream.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        forwarded,
        [
            "/fhir/Observation?patient=jwt-ok",
            "/fhir/Observation?patient=cached-1",
            "/fhir/Observation?patient=cached-2"
        ]
    );
    for (id, reason) in [
        ("inactive", "token_inactive"),
        ("broken-1", "introspection_unavailable"),
        ("broken-2", "introspection_unavailable"),
        ("bound", "certificate_binding_mismatch"),
        ("jwt-ok", "allowed"),
        ("jwt-expired", "token_expired"),
        ("cached-2", "allowed"),
        ("down", "introspection_unavailable"),
    ] {
        let rec = env.gw.record(id);
        assert_eq!(rec["reason"], reason, "{id}: {rec}");
    }
    let text = env.gw.audit_text();
    for secret in ["opaque-inactive", "opaque-broken", "opaque-never-seen", "s3cret"] {
        assert!(!text.contains(secret), "{secret} in the audit trail");
    }
}
