//! Issue 12 end to end: transmission security and real upstreams, against
//! the real binary, real TLS (certificates from rcgen), real HTTP/2 clients
//! (`curl`, `nghttp` from Debian's nghttp2-client), recording upstreams.
//!
//! - TLS termination with HTTP/1.1 and HTTP/2 (ALPN), h2c on a plaintext
//!   listener, several listeners; one decision and one record per stream;
//! - client certificates (mTLS), in the audit record;
//! - certificate rotation on disk while serving, a broken pair refused;
//! - upstreams: two by prefix with rewrite, `no_upstream`, TLS to the
//!   upstream with and without a client certificate and with a wrong CA,
//!   a hostname, one of two addresses down (health checks, retries);
//! - forwarding headers; `${VAR}` in the config; SIGTERM drains and exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phigate_tests::faults::spool_records;
use phigate_tests::keys::claims;
use phigate_tests::tls::{pem_to_der, x5t_s256, TestPki, TlsClient, TlsUpstream};
use phigate_tests::{
    eventually, free_addr, http, Gateway, GatewayOptions, JwksServer, Network, TestKey, Upstream,
};
use serde_json::Value;

const POLICY: &str = r#"
version: 1
routes:
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
  - methods: [GET]
    path: /fhir/Observation
    scopes: { any_of: [user/Observation.rs] }
  - methods: [GET]
    path: /records/{id}
    scopes: { any_of: [user/Patient.rs] }
  - methods: [GET]
    path: /other/{id}
    scopes: { any_of: [user/Patient.rs] }
"#;

/// A gateway with a JWKS server and a network section written by the test.
struct Env {
    key: TestKey,
    _jwks: JwksServer,
    gw: Gateway,
}

impl Env {
    fn start(proxy: std::net::SocketAddr, yaml: String) -> Env {
        Self::start_with(proxy, yaml, "", Vec::new())
    }

    fn start_with(proxy: std::net::SocketAddr, yaml: String, extra: &str, env: Vec<(String, String)>) -> Env {
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(TestKey::jwks(&[&key]));
        let gw = Gateway::start(GatewayOptions {
            extra_yaml: extra,
            network: Some(Network { proxy, yaml }),
            env,
            ..GatewayOptions::new(jwks.uri(), free_addr(), POLICY)
        });
        gw.wait_ready();
        Env { key, _jwks: jwks, gw }
    }

    fn token(&self) -> String {
        self.key.sign(&claims("user/Patient.rs"))
    }

    fn record(&self, id: &str) -> Value {
        eventually(Duration::from_secs(10), || {
            spool_records(&self.gw.spool_dir)
                .into_iter()
                .find(|r| r["request_id"] == id)
        })
        .unwrap_or_else(|| panic!("no record for {id}:\n{}", self.gw.log()))
    }
}

/// Files of a test PKI in a temp dir.
struct Certs {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate();
        TestPki::write(dir.path(), "ca.pem", pki.ca_pem());
        let (cert, key) = pki.server(&["localhost", "127.0.0.1"]);
        TestPki::write(dir.path(), "server.pem", &cert);
        TestPki::write(dir.path(), "server.key", &key);
        Certs { dir, pki }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn yaml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// Run `curl` with `args`; (HTTP status, HTTP version, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl is installed by scripts/bootstrap.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or_default().to_string();
    assert!(
        out.status.success() || status > 0,
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (status, version, body.to_string())
}

/// `nghttp` with several URIs on one connection: the `:status` of each
/// response, in the order they completed.
fn nghttp(args: &[&str]) -> Vec<u16> {
    let out = Command::new("nghttp")
        .args(["-v", "-n", "-t", "20"])
        .args(args)
        .output()
        .expect("nghttp is installed by scripts/bootstrap.sh (nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let statuses: Vec<u16> = text
        .lines()
        .filter_map(|l| l.split_once(":status: ").map(|(_, s)| s))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    assert!(
        !statuses.is_empty(),
        "nghttp {args:?}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    statuses
}

#[test]
fn tls_and_h2c_listeners_serve_http1_and_http2_with_one_decision_and_record_per_stream() {
    let certs = Certs::new();
    let upstream = Upstream::start();
    let (tls_addr, h2c_addr) = (free_addr(), free_addr());
    let yaml = format!(
        "listeners:\n  - address: {tls_addr}\n    tls: {{ cert: {}, key: {} }}\n  - address: {h2c_addr}\n    h2c: true\nupstream:\n  address: {}\n",
        yaml_path(&certs.path("server.pem")),
        yaml_path(&certs.path("server.key")),
        upstream.addr
    );
    let e = Env::start(tls_addr, yaml);
    let token = e.token();
    let auth = format!("Authorization: Bearer {token}");
    let ca = certs.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let resolve = format!("localhost:{}:127.0.0.1", tls_addr.port());
    let tls_url = |p: &str| format!("https://localhost:{}{p}", tls_addr.port());
    let h2c_url = |p: &str| format!("http://127.0.0.1:{}{p}", h2c_addr.port());

    // HTTP/1.1 over TLS (ALPN http/1.1), our own client.
    let client = TlsClient {
        alpn: &["http/1.1"],
        ..TlsClient::new(tls_addr, "localhost", certs.pki.ca_pem())
    };
    let r = client
        .request(
            "GET",
            "/fhir/Patient/1",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("x-request-id", "tls-h1"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.response.status, 200, "{}", r.response.text());
    assert_eq!(r.alpn.as_deref(), Some("http/1.1"));
    let rec = e.record("tls-h1");
    assert_eq!(rec["http_version"], "HTTP/1.1");
    assert!(
        rec["tls_version"].as_str().unwrap().contains("1_3")
            || rec["tls_version"].as_str().unwrap().contains("1.3"),
        "{rec}"
    );

    // HTTP/2 over TLS (curl negotiates h2 by ALPN).
    let (status, version, _) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-H",
        &auth,
        "-H",
        "x-request-id: tls-h2",
        &tls_url("/fhir/Patient/2"),
    ]);
    assert_eq!((status, version.as_str()), (200, "2"));
    let rec = e.record("tls-h2");
    assert_eq!(rec["http_version"], "HTTP/2.0");
    assert_eq!(rec["decision"], "allow");

    // h2c with prior knowledge on the plaintext listener.
    let (status, version, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &auth,
        "-H",
        "x-request-id: h2c-1",
        &h2c_url("/fhir/Patient/3"),
    ]);
    assert_eq!((status, version.as_str()), (200, "2"));
    assert_eq!(e.record("h2c-1")["http_version"], "HTTP/2.0");
    // HTTP/1.1 still works on the h2c listener, including a short HTTP/1.0 request.
    let r = http::request(
        h2c_addr,
        "GET",
        "/fhir/Patient/4",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = http::raw(h2c_addr, b"GET /x HTTP/1.0\r\n\r\n", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());

    // Several streams on one connection (nghttp): each decided alone — the
    // denied one never reaches the upstream — and each with its record.
    let before = upstream.requests().len();
    let h2_before = eventually(Duration::from_secs(10), || {
        let n = spool_records(&e.gw.spool_dir)
            .iter()
            .filter(|r| r["http_version"] == "HTTP/2.0")
            .count();
        (n >= 2).then_some(n)
    })
    .unwrap();
    let statuses = nghttp(&[
        "-H",
        &auth,
        &h2c_url("/fhir/Patient/5"),
        &h2c_url("/fhir/Observation?patient=5"),
        &h2c_url("/fhir/%50atient/6"),
    ]);
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 403], "{statuses:?}");
    let seen: Vec<String> = upstream.requests()[before..]
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        seen.len(),
        2,
        "the denied stream never reached the upstream: {seen:?}"
    );
    assert!(
        seen.contains(&"/fhir/Patient/6".to_string()),
        "canonicalised per stream: {seen:?}"
    );
    assert!(!seen.iter().any(|t| t.starts_with("/fhir/Observation")));
    let h2_records = eventually(Duration::from_secs(10), || {
        let r: Vec<Value> = spool_records(&e.gw.spool_dir)
            .into_iter()
            .filter(|r| r["http_version"] == "HTTP/2.0")
            .skip(h2_before)
            .collect();
        (r.len() >= 3).then_some(r)
    })
    .expect("one record per stream");
    assert_eq!(h2_records.len(), 3, "{h2_records:#?}");
    assert!(h2_records.iter().any(|r| r["reason"] == "insufficient_scope"));

    // nghttp over TLS too (ALPN h2).
    let statuses = nghttp(&[
        "-H",
        &auth,
        &format!("https://127.0.0.1:{}/fhir/Patient/7", tls_addr.port()),
    ]);
    assert_eq!(statuses, [200]);
}

#[test]
fn client_certificates_are_verified_and_recorded() {
    let certs = Certs::new();
    let clients = TestPki::new("client CA");
    TestPki::write(certs.dir.path(), "clients.pem", clients.ca_pem());
    let upstream = Upstream::start();
    let (required, optional) = (free_addr(), free_addr());
    let yaml = format!(
        "listeners:\n  - address: {required}\n    tls: {{ cert: {c}, key: {k}, client_ca: {ca}, client_auth: required }}\n  - address: {optional}\n    tls: {{ cert: {c}, key: {k}, client_ca: {ca} }}\nupstream:\n  address: {}\n",
        upstream.addr,
        c = yaml_path(&certs.path("server.pem")),
        k = yaml_path(&certs.path("server.key")),
        ca = yaml_path(&certs.path("clients.pem")),
    );
    let e = Env::start(required, yaml);
    let auth = format!("Bearer {}", e.token());
    let (cert, key) = clients.client_in("app-7", "Example Health");
    let h = [("Authorization", auth.as_str()), ("x-request-id", "mtls-1")];

    // Required: no certificate, or one from another CA, never gets a response.
    let anon = TlsClient::new(required, "localhost", certs.pki.ca_pem());
    assert!(anon.request("GET", "/fhir/Patient/1", &h, b"").is_err());
    let (other_cert, other_key) = TestPki::unrelated().client("intruder");
    assert!(anon
        .with_client_cert(&other_cert, &other_key)
        .request("GET", "/fhir/Patient/1", &h, b"")
        .is_err());
    assert!(upstream.requests().is_empty(), "nothing reached the upstream");

    let r = anon
        .with_client_cert(&cert, &key)
        .request("GET", "/fhir/Patient/1", &h, b"")
        .unwrap();
    assert_eq!(r.response.status, 200);
    let rec = e.record("mtls-1");
    assert_eq!(rec["client_cert"]["subject"], "CN=app-7,O=Example Health");
    assert_eq!(rec["client_cert"]["sha256"], x5t_s256(&pem_to_der(&cert)));

    // Optional: anonymous clients get in, without a client_cert field.
    let r = TlsClient::new(optional, "localhost", certs.pki.ca_pem())
        .request(
            "GET",
            "/fhir/Patient/2",
            &[("Authorization", auth.as_str()), ("x-request-id", "mtls-anon")],
            b"",
        )
        .unwrap();
    assert_eq!(r.response.status, 200);
    assert!(e.record("mtls-anon").get("client_cert").is_none());
}

#[test]
fn certificates_rotated_on_disk_are_served_without_restart_and_a_broken_pair_is_refused() {
    let certs = Certs::new();
    let upstream = Upstream::start();
    let addr = free_addr();
    let yaml = format!(
        "listeners:\n  - address: {addr}\n    tls: {{ cert: {}, key: {} }}\nupstream:\n  address: {}\n",
        yaml_path(&certs.path("server.pem")),
        yaml_path(&certs.path("server.key")),
        upstream.addr
    );
    let e = Env::start(addr, yaml);
    let client = TlsClient::new(addr, "localhost", certs.pki.ca_pem());
    let first = client.served_certificate().unwrap();

    // cert-manager style: new key and certificate renamed into place.
    let (cert, key) = certs.pki.server(&["localhost", "127.0.0.1"]);
    TestPki::write(certs.dir.path(), "server.key", &key);
    TestPki::write(certs.dir.path(), "server.pem", &cert);
    let rotated = eventually(Duration::from_secs(10), || {
        let now = client.served_certificate().ok()?;
        (now == pem_to_der(&cert)).then_some(now)
    });
    assert!(
        rotated.is_some(),
        "the new certificate was never served:\n{}",
        e.gw.log()
    );
    assert_ne!(first, pem_to_der(&cert));
    let m = e.gw.metrics();
    assert!(m.value("phigate_tls_reload_total", &[("result", "ok")]) >= 1.0);

    // A certificate that does not match the key: refused, the pair in
    // force keeps serving, the error is counted once.
    let (other, _) = certs.pki.server(&["localhost"]);
    TestPki::write(certs.dir.path(), "server.pem", &other);
    let counted = eventually(Duration::from_secs(10), || {
        (e.gw
            .metrics()
            .value("phigate_tls_reload_total", &[("result", "error")])
            >= 1.0)
            .then_some(())
    });
    assert!(counted.is_some(), "{}", e.gw.log());
    assert_eq!(client.served_certificate().unwrap(), pem_to_der(&cert));
    let auth = format!("Bearer {}", e.token());
    let r = client
        .request("GET", "/fhir/Patient/1", &[("Authorization", &auth)], b"")
        .unwrap();
    assert_eq!(r.response.status, 200);
}

#[test]
fn upstreams_are_chosen_by_prefix_and_rewritten_and_uncovered_paths_are_refused() {
    let (fhir, records) = (Upstream::start(), Upstream::start());
    let proxy = free_addr();
    let yaml = format!(
        "listen: {proxy}\nupstreams:\n  - name: fhir\n    prefix: /fhir\n    rewrite: /fhir/R4\n    address: {}\n  - name: records\n    prefix: /records\n    address: \"localhost:{}\"\n",
        fhir.addr,
        records.addr.port()
    );
    let e = Env::start(proxy, yaml);
    let auth = format!("Bearer {}", e.token());
    let get = |target: &str, id: &str| {
        http::request(
            proxy,
            "GET",
            target,
            &[("Authorization", &auth), ("x-request-id", id)],
            b"",
        )
        .unwrap()
    };
    assert_eq!(get("/fhir/Patient/1?_elements=id", "up-fhir").status, 200);
    assert_eq!(
        fhir.requests().last().unwrap().target,
        "/fhir/R4/Patient/1?_elements=id"
    );
    let rec = e.record("up-fhir");
    assert_eq!(rec["upstream"], "fhir");
    assert_eq!(rec["upstream_attempts"], 1);
    assert_eq!(rec["upstream_address"], fhir.addr.to_string());

    // A hostname upstream (localhost).
    assert_eq!(get("/records/9", "up-records").status, 200);
    assert_eq!(records.requests().last().unwrap().target, "/records/9");
    assert_eq!(e.record("up-records")["upstream"], "records");
    assert!(e.record("up-records")["upstream_address"]
        .as_str()
        .unwrap()
        .starts_with("localhost:"));

    // Allowed by the policy, but no upstream serves it: 404 no_upstream, audited.
    let r = get("/other/1", "up-none");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_upstream");
    let rec = e.record("up-none");
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["reason"], "no_upstream");
    assert_eq!(fhir.requests().len() + records.requests().len(), 2);
}

#[test]
fn tls_to_the_upstream_verifies_the_server_and_presents_a_client_certificate() {
    let server_pki = TestPki::generate();
    let client_pki = TestPki::new("gateway client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestPki::write(dir.path(), "upstream-ca.pem", server_pki.ca_pem());
    let wrong_ca = TestPki::write(dir.path(), "wrong-ca.pem", TestPki::unrelated().ca_pem());
    let (cert, key) = client_pki.client("phigate-gw");
    let cert = TestPki::write(dir.path(), "gw.pem", &cert);
    let key = TestPki::write(dir.path(), "gw.key", &key);
    // One upstream requires a client certificate, one does not.
    let mtls = TlsUpstream::start(&server_pki, Some(&client_pki));
    let plain = TlsUpstream::start(&server_pki, None);
    let proxy = free_addr();
    let yaml = format!(
        "listen: {proxy}\nupstreams:\n  - name: mtls\n    prefix: /fhir\n    address: \"localhost:{}\"\n    tls: {{ ca: {}, cert: {}, key: {} }}\n  - name: nocert\n    prefix: /records\n    address: \"localhost:{}\"\n    tls: {{ ca: {} }}\n  - name: wrongca\n    prefix: /other\n    address: \"127.0.0.1:{}\"\n    tls: {{ ca: {} }}\n",
        mtls.addr.port(),
        yaml_path(&ca),
        yaml_path(&cert),
        yaml_path(&key),
        mtls.addr.port(),
        yaml_path(&ca),
        plain.addr.port(),
        yaml_path(&wrong_ca),
    );
    let e = Env::start(proxy, yaml);
    let auth = format!("Bearer {}", e.token());
    let get = |target: &str| http::request(proxy, "GET", target, &[("Authorization", &auth)], b"").unwrap();

    // With the client certificate: served, and the upstream saw who called.
    assert_eq!(get("/fhir/Patient/1").status, 200);
    let seen = mtls.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].client_cn.as_deref(), Some("phigate-gw"));
    // Without one, the same upstream refuses the handshake: 502, nothing served.
    let r = get("/records/1");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(mtls.requests().len(), 1);
    // A server certificate from an unknown CA is never trusted.
    let r = get("/other/1");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(plain.requests().is_empty());
}

#[test]
fn one_address_down_is_taken_out_by_health_checks_and_retries() {
    let live = Upstream::start();
    let dead = free_addr(); // nothing listens
    let proxy = free_addr();
    let yaml = format!(
        "listen: {proxy}\nupstreams:\n  - name: checked\n    prefix: /fhir\n    addresses: [\"{live}\", \"{dead}\"]\n    health_check: {{ path: /fhir/metadata, interval: 200ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }}\n  - name: unchecked\n    prefix: /records\n    addresses: [\"{dead}\", \"{live}\"]\n    retries: 1\n",
        live = live.addr
    );
    let e = Env::start(proxy, yaml);
    let auth = format!("Bearer {}", e.token());
    // The health check marks the dead address down.
    let down = eventually(Duration::from_secs(10), || {
        let m = e.gw.metrics();
        (m.value(
            "phigate_upstream_healthy",
            &[("upstream", "checked"), ("address", &dead.to_string())],
        ) == 0.0
            && m.value(
                "phigate_upstream_healthy",
                &[("upstream", "checked"), ("address", &live.addr.to_string())],
            ) == 1.0)
            .then_some(())
    });
    assert!(
        down.is_some(),
        "{}",
        http::get(e.gw.admin, "/metrics").unwrap().text()
    );
    let ready = http::get(e.gw.admin, "/readyz").unwrap().json();
    assert_eq!(ready["upstreams"]["checked"]["healthy"], true, "{ready}");
    assert_eq!(
        ready["upstreams"]["checked"]["addresses"][dead.to_string()]["healthy"],
        false,
        "{ready}"
    );
    for i in 0..10 {
        let r = http::request(
            proxy,
            "GET",
            &format!("/fhir/Patient/{i}"),
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    // Without health checks, a connect failure is retried on the other
    // address (GET is idempotent), and the record says so.
    for i in 0..4 {
        let id = format!("retry-{i}");
        let r = http::request(
            proxy,
            "GET",
            &format!("/records/{i}"),
            &[("Authorization", &auth), ("x-request-id", &id)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{id}");
    }
    let attempts: Vec<u64> = (0..4)
        .map(|i| {
            e.record(&format!("retry-{i}"))["upstream_attempts"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        attempts.contains(&2),
        "the dead address was tried once, then skipped: {attempts:?}"
    );
    assert!(attempts.iter().all(|a| *a <= 2));
}

#[test]
fn forwarding_headers_from_clients_are_replaced() {
    let certs = Certs::new();
    let upstream = Upstream::start();
    let addr = free_addr();
    let yaml = format!(
        "listeners:\n  - address: {addr}\n    tls: {{ cert: {}, key: {} }}\nupstream:\n  address: {}\nforwarded_headers: both\n",
        yaml_path(&certs.path("server.pem")),
        yaml_path(&certs.path("server.key")),
        upstream.addr
    );
    let e = Env::start(addr, yaml);
    let auth = format!("Bearer {}", e.token());
    let r = TlsClient::new(addr, "localhost", certs.pki.ca_pem())
        .request(
            "GET",
            "/fhir/Patient/1",
            &[
                ("Authorization", &auth),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "http"),
                ("Forwarded", "for=6.6.6.6"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.response.status, 200);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("localhost:{}", addr.port()).as_str())
    );
    assert!(
        seen.header("forwarded")
            .unwrap()
            .starts_with("for=127.0.0.1;proto=https"),
        "{:?}",
        seen.header("forwarded")
    );
}

#[test]
fn environment_variables_are_substituted_in_the_config() {
    let upstream = Upstream::start();
    let proxy = free_addr();
    let yaml = "listen: ${PHIGATE_TEST_LISTEN}\nupstream:\n  address: \"${PHIGATE_TEST_UPSTREAM}\"\n  retries: ${PHIGATE_TEST_RETRIES:-0}\n".to_string();
    let e = Env::start_with(
        proxy,
        yaml,
        "",
        vec![
            ("PHIGATE_TEST_LISTEN".into(), proxy.to_string()),
            ("PHIGATE_TEST_UPSTREAM".into(), upstream.addr.to_string()),
        ],
    );
    let auth = format!("Bearer {}", e.token());
    let r = http::request(proxy, "GET", "/fhir/Patient/1", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(r.status, 200);

    // An unset variable without default: `config check` names it at its line:column.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\nupstream:\n  address: ${PHIGATE_TEST_SURELY_UNSET}\nissuers: []\npolicies: p\naudit: { dir: a }\n",
    )
    .unwrap();
    let (ok, out) =
        phigate_tests::run_phigate([std::ffi::OsStr::new("config"), "check".as_ref(), path.as_os_str()]);
    assert!(!ok);
    assert!(
        out.contains("gateway.yaml:4:12: environment variable `PHIGATE_TEST_SURELY_UNSET` is not set"),
        "{out}"
    );
}

#[test]
fn sigterm_drains_what_is_in_flight_and_exits_without_waiting_out_the_grace_period() {
    let up = phigate_tests::faults::FaultUpstream::start();
    let proxy = free_addr();
    let yaml = format!("listen: {proxy}\nupstream:\n  address: {}\n", up.addr);
    // A grace period far longer than the test may wait: exiting at all
    // shows it was not slept through.
    let mut e = Env::start_with(proxy, yaml, "shutdown_grace: 120s\n", Vec::new());
    let auth = format!("Bearer {}", e.token());
    // One request in flight (the upstream answers after 1.5 s).
    let slow = std::thread::spawn(move || {
        http::request(
            proxy,
            "GET",
            "/fhir/Patient/1",
            &[
                ("Authorization", &auth),
                ("x-fault", "slow:1500"),
                ("x-request-id", "in-flight"),
            ],
            b"",
        )
        .unwrap()
    });
    assert!(eventually(Duration::from_secs(10), || (!up.received().is_empty())
        .then_some(()))
    .is_some());
    let status = Command::new("kill")
        .args(["-TERM", &e.gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Not ready while draining (the signal is handled asynchronously:
    // wait for it to be seen, well within the 1.5 s the request takes).
    let r = eventually(Duration::from_secs(5), || {
        let r = http::get(e.gw.admin, "/readyz").ok()?;
        (r.status == 503).then_some(r)
    })
    .expect("/readyz turns 503 after SIGTERM");
    assert_eq!(r.json()["draining"], true);
    // The request in flight completes normally…
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    // …and then the process exits, long before the 120 s grace period.
    assert!(
        e.gw.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        e.gw.log()
    );
    assert_eq!(e.record("in-flight")["reason"], "allowed");
    let log = e.gw.log();
    assert!(log.contains("drained; exiting"), "{log}");
    assert!(!log.contains("shutdown_grace over"), "{log}");
}

/// A one-document HTTP server on `l`: every request gets `body` (JSON).
fn serve_json(l: std::net::TcpListener, body: String) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

#[test]
fn config_check_online_fetches_keys_and_connects_to_every_upstream() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(TestKey::jwks(&[&key]));
    // An issuer whose discovery document spells it with a trailing slash.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let disco_addr = listener.local_addr().unwrap();
    let disco = serve_json(
        listener,
        format!(
            "{{\"issuer\":\"http://{disco_addr}/\",\"jwks_uri\":\"{}\"}}",
            jwks.uri()
        ),
    );
    let good = Upstream::start();
    let dead = free_addr();
    let pki = TestPki::generate();
    let tls = TlsUpstream::start(&pki, None);
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = TestPki::write(dir.path(), "wrong.pem", TestPki::unrelated().ca_pem());
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), POLICY).unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\nupstreams:\n  - {{ name: good, prefix: /fhir, address: \"{}\" }}\n  - {{ name: dead, prefix: /records, address: \"{dead}\", connect_timeout: 1s }}\n  - {{ name: wrongca, prefix: /other, address: \"localhost:{}\", tls: {{ ca: {} }} }}\nissuers:\n  - {{ issuer: \"https://idp.test.phigate\", audiences: [a], jwks_uri: \"{}\" }}\n  - {{ issuer: \"http://{disco}\", audiences: [a], discovery: true }}\npolicies: policies\naudit: {{ dir: spool }}\n",
            good.addr,
            tls.addr.port(),
            yaml_path(&wrong_ca),
            jwks.uri(),
        ),
    )
    .unwrap();
    let (ok, out) = phigate_tests::run_phigate([
        std::ffi::OsStr::new("config"),
        "check".as_ref(),
        "--online".as_ref(),
        path.as_os_str(),
    ]);
    assert!(!ok, "{out}");
    for want in [
        "online: issuer https://idp.test.phigate: ok (1 key(s))".to_string(),
        format!("online: issuer http://{disco}: FAILED: discovery document"),
        "they differ only in a trailing slash".to_string(),
        format!("online: upstream good {}: ok (connected)", good.addr),
        format!("online: upstream dead {dead}: FAILED"),
        "online: upstream wrongca localhost:".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("online: upstream wrongca") && l.contains("FAILED")),
        "{out}"
    );
    assert!(out.contains("3 online check(s) failed"), "{out}");
    // Offline, the same file is fine.
    let (ok, out) =
        phigate_tests::run_phigate([std::ffi::OsStr::new("config"), "check".as_ref(), path.as_os_str()]);
    assert!(ok, "{out}");
}
